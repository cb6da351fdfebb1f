//! `call-coach bench-history`: search latency over a large call history.
//!
//! Fills a SQLite relay store with `--calls` past calls (each with its
//! final transcripts, a rule tip, a checklist and a summary, spread over
//! 30 days and 200 agents), written through the relay's own store and
//! index in large groups; then starts a real relay on it and times
//! `GET /history` over HTTP for each kind of question, printing p50/p99.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::quantile;

use crate::event::Envelope;
use crate::relay::calls::Calls;
use crate::relay::hub::Hub;
use crate::relay::metrics::Metrics;
use crate::relay::store;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Past calls in the store.
    #[arg(long, default_value_t = 100_000)]
    pub calls: usize,
    /// Final transcripts per call.
    #[arg(long, default_value_t = 8)]
    pub finals: usize,
    /// Requests timed per kind of question.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Keep the filled store in this directory (and reuse it when it
    /// already holds one) instead of a temporary one.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// A small deterministic generator (xorshift), so every run fills the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SYLLABLES: [&str; 24] = [
    "ta", "re", "mo", "li", "sa", "no", "de", "ca", "pe", "ri", "lo", "ma", "te", "su", "ba", "ne",
    "co", "ra", "vi", "to", "ga", "me", "si", "fa",
];

/// Words every call draws from: common ones often, made-up ones (a long
/// tail, like names and products) rarely.
const COMMON: [&str; 24] = [
    "quiero",
    "la",
    "factura",
    "de",
    "este",
    "mes",
    "el",
    "cargo",
    "contrato",
    "tarifa",
    "línea",
    "móvil",
    "internet",
    "router",
    "cancelar",
    "descuento",
    "pago",
    "cliente",
    "gracias",
    "ayuda",
    "problema",
    "cambio",
    "oferta",
    "precio",
];

fn word(rng: &mut Rng) -> String {
    if rng.below(3) > 0 {
        return COMMON[rng.below(COMMON.len())].to_owned();
    }
    // Zipf-like: short made-up words are common, long ones rare.
    let n = 2 + rng.below(3);
    (0..n)
        .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
        .collect()
}

fn sentence(rng: &mut Rng, call: usize) -> String {
    let mut words: Vec<String> = (0..8 + rng.below(8)).map(|_| word(rng)).collect();
    // One call in a hundred asks about portability: a rare real word.
    if call.is_multiple_of(100) && rng.below(4) == 0 {
        words.push("portabilidad".into());
    }
    words.join(" ")
}

fn event(v: serde_json::Value) -> Envelope {
    Envelope::from_value(v).expect("a valid event")
}

const AGENTS: usize = 200;
const RULES: [&str; 4] = ["cancelacion", "precio", "queja", "competencia"];

