//! The relay's event log on NATS JetStream, for running several relays
//! (and hosts) side by side: `relay.nats.url` (`RELAY_NATS_URL`) set.
//!
//! - One replicated stream; one subject per call (`<prefix>.<callId>`,
//!   `.` in the id written `=`, which call ids cannot hold).
//! - `pos` is the stream sequence: gap-free across calls, the same on every
//!   relay. It is not in the stored body; it is added on the way out.
//! - `seq` is written into the body before publishing, and made gap-free per
//!   call across relays by JetStream's expected-last-subject-sequence
//!   check: a relay that lost the race learns the call's last message and
//!   tries again with the next number.
//! - A publisher's `Idempotency-Key` becomes the `Nats-Msg-Id`: a retried
//!   POST within the stream's duplicate window is stored once and answered
//!   with the first one's `seq` and `pos`.
//! - Each relay follows the whole stream with one ordered consumer (the
//!   "tail"): it feeds the local hub (live subscribers), the call index
//!   behind `/calls`, and [`Store::head`]. Replay reads JetStream directly,
//!   so a subscriber resumes with `since` on any relay.
//!
//! A `202` is sent only after JetStream acknowledged the write, that is once
//! a majority of the stream's replicas stored it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, context, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::calls::{CallInfo, Calls};
use super::history::archive::Archive;
use super::hub::Hub;
use super::metrics::Metrics;
use super::store::{Appended, StoreError, StoredEvent};
use crate::event::{Envelope, now_unix_ms, rfc3339_millis};
use crate::setting::Secret;

/// The header holding an event's per-call `seq` (also in its body).
const SEQ_HEADER: &str = "Call-Coach-Seq";
/// Publishing one event gives up after this many lost races for its call.
const MAX_RACES: usize = 50;
/// Stripes of the per-call publishing lock.
const LOCK_STRIPES: usize = 256;
/// How long a starting relay waits for JetStream to answer.
const STARTUP_PATIENCE: Duration = Duration::from_secs(60);
/// Events the tail hands to the hub at once at most.
const TAIL_BATCH: usize = 512;
/// How long one publish keeps trying while no server answers for the
/// stream ("no responders": a stream just made, whose subjects have not
/// reached every server of the cluster yet, or a leader being elected),
/// before the POST is answered `503`.
const NO_RESPONDERS_PATIENCE: Duration = Duration::from_secs(3);

/// `[relay.nats]`: the JetStream mode. Without `url`, the relay keeps its
/// events in SQLite on its own disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// NATS servers, comma-separated (`nats://host:4222,nats://...`).
    /// `RELAY_NATS_URL`.
    pub url: Option<String>,
    /// A NATS credentials file (`.creds`: JWT and nkey seed); also the
    /// systemd credential `relay_nats_creds`.
    pub credentials_file: Option<PathBuf>,
    /// A token for servers that use token auth (or `token_file`, or the
    /// systemd credential `nats.token`).
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// The JetStream stream holding the events.
    pub stream: String,
    /// Subject prefix; each call is `<prefix>.<callId>`.
    pub subject_prefix: String,
    /// Copies of every event; 0 chooses: 3 on a clustered server (one
    /// fewer after JetStream has refused a count for want of servers for
    /// 10 s: 2 on a 2-node cluster), 1 on a lone one. Only used when the
    /// stream is created.
    pub replicas: usize,
    /// A publish not acknowledged within this many ms is answered 503.
    pub timeout_ms: u64,
    /// A retried POST with the same `Idempotency-Key` within this many
    /// seconds is stored once.
    pub duplicate_window_secs: u64,
    /// Keep the call history (`/history`, `/scorecards`, search) on this
    /// relay: a local SQLite copy of the stream in `state_dir`, filled by
    /// the relay's tail. One or two relays of a cluster are enough.
    pub archive: bool,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: None,
            credentials_file: None,
            token: None,
            token_file: None,
            stream: "CALLCOACH_EVENTS".into(),
            subject_prefix: "callcoach.events".into(),
            replicas: 0,
            timeout_ms: 5_000,
            duplicate_window_secs: 120,
            archive: false,
        }
    }
}

/// Name of the systemd credential holding the NATS credentials file.
pub const CREDS_CREDENTIAL: &str = "relay_nats_creds";

