//! Posting events to the relay (used by stt and the orchestrator) from a
//! thread of its own (ureq, blocking),
//! in order, with a bounded buffer: when the relay is down, events wait and
//! are retried with backoff, so a relay restart loses nothing. When the
//! buffer is full, the oldest partial goes first; finals go only when
//! nothing else is left to drop.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::event::Event;

use crate::setting::Secret;
use crate::telemetry::Counter;

/// What the publisher has done, for the owning service's metrics.
#[derive(Default)]
pub struct PublishStats {
    /// Events the relay accepted.
    pub published: Counter,
    /// Failed attempts (relay unreachable, 429, 5xx).
    pub retries: Counter,
    /// Events given up: refused by the relay, or the buffer was full.
    pub dropped: Counter,
    /// Events waiting.
    pub queue: std::sync::atomic::AtomicI64,
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Buffer {
    /// Each event with the `Idempotency-Key` all its attempts send, so a
    /// retry after a lost answer is stored once.
    events: VecDeque<(String, Event)>,
    closed: bool,
    /// Events queued so far (the keys' counter).
    queued: u64,
}

pub struct Publisher {
    buffer: Mutex<Buffer>,
    /// Unique to this publisher: process id and start time.
    key_prefix: String,
    ready: Condvar,
    capacity: usize,
    metrics: Arc<PublishStats>,
}

impl Publisher {
    /// Starts the posting thread.
    pub fn start(
        url: String,
        token: Option<Secret>,
        capacity: usize,
        metrics: Arc<PublishStats>,
    ) -> (Arc<Self>, std::thread::JoinHandle<()>) {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let publisher = Arc::new(Self {
            buffer: Mutex::default(),
            key_prefix: format!("{:x}-{started:x}", std::process::id()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            metrics,
        });
        let p = publisher.clone();
        let handle = std::thread::Builder::new()
            .name("relay-publish".into())
            .spawn(move || p.run(&url, token.as_ref()))
            .expect("spawning the publisher thread");
        (publisher, handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event; never blocks.
    pub fn send(&self, event: Event) {
        let mut b = self.lock();
        if b.events.len() >= self.capacity {
            let victim = b
                .events
                .iter()
                .position(|(_, e)| e.is_partial())
                .unwrap_or(0);
            b.events.remove(victim);
            self.metrics.dropped.inc();
            tracing::warn!(
                "relay buffer full: dropped the oldest {}",
                if victim == 0 { "event" } else { "partial" }
            );
        }
        b.queued += 1;
        let key = format!("{}-{}", self.key_prefix, b.queued);
        b.events.push_back((key, event));
        self.metrics
            .queue
            .store(b.events.len() as i64, Ordering::Relaxed);
        drop(b);
        self.ready.notify_one();
    }

    /// Tells the thread to finish: it posts what is queued (and anything
    /// sent meanwhile) until the queue is empty, for up to 5 s more, then
    /// gives up and counts the rest as dropped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn run(&self, url: &str, token: Option<&Secret>) {
        let agent = crate::net::agent(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .http_status_as_error(false)
                .build(),
        );
        let mut backoff = BACKOFF_START;
        let mut closed_at: Option<Instant> = None;
        loop {
            let (key, event) = {
                let mut b = self.lock();
                loop {
                    // Taken out while in flight; put back if it fails.
                    if let Some(e) = b.events.pop_front() {
                        break e;
                    }
                    if b.closed {
                        return;
                    }
                    b = self.ready.wait(b).unwrap_or_else(|e| e.into_inner());
                }
            };
            if self.lock().closed {
                let since = *closed_at.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    // The one in hand is lost too.
                    let left = self.lock().events.len() + 1;
                    tracing::error!(
                        events = left,
                        "relay unreachable at shutdown: events not delivered"
                    );
                    self.metrics.dropped.add(left as u64);
                    return;
                }
            }
            let mut req = agent
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", &key);
            if let Some(t) = token {
                req = req.header("authorization", &format!("Bearer {}", t.expose()));
            }
            let outcome = req.send(event.to_json().as_bytes());
            let done = match outcome {
                Ok(resp) if resp.status().is_success() => {
                    self.metrics.published.inc();
                    true
                }
                Ok(resp) if resp.status().as_u16() == 429 || resp.status().is_server_error() => {
                    tracing::warn!(%url, status = %resp.status(), "relay refused an event for now; retrying");
                    false
                }
                Ok(resp) => {
                    // A 4xx will not get better by retrying.
                    tracing::error!(status = %resp.status(), "relay rejected an event; dropped");
                    self.metrics.dropped.inc();
                    true
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "relay unreachable; retrying");
                    false
                }
            };
            let mut b = self.lock();
            if done {
                backoff = BACKOFF_START;
            } else {
                b.events.push_front((key, event));
                self.metrics.retries.inc();
            }
            self.metrics
                .queue
                .store(b.events.len() as i64, Ordering::Relaxed);
            if !done {
                let _ = self.ready.wait_timeout(b, backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Posts one event and waits for the relay's 202, once, without the
/// buffer (for the tools that stand in for ari-coach: `demo`, `bench-e2e`).
pub async fn post_once(event_url: &str, event: &Event) -> anyhow::Result<()> {
    let url = event_url.to_owned();
    let body = event.to_json();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let resp = crate::net::agent(ureq::Agent::config_builder().build())
            .post(&url)
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| anyhow::anyhow!("posting to the relay at {url}: {e}"))?;
        if resp.status() != 202 {
            anyhow::bail!("the relay at {url} answered {}", resp.status());
        }
        Ok(())
    })
    .await?
}
