//! `call-coach demo`: the whole pipeline on a sample call, no Asterisk
//! needed. Installs the Whisper model if it is missing, starts relay, stt,
//! rtp2ws and orchestrator as child processes (their real code, as in
//! production), plays the call into rtp2ws the way Asterisk's ExternalMedia
//! does (`simulate-call`), standing in for ari-coach's `call.started` and
//! `call.ended`, and prints the conversation, the tips, the checklist and
//! the metrics as they arrive, then the summary. The web UI shows the same
//! call live.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::event::{CallEnded, CallStarted, Event, Source, Speaker};
use crate::relay_client::{Scope, Subscription, post_once};
use crate::tools::procs::{Pipeline, port_or_free};
use anyhow::{Context, bail};

/// The sample call (demo/call.wav.gz, made by scripts/make-demo-call.sh).
pub const SAMPLE_CALL: &[u8] = include_bytes!("../../demo/call.wav.gz");
const AGENT: &str = "PJSIP/200";

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Keep the services running after the call, for the web UI (Ctrl-C stops).
    #[arg(long)]
    pub stay: bool,
    /// Play the call ten times faster (no partial transcripts, and the
    /// dead air becomes too short for its tip). Where stt cannot keep up
    /// (a busy or small machine), finals wait, and a final that waits is
    /// decoded without the previous one as context: some text comes out
    /// worse than at real time.
    #[arg(long)]
    pub fast: bool,
    /// The agent's side of your own call (WAV, any rate from 4 to 192 kHz;
    /// a stereo file's first channel).
    #[arg(long, requires = "customer")]
    pub agent: Option<PathBuf>,
    /// The customer's side of your own call.
    #[arg(long, requires = "agent")]
    pub customer: Option<PathBuf>,
    /// Whisper model size (installed first when missing).
    #[arg(long, default_value = "base")]
    pub model: String,
    /// The call's language (the sample call is Spanish). The shell's
    /// locale (`LANG`) is never used for it.
    #[arg(long, default_value = "es")]
    pub language: String,
    /// Relay port for the web UI (another free one when taken).
    #[arg(long, default_value_t = 7070)]
    pub port: u16,
}

fn has_model(dir: &std::path::Path, size: &str) -> bool {
    dir.join(format!("ggml-{size}-q8_0.bin")).is_file()
        || dir.join(format!("ggml-{size}.bin")).is_file()
}

