//! What stt can carry, and whether it takes one more stream.
//!
//! The unit is a stream (one call leg). What a stream costs is measured,
//! not configured: the worker time its finals ask for per second of stream
//! audio, over the last minute (`load per stream`). A final's cost is
//! counted when it is asked for (its audio x the decode time per second of
//! audio of recent finals), not when a worker gets to it: work queued
//! behind an overloaded pool counts at once, so the estimate cannot rise
//! while stt falls behind. A busy neighbour makes decodes slower, so the
//! cost rises and the capacity falls with it. Until a minute holds enough
//! audio, the start-up measurement (one decode of a typical utterance, at
//! an assumed share of speech per leg) fills in.
//!
//! capacity = workers x [`TARGET_UTILISATION`] / load per stream
//!
//! Finals only are counted: partials are shed first under load (one waiting
//! per stream), so what must fit is the finals, with room left for partials
//! and for the queueing that keeps end-of-speech latency low.
//!
//! A stream is refused at the handshake (HTTP 503, `Retry-After`, docs/
//! contract.md "Capacity") when it would pass the capacity, or while the
//! oldest waiting final has waited longer than the lag bound: stt is
//! behind right now, whatever the estimate says. One call (two streams) is
//! always admitted.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::engine::{DecodeOptions, Engine, EngineError};

/// Share of the workers' time finals may take at capacity. Chosen with
/// `bench-stt` (README "stt capacity"): the largest load whose final p95
/// stays under 1.5 s on the 2-core reference machine.
pub const TARGET_UTILISATION: f64 = 0.3;
/// Share of a call leg that is speech, for the start-up estimate (one party
/// of a conversation speaks 35-50% of the time).
const ASSUMED_SPEECH: f64 = 0.45;
/// Stream audio the window must hold before the measurement alone counts.
const ENOUGH_AUDIO_S: f64 = 60.0;
/// How far back the measurement looks.
const WINDOW: Duration = Duration::from_secs(60);
/// Always admitted: one call.
const FLOOR_STREAMS: usize = 2;

/// Where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `stt.capacity` set by the operator.
    Fixed,
    /// The start-up measurement (not enough traffic yet).
    Startup,
    /// Measured on the last minute of traffic (blended with the start-up
    /// figure while the minute holds little audio).
    Measured,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fixed => "fixed",
            Source::Startup => "startup",
            Source::Measured => "measured",
        }
    }
}

/// A reading of the estimate.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    /// Streams stt takes: the operator's figure, else the measured one.
    pub streams: usize,
    /// Streams the measurement says stt can carry (also when fixed).
    pub measured: usize,
    /// Worker seconds of finals per second of one stream's audio.
    pub load_per_stream: f64,
    pub source: Source,
}

pub struct Capacity {
    workers: usize,
    fixed: Option<usize>,
    max_streams: usize,
    /// Load per stream from the start-up decode.
    startup_load: f64,
    /// Decode microseconds per second of a final's audio, recent average.
    final_rtf_us: AtomicU64,
    /// Totals since start: worker microseconds the finals asked for
    /// (estimated when asked), stream audio ms.
    final_decode_us: AtomicU64,
    audio_ms: AtomicU64,
    /// (when, final_decode_us, audio_ms) once a second, for the window.
    marks: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl Capacity {
    /// `startup_rtf`: decode seconds per second of a typical utterance,
    /// measured once at start-up; `fixed`: the operator's figure, if any.
    pub fn new(workers: usize, startup_rtf: f64, fixed: Option<usize>, max_streams: usize) -> Self {
        Self {
            workers: workers.max(1),
            fixed,
            max_streams: max_streams.max(1),
            startup_load: (startup_rtf * ASSUMED_SPEECH).max(1e-4),
            final_rtf_us: AtomicU64::new((startup_rtf * 1e6) as u64),
            final_decode_us: AtomicU64::new(0),
            audio_ms: AtomicU64::new(0),
            marks: Mutex::new(VecDeque::from([(Instant::now(), 0, 0)])),
        }
    }

    /// A final of `audio_ms` was asked for: its cost counts from now.
    pub fn final_requested(&self, audio_ms: u64) {
        let rtf_us = self.final_rtf_us.load(Ordering::Relaxed);
        self.final_decode_us
            .fetch_add(rtf_us * audio_ms / 1000, Ordering::Relaxed);
    }

    /// A final of `audio_ms` took `decode` of a worker's time: the decode
    /// time per second of audio follows (a moving average).
    pub fn final_decoded(&self, decode: Duration, audio_ms: u64) {
        if audio_ms < 300 {
            return;
        }
        let this = decode.as_micros() as u64 * 1000 / audio_ms;
        let old = self.final_rtf_us.load(Ordering::Relaxed);
        self.final_rtf_us
            .store((old * 4 + this) / 5, Ordering::Relaxed);
    }

    /// A stream received `ms` of audio.
    pub fn audio(&self, ms: u64) {
        self.audio_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The current estimate.
    pub fn estimate(&self) -> Estimate {
        let now = Instant::now();
        let (decode_us, audio_ms) = (
            self.final_decode_us.load(Ordering::Relaxed),
            self.audio_ms.load(Ordering::Relaxed),
        );
        let (oldest_decode, oldest_audio) = {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            if marks
                .back()
                .is_none_or(|m| now - m.0 >= Duration::from_secs(1))
            {
                marks.push_back((now, decode_us, audio_ms));
            }
            while marks.len() > 2 && marks.get(1).is_some_and(|m| now - m.0 >= WINDOW) {
                marks.pop_front();
            }
            marks.front().map_or((0, 0), |m| (m.1, m.2))
        };
        let decode_s = (decode_us - oldest_decode) as f64 / 1e6;
        let audio_s = (audio_ms - oldest_audio) as f64 / 1e3;
        // Blend: the measured minute, topped up with the start-up figure
        // while it holds less than ENOUGH_AUDIO_S of audio.
        let filler = (ENOUGH_AUDIO_S - audio_s).max(0.0);
        let load = (decode_s + self.startup_load * filler) / (audio_s + filler);
        let source = if audio_s > 0.0 && decode_s > 0.0 {
            Source::Measured
        } else {
            Source::Startup
        };
        let measured = (self.workers as f64 * TARGET_UTILISATION / load.max(1e-6)).floor();
        let measured =
            (measured as usize).clamp(FLOOR_STREAMS.min(self.max_streams), self.max_streams);
        match self.fixed {
            Some(n) => Estimate {
                streams: n,
                measured,
                load_per_stream: load,
                source: Source::Fixed,
            },
            None => Estimate {
                streams: measured,
                measured,
                load_per_stream: load,
                source,
            },
        }
    }

    /// Whether one more stream may join `streams` open ones; `lag` is the
    /// wait of the oldest queued final, `max_lag` the bound past which stt
    /// counts as behind. `Err` says why not.
    pub fn admit(&self, streams: usize, lag: Duration, max_lag: Duration) -> Result<(), Refusal> {
        if streams < FLOOR_STREAMS {
            return Ok(());
        }
        let estimate = self.estimate();
        if streams >= estimate.streams {
            return Err(Refusal::Capacity(estimate.streams));
        }
        if lag > max_lag {
            return Err(Refusal::Behind(lag));
        }
        Ok(())
    }
}

/// Why a stream was refused at the handshake.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// At capacity (the figure).
    Capacity(usize),
    /// The oldest final has waited this long.
    Behind(Duration),
}

impl Refusal {
    /// The `reason` field of the 503 answer.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Capacity(_) => "capacity",
            Refusal::Behind(_) => "behind",
        }
    }
}

