//! stt's listener: `GET /ws` (audio streams), `GET /healthz`,
//! `GET /capacity` (load and headroom, for balancers), `GET /metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SttError;
use super::capacity::{self, Capacity, Refusal};
use super::engine::{Engine, EngineError};
use super::metrics::{Load, Metrics};
use super::pool::{Bounds, Pool};
use super::session::{self, StreamParams};
use crate::http::{Resp, json_response, text, upgrade_response, websocket_accept};
use crate::relay_client::Publisher;

pub(super) struct State {
    pub settings: super::Settings,
    pub pool: Arc<Pool>,
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
    pub capacity: Arc<Capacity>,
    pub shutdown: CancellationToken,
    next_stream: AtomicU64,
    sessions: TaskTracker,
}

/// Loads the model the settings name (looked up in `model_dir`), binds,
/// tells systemd when ready, and serves until `shutdown`; then finalises
/// open streams and flushes to the relay.
pub async fn serve(
    settings: &super::Settings,
    model_dir: &std::path::Path,
    shutdown: CancellationToken,
) -> Result<(), SttError> {
    let listener = crate::lifecycle::listen(settings.listen, "stt.listen", "STT_LISTEN").await?;
    let s = settings.clone();
    if s.device == "cuda" && !cfg!(feature = "cuda") {
        return Err(SttError::NoCuda);
    }
    let path = s.model_path(model_dir)?;
    let started = std::time::Instant::now();
    let engine = {
        let path = path.clone();
        let gpu = s.device == "cuda";
        tokio::task::spawn_blocking(move || Engine::load(&path, gpu))
            .await
            .map_err(|e| EngineError::Whisper(e.to_string()))??
    };
    s.check_prompt(&engine)?;
    tracing::info!(
        model = %path.display(),
        load_ms = started.elapsed().as_millis() as u64,
        workers = s.workers,
        threads = s.threads(),
        device = %s.device,
        language = %s.language,
        "model loaded"
    );
    // Single-thread decoders never spin-wait: only several threads each
    // can be more than the cores hold.
    let (cores, threads) = (super::cores(), s.threads());
    if s.device != "cuda" && threads > 1 && s.workers * threads > cores {
        tracing::warn!(
            workers = s.workers,
            threads,
            cores,
            "stt.workers x stt.threads_per_worker is more threads than this machine has cores: \
             whisper.cpp's threads spin-wait for each other, so decodes keep to one thread \
             whenever they would not fit; set stt.threads_per_worker = 0 to share the cores out"
        );
    }
    let metrics = Arc::new(Metrics::default());
    let options = s.decode_options();
    let probe_options = options.clone();
    let probe_engine = engine.clone();
    let startup_rtf =
        tokio::task::spawn_blocking(move || capacity::probe(&probe_engine, &probe_options))
            .await
            .map_err(|e| EngineError::Whisper(e.to_string()))??;
    let capacity = Arc::new(Capacity::new(
        s.workers,
        startup_rtf,
        (s.capacity > 0).then_some(s.capacity),
        s.max_streams,
    ));
    let estimate = capacity.estimate();
    tracing::info!(
        capacity = estimate.streams,
        source = estimate.source.as_str(),
        startup_rtf = format!("{startup_rtf:.3}"),
        "capacity (streams; refused past it with 503, see /capacity)"
    );
    let bounds = Bounds {
        behind: s.behind(),
        give_up: std::time::Duration::from_secs(s.give_up_secs),
        wide_threads: s.max_threads_when_idle,
        revision: s.revision(),
    };
    let (pool, workers) = Pool::start(
        &engine,
        s.workers,
        options,
        bounds,
        metrics.clone(),
        capacity.clone(),
    )?;
    let (publisher, publish_thread) = Publisher::start(
        s.relay_url.clone(),
        s.relay_token.clone(),
        s.publish_queue,
        metrics.publish.clone(),
    );
    let state = Arc::new(State {
        settings: s,
        pool: pool.clone(),
        publisher: publisher.clone(),
        metrics,
        capacity,
        shutdown: shutdown.clone(),
        next_stream: AtomicU64::new(1),
        sessions: TaskTracker::new(),
    });

    let local = listener.local_addr()?;
    let url = format!("ws://{local}/ws");
    tracing::info!(%url, "stt listening");
    crate::lifecycle::ready(&format!("stt listening on {url}"), &shutdown, || true);

    let handler_state = state.clone();
    crate::http::serve(
        listener,
        state.settings.max_streams + 64,
        shutdown.clone(),
        move |req| handle(handler_state.clone(), req),
    )
    .await;
    tracing::info!("stt stopped accepting; finalising open streams");
    state.sessions.close();
    state.sessions.wait().await;
    pool.close();
    publisher.close();
    drop(state);
    tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
        let _ = publish_thread.join();
    })
    .await
    .ok();
    tracing::info!("stt stopped");
    Ok(())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let resp = match (req.uri().path(), req.method()) {
        ("/healthz", &Method::GET | &Method::HEAD) => text(StatusCode::OK, "ok\n"),
        ("/capacity", &Method::GET) => json_response(StatusCode::OK, &capacity_json(&state)),
        ("/metrics", &Method::GET) => {
            let estimate = state.capacity.estimate();
            let load = Load {
                capacity: estimate.streams,
                load_per_stream: estimate.load_per_stream,
                oldest_final_wait: state.pool.oldest_final_wait(),
            };
            let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render(&load))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        ("/ws", &Method::GET) => open_stream(&state, req),
        (path, _) => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no such endpoint: {path}; audio goes to /ws") }),
        ),
    };
    Ok(resp)
}

