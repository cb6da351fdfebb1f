//! The one lifecycle every service follows, in order:
//!
//! 1. **configure**: load and check the settings; a problem exits 64
//!    before anything is bound (`crate::cli`, the only module that knows
//!    the whole configuration; each service is handed its own section).
//! 2. **bind**: take the listening address, naming the key that sets it
//!    when it cannot ([`listen`]).
//! 3. **ready**: tell systemd `READY=1` with the service's URL as the last
//!    word of its status, and ping the watchdog while healthy ([`ready`]).
//! 4. **serve** until SIGTERM/SIGINT cancel the shutdown token
//!    (`crate::shutdown`).
//! 5. **drain**: each service finishes its work in flight (its own code),
//!    bounded by `shutdown_timeout_secs`.
//! 6. **exit**: 0, or the exit code the service's error names
//!    ([`ExitStatus`]): 64 for what configuration can fix, 1 otherwise.

use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bad usage or configuration (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// What a service's error says about how the process exits.
pub trait ExitStatus: std::fmt::Display {
    /// 64 when the operator must change the configuration, 1 otherwise.
    fn exit_code(&self) -> u8 {
        1
    }
}

/// A listening address that could not be taken (in use, not ours).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}; change {key} ({var})")]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    pub key: &'static str,
    pub var: &'static str,
    pub reason: String,
}

/// Step 2: binds a service's TCP listener. `key` and `var` name the
/// setting to change when the address is taken.
pub async fn listen(
    addr: std::net::SocketAddr,
    key: &'static str,
    var: &'static str,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|e| BindError {
        addr,
        key,
        var,
        reason: io_reason(&e),
    })
}

/// An I/O error in words, without the `(os error N)` suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Step 3: `READY=1` with `status` (its last word the service's URL, which
/// the tools and tests read), then watchdog pings while `healthy()`.
pub fn ready(
    status: &str,
    shutdown: &CancellationToken,
    healthy: impl Fn() -> bool + Send + 'static,
) {
    crate::systemd::ready(status);
    crate::systemd::spawn_watchdog(shutdown.clone(), healthy);
}

/// The tokio runtime every service and tool runs on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// What the configuration step has to tell the service's log once logging
/// is up: facts (which call language, and why) and warnings (a variable
/// set but ignored).
#[derive(Debug, Default)]
pub struct Notes {
    pub facts: Vec<String>,
    pub warnings: Vec<String>,
}

/// Steps 4 and 6 around a service's `serve`, once its settings are loaded:
/// logging (first the configuration's `notes`), the file limit, the runtime
/// and the signals (a second signal, or `shutdown_timeout` after the first,
/// exits at once); then the service, and the exit code its error names.
pub fn run<F, Fut, E>(
    name: &str,
    shutdown_timeout: std::time::Duration,
    notes: Notes,
    service: F,
) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: ExitStatus,
{
    crate::telemetry::init();
    for fact in &notes.facts {
        tracing::info!("{fact}");
    }
    for warning in &notes.warnings {
        tracing::warn!("{warning}");
    }
    raise_fd_limit();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("call-coach {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let shutdown = match crate::shutdown::on_signals(shutdown_timeout) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("call-coach {name}: cannot handle signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        match service(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // One line on stderr; under systemd stderr is the journal too.
                if crate::telemetry::to_journal() {
                    tracing::error!(error = %e, "{name} failed");
                }
                eprintln!("call-coach {name}: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    });
    // A blocking call still in flight (an HTTP request on tokio's blocking
    // pool, say a leg's release waiting on a slow stt) must not hold the
    // exit: dropping the runtime would wait for it without bound.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Raises the soft open-file limit to the hard limit: every websocket
/// subscriber and every call leg is a file descriptor, and the default
/// soft limit (often 1024) is far below what a contact centre needs.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