pub async fn run(opts: Options, settings: crate::config::Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    // 1. The model, once.
    let model_dir = settings.model_dir();
    if !crate::stt::whisper_knows(&opts.language) {
        bail!(
            "--language {:?}: not a language Whisper knows; use a code such as es, en or pt",
            opts.language
        );
    }
    if !has_model(&model_dir, &opts.model) {
        let fetchable = crate::stt::model::fetch::known_sizes();
        if !fetchable.contains(&opts.model.as_str()) {
            bail!(
                "--model {:?}: not a model size that can be installed ({}), nor one installed in {}",
                opts.model,
                fetchable.join(", "),
                model_dir.display()
            );
        }
        println!(
            "Installing the Whisper {} model into {} (once; set MODEL_DIR to choose)...",
            opts.model,
            model_dir.display()
        );
        let (size, dir) = (opts.model.clone(), model_dir.clone());
        tokio::task::spawn_blocking(move || {
            crate::stt::model::fetch::fetch(
                &size,
                &dir,
                crate::stt::model::Quant::Q8_0,
                &|line: &str| eprintln!("  {line}"),
            )
        })
        .await?
        .with_context(|| format!("installing the {} model", opts.model))?;
    }

    // 2. The services, as child processes.
    let work = tempfile::Builder::new()
        .prefix("call-coach-demo-")
        .tempdir()?;
    let dir = work.path().to_owned();
    let port = port_or_free(opts.port);
    // The call's language is pinned: children inherit the shell's LANG.
    let stt_env = vec![("CALL_COACH_STT__LANGUAGE", opts.language.clone())];
    let pipeline = Pipeline::start(&dir, &model_dir, &opts.model, port, stt_env).await?;
    let relay_addr = pipeline.relay.addr.clone();
    let event_url = format!("http://{relay_addr}/event");
    let llm = std::env::var_os("OPENROUTER_API_KEY").is_some()
        || std::env::var_os("LLM_BASE_URL").is_some();
    let call_id = format!("demo-{}", crate::event::now_unix_ms());
    println!(
        "call-coach demo: relay, stt (Whisper {}), rtp2ws and orchestrator running ({} coach) in {:.1} s",
        opts.model,
        if llm { "rules and LLM" } else { "rules" },
        started.elapsed().as_secs_f64()
    );
    println!("  Web UI, this call:   http://{relay_addr}/?call={call_id}");
    println!("  Web UI, the agent:   http://{relay_addr}/?agent={AGENT}");
    println!("  Web UI, supervisor:  http://{relay_addr}/?view=supervisor");
    println!();

    // 3. Follow the call on the relay.
    let mut relay = Subscription::new(
        &format!("ws://{relay_addr}/ws"),
        Scope::Call(call_id.clone()),
        None,
    )?;
    relay
        .connect()
        .await
        .map_err(anyhow::Error::msg)
        .context("subscribing to the relay")?;
    post_once(
        &event_url,
        &Event::CallStarted(CallStarted {
            call_id: call_id.clone(),
            agent: AGENT.into(),
            caller: "Carlos <600123456>".into(),
            direction: "inbound".into(),
            mode: None,
            channels: None,
        }),
    )
    .await?;

    // 4. Play the call.
    let sample = dir.join("call.wav.gz");
    let (stereo, agent, customer) = match (&opts.agent, &opts.customer) {
        (Some(a), Some(c)) => (None, Some(a.clone()), Some(c.clone())),
        _ => {
            std::fs::write(&sample, SAMPLE_CALL)?;
            (Some(sample.clone()), None, None)
        }
    };
    let play = tokio::spawn(crate::tools::simulate::run(
        crate::tools::simulate::Options {
            agent,
            customer,
            stereo,
            realtime: !opts.fast,
            ..crate::tools::simulate::Options::driven(
                format!("http://{}", pipeline.rtp2ws.addr),
                call_id.clone(),
            )
        },
    ));
    let mut printer = Printer {
        // The audio's timeline starts as the call starts playing (at real
        // time only: --fast plays ten times faster).
        audio_t0: (!opts.fast).then(Instant::now),
        ..Printer::default()
    };
    let mut play = Some(play);
    let mut ended_at: Option<Instant> = None;
    // With an LLM, its fuller summary follows the rules one: waited for
    // up to 30 s after the first.
    let mut rules_summary_at: Option<Instant> = None;
    let mut last_transcript = Instant::now();
    loop {
        if rules_summary_at.is_some_and(|at| at.elapsed() > Duration::from_secs(30)) {
            break;
        }
        // After the audio: let the last words arrive, then end the call.
        if let Some(p) = &play
            && p.is_finished()
        {
            play.take()
                .expect("checked")
                .await?
                .context("playing the call")?;
            last_transcript = Instant::now();
        }
        if play.is_none()
            && ended_at.is_none()
            && last_transcript.elapsed() > Duration::from_millis(1500)
        {
            post_once(
                &event_url,
                &Event::CallEnded(CallEnded::new(call_id.clone(), "demo-finished")),
            )
            .await?;
            ended_at = Some(Instant::now());
        }
        if let Some(at) = ended_at
            && rules_summary_at.is_none()
            && at.elapsed() > Duration::from_secs(30)
        {
            bail!(
                "no summary 30 s after the call ended; orchestrator log:\n{}",
                pipeline.orchestrator.log_tail(20)
            );
        }
        printer.flush(false);
        let Ok(received) = tokio::time::timeout(Duration::from_millis(250), relay.next()).await
        else {
            continue;
        };
        let Some(event) = received.event else {
            continue;
        };
        if let Event::Transcript(_) = event {
            last_transcript = Instant::now();
        }
        printer.show(&event);
        if let Event::Summary(summary) = &event
            && ended_at.is_some()
        {
            if !llm || summary.source == Source::Llm {
                break;
            }
            rules_summary_at.get_or_insert_with(Instant::now);
        }
    }
    printer.flush(true);
    println!();
    printer.report_lag();
    println!(
        "Demo finished: {} transcripts ({} partial, {} revised), {} tips, {} of {} checklist items, in {:.0} s.",
        printer.finals,
        printer.partials,
        printer.revised,
        printer.tips.len(),
        printer.done.len(),
        printer.items,
        started.elapsed().as_secs_f64()
    );
    if opts.stay {
        println!("Still serving: http://{relay_addr}/?call={call_id}  (Ctrl-C to stop)");
        tokio::signal::ctrl_c().await?;
    }
    drop(pipeline);
    Ok(())
}

/// Prints the events of the call as a readable transcript. A tip set off
/// by words still being spoken (a partial) waits for that line's final,
/// and is printed under it: a tip is read with the words that caused it.
#[derive(Default)]
struct Printer {
    finals: usize,
    partials: usize,
    /// Finals revised (`revised`): printed again, not counted in `finals`.
    revised: usize,
    tips: HashSet<String>,
    done: HashSet<String>,
    items: usize,
    last_metrics_ms: u64,
    /// Utterances whose final line is printed.
    printed: HashSet<String>,
    /// Tips waiting for their utterance's final, with when they came.
    held: Vec<(Instant, crate::event::Tip)>,
    /// When the call's audio started playing (real time only).
    audio_t0: Option<Instant>,
    /// How late each final came after its words ended, seconds.
    lags: Vec<f64>,
    /// Utterances stt gave up on (finals with `gap`).
    gaps: usize,
}

/// Finals later than this after their words mean the machine did not keep up.
const LATE_SECS: f64 = 5.0;

