//! The relay's durable event log: SQLite in WAL mode, one writer thread that
//! assigns `seq`/`ts`/`pos` and commits events in groups, and read
//! connections for replay.
//!
//! Group commit is what makes "202 only once durable" fast: every publisher
//! waiting at one moment shares one transaction and one fsync. An event is
//! handed to the [`Hub`](super::hub::Hub) and answered only after its
//! transaction committed, so nothing a subscriber saw or a publisher was
//! promised can be lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::calls::{CallInfo, Calls};
use super::hub::Hub;
use super::metrics::Metrics;
use crate::event::{Envelope, now_unix_ms, rfc3339_millis};

/// Events queued for the writer at most; publishers wait beyond that.
const QUEUE: usize = 16_384;
/// Events in one transaction at most.
const MAX_BATCH: usize = 4_096;
/// Rows deleted per retention step, so purging never stalls publishing.
const PURGE_CHUNK: i64 = 5_000;
/// How often retention runs.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// A retried publish (same `Idempotency-Key`) within this long is stored
/// once (the JetStream mode's default duplicate window).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Keys remembered at most; the oldest go first.
const MAX_KEYS: usize = 200_000;

/// Idempotency keys of recent publishes and what they were answered.
#[derive(Default)]
struct RecentKeys {
    by_key: HashMap<String, Appended>,
    order: std::collections::VecDeque<(Instant, String)>,
}

impl RecentKeys {
    fn get(&mut self, key: &str) -> Option<Appended> {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < DUPLICATE_WINDOW && self.order.len() <= MAX_KEYS {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.by_key.remove(&k);
            }
        }
        self.by_key.get(key).map(|a| Appended {
            duplicate: true,
            ..*a
        })
    }

    fn insert(&mut self, key: String, a: Appended) {
        if self.by_key.insert(key.clone(), a).is_none() {
            self.order.push_back((Instant::now(), key));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("event store: cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("event store is shutting down")]
    Closed,
    #[error("event store: {0}")]
    Internal(String),
    /// NATS JetStream refused or failed (the message says what).
    #[error("event store (NATS): {0}")]
    Nats(String),
    /// Not stored for now; the publisher should retry (answered 503).
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}

/// One stored event, as delivered to subscribers.
#[derive(Debug)]
pub struct StoredEvent {
    /// Relay-wide position: increasing across all calls (the `pos` field).
    pub pos: i64,
    /// Per-call sequence number (the `seq` field).
    pub seq: i64,
    pub call_id: String,
    /// The event as one JSON text, ready to send as a websocket frame.
    pub json: Utf8Bytes,
}

/// What a publisher gets back once its event is durable.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub seq: i64,
    pub pos: i64,
    /// A retry of an event stored before (same `Idempotency-Key`): these
    /// are the first copy's numbers, and nothing new was stored.
    pub duplicate: bool,
}

/// What the writer thread is asked to do.
enum Job {
    Append(Append),
    /// Delete a call: its events, its row, its history. Answers how many
    /// events went.
    Erase(String, oneshot::Sender<Result<u64, Arc<StoreError>>>),
}

struct Append {
    event: Envelope,
    /// The publisher's `Idempotency-Key`, if it sent one.
    key: Option<String>,
    reply: oneshot::Sender<Result<Appended, Arc<StoreError>>>,
}

impl Append {
    /// The reply channel, leaving one nobody listens to.
    fn take_reply(&mut self) -> oneshot::Sender<Result<Appended, Arc<StoreError>>> {
        std::mem::replace(&mut self.reply, oneshot::channel().0)
    }
}

/// Durability of a commit. `Full` fsyncs the WAL on every commit (survives
/// power loss); `Normal` survives a crash of the relay but not of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    Full,
    Normal,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    readers: Arc<Readers>,
    /// `pos` of the newest committed event; set before it reaches the hub.
    head: Arc<AtomicI64>,
}

/// Read connections (replay, history), reused across requests.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// The file the store lives in.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("relay").join("events.sqlite3")
}

