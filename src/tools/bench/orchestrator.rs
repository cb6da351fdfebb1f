//! `call-coach bench-orchestrator`: replays a scripted stream of many
//! concurrent calls into a relay that a running orchestrator follows, and
//! prints the rule-tip latency (the triggering transcript's publish to the
//! tip arriving on the relay), the metrics cadence per call, and the
//! orchestrator's CPU and memory per 100 calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::event::{CallEnded, Event, Source, Speaker, Transcript};
use crate::relay_client::{Scope, Subscription};
use anyhow::Context;
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// The relay the orchestrator follows.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Concurrent calls, comma-separated for a sweep.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub calls: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// The orchestrator's process id, for its CPU and memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Also serve a stand-in LLM (OpenAI chat-completions, streamed) on
    /// this address, answering after `--llm-delay-ms`; point the
    /// orchestrator's LLM_BASE_URL at http://ADDR/v1.
    #[arg(long, value_name = "ADDR")]
    pub serve_llm: Option<std::net::SocketAddr>,
    #[arg(long, default_value_t = 500)]
    pub llm_delay_ms: u64,
}

/// A stand-in LLM: every chat completion is answered after `delay` with a
/// short streamed tip. Returns the count of requests served.
async fn serve_llm(
    addr: std::net::SocketAddr,
    delay: Duration,
) -> anyhow::Result<Arc<std::sync::atomic::AtomicU64>> {
    use bytes::Bytes;
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .context("--serve-llm")?;
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = served.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::http::serve(
        listener,
        1024,
        shutdown,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let count = count.clone();
            async move {
                drop(req);
                tokio::time::sleep(delay).await;
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut body = String::new();
                for piece in ["Pregunte ", "qué necesita ", "para quedarse."] {
                    let chunk = json!({"choices":[{"delta":{"content":piece}}]});
                    body.push_str(&format!("data: {chunk}\n\n"));
                }
                body.push_str("data: [DONE]\n\n");
                let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/event-stream"),
                );
                Ok::<_, std::convert::Infallible>(resp)
            }
        },
    ));
    Ok(served)
}

