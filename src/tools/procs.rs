//! The services as child processes of this one, for `demo`, `bench-e2e`
//! and the integration tests: each runs the real binary under its service
//! name with its own environment, reports READY=1 (and its address) on a
//! notify socket of ours, as under systemd, and is stopped when dropped.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How to start one service.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: &'static str,
    /// The binary, or a link to it named for the service (argv[0]).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// On top of ours, or on an empty environment with `clear_env`.
    pub env: Vec<(String, String)>,
    pub clear_env: bool,
    /// Its log (`NAME.log`, appended across restarts) and notify socket.
    pub dir: PathBuf,
    /// How long it may take to report READY=1.
    pub ready_within: Duration,
    /// SIGTERM grace when dropped; zero kills at once.
    pub stop_grace: Duration,
}

impl Spec {
    /// Where its output goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// This binary under `name` (`call-coach NAME`), our environment plus
    /// `env`, logs in `dir`.
    pub fn service(
        name: &'static str,
        env: &[(&str, String)],
        dir: &Path,
        ready_within: Duration,
    ) -> anyhow::Result<Spec> {
        Ok(Spec {
            name,
            program: std::env::current_exe().context("finding the call-coach binary")?,
            args: vec![name.to_owned()],
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            clear_env: false,
            dir: dir.to_owned(),
            ready_within,
            stop_grace: Duration::from_secs(10),
        })
    }
}

/// One running service, supervised: started, waited on until READY=1,
/// signalled, restarted, stopped when dropped.
pub struct Service {
    child: Child,
    notify: UnixDatagram,
    spec: Spec,
    /// The address from its READY status (`127.0.0.1:PORT`).
    pub addr: String,
}

