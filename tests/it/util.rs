//! Shared helpers: start the real binary under a service name on loopback,
//! wait for its systemd READY=1, and talk to it with real HTTP and
//! websocket clients.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use call_coach::tools::procs;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_call-coach");

/// A symlink named `name` to the binary, so argv[0] dispatch is exercised.
pub fn service_link(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link).expect("symlink");
    }
    link
}

impl std::ops::Deref for Service {
    type Target = procs::Service;
    fn deref(&self) -> &procs::Service {
        &self.proc
    }
}

impl std::ops::DerefMut for Service {
    fn deref_mut(&mut self) -> &mut procs::Service {
        &mut self.proc
    }
}

/// A running relay started through a `relay` symlink.
pub type Relay = Service;

/// A running service started through a symlink with its name (argv[0]
/// dispatch), waited on until READY=1: the tools' supervisor
/// (`call_coach::tools::procs::Service`, whose `addr`, `log`, `signal`,
/// `recv_notify` and `wait_exit` it lends), in a temporary directory of its
/// own, with the HTTP and websocket helpers below.
pub struct Service {
    pub proc: procs::Service,
    pub token: Option<String>,
    /// Its log, notify socket and state; dropped after the process.
    _dir: tempfile::TempDir,
}

impl Service {
    pub fn start(env: &[(&str, &str)]) -> Service {
        Self::start_named("relay", env)
    }

    pub fn start_named(name: &'static str, env: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut all: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), d.display().to_string()),
            ("RUST_LOG".into(), "info".into()),
            ("RELAY_LISTEN".into(), "127.0.0.1:0".into()),
            ("STT_LISTEN".into(), "127.0.0.1:0".into()),
            // Tests run side by side on few cores: one thread per decode.
            ("CALL_COACH_STT__THREADS_PER_WORKER".into(), "1".into()),
            ("STATE_DIR".into(), d.join("state").display().to_string()),
        ];
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let spec = procs::Spec {
            name,
            program: service_link(d, name),
            args: Vec::new(),
            env: all,
            clear_env: true,
            dir: d.to_owned(),
            // stt loads a model first.
            ready_within: Duration::from_secs(60),
            stop_grace: Duration::ZERO,
        };
        let proc = procs::Service::spawn(spec).unwrap_or_else(|e| panic!("{e:#}"));
        Service {
            proc,
            token: None,
            _dir: dir,
        }
    }

    /// Its state directory (`STATE_DIR`).
    pub fn state_dir(&self) -> PathBuf {
        self._dir.path().join("state")
    }

    /// SIGKILLs the service and starts it again on the same state directory.
    pub fn kill_and_restart(mut self) -> Service {
        self.proc.restart().unwrap_or_else(|e| panic!("{e:#}"));
        self
    }

    /// One HTTP request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (u16, String) {
        let stream = TcpStream::connect(&self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(body.into())).expect("request"))
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Publishes one event; returns the status and the parsed answer.
    pub async fn post(&self, event: &Value) -> (u16, Value) {
        let (status, body) = self
            .request(
                "POST",
                "/event",
                &[("content-type", "application/json")],
                event.to_string(),
            )
            .await;
        let value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, value)
    }

    /// Publishes as the services' publisher does: with an `Idempotency-Key`,
    /// and a 503 (the store cannot take it now) tried again with the same
    /// key for up to 30 s; then expects 202.
    /// For tests of something else than the relay's answers.
    pub async fn publish_retrying(&self, event: Value) -> i64 {
        static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let key = format!(
            "it-{}-{}",
            std::process::id(),
            KEYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self
                .request(
                    "POST",
                    "/event",
                    &[
                        ("content-type", "application/json"),
                        ("idempotency-key", &key),
                    ],
                    event.to_string(),
                )
                .await;
            let body = serde_json::from_str::<Value>(&body).unwrap_or(Value::Null);
            if status == 503 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            assert_eq!(status, 202, "publish {event}: {body}");
            return body["seq"].as_i64().expect("seq");
        }
    }

    /// Publishes and expects 202; returns the seq.
    pub async fn publish(&self, event: Value) -> i64 {
        let (status, body) = self.post(&event).await;
        assert_eq!(status, 202, "publish {event}: {body}");
        body["seq"].as_i64().expect("seq")
    }

    /// Opens a websocket subscription. `query` is e.g. `callId=a&since=3`.
    pub async fn ws(&self, query: &str) -> Ws {
        self.try_ws(query).await.expect("websocket")
    }

    pub async fn try_ws(&self, query: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{}/ws?{query}", self.addr)
            .into_client_request()
            .expect("ws request");
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }
}

