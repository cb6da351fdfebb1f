//! `call-coach bench-e2e`: N simulated calls at once through the real
//! services, each a separate process as in production (relay, stt,
//! rtp2ws, orchestrator), the audio sent as Asterisk's ExternalMedia sends
//! it, at real time. Prints, per call and overall: end of speech to the
//! final transcript seen by a relay subscriber (p50/p95), end of speech to
//! the rule tip it set off, partials per final, and each service's CPU and
//! peak memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::quantile;
use crate::event::{CallEnded, CallStarted, Event, Source, Tip};
use crate::relay_client::{Scope, Subscription, post_once};
use crate::tools::procs::Pipeline;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Concurrent calls; several values run one after another.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub calls: Vec<usize>,
    /// The call to play: a stereo WAV, agent left, customer right (default:
    /// the demo's sample call).
    #[arg(long)]
    pub stereo: Option<PathBuf>,
    /// Whisper model size.
    #[arg(long, default_value = "base")]
    pub model: String,
    /// Calls start spread over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub spread: f64,
    /// stt workers (`stt.workers`); unset: stt's default.
    #[arg(long)]
    pub workers: Option<usize>,
}

#[derive(Default)]
struct CallObs {
    /// When the call's audio started.
    t0: Option<Instant>,
    /// utteranceId -> (end of speech, ms in the leg; when the final came).
    finals: HashMap<String, (u64, Instant)>,
    /// stt's own `lagMs` of each final (from the arrival of its last audio
    /// at stt): unlike the call's clock, it stays true for a leg stt
    /// admitted late.
    lags_ms: Vec<f64>,
    /// (utteranceId, when the tip came) of rule tips.
    tips: Vec<(String, Instant)>,
    partials: usize,
    summary: bool,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let settings = crate::config::load(None)?.settings;
    let model_dir = settings.model_dir();
    let work = tempfile::Builder::new()
        .prefix("call-coach-e2e-")
        .tempdir()?;
    // Decoded once (the sample is gzipped u-law): every call then reads a
    // plain 16-bit WAV, which is cheap next to starting the calls on time.
    let wav = match &opts.stereo {
        Some(p) => crate::audio::wav::Wav::read(p)?,
        None => crate::audio::wav::Wav::parse(
            &crate::audio::wav::gunzip(crate::tools::demo::SAMPLE_CALL)
                .map_err(anyhow::Error::msg)?,
        )
        .map_err(anyhow::Error::msg)?,
    };
    let length = wav.duration_secs();
    let stereo = work.path().join("call.wav");
    std::fs::write(&stereo, wav.to_bytes())?;
    let source = opts
        .stereo
        .as_ref()
        .map_or("the demo call".to_owned(), |p| p.display().to_string());
    println!(
        "bench-e2e: {length:.0} s call ({source}), Whisper {}, services as separate processes, real time",
        opts.model
    );
    for &n in &opts.calls {
        run_one(&opts, n, &stereo, &model_dir, work.path()).await?;
    }
    Ok(())
}

