//! The relay's HTTP side: listener loop, routing, input checks and auth.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::auth::{Access, Tokens, TokensError};
use super::calls::{Activity, Calls};
use super::history::{
    self,
    query::{Filter, ScorecardQuery},
};
use super::hub::{Hub, Topic};
use super::log::Log;
use super::metrics::{Metrics, Rejection};
use super::store::{self, StoreError};
use crate::event::{Envelope, EnvelopeError, MAX_EVENT_BYTES, is_valid_call_id, now_unix_ms};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(
        "refusing to listen on {0} without tokens: anyone on the network could read every call. \
         Set relay.tokens_file (RELAY_TOKENS_FILE), or relay.allow_unauthenticated_remote = true"
    )]
    OpenToNetwork(SocketAddr),
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bind(#[from] crate::lifecycle::BindError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl crate::lifecycle::ExitStatus for RelayError {
    fn exit_code(&self) -> u8 {
        match self {
            RelayError::OpenToNetwork(_) | RelayError::Tokens(_) | RelayError::Bind(_) => {
                crate::lifecycle::EXIT_USAGE
            }
            RelayError::Store(_) | RelayError::Io(_) => 1,
        }
    }
}

pub(super) struct State {
    pub store: Log,
    pub hub: Arc<Hub>,
    pub calls: Arc<Calls>,
    pub metrics: Arc<Metrics>,
    redactor: super::redact::Redactor,
    tokens: Option<Tokens>,
    activity: Activity,
    pub shutdown: CancellationToken,
}

/// Without tokens the relay serves anyone who reaches it: only loopback,
/// unless explicitly allowed.
fn check_exposure(r: &Settings, addr: SocketAddr) -> Result<(), RelayError> {
    if !addr.ip().is_loopback() && r.tokens_file.is_none() && !r.allow_unauthenticated_remote {
        return Err(RelayError::OpenToNetwork(addr));
    }
    Ok(())
}

/// Binds the configured address, tells systemd when ready, and serves until
/// `shutdown` is cancelled; then stops accepting, closes subscribers with
/// 1001, lets requests in flight finish and the store in `state_dir` commit
/// what it was given.
pub async fn serve(
    r: &Settings,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    // Refuse before binding, so an exposed address is never even opened.
    check_exposure(r, r.listen)?;
    let listener = crate::lifecycle::listen(r.listen, "relay.listen", "RELAY_LISTEN").await?;
    let local = listener.local_addr()?;
    let tokens = r.tokens_file.as_deref().map(Tokens::load).transpose()?;
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(r.subscriber_queue, metrics.clone()));
    let calls = Arc::new(Calls::default());
    let (log, writer, where_) = if r.nats.url.is_some() {
        let archive = if r.nats.archive {
            Some(super::history::archive::Archive::open(
                state_dir,
                r.retention_days,
            )?)
        } else {
            None
        };
        let log = super::jetstream::open(
            &r.nats,
            r.retention_days,
            hub.clone(),
            calls.clone(),
            metrics.clone(),
            archive,
            shutdown.clone(),
        )
        .await?;
        let where_ = format!(
            "NATS JetStream stream {} at {}",
            r.nats.stream,
            r.nats.url.as_deref().unwrap_or_default()
        );
        (Log::JetStream(log), None, where_)
    } else {
        let opened = store::open(
            state_dir,
            r.sync,
            r.retention_days,
            hub.clone(),
            calls.clone(),
            metrics.clone(),
        )?;
        let where_ = store::db_path(state_dir).display().to_string();
        (Log::Sqlite(opened.store), Some(opened.writer), where_)
    };
    let state = Arc::new(State {
        store: log,
        hub,
        calls,
        metrics,
        redactor: super::redact::Redactor::new(&r.redact),
        tokens,
        activity: Activity {
            recent_ms: (r.call_recent_secs as i64).saturating_mul(1000),
            stale_ms: (r.call_stale_secs as i64).saturating_mul(1000),
        },
        shutdown: shutdown.clone(),
    });

    let url = format!("http://{local}");
    tracing::info!(
        %url,
        store = %where_,
        auth = state.tokens.is_some(),
        "relay listening"
    );
    let watchdog_state = state.clone();
    crate::lifecycle::ready(&format!("relay listening on {url}"), &shutdown, move || {
        !watchdog_state.store.is_closed()
    });

    let handler_state = state.clone();
    crate::http::serve(listener, r.max_connections, shutdown.clone(), move |req| {
        handle(handler_state.clone(), req)
    })
    .await;
    tracing::info!("relay stopped accepting; finishing requests in flight");
    // The SQLite writer thread ends once every Store handle is gone: the
    // last in-flight handler drops its clone of `state` when it finishes.
    drop(state);
    if let Some(writer) = writer {
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .ok();
    }
    tracing::info!("relay stopped");
    Ok(())
}

