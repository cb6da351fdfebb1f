//! Any datagram: parsing must not panic, and a payload lies inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = call_coach::audio::rtp::parse(data) {
        let start = p.payload.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start >= 12 && start + p.payload.len() <= data.len());
    }
});