async fn run_one(
    opts: &Options,
    n: usize,
    stereo: &std::path::Path,
    model_dir: &std::path::Path,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    let dir = root.join(format!("run-{n}"));
    std::fs::create_dir_all(&dir)?;
    let stt_env = opts
        .workers
        .map(|w| vec![("CALL_COACH_STT__WORKERS", w.to_string())])
        .unwrap_or_default();
    let pipeline = Pipeline::start(&dir, model_dir, &opts.model, 0, stt_env).await?;
    let relay = pipeline.relay.addr.clone();
    let mut subscription = Subscription::new(&format!("ws://{relay}/ws"), Scope::All, None)?;
    subscription
        .connect()
        .await
        .map_err(anyhow::Error::msg)
        .context("subscribing to the relay")?;
    let ids: Vec<String> = (0..n).map(|i| format!("e2e-{n}-{i}")).collect();
    let obs: Arc<Mutex<HashMap<String, CallObs>>> = Arc::new(Mutex::new(
        ids.iter()
            .map(|id| (id.clone(), CallObs::default()))
            .collect(),
    ));
    let event_url = format!("http://{relay}/event");
    // Per-service CPU and peak memory, sampled twice a second.
    let pids: Vec<(&'static str, u32)> = pipeline
        .services()
        .iter()
        .map(|s| (s.name(), s.pid()))
        .collect();
    let before: Vec<f64> = pids
        .iter()
        .map(|(_, p)| crate::telemetry::process_stats(Some(*p)).map_or(0.0, |s| s.1))
        .collect();
    let peaks = Arc::new(Mutex::new(vec![0u64; pids.len()]));
    let sampler = {
        let (pids, peaks) = (pids.clone(), peaks.clone());
        tokio::spawn(async move {
            loop {
                for (i, (_, pid)) in pids.iter().enumerate() {
                    if let Some((rss, _)) = crate::telemetry::process_stats(Some(*pid)) {
                        let mut p = peaks.lock().unwrap_or_else(|e| e.into_inner());
                        p[i] = p[i].max(rss);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let started = Instant::now();
    // The calls, spread over `spread` seconds.
    let mut plays = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        post_once(
            &event_url,
            &Event::CallStarted(CallStarted {
                call_id: id.clone(),
                agent: format!("PJSIP/{}", 200 + i),
                caller: format!("{}", 600_000 + i),
                direction: "inbound".into(),
                mode: None,
                channels: None,
            }),
        )
        .await?;
        let delay = Duration::from_secs_f64(opts.spread * i as f64 / n.max(1) as f64);
        let obs = obs.clone();
        let (id2, call_id, control) = (
            id.clone(),
            id.clone(),
            format!("http://{}", pipeline.rtp2ws.addr),
        );
        let stereo = stereo.to_owned();
        plays.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let hook = Arc::new(move |t: Instant| {
                if let Some(o) = obs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id2) {
                    o.t0 = Some(t);
                }
            });
            crate::tools::simulate::run(crate::tools::simulate::Options {
                stereo: Some(stereo),
                on_start: crate::tools::simulate::StartHook(Some(hook)),
                ..crate::tools::simulate::Options::driven(control, call_id)
            })
            .await
        }));
    }
    // Set once every call's audio is out and its call.ended posted.
    let mut ended_at: Option<Instant> = None;
    loop {
        if ended_at.is_none() && plays.iter().all(|p| p.is_finished()) {
            for p in plays.drain(..) {
                p.await?.context("playing a call")?;
            }
            // The last finals reach the relay; then the calls end.
            tokio::time::sleep(Duration::from_secs(2)).await;
            for id in &ids {
                post_once(
                    &event_url,
                    &Event::CallEnded(CallEnded::new(id.clone(), "bench")),
                )
                .await?;
            }
            ended_at = Some(Instant::now());
        }
        if let Some(at) = ended_at {
            let all = obs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .all(|o| o.summary);
            if all || at.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        let frame = tokio::time::timeout(Duration::from_millis(200), subscription.next()).await;
        let Ok(received) = frame else { continue };
        let now = Instant::now();
        let Some(event) = received.event else {
            continue;
        };
        let mut all = obs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(o) = all.get_mut(event.call_id()) else {
            continue;
        };
        match event {
            // A revised final (a second one of its utterance) is not timed.
            Event::Transcript(t) if t.revised == Some(true) => {}
            Event::Transcript(t) if t.is_final => {
                let u = format!("{}:{}", t.speaker, t.utterance_id);
                o.finals.insert(u, (t.end_ms, now));
                o.lags_ms.extend(t.lag_ms.map(|l| l as f64));
            }
            Event::Transcript(_) => o.partials += 1,
            Event::Tip(Tip {
                source: Source::Rules,
                utterance_id: Some(u),
                rule,
                ..
            }) => {
                // Rule tips are set off by the customer's or agent's words.
                let speaker = if rule.as_deref() == Some("frase-prohibida") {
                    "agent"
                } else {
                    "customer"
                };
                o.tips.push((format!("{speaker}:{u}"), now));
            }
            Event::Summary(_) => o.summary = true,
            _ => {}
        }
    }
    sampler.abort();
    let wall = started.elapsed().as_secs_f64();
    let after: Vec<f64> = pids
        .iter()
        .map(|(_, p)| crate::telemetry::process_stats(Some(*p)).map_or(0.0, |s| s.1))
        .collect();

    // Admission: what stt refused, and what rtp2ws held back meanwhile.
    let stt = metric_values(&pipeline.stt.addr).await;
    let rtp2ws = metric_values(&pipeline.rtp2ws.addr).await;
    // Figures.
    let all = obs.lock().unwrap_or_else(|e| e.into_inner());
    let (mut finals_ms, mut tips_ms) = (Vec::new(), Vec::new());
    let (mut partials, mut finals) = (0usize, 0usize);
    println!();
    println!("== {n} concurrent call{}", if n == 1 { "" } else { "s" });
    println!("call            finals  p50 ms  p95 ms   tips  tip p50 ms  partials/final  summary");
    for id in &ids {
        let o = &all[id];
        let Some(t0) = o.t0 else {
            println!("{id:<15} (no audio sent)");
            continue;
        };
        let eos = |end_ms: u64| t0 + Duration::from_millis(end_ms);
        let mut lat: Vec<f64> = o
            .finals
            .values()
            .map(|(end, at)| at.saturating_duration_since(eos(*end)).as_secs_f64() * 1000.0)
            .collect();
        let mut tip_lat: Vec<f64> = o
            .tips
            .iter()
            .filter_map(|(u, at)| {
                let (end, _) = o.finals.get(u)?;
                let e = eos(*end);
                // A tip from a partial may come before the speech ends.
                Some(if *at >= e {
                    at.duration_since(e).as_secs_f64() * 1000.0
                } else {
                    -(e.duration_since(*at).as_secs_f64() * 1000.0)
                })
            })
            .collect();
        finals_ms.extend(lat.iter().copied());
        tips_ms.extend(tip_lat.iter().copied());
        partials += o.partials;
        finals += o.finals.len();
        println!(
            "{id:<15} {:>6}  {:>6.0}  {:>6.0}  {:>5}  {:>10.0}  {:>14.1}  {}",
            o.finals.len(),
            quantile(&mut lat, 0.5),
            quantile(&mut lat, 0.95),
            o.tips.len(),
            quantile(&mut tip_lat, 0.5),
            o.partials as f64 / o.finals.len().max(1) as f64,
            if o.summary { "yes" } else { "NO" }
        );
    }
    let mut lags: Vec<f64> = all.values().flat_map(|o| o.lags_ms.clone()).collect();
    let max = finals_ms.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "all: {finals} finals, end of speech -> final on a subscriber: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms (includes the 500 ms end-of-speech wait)",
        quantile(&mut finals_ms.clone(), 0.5),
        quantile(&mut finals_ms, 0.95),
        max
    );
    println!(
        "     stt lagMs of the finals: p50 {:.0} ms, p95 {:.0} ms (from the last audio's arrival at stt: true also for legs admitted late, whose call-clock figures above include the wait)",
        quantile(&mut lags.clone(), 0.5),
        quantile(&mut lags, 0.95)
    );
    println!(
        "     {} rule tips, end of speech -> tip: p50 {:.0} ms, p95 {:.0} ms (negative: the tip came from a partial, before the speaker finished)",
        tips_ms.len(),
        quantile(&mut tips_ms.clone(), 0.5),
        quantile(&mut tips_ms, 0.95)
    );
    println!(
        "     partials per final {:.2}",
        partials as f64 / finals.max(1) as f64
    );
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    println!(
        "     stt capacity {} streams; streams refused {} (at capacity) + {} (behind); finals given up {}; rtp2ws retries after a refusal {}, audio dropped {:.0} s",
        get(&stt, "stt_capacity_streams"),
        get(&stt, "stt_streams_refused_total"),
        get(&stt, "stt_streams_refused_behind_total"),
        get(&stt, "stt_finals_given_up_total"),
        get(&rtp2ws, "rtp2ws_stt_refused_total"),
        get(&rtp2ws, "rtp2ws_dropped_audio_ms_total") / 1000.0,
    );
    let peaks = peaks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (i, (name, _)) in pids.iter().enumerate() {
        println!(
            "     {name:<13} CPU {:>5.1}% of one core, peak RSS {:>6.1} MiB",
            (after[i] - before[i]) / wall * 100.0,
            peaks[i] as f64 / (1 << 20) as f64
        );
    }
    drop(pipeline);
    Ok(())
}

/// A service's `/metrics` as name -> value (unlabelled lines only).
async fn metric_values(addr: &str) -> HashMap<String, f64> {
    let url = format!("http://{addr}/metrics");
    tokio::task::spawn_blocking(move || {
        let text = ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_owned(), v.trim().parse().ok()?))
                })
                .collect(),
        )
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}