use crate::http::{Resp, json_response, query_param, text, upgrade_response, websocket_accept};

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    // The web UI's assets: no token needed, they hold no data.
    if matches!(method, Method::GET | Method::HEAD)
        && let Some(asset) = super::ui::asset(&path)
    {
        return Ok(asset);
    }
    let resp = match (path.as_str(), &method) {
        ("/healthz", &Method::GET | &Method::HEAD) => Ok(match state.store.unavailable() {
            // A load balancer sends publishers and subscribers elsewhere.
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            None => text(StatusCode::OK, "ok\n"),
        }),
        ("/event", &Method::POST) => post_event(&state, req).await,
        ("/ws", &Method::GET) => subscribe(&state, req),
        ("/calls", &Method::GET) => list_calls(&state, &req),
        ("/metrics", &Method::GET) => metrics(&state, &req),
        ("/history", &Method::GET) => history(&state, &req).await,
        ("/scorecards", &Method::GET) => scorecards(&state, &req).await,
        (p, _) if p.starts_with("/calls/") => one_call(&state, &req).await,
        ("/healthz" | "/ws" | "/calls" | "/metrics" | "/history" | "/scorecards", _) => {
            Err(Refusal::new(
                Rejection::Method,
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            ))
        }
        ("/event", _) => Err(Refusal::new(
            Rejection::Method,
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on /event; use POST"),
        )),
        _ => Err(Refusal::new(
            Rejection::NotFound,
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
    };
    Ok(resp.unwrap_or_else(|r| {
        state.metrics.reject(r.why);
        let mut resp = json_response(r.status, &json!({ "error": r.message }));
        if r.status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = match path.as_str() {
                "/event" => "POST",
                p if p.starts_with("/calls/") && !p.ends_with("/export") => "DELETE",
                _ => "GET",
            };
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if r.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"call-coach\""),
            );
        }
        resp
    }))
}

/// A refused request: the status, the message for the client, the metric.
struct Refusal {
    why: Rejection,
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(why: Rejection, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            why,
            status,
            message: message.into(),
        }
    }
}

/// The token a request presents: `Authorization: Bearer T` or `?token=T`.
fn presented_token<B>(req: &Request<B>) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    query_param(req.uri().query(), "token")
}

impl State {
    fn access<B>(&self, req: &Request<B>) -> Result<Access<'_>, Refusal> {
        let Some(tokens) = &self.tokens else {
            return Ok(Access::Open);
        };
        let Some(token) = presented_token(req) else {
            return Err(Refusal::new(
                Rejection::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "a token is required: Authorization: Bearer TOKEN (or ?token= for websockets)",
            ));
        };
        tokens.grant(&token).map(Access::Token).ok_or_else(|| {
            Refusal::new(
                Rejection::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "unknown token",
            )
        })
    }
}

fn forbidden(message: impl Into<String>) -> Refusal {
    Refusal::new(Rejection::Forbidden, StatusCode::FORBIDDEN, message)
}

async fn post_event(state: &State, req: Request<Incoming>) -> Result<Resp, Refusal> {
    if !state.access(&req)?.can_publish() {
        return Err(forbidden("this token may not publish events"));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(Refusal::new(
            Rejection::ContentType,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, got {content_type:?}"),
        ));
    }
    let too_large = || {
        Refusal::new(
            Rejection::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("event body is larger than {MAX_EVENT_BYTES} bytes"),
        )
    };
    let key = idempotency_key(&req)?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_EVENT_BYTES as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(req.into_body(), MAX_EVENT_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(Refusal::new(
                Rejection::BadRequest,
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            ));
        }
    };
    let mut event = Envelope::parse(&body).map_err(|e| {
        let why = match e {
            EnvelopeError::Json(_) => Rejection::BadJson,
            _ => Rejection::BadEnvelope,
        };
        Refusal::new(why, StatusCode::BAD_REQUEST, e.to_string())
    })?;
    // The one door: nothing below (store, fan-out, replay, exports, the
    // orchestrator and its LLM prompts) ever sees what this replaces.
    let started = std::time::Instant::now();
    let counts = state.redactor.redact(&mut event);
    state.metrics.observe_redaction(started.elapsed());
    for (category, n) in counts {
        state.metrics.redacted[category as usize].add(n);
    }
    match state.store.append(event, key.as_deref()).await {
        Ok(a) if a.duplicate => Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({ "seq": a.seq, "pos": a.pos, "duplicate": true }),
        )),
        Ok(a) => Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({ "seq": a.seq, "pos": a.pos }),
        )),
        Err(e) => {
            let status = match *e {
                StoreError::Closed | StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut resp = json_response(
                status,
                &json!({ "error": format!("event not stored: {e}") }),
            );
            if status == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Ok(resp)
        }
    }
}

/// Longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 128;

/// The publisher's `Idempotency-Key`: a retried POST with the same key is
/// stored once (docs/contract.md "Publishing").
fn idempotency_key<B>(req: &Request<B>) -> Result<Option<String>, Refusal> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        Refusal::new(
            Rejection::BadRequest,
            StatusCode::BAD_REQUEST,
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} characters of A-Z a-z 0-9 . _ : -"),
        )
    };
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty()
        || key.len() > MAX_KEY_LEN
        || !key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(&c))
    {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

fn subscribe(state: &Arc<State>, req: Request<Incoming>) -> Result<Resp, Refusal> {
    let access = state.access(&req)?;
    let query = req.uri().query();
    let topic = match query_param(query, "callId").as_deref() {
        None | Some("*") | Some("") => Topic::All,
        Some(id) if is_valid_call_id(id) => Topic::Call(id.to_owned()),
        Some(id) => {
            return Err(Refusal::new(
                Rejection::BadRequest,
                StatusCode::BAD_REQUEST,
                format!(
                    "callId must match ^[A-Za-z0-9][A-Za-z0-9._:-]{{0,127}}$ or be \"*\", got {id:?}"
                ),
            ));
        }
    };
    let since = match query_param(query, "since") {
        None => None,
        Some(s) => Some(s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Refusal::new(
                Rejection::BadRequest,
                StatusCode::BAD_REQUEST,
                format!("since must be a non-negative integer, got {s:?}"),
            )
        })?),
    };
    // All calls without a cursor means "from now on": now is when the
    // request arrived, not when the websocket session joins the hub, so
    // an event committed in between is not lost.
    let since = match (&topic, since) {
        (Topic::All, None) => Some(state.store.head()),
        (_, since) => since,
    };
    let allowed = match &topic {
        Topic::All => access.can_subscribe_all(),
        Topic::Call(id) => access.can_subscribe(id, state.calls.agent_of(id).as_deref()),
    };
    if !allowed {
        return Err(forbidden(match &topic {
            Topic::All => "only a supervisor token may subscribe to all calls".to_owned(),
            Topic::Call(id) => format!("this token may not follow call {id}"),
        }));
    }
    let Some(accept) = websocket_accept(&req) else {
        return Err(Refusal::new(
            Rejection::BadRequest,
            StatusCode::UPGRADE_REQUIRED,
            "GET /ws is a websocket endpoint: send Upgrade: websocket",
        ));
    };
    let state = state.clone();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => super::ws::session(TokioIo::new(upgraded), state, topic, since).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Ok(upgrade_response(&accept))
}

fn list_calls(state: &State, req: &Request<Incoming>) -> Result<Resp, Refusal> {
    let access = state.access(req)?;
    if !access.can_read() {
        return Err(forbidden("this token may not list calls"));
    }
    let calls = state.calls.active(now_unix_ms(), state.activity, |c| {
        access.can_subscribe(&c.call_id, c.agent.as_deref())
    });
    Ok(json_response(StatusCode::OK, &json!({ "calls": calls })))
}