/// `GET /capacity`: what a balancer needs to place a stream.
fn capacity_json(state: &State) -> serde_json::Value {
    let e = state.capacity.estimate();
    let streams = state.metrics.streams.load(Ordering::Relaxed).max(0) as usize;
    let lag = state.pool.oldest_final_wait();
    let behind = state.settings.behind();
    let admits = state.capacity.admit(streams, lag, behind).is_ok();
    json!({
        "streams": streams,
        "capacity": e.streams,
        "headroom": e.streams as i64 - streams as i64,
        "accepting": admits && !state.shutdown.is_cancelled(),
        "source": e.source.as_str(),
        "measured": e.measured,
        "loadPerStream": (e.load_per_stream * 10_000.0).round() / 10_000.0,
        "lagMs": lag.as_millis() as u64,
        "workers": state.settings.workers,
        "maxStreams": state.settings.max_streams,
    })
}

/// The 503 of a stream refused for capacity: the reason, the figures, and
/// `Retry-After` (docs/contract.md "Capacity").
fn refuse_full(state: &State, refusal: Refusal, streams: usize, params: &StreamParams) -> Resp {
    let error = match refusal {
        Refusal::Capacity(n) => {
            state.metrics.refused_capacity.inc();
            format!("stt is at capacity: {streams} streams of {n}; try another stt or later")
        }
        Refusal::Behind(lag) => {
            state.metrics.refused_behind.inc();
            format!(
                "stt is behind: the oldest final has waited {} ms (stt.behind_ms {}); try another stt or later",
                lag.as_millis(),
                state.settings.behind_ms
            )
        }
    };
    tracing::warn!(call_id = %params.call_id, speaker = %params.speaker, reason = refusal.reason(), "{error}");
    let mut body = capacity_json(state);
    body["error"] = json!(error);
    body["reason"] = json!(refusal.reason());
    let mut resp = json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    resp
}

fn open_stream(state: &Arc<State>, req: Request<Incoming>) -> Resp {
    let refuse = |status: StatusCode, message: String| {
        state.metrics.rejected_streams.inc();
        json_response(status, &json!({ "error": message }))
    };
    let params = match StreamParams::parse(req.uri().query()) {
        Ok(p) => p,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let Some(accept) = websocket_accept(&req) else {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "GET /ws is a websocket endpoint: send Upgrade: websocket".into(),
        );
    };
    if state.metrics.streams.load(Ordering::Relaxed) >= state.settings.max_streams as i64 {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "already {} streams: the limit (stt.max_streams)",
                state.settings.max_streams
            ),
        );
    }
    if state.shutdown.is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "stt is shutting down".into(),
        );
    }
    // Counted at once, so a burst of handshakes cannot all see room.
    let streams = state.metrics.streams.fetch_add(1, Ordering::Relaxed).max(0) as usize;
    let behind = state.settings.behind();
    if let Err(refusal) = state
        .capacity
        .admit(streams, state.pool.oldest_final_wait(), behind)
    {
        state.metrics.streams.fetch_sub(1, Ordering::Relaxed);
        return refuse_full(state, refusal, streams, &params);
    }
    state.metrics.streams_total.inc();
    let stream_id = state.next_stream.fetch_add(1, Ordering::Relaxed);
    let task_state = state.clone();
    state.sessions.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                session::run(TokioIo::new(upgraded), task_state, params, stream_id).await
            }
            Err(e) => {
                task_state.metrics.streams.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "websocket upgrade failed")
            }
        }
    });
    upgrade_response(&accept)
}
