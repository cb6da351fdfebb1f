//! One relay subscription that survives the relay: it reconnects with
//! backoff, resumes after the last event it handed out (`since=` the
//! call's `seq`, or the relay-wide `pos` for all calls), and treats the
//! relay's `relay.dropped` notice (this subscriber was too slow) as a cue
//! to reconnect and resume. Nothing is lost and nothing is handed out twice
//! across reconnects: the relay replays after the cursor.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::event::{Event, Received};
use crate::setting::Secret;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;
type WsError = tokio_tungstenite::tungstenite::Error;
/// A connection attempt in flight, kept across cancelled calls of
/// [`Subscription::next`].
type Connecting = Pin<Box<dyn Future<Output = Result<Ws, WsError>> + Send>>;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Which events: one call's, resumed by `seq`, or every call's, resumed by
/// the relay's `pos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Call(String),
    All,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a ws:// URL of the relay")]
pub struct BadUrl(pub String);

pub struct Subscription {
    /// `ws://host:port/path` and the query parameters to keep.
    base: String,
    params: Vec<String>,
    scope: Scope,
    token: Option<Secret>,
    cursor: Option<i64>,
    ws: Option<Ws>,
    connecting: Option<Connecting>,
    /// No connection attempt before this (backoff). Like `connecting`, kept
    /// in here so that a cancelled [`Subscription::next`] loses no progress.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Subscription {
    /// `url`: the relay's websocket URL (`ws://127.0.0.1:7070/ws`, with or
    /// without a query: its `callId` and `since` are replaced).
    pub fn new(url: &str, scope: Scope, token: Option<Secret>) -> Result<Self, BadUrl> {
        if !url.starts_with("ws://") {
            return Err(BadUrl(url.to_owned()));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let params = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("since=") && !p.starts_with("callId="))
            .map(str::to_owned)
            .collect();
        Ok(Self {
            base: base.to_owned(),
            params,
            scope,
            token,
            cursor: None,
            ws: None,
            connecting: None,
            retry_at: None,
            backoff: BACKOFF_START,
        })
    }

    /// Resume after this cursor (`seq` or `pos`, per the scope); the
    /// subscription keeps its own cursor as it reads, so only tests set it.
    #[cfg(test)]
    pub fn since(mut self, cursor: Option<i64>) -> Self {
        self.cursor = cursor;
        self
    }

    /// The URL of the next connection.
    pub fn url(&self) -> String {
        let mut params = self.params.clone();
        params.push(match &self.scope {
            Scope::Call(id) => format!("callId={id}"),
            Scope::All => "callId=*".to_owned(),
        });
        if let Some(c) = self.cursor {
            params.push(format!("since={c}"));
        }
        format!("{}?{}", self.base, params.join("&"))
    }

    /// Connects now if not connected (one attempt, or the one already in
    /// flight); the error says why not.
    pub async fn connect(&mut self) -> Result<(), String> {
        if self.ws.is_some() {
            return Ok(());
        }
        let url = self.url();
        if self.connecting.is_none() {
            let mut req = url
                .as_str()
                .into_client_request()
                .map_err(|e| format!("{url}: {e}"))?;
            if let Some(t) = &self.token
                && let Ok(v) = format!("Bearer {}", t.expose()).parse()
            {
                req.headers_mut().insert("authorization", v);
            }
            self.connecting = Some(Box::pin(async move {
                crate::net::ws_connect(req, None).await.map(|(ws, _)| ws)
            }));
        }
        let Some(attempt) = self.connecting.as_mut() else {
            return Err(format!("{url}: no connection attempt"));
        };
        let outcome = attempt.await;
        self.connecting = None;
        match outcome {
            Ok(ws) => {
                self.ws = Some(ws);
                self.backoff = BACKOFF_START;
                self.retry_at = None;
                tracing::info!(%url, "following the relay");
                Ok(())
            }
            Err(e) => {
                let wait = self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.retry_at = Some(Instant::now() + wait);
                Err(format!("relay unreachable at {url}: {e}"))
            }
        }
    }

    /// The next event, reconnecting as long as it takes. Cancel-safe: it
    /// can be raced against timers in a `select!` without losing an event
    /// or restarting a connection attempt.
    pub async fn next(&mut self) -> Received {
        loop {
            let Some(ws) = self.ws.as_mut() else {
                if let Some(at) = self.retry_at.filter(|_| self.connecting.is_none()) {
                    tokio::time::sleep_until(at).await;
                }
                if let Err(e) = self.connect().await {
                    tracing::warn!("{e}; retrying");
                }
                continue;
            };
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let Some(r) = Received::parse(&text) else {
                        continue;
                    };
                    if let Some(Event::RelayDropped(d)) = &r.event {
                        tracing::warn!(
                            since = d.since,
                            "the relay dropped us as too slow; resuming"
                        );
                        self.lost();
                        continue;
                    }
                    let position = match self.scope {
                        Scope::Call(_) => r.seq,
                        Scope::All => r.pos,
                    };
                    if let Some(p) = position {
                        self.cursor = Some(self.cursor.map_or(p, |c| c.max(p)));
                    }
                    return r;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    tracing::warn!(url = %self.url(), "lost the relay; reconnecting");
                    self.lost();
                }
            }
        }
    }

    fn lost(&mut self) {
        self.ws = None;
        self.retry_at = Some(Instant::now() + self.backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_other_parameters_and_resume() {
        let s = Subscription::new("ws://127.0.0.1:7070/ws?callId=live", Scope::All, None).unwrap();
        assert_eq!(s.url(), "ws://127.0.0.1:7070/ws?callId=*");
        let s = s.since(Some(42));
        assert_eq!(s.url(), "ws://127.0.0.1:7070/ws?callId=*&since=42");
        let s = Subscription::new("ws://h/ws?x=1&since=9", Scope::Call("live".into()), None)
            .unwrap()
            .since(Some(3));
        assert_eq!(s.url(), "ws://h/ws?x=1&callId=live&since=3");
        assert!(Subscription::new("http://x", Scope::All, None).is_err());
    }

    /// A relay slower to accept than the timers `next()` is raced against
    /// (the orchestrator's 250 ms LLM tick): the attempt in flight must
    /// survive the cancellations and connect, not start over each time.
    #[tokio::test]
    async fn a_slow_handshake_survives_cancelled_calls() {
        use futures_util::SinkExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let ev = r#"{"type":"call.ended","callId":"c1","reason":"x","seq":1}"#;
                    let _ = ws.send(Message::text(ev)).await;
                    let _ = ws.next().await;
                });
            }
        });
        let mut sub =
            Subscription::new(&format!("ws://{addr}/ws"), Scope::Call("c1".into()), None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let received = loop {
            assert!(Instant::now() < deadline, "never connected");
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                break r;
            }
        };
        assert_eq!(received.seq, Some(1));
        assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(sub.url(), format!("ws://{addr}/ws?callId=c1&since=1"));
    }
}