/// Opens (or creates) the database at `path` for writing: WAL, deleted
/// data overwritten, the events, calls and history tables.
pub fn connect(path: &Path, sync: Sync) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // What is deleted (an erased call, expired events) is overwritten, not
    // left in free pages of the file.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        },
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
             pos INTEGER PRIMARY KEY,
             call_id TEXT NOT NULL,
             seq INTEGER NOT NULL,
             received_ms INTEGER NOT NULL,
             body TEXT NOT NULL,
             UNIQUE (call_id, seq)
         );
         CREATE TABLE IF NOT EXISTS calls (
             call_id TEXT PRIMARY KEY,
             last_seq INTEGER NOT NULL,
             last_ms INTEGER NOT NULL,
             started_ms INTEGER,
             ended_ms INTEGER,
             agent TEXT,
             caller TEXT,
             direction TEXT,
             end_reason TEXT
         ) WITHOUT ROWID;",
    )?;
    super::history::index::create(&mut conn)?;
    Ok(conn)
}

/// Writes or updates the `calls` rows of `infos` (in a transaction).
pub fn upsert_calls<'a>(
    tx: &rusqlite::Transaction<'_>,
    infos: impl IntoIterator<Item = &'a CallInfo>,
) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO calls (call_id, last_seq, last_ms, started_ms, ended_ms, agent, caller, direction, end_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (call_id) DO UPDATE SET
           last_seq = excluded.last_seq, last_ms = excluded.last_ms,
           started_ms = excluded.started_ms, ended_ms = excluded.ended_ms,
           agent = excluded.agent, caller = excluded.caller,
           direction = excluded.direction, end_reason = excluded.end_reason",
    )?;
    for c in infos {
        upsert.execute(params![
            c.call_id,
            c.last_seq,
            c.last_ms,
            c.started_ms,
            c.ended_ms,
            c.agent,
            c.caller,
            c.direction,
            c.end_reason
        ])?;
    }
    Ok(())
}

/// Deletes one call whole (events, row, history) in a transaction of its
/// own, then empties the WAL so the deleted pages are not left in it.
/// Returns how many events went.
pub fn erase_call(conn: &mut Connection, call_id: &str) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    super::history::index::erase(&tx, call_id)?;
    let deleted = tx.execute("DELETE FROM events WHERE call_id = ?1", params![call_id])?;
    let row = tx.execute("DELETE FROM calls WHERE call_id = ?1", params![call_id])?;
    tx.commit()?;
    if deleted > 0 || row > 0 {
        // Best effort: a reader in the middle of a long read keeps the
        // WAL until its next checkpoint.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        }) {
            tracing::warn!(error = %e, "checkpoint after an erasure failed");
        }
    }
    Ok(deleted as u64)
}

/// Opened store plus the writer thread to join on shutdown.
pub struct Opened {
    pub store: Store,
    pub writer: std::thread::JoinHandle<()>,
}

/// Opens (or creates) the store and starts its writer thread. Seq counters
/// and the call index are rebuilt from disk, so numbering carries on after a
/// restart.
pub fn open(
    state_dir: &Path,
    sync: Sync,
    retention_days: u32,
    hub: Arc<Hub>,
    calls: Arc<Calls>,
    metrics: Arc<Metrics>,
) -> Result<Opened, StoreError> {
    let path = db_path(state_dir);
    let conn = connect(&path, sync)?;
    let next_pos: i64 =
        conn.query_row("SELECT COALESCE(MAX(pos), 0) + 1 FROM events", [], |r| {
            r.get(0)
        })?;
    calls.load(load_calls(&conn)?);

    let (tx, rx) = mpsc::channel(QUEUE);
    let head = Arc::new(AtomicI64::new(next_pos - 1));
    let writer = Writer {
        conn,
        rx,
        next_pos,
        head: head.clone(),
        hub,
        calls,
        metrics,
        retention: (retention_days > 0)
            .then(|| Duration::from_secs(u64::from(retention_days) * 86_400)),
        recent: RecentKeys::default(),
    };
    let runtime = tokio::runtime::Handle::current();
    let writer = std::thread::Builder::new()
        .name("relay-store".into())
        .spawn(move || writer.run(&runtime))
        .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
    Ok(Opened {
        store: Store {
            tx,
            readers: Arc::new(Readers::new(path)),
            head,
        },
        writer,
    })
}