/// The subject of erasure tombstones (payload: the call id). Call ids
/// start with a letter or digit, so it is no call's subject.
pub fn erased_subject(prefix: &str) -> String {
    format!("{prefix}._erased")
}

/// The subject the write probe is sent to: not a call's (no call id starts
/// with `_`), so the tail passes over it were it ever stored.
fn probe_subject(prefix: &str) -> String {
    format!("{prefix}._probe")
}

/// The subject of one call's events.
pub fn subject(prefix: &str, call_id: &str) -> String {
    format!("{prefix}.{}", call_id.replace('.', "="))
}

/// The per-call numbers a relay last saw: `seq` and its stream sequence.
#[derive(Debug, Clone, Copy, Default)]
struct Last {
    seq: i64,
    pos: u64,
}

struct Inner {
    js: jetstream::Context,
    client: async_nats::Client,
    stream: stream::Stream,
    prefix: String,
    last: Mutex<HashMap<String, Last>>,
    locks: Vec<tokio::sync::Mutex<()>>,
    head: AtomicI64,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
    /// The local history, when this relay keeps one.
    archive: Option<Archive>,
}

impl Inner {
    /// Keeps a call's newest numbers (from an ack or the tail, whichever is
    /// further along).
    fn remember(&self, call_id: &str, last: Last) {
        let mut map = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(call_id.to_owned()).or_default();
        if last.pos > entry.pos {
            *entry = last;
        }
    }
}

