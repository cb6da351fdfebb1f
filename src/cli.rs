//! Command line: multicall dispatch on the argv[0] file stem (`relay`,
//! `stt`, ...), else on the first argument (`call-coach relay`), and the
//! tool subcommands. Exit codes: 0 success, 1 failure at run time, 64 bad
//! usage or configuration, 69 a part that is not built yet.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Bad usage or configuration (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// A part of call-coach that this build does not have yet (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

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

/// Arguments of a part that is not built yet: taken so the message is
/// about the part, not about its flags.
#[derive(Args, Debug)]
struct Pending {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<OsString>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay: event hub with durable store (127.0.0.1:7070).
    Relay(Common),
    /// Run stt: Whisper speech-to-text over websocket [not built yet].
    Stt(Pending),
    /// Run rtp2ws: RTP to stt streams [not built yet].
    Rtp2ws(Pending),
    /// Run the orchestrator: rules, metrics and LLM coaching [not built yet].
    Orchestrator(Pending),
    /// Run ari-coach: the Asterisk ARI application [not built yet].
    #[command(name = "ari-coach")]
    AriCoach(Pending),
    /// Print the effective configuration with the source of each value
    /// (secrets redacted); exits 64 when it is invalid.
    #[command(name = "check-config")]
    CheckConfig {
        #[command(flatten)]
        common: Common,
        /// Show only the common keys and this service's section.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(["stt", "rtp2ws", "relay", "orchestrator", "ari-coach"]))]
        service: Option<String>,
    },
    /// Load generator for a running relay: prints accepted and delivered
    /// events/s and publish-to-delivery latency.
    #[command(name = "bench-relay")]
    BenchRelay(crate::bench::relay::Options),
    /// Whisper models: fetch, import, list [not built yet].
    Model(Pending),
    /// A sample call through the whole pipeline [not built yet].
    Demo(Pending),
    /// Play audio files as RTP the way Asterisk sends it [not built yet].
    #[command(name = "simulate-call")]
    SimulateCall(Pending),
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
        // `relay --config X` is `call-coach relay --config X`.
        args.insert(1, OsString::from(&stem));
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
        Command::Relay(common) => run_service("relay", &common, |settings, shutdown| async move {
            crate::relay::serve(&settings, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::CheckConfig { common, service } => check_config(&common, service.as_deref()),
        Command::BenchRelay(opts) => {
            crate::telemetry::init();
            crate::raise_fd_limit();
            match runtime().and_then(|rt| rt.block_on(crate::bench::relay::run(opts))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("call-coach bench-relay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Stt(_) => not_built("the stt service"),
        Command::Rtp2ws(_) => not_built("the rtp2ws service"),
        Command::Orchestrator(_) => not_built("the orchestrator service"),
        Command::AriCoach(_) => not_built("the ari-coach service"),
        Command::Model(_) => not_built("`call-coach model`"),
        Command::Demo(_) => not_built("`call-coach demo`"),
        Command::SimulateCall(_) => not_built("`call-coach simulate-call`"),
    }
}

fn not_built(what: &str) -> ExitCode {
    eprintln!(
        "call-coach: {what} is not part of this build yet; this release runs the relay \
         (see README.md, \"Status\")."
    );
    ExitCode::from(EXIT_UNAVAILABLE)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn load_config(common: &Common) -> Result<crate::config::Loaded, ExitCode> {
    crate::config::load(common.config.as_deref()).map_err(|e| {
        eprintln!("call-coach: configuration error: {e}");
        ExitCode::from(EXIT_USAGE)
    })
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
    print!("{}", loaded.render(service));
    ExitCode::SUCCESS
}

/// Loads the configuration, sets up logging and signals, and runs one
/// service until it stops. Configuration errors exit 64 before anything is
/// bound.
fn run_service<F, Fut>(name: &str, common: &Common, service: F) -> ExitCode
where
    F: FnOnce(crate::config::Settings, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let loaded = match load_config(common) {
        Ok(l) => l,
        Err(code) => return code,
    };
    crate::telemetry::init();
    crate::raise_fd_limit();
    let settings = loaded.settings;
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let shutdown = crate::shutdown::on_signals(settings.shutdown_timeout())?;
            service(settings, shutdown).await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "{name} failed");
            eprintln!("call-coach {name}: {e:#}");
            let config_like = e
                .downcast_ref::<crate::relay::RelayError>()
                .is_some_and(|e| {
                    matches!(
                        e,
                        crate::relay::RelayError::OpenToNetwork(_)
                            | crate::relay::RelayError::Tokens(_)
                    )
                });
            ExitCode::from(if config_like { EXIT_USAGE } else { 1 })
        }
    }
}