fn load_calls(conn: &Connection) -> Result<Vec<CallInfo>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT call_id, last_seq, last_ms, started_ms, ended_ms, agent, caller, direction, end_reason
         FROM calls",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(CallInfo {
            call_id: r.get(0)?,
            last_seq: r.get(1)?,
            last_ms: r.get(2)?,
            started_ms: r.get(3)?,
            ended_ms: r.get(4)?,
            agent: r.get(5)?,
            caller: r.get(6)?,
            direction: r.get(7)?,
            end_reason: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Store {
    /// `pos` of the newest committed event. Any event committed later
    /// reaches the hub after this value changed.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    /// True once the writer thread has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Stores one event; resolves once it is committed. An event whose
    /// `key` was stored in the last [`DUPLICATE_WINDOW`] is not stored
    /// again: the answer is the first copy's numbers.
    pub async fn append(
        &self,
        event: Envelope,
        key: Option<&str>,
    ) -> Result<Appended, Arc<StoreError>> {
        let (reply, rx) = oneshot::channel();
        let key = key.map(str::to_owned);
        self.tx
            .send(Job::Append(Append { event, key, reply }))
            .await
            .map_err(|_| Arc::new(StoreError::Closed))?;
        rx.await.map_err(|_| Arc::new(StoreError::Closed))?
    }

    /// Deletes a call: every event, its row in the call index, its history.
    /// Resolves once committed, with the number of events deleted (0: no
    /// such call).
    pub async fn erase(&self, call_id: &str) -> Result<u64, Arc<StoreError>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Erase(call_id.to_owned(), reply))
            .await
            .map_err(|_| Arc::new(StoreError::Closed))?;
        rx.await.map_err(|_| Arc::new(StoreError::Closed))?
    }

    /// The read connections (for the history's questions).
    pub fn readers(&self) -> &Arc<Readers> {
        &self.readers
    }

    /// Up to `limit` stored events after a cursor, in order: of one call
    /// with `seq > after`, or of all calls with `pos > after`.
    pub async fn read_after(
        &self,
        call_id: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.read_after(call_id.as_deref(), after, limit))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

impl Readers {
    /// Read connections to the database at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read connection, off the runtime.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.clone();
        tokio::task::spawn_blocking(move || readers.with(|c| Ok(f(c)?)))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Runs `f` on an idle read connection (or a new one), then keeps it.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.idle.lock().ok().and_then(|mut v| v.pop()) {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                c.busy_timeout(Duration::from_secs(5))?;
                c
            }
        };
        let result = f(&conn);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < 8
        {
            idle.push(conn);
        }
        result
    }

    fn read_after(
        &self,
        call_id: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|conn| {
            let row = |r: &rusqlite::Row<'_>| {
                Ok(Arc::new(StoredEvent {
                    pos: r.get(0)?,
                    seq: r.get(1)?,
                    call_id: r.get(2)?,
                    json: Utf8Bytes::from(r.get::<_, String>(3)?),
                }))
            };
            let events = match call_id {
                Some(id) => conn
                    .prepare_cached(
                        "SELECT pos, seq, call_id, body FROM events
                         WHERE call_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    )?
                    .query_map(params![id, after, limit], row)?
                    .collect::<Result<Vec<_>, _>>()?,
                None => conn
                    .prepare_cached(
                        "SELECT pos, seq, call_id, body FROM events
                         WHERE pos > ?1 ORDER BY pos LIMIT ?2",
                    )?
                    .query_map(params![after, limit], row)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(events)
        })
    }
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    next_pos: i64,
    head: Arc<AtomicI64>,
    hub: Arc<Hub>,
    calls: Arc<Calls>,
    metrics: Arc<Metrics>,
    retention: Option<Duration>,
    recent: RecentKeys,
}

