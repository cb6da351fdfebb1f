//! rtp2ws's loopback control API: `POST /streams` opens a leg on a free
//! UDP port, `DELETE /streams/{id}` flushes and closes it, `GET /streams`
//! lists legs with their counters; `/healthz` and `/metrics`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::leg::{self, Counters, Spec};
use crate::audio::rtp::Format;
use crate::http::{Resp, json_response, text};

#[derive(Debug, thiserror::Error)]
pub enum Rtp2wsError {
    #[error(transparent)]
    Bind(#[from] crate::lifecycle::BindError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl crate::lifecycle::ExitStatus for Rtp2wsError {
    fn exit_code(&self) -> u8 {
        match self {
            Rtp2wsError::Bind(_) => crate::lifecycle::EXIT_USAGE,
            Rtp2wsError::Io(_) => 1,
        }
    }
}

struct Leg {
    spec: Spec,
    counters: Arc<Counters>,
    stop: CancellationToken,
    done: tokio::sync::watch::Receiver<bool>,
}

struct State {
    settings: super::Settings,
    legs: Mutex<HashMap<String, Leg>>,
    totals: Arc<Counters>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    stt: Arc<super::stt_pool::SttPool>,
}

impl State {
    fn legs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Leg>> {
        self.legs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn options(&self) -> leg::Options {
        let s = &self.settings;
        leg::Options {
            stt: self.stt.clone(),
            idle: Duration::from_secs(s.idle_timeout_secs.max(1)),
            jitter_ms: s.jitter_ms,
            buffer_secs: s.buffer_secs,
        }
    }

    /// Starts a leg on `socket`; it removes itself from the table when it
    /// ends (idle, DELETE, shutdown).
    fn start_leg(self: &Arc<Self>, socket: UdpSocket, spec: Spec) {
        let counters = Arc::new(Counters::default());
        let stop = self.shutdown.child_token();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        self.legs().insert(
            spec.id.clone(),
            Leg {
                spec: spec.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
                done,
            },
        );
        tracing::info!(leg = %spec.id, call_id = %spec.call_id, speaker = %spec.speaker, port = spec.port, "leg open");
        let state = self.clone();
        tokio::spawn(async move {
            let id = spec.id.clone();
            leg::run(
                socket,
                spec,
                state.options(),
                counters,
                state.totals.clone(),
                stop,
            )
            .await;
            state.legs().remove(&id);
            let _ = done_tx.send(true);
            tracing::info!(leg = %id, "leg closed");
        });
    }
}

/// Binds the control API and serves until `shutdown`; then closes every
/// leg (flushing its audio to stt).
pub async fn serve(
    settings: &super::Settings,
    shutdown: CancellationToken,
) -> Result<(), Rtp2wsError> {
    let listener =
        crate::lifecycle::listen(settings.control, "rtp2ws.control", "RTP2WS_CONTROL").await?;
    let s = settings.clone();
    let state = Arc::new(State {
        settings: s.clone(),
        legs: Mutex::default(),
        totals: Arc::new(Counters::default()),
        next_id: AtomicU64::new(1),
        shutdown: shutdown.clone(),
        stt: Arc::new(super::stt_pool::SttPool::new(super::stt_pool::parse_urls(
            &s.stt_url,
        ))),
    });
    if let Some(call_id) = &s.call_id {
        // The original deployment's fixed ports: mix, agent, customer.
        for (offset, speaker) in ["mix", "agent", "customer"].into_iter().enumerate() {
            let port = s.base_port + offset as u16;
            let addr = SocketAddr::new(s.rtp_bind, port);
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|e| crate::lifecycle::BindError {
                    addr,
                    key: "rtp2ws.base_port",
                    var: "BASE_PORT",
                    reason: crate::lifecycle::io_reason(&e),
                })?;
            let spec = Spec {
                id: format!("fixed-{speaker}"),
                call_id: call_id.clone(),
                speaker: speaker.into(),
                format: Format::Slin16,
                port,
                fixed: true,
            };
            state.start_leg(socket, spec);
        }
    }
    let local = listener.local_addr()?;
    let url = format!("http://{local}");
    tracing::info!(%url, rtp = %s.rtp_bind, base_port = s.base_port, "rtp2ws listening");
    crate::lifecycle::ready(&format!("rtp2ws listening on {url}"), &shutdown, || true);
    let handler_state = state.clone();
    crate::http::serve(listener, 256, shutdown.clone(), move |req| {
        handle(handler_state.clone(), req)
    })
    .await;
    // Shutdown cancelled every leg's token (children of it): wait for
    // them to flush to stt.
    let waits: Vec<_> = state.legs().values().map(|l| l.done.clone()).collect();
    for mut done in waits {
        let _ = tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await;
    }
    tracing::info!("rtp2ws stopped");
    Ok(())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics(&state))));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (Method::GET, "/streams") => {
            let legs: Vec<Value> = state
                .legs()
                .values()
                .map(|l| {
                    let mut v = serde_json::to_value(&l.spec).unwrap_or_default();
                    v["counters"] = serde_json::to_value(&*l.counters).unwrap_or_default();
                    v
                })
                .collect();
            json_response(StatusCode::OK, &json!({ "streams": legs }))
        }
        (Method::POST, "/streams") => open(&state, req).await,
        (Method::DELETE, p) if p.starts_with("/streams/") => {
            let id = &p["/streams/".len()..];
            let leg = state
                .legs()
                .get(id)
                .map(|l| (l.stop.clone(), l.done.clone()));
            match leg {
                Some((stop, mut done)) => {
                    stop.cancel();
                    // Flushed to stt (finals delivered) before answering.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(60), done.wait_for(|d| *d)).await;
                    Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_default()
                }
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": format!("no stream {id:?}") }),
                ),
            }
        }
        (_, "/streams") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": "use GET or POST on /streams" }),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no such endpoint: {path}") }),
        ),
    };
    Ok(resp)
}