/// Handle to the JetStream log; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Connects, makes sure the stream exists, and follows it up to its end
/// before returning (so `/calls` and numbering know every stored call).
pub async fn open(
    s: &NatsSettings,
    retention_days: u32,
    hub: Arc<Hub>,
    calls: Arc<Calls>,
    metrics: Arc<Metrics>,
    archive: Option<Archive>,
    shutdown: CancellationToken,
) -> Result<Store, StoreError> {
    let client = crate::nats::connect(&crate::nats::Target {
        url: s.url.as_deref().unwrap_or_default(),
        url_setting: "relay.nats.url (RELAY_NATS_URL)",
        credentials_file: s.credentials_file.as_deref(),
        credentials_setting: "relay.nats.credentials_file",
        token: s.token.as_ref(),
        name: "call-coach relay",
    })
    .await
    .map_err(StoreError::Nats)?;
    let timeout = Duration::from_millis(s.timeout_ms.max(100));
    let js = jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client.clone());

    let info = client.server_info();
    let mut replicas = crate::nats::Replicas::new(s.replicas, "relay.nats.replicas", &client);
    let mut config = stream::Config {
        name: s.stream.clone(),
        subjects: vec![format!("{}.>", s.subject_prefix)],
        storage: stream::StorageType::File,
        num_replicas: replicas.count(),
        max_age: if retention_days == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(u64::from(retention_days) * 86_400)
        },
        duplicate_window: Duration::from_secs(s.duplicate_window_secs.max(1)),
        allow_direct: true,
        ..Default::default()
    };
    // A cluster that is just forming (or busy) may not answer JetStream
    // requests yet: keep asking for a while before giving up.
    let started = Instant::now();
    let (stream, state) = loop {
        config.num_replicas = replicas.count();
        let attempt = async {
            let mut stream = js.get_or_create_stream(config.clone()).await.map_err(|e| {
                let lacking = crate::nats::lacks_servers(&e);
                (what_to_set(&e, &s.subject_prefix), e.to_string(), lacking)
            })?;
            let state = stream
                .info()
                .await
                .map_err(|e| (None, e.to_string(), false))?
                .clone();
            Ok::<_, (Option<String>, String, bool)>((stream, state))
        };
        match attempt.await {
            Ok(found) => break found,
            Err((Some(what_to_do), e, _)) => {
                return Err(StoreError::Nats(format!(
                    "JetStream refused the stream {}: {e}; {what_to_do}",
                    s.stream
                )));
            }
            Err((None, e, lacking))
                if started.elapsed() < STARTUP_PATIENCE && !shutdown.is_cancelled() =>
            {
                if !replicas.refused(lacking) {
                    tracing::warn!(error = %e, stream = %s.stream, "JetStream not answering yet; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err((_, e, _)) => {
                return Err(StoreError::Nats(format!(
                    "JetStream stream {}: {e}",
                    s.stream
                )));
            }
        }
    };
    // A stream of this name made for other subjects (another deployment,
    // another prefix) would take none of these events.
    let wanted = format!("{}.>", s.subject_prefix);
    if !state.config.subjects.contains(&wanted) {
        return Err(StoreError::Nats(format!(
            "the JetStream stream {} holds the subjects {:?}, not {wanted}: it belongs to \
             another relay.nats.subject_prefix; set relay.nats.stream to another name, or \
             the prefix it has",
            s.stream, state.config.subjects
        )));
    }
    // A stream made before keeps its replicas; its retention and duplicate
    // window follow the settings (they may change between starts).
    if state.config.max_age != config.max_age
        || state.config.duplicate_window != config.duplicate_window
    {
        let mut changed = state.config.clone();
        changed.max_age = config.max_age;
        changed.duplicate_window = config.duplicate_window;
        match js.update_stream(&changed).await {
            Ok(_) => tracing::info!(
                stream = %s.stream,
                retention_days,
                "retention of the stream updated"
            ),
            Err(e) => {
                tracing::warn!(stream = %s.stream, error = %e, "could not update the stream's retention")
            }
        }
    }
    // A stream just made answers its API before its subjects have reached
    // every server: publishes through this relay's server then find "no
    // responders" for a moment. Serve only once a write would reach it.
    let started = Instant::now();
    loop {
        match probe_writes(&js, &s.subject_prefix, &s.stream).await {
            Ok(()) => break,
            Err(e) if started.elapsed() < STARTUP_PATIENCE && !shutdown.is_cancelled() => {
                tracing::info!(error = %e, stream = %s.stream, "the stream does not take writes here yet; waiting");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(StoreError::Nats(format!(
                    "JetStream stream {}: writes found no stream for {STARTUP_PATIENCE:?}: {e}",
                    s.stream
                )));
            }
        }
    }
    let end = state.state.last_sequence;
    tracing::info!(
        stream = %s.stream,
        replicas = state.config.num_replicas,
        events = state.state.messages,
        server = %info.server_name,
        "relay events on JetStream"
    );
    let inner = Arc::new(Inner {
        js,
        client,
        stream,
        prefix: s.subject_prefix.clone(),
        last: Mutex::default(),
        locks: (0..LOCK_STRIPES)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
        head: AtomicI64::new(0),
        closed: AtomicBool::new(false),
        metrics,
        archive,
    });
    let (caught_up_tx, mut caught_up) = tokio::sync::watch::channel(false);
    let tail = Tail {
        inner: inner.clone(),
        hub,
        calls,
        caught_up: caught_up_tx,
    };
    tokio::spawn(tail.run(shutdown.clone()));
    // Follow the stream to its end, so the call index and the numbering
    // know every stored call before anyone is served.
    let started = Instant::now();
    while !*caught_up.borrow_and_update() {
        tokio::select! {
            changed = caught_up.changed() => if changed.is_err() {
                return Err(StoreError::Closed);
            },
            _ = tokio::time::sleep(Duration::from_secs(5)) => tracing::info!(
                at = inner.head.load(Ordering::Acquire),
                of = end,
                "reading the stored events into the call index"
            ),
            _ = shutdown.cancelled() => return Err(StoreError::Closed),
        }
    }
    if end > 0 {
        tracing::info!(
            events = end,
            took_ms = started.elapsed().as_millis() as u64,
            "call index read"
        );
    }
    Ok(Store { inner })
}

/// What to set about a stream JetStream will not make.
fn what_to_set(e: &context::CreateStreamError, prefix: &str) -> Option<String> {
    use crate::nats::Refused;
    Some(match crate::nats::refused_for_good(e)? {
        Refused::SubjectsTaken => format!(
            "another stream takes the subjects {prefix}.>: set relay.nats.subject_prefix (and \
             relay.nats.stream) apart from it, or relay.nats.stream to that stream's name"
        ),
        Refused::NameTaken => {
            "a stream of this name exists with another configuration: set relay.nats.stream".into()
        }
        Refused::NotClustered => "this NATS server is not clustered: set \
             relay.nats.replicas = 1, or 0 (as many as the cluster has, up to 3)"
            .into(),
        Refused::Invalid => {
            "check relay.nats.stream, relay.nats.subject_prefix and relay.nats.replicas".into()
        }
    })
}

/// Whether a publish through this connection reaches the stream, without
/// storing anything: the probe names another stream as the one expected,
/// so the stream (when it answers) refuses it. Only "no responders" (no
/// server took the subject) is an error.
async fn probe_writes(
    js: &jetstream::Context,
    prefix: &str,
    stream: &str,
) -> Result<(), context::PublishError> {
    let probe = jetstream::message::PublishMessage::build()
        .payload(Bytes::new())
        .expected_stream(format!("{stream}-probe-not-this-stream"));
    let answer = async { js.send_publish(probe_subject(prefix), probe).await?.await }.await;
    match answer {
        Err(e) if e.kind() == context::PublishErrorKind::StreamNotFound => Err(e),
        Err(e) if e.kind() == context::PublishErrorKind::TimedOut => Err(e),
        // The stream refused it (expected stream does not match): it answers.
        Err(_) => Ok(()),
        Ok(ack) => {
            // Not refused: a server that ignores the expected-stream header.
            // It was stored, under a subject that no call has.
            tracing::warn!(seq = ack.sequence, "the write probe was stored");
            Ok(())
        }
    }
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Nats(format!("{what}: {e}"))
}

impl Store {
    /// `pos` of the newest event handed to the hub.
    pub fn head(&self) -> i64 {
        self.inner.head.load(Ordering::Acquire)
    }

    /// True once the tail has stopped (shutdown).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Whether the NATS connection is up now.
    pub fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// `Unavailable` (a 503) unless the NATS connection is up now.
    fn ensure_connected(&self) -> Result<(), StoreError> {
        if self.connected() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "not connected to NATS; retry later".into(),
            ))
        }
    }

    fn subject(&self, call_id: &str) -> String {
        subject(&self.inner.prefix, call_id)
    }

    /// The local history, when this relay keeps one.
    pub fn archive(&self) -> Option<&Archive> {
        self.inner.archive.as_ref()
    }

    /// Deletes a call: purges its subject from the stream (every replica),
    /// then publishes a tombstone so every relay's archive erases it too.
    /// Returns how many messages went.
    pub async fn erase(&self, call_id: &str) -> Result<u64, StoreError> {
        // NATS gone or not answering is a 503 (ask again: a repeat purges
        // what is left and publishes the tombstone), not a 500.
        let failed = |what: &str, e: &dyn std::fmt::Display, not_answering: bool| {
            if !self.connected() || not_answering {
                StoreError::Unavailable(format!(
                    "{what} of call {call_id}: {e} (NATS not answering); retry later"
                ))
            } else {
                StoreError::Nats(format!("{what} of call {call_id}: {e}"))
            }
        };
        let tombstone = |e: context::PublishError| {
            let not_answering = publish_not_answered(&e);
            failed("tombstone", &e, not_answering)
        };
        self.ensure_connected()?;
        let purged = self
            .inner
            .stream
            .purge()
            .filter(self.subject(call_id))
            .await
            .map_err(|e| {
                use stream::PurgeErrorKind as K;
                let not_answering = matches!(e.kind(), K::TimedOut | K::Request);
                failed("purge", &e, not_answering)
            })?;
        self.inner
            .js
            .publish(
                erased_subject(&self.inner.prefix),
                call_id.to_owned().into(),
            )
            .await
            .map_err(tombstone)?
            .await
            .map_err(tombstone)?;
        self.inner
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(call_id);
        Ok(purged.purged)
    }

    fn remember(&self, call_id: &str, last: Last) {
        self.inner.remember(call_id, last);
    }

    fn known(&self, call_id: &str) -> Last {
        let map = self.inner.last.lock().unwrap_or_else(|e| e.into_inner());
        map.get(call_id).copied().unwrap_or_default()
    }

    /// The call's last stored message, asked of JetStream.
    async fn fetch_last(&self, subject: &str) -> Result<Last, StoreError> {
        match self
            .inner
            .stream
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(m) => Ok(Last {
                seq: seq_of(Some(&m.headers), &m.payload),
                pos: m.sequence,
            }),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(Last::default())
            }
            Err(e) => Err(nats_error("reading the call's last event", e)),
        }
    }

    /// Stores one event: numbered after the call's last, acknowledged by
    /// JetStream. `key` deduplicates a retried publish.
    pub async fn append(
        &self,
        mut event: Envelope,
        key: Option<&str>,
    ) -> Result<Appended, Arc<StoreError>> {
        self.append_inner(&mut event, key).await.map_err(|e| {
            self.inner.metrics.store_errors.inc();
            Arc::new(e)
        })
    }

    async fn append_inner(
        &self,
        event: &mut Envelope,
        key: Option<&str>,
    ) -> Result<Appended, StoreError> {
        self.ensure_connected()?;
        let started = Instant::now();
        let call_id = event.call_id().to_owned();
        let subject = self.subject(&call_id);
        // One publish per call at a time from this relay; other relays are
        // ordered by JetStream's check.
        let stripe = stripe_of(&call_id);
        let _turn = self.inner.locks[stripe].lock().await;
        let mut last = self.known(&call_id);
        let ts = rfc3339_millis(now_unix_ms());
        // `pos` is the stream's; it is added on the way out.
        event.fields.shift_remove("pos");
        let mut races = 0;
        let mut wait = Duration::from_millis(50);
        while races < MAX_RACES {
            let seq = last.seq + 1;
            event.fields.insert("seq".into(), Value::from(seq));
            if !event.fields.contains_key("ts") {
                event.fields.insert("ts".into(), Value::from(ts.clone()));
            }
            let body = serde_json::to_vec(&event.fields)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(body))
                .header(SEQ_HEADER, seq.to_string().as_str())
                .expected_last_subject_sequence(last.pos);
            if let Some(key) = key {
                publish = publish.message_id(key);
            }
            let ack = async {
                self.inner
                    .js
                    .send_publish(subject.clone(), publish)
                    .await?
                    .await
            }
            .await;
            match ack {
                Ok(ack) if ack.duplicate => {
                    // Stored before (a retried POST): answer with its numbers.
                    let first = self
                        .inner
                        .stream
                        .get_raw_message(ack.sequence)
                        .await
                        .map_err(|e| nats_error("reading the first copy of a retried event", e))?;
                    let seq = seq_of(Some(&first.headers), &first.payload);
                    self.inner.metrics.duplicates.inc();
                    return Ok(Appended {
                        seq,
                        pos: ack.sequence as i64,
                        duplicate: true,
                    });
                }
                Ok(ack) => {
                    self.remember(
                        &call_id,
                        Last {
                            seq,
                            pos: ack.sequence,
                        },
                    );
                    self.inner.metrics.observe_commit(started.elapsed(), 1);
                    return Ok(Appended {
                        seq,
                        pos: ack.sequence as i64,
                        duplicate: false,
                    });
                }
                Err(e) if lost_race(&e) => {
                    // Another relay stored an event of this call meanwhile.
                    races += 1;
                    self.inner.metrics.publish_races.inc();
                    last = self.fetch_last(&subject).await?;
                    self.remember(&call_id, last);
                }
                Err(e)
                    if e.kind() == context::PublishErrorKind::StreamNotFound
                        && started.elapsed() + wait < NO_RESPONDERS_PATIENCE =>
                {
                    // No server took the subject just now (a leader being
                    // elected): nothing was stored; ask again shortly.
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(800));
                }
                Err(e) => {
                    return Err(if publish_not_answered(&e) {
                        StoreError::Unavailable(format!(
                            "JetStream did not acknowledge: {e}; retry later"
                        ))
                    } else {
                        nats_error("publishing to JetStream", e)
                    });
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "call {call_id}: {MAX_RACES} publishes in a row lost the race for the next seq; retry later"
        )))
    }

    /// Up to `limit` stored events after a cursor, in order: of one call
    /// with `seq > after` (reading from stream position `from_pos + 1`, a
    /// lower bound the caller may know), or of all calls with `pos > after`.
    pub async fn read_after(
        &self,
        call_id: Option<String>,
        after: i64,
        from_pos: i64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        // Nothing after the cursor that the tail has seen: nothing to read.
        // What the tail has not seen yet reaches the hub after this
        // subscriber joined it (see `ws`), so it is not lost. This spares
        // JetStream a consumer for every live subscriber that connects.
        let seen = match &call_id {
            Some(id) => self.known(id).seq,
            None => self.head(),
        };
        if seen <= after {
            return Ok(Vec::new());
        }
        let (filter, start) = match &call_id {
            Some(id) => (self.subject(id), from_pos.max(0) as u64 + 1),
            None => (format!("{}.>", self.inner.prefix), after.max(0) as u64 + 1),
        };
        let consumer = self
            .inner
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("replay", e))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(Vec::new());
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| nats_error("replay", e))?;
        let mut out = Vec::new();
        while out.len() < limit {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| {
                    StoreError::Unavailable("replay: JetStream stopped answering".into())
                })?;
            let Some(message) = next else { break };
            let message = message.map_err(|e| nats_error("replay", e))?;
            let info = message.info().map_err(|e| nats_error("replay", e))?;
            let pending = info.pending;
            let pos = info.stream_sequence;
            if let Some(ev) = call_of_subject(&self.inner.prefix, &message.subject)
                .and_then(|id| stored_event(message.headers.as_ref(), &message.payload, pos, id))
                && (call_id.is_none() || ev.seq > after)
            {
                out.push(Arc::new(ev));
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }
}

