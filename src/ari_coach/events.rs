//! The app's ARI events websocket (`/ari/events?app=coach`), kept open with
//! reconnects and backoff. Everything it hears goes to the dispatcher in
//! order, with `Connected`/`Disconnected` marks so that the dispatcher can
//! reconcile after a gap.

use std::sync::Arc;
use std::time::Duration;

use super::ari::AriEvent;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::ari::Ari;

pub enum Incoming {
    /// The socket is (again) open: the app is registered in Asterisk.
    Connected,
    Event(Box<AriEvent>),
    /// The socket closed or could not be opened; `reason` says why.
    Disconnected {
        reason: String,
    },
}

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// ari-coach pings Asterisk this often; a quiet system sends no events, so
/// the pongs are what shows the socket is alive.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A socket with no frame at all (events or pongs) for this long is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(90);

/// Runs until `shutdown`: connect, forward, reconnect.
pub async fn run(ari: Arc<Ari>, tx: mpsc::Sender<Incoming>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_START;
    loop {
        let reason = match connect(&ari).await {
            Ok(mut ws) => {
                backoff = BACKOFF_START;
                if tx.send(Incoming::Connected).await.is_err() {
                    return;
                }
                let mut ping =
                    tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
                let mut last_frame = tokio::time::Instant::now();
                loop {
                    let frame = tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        _ = ping.tick() => {
                            if last_frame.elapsed() > SILENCE_LIMIT {
                                break "no answer to pings for 90 s".to_owned();
                            }
                            if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                                break e.to_string();
                            }
                            continue;
                        }
                        f = ws.next() => f,
                    };
                    last_frame = tokio::time::Instant::now();
                    match frame {
                        None => break "closed by Asterisk".to_owned(),
                        Some(Err(e)) => break e.to_string(),
                        Some(Ok(Message::Text(text))) => match AriEvent::parse(&text) {
                            Some(ev) => {
                                if tx.send(Incoming::Event(Box::new(ev))).await.is_err() {
                                    return;
                                }
                            }
                            None => tracing::warn!(
                                bytes = text.len(),
                                "ARI sent a frame that is not a JSON object; ignored"
                            ),
                        },
                        Some(Ok(Message::Close(frame))) => {
                            break format!("closed by Asterisk ({frame:?})");
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
            Err(e) => e,
        };
        if tx.send(Incoming::Disconnected { reason }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(ari: &Ari) -> Result<Socket, String> {
    let url = ari.events_url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad ARI URL {url}: {e}"))?;
    let auth = ari
        .authorization()
        .parse()
        .map_err(|_| "the ARI credentials are not valid in a header".to_owned())?;
    request.headers_mut().insert("authorization", auth);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20));
    match tokio::time::timeout(
        Duration::from_secs(10),
        crate::net::ws_connect(request, Some(config)),
    )
    .await
    {
        Err(_) => Err(format!("connecting to {url}: timed out")),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Err(format!(
            "connecting to {url}: Asterisk answered {}{}",
            resp.status(),
            if resp.status() == 401 {
                " (check ARI_USER and ARI_PASS)"
            } else {
                ""
            }
        )),
        Ok(Err(e)) => Err(format!("connecting to {url}: {e}")),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}
