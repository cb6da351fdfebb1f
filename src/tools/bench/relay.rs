//! `call-coach bench-relay`: drives any relay that speaks docs/contract.md.
//!
//! N calls, M subscribers per call plus K supervisors (`callId=*`), a target
//! publish rate over keep-alive HTTP connections; prints events/s accepted
//! and delivered and the publish-to-delivery latency (p50/p99/max), measured
//! from a send timestamp carried in each event. `--idle N` instead measures
//! the relay's memory per 1,000 idle subscribers.
//!
//! Several `--url`s (comma-separated) share the load: publishers and
//! subscribers are spread over them, and their CPU is summed. `--spawn`
//! starts what it measures itself, on loopback: `sqlite` one relay on a
//! temporary SQLite store, `nats` a 3-node NATS JetStream cluster and two
//! relays on it; the CPU column then counts the NATS servers too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Base URL of the relay; several, comma-separated, share the load.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7070")]
    pub url: Vec<String>,
    /// Start the relays measured instead of using `--url`: `sqlite` (one
    /// relay) or `nats` (a 3-node JetStream cluster and two relays; needs
    /// nats-server, see `NATS_SERVER`).
    #[arg(long, value_parser = ["sqlite", "nats"])]
    pub spawn: Option<String>,
    /// Concurrent calls the events are spread over.
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// Websocket subscribers per call.
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Supervisors subscribed to all calls (`callId=*`).
    #[arg(long, default_value_t = 2)]
    pub supervisors: usize,
    /// Target publish rates in events/s, comma-separated for a sweep;
    /// 0 publishes as fast as the relay answers.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub rate: Vec<f64>,
    /// Seconds each rate is held.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publishing HTTP connections (requests in flight at most).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Bytes of text in each event (a transcript is ~200): Spanish speech
    /// from a fixed set of sentences, one in ten with digits the relay
    /// redacts (a card, a DNI, a phone number).
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// With `--spawn`: `off` starts the relays with every redaction
    /// category turned off, for a side-by-side run.
    #[arg(long, value_parser = ["on", "off"], default_value = "on")]
    pub redact: String,
    /// Bearer token (else $CALL_COACH_BENCH_TOKEN); needs publish and
    /// supervisor roles.
    #[arg(long)]
    pub token: Option<String>,
    /// Instead of a load run: open this many idle subscribers and report the
    /// relay's memory per 1,000 of them.
    #[arg(long, value_name = "N")]
    pub idle: Option<usize>,
    /// Process ids whose CPU counts too (e.g. the NATS servers), and the
    /// relay's when its /metrics has no process figures (one relay).
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
}

struct Target {
    host: String,
    port: u16,
    token: Option<String>,
    pid: Option<u32>,
}

