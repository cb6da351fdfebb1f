//! `call-coach bench-stt`: N concurrent calls (two streams each, agent and
//! customer) played into a running stt at real time from WAV clips, with
//! silence between clips for the chosen speech ratio. Prints end-of-speech
//! to final latency (p50/p95/max; and apart, the finals ended early after
//! a finished sentence), partial cadence, real-time factor, stt's
//! CPU and peak memory, and WER when reference texts are given; with stt's
//! admission control, the streams it refused (503), the finals it gave up
//! on (`gap`), and the capacity it reported after the run (`/capacity`).

use crate::event::{Event, Received};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::audio::wav::Wav;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// stt base URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Concurrent calls (two streams each).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub calls: Vec<usize>,
    /// WAV clips (8 or 16 kHz, 16-bit mono) played in turn.
    #[arg(long, required = true, num_args = 1..)]
    pub clips: Vec<PathBuf>,
    /// Share of each stream that is speech.
    #[arg(long, default_value_t = 0.4)]
    pub speech_ratio: f64,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Reference texts, `FILE<TAB>text` per line, for WER: FILE is a
    /// clip's path or its ending (`dictate/both_help.wav`), as for
    /// `call-coach wer`.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Busy neighbours: this many processes each spinning on one core for
    /// the whole run, as a backup job or another service would.
    #[arg(long, default_value_t = 0)]
    pub neighbour: usize,
    /// Play every clip exactly once, dealt in turn to the streams, and end
    /// the run when all are played (`--duration` is then ignored): a WER
    /// over the whole clip set at a given load.
    #[arg(long)]
    pub once: bool,
    /// Write each clip's final text here (`CLIP<TAB>text` per line, as
    /// `call-coach transcribe` prints), for `call-coach wer`.
    #[arg(long)]
    pub hypotheses: Option<PathBuf>,
}

/// Processes spinning on one core each while it lives.
struct Neighbours(Vec<std::process::Child>);

impl Neighbours {
    fn start(n: usize) -> anyhow::Result<Self> {
        let mut kids = Vec::with_capacity(n);
        for _ in 0..n {
            kids.push(
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(std::process::Stdio::null())
                    .spawn()
                    .context("starting a busy neighbour (sh)")?,
            );
        }
        Ok(Self(kids))
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        for kid in &mut self.0 {
            let _ = kid.kill();
            let _ = kid.wait();
        }
    }
}

#[derive(Clone)]
struct Clip {
    name: String,
    pcm: Vec<u8>,
    samples: usize,
    rate: u32,
}

/// One final of a clip: its utterance id, its text as first sent, and its
/// text now (revised or not).
type Heard = (String, String, String);

