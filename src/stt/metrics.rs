//! stt's Prometheus metrics.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::telemetry::Counter;

#[derive(Default)]
pub struct Metrics {
    pub streams: AtomicI64,
    pub streams_total: Counter,
    /// Milliseconds of audio received.
    pub audio_ms: Counter,
    /// Jobs waiting for a worker (finals + partials).
    pub queue_finals: AtomicI64,
    pub queue_partials: AtomicI64,
    /// Partials replaced by a newer one (or by the final) before a worker
    /// got to them: the overload valve.
    pub partials_skipped: Counter,
    pub partials_done: Counter,
    pub finals_done: Counter,
    /// Results dropped by the hallucination and no-speech filters.
    pub filtered: Counter,
    /// Utterances dropped by the segmenter (too short, steady noise).
    pub segments_dropped: Counter,
    /// Microseconds spent in Whisper.
    pub decode_micros: Counter,
    /// The relay publisher's own counters.
    pub publish: std::sync::Arc<crate::relay_client::PublishStats>,
    pub rejected_streams: Counter,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut put = |name: &str, kind: &str, help: &str, v: String| {
            crate::telemetry::prometheus(&mut o, name, kind, help, v);
        };
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed).to_string();
        put(
            "stt_streams",
            "gauge",
            "Audio streams connected.",
            g(&self.streams),
        );
        put(
            "stt_streams_total",
            "counter",
            "Audio streams accepted.",
            self.streams_total.get().to_string(),
        );
        put(
            "stt_streams_rejected_total",
            "counter",
            "Audio streams refused (bad parameters, too many).",
            self.rejected_streams.get().to_string(),
        );
        put(
            "stt_audio_seconds_total",
            "counter",
            "Seconds of audio received.",
            (self.audio_ms.get() as f64 / 1000.0).to_string(),
        );
        put(
            "stt_queue_finals",
            "gauge",
            "Final transcriptions waiting for a worker.",
            g(&self.queue_finals),
        );
        put(
            "stt_queue_partials",
            "gauge",
            "Partial transcriptions waiting for a worker.",
            g(&self.queue_partials),
        );
        put(
            "stt_partials_skipped_total",
            "counter",
            "Partials skipped because a newer request replaced them.",
            self.partials_skipped.get().to_string(),
        );
        put(
            "stt_partials_total",
            "counter",
            "Partial transcriptions done.",
            self.partials_done.get().to_string(),
        );
        put(
            "stt_finals_total",
            "counter",
            "Final transcriptions done.",
            self.finals_done.get().to_string(),
        );
        put(
            "stt_filtered_total",
            "counter",
            "Results dropped as hallucination or no speech.",
            self.filtered.get().to_string(),
        );
        put(
            "stt_segments_dropped_total",
            "counter",
            "Utterances dropped as noise or too short.",
            self.segments_dropped.get().to_string(),
        );
        put(
            "stt_decode_seconds_total",
            "counter",
            "Time spent in Whisper.",
            (self.decode_micros.get() as f64 / 1e6).to_string(),
        );
        put(
            "stt_published_total",
            "counter",
            "Transcript events accepted by the relay.",
            self.publish.published.get().to_string(),
        );
        put(
            "stt_publish_retries_total",
            "counter",
            "Failed attempts to post to the relay.",
            self.publish.retries.get().to_string(),
        );
        put(
            "stt_publish_dropped_total",
            "counter",
            "Events dropped: refused by the relay, or the buffer was full.",
            self.publish.dropped.get().to_string(),
        );
        put(
            "stt_publish_queue",
            "gauge",
            "Events waiting to be posted.",
            g(&self.publish.queue),
        );
        if let Some((rss, cpu)) = crate::telemetry::process_stats(None) {
            put(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                rss.to_string(),
            );
            put(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent in seconds.",
                cpu.to_string(),
            );
        }
        o
    }
}
