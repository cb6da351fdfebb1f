//! ari-coach's own loopback HTTP endpoint (`ari_coach.listen`): `GET
//! /healthz` answers 200 while the app's events socket is connected to
//! Asterisk (503 otherwise), `GET /metrics` the Prometheus counters below.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::service::Ctx;
use crate::http::{Resp, text};
use crate::relay_client::PublishStats;
use crate::telemetry::Counter;

#[derive(Default)]
pub struct Stats {
    /// The events socket is open (the app is registered in Asterisk).
    pub connected: AtomicBool,
    pub reconnects: Counter,
    pub events: Counter,
    /// Events a call task could not take (its inbox full).
    pub inbox_dropped: Counter,
    pub taps_failed: Counter,
    pub taps_restored: Counter,
    /// Calls started, by mode.
    pub started: Mutex<BTreeMap<String, u64>>,
    /// Calls ended, by reason (`error: ...` counted as `error`).
    pub ended: Mutex<BTreeMap<String, u64>>,
    /// Posting to the relay.
    pub publish: Arc<PublishStats>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.to_owned())
        .or_default() += 1;
}

impl Stats {
    pub fn call_started(&self, mode: &str) {
        bump(&self.started, mode);
    }

    pub fn call_ended(&self, reason: &str) {
        let key = if reason.starts_with("error") {
            "error"
        } else {
            reason
        };
        bump(&self.ended, key);
    }

    fn render(&self, active: usize) -> String {
        let mut out = String::new();
        let mut line = |name: &str, help: &str, kind: &str, samples: Vec<(String, u64)>| {
            crate::telemetry::prometheus_samples(&mut out, name, kind, help, samples);
        };
        let one = |v: u64| vec![(String::new(), v)];
        let labelled = |label: &str, map: &Mutex<BTreeMap<String, u64>>| {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| {
                    (
                        format!("{{{label}=\"{}\"}}", k.replace(['"', '\\', '\n'], "_")),
                        *v,
                    )
                })
                .collect::<Vec<_>>()
        };
        let connected = u64::from(self.connected.load(Ordering::Relaxed));
        line(
            "ari_coach_connected",
            "1 while the ARI events socket is open",
            "gauge",
            one(connected),
        );
        line(
            "ari_coach_calls_active",
            "calls being coached",
            "gauge",
            one(active as u64),
        );
        line(
            "ari_coach_calls_started_total",
            "calls coached, by mode",
            "counter",
            labelled("mode", &self.started),
        );
        line(
            "ari_coach_calls_ended_total",
            "calls ended, by reason",
            "counter",
            labelled("reason", &self.ended),
        );
        line(
            "ari_coach_taps_failed_total",
            "party taps that could not be built",
            "counter",
            one(self.taps_failed.get()),
        );
        line(
            "ari_coach_taps_restored_total",
            "party taps rebuilt after a loss",
            "counter",
            one(self.taps_restored.get()),
        );
        line(
            "ari_coach_ari_reconnects_total",
            "events socket (re)connections",
            "counter",
            one(self.reconnects.get()),
        );
        line(
            "ari_coach_ari_events_total",
            "ARI events received",
            "counter",
            one(self.events.get()),
        );
        line(
            "ari_coach_inbox_dropped_total",
            "events a call task could not take",
            "counter",
            one(self.inbox_dropped.get()),
        );
        line(
            "ari_coach_relay_published_total",
            "events the relay accepted",
            "counter",
            one(self.publish.published.get()),
        );
        line(
            "ari_coach_relay_retries_total",
            "failed posts to the relay, retried",
            "counter",
            one(self.publish.retries.get()),
        );
        line(
            "ari_coach_relay_dropped_total",
            "events given up",
            "counter",
            one(self.publish.dropped.get()),
        );
        out
    }
}

pub async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            if ctx.stats.connected.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ok\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not connected to Asterisk's ARI\n",
                )
            }
        }
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(ctx.stats.render(ctx.active()))));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "ari-coach serves GET /healthz and GET /metrics\n",
        ),
    })
}
