//! One call leg: a UDP port that takes RTP from one source, a jitter
//! buffer, and the stt websocket the audio goes to.
//!
//! The stt side runs in a task of its own with a bounded buffer: while stt
//! is down or restarting, audio waits (up to `buffer_secs`) and the task
//! reconnects with backoff; older audio is dropped and counted. A stt that
//! refuses the stream (503: at capacity or behind) is retried the same way,
//! no sooner than its `Retry-After`, and counted. Nothing on the stt side
//! can stall the UDP side, or any other leg.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::audio::jitter::{JitterBuffer, JitterConfig};
use crate::audio::rtp::{self, Format};

/// Counters of one leg (and, summed, of the service).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub packets: AtomicU64,
    pub bytes_to_stt: AtomicU64,
    pub lost: AtomicU64,
    pub late: AtomicU64,
    pub reordered: AtomicU64,
    pub not_rtp: AtomicU64,
    pub wrong_payload_type: AtomicU64,
    pub wrong_source: AtomicU64,
    /// Milliseconds of audio dropped because stt was away too long.
    pub dropped_ms: AtomicU64,
    pub reconnects: AtomicU64,
    /// Connections stt refused at the handshake (503), each retried.
    pub refused: AtomicU64,
    /// Streams that went on to another stt than their last one.
    pub moves: AtomicU64,
}

/// Bumps a counter of the leg and the same one of the service.
fn bump(pair: &[&Counters; 2], field: impl Fn(&Counters) -> &AtomicU64, n: u64) {
    for c in pair {
        field(c).fetch_add(n, Ordering::Relaxed);
    }
}

/// What a leg is, for `GET /streams`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub id: String,
    pub call_id: String,
    pub speaker: String,
    pub format: Format,
    pub port: u16,
    /// Fixed legs of the compatibility mode never close for idleness.
    #[serde(skip)]
    pub fixed: bool,
}

/// How legs run (from the settings).
#[derive(Debug, Clone)]
pub struct Options {
    /// The stt (or stt hosts) the stream goes to.
    pub stt: Arc<super::stt_pool::SttPool>,
    /// No packets for this long closes a leg (not a fixed one).
    pub idle: Duration,
    pub jitter_ms: u64,
    pub buffer_secs: u64,
}

/// Runs a leg until `stop`, or until it has been idle too long.
pub async fn run(
    socket: UdpSocket,
    spec: Spec,
    options: Options,
    counters: Arc<Counters>,
    totals: Arc<Counters>,
    stop: CancellationToken,
) {
    let rate = spec.format.rate();
    let idle = options.idle;
    let outbox = Arc::new(Outbox {
        frames: Mutex::new(Queue::default()),
        notify: Notify::new(),
        capacity_samples: (options.buffer_secs.max(1) * u64::from(rate)) as usize,
        closed: std::sync::atomic::AtomicBool::new(false),
    });
    let query = format!(
        "?callId={}&speaker={}&sampleRate={rate}&encoding=s16le",
        spec.call_id, spec.speaker
    );
    let sender = tokio::spawn(send_to_stt(
        options.stt.clone(),
        query,
        rate,
        outbox.clone(),
        counters.clone(),
        totals.clone(),
    ));
    let packet_ms = 20;
    let mut jitter = JitterBuffer::new(JitterConfig {
        window: (options.jitter_ms / packet_ms).max(1),
        max_fill: rate,
    });
    let mut source: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    let mut last_packet = Instant::now();
    let mut last_warning: Option<Instant> = None;
    let pair = [&*counters, &*totals];
    loop {
        let deadline = last_packet + idle;
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline.into()), if !spec.fixed => {
                tracing::info!(leg = %spec.id, "no RTP for {} s: closing", idle.as_secs());
                break;
            }
            r = socket.recv_from(&mut buf) => r,
        };
        let Ok((n, from)) = received else { continue };
        let mut warn = |what: &str| {
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_warning = Some(Instant::now());
                tracing::warn!(leg = %spec.id, %from, "{what} (logged at most every 10 s)");
            }
        };
        if *source.get_or_insert(from) != from {
            bump(&pair, |c| &c.wrong_source, 1);
            warn("RTP from another source than the first: dropped");
            continue;
        }
        let packet = match rtp::parse(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                bump(&pair, |c| &c.not_rtp, 1);
                warn(&format!("not RTP ({e}): dropped"));
                continue;
            }
        };
        if packet.payload_type != spec.format.payload_type() {
            bump(&pair, |c| &c.wrong_payload_type, 1);
            warn(&format!(
                "payload type {} on a {:?} leg: dropped",
                packet.payload_type, spec.format
            ));
            continue;
        }
        last_packet = Instant::now();
        bump(&pair, |c| &c.packets, 1);
        let before = jitter.stats;
        out.clear();
        jitter.push(
            packet.ssrc,
            packet.sequence,
            packet.timestamp,
            spec.format.decode(packet.payload),
            &mut out,
        );
        let after = jitter.stats;
        bump(&pair, |c| &c.lost, after.lost - before.lost);
        bump(&pair, |c| &c.late, after.late - before.late);
        bump(&pair, |c| &c.reordered, after.reordered - before.reordered);
        if !out.is_empty() {
            outbox.push(std::mem::take(&mut out), &pair, rate);
        }
    }
    out.clear();
    jitter.flush(&mut out);
    if !out.is_empty() {
        outbox.push(out, &pair, rate);
    }
    outbox.close();
    let _ = tokio::time::timeout(Duration::from_secs(60), sender).await;
}