impl Writer {
    fn run(mut self, runtime: &tokio::runtime::Handle) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut next_purge = Instant::now();
        let mut purging = false;
        loop {
            // While a purge is pending, poll without blocking so it can
            // proceed in the gaps between publishes.
            let wait = if purging {
                Duration::ZERO
            } else {
                next_purge.saturating_duration_since(Instant::now())
            };
            let first = runtime.block_on(async {
                if wait.is_zero() {
                    match self.rx.try_recv() {
                        Ok(a) => Some(Some(a)),
                        Err(mpsc::error::TryRecvError::Empty) => Some(None),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    }
                } else {
                    match tokio::time::timeout(wait, self.rx.recv()).await {
                        Ok(Some(a)) => Some(Some(a)),
                        Ok(None) => None,
                        Err(_) => Some(None),
                    }
                }
            });
            match first {
                None => return, // every Store handle is gone: shutdown
                Some(None) => {
                    if let Some(retention) = self.retention {
                        if !purging {
                            next_purge = Instant::now() + PURGE_EVERY;
                        }
                        purging = match self.purge_step(retention) {
                            Ok(more) => more,
                            Err(e) => {
                                tracing::error!(error = %e, "retention purge failed");
                                false
                            }
                        };
                    } else {
                        next_purge = Instant::now() + PURGE_EVERY;
                    }
                }
                Some(Some(Job::Erase(call_id, reply))) => {
                    let _ = reply.send(self.erase(&call_id).map_err(Arc::new));
                }
                Some(Some(Job::Append(a))) => {
                    batch.push(a);
                    // An erasure asked for meanwhile waits for this group.
                    let mut erase = None;
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(Job::Append(a)) => batch.push(a),
                            Ok(Job::Erase(id, reply)) => {
                                erase = Some((id, reply));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(&mut batch);
                    if let Some((id, reply)) = erase {
                        let _ = reply.send(self.erase(&id).map_err(Arc::new));
                    }
                }
            }
        }
    }

    /// Writes one group of events in one transaction, then publishes and
    /// answers them. On failure every publisher in the group gets the error
    /// and no numbers are used up.
    fn commit(&mut self, batch: &mut Vec<Append>) {
        // Retries of stored events are answered at once; a key twice in
        // this group is stored once, the later copy answered after commit.
        let mut again: Vec<Append> = Vec::new();
        let mut keys_here = std::collections::HashSet::new();
        batch.retain_mut(|a| {
            let Some(key) = a.key.clone() else {
                return true;
            };
            if let Some(first) = self.recent.get(&key) {
                self.metrics.duplicates.inc();
                let _ = a.take_reply().send(Ok(first));
                return false;
            }
            if keys_here.insert(key) {
                return true;
            }
            again.push(Append {
                event: a.event.clone(),
                key: a.key.clone(),
                reply: a.take_reply(),
            });
            false
        });
        self.commit_group(batch);
        for a in again {
            let answer = a
                .key
                .as_deref()
                .and_then(|k| self.recent.get(k))
                .ok_or_else(|| {
                    Arc::new(StoreError::Unavailable(
                        "first copy not stored; retry".into(),
                    ))
                });
            if answer.is_ok() {
                self.metrics.duplicates.inc();
            }
            let _ = a.reply.send(answer);
        }
    }