/// Fills the store in `dir` with `opts.calls` calls, unless it has them.
async fn fill(dir: &std::path::Path, opts: &Options) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(16, metrics.clone()));
    let calls = Arc::new(Calls::default());
    let opened = store::open(dir, store::Sync::Normal, 0, hub, calls.clone(), metrics)?;
    let have = calls.len();
    if have >= opts.calls {
        eprintln!("the store already holds {have} calls");
    } else {
        let started = Instant::now();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ have as u64);
        let total = opts.calls - have;
        eprintln!("filling the store with {total} calls...");
        const WINDOW: usize = 2_000;
        let mut pending = futures_util::stream::FuturesUnordered::new();
        for c in have..opts.calls {
            let id = format!("hist-{c:07}");
            let agent = format!("PJSIP/{}", 100 + c % AGENTS);
            let mut events = vec![event(
                json!({"type":"call.started","callId":id,"agent":agent,"caller":"600000000"}),
            )];
            for f in 0..opts.finals {
                let speaker = if f % 2 == 0 { "customer" } else { "agent" };
                events.push(event(
                    json!({"type":"transcript","callId":id,"speaker":speaker,
                    "text":sentence(&mut rng, c),"utteranceId":format!("u{f}"),"final":true,
                    "startMs":f * 4000,"endMs":f * 4000 + 3000}),
                ));
            }
            let rule = RULES[rng.below(RULES.len())];
            let done = rng.below(3) > 0;
            events.push(event(
                json!({"type":"summary","callId":id,"text":"Resumen.","source":"rules",
                "reason":"customer-hangup","agent":agent,"durationMs":60_000 + rng.below(600_000),
                "metrics":crate::event::Figures {
                    agent_talk_ratio: 0.3 + rng.below(40) as f64 / 100.0,
                    silence_ms: rng.below(30_000) as u64,
                    overtalk_ms: rng.below(5_000) as u64,
                    ..Default::default()
                },
                "rulesFired":{rule:1},
                "checklist":[{"id":"identificacion","label":"Identificación","done":done}]}),
            ));
            events.push(event(
                json!({"type":"call.ended","callId":id,"reason":"customer-hangup"}),
            ));
            for e in events {
                let s = opened.store.clone();
                pending.push(async move { s.append(e, None).await });
            }
            while pending.len() >= WINDOW {
                use futures_util::StreamExt;
                if let Some(r) = pending.next().await {
                    r.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            let done_n = c + 1 - have;
            if done_n % (total / 10).max(1) == 0 {
                eprintln!(
                    "  {done_n} of {total} calls ({:.0}%), {:.0} s",
                    100.0 * done_n as f64 / total as f64,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        use futures_util::StreamExt;
        while let Some(r) = pending.next().await {
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        eprintln!(
            "filled {} calls in {:.0} s",
            opts.calls - have,
            started.elapsed().as_secs_f64()
        );
    }
    drop(opened.store);
    tokio::task::spawn_blocking(move || opened.writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the store's writer panicked"))?;
    // Spread the calls over the last 30 days, as a month of history is.
    let conn = rusqlite::Connection::open(store::db_path(dir))?;
    conn.execute(
        "UPDATE calls SET started_ms = last_ms - (abs(random()) % (30 * 86400000))
         WHERE started_ms IS NOT NULL AND started_ms > ?1",
        [crate::event::now_unix_ms() - 86_400_000],
    )?;
    Ok(())
}

/// A kind of question: its name, and the request path for one draw.
type Question = (&'static str, Box<dyn Fn(&mut Rng) -> String>);

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let temp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("bench-history-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    fill(&dir, &opts).await?;
    let db = store::db_path(&dir);
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "starting a relay on {} ({} MiB)...",
        db.display(),
        size >> 20
    );
    let relay = crate::tools::procs::Service::start(
        "relay",
        &[
            ("RELAY_LISTEN", "127.0.0.1:0".to_owned()),
            ("STATE_DIR", dir.display().to_string()),
            ("RUST_LOG", "warn".to_owned()),
            ("CALL_COACH_RELAY__RETENTION_DAYS", "0".to_owned()),
        ],
        &dir,
        Duration::from_secs(300),
    )?;
    let agent = crate::net::agent(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    );
    let base = format!("http://{}", relay.addr);
    let kinds: [Question; 7] = [
        ("latest 50, no filter", Box::new(|_| "/history".to_owned())),
        (
            "one agent",
            Box::new(|r| format!("/history?agent=PJSIP/{}", 100 + r.below(AGENTS))),
        ),
        (
            "one agent, one week",
            Box::new(|r| {
                let to = crate::event::now_unix_ms() - r.below(20) as i64 * 86_400_000;
                let day = |ms: i64| crate::event::rfc3339_millis(ms)[..10].to_owned();
                format!(
                    "/history?agent=PJSIP/{}&from={}&to={}",
                    100 + r.below(AGENTS),
                    day(to - 7 * 86_400_000),
                    day(to)
                )
            }),
        ),
        (
            "a common word",
            Box::new(|r| {
                format!(
                    "/history?q={}",
                    ["factura", "router", "precio", "descuento"][r.below(4)]
                )
            }),
        ),
        (
            "a rare word (1% of calls)",
            Box::new(|_| "/history?q=portabilidad".to_owned()),
        ),
        (
            "two words",
            Box::new(|r| {
                format!(
                    "/history?q=cancelar+{}",
                    ["contrato", "linea", "movil"][r.below(3)]
                )
            }),
        ),
        (
            "rule fired + item missed",
            Box::new(|r| {
                format!(
                    "/history?rule={}&missed=identificacion",
                    RULES[r.below(RULES.len())]
                )
            }),
        ),
    ];
    println!(
        "history of {} calls ({} finals each), {} MiB; {} requests per question, one at a time",
        opts.calls,
        opts.finals,
        size >> 20,
        opts.queries
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "question", "p50 ms", "p99 ms", "max ms", "matches"
    );
    let mut rng = Rng(42);
    for (name, url) in &kinds {
        let mut times = Vec::with_capacity(opts.queries);
        let mut matches = 0usize;
        for _ in 0..opts.queries {
            let path = url(&mut rng);
            let agent = agent.clone();
            let full = format!("{base}{path}");
            let t0 = Instant::now();
            let body = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
                let mut resp = agent.get(&full).call().with_context(|| full.clone())?;
                Ok(serde_json::from_str(&resp.body_mut().read_to_string()?)?)
            })
            .await??;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            matches = body["calls"].as_array().map_or(0, Vec::len);
        }
        let (p50, p99) = (quantile(&mut times, 0.5), quantile(&mut times, 0.99));
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            name,
            p50,
            p99,
            times.last().copied().unwrap_or(0.0),
            matches
        );
    }
    Ok(())
}
