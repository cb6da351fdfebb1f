//! stt's Prometheus metrics.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::telemetry::Counter;

#[derive(Default)]
pub struct Metrics {
    pub streams: AtomicI64,
    pub streams_total: Counter,
    /// Milliseconds of audio received.
    pub audio_ms: Counter,
    /// Milliseconds of speech the VAD heard in utterances.
    pub speech_ms: Counter,
    /// Jobs waiting for a worker (finals + partials).
    pub queue_finals: AtomicI64,
    pub queue_partials: AtomicI64,
    /// Partials replaced by a newer one (or by the final) before a worker
    /// got to them: the overload valve.
    pub partials_skipped: Counter,
    pub partials_done: Counter,
    /// Partials the segmenter asked for (one per `partial_every_ms` of
    /// speech in an utterance).
    pub partials_asked: Counter,
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
    /// Streams refused at the handshake because stt was full or behind.
    pub refused_capacity: Counter,
    pub refused_behind: Counter,
    /// Finals decoded the cheap way because they waited past `behind_ms`.
    pub finals_hurried: Counter,
    /// Finals not decoded: they waited past `give_up_secs`.
    pub finals_given_up: Counter,
    /// Finals served by their speculative decode (no decode after the end
    /// of speech was confirmed).
    pub finals_speculative: Counter,
    /// Speculative decodes dropped: speech resumed.
    pub speculative_wasted: Counter,
    /// Of those, decodes stopped midway (speech resumed while decoding).
    pub speculative_stopped: Counter,
    /// Utterances ended after the shorter silence: their speculative final
    /// read as a finished sentence.
    pub finals_early: Counter,
    /// Utterances past `long_utterance_ms` ended at a long turn's pause.
    pub finals_long: Counter,
    /// Decodes done again without the context and the domain prompt: with
    /// them, Whisper echoed words or ended too soon (`engine::misled`).
    pub context_dropped: Counter,
    /// Decodes that ran alone on idle cores with more threads.
    pub decodes_wide: Counter,
    /// Decodes on several threads stopped because another process came
    /// for their cores, and done again on one.
    pub decodes_gave_way: Counter,
    /// Decodes started on one thread instead of their worker's several,
    /// because other processes held the cores.
    pub decodes_narrowed: Counter,
    /// Partial decodes stopped midway to free their worker for a final.
    pub partials_aborted: Counter,
    /// Pieces of long utterances decoded to head their partials.
    pub partial_pieces: Counter,
    /// Finals decoded again the careful way (`stt.revise_finals`).
    pub revisions_done: Counter,
    /// Of those, sent as a revised final: the text differed.
    pub revisions_sent: Counter,
    /// Revisions stopped midway for other work (and queued again).
    pub revisions_stopped: Counter,
    /// Revisions dropped undecoded: too many waiting, waited past
    /// `give_up_secs`, or their stream ended first.
    pub revisions_dropped: Counter,
}

/// The capacity figures of the moment, rendered with the rest.
pub struct Load {
    pub capacity: usize,
    pub load_per_stream: f64,
    pub oldest_final_wait: std::time::Duration,
}

