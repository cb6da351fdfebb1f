//! The relay's Prometheus metrics, rendered by hand in the text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::telemetry::Counter;
use std::time::Duration;

/// Upper bounds of the commit-latency histogram, in seconds.
const COMMIT_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

/// Upper bounds of the redaction-time histogram, in seconds.
pub const REDACT_BUCKETS: [f64; 12] = [
    0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002,
    0.005, 0.01,
];

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
    /// A question this relay has no data for (history without an archive).
    NotImplemented,
    /// The store failed while answering (history, scorecards, erasure).
    Store,
}

const REJECTION_LABELS: [&str; 11] = [
    "bad_json",
    "bad_envelope",
    "too_large",
    "content_type",
    "unauthorized",
    "forbidden",
    "not_found",
    "method",
    "bad_request",
    "not_implemented",
    "store",
];

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
    rejected: [Counter; 11],
    /// Stretches redacted at ingest, by category (`redact::Category`).
    pub redacted: [Counter; 6],
    redaction: Histogram,
    commit: Histogram,
    commit_events: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events_in: Counter::default(),
            events_out: Counter::default(),
            events_replayed: Counter::default(),
            subscribers: AtomicI64::default(),
            subscriber_drops: Counter::default(),
            store_errors: Counter::default(),
            purged: Counter::default(),
            duplicates: Counter::default(),
            publish_races: Counter::default(),
            rejected: Default::default(),
            redacted: Default::default(),
            redaction: Histogram::new(&REDACT_BUCKETS),
            commit: Histogram::new(&COMMIT_BUCKETS),
            commit_events: Counter::default(),
        }
    }
}

/// A Prometheus histogram of durations over fixed bounds (seconds).
struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<Counter>,
    count: Counter,
    micros: Counter,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| Counter::default()).collect(),
            count: Counter::default(),
            micros: Counter::default(),
        }
    }

    fn observe(&self, took: Duration) {
        self.count.inc();
        self.micros.add(took.as_micros() as u64);
        let secs = took.as_secs_f64();
        for (bound, counter) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *bound {
                counter.inc();
            }
        }
    }

    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, c) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(o, "{name}_bucket{{le=\"{bound}\"}} {}", c.get());
        }
        let n = self.count.get();
        let _ = writeln!(
            o,
            "{name}_bucket{{le=\"+Inf\"}} {n}\n{name}_sum {}\n{name}_count {n}",
            self.micros.get() as f64 / 1e6
        );
    }
}

impl Metrics {
    pub fn reject(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    pub fn observe_commit(&self, took: Duration, events: usize) {
        self.events_in.add(events as u64);
        self.commit_events.add(events as u64);
        self.commit.observe(took);
    }

    /// One event's time in the redactor.
    pub fn observe_redaction(&self, took: Duration) {
        self.redaction.observe(took);
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
        self.redaction.render(
            &mut o,
            "relay_redaction_seconds",
            "Time one incoming event spent in the redactor.",
        );
        self.commit.render(
            &mut o,
            "relay_store_commit_seconds",
            "Latency of one group commit.",
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
