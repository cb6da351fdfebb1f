//! Any sequence of packets (as rtp2ws would parse them) through the jitter
//! buffer: no panic, and the output stays bounded.
#![no_main]

use call_coach::audio::jitter::{JitterBuffer, JitterConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut out = Vec::new();
    for chunk in data.chunks(16) {
        if let Ok(p) = call_coach::audio::rtp::parse(chunk) {
            let samples = vec![1i16; p.payload.len() / 2];
            jb.push(p.ssrc, p.sequence, p.timestamp, samples, &mut out);
        }
    }
    jb.flush(&mut out);
    // At most max_fill of silence per packet, plus the packets themselves.
    assert!(out.len() <= (data.len() / 16 + 1) * (16_000 + 8));
});