fn bad(message: impl Into<String>) -> Resp {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message.into() }))
}

/// `POST /streams {"callId","speaker","format"}` -> 201 `{"id","port"}`.
async fn open(state: &Arc<State>, req: Request<Incoming>) -> Resp {
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad("the body must be a JSON object under 4 KiB"),
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad("the body is not JSON");
    };
    let Some(call_id) = v["callId"]
        .as_str()
        .filter(|c| crate::event::is_valid_call_id(c))
    else {
        return bad("callId must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$");
    };
    let speaker = v["speaker"].as_str().unwrap_or("mix");
    if !matches!(speaker, "agent" | "customer" | "mix") {
        return bad("speaker must be agent, customer or mix");
    }
    let format_name = v["format"].as_str().unwrap_or("slin16");
    let Some(format) = Format::parse(format_name) else {
        return bad(format!(
            "format must be slin16, slin, ulaw or alaw, got {format_name:?}"
        ));
    };
    let s = &state.settings;
    // Ports of the compatibility mode are never handed out.
    let reserved = |p: u16| s.call_id.is_some() && (s.base_port..s.base_port + 3).contains(&p);
    let in_use: Vec<u16> = state.legs().values().map(|l| l.spec.port).collect();
    for offset in 0..s.port_range {
        let port = s.base_port + offset;
        if reserved(port) || in_use.contains(&port) {
            continue;
        }
        let Ok(socket) = UdpSocket::bind(SocketAddr::new(s.rtp_bind, port)).await else {
            continue;
        };
        let id = format!("leg-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
        let spec = Spec {
            id: id.clone(),
            call_id: call_id.to_owned(),
            speaker: speaker.to_owned(),
            format,
            port,
            fixed: false,
        };
        state.start_leg(socket, spec);
        return json_response(StatusCode::CREATED, &json!({ "id": id, "port": port }));
    }
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "error": format!("no free UDP port in {}..{}", s.base_port, u32::from(s.base_port) + u32::from(s.port_range)) }),
    )
}

fn metrics(state: &State) -> String {
    let t = &*state.totals;
    let mut o = String::new();
    let legs = state.legs().len();
    crate::telemetry::prometheus(&mut o, "rtp2ws_streams", "gauge", "Call legs open.", legs);
    let rows: [(&str, &str, &AtomicU64); 12] = [
        ("rtp2ws_packets_total", "RTP packets accepted.", &t.packets),
        (
            "rtp2ws_lost_packets_total",
            "Packets never received (filled with silence).",
            &t.lost,
        ),
        (
            "rtp2ws_late_packets_total",
            "Packets that came after their place was given up.",
            &t.late,
        ),
        (
            "rtp2ws_reordered_packets_total",
            "Packets that came out of order.",
            &t.reordered,
        ),
        (
            "rtp2ws_not_rtp_total",
            "Datagrams that were not RTP.",
            &t.not_rtp,
        ),
        (
            "rtp2ws_wrong_payload_type_total",
            "Packets of a payload type the leg does not carry.",
            &t.wrong_payload_type,
        ),
        (
            "rtp2ws_wrong_source_total",
            "Packets from another address than the leg's first source.",
            &t.wrong_source,
        ),
        (
            "rtp2ws_bytes_to_stt_total",
            "Audio bytes sent to stt.",
            &t.bytes_to_stt,
        ),
        (
            "rtp2ws_dropped_audio_ms_total",
            "Audio dropped while stt was unreachable (ms).",
            &t.dropped_ms,
        ),
        (
            "rtp2ws_stt_reconnects_total",
            "Reconnections to stt.",
            &t.reconnects,
        ),
        (
            "rtp2ws_stt_refused_total",
            "Connections stt refused (503: at capacity, behind, or stopping); each is retried.",
            &t.refused,
        ),
        (
            "rtp2ws_stt_moves_total",
            "Streams that went on to another stt of STT_URL than their last one.",
            &t.moves,
        ),
    ];
    for (name, help, v) in rows {
        crate::telemetry::prometheus(&mut o, name, "counter", help, v.load(Ordering::Relaxed));
    }
    o
}