/// Most samples sent to stt in one frame (a second at 16 kHz), well under
/// stt's frame limit.
const MAX_FRAME_SAMPLES: usize = 16_000;

/// Blocks of samples waiting, with their total kept up to date.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Vec<i16>>,
    held: usize,
}

impl Queue {
    fn push_back(&mut self, block: Vec<i16>) {
        self.held += block.len();
        self.frames.push_back(block);
    }

    fn push_front(&mut self, block: Vec<i16>) {
        self.held += block.len();
        self.frames.push_front(block);
    }

    fn pop_front(&mut self) -> Option<Vec<i16>> {
        let block = self.frames.pop_front()?;
        self.held -= block.len();
        Some(block)
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Audio waiting for stt.
struct Outbox {
    frames: Mutex<Queue>,
    notify: Notify,
    capacity_samples: usize,
    closed: std::sync::atomic::AtomicBool,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues samples; drops the oldest beyond the bound.
    fn push(&self, samples: Vec<i16>, pair: &[&Counters; 2], rate: u32) {
        let mut q = self.lock();
        q.push_back(samples);
        while q.held > self.capacity_samples {
            let Some(old) = q.pop_front() else { break };
            bump(
                pair,
                |c| &c.dropped_ms,
                old.len() as u64 * 1000 / u64::from(rate),
            );
        }
        drop(q);
        self.notify.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Sends queued audio to stt, reconnecting with backoff; at the end sends
/// `{"type":"end"}` and waits for stt to close (its finals come first).
async fn send_to_stt(
    stt: Arc<super::stt_pool::SttPool>,
    query: String,
    rate: u32,
    outbox: Arc<Outbox>,
    counters: Arc<Counters>,
    totals: Arc<Counters>,
) {
    let pair = [&*counters, &*totals];
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    let mut last_base: Option<String> = None;
    'connect: loop {
        let base = match stt.choose().await {
            Ok(base) => base,
            Err(wait) => {
                if outbox.closed.load(Ordering::Acquire) && outbox.lock().is_empty() {
                    return;
                }
                tokio::time::sleep(wait.max(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let url = format!("{base}{query}");
        let ws = match crate::net::ws_connect(&url, None).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                if outbox.closed.load(Ordering::Acquire) && outbox.lock().is_empty() {
                    return;
                }
                let cool = match refusal(&e) {
                    Some((why, retry_after)) => {
                        bump(&pair, |c| &c.refused, 1);
                        tracing::warn!(%url, reason = %why, "stt refused the stream; retrying");
                        backoff.max(retry_after)
                    }
                    None => {
                        tracing::warn!(error = %e, %url, "stt unreachable; retrying");
                        backoff
                    }
                };
                // Another stt may take it now; when none can, `choose`
                // says how long to wait.
                stt.cool(&base, Some(cool));
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if last_base.as_ref().is_some_and(|b| *b != base) {
            bump(&pair, |c| &c.moves, 1);
            tracing::info!(%url, "stream moved to another stt");
        }
        last_base = Some(base);
        if !first {
            bump(&pair, |c| &c.reconnects, 1);
            tracing::info!(%url, "reconnected to stt");
        }
        first = false;
        backoff = Duration::from_millis(100);
        let (mut tx, mut rx) = ws.split();
        let mut unconfirmed = Unconfirmed::new(rate);
        // The connection failed: what this stt got but did not finalise
        // goes again, first, to the next one.
        let replay = |unconfirmed: &mut Unconfirmed| {
            let audio = unconfirmed.take();
            if !audio.is_empty() {
                tracing::info!(
                    ms = audio.len() as u64 * 1000 / u64::from(rate),
                    "replaying audio the lost stt had not finalised"
                );
                outbox.lock().push_front(audio);
            }
        };
        loop {
            // Everything waiting goes in one frame: under load that is one
            // websocket write for many packets.
            let next: Vec<i16> = {
                let mut q = outbox.lock();
                let mut joined = Vec::new();
                while let Some(block) = q.pop_front() {
                    joined.extend_from_slice(&block);
                    if joined.len() >= MAX_FRAME_SAMPLES {
                        break;
                    }
                }
                joined
            };
            match (!next.is_empty()).then_some(next) {
                Some(samples) => {
                    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                    let n = bytes.len() as u64;
                    if tx.send(Message::binary(bytes)).await.is_err() {
                        // Put it back and reconnect.
                        outbox.lock().push_front(samples);
                        replay(&mut unconfirmed);
                        continue 'connect;
                    }
                    unconfirmed.sent(&samples);
                    bump(&pair, |c| &c.bytes_to_stt, n);
                }
                None if outbox.closed.load(Ordering::Acquire) => {
                    let _ = tx.send(Message::text(r#"{"type":"end"}"#)).await;
                    // stt closes once every final is out; if it dies first,
                    // another one gets what it had not finalised.
                    let closed = tokio::time::timeout(Duration::from_secs(60), async {
                        loop {
                            match rx.next().await {
                                Some(Ok(m)) if m.is_close() => return true,
                                Some(Ok(m)) => unconfirmed.echo(&m),
                                _ => return false,
                            }
                        }
                    })
                    .await;
                    if closed == Ok(false) && !unconfirmed.is_empty() {
                        replay(&mut unconfirmed);
                        continue 'connect;
                    }
                    return;
                }
                None => {
                    tokio::select! {
                        _ = outbox.notify.notified() => {}
                        // stt's echoes: its finals say what it has done.
                        m = rx.next() => match m {
                            Some(Ok(m)) => unconfirmed.echo(&m),
                            _ => {
                                replay(&mut unconfirmed);
                                continue 'connect;
                            }
                        },
                    }
                }
            }
        }
    }
}

/// Audio one stt connection got whose words it has not finalised yet: kept
/// (at most [`UNCONFIRMED_SECS`]) so that, if the stt is lost, the next one
/// hears the utterance that was in flight. A final `transcript` echoed on
/// the socket confirms everything up to its `endMs`.
struct Unconfirmed {
    rate: u64,
    audio: VecDeque<i16>,
    /// Sample of the connection's stream where `audio` starts.
    from: u64,
}

/// Longest utterance stt makes (15 s) and a margin.
const UNCONFIRMED_SECS: u64 = 20;

impl Unconfirmed {
    fn new(rate: u32) -> Self {
        Self {
            rate: u64::from(rate),
            audio: VecDeque::new(),
            from: 0,
        }
    }

    fn sent(&mut self, samples: &[i16]) {
        self.audio.extend(samples);
        let cap = (UNCONFIRMED_SECS * self.rate) as usize;
        if self.audio.len() > cap {
            let over = self.audio.len() - cap;
            self.audio.drain(..over);
            self.from += over as u64;
        }
    }

    /// A message from stt: a final confirms the audio up to its end.
    fn echo(&mut self, m: &Message) {
        let Message::Text(text) = m else { return };
        let Some(crate::event::Event::Transcript(t)) =
            crate::event::Received::parse(text).and_then(|r| r.event)
        else {
            return;
        };
        if t.is_final {
            let upto = t.end_ms * self.rate / 1000;
            let n = upto.saturating_sub(self.from).min(self.audio.len() as u64);
            self.audio.drain(..n as usize);
            self.from += n;
        }
    }

    fn is_empty(&self) -> bool {
        self.audio.is_empty()
    }

    fn take(&mut self) -> Vec<i16> {
        std::mem::take(&mut self.audio).into()
    }
}

/// A refusal at the handshake (HTTP 503): stt's reason, and how long it
/// asks the caller to wait (`Retry-After`, at most 30 s).
fn refusal(e: &tokio_tungstenite::tungstenite::Error) -> Option<(String, Duration)> {
    let tokio_tungstenite::tungstenite::Error::Http(resp) = e else {
        return None;
    };
    if resp.status() != 503 {
        return None;
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), |s| Duration::from_secs(s.min(30)));
    let why = resp
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "503".into());
    Some((why, retry_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfirmed_audio_is_what_no_final_covers() {
        let mut u = Unconfirmed::new(8_000);
        u.sent(&[1; 8_000]); // 0-1 s
        u.sent(&[2; 8_000]); // 1-2 s
        let fin = |end_ms: u64| {
            Message::text(format!(
                r#"{{"type":"transcript","callId":"c","speaker":"agent","text":"x","final":true,"utteranceId":"u","startMs":0,"endMs":{end_ms}}}"#
            ))
        };
        let partial = Message::text(
            r#"{"type":"transcript","callId":"c","speaker":"agent","text":"x","final":false,"utteranceId":"u","startMs":0,"endMs":1900}"#,
        );
        u.echo(&partial);
        assert_eq!(u.audio.len(), 16_000, "a partial confirms nothing");
        u.echo(&fin(1_500));
        assert_eq!(u.audio.len(), 4_000);
        assert_eq!(u.take(), vec![2; 4_000]);
        assert!(u.is_empty());
        // Bounded.
        let mut u = Unconfirmed::new(8_000);
        for _ in 0..30 {
            u.sent(&[0; 8_000]);
        }
        assert_eq!(u.audio.len(), 20 * 8_000);
        assert_eq!(u.from, 10 * 8_000);
    }

    #[test]
    fn outbox_keeps_the_newest_audio_within_its_bound() {
        let outbox = Outbox {
            frames: Mutex::new(Queue::default()),
            notify: Notify::new(),
            capacity_samples: 320,
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        let (leg, total) = (Counters::default(), Counters::default());
        let pair = [&leg, &total];
        for i in 0..3 {
            outbox.push(vec![i; 160], &pair, 8_000);
        }
        let mut q = outbox.lock();
        assert_eq!(q.held, 320);
        assert_eq!(q.pop_front().unwrap()[0], 1);
        assert_eq!(q.pop_front().unwrap()[0], 2);
        assert!(q.is_empty() && q.held == 0);
        // The oldest 20 ms were dropped, and counted on both sides.
        assert_eq!(leg.dropped_ms.load(Ordering::Relaxed), 20);
        assert_eq!(total.dropped_ms.load(Ordering::Relaxed), 20);
    }
}