impl Target {
    fn parse(url: &str, opts: &Options) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .context("--url must start with http://")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().context("bad port in --url")?),
            None => (authority.to_owned(), 80),
        };
        let token = opts
            .token
            .clone()
            .or_else(|| std::env::var("CALL_COACH_BENCH_TOKEN").ok());
        // A pid stands in for the relay's own figures only with one relay.
        let pid = (opts.url.len() == 1 && opts.pid.len() == 1).then(|| opts.pid[0]);
        Ok(Self {
            host,
            port,
            token,
            pid,
        })
    }

    fn ws_url(&self, call: &str) -> String {
        format!("ws://{}:{}/ws?callId={call}", self.host, self.port)
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot connect to {}:{}", self.host, self.port))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn request(&self, method: &str, path: &str, body: Bytes) -> hyper::Request<Full<Bytes>> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port));
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(Full::new(body))
            .expect("static request parts are valid")
    }

    async fn subscribe(
        &self,
        call: &str,
    ) -> anyhow::Result<
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    > {
        let mut req = self.ws_url(call).into_client_request()?;
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        // tungstenite zeroes the free read buffer on every read; keep it
        // small so the load generator spends its CPU on the load.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024);
        let (ws, _) = crate::net::ws_connect(req, Some(config))
            .await
            .with_context(|| format!("websocket to {}", self.ws_url(call)))?;
        Ok(ws)
    }

    /// Resident memory (bytes) and CPU seconds of the relay: from its
    /// /metrics, else from /proc with --pid.
    async fn process_stats(&self) -> Option<(f64, f64)> {
        if let Ok(text) = self.get_text("/metrics").await {
            let find = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            };
            if let (Some(rss), Some(cpu)) = (
                find("process_resident_memory_bytes "),
                find("process_cpu_seconds_total "),
            ) {
                return Some((rss, cpu));
            }
        }
        let (rss, cpu) = crate::telemetry::process_stats(Some(self.pid?))?;
        Some((rss as f64, cpu))
    }

    /// A counter from the relay's /metrics (0 when unreadable).
    async fn counter(&self, name: &str) -> u64 {
        let Ok(text) = self.get_text("/metrics").await else {
            return 0;
        };
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let mut conn = self.connect().await?;
        let resp = conn
            .send_request(self.request("GET", path, Bytes::new()))
            .await?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What `--spawn` started; stopped when dropped, its directory (logs)
/// kept with `BENCH_KEEP_LOGS=1`.
struct Spawned {
    _relays: Vec<crate::tools::procs::Service>,
    _cluster: Option<crate::tools::nats_cluster::Cluster>,
    _dir: tempfile::TempDir,
}

/// Starts the relays `--spawn` names; points `opts` at them.
fn spawn(kind: &str, opts: &mut Options) -> anyhow::Result<Spawned> {
    use crate::tools::procs::Service;
    let dir = tempfile::Builder::new()
        .prefix("bench-relay-")
        .disable_cleanup(std::env::var_os("BENCH_KEEP_LOGS").is_some())
        .tempdir()?;
    eprintln!("the relays' and servers' logs: {}", dir.path().display());
    let ready = Duration::from_secs(120);
    let redact_off = opts.redact == "off";
    let start_relay = |i: usize, extra: &[(&str, String)]| -> anyhow::Result<Service> {
        let mut env = vec![
            ("RELAY_LISTEN", "127.0.0.1:0".to_owned()),
            (
                "STATE_DIR",
                dir.path().join(format!("relay{i}")).display().to_string(),
            ),
            ("RUST_LOG", "warn".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        if redact_off {
            for key in REDACT_SWITCHES {
                env.push((key, "false".to_owned()));
            }
        }
        Service::start("relay", &env, dir.path(), ready)
    };
    let (relays, cluster) = match kind {
        "nats" => {
            eprintln!("starting a 3-node NATS JetStream cluster and two relays on it...");
            let cluster = crate::tools::nats_cluster::Cluster::start(dir.path(), 3, ready)?;
            let url = cluster.urls();
            let relays = (0..2)
                .map(|i| start_relay(i, &[("RELAY_NATS_URL", url.clone())]))
                .collect::<anyhow::Result<Vec<_>>>()?;
            opts.pid.extend(cluster.pids());
            (relays, Some(cluster))
        }
        _ => {
            eprintln!("starting one relay on SQLite...");
            (vec![start_relay(0, &[])?], None)
        }
    };
    opts.url = relays
        .iter()
        .map(|r| format!("http://{}", r.addr))
        .collect();
    Ok(Spawned {
        _relays: relays,
        _cluster: cluster,
        _dir: dir,
    })
}

/// The relay's redaction categories, as variables (`--redact off`).
const REDACT_SWITCHES: [&str; 6] = [
    "CALL_COACH_RELAY__REDACT__CARDS",
    "CALL_COACH_RELAY__REDACT__SECURITY_CODES",
    "CALL_COACH_RELAY__REDACT__ID_DOCUMENTS",
    "CALL_COACH_RELAY__REDACT__IBAN",
    "CALL_COACH_RELAY__REDACT__EMAIL",
    "CALL_COACH_RELAY__REDACT__PHONE",
];

/// Sentences of a call, a tenth of them with what the relay redacts.
const SPEECH: [&str; 10] = [
    "Buenos días, le atiende Laura, ¿en qué puedo ayudarle?",
    "Quería consultar por qué me han cobrado dos veces la factura de este mes.",
    "Vale, ahora mismo lo reviso, deme un momento por favor.",
    "Sí, el cargo es de cuarenta y nueve euros con noventa céntimos.",
    "Mi tarjeta es la 4539 1488 0343 6467 y caduca en mayo.",
    "Le confirmo que la devolución llegará en un plazo de cinco días.",
    "¿Puedo ayudarle en algo más? Tiene un veinte por ciento de descuento.",
    "No, eso es todo, muchas gracias por su ayuda.",
    "Perfecto, que tenga un buen día y gracias por llamar.",
    "Le llamo en cinco minutos para confirmarle el cambio de tarifa.",
];

/// About `bytes` of speech for event `i`: the sentences in turn.
fn speech(i: u64, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 80);
    let mut k = i as usize;
    while out.len() < bytes {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(SPEECH[k % SPEECH.len()]);
        k += 1;
    }
    let mut end = bytes.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}

/// The redaction-time histogram of every relay: (bound s, cumulative count).
async fn redaction_buckets(targets: &[Arc<Target>]) -> Vec<(f64, u64)> {
    let mut sum: Vec<(f64, u64)> = Vec::new();
    for t in targets {
        let Ok(text) = t.get_text("/metrics").await else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("relay_redaction_seconds_bucket{le=\"") else {
                continue;
            };
            let Some((bound, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap_or(f64::NAN)
            };
            let count: u64 = count.trim().parse().unwrap_or(0);
            match sum.iter_mut().find(|(b, _)| *b == bound) {
                Some(e) => e.1 += count,
                None => sum.push((bound, count)),
            }
        }
    }
    sum
}

/// The bucket bound (µs) under which a `q` share of the round's
/// redactions finished: `after - before` of [`redaction_buckets`].
fn redaction_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(b, n)| {
            let was = before.iter().find(|(x, _)| x == b).map_or(0, |e| e.1);
            (*b, n.saturating_sub(was))
        })
        .collect();
    let total = delta.iter().find(|(b, _)| b.is_infinite())?.1;
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    delta
        .iter()
        .filter(|(b, _)| b.is_finite())
        .find(|(_, n)| *n >= want)
        .map(|(b, _)| b * 1e6)
}