/// How long a tip waits for its words' final line before it is printed
/// anyway (stt behind, or the final filtered out).
const TIP_HOLD: Duration = Duration::from_secs(10);

fn print_tip(tip: &crate::event::Tip) {
    let source = match tip.source {
        Source::Llm => "LLM".to_owned(),
        Source::Rules => format!("rule {}", tip.rule.as_deref().unwrap_or_default()),
    };
    println!(
        "        >> TIP [{}] ({source}): {}",
        tip.severity.as_str(),
        tip.text
    );
}

impl Printer {
    /// How far transcription lagged behind the words, and a plain warning
    /// when this machine could not keep up.
    fn report_lag(&self) {
        if self.gaps > 0 {
            println!(
                "  This machine did not keep up: stt gave up on {} utterance(s), which have no words.",
                self.gaps
            );
        }
        if self.lags.is_empty() {
            return;
        }
        let mut lags = self.lags.clone();
        lags.sort_by(f64::total_cmp);
        let (median, worst) = (lags[lags.len() / 2], lags[lags.len() - 1]);
        println!("stt lag (end of words to transcript): median {median:.1} s, worst {worst:.1} s");
        if worst > LATE_SECS {
            println!(
                "  This machine did not keep up: transcripts, and the tips they set off, came up to \
                 {worst:.0} s late (another busy process? try a smaller model, or see stt.workers)."
            );
        }
    }

    /// Prints the tips that waited too long for their words (all of them
    /// with `all`, at the end).
    fn flush(&mut self, all: bool) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(at, _)| all || at.elapsed() >= TIP_HOLD);
        self.held = keep;
        for (_, tip) in due {
            print_tip(&tip);
        }
    }
}

fn clock(ms: u64) -> String {
    format!("{:02}:{:02}", ms / 60_000, ms / 1000 % 60)
}

impl Printer {
    fn show(&mut self, event: &Event) {
        match event {
            Event::CallStarted(e) => {
                println!("Call {} from {} to agent {}", e.call_id, e.caller, e.agent)
            }
            // An utterance that turned out not to be speech.
            Event::Transcript(t) if t.is_final && t.text.is_empty() && t.gap.is_none() => {}
            // The careful decode of an utterance already shown.
            Event::Transcript(t) if t.revised == Some(true) => {
                self.revised += 1;
                let who = if t.speaker == Speaker::Agent {
                    "agent   "
                } else {
                    "customer"
                };
                println!("[{}] {who}  (revised) {}", clock(t.start_ms), t.text);
            }
            Event::Transcript(t) if t.is_final => {
                self.finals += 1;
                self.gaps += usize::from(t.gap.is_some());
                let who = if t.speaker == Speaker::Agent {
                    "agent   "
                } else {
                    "customer"
                };
                let text = match &t.gap {
                    Some(_) => "(not transcribed: stt was too far behind)",
                    None => &t.text,
                };
                println!("[{}] {who}  {text}", clock(t.start_ms));
                if let Some(t0) = self.audio_t0 {
                    self.lags
                        .push(t0.elapsed().as_secs_f64() - t.end_ms as f64 / 1000.0);
                }
                self.printed.insert(t.utterance_id.clone());
                let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|(_, tip)| tip.utterance_id.as_deref() == Some(&t.utterance_id));
                self.held = rest;
                for (_, tip) in mine {
                    print_tip(&tip);
                }
            }
            Event::Transcript(_) => self.partials += 1,
            Event::Tip(tip) if tip.is_final && self.tips.insert(tip.tip_id.clone()) => {
                match &tip.utterance_id {
                    Some(u) if !self.printed.contains(u) => {
                        self.held.push((Instant::now(), tip.clone()))
                    }
                    _ => print_tip(tip),
                }
            }
            Event::Checklist(c) => {
                self.items = c.items.len();
                for i in &c.items {
                    if i.done && self.done.insert(i.id.clone()) {
                        println!("        [x] checklist: {}", i.label);
                    }
                }
            }
            Event::Metrics(m) => {
                let at = m.call_ms;
                if at >= self.last_metrics_ms + 15_000 {
                    self.last_metrics_ms = at;
                    let f = &m.figures;
                    println!(
                        "        -- {}: agent talks {:.0}%, silence {:.0} s, agent {:.0} wpm, customer {:.0} wpm",
                        clock(at),
                        f.agent_talk_ratio * 100.0,
                        f.silence_ms as f64 / 1000.0,
                        f.agent_wpm,
                        f.customer_wpm
                    );
                }
            }
            Event::CallEnded(e) => {
                self.flush(true);
                println!("Call ended ({})", e.reason)
            }
            Event::Summary(summary) => {
                // The whole checklist, also where no item was ticked (then
                // no checklist event came during the call).
                if !summary.checklist.is_empty() {
                    self.items = summary.checklist.len();
                }
                println!();
                println!(
                    "Summary ({}): {}",
                    match summary.source {
                        Source::Llm => "LLM",
                        Source::Rules => "rules",
                    },
                    summary.text
                );
            }
            _ => {}
        }
    }
}
