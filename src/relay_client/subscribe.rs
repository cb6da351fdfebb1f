//! One relay subscription that survives the relay: it reconnects with
//! backoff, resumes after the last event it handed out (`since=` the
//! call's `seq`, or the relay-wide `pos` for all calls), and treats the
//! relay's `relay.dropped` notice (this subscriber was too slow) as a cue
//! to reconnect and resume. Nothing is lost and nothing is handed out twice
//! across reconnects: the relay replays after the cursor.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::event::{Event, Received};
use crate::setting::Secret;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

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
    /// No connection attempt before this (backoff), kept across calls to
    /// [`Subscription::next`] so that cancelling it loses no progress.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Connections made so far (1 after the first).
    pub connects: u64,
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
            retry_at: None,
            backoff: BACKOFF_START,
            connects: 0,
        })
    }

    /// Resume after this cursor (`seq` or `pos`, per the scope).
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

    pub fn is_connected(&self) -> bool {
        self.ws.is_some()
    }

    /// Connects now if not connected, once; the error says why not.
    pub async fn connect(&mut self) -> Result<(), String> {
        if self.ws.is_some() {
            return Ok(());
        }
        let url = self.url();
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("{url}: {e}"))?;
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {}", t.expose()).parse()
        {
            req.headers_mut().insert("authorization", v);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => {
                self.ws = Some(ws);
                self.connects += 1;
                self.backoff = BACKOFF_START;
                self.retry_at = None;
                tracing::info!(url = %self.url(), "following the relay");
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
    /// can be raced against timers in a `select!` without losing an event.
    pub async fn next(&mut self) -> Received {
        loop {
            if self.ws.is_none() {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                if let Err(e) = self.connect().await {
                    tracing::warn!("{e}; retrying");
                }
                continue;
            }
            let Some(ws) = self.ws.as_mut() else { continue };
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
}