/// Subscribers dropped so far by every relay.
async fn kicked(targets: &[Arc<Target>]) -> u64 {
    let mut n = 0;
    for t in targets {
        n += t.counter("relay_subscriber_drops_total ").await;
    }
    n
}

/// CPU seconds used so far by every relay and every extra process.
async fn cpu_seconds(targets: &[Arc<Target>], extra: &[u32]) -> Option<f64> {
    let mut total = 0.0;
    for t in targets {
        total += t.process_stats().await?.1;
    }
    for pid in extra {
        total += crate::telemetry::process_stats(Some(*pid))?.1;
    }
    Some(total)
}

pub async fn run(mut opts: Options) -> anyhow::Result<()> {
    let _spawned = match opts.spawn.clone() {
        Some(kind) => Some(spawn(&kind, &mut opts)?),
        None => None,
    };
    let targets: Vec<Arc<Target>> = opts
        .url
        .iter()
        .map(|u| Target::parse(u, &opts).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    // Extra pids: all of them unless one stands in for a single relay.
    let extra: Vec<u32> = if targets.len() == 1 && targets[0].pid.is_some() {
        Vec::new()
    } else {
        opts.pid.clone()
    };
    if let Some(n) = opts.idle {
        return idle(&targets[0], n).await;
    }
    if opts.calls == 0 {
        bail!("--calls must be at least 1");
    }
    println!(
        "relay {} | {} calls x {} subscribers + {} supervisors | {} publishers | {} s per rate",
        opts.url.join(","),
        opts.calls,
        opts.subscribers,
        opts.supervisors,
        opts.concurrency,
        opts.duration
    );
    println!(
        "{:>10} {:>12} {:>13} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>14} {:>7} {:>17}",
        "target/s",
        "accepted/s",
        "delivered/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lost",
        "errors",
        "CPU",
        "CPU ms/1k ev",
        "kicked",
        "redact p50/p99 µs"
    );
    for (round, rate) in opts.rate.iter().enumerate() {
        let r = one_rate(&targets, &extra, &opts, *rate, round).await?;
        let target_label = if *rate > 0.0 {
            format!("{rate:.0}")
        } else {
            "max".into()
        };
        println!(
            "{:>10} {:>12.0} {:>13.0} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>8} {:>10} {:>14} {:>7} {:>17}",
            target_label,
            r.accepted as f64 / r.secs,
            r.delivered as f64 / r.secs,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.lost,
            r.errors,
            r.cpu
                .map(|c| format!("{:.0}%", c * 100.0))
                .unwrap_or_else(|| "-".into()),
            r.cpu
                .filter(|_| r.accepted > 0)
                .map(|c| format!("{:.0}", c * r.secs / r.accepted as f64 * 1e6))
                .unwrap_or_else(|| "-".into()),
            r.kicked,
            match (r.redact_p50_us, r.redact_p99_us) {
                (Some(a), Some(b)) => format!("≤{a:.0} / ≤{b:.0}"),
                _ => "-".into(),
            },
        );
    }
    Ok(())
}

struct RoundResult {
    secs: f64,
    accepted: u64,
    delivered: u64,
    lost: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Relay CPU use during the round, in cores.
    cpu: Option<f64>,
    /// Subscribers the relays dropped for falling behind (their queue
    /// filled up), during the round.
    kicked: u64,
    /// Time in the redactor per event (upper bucket bounds, µs).
    redact_p50_us: Option<f64>,
    redact_p99_us: Option<f64>,
}

async fn one_rate(
    targets: &[Arc<Target>],
    extra: &[u32],
    opts: &Options,
    rate: f64,
    round: usize,
) -> anyhow::Result<RoundResult> {
    let prefix = format!(
        "bench-{}-{}-{round}",
        std::process::id(),
        unix_micros() / 1000
    );
    let calls: Arc<Vec<String>> =
        Arc::new((0..opts.calls).map(|i| format!("{prefix}-{i}")).collect());

    // Subscribers first, all connected before the first event.
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut subs = Vec::new();
    let mut n = 0;
    for call in calls.iter() {
        for _ in 0..opts.subscribers {
            subs.push(targets[n % targets.len()].subscribe(call).await?);
            n += 1;
        }
    }
    for _ in 0..opts.supervisors {
        subs.push(targets[n % targets.len()].subscribe("*").await?);
        n += 1;
    }
    let done = Arc::new(AtomicBool::new(false));
    for ws in subs {
        let prefix = prefix.clone();
        let delivered = delivered.clone();
        let done = done.clone();
        readers.push(tokio::spawn(read_latencies(ws, prefix, delivered, done)));
    }

    let before = cpu_seconds(targets, extra).await;
    let kicked_before = kicked(targets).await;
    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(opts.duration);
    let redact_before = redaction_buckets(targets).await;
    let payload = opts.payload;
    let mut publishers = Vec::new();
    for k in 0..opts.concurrency.max(1) {
        let target = targets[k % targets.len()].clone();
        let calls = calls.clone();
        let (accepted, errors, next) = (accepted.clone(), errors.clone(), next.clone());
        publishers.push(tokio::spawn(async move {
            let mut conn: Option<SendRequest<Full<Bytes>>> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if rate > 0.0 {
                    let at = start + Duration::from_secs_f64(i as f64 / rate);
                    if at >= until {
                        return;
                    }
                    tokio::time::sleep_until(at.into()).await;
                } else if Instant::now() >= until {
                    return;
                }
                let call = &calls[i as usize % calls.len()];
                let body = serde_json::json!({
                    "type": "bench.tick",
                    "callId": call,
                    "benchSentUs": unix_micros(),
                    "text": speech(i, payload),
                })
                .to_string();
                if conn.as_ref().is_none_or(|c| c.is_closed()) {
                    conn = target.connect().await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let req = target.request("POST", "/event", Bytes::from(body));
                match c.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status() == hyper::StatusCode::ACCEPTED;
                        let _ = resp.into_body().collect().await;
                        if ok {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
            }
        }));
    }
    for p in publishers {
        let _ = p.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = cpu_seconds(targets, extra).await;
    let accepted = accepted.load(Ordering::Relaxed);
    let expected = accepted * (opts.subscribers + opts.supervisors) as u64;
    let settle = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for r in readers {
        if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(5), r).await {
            lat.extend(v);
        }
    }
    let delivered_n = delivered.load(Ordering::Relaxed);
    let kicked_n = kicked(targets).await.saturating_sub(kicked_before);
    let redact_after = redaction_buckets(targets).await;
    let collected = collected_latencies(lat);
    let cpu = match (before, after) {
        (Some(c0), Some(c1)) => Some((c1 - c0) / secs),
        _ => None,
    };
    Ok(RoundResult {
        secs,
        accepted,
        delivered: delivered_n,
        lost: expected.saturating_sub(delivered_n),
        errors: errors.load(Ordering::Relaxed),
        p50_ms: collected.0,
        p99_ms: collected.1,
        max_ms: collected.2,
        cpu,
        kicked: kicked_n,
        redact_p50_us: redaction_quantile(&redact_before, &redact_after, 0.5),
        redact_p99_us: redaction_quantile(&redact_before, &redact_after, 0.99),
    })
}

/// Reads frames until the round is over, returning each event's
/// publish-to-delivery latency in microseconds.
async fn read_latencies(
    mut ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    prefix: String,
    delivered: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if done.load(Ordering::Relaxed) { break } else { continue }
            }
        };
        let Some(Ok(Message::Text(text))) = msg else {
            if msg.is_none() || matches!(msg, Some(Err(_))) {
                break;
            }
            continue;
        };
        let now = unix_micros();
        let Ok(tick) = serde_json::from_str::<Tick>(&text) else {
            continue;
        };
        let ours = tick.call_id.starts_with(&prefix);
        if let (true, Some(sent)) = (ours, tick.bench_sent_us) {
            out.push(now.saturating_sub(sent));
            delivered.fetch_add(1, Ordering::Relaxed);
        }
        if done.load(Ordering::Relaxed) {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    out
}

fn collected_latencies(mut v: Vec<u64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_unstable();
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    (
        pick(0.50),
        pick(0.99),
        *v.last().unwrap_or(&0) as f64 / 1000.0,
    )
}

/// Opens `n` idle subscribers, each to its own call, and reports how much
/// the relay's resident memory grew.
async fn idle(target: &Arc<Target>, n: usize) -> anyhow::Result<()> {
    let Some((before, _)) = target.process_stats().await else {
        bail!(
            "cannot read the relay's memory: its /metrics has no process_resident_memory_bytes; pass --pid"
        );
    };
    let prefix = format!("idle-{}-{}", std::process::id(), unix_micros() / 1000);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(target.subscribe(&format!("{prefix}-{i}")).await?);
        if (i + 1) % 1000 == 0 {
            eprintln!("{} subscribers open", i + 1);
        }
    }
    // Let the relay finish setting the sessions up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let Some((after, _)) = target.process_stats().await else {
        bail!("lost the relay's memory figures");
    };
    let per_1000 = (after - before) / n as f64 * 1000.0;
    println!(
        "idle subscribers: {n} | relay RSS {:.1} MiB -> {:.1} MiB | {:.2} MiB per 1,000 idle subscribers",
        before / 1048576.0,
        after / 1048576.0,
        per_1000 / 1048576.0
    );
    for mut c in conns {
        let _ = c.close(None).await;
    }
    Ok(())
}

/// The benchmark's own event type (`bench.tick`), as delivered: unknown to
/// the catalogue, passed through by the relay like any other.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tick {
    #[serde(default)]
    call_id: String,
    bench_sent_us: Option<u64>,
}