/// The next text frame as JSON, or None when the socket closed. Panics
/// after `timeout` without one.
pub async fn next_json(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next())
            .await
            .expect("no frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("json")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads events until one with `seq` (or `pos`) `last` arrived; returns them.
pub async fn read_until(ws: &mut Ws, field: &str, last: i64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let ev = next_json(ws, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("socket closed before {field}={last}; got {}", out.len()));
        let n = ev[field].as_i64().expect("numbered event");
        out.push(ev);
        if n >= last {
            return out;
        }
    }
}

/// The `seq` (or another field) of each event.
pub fn numbers(events: &[Value], field: &str) -> Vec<i64> {
    events.iter().map(|e| e[field].as_i64().unwrap()).collect()
}

/// Runs the binary with arguments and environment; returns (status, stdout, stderr).
pub fn run_bin(argv0: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(argv0.unwrap_or(Path::new(BIN)));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where the test suite's Whisper model lives: `$TEST_MODEL_DIR`, else
/// where the demo and the services look (the effective `model_dir`), which
/// `scripts/test.sh` fills. A missing model fails the test with the
/// command that installs it.
pub fn model_dir() -> PathBuf {
    // Asked once per test run: many tests need it.
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        std::env::var_os("TEST_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let out = Command::new(BIN)
                    .arg("check-config")
                    .output()
                    .expect("call-coach check-config");
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("model_dir = \""))
                    .and_then(|rest| rest.split('"').next())
                    .map(PathBuf::from)
                    .expect("model_dir in check-config")
            })
    });
    let model = dir.join("ggml-base-q8_0.bin");
    assert!(
        model.is_file(),
        "the stt tests need the Whisper base model at {}: run `bash scripts/test.sh`, or \
         `MODEL_DIR={} call-coach model fetch base`",
        model.display(),
        dir.display()
    );
    dir.clone()
}

/// The Spanish test recordings (Debian's asterisk-core-sounds-es-wav).
pub const SOUNDS_ES: &str = "/usr/share/asterisk/sounds/es";

/// A recording by name, failing clearly when the package is missing.
pub fn sound(name: &str) -> PathBuf {
    let p = Path::new(SOUNDS_ES).join(format!("{name}.wav"));
    assert!(
        p.is_file(),
        "{} is missing: apt-get install asterisk-core-sounds-es-wav (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Reference texts of the recordings, `name -> text`.
pub fn sound_references() -> std::collections::HashMap<String, String> {
    let path = "/usr/share/doc/asterisk-core-sounds-es/core-sounds-es.txt.gz";
    let out = Command::new("zcat").arg(path).output().expect("zcat");
    assert!(
        out.status.success(),
        "{path} is missing: apt-get install asterisk-core-sounds-es (scripts/test.sh does)"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// An stt with the test model, posting to `relay` (or to `relay_url`),
/// with extra settings. Its admission is opened wide (64 streams, behind
/// only after a minute): the suite runs many streams at once on a loaded
/// machine, where the measured capacity or a few seconds of lag would
/// refuse some; admission and the lag bounds are tested on their own
/// (`rtp2ws.rs`, `stt.rs`), with `extra` setting them back.
pub fn start_stt(relay_url: &str, extra: &[(&str, &str)]) -> Service {
    let models = model_dir();
    let mut env: Vec<(&str, &str)> = vec![
        ("MODEL_DIR", models.to_str().unwrap()),
        ("MODEL_SIZE", "base"),
        ("RELAY_URL", relay_url),
        ("CALL_COACH_STT__CAPACITY", "64"),
        ("CALL_COACH_STT__BEHIND_MS", "60000"),
        ("CALL_COACH_STT__GIVE_UP_SECS", "120"),
    ];
    env.extend_from_slice(extra);
    Service::start_named("stt", &env)
}

/// The relay's `POST /event` URL.
pub fn event_url(relay: &Service) -> String {
    format!("http://{}/event", relay.addr)
}

/// The next final transcript on a subscription, skipping partials.
pub async fn next_final(ws: &mut Ws, timeout: Duration) -> Value {
    loop {
        let ev = next_json(ws, timeout).await.expect("a final transcript");
        if ev["final"] == true {
            return ev;
        }
    }
}

/// The lower-case text of a transcript event.
pub fn text(ev: &Value) -> String {
    ev["text"].as_str().unwrap_or_default().to_lowercase()
}

/// Relay tokens for the auth tests: a publisher, a supervisor, and the
/// agent at PJSIP/200 (who may also follow call `extra`).
pub const PUBLISH: &str = "pub-0123456789abcdef";
pub const SUPERVISOR: &str = "sup-0123456789abcdef";
pub const AGENT200: &str = "agt-0123456789abcdef";

/// A tokens file in `dir` holding those three tokens.
pub fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!(
            "# test tokens\n{PUBLISH} publish\n{SUPERVISOR} supervisor\n{AGENT200} subscribe agent:PJSIP/200 call:extra\n"
        ),
    )
    .unwrap();
    path
}
