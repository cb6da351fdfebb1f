//! Graceful shutdown: SIGTERM or SIGINT cancel one token that every task of
//! a service watches. A second signal, or the configured bound, ends the
//! process at once.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels the returned token on the first SIGTERM/SIGINT; exits the process
/// with status 1 on a second one, or when `bound` has passed since the first.
pub fn on_signals(bound: Duration) -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        crate::systemd::stopping();
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => tracing::warn!("second signal: exiting now"),
            _ = int.recv() => tracing::warn!("second signal: exiting now"),
            _ = tokio::time::sleep(bound) => {
                tracing::error!(bound_secs = bound.as_secs(), "shutdown took too long: exiting now");
            }
        }
        std::process::exit(1);
    });
    Ok(token)
}