/// A typical final: this many seconds of audio.
const PROBE_S: usize = 3;
/// What a final costs against the start-up probe: the probe (3 s of a
/// low-level hum) gives the encoder's time but few tokens; a spoken 3 s
/// utterance decodes about this many times slower (measured with
/// `bench-stt` on the project's prompts, base and small, README "stt
/// capacity").
const SPEECH_OVER_PROBE: f64 = 3.0;

/// Decode seconds per second of a typical utterance, measured once at
/// start-up with the options the workers use (the second of two decodes,
/// the first warms the caches).
pub fn probe(engine: &Engine, options: &DecodeOptions) -> Result<f64, EngineError> {
    let mut worker = engine.worker()?;
    let audio: Vec<f32> = (0..PROBE_S * 16_000)
        .map(|i| (i as f32 * 0.0589).sin() * 0.01)
        .collect();
    let _ = worker.transcribe(&audio, options)?;
    let started = Instant::now();
    let _ = worker.transcribe(&audio, options)?;
    Ok(started.elapsed().as_secs_f64() * SPEECH_OVER_PROBE / PROBE_S as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_figure_until_traffic_then_measured() {
        // 0.2 s of decode per second of speech, 45% speech: 0.09 per
        // stream; 2 workers at 30%: 6 streams.
        let c = Capacity::new(2, 0.2, None, 256);
        let e = c.estimate();
        assert_eq!((e.streams, e.source), (6, Source::Startup));
        // Finals turn out to cost 0.4 s per second of their audio, and a
        // minute of traffic asks for 27 s of finals: 0.18 per stream.
        for _ in 0..60 {
            c.final_decoded(Duration::from_millis(400), 1_000);
        }
        c.audio(60_000);
        c.final_requested(27_000);
        let e = c.estimate();
        assert_eq!(e.source, Source::Measured);
        assert!((e.load_per_stream - 0.18).abs() < 1e-3, "{e:?}");
        assert_eq!(e.streams, 3);
    }

    #[test]
    fn half_a_minute_blends_with_the_startup_figure() {
        let c = Capacity::new(1, 0.6, None, 256);
        c.audio(30_000);
        // 27 s of finals at 0.6 s per second: 16.2 s of work, counted when
        // asked for (no worker has got to them yet).
        c.final_requested(27_000);
        // (16.2 + 0.27 x 30) / 60 = 0.405
        assert!((c.estimate().load_per_stream - 0.405).abs() < 1e-6);
    }

    #[test]
    fn one_call_is_always_admitted_then_capacity_and_lag_decide() {
        let c = Capacity::new(1, 50.0, None, 256);
        assert_eq!(c.estimate().streams, 2);
        let no_lag = Duration::ZERO;
        let bound = Duration::from_secs(2);
        assert!(c.admit(0, no_lag, bound).is_ok());
        assert!(c.admit(1, Duration::from_secs(60), bound).is_ok());
        assert_eq!(c.admit(2, no_lag, bound), Err(Refusal::Capacity(2)));
        let roomy = Capacity::new(4, 0.1, None, 256);
        assert!(roomy.admit(5, no_lag, bound).is_ok());
        assert_eq!(
            roomy.admit(5, Duration::from_secs(3), bound),
            Err(Refusal::Behind(Duration::from_secs(3)))
        );
    }

    #[test]
    fn a_fixed_capacity_wins_and_max_streams_caps() {
        let c = Capacity::new(2, 0.2, Some(7), 256);
        assert_eq!(
            (c.estimate().streams, c.estimate().source),
            (7, Source::Fixed)
        );
        let capped = Capacity::new(16, 0.01, None, 10);
        assert_eq!(capped.estimate().streams, 10);
    }
}