/// Customer lines that each set off a different default rule, and a
/// neutral one between them.
const SCRIPT: [(&str, Option<&str>); 6] = [
    ("Buenas tardes, llamo por mi factura.", None),
    ("Quiero cancelar el contrato.", Some("cancelacion")),
    (
        "Esto es una vergüenza, ya es la tercera vez.",
        Some("queja"),
    ),
    ("En Movistar me lo dejan mejor.", Some("competidor")),
    ("Es demasiado caro para lo que es.", Some("precio")),
    ("Quiero hablar con un supervisor.", Some("supervisor")),
];

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let llm = match opts.serve_llm {
        Some(addr) => {
            println!(
                "stand-in LLM on http://{addr}/v1, answering after {} ms",
                opts.llm_delay_ms
            );
            Some(serve_llm(addr, Duration::from_millis(opts.llm_delay_ms)).await?)
        }
        None => None,
    };
    let host = opts
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    println!(
        "relay {} | scripted customers, a line every 2 s per call | {} s per run",
        opts.url, opts.duration
    );
    println!(
        "{:>6} {:>8} {:>10} {:>10} {:>10} {:>14} {:>9} {:>10} {:>14}",
        "calls",
        "tips",
        "p50 ms",
        "p99 ms",
        "max ms",
        "metrics every",
        "CPU",
        "RSS",
        "CPU/100 calls"
    );
    for (round, &n) in opts.calls.iter().enumerate() {
        let prefix = format!("ob-{}-{round}", std::process::id());
        let mut subscription = Subscription::new(&format!("ws://{host}/ws"), Scope::All, None)?;
        subscription
            .connect()
            .await
            .map_err(anyhow::Error::msg)
            .context("subscribing to the relay")?;
        let sent: Arc<Mutex<HashMap<(String, String), Instant>>> = Arc::default();
        let seen: Arc<Mutex<Observed>> = Arc::default();
        let reader = {
            let (sent, seen, prefix) = (sent.clone(), seen.clone(), prefix.clone());
            tokio::spawn(async move {
                loop {
                    let received = subscription.next().await;
                    let now = Instant::now();
                    let Some(event) = received.event else {
                        continue;
                    };
                    let call = event.call_id().to_owned();
                    if !call.starts_with(&prefix) {
                        continue;
                    }
                    let Ok(mut o) = seen.lock() else { return };
                    match event {
                        Event::Tip(t) if t.source == Source::Llm && t.is_final => {
                            o.llm_tips += 1;
                        }
                        Event::Tip(t) if t.source == Source::Llm => {}
                        Event::Tip(t) => {
                            let rule = t.rule.unwrap_or_default();
                            if let Some(t) =
                                sent.lock().ok().and_then(|s| s.get(&(call, rule)).copied())
                            {
                                o.latency_us.push(now.duration_since(t).as_micros() as u64);
                            }
                        }
                        Event::Metrics(_) => {
                            if let Some(prev) = o.last_metrics.insert(call, now) {
                                o.gaps_ms
                                    .push(now.duration_since(prev).as_secs_f64() * 1000.0);
                            }
                        }
                        _ => {}
                    }
                }
            })
        };
        let before = opts
            .pid
            .and_then(|p| crate::telemetry::process_stats(Some(p)));
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(opts.duration);
        let agent = crate::net::agent(ureq::Agent::config_builder().build());
        let event_url = format!("http://{host}/event");
        // Calls spread over each 2 s; each says its script in order.
        let mut step = 0usize;
        while Instant::now() < until {
            for i in 0..n {
                let due = start
                    + Duration::from_millis(2_000 * step as u64)
                    + Duration::from_micros(2_000_000 * i as u64 / n.max(1) as u64);
                tokio::time::sleep_until(due.into()).await;
                let call = format!("{prefix}-{i}");
                let (text, rule) = SCRIPT[step % SCRIPT.len()];
                let ev = Event::Transcript(Transcript {
                    call_id: call.clone(),
                    speaker: Speaker::Customer,
                    text: text.to_owned(),
                    is_final: true,
                    utterance_id: format!("u-{step}"),
                    start_ms: step as u64 * 2000,
                    end_ms: step as u64 * 2000 + 1500,
                    latency_ms: None,
                    lag_ms: None,
                    gap: None,
                    ended_by: None,
                    revised: None,
                })
                .to_json();
                if let Some(rule) = rule
                    && let Ok(mut s) = sent.lock()
                {
                    s.insert((call.clone(), rule.to_owned()), Instant::now());
                }
                let (agent, url) = (agent.clone(), event_url.clone());
                tokio::task::spawn_blocking(move || {
                    agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(ev.as_bytes())
                        .map(drop)
                })
                .await??;
            }
            step += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let after = opts
            .pid
            .and_then(|p| crate::telemetry::process_stats(Some(p)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        reader.abort();
        let (mut lat, gaps, llm_tips) = {
            let o = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            (o.latency_us.clone(), o.gaps_ms.clone(), o.llm_tips)
        };
        lat.sort_unstable();
        let pick = |q: f64| {
            lat.get(((lat.len().max(1) - 1) as f64 * q) as usize)
                .map_or(f64::NAN, |v| *v as f64 / 1000.0)
        };
        let cadence = if gaps.is_empty() {
            f64::NAN
        } else {
            gaps.iter().sum::<f64>() / gaps.len() as f64
        };
        let (cpu, rss) = match (before, after) {
            (Some((_, c0)), Some((rss, c1))) => ((c1 - c0) / secs, rss as f64),
            _ => (f64::NAN, f64::NAN),
        };
        println!(
            "{:>6} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>11.0} ms {:>8.0}% {:>6.0} MiB {:>13.1}% {:>9}",
            n,
            lat.len(),
            pick(0.5),
            pick(0.99),
            lat.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
            cadence,
            cpu * 100.0,
            rss / 1048576.0,
            cpu * 100.0 * 100.0 / n.max(1) as f64,
            if llm.is_some() {
                llm_tips.to_string()
            } else {
                "-".into()
            },
        );
        // End the calls so the orchestrator forgets them.
        for i in 0..n {
            let ev = Event::CallEnded(CallEnded::new(format!("{prefix}-{i}"), "bench")).to_json();
            let (agent, url) = (agent.clone(), event_url.clone());
            let _ = tokio::task::spawn_blocking(move || {
                agent
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(ev.as_bytes())
                    .map(drop)
            })
            .await;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Observed {
    llm_tips: u64,
    latency_us: Vec<u64>,
    last_metrics: HashMap<String, Instant>,
    gaps_ms: Vec<f64>,
}