#[derive(Default)]
struct Observed {
    /// End-of-speech to final, ms.
    latency_ms: Vec<f64>,
    /// The same, of the finals ended early after a finished sentence
    /// (`endedBy: "sentence"`), also counted in `latency_ms`.
    sentence_latency_ms: Vec<f64>,
    /// Between consecutive partials of one utterance, ms.
    partial_gaps_ms: Vec<f64>,
    finals: usize,
    partials: usize,
    /// Finals stt gave up on (`gap`).
    gaps: usize,
    /// Streams refused at the handshake.
    refused: usize,
    /// Final texts of each clip playback ((stream, clip start ms) -> (clip
    /// name, per final: its utterance id, its first text and its text now,
    /// revised or not)), joined for WER.
    hypotheses: HashMap<(usize, u64), (String, Vec<Heard>)>,
    /// Each revised final's (`revised`) lag behind the end of speech, ms
    /// (not counted in `finals` or `latency_ms`).
    revision_lag_ms: Vec<f64>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let clips: Vec<Clip> = opts
        .clips
        .iter()
        .map(|p| {
            let wav = Wav::read(p)?;
            if wav.rate != 8_000 && wav.rate != 16_000 {
                bail!("{}: {} Hz; use 8 or 16 kHz", p.display(), wav.rate);
            }
            let mono = wav.channel(0);
            Ok(Clip {
                // As given: a reference names it by its path's ending
                // (`dictate/both_help.wav`), as `call-coach wer` reads.
                name: p.display().to_string(),
                pcm: mono.iter().flat_map(|s| s.to_le_bytes()).collect(),
                samples: mono.len(),
                rate: wav.rate,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if clips.is_empty() {
        bail!("no clips");
    }
    let rate = clips[0].rate;
    if clips.iter().any(|c| c.rate != rate) {
        bail!("all clips must have the same sample rate");
    }
    let clips = Arc::new(clips);
    // Read as `call-coach wer` reads them (comments and blank lines
    // skipped), and matched the same way.
    let references: HashMap<String, String> = match &opts.reference {
        Some(p) => crate::tools::wer::read_tsv(p)?.into_iter().collect(),
        None => HashMap::new(),
    };
    if !references.is_empty() {
        let unscored: Vec<&str> = clips
            .iter()
            .filter(|c| crate::tools::wer::find(&references, &c.name).is_none())
            .map(|c| c.name.as_str())
            .collect();
        if let Some(first) = unscored.first() {
            println!(
                "note: {} of {} clips have no reference text and are left out of WER (first: {first})",
                unscored.len(),
                clips.len()
            );
        }
    }
    let http = opts.url.replacen("ws://", "http://", 1);
    println!(
        "stt {} | clips {} at {} Hz | speech {:.0}% | {} s per run | {} busy neighbour(s)",
        opts.url,
        clips.len(),
        rate,
        opts.speech_ratio * 100.0,
        opts.duration,
        opts.neighbour
    );
    let _neighbours = Neighbours::start(opts.neighbour)?;
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>5} {:>9} {:>9} {:>9} {:>17} {:>12} {:>17} {:>12} {:>7} {:>9} {:>10} {:>17} {:>9} {:>7} {:>9}",
        "calls",
        "streams",
        "refused",
        "finals",
        "gaps",
        "p50 ms",
        "p95 ms",
        "max ms",
        "sentence p50/p95",
        "partial gap",
        "speech per partial",
        "sent/asked",
        "RTF",
        "stt CPU",
        "stt RSS",
        "revised p50/p95",
        "WER first",
        "WER",
        "capacity"
    );
    for &calls in &opts.calls {
        let before = scrape(&http).await;
        let observed = Arc::new(Mutex::new(Observed::default()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..calls {
            for (s, speaker) in ["agent", "customer"].iter().enumerate() {
                let url = format!(
                    "{}/ws?callId=bench-{}-{c}&speaker={speaker}&sampleRate={rate}&encoding=s16le",
                    opts.url.trim_end_matches('/'),
                    std::process::id()
                );
                let clips = clips.clone();
                let observed = observed.clone();
                let offset = c * 2 + s;
                let duration = Duration::from_secs_f64(opts.duration);
                let ratio = opts.speech_ratio;
                // With --once: this stream's share of the clips, each once.
                let clips = if opts.once {
                    Arc::new(
                        clips
                            .iter()
                            .skip(offset)
                            .step_by(calls * 2)
                            .cloned()
                            .collect::<Vec<_>>(),
                    )
                } else {
                    clips
                };
                let plan = if opts.once {
                    Plan::Once(offset)
                } else {
                    Plan::Loop(offset, duration)
                };
                tasks.push(tokio::spawn(async move {
                    play(url, clips, plan, ratio, rate, observed).await
                }));
            }
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (http, done) = (http.clone(), done.clone());
            tokio::spawn(async move {
                let mut peak = 0.0f64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(m) = scrape(&http).await {
                        peak = peak.max(m.rss);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                peak
            })
        };
        for t in tasks {
            if !t.await?? {
                observed
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .refused += 1;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut peak_rss = watcher.await.unwrap_or(0.0);
        let after = scrape(&http).await;
        if let Some(a) = &after {
            peak_rss = peak_rss.max(a.rss);
        }
        let capacity = reported_capacity(&http).await;
        let o = observed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut lat = o.latency_ms.clone();
        lat.sort_by(f64::total_cmp);
        let pick = |q: f64| quantile(&lat, q);
        let early = count_p50_p95(&o.sentence_latency_ms);
        let gap = if o.partial_gaps_ms.is_empty() {
            f64::NAN
        } else {
            o.partial_gaps_ms.iter().sum::<f64>() / o.partial_gaps_ms.len() as f64
        };
        let (rtf, cpu, speech, asked) = match (&before, &after) {
            (Some(b), Some(a)) => (
                (a.decode_secs - b.decode_secs) / (a.audio_secs - b.audio_secs).max(1e-9),
                (a.cpu - b.cpu) / secs,
                a.speech_secs - b.speech_secs,
                a.partials_asked - b.partials_asked,
            ),
            _ => (f64::NAN, f64::NAN, f64::NAN, f64::NAN),
        };
        // Seconds of speech per partial received. stt asks for one after
        // each `partial_every_ms` of an utterance's speech (none for its
        // last, shorter stretch, which its final covers): `sent/asked`
        // says how many of those came.
        let per_partial = if o.partials == 0 {
            f64::NAN
        } else {
            speech / o.partials as f64
        };
        let sent_asked = format!("{}/{asked:.0}", o.partials);
        // Only clips that finished playing count towards WER: of the
        // finals as they end (revised where they were), and as first sent.
        let joined = |first: bool| -> Vec<(String, String)> {
            o.hypotheses
                .values()
                .map(|(name, finals)| {
                    let texts: Vec<&str> = finals
                        .iter()
                        .map(|(_, f, n)| if first { f.as_str() } else { n.as_str() })
                        .collect();
                    (name.clone(), texts.join(" "))
                })
                .collect()
        };
        let hyps = joined(false);
        let wer = word_error_rate(&hyps, &references);
        let wer_first = word_error_rate(&joined(true), &references);
        let revised = count_p50_p95(&o.revision_lag_ms);
        if let Some(path) = &opts.hypotheses {
            let mut lines: Vec<String> = hyps.iter().map(|(n, t)| format!("{n}\t{t}\n")).collect();
            lines.sort();
            std::fs::write(path, lines.concat()).with_context(|| path.display().to_string())?;
        }
        let (refused, finals, gaps) = (o.refused, o.finals, o.gaps);
        println!(
            "{:>6} {:>8} {:>8} {:>8} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>17} {:>9.0} ms {:>15.2} s {:>12} {:>7.3} {:>8.0}% {:>6.0} MiB {:>17} {:>9} {:>7} {:>9}",
            calls,
            calls * 2,
            refused,
            finals,
            gaps,
            pick(0.5),
            pick(0.95),
            lat.last().copied().unwrap_or(f64::NAN),
            early,
            gap,
            per_partial,
            sent_asked,
            rtf,
            cpu * 100.0,
            peak_rss / 1048576.0,
            revised,
            wer_first.map_or("-".into(), |w| format!("{:.1}%", w * 100.0)),
            wer.map_or("-".into(), |w| format!("{:.1}%", w * 100.0)),
            capacity,
        );
    }
    Ok(())
}

/// `N: p50/p95` of some figures (ms), or `0: -`.
fn count_p50_p95(figures: &[f64]) -> String {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return "0: -".to_owned();
    }
    format!(
        "{}: {:.0}/{:.0}",
        sorted.len(),
        quantile(&sorted, 0.5),
        quantile(&sorted, 0.95)
    )
}

/// The `q` quantile of sorted figures (NaN when there are none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// What stt's `/capacity` says now: `streams source`, with the measured
/// figure when the capacity is fixed; or `-`.
async fn reported_capacity(http: &str) -> String {
    let url = format!("{}/capacity", http.trim_end_matches('/'));
    tokio::task::spawn_blocking(move || {
        let v = crate::http::get_json(&ureq::Agent::new_with_defaults(), &url)?;
        let (streams, source) = (v.get("capacity")?.as_u64()?, v.get("source")?.as_str()?);
        Some(match (source, v.get("measured").and_then(|m| m.as_u64())) {
            ("fixed", Some(m)) => format!("{streams} fixed, measured {m}"),
            _ => format!("{streams} {source}"),
        })
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| "-".into())
}

/// Which clips a stream plays.
#[derive(Clone, Copy)]
enum Plan {
    /// From this clip on, in turn, for this long.
    Loop(usize, Duration),
    /// Each clip once; the number tells this stream from the others (its
    /// clips' results are kept apart by it).
    Once(usize),
}

/// Streams clips with silence between them at real time, and records what
/// comes back. `false`: stt refused the stream at the handshake (503).
async fn play(
    url: String,
    clips: Arc<Vec<Clip>>,
    plan: Plan,
    ratio: f64,
    rate: u32,
    observed: Arc<Mutex<Observed>>,
) -> anyhow::Result<bool> {
    // `stream` keys this stream's results; `first` is the clip it starts at.
    let (stream, first, duration) = match plan {
        Plan::Loop(offset, duration) => (offset, offset, duration),
        Plan::Once(stream) => (stream, 0, Duration::MAX / 4),
    };
    if clips.is_empty() {
        return Ok(true);
    }
    let ws = match crate::net::ws_connect(&url, None).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 503 => {
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {url}")),
    };
    let (mut tx, mut rx) = ws.split();
    let start = Instant::now();
    // Which clip ends at which stream millisecond, for WER attribution.
    let schedule: Arc<Mutex<Vec<(u64, u64, String)>>> = Arc::default();
    let reader = {
        let observed = observed.clone();
        let schedule = schedule.clone();
        tokio::spawn(async move {
            let mut last_partial: HashMap<String, Instant> = HashMap::new();
            while let Some(Ok(msg)) = rx.next().await {
                let Message::Text(text) = msg else { continue };
                let Some(Event::Transcript(t)) = Received::parse(&text).and_then(|r| r.event)
                else {
                    continue;
                };
                let now = Instant::now();
                let id = t.utterance_id.clone();
                let mut o = match observed.lock() {
                    Ok(o) => o,
                    Err(_) => return,
                };
                if t.is_final && t.revised == Some(true) {
                    // A second final of an utterance already counted: its
                    // text replaces the first's.
                    let spoken_end = start + Duration::from_millis(t.end_ms);
                    let ms = now.saturating_duration_since(spoken_end).as_secs_f64() * 1000.0;
                    o.revision_lag_ms.push(ms);
                    for (_, finals) in o.hypotheses.values_mut() {
                        for f in finals.iter_mut().filter(|f| f.0 == id) {
                            f.2 = t.text.clone();
                        }
                    }
                } else if t.is_final {
                    o.finals += 1;
                    o.gaps += usize::from(t.gap.is_some());
                    let end_ms = t.end_ms;
                    let spoken_end = start + Duration::from_millis(end_ms);
                    let ms = now.saturating_duration_since(spoken_end).as_secs_f64() * 1000.0;
                    o.latency_ms.push(ms);
                    if t.ended_by.as_deref() == Some("sentence") {
                        o.sentence_latency_ms.push(ms);
                    }
                    last_partial.remove(&id);
                    let start_ms = t.start_ms;
                    if let Ok(sched) = schedule.lock()
                        && let Some((begin, _, name)) = sched
                            .iter()
                            .find(|(s, e, _)| start_ms + 400 >= *s && start_ms < *e)
                    {
                        o.hypotheses
                            .entry((stream, *begin))
                            .or_insert_with(|| (name.clone(), Vec::new()))
                            .1
                            .push((id, t.text.clone(), t.text.clone()));
                    }
                } else {
                    o.partials += 1;
                    if let Some(prev) = last_partial.insert(id, now) {
                        o.partial_gaps_ms.push((now - prev).as_secs_f64() * 1000.0);
                    }
                }
            }
        })
    };
    let frame = (rate as usize / 50) * 2; // 20 ms of s16le
    let mut sent_samples: u64 = 0;
    let mut i = first;
    'outer: while start.elapsed() < duration {
        if matches!(plan, Plan::Once(_)) && i == clips.len() {
            break;
        }
        let clip = &clips[i % clips.len()];
        i += 1;
        let gap = (clip.samples as f64 * (1.0 / ratio.clamp(0.05, 1.0) - 1.0)) as usize;
        let begin_ms = sent_samples * 1000 / u64::from(rate);
        let end_ms = (sent_samples + clip.samples as u64) * 1000 / u64::from(rate);
        if let Ok(mut s) = schedule.lock() {
            s.push((begin_ms, end_ms, clip.name.clone()));
        }
        let silence = vec![0u8; gap * 2];
        for chunk in clip.pcm.chunks(frame).chain(silence.chunks(frame)) {
            let due = start + Duration::from_micros(sent_samples * 1_000_000 / u64::from(rate));
            tokio::time::sleep_until(due.into()).await;
            tx.send(Message::binary(chunk.to_vec())).await?;
            sent_samples += (chunk.len() / 2) as u64;
            if start.elapsed() >= duration.saturating_add(Duration::from_secs(30)) {
                break 'outer;
            }
        }
    }
    tx.send(Message::text(r#"{"type":"end"}"#)).await?;
    let _ = tokio::time::timeout(Duration::from_secs(60), reader).await;
    Ok(true)
}

struct Scraped {
    rss: f64,
    cpu: f64,
    audio_secs: f64,
    decode_secs: f64,
    /// Speech stt heard in utterances, and the partials it asked for
    /// (NaN from an stt without these figures).
    speech_secs: f64,
    partials_asked: f64,
}

async fn scrape(http: &str) -> Option<Scraped> {
    let url = format!("{}/metrics", http.trim_end_matches('/'));
    let text = tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    })
    .await
    .ok()??;
    let find = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some(Scraped {
        rss: find("process_resident_memory_bytes")?,
        cpu: find("process_cpu_seconds_total")?,
        audio_secs: find("stt_audio_seconds_total")?,
        decode_secs: find("stt_decode_seconds_total")?,
        speech_secs: find("stt_speech_seconds_total").unwrap_or(f64::NAN),
        partials_asked: find("stt_partials_asked_total").unwrap_or(f64::NAN),
    })
}

/// Word error rate of the hypotheses against their clips' references,
/// scored as `call-coach wer` scores them; `None` without references.
pub fn word_error_rate(hyps: &[(String, String)], refs: &HashMap<String, String>) -> Option<f64> {
    let s = crate::tools::wer::score(refs, hyps, false);
    (s.words > 0).then(|| s.word_errors as f64 / s.words as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_are_scored_against_the_reference_their_path_ends_with() {
        let refs: HashMap<String, String> = [
            ("dictate/both_help.wav", "pulse uno"),
            ("vm-intro.wav", "deje su mensaje"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let hyp = |clip: &str, text: &str| (clip.to_owned(), text.to_owned());
        // One word wrong of five, both clips found by their path's ending.
        let wer = word_error_rate(
            &[
                hyp(
                    "/usr/share/asterisk/sounds/es/dictate/both_help.wav",
                    "pulse dos",
                ),
                hyp("/sounds/vm-intro.wav", "deje su mensaje"),
            ],
            &refs,
        );
        assert_eq!(wer, Some(0.2));
        // A clip of another folder with the same name is not that one.
        assert_eq!(
            word_error_rate(&[hyp("/sounds/both_help.wav", "pulse uno")], &refs),
            None
        );
    }
}