    fn commit_group(&mut self, batch: &mut Vec<Append>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let now_ms = now_unix_ms();
        let ts = rfc3339_millis(now_ms);
        let mut updates: HashMap<String, CallInfo> = HashMap::new();
        let mut stored = Vec::with_capacity(batch.len());
        let first_pos = self.next_pos;
        let result = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (pos, call_id, seq, received_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (i, a) in batch.iter_mut().enumerate() {
                    let call_id = a.event.call_id().to_owned();
                    let info = match updates.get_mut(&call_id) {
                        Some(info) => info,
                        None => {
                            let base = self
                                .calls
                                .get(&call_id)
                                .unwrap_or_else(|| CallInfo::new(&call_id));
                            updates.entry(call_id.clone()).or_insert(base)
                        }
                    };
                    info.last_seq += 1;
                    info.last_ms = now_ms;
                    let seq = info.last_seq;
                    let pos = first_pos + i as i64;
                    info.observe(&a.event, now_ms);
                    let fields = &mut a.event.fields;
                    fields.insert("seq".into(), Value::from(seq));
                    if !fields.contains_key("ts") {
                        fields.insert("ts".into(), Value::from(ts.clone()));
                    }
                    fields.insert("pos".into(), Value::from(pos));
                    let body = serde_json::to_string(fields)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    insert.execute(params![pos, call_id, seq, now_ms, body])?;
                    if super::history::index::indexed(a.event.event_type())
                        && let Some(event) = a.event.decode()
                    {
                        super::history::index::index(&tx, pos, &call_id, &event)?;
                    }
                    stored.push(Arc::new(StoredEvent {
                        pos,
                        seq,
                        call_id,
                        json: Utf8Bytes::from(body),
                    }));
                }
                upsert_calls(&tx, updates.values())?;
            }
            tx.commit()?;
            Ok(())
        })();
        let elapsed = started.elapsed();
        match result {
            Ok(()) => {
                self.next_pos = first_pos + batch.len() as i64;
                self.head.store(self.next_pos - 1, Ordering::Release);
                self.metrics.observe_commit(elapsed, batch.len());
                self.calls.update(updates.into_values());
                self.hub.publish(&stored);
                for (a, ev) in batch.drain(..).zip(&stored) {
                    let appended = Appended {
                        seq: ev.seq,
                        pos: ev.pos,
                        duplicate: false,
                    };
                    if let Some(key) = a.key {
                        self.recent.insert(key, appended);
                    }
                    let _ = a.reply.send(Ok(appended));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "event store commit failed");
                self.metrics.store_errors.inc();
                let e = Arc::new(e);
                for a in batch.drain(..) {
                    let _ = a.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Deletes up to one chunk of events older than the retention period,
    /// and forgets calls with nothing left. Returns whether more remain.
    fn purge_step(&mut self, retention: Duration) -> Result<bool, StoreError> {
        let (deleted, gone) = purge_step(&mut self.conn, self.next_pos, retention)?;
        self.calls.forget(&gone);
        self.metrics.purged.add(deleted);
        Ok(deleted as i64 == PURGE_CHUNK)
    }

    /// Deletes one call whole.
    fn erase(&mut self, call_id: &str) -> Result<u64, StoreError> {
        let deleted = erase_call(&mut self.conn, call_id)?;
        self.calls.forget(&[call_id.to_owned()]);
        Ok(deleted)
    }
}

/// Deletes up to one chunk of events older than `retention` (positions
/// below `next_pos`), their index entries, and the calls with nothing
/// left. Returns the events deleted and the calls gone.
pub fn purge_step(
    conn: &mut Connection,
    next_pos: i64,
    retention: Duration,
) -> Result<(u64, Vec<String>), StoreError> {
    let cutoff = now_unix_ms() - retention.as_millis() as i64;
    // `pos` grows with `received_ms`, so the first event to keep is found
    // by a binary search over the primary key instead of a table scan.
    let first_kept = first_pos_at_or_after(conn, next_pos, cutoff)?;
    let tx = conn.transaction()?;
    super::history::index::purge(&tx, first_kept, PURGE_CHUNK)?;
    let deleted = tx.execute(
        "DELETE FROM events WHERE pos IN (SELECT pos FROM events WHERE pos < ?1 ORDER BY pos LIMIT ?2)",
        params![first_kept, PURGE_CHUNK],
    )?;
    let mut gone = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT call_id FROM calls WHERE last_ms < ?1
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.call_id = calls.call_id)",
        )?;
        for id in stmt.query_map(params![cutoff], |r| r.get::<_, String>(0))? {
            gone.push(id?);
        }
        let mut del = tx.prepare_cached("DELETE FROM calls WHERE call_id = ?1")?;
        for id in &gone {
            del.execute(params![id])?;
            super::history::index::forget(&tx, id)?;
        }
    }
    tx.commit()?;
    if deleted > 0 || !gone.is_empty() {
        tracing::info!(events = deleted, calls = gone.len(), "retention purge");
    }
    Ok((deleted as u64, gone))
}

