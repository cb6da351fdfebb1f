//! The services as child processes of this one, for `demo` and
//! `bench-e2e`: each runs the real binary under its service name with its
//! own environment, reports READY=1 (and its address) on a notify socket of
//! ours, as under systemd, and is stopped with SIGTERM when dropped.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One running service.
pub struct Service {
    pub name: &'static str,
    child: Child,
    /// Where its log goes.
    pub log: PathBuf,
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
        let exe = std::env::current_exe().context("finding the call-coach binary")?;
        let socket_path = dir.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&socket_path);
        let notify = UnixDatagram::bind(&socket_path)
            .with_context(|| format!("binding {}", socket_path.display()))?;
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(exe);
        cmd.arg(name)
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let mut service = Service {
            name,
            child,
            log,
            addr: String::new(),
        };
        service.addr = service.wait_ready(&notify, timeout)?;
        Ok(service)
    }

    fn wait_ready(&mut self, notify: &UnixDatagram, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        notify.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited before it was ready ({status}):\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {} s:\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log_tail(20)
                );
            }
            let Ok(n) = notify.recv(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(addr) = ready_address(&msg) {
                return Ok(addr);
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        self.stop(Duration::from_secs(10));
    }
}

/// Posts one event to the relay at `event_url` and waits for its 202
/// (for the callers that stand in for ari-coach: `demo`, `bench-e2e`).
pub async fn post_event(event_url: &str, event: serde_json::Value) -> anyhow::Result<()> {
    let url = event_url.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let resp = ureq::post(&url)
            .header("content-type", "application/json")
            .send(event.to_string().as_bytes())
            .context("posting to the relay")?;
        if resp.status() != 202 {
            bail!("the relay answered {}", resp.status());
        }
        Ok(())
    })
    .await?
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
    use super::ready_address;

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
