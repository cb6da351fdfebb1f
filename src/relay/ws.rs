//! One websocket subscription: stored events after `since` first, then live
//! ones, in order, with no gap and no duplicate.
//!
//! The live queue is joined only after the bulk of the replay, and the store
//! is read once more after joining: an event committed before the join is in
//! that read, one committed after it is in the queue, one in both is
//! skipped by its cursor. Events reach the hub only after their commit, so
//! nothing falls between the two.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::hub::Topic;
use super::server::State;
use super::store::StoredEvent;
use crate::event::{Event, RelayDropped};

/// Events read from the store per query during replay.
const REPLAY_PAGE: usize = 512;
/// Frames written before one flush when a backlog is waiting.
const WRITE_BATCH: usize = 256;
/// A client that takes longer than this to accept a write is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a subscriber may send us (they have nothing to say).
const MAX_CLIENT_MESSAGE: usize = 4096;

/// Why a session ended early.
enum End {
    /// The client closed or vanished.
    Client,
    /// The relay is shutting down.
    Shutdown,
    /// The store failed during replay.
    Store(String),
}

/// Where the subscriber is: the last `seq` (one call) or `pos` (all calls)
/// it has been sent.
struct Cursor {
    topic: Topic,
    last: i64,
    /// `pos` of the last event sent (0 before the first): where a call's
    /// replay may start reading.
    pos: i64,
}

impl Cursor {
    fn key(&self, ev: &StoredEvent) -> i64 {
        match self.topic {
            Topic::Call(_) => ev.seq,
            Topic::All => ev.pos,
        }
    }
}

/// `since`: the cursor to resume after. Without one, a call's subscriber
/// gets the call from its first event, and an all-calls subscriber gets
/// events from now on (the whole store would be weeks of calls); the
/// server passes the store head at request time as `since` for those.
pub(super) async fn session<S>(io: S, state: Arc<State>, topic: Topic, since: Option<i64>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Subscribers only send pings and closes. A small read buffer matters:
    // tungstenite zeroes the whole free buffer on every read attempt, and
    // each idle subscriber holds one.
    let config = WebSocketConfig::default()
        .read_buffer_size(MAX_CLIENT_MESSAGE)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    state.metrics.subscribers.fetch_add(1, Ordering::Relaxed);
    let mut cursor = Cursor {
        topic,
        last: since.unwrap_or(0),
        pos: 0,
    };
    let live_only = since.is_none() && cursor.topic == Topic::All;
    let end = run(ws, &state, &mut cursor, live_only).await;
    state.metrics.subscribers.fetch_sub(1, Ordering::Relaxed);
    if let Some(End::Store(e)) = end {
        tracing::error!(error = %e, "replay failed");
    }
}

async fn run<S>(
    ws: WebSocketStream<S>,
    state: &State,
    cursor: &mut Cursor,
    live_only: bool,
) -> Option<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let call = match &cursor.topic {
        Topic::Call(id) => Some(id.clone()),
        Topic::All => None,
    };

    // Replay most of the history before joining the live queue, so a long
    // replay cannot overflow it.
    if !live_only && let Err(end) = replay(&mut tx, state, &call, cursor).await {
        return close(&mut tx, end).await;
    }
    let mut sub = state.hub.subscribe(cursor.topic.clone());
    if live_only {
        // Read after joining: what was committed up to here is skipped, what
        // comes later is in the queue.
        cursor.last = state.store.head();
    }
    let result = async {
        if !live_only {
            replay(&mut tx, state, &call, cursor).await?;
        }
        loop {
            tokio::select! {
                biased;
                _ = state.shutdown.cancelled() => return Err(End::Shutdown),
                _ = sub.kicked.cancelled() => return Ok(()),
                incoming = rx.next() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(End::Client),
                    // Pings are answered by tungstenite on the next write.
                    Some(Ok(_)) => send_all(&mut tx, std::iter::empty(), cursor, state).await?,
                },
                ev = sub.events.recv() => {
                    let Some(first) = ev else { return Ok(()) };
                    let mut batch = vec![first];
                    while batch.len() < WRITE_BATCH {
                        match sub.events.try_recv() {
                            Ok(ev) => batch.push(ev),
                            Err(_) => break,
                        }
                    }
                    send_all(&mut tx, batch.iter(), cursor, state).await?;
                }
            }
        }
    }
    .await;
    state.hub.unsubscribe(&cursor.topic, sub.id);
    match result {
        // Kicked: the hub found this subscriber's queue full.
        Ok(()) => {
            let since = cursor.last;
            let notice = Event::RelayDropped(RelayDropped {
                reason: "subscriber too slow: its queue filled up".into(),
                since,
            });
            let _ =
                tokio::time::timeout(WRITE_TIMEOUT, tx.send(Message::text(notice.to_json()))).await;
            let frame = CloseFrame {
                code: CloseCode::Again,
                reason: Utf8Bytes::from(format!("too slow; resume with since={since}")),
            };
            let _ = tokio::time::timeout(WRITE_TIMEOUT, tx.send(Message::Close(Some(frame)))).await;
            None
        }
        Err(end) => close(&mut tx, end).await,
    }
}

/// Sends stored events after the cursor until the store has no more.
async fn replay<W>(
    tx: &mut W,
    state: &State,
    call: &Option<String>,
    cursor: &mut Cursor,
) -> Result<(), End>
where
    W: futures_util::Sink<Message> + Unpin,
{
    loop {
        let page = state
            .store
            .read_after(call.clone(), cursor.last, cursor.pos, REPLAY_PAGE)
            .await
            .map_err(|e| End::Store(e.to_string()))?;
        let n = page.len();
        state.metrics.events_replayed.add(n as u64);
        send_all(tx, page.iter(), cursor, state).await?;
        if n < REPLAY_PAGE {
            return Ok(());
        }
        if state.shutdown.is_cancelled() {
            return Err(End::Shutdown);
        }
    }
}

/// Writes the events the cursor has not passed yet, then flushes.
async fn send_all<'a, W>(
    tx: &mut W,
    events: impl Iterator<Item = &'a Arc<StoredEvent>>,
    cursor: &mut Cursor,
    state: &State,
) -> Result<(), End>
where
    W: futures_util::Sink<Message> + Unpin,
{
    let write = async {
        let mut sent = 0u64;
        for ev in events {
            let key = cursor.key(ev);
            if key <= cursor.last {
                continue;
            }
            tx.feed(Message::Text(ev.json.clone()))
                .await
                .map_err(|_| End::Client)?;
            cursor.last = key;
            cursor.pos = ev.pos;
            sent += 1;
        }
        tx.flush().await.map_err(|_| End::Client)?;
        state.metrics.events_out.add(sent);
        Ok(())
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or(Err(End::Client))
}

async fn close<W>(tx: &mut W, end: End) -> Option<End>
where
    W: futures_util::Sink<Message> + Unpin,
{
    let frame = match &end {
        End::Client => return None,
        End::Shutdown => CloseFrame {
            code: CloseCode::Away,
            reason: "relay shutting down".into(),
        },
        End::Store(_) => CloseFrame {
            code: CloseCode::Error,
            reason: "event store error".into(),
        },
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, tx.send(Message::Close(Some(frame)))).await;
    Some(end)
}