/// The first `pos` (below `next_pos`) received at or after `cutoff_ms`.
fn first_pos_at_or_after(
    conn: &Connection,
    next_pos: i64,
    cutoff_ms: i64,
) -> Result<i64, StoreError> {
    let mut lo: i64 = 0;
    let mut hi: i64 = next_pos;
    let mut stmt =
        conn.prepare_cached("SELECT received_ms FROM events WHERE pos >= ?1 ORDER BY pos LIMIT 1")?;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let ms: Option<i64> = stmt.query_row(params![mid], |r| r.get(0)).optional()?;
        match ms {
            Some(ms) if ms < cutoff_ms => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(call: &str) -> Envelope {
        Envelope::parse(format!(r#"{{"type":"t","callId":"{call}"}}"#).as_bytes()).unwrap()
    }

    fn open_in(dir: &Path, retention_days: u32) -> (Opened, Arc<Calls>) {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(16, metrics.clone()));
        let calls = Arc::new(Calls::default());
        let opened = open(dir, Sync::Full, retention_days, hub, calls.clone(), metrics).unwrap();
        (opened, calls)
    }

    async fn close(opened: Opened) {
        drop(opened.store);
        tokio::task::spawn_blocking(move || opened.writer.join().unwrap())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn retention_deletes_old_events_and_forgets_their_calls() {
        let dir = tempfile::tempdir().unwrap();
        let (opened, _) = open_in(dir.path(), 30);
        for _ in 0..7 {
            opened.store.append(event("old"), None).await.unwrap();
        }
        for _ in 0..3 {
            opened.store.append(event("mixed"), None).await.unwrap();
        }
        close(opened).await;

        // Age every event but the last of "mixed" by 31 days.
        let conn = Connection::open(db_path(dir.path())).unwrap();
        let day = 86_400_000i64;
        conn.execute(
            "UPDATE events SET received_ms = received_ms - 31 * ?1 WHERE pos < 10",
            params![day],
        )
        .unwrap();
        conn.execute(
            "UPDATE calls SET last_ms = last_ms - 31 * ?1 WHERE call_id = 'old'",
            params![day],
        )
        .unwrap();
        drop(conn);

        // A purge runs as soon as the writer is idle after opening.
        let (opened, calls) = open_in(dir.path(), 30);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = opened.store.read_after(None, 0, 100).await.unwrap();
            if left.len() == 1 && calls.get("old").is_none() {
                assert_eq!((left[0].call_id.as_str(), left[0].seq), ("mixed", 3));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "purge did not run: {} left",
                left.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Numbering of a call with recent events carries on.
        assert_eq!(
            opened.store.append(event("mixed"), None).await.unwrap().seq,
            4
        );
        close(opened).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_from_before_the_history_gets_one_and_retention_purges_it() {
        let dir = tempfile::tempdir().unwrap();
        let (opened, _) = open_in(dir.path(), 30);
        let said = Envelope::parse(
            r#"{"type":"transcript","callId":"old","speaker":"customer","text":"Quería la portabilidad","final":true}"#
                .as_bytes(),
        )
        .unwrap();
        opened.store.append(said, None).await.unwrap();
        close(opened).await;
        // As a store made before the history was: no index, version 0.
        let conn = Connection::open(db_path(dir.path())).unwrap();
        conn.execute_batch("DELETE FROM transcript_fts; PRAGMA user_version = 0;")
            .unwrap();
        drop(conn);

        let search = |dir: &Path| {
            let conn = Connection::open(db_path(dir)).unwrap();
            let filter = crate::relay::history::query::Filter::parse(Some(
                "q=portabilidad&from=2000-01-01&to=2000-12-31",
            ))
            .unwrap();
            let filter = crate::relay::history::query::Filter {
                period: crate::relay::history::query::Period {
                    from_ms: 0,
                    to_ms: i64::MAX,
                },
                ..filter
            };
            crate::relay::history::query::list(
                &conn,
                &filter,
                &crate::relay::history::query::Scope::All,
            )
            .unwrap()
            .calls
            .len()
        };
        assert_eq!(search(dir.path()), 0);
        let (opened, _) = open_in(dir.path(), 30);
        close(opened).await;
        assert_eq!(search(dir.path()), 1, "the history was not built");

        // Retention takes the call's words out of the index with it.
        let conn = Connection::open(db_path(dir.path())).unwrap();
        conn.execute_batch("UPDATE events SET received_ms = 0; UPDATE calls SET last_ms = 0;")
            .unwrap();
        drop(conn);
        let (opened, calls) = open_in(dir.path(), 30);
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.get("old").is_some() {
            assert!(Instant::now() < deadline, "purge did not run");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        close(opened).await;
        let conn = Connection::open(db_path(dir.path())).unwrap();
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM transcript_fts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn zero_retention_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (opened, _) = open_in(dir.path(), 0);
        opened.store.append(event("a"), None).await.unwrap();
        close(opened).await;
        let conn = Connection::open(db_path(dir.path())).unwrap();
        conn.execute("UPDATE events SET received_ms = 0", [])
            .unwrap();
        drop(conn);
        let (opened, _) = open_in(dir.path(), 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(opened.store.read_after(None, 0, 10).await.unwrap().len(), 1);
        close(opened).await;
    }
}