impl Service {
    /// Starts `name` with `env` (on top of ours) and waits for READY=1.
    pub fn start(
        name: &'static str,
        env: &[(&str, String)],
        dir: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Service> {
        Self::spawn(Spec::service(name, env, dir, timeout)?)
    }

    /// Starts what `spec` says and waits for READY=1.
    pub fn spawn(spec: Spec) -> anyhow::Result<Service> {
        let (child, notify) = launch(&spec)?;
        let mut service = Service {
            child,
            notify,
            spec,
            addr: String::new(),
        };
        service.addr = service.wait_ready()?;
        Ok(service)
    }

    fn wait_ready(&mut self) -> anyhow::Result<String> {
        let timeout = self.spec.ready_within;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited before it was ready ({status}):\n{}",
                    self.spec.name,
                    self.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {} s:\n{}",
                    self.spec.name,
                    timeout.as_secs(),
                    self.log_tail(20)
                );
            }
            if let Some(msg) = self.recv_notify(Duration::from_millis(100))
                && let Some(addr) = ready_address(&msg)
            {
                return Ok(addr);
            }
        }
    }

    /// One sd_notify message from it, if one arrives in time.
    pub fn recv_notify(&self, timeout: Duration) -> Option<String> {
        self.notify.set_read_timeout(Some(timeout)).ok()?;
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.spec.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends `signal` (`libc::SIGTERM`, ...) unless it has exited.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Waits for it to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then the same service again (same environment and
    /// directory), waited on until READY=1.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, notify) = launch(&self.spec)?;
        self.child = child;
        self.notify = notify;
        self.addr = self.wait_ready()?;
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        if !grace.is_zero() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(grace).is_some() {
                return;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns the process with a fresh notify socket of ours.
fn launch(spec: &Spec) -> anyhow::Result<(Child, UnixDatagram)> {
    let socket_path = spec.dir.join(format!("{}.notify", spec.name));
    let _ = std::fs::remove_file(&socket_path);
    let notify = UnixDatagram::bind(&socket_path)
        .with_context(|| format!("binding {}", socket_path.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log_path())?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    if spec.clear_env {
        cmd.env_clear();
    }
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spec.name))?;
    Ok((child, notify))
}

/// From an sd_notify message with READY=1, the service's address: every
/// service ends its READY status with its URL (`... http://127.0.0.1:7070`,
/// `... ws://127.0.0.1:8080/ws`). `None` for other messages.
pub fn ready_address(msg: &str) -> Option<String> {
    if !msg.lines().any(|l| l == "READY=1") {
        return None;
    }
    let url = msg
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .and_then(|s| s.rsplit(' ').next())
        .unwrap_or_default();
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("ws://");
    Some(addr.split('/').next().unwrap_or_default().to_owned())
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(self.spec.stop_grace);
    }
}

/// `count` distinct free TCP ports on loopback. All are held open until
/// every one is chosen, so the kernel cannot hand out one twice (ports
/// chosen one at a time can repeat: CI once got a NATS cluster whose two
/// nodes' routes were the same port).
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// A free TCP port on loopback, or `wanted` when it is free.
pub fn port_or_free(wanted: u16) -> u16 {
    if wanted != 0 && std::net::TcpListener::bind(("127.0.0.1", wanted)).is_ok() {
        return wanted;
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// relay, stt, rtp2ws and orchestrator, wired together on loopback.
pub struct Pipeline {
    pub relay: Service,
    pub stt: Service,
    pub rtp2ws: Service,
    pub orchestrator: Service,
}

impl Pipeline {
    /// Starts the four services in `dir` (the relay's store, logs, notify
    /// sockets) with the Whisper `model` from `model_dir`; the relay on
    /// `relay_port` (0: any).
    pub async fn start(
        dir: &Path,
        model_dir: &Path,
        model: &str,
        relay_port: u16,
        stt_env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Pipeline> {
        let boot = Duration::from_secs(60);
        let start = |name: &'static str, env: Vec<(&'static str, String)>| {
            let dir = dir.to_owned();
            async move {
                tokio::task::spawn_blocking(move || {
                    let env: Vec<(&str, String)> = env;
                    Service::start(name, &env, &dir, boot)
                })
                .await?
            }
        };
        let relay = start(
            "relay",
            vec![
                ("RELAY_LISTEN", format!("127.0.0.1:{relay_port}")),
                ("STATE_DIR", dir.join("state").display().to_string()),
            ],
        )
        .await?;
        let event_url = format!("http://{}/event", relay.addr);
        let mut env = vec![
            ("STT_LISTEN", "127.0.0.1:0".to_owned()),
            ("MODEL_DIR", model_dir.display().to_string()),
            ("MODEL_SIZE", model.to_owned()),
            ("RELAY_URL", event_url.clone()),
        ];
        env.extend(stt_env);
        let stt = start("stt", env).await?;
        let rtp2ws = start(
            "rtp2ws",
            vec![
                ("RTP2WS_CONTROL", "127.0.0.1:0".to_owned()),
                ("STT_URL", format!("ws://{}/ws", stt.addr)),
                // rtp2ws skips ports in use.
                ("BASE_PORT", "24000".to_owned()),
            ],
        )
        .await?;
        let orchestrator = start(
            "orchestrator",
            vec![
                ("RELAY_WS", format!("ws://{}/ws", relay.addr)),
                ("RELAY_EVENT", event_url),
                (
                    "CALL_COACH_ORCHESTRATOR__METRICS_EVERY_SECS",
                    "2".to_owned(),
                ),
            ],
        )
        .await?;
        Ok(Pipeline {
            relay,
            stt,
            rtp2ws,
            orchestrator,
        })
    }

    pub fn services(&self) -> [&Service; 4] {
        [&self.relay, &self.stt, &self.rtp2ws, &self.orchestrator]
    }
}

impl Drop for Pipeline {
    /// Stops downstream first, so each service can flush to the next.
    fn drop(&mut self) {
        let grace = Duration::from_secs(10);
        self.orchestrator.stop(grace);
        self.rtp2ws.stop(grace);
        self.stt.stop(grace);
        self.relay.stop(grace);
    }
}

#[cfg(test)]
mod tests {
    use super::{free_ports, ready_address};

    #[test]
    fn free_ports_are_distinct_and_free() {
        let ports = free_ports(64).unwrap();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 64);
        for p in ports {
            assert!(p > 0);
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn addresses_from_ready_statuses() {
        let ready = |status: &str| ready_address(&format!("READY=1\nSTATUS={status}"));
        assert_eq!(
            ready("relay listening on http://127.0.0.1:7070").as_deref(),
            Some("127.0.0.1:7070")
        );
        assert_eq!(
            ready("stt ready on ws://127.0.0.1:8080/ws").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(ready_address("WATCHDOG=1"), None);
    }
}
