//! The relay's Prometheus metrics, rendered by hand in the text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::telemetry::Counter;
use std::time::Duration;

/// Upper bounds of the commit-latency histogram, in seconds.
const COMMIT_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

/// Why a request was refused, as a label.
#[derive(Clone, Copy)]
pub enum Rejection {
    BadJson = 0,
    BadEnvelope,
    TooLarge,
    ContentType,
    Unauthorized,
    Forbidden,
    NotFound,
    Method,
    BadRequest,
}

const REJECTION_LABELS: [&str; 9] = [
    "bad_json",
    "bad_envelope",
    "too_large",
    "content_type",
    "unauthorized",
    "forbidden",
    "not_found",
    "method",
    "bad_request",
];

#[derive(Default)]
pub struct Metrics {
    pub events_in: Counter,
    pub events_out: Counter,
    pub events_replayed: Counter,
    pub subscribers: AtomicI64,
    pub subscriber_drops: Counter,
    pub store_errors: Counter,
    pub purged: Counter,
    /// Retried publishes answered with the first copy's numbers.
    pub duplicates: Counter,
    /// JetStream publishes that lost the race for a call's next `seq` to
    /// another relay, and were numbered again.
    pub publish_races: Counter,
    rejected: [Counter; 9],
    /// Stretches redacted at ingest, by category (`redact::Category`).
    pub redacted: [Counter; 6],
    commits: Counter,
    commit_events: Counter,
    commit_micros: Counter,
    commit_buckets: [Counter; 10],
}

impl Metrics {
    pub fn reject(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    pub fn observe_commit(&self, took: Duration, events: usize) {
        self.commits.inc();
        self.events_in.add(events as u64);
        self.commit_events.add(events as u64);
        self.commit_micros.add(took.as_micros() as u64);
        let secs = took.as_secs_f64();
        for (bound, counter) in COMMIT_BUCKETS.iter().zip(&self.commit_buckets) {
            if secs <= *bound {
                counter.inc();
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            crate::telemetry::prometheus(&mut o, name, "counter", help, v);
        };
        counter(
            "relay_events_in_total",
            "Events accepted and durably stored.",
            self.events_in.get(),
        );
        counter(
            "relay_events_out_total",
            "Event frames sent to subscribers (live and replay).",
            self.events_out.get(),
        );
        counter(
            "relay_events_replayed_total",
            "Event frames sent from the store on subscribe.",
            self.events_replayed.get(),
        );
        counter(
            "relay_subscriber_drops_total",
            "Subscribers dropped for not keeping up.",
            self.subscriber_drops.get(),
        );
        counter(
            "relay_store_errors_total",
            "Failed store commits.",
            self.store_errors.get(),
        );
        counter(
            "relay_events_purged_total",
            "Events deleted by retention.",
            self.purged.get(),
        );
        counter(
            "relay_duplicates_total",
            "Retried publishes (same Idempotency-Key) stored once.",
            self.duplicates.get(),
        );
        counter(
            "relay_publish_races_total",
            "JetStream publishes renumbered after another relay took the seq.",
            self.publish_races.get(),
        );
        let _ = writeln!(
            o,
            "# HELP relay_subscribers Websocket subscribers connected.\n# TYPE relay_subscribers gauge\nrelay_subscribers {}",
            self.subscribers.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP relay_rejected_total Requests refused, by reason.\n# TYPE relay_rejected_total counter"
        );
        for (label, c) in REJECTION_LABELS.iter().zip(&self.rejected) {
            let _ = writeln!(o, "relay_rejected_total{{reason=\"{label}\"}} {}", c.get());
        }
        let _ = writeln!(
            o,
            "# HELP relay_redactions_total Stretches of speech replaced by a placeholder at ingest, by category.\n# TYPE relay_redactions_total counter"
        );
        for (category, c) in super::redact::Category::ALL.iter().zip(&self.redacted) {
            let _ = writeln!(
                o,
                "relay_redactions_total{{category=\"{}\"}} {}",
                category.name(),
                c.get()
            );
        }
        let _ = writeln!(
            o,
            "# HELP relay_store_commit_seconds Latency of one group commit.\n# TYPE relay_store_commit_seconds histogram"
        );
        for (bound, c) in COMMIT_BUCKETS.iter().zip(&self.commit_buckets) {
            let _ = writeln!(
                o,
                "relay_store_commit_seconds_bucket{{le=\"{bound}\"}} {}",
                c.get()
            );
        }
        let commits = self.commits.get();
        let _ = writeln!(
            o,
            "relay_store_commit_seconds_bucket{{le=\"+Inf\"}} {commits}\nrelay_store_commit_seconds_sum {}\nrelay_store_commit_seconds_count {commits}",
            self.commit_micros.get() as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "# HELP relay_store_commit_events_total Events written by group commits.\n# TYPE relay_store_commit_events_total counter\nrelay_store_commit_events_total {}",
            self.commit_events.get()
        );
        if let Some((rss, cpu)) = crate::telemetry::process_stats(None) {
            let _ = writeln!(
                o,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n# HELP process_cpu_seconds_total User and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
            );
        }
        o
    }
}
