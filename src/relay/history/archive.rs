//! The history of a JetStream relay (`relay.nats.archive = true`): a local
//! SQLite copy of the stream, with the same tables and index as the SQLite
//! store, filled by the relay's tail (which reads every event of the
//! stream, in order). `/history`, `/scorecards` and the index answer from
//! it exactly as on one host.
//!
//! The stream is the truth: the archive is rebuilt from it at every start
//! (events already copied are skipped by `pos`), so losing the archive
//! loses nothing the stream still holds. An erasure reaches every archive
//! as a tombstone on the stream ([`super::super::jetstream`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, params};
use tokio::sync::mpsc;

use crate::relay::calls::CallInfo;
use crate::relay::store::{self, Readers, StoreError, StoredEvent};

/// Batches queued for the archive's writer at most; the tail waits beyond.
const QUEUE: usize = 64;

/// The archive's file.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("relay").join("archive.sqlite3")
}

enum Job {
    /// Events from the tail, in stream order, each with the time NATS
    /// stored it (Unix ms), and the calls they touched.
    Copy(Vec<(Arc<StoredEvent>, i64)>, Vec<CallInfo>),
    Erase(String),
}

/// How often the archive drops what the stream's retention dropped.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Handle to the archive; cheap to clone.
#[derive(Clone)]
pub struct Archive {
    tx: mpsc::Sender<Job>,
    readers: Arc<Readers>,
}

impl Archive {
    /// Opens (or creates) the archive in `state_dir` and starts its
    /// writer; events older than `retention_days` (0: never) are dropped,
    /// as the stream drops them.
    pub fn open(state_dir: &Path, retention_days: u32) -> Result<Archive, StoreError> {
        let file = path(state_dir);
        let conn = store::connect(&file, store::Sync::Normal)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let retention = (retention_days > 0)
            .then(|| std::time::Duration::from_secs(u64::from(retention_days) * 86_400));
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("relay-archive".into())
            .spawn(move || write(conn, rx, retention, &runtime))
            .map_err(|e| StoreError::Internal(format!("cannot start the archive's writer: {e}")))?;
        Ok(Archive {
            tx,
            readers: Arc::new(Readers::new(file)),
        })
    }

    /// Copies a batch the tail read (waits while the writer is behind).
    pub async fn copy(&self, events: Vec<(Arc<StoredEvent>, i64)>, calls: Vec<CallInfo>) {
        if self.tx.send(Job::Copy(events, calls)).await.is_err() {
            tracing::error!("the archive's writer has stopped; history is not kept");
        }
    }

    /// Erases a call (a tombstone read from the stream).
    pub async fn erase(&self, call_id: &str) {
        let _ = self.tx.send(Job::Erase(call_id.to_owned())).await;
    }

    pub fn readers(&self) -> &Arc<Readers> {
        &self.readers
    }
}

fn write(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    retention: Option<std::time::Duration>,
    runtime: &tokio::runtime::Handle,
) {
    let mut next_purge = std::time::Instant::now();
    loop {
        // Waits for work, but not past the next purge: an idle archive
        // still lets old calls go.
        let job = runtime.block_on(async {
            match retention {
                None => Ok(rx.recv().await),
                Some(_) => {
                    let wait = next_purge.saturating_duration_since(std::time::Instant::now());
                    tokio::time::timeout(wait.max(std::time::Duration::from_millis(1)), rx.recv())
                        .await
                }
            }
        });
        let result = match job {
            Ok(None) => return, // every handle is gone: shutdown
            Err(_) => Ok(()),   // idle until the purge is due
            Ok(Some(Job::Copy(events, calls))) => copy(&mut conn, &events, &calls),
            Ok(Some(Job::Erase(id))) => store::erase_call(&mut conn, &id).map(|_| ()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "archive write failed");
        }
        if let Some(retention) = retention
            && std::time::Instant::now() >= next_purge
        {
            next_purge = std::time::Instant::now() + PURGE_EVERY;
            if let Err(e) = purge(&mut conn, retention) {
                tracing::error!(error = %e, "archive retention purge failed");
            }
        }
    }
}

/// Drops what is older than the retention, a chunk at a time (a bounded
/// number of chunks per round, so copying never waits long).
fn purge(conn: &mut Connection, retention: std::time::Duration) -> Result<(), StoreError> {
    let next_pos: i64 =
        conn.query_row("SELECT COALESCE(MAX(pos), 0) + 1 FROM events", [], |r| {
            r.get(0)
        })?;
    for _ in 0..20 {
        let (deleted, _) = store::purge_step(conn, next_pos, retention)?;
        if deleted == 0 {
            break;
        }
    }
    Ok(())
}

/// Inserts the events not copied yet (by `pos`), indexes them, and
/// updates their calls' rows.
fn copy(
    conn: &mut Connection,
    events: &[(Arc<StoredEvent>, i64)],
    calls: &[CallInfo],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (pos, call_id, seq, received_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (ev, stored_ms) in events {
            let body = ev.json.as_str();
            if insert.execute(params![ev.pos, ev.call_id, ev.seq, stored_ms, body])? == 0 {
                continue; // copied before this start
            }
            super::index::index_body(&tx, ev.pos, &ev.call_id, body)?;
        }
        store::upsert_calls(&tx, calls)?;
    }
    tx.commit()?;
    Ok(())
}
