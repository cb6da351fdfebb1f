//! The systemd notify protocol (sd_notify(3)): `READY=1` once listeners are
//! bound, `STOPPING=1` on shutdown, `WATCHDOG=1` pings while healthy, and
//! `STATUS=` lines. Without `NOTIFY_SOCKET` every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends one notification. Errors are logged, never fatal: a service must
/// not die because its supervisor went away.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path.to_string_lossy(), state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

pub fn ready(status: &str) {
    notify(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
}

pub fn stopping() {
    notify("STOPPING=1\nSTATUS=stopping");
}

/// The watchdog period systemd asked for, if it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its period while `healthy()` holds, until
/// `shutdown` is cancelled. A service whose event loop is stuck stops
/// pinging, and systemd restarts it.
pub fn spawn_watchdog(
    shutdown: CancellationToken,
    healthy: impl Fn() -> bool + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let period = watchdog_interval()? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if healthy() {
                        notify("WATCHDOG=1");
                    } else {
                        tracing::error!("health check failed; not pinging the watchdog");
                    }
                }
            }
        }
    }))
}
