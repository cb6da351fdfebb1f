//! The event log the relay serves from: SQLite on its own disk (one
//! machine, the default) or NATS JetStream (several relays, several hosts).
//! Both number events the same way (`seq` per call, `pos` across calls),
//! answer only once an event is durable, and hand committed events to the
//! hub in `pos` order; [`super::ws`] relies on nothing more.

use std::sync::Arc;

use super::jetstream;
use super::store::{self, Appended, StoreError, StoredEvent};
use crate::event::Envelope;

#[derive(Clone)]
pub enum Log {
    Sqlite(store::Store),
    JetStream(jetstream::Store),
}

impl Log {
    /// `pos` of the newest event handed to the hub: any later event
    /// reaches the hub after this value changed.
    pub fn head(&self) -> i64 {
        match self {
            Log::Sqlite(s) => s.head(),
            Log::JetStream(s) => s.head(),
        }
    }

    /// True once the log has stopped (shutdown, or its writer died).
    pub fn is_closed(&self) -> bool {
        match self {
            Log::Sqlite(s) => s.is_closed(),
            Log::JetStream(s) => s.is_closed(),
        }
    }

    /// Why the log cannot take events right now (one line), if it cannot.
    pub fn unavailable(&self) -> Option<&'static str> {
        match self {
            Log::Sqlite(s) => s.is_closed().then_some("event store closed\n"),
            Log::JetStream(s) => (!s.connected()).then_some("not connected to NATS\n"),
        }
    }

    /// Stores one event; resolves once it is durable.
    pub async fn append(
        &self,
        event: Envelope,
        key: Option<&str>,
    ) -> Result<Appended, Arc<StoreError>> {
        match self {
            Log::Sqlite(s) => s.append(event, key).await,
            Log::JetStream(s) => s.append(event, key).await,
        }
    }

    /// Deletes a call whole; resolves once done, with how many events went.
    pub async fn erase(&self, call_id: &str) -> Result<u64, Arc<StoreError>> {
        match self {
            Log::Sqlite(s) => s.erase(call_id).await,
            Log::JetStream(s) => s.erase(call_id).await.map_err(Arc::new),
        }
    }

    /// Where the call history is read: the SQLite store, or a JetStream
    /// relay's archive (`None` on a JetStream relay without one).
    pub fn history(&self) -> Option<&Arc<store::Readers>> {
        match self {
            Log::Sqlite(s) => Some(s.readers()),
            Log::JetStream(s) => s.archive().map(|a| a.readers()),
        }
    }

    /// Up to `limit` stored events after a cursor: of one call with
    /// `seq > after`, or of all calls with `pos > after`. `from_pos` is a
    /// `pos` the call's events after the cursor are known to follow (0 when
    /// unknown); it only saves reading.
    pub async fn read_after(
        &self,
        call_id: Option<String>,
        after: i64,
        from_pos: i64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        match self {
            Log::Sqlite(s) => s.read_after(call_id, after, limit).await,
            Log::JetStream(s) => s.read_after(call_id, after, from_pos, limit).await,
        }
    }
}