/// Whether a publish failed because JetStream did not answer (no ack in
/// time, the connection broke, no server took the subject): nothing is
/// wrong with the request, so ask again later (503).
fn publish_not_answered(e: &context::PublishError) -> bool {
    use context::PublishErrorKind as K;
    matches!(e.kind(), K::TimedOut | K::BrokenPipe | K::StreamNotFound)
}

/// Whether JetStream refused a publish because the call's last message is
/// not the one we expected: another relay stored one meanwhile. Servers
/// answer with error 10071 or (2.12 and later, replicated) 10164, which
/// the client only maps in part.
fn lost_race(e: &context::PublishError) -> bool {
    e.kind() == context::PublishErrorKind::WrongLastSequence
        || e.to_string().contains("wrong last sequence")
}

fn stripe_of(call_id: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call_id.hash(&mut h);
    (h.finish() as usize) % LOCK_STRIPES
}

/// An event's `seq`: its header, else its body.
fn seq_of(headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> i64 {
    headers
        .and_then(|h| h.get(SEQ_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .or_else(|| {
            serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get("seq").and_then(Value::as_i64))
        })
        .unwrap_or(0)
}

/// The call id of a subject written by [`subject`].
fn call_of_subject(prefix: &str, subject: &str) -> Option<String> {
    let id = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    // Not a call's: the erasure tombstones' subject.
    let id = id.replace('=', ".");
    crate::event::is_valid_call_id(&id).then_some(id)
}

/// One stored message as delivered: its body with `pos` added at the end.
/// No JSON parsing: the call comes from the subject, `seq` from a header.
fn stored_event(
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
    pos: u64,
    call_id: String,
) -> Option<StoredEvent> {
    let text = std::str::from_utf8(payload).ok()?.trim_end();
    let open = text.strip_suffix('}')?;
    let sep = if open.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    let json = format!("{open}{sep}\"pos\":{pos}}}");
    Some(StoredEvent {
        pos: pos as i64,
        seq: seq_of(headers, payload),
        call_id,
        json: Utf8Bytes::from(json),
    })
}

/// Whether an event may change the call index (`CallInfo::observe` looks
/// at `call.started` and `call.ended` only): the others are not parsed.
fn is_lifecycle(payload: &[u8]) -> bool {
    let has = |needle: &[u8]| payload.windows(needle.len()).any(|w| w == needle);
    has(b"call.started") || has(b"call.ended")
}

/// Follows the whole stream: the local hub, the call index, the head.
struct Tail {
    inner: Arc<Inner>,
    hub: Arc<Hub>,
    calls: Arc<Calls>,
    caught_up: tokio::sync::watch::Sender<bool>,
}

impl Tail {
    async fn run(self, shutdown: CancellationToken) {
        let mut next = 1u64;
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = tokio::select! {
                r = self.follow(&mut next) => r,
                _ = shutdown.cancelled() => break,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "following the JetStream stream; resuming");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.inner.closed.store(true, Ordering::Release);
    }

    /// Reads from stream position `next` on until the consumer fails.
    async fn follow(&self, next: &mut u64) -> Result<(), StoreError> {
        let consumer = self
            .inner
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}.>", self.inner.prefix),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: *next,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("tail", e))?;
        if consumer.cached_info().num_pending == 0 {
            // Nothing stored after `next - 1`: caught up already.
            self.caught_up.send_replace(true);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| nats_error("tail", e))?
            .ready_chunks(TAIL_BATCH);
        let erased_subject = erased_subject(&self.inner.prefix);
        while let Some(chunk) = messages.next().await {
            let mut batch = Vec::with_capacity(chunk.len());
            let mut stored_at = Vec::with_capacity(chunk.len());
            let mut erased: Vec<String> = Vec::new();
            let mut updates: HashMap<String, CallInfo> = HashMap::new();
            let mut failed = None;
            let mut caught_up = false;
            for m in chunk {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        failed = Some(nats_error("tail", e));
                        break;
                    }
                };
                let Ok(info) = m.info() else { continue };
                let pos = info.stream_sequence;
                let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
                caught_up |= info.pending == 0;
                *next = pos + 1;
                if m.subject.as_str() == erased_subject {
                    if let Ok(id) = std::str::from_utf8(&m.payload)
                        && crate::event::is_valid_call_id(id)
                    {
                        erased.push(id.to_owned());
                    }
                    continue;
                }
                let Some(ev) = call_of_subject(&self.inner.prefix, &m.subject)
                    .and_then(|id| stored_event(m.headers.as_ref(), &m.payload, pos, id))
                else {
                    continue;
                };
                let info = match updates.get_mut(&ev.call_id) {
                    Some(info) => info,
                    None => {
                        let base = self
                            .calls
                            .get(&ev.call_id)
                            .unwrap_or_else(|| CallInfo::new(&ev.call_id));
                        updates.entry(ev.call_id.clone()).or_insert(base)
                    }
                };
                info.last_seq = info.last_seq.max(ev.seq);
                info.last_ms = published_ms;
                if is_lifecycle(&m.payload)
                    && let Ok(envelope) = Envelope::parse(&m.payload)
                {
                    info.observe(&envelope, published_ms);
                }
                stored_at.push(published_ms);
                batch.push(Arc::new(ev));
            }
            for ev in &batch {
                let last = Last {
                    seq: ev.seq,
                    pos: ev.pos as u64,
                };
                self.inner.remember(&ev.call_id, last);
            }
            let infos: Vec<CallInfo> = updates.into_values().collect();
            if let Some(archive) = &self.inner.archive {
                let copied = batch.iter().cloned().zip(stored_at).collect();
                archive.copy(copied, infos.clone()).await;
            }
            self.calls.update(infos);
            // Erasures (on any relay): forget the call here too.
            for id in &erased {
                self.calls.forget(std::slice::from_ref(id));
                self.inner
                    .last
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                if let Some(archive) = &self.inner.archive {
                    archive.erase(id).await;
                }
            }
            if let Some(last) = batch.last() {
                self.inner.head.store(last.pos, Ordering::Release);
                self.hub.publish(&batch);
            }
            if caught_up {
                self.caught_up.send_replace(true);
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Err(StoreError::Nats("tail: the consumer ended".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_call_ids_apart() {
        assert_eq!(subject("cc.ev", "a.b:c_1"), "cc.ev.a=b:c_1");
        assert_ne!(subject("p", "a.b"), subject("p", "a_b"));
        // `=` cannot be in a call id, so the mapping is one-to-one.
        assert!(!crate::event::is_valid_call_id("a=b"));
    }

    #[test]
    fn pos_is_added_to_the_body() {
        let ev = stored_event(
            None,
            br#"{"type":"t","callId":"c","seq":3}"#,
            17,
            "c".into(),
        )
        .unwrap();
        assert_eq!(
            ev.json.as_str(),
            r#"{"type":"t","callId":"c","seq":3,"pos":17}"#
        );
        assert_eq!((ev.pos, ev.seq, ev.call_id.as_str()), (17, 3, "c"));
        assert!(stored_event(None, b"not json", 1, "c".into()).is_none());
        assert_eq!(
            call_of_subject("cc.ev", &subject("cc.ev", "ast1:17.3")).as_deref(),
            Some("ast1:17.3")
        );
        assert!(is_lifecycle(br#"{"type":"call.ended","callId":"c"}"#));
        assert!(!is_lifecycle(br#"{"type":"transcript","callId":"c"}"#));
    }
}