fn metrics(state: &State, req: &Request<Incoming>) -> Result<Resp, Refusal> {
    if !state.access(req)?.can_read() {
        return Err(forbidden("this token may not read metrics"));
    }
    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

fn bad_request(message: String) -> Refusal {
    Refusal::new(Rejection::BadRequest, StatusCode::BAD_REQUEST, message)
}

/// A store failure while answering: 503 when it is closed, else 500.
fn store_failed(e: &StoreError) -> Refusal {
    let status = match e {
        StoreError::Closed | StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::error!(error = %e, "history query failed");
    Refusal::new(Rejection::Store, status, format!("{e}"))
}

/// Where the call history is read; a JetStream relay without an archive
/// has none.
fn history_store(state: &State) -> Result<&Arc<store::Readers>, Refusal> {
    state.store.history().ok_or_else(|| {
        Refusal::new(
            Rejection::NotImplemented,
            StatusCode::NOT_IMPLEMENTED,
            "this relay keeps no call history: it keeps events in NATS JetStream without \
             relay.nats.archive = true; ask a relay that has it (README \"Scaling out\")",
        )
    })
}

/// The past calls this request may read (`what` names them in a 403).
fn history_scope<B>(
    state: &State,
    req: &Request<B>,
    what: &str,
) -> Result<history::query::Scope, Refusal> {
    state
        .access(req)?
        .history_scope()
        .ok_or_else(|| forbidden(format!("this token may not read {what}")))
}

/// `GET /history`: past calls, newest first, filtered and searched.
async fn history(state: &State, req: &Request<Incoming>) -> Result<Resp, Refusal> {
    let scope = history_scope(state, req, "call history")?;
    let filter = Filter::parse(req.uri().query()).map_err(bad_request)?;
    let store = history_store(state)?;
    let page = store
        .read(move |c| history::query::list(c, &filter, &scope))
        .await
        .map_err(|e| store_failed(&e))?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(page).unwrap_or_default(),
    ))
}

/// `GET /scorecards`: per agent over a period, JSON or CSV.
async fn scorecards(state: &State, req: &Request<Incoming>) -> Result<Resp, Refusal> {
    let scope = history_scope(state, req, "scorecards")?;
    let q = ScorecardQuery::parse(req.uri().query()).map_err(bad_request)?;
    let store = history_store(state)?;
    let (period, csv) = (q.period, q.csv);
    let cards = store
        .read(move |c| history::query::scorecards(c, &q, &scope))
        .await
        .map_err(|e| store_failed(&e))?;
    if csv {
        return Ok(download(
            history::query::scorecards_csv(&cards),
            "text/csv; charset=utf-8",
            "scorecards.csv",
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "from": crate::event::rfc3339_millis(period.from_ms),
            "to": crate::event::rfc3339_millis(period.to_ms),
            "agents": cards,
        }),
    ))
}

/// A body to save as a file.
fn download(body: String, content_type: &'static str, file_name: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Events exported from one call at most.
const MAX_EXPORT_EVENTS: usize = 200_000;

/// `GET /calls/ID/export?format=txt|json|vtt` and `DELETE /calls/ID`.
async fn one_call(state: &State, req: &Request<Incoming>) -> Result<Resp, Refusal> {
    let rest = req.uri().path().trim_start_matches("/calls/");
    let (id, export) = match rest.strip_suffix("/export") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    let method = req.method();
    let allowed = if export { Method::GET } else { Method::DELETE };
    if *method != allowed {
        return Err(Refusal::new(
            Rejection::Method,
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{method} is not allowed on {}; use {allowed}",
                req.uri().path()
            ),
        ));
    }
    if !is_valid_call_id(id) {
        return Err(Refusal::new(
            Rejection::NotFound,
            StatusCode::NOT_FOUND,
            "no such call: a call id matches ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        ));
    }
    let access = state.access(req)?;
    let no_such = || {
        Refusal::new(
            Rejection::NotFound,
            StatusCode::NOT_FOUND,
            format!("no such call: {id}"),
        )
    };
    if !export {
        if !access.can_subscribe_all() {
            return Err(forbidden("only a supervisor token may delete a call"));
        }
        let known = state.calls.get(id).is_some();
        let deleted = state.store.erase(id).await.map_err(|e| store_failed(&e))?;
        state.calls.forget(&[id.to_owned()]);
        if deleted == 0 && !known {
            return Err(no_such());
        }
        // Who and what, never what was said.
        tracing::info!(call = id, events = deleted, "call erased on request");
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "callId": id, "deleted": deleted }),
        ));
    }
    let format =
        history::export::Format::parse(query_param(req.uri().query(), "format").as_deref())
            .map_err(bad_request)?;
    let info = state.calls.get(id).ok_or_else(no_such)?;
    if !access.can_subscribe(id, info.agent.as_deref()) {
        return Err(forbidden(format!("this token may not read call {id}")));
    }
    let stored = state
        .store
        .read_after(Some(id.to_owned()), 0, 0, MAX_EXPORT_EVENTS)
        .await
        .map_err(|e| store_failed(&e))?;
    if stored.is_empty() {
        return Err(no_such());
    }
    let events: Vec<serde_json::Value> = stored
        .iter()
        .filter_map(|e| serde_json::from_str(e.json.as_str()).ok())
        .collect();
    Ok(download(
        history::export::render(id, &events, format),
        format.content_type(),
        &history::export::file_name(id, format),
    ))
}