impl Metrics {
    pub fn render(&self, load: &Load) -> String {
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
            "Audio streams refused for bad parameters, over stt.max_streams, or while shutting down.",
            self.rejected_streams.get().to_string(),
        );
        put(
            "stt_streams_refused_total",
            "counter",
            "Audio streams refused at the handshake because stt was at capacity.",
            self.refused_capacity.get().to_string(),
        );
        put(
            "stt_streams_refused_behind_total",
            "counter",
            "Audio streams refused at the handshake because stt was behind (the oldest final waited past stt.behind_ms).",
            self.refused_behind.get().to_string(),
        );
        put(
            "stt_capacity_streams",
            "gauge",
            "Streams stt can carry now (measured; see /capacity).",
            load.capacity.to_string(),
        );
        put(
            "stt_headroom_streams",
            "gauge",
            "Streams stt can still take: capacity minus streams.",
            (load.capacity as i64 - self.streams.load(Ordering::Relaxed)).to_string(),
        );
        put(
            "stt_load_per_stream",
            "gauge",
            "Worker seconds spent on finals per second of one stream's audio (last minute).",
            format!("{:.4}", load.load_per_stream),
        );
        put(
            "stt_lag_seconds",
            "gauge",
            "How long the oldest waiting final has waited.",
            format!("{:.3}", load.oldest_final_wait.as_secs_f64()),
        );
        put(
            "stt_finals_hurried_total",
            "counter",
            "Finals decoded the cheap way (greedy, tight window) because stt was behind.",
            self.finals_hurried.get().to_string(),
        );
        put(
            "stt_finals_given_up_total",
            "counter",
            "Finals not decoded because they waited past stt.give_up_secs (each sent as a final with gap \"overload\").",
            self.finals_given_up.get().to_string(),
        );
        put(
            "stt_finals_speculative_total",
            "counter",
            "Finals served by a decode started when the silence began (stt.speculative_finals), not after the end of speech was confirmed.",
            self.finals_speculative.get().to_string(),
        );
        put(
            "stt_speculative_wasted_total",
            "counter",
            "Speculative decodes dropped because speech resumed.",
            self.speculative_wasted.get().to_string(),
        );
        put(
            "stt_speculative_stopped_total",
            "counter",
            "Speculative decodes stopped midway because speech resumed while they ran (also in stt_speculative_wasted_total): their worker is free at once.",
            self.speculative_stopped.get().to_string(),
        );
        put(
            "stt_finals_early_total",
            "counter",
            "Utterances ended after stt.end_silence_after_sentence_ms of silence, not stt.end_silence_ms, because their speculative final read as a finished sentence.",
            self.finals_early.get().to_string(),
        );
        put(
            "stt_finals_long_pause_total",
            "counter",
            "Utterances longer than stt.long_utterance_ms ended at the shorter pause stt.long_pause_ms, which shrinks to 100 ms over stt.long_pause_ramp_ms.",
            self.finals_long.get().to_string(),
        );
        put(
            "stt_context_dropped_total",
            "counter",
            "Decodes done again without their context (the previous final, or a partial's pieces) and stt.prompt, because with them Whisper echoed words or ended far too soon; the better text is kept.",
            self.context_dropped.get().to_string(),
        );
        put(
            "stt_partials_aborted_total",
            "counter",
            "Partial decodes stopped midway so that a final (or a speculative one) could start at once.",
            self.partials_aborted.get().to_string(),
        );
        put(
            "stt_partial_pieces_total",
            "counter",
            "Pieces of long utterances decoded once each to head their partials (stt.partial_window_ms), so that a partial decodes only what follows them.",
            self.partial_pieces.get().to_string(),
        );
        put(
            "stt_decodes_wide_total",
            "counter",
            "Decodes that ran alone while the other cores were idle, with up to stt.max_threads_when_idle threads.",
            self.decodes_wide.get().to_string(),
        );
        put(
            "stt_revisions_total",
            "counter",
            "Finals decoded again the careful way (stt.revision_beam, stt.revision_audio_ctx) while no final or partial waited (stt.revise_finals).",
            self.revisions_done.get().to_string(),
        );
        put(
            "stt_revisions_sent_total",
            "counter",
            "Revisions whose text differed from the first final's, sent as a second final with revised: true.",
            self.revisions_sent.get().to_string(),
        );
        put(
            "stt_revisions_stopped_total",
            "counter",
            "Revisions stopped midway because a final or a partial needed the worker (queued again).",
            self.revisions_stopped.get().to_string(),
        );
        put(
            "stt_revisions_dropped_total",
            "counter",
            "Revisions not decoded: too many waiting, waited past stt.give_up_secs, or their stream ended first. Their first final stands.",
            self.revisions_dropped.get().to_string(),
        );
        put(
            "stt_decodes_gave_way_total",
            "counter",
            "Decodes on several threads stopped because another process came for their cores (their spinning threads would stall), and done again on one thread.",
            self.decodes_gave_way.get().to_string(),
        );
        put(
            "stt_decodes_narrowed_total",
            "counter",
            "Decodes started on one thread instead of their worker's stt.threads_per_worker, because other processes held the cores (those done again on one after giving way are in stt_decodes_gave_way_total).",
            self.decodes_narrowed.get().to_string(),
        );
        put(
            "stt_audio_seconds_total",
            "counter",
            "Seconds of audio received.",
            (self.audio_ms.get() as f64 / 1000.0).to_string(),
        );
        put(
            "stt_speech_seconds_total",
            "counter",
            "Seconds of speech heard in utterances (a partial is asked for every partial_every_ms of it).",
            (self.speech_ms.get() as f64 / 1000.0).to_string(),
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
            "stt_partials_asked_total",
            "counter",
            "Partial transcriptions asked for (one per partial_every_ms of speech in an utterance).",
            self.partials_asked.get().to_string(),
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
