//! `call-coach bench-rtp2ws`: starts rtp2ws (this binary, as its own
//! process) pointed at a sink that stands in for stt and only counts, opens
//! N legs, sends RTP at 50 packets a second on each, and prints packets/s,
//! rtp2ws's CPU (per 100 streams too), the latency it adds (packet sent to
//! its audio reaching the sink, p50/p99) and loss.
//!
//! Each packet carries its send time in its first samples, which rtp2ws
//! passes through untouched, so the sink can time every 20 ms block.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Concurrent streams (legs), comma-separated for a sweep.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub streams: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// First UDP port rtp2ws may use.
    #[arg(long, default_value_t = 40_000)]
    pub base_port: u16,
    /// Pin rtp2ws to one CPU with taskset (when available).
    #[arg(long)]
    pub one_core: bool,
}

/// 20 ms of 8 kHz slin: 160 samples.
const SAMPLES: usize = 160;

pub async fn run(opts: Options) -> anyhow::Result<()> {
    // The sink: accepts stt websockets, times every block.
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?;
    let epoch = Instant::now();
    let stats = Arc::new(Sink::default());
    {
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = sink.accept().await {
                let stats = stats.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        match msg {
                            Message::Binary(b) => stats.take(&b, epoch),
                            // {"type":"end"}: like stt, close once done.
                            Message::Text(_) => {
                                let _ = ws.close(None).await;
                                break;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
    }

    let control = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let exe = std::env::current_exe()?;
    let mut cmd = if opts.one_core && which("taskset") {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", "0"]).arg(&exe);
        c
    } else {
        tokio::process::Command::new(&exe)
    };
    let mut child = cmd
        .arg("rtp2ws")
        .env("STT_URL", format!("ws://{sink_addr}/ws"))
        .env("RTP2WS_CONTROL", control.to_string())
        .env("BASE_PORT", opts.base_port.to_string())
        .env("CALL_COACH_RTP2WS__PORT_RANGE", "20000")
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting rtp2ws")?;
    let pid = child.id().context("rtp2ws pid")?;
    let base = format!("http://{control}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&format!("{base}/healthz")).await.is_err() {
        if Instant::now() > deadline {
            bail!("rtp2ws did not come up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "rtp2ws (pid {pid}{}) -> sink {sink_addr} | slin 8 kHz, 50 packets/s per stream | {} s per run",
        if opts.one_core { ", one core" } else { "" },
        opts.duration
    );
    println!(
        "{:>8} {:>11} {:>11} {:>9} {:>9} {:>9} {:>8} {:>9} {:>14}",
        "streams",
        "packets/s",
        "received/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "loss",
        "CPU",
        "CPU/100 strm"
    );
    for (round, &n) in opts.streams.iter().enumerate() {
        stats.reset();
        let mut legs = Vec::new();
        for i in 0..n {
            let body =
                format!(r#"{{"callId":"bench-{round}-{i}","speaker":"agent","format":"slin"}}"#);
            let answer = post(&format!("{base}/streams"), body).await?;
            let v: serde_json::Value = serde_json::from_str(&answer)?;
            let port = v["port"].as_u64().context("no port")? as u16;
            legs.push((v["id"].as_str().unwrap_or_default().to_owned(), port));
        }
        let cpu0 = crate::telemetry::process_stats(Some(pid)).map(|s| s.1);
        let sent = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(opts.duration);
        // A few sender tasks, each pacing its share of the legs.
        let senders = 4.min(n.max(1));
        let mut tasks = Vec::new();
        for s in 0..senders {
            let mine: Vec<u16> = legs.iter().skip(s).step_by(senders).map(|l| l.1).collect();
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let socket = UdpSocket::bind("127.0.0.1:0").await?;
                let mut tick = 0u32;
                // Streams are spread over each 20 ms, as independent calls
                // are, instead of arriving in one burst.
                let slots = 10usize;
                let per_slot = mine.len().div_ceil(slots).max(1);
                while Instant::now() < until {
                    for (k, port) in mine.iter().enumerate() {
                        if k % per_slot == 0 {
                            let due = start
                                + Duration::from_millis(20 * u64::from(tick))
                                + Duration::from_micros(2_000 * (k / per_slot) as u64);
                            tokio::time::sleep_until(due.into()).await;
                        }
                        let mut samples = [0i16; SAMPLES];
                        let us = epoch.elapsed().as_micros() as u64;
                        for (j, w) in samples.iter_mut().take(4).enumerate() {
                            *w = ((us >> (16 * j)) & 0xffff) as u16 as i16;
                        }
                        let payload: Vec<u8> =
                            samples.iter().flat_map(|x| x.to_be_bytes()).collect();
                        let packet = crate::audio::rtp::build(
                            crate::audio::rtp::PT_SLIN,
                            tick as u16,
                            (tick + 1) * SAMPLES as u32,
                            1000 + k as u32,
                            &payload,
                        );
                        socket.send_to(&packet, ("127.0.0.1", *port)).await?;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    tick += 1;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu1 = crate::telemetry::process_stats(Some(pid)).map(|s| s.1);
        // Let the last blocks through the jitter window, then close.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (id, _) in &legs {
            let _ = delete(&format!("{base}/streams/{id}")).await;
        }
        let sent = sent.load(Ordering::Relaxed);
        let (received, mut lat) = stats.snapshot();
        lat.sort_unstable();
        let pick = |q: f64| {
            lat.get(((lat.len().max(1) - 1) as f64 * q) as usize)
                .map_or(f64::NAN, |v| *v as f64 / 1000.0)
        };
        let cpu = match (cpu0, cpu1) {
            (Some(a), Some(b)) => (b - a) / secs,
            _ => f64::NAN,
        };
        println!(
            "{:>8} {:>11.0} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>7.2}% {:>8.0}% {:>13.1}%",
            n,
            sent as f64 / secs,
            received as f64 / secs,
            pick(0.5),
            pick(0.99),
            lat.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
            100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64,
            cpu * 100.0,
            cpu * 100.0 * 100.0 / n.max(1) as f64,
        );
    }
    let _ = child.kill().await;
    Ok(())
}

/// What the stand-in for stt saw.
#[derive(Default)]
struct Sink {
    blocks: AtomicU64,
    latency_us: Mutex<Vec<u64>>,
}

impl Sink {
    fn reset(&self) {
        self.blocks.store(0, Ordering::Relaxed);
        if let Ok(mut l) = self.latency_us.lock() {
            l.clear();
        }
    }

    /// Times every 20 ms block of a frame of s16le audio.
    fn take(&self, frame: &[u8], epoch: Instant) {
        let now = epoch.elapsed().as_micros() as u64;
        let mut lat = Vec::new();
        for block in frame.chunks_exact(SAMPLES * 2) {
            let mut us = 0u64;
            for j in 0..4 {
                let w = u16::from_le_bytes([block[2 * j], block[2 * j + 1]]);
                us |= u64::from(w) << (16 * j);
            }
            // Silence filled in for a lost packet carries no stamp.
            if us != 0 && us <= now {
                lat.push(now - us);
                self.blocks.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok(mut l) = self.latency_us.lock() {
            l.extend(lat);
        }
    }

    fn snapshot(&self) -> (u64, Vec<u64>) {
        let lat = self
            .latency_us
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        (self.blocks.load(Ordering::Relaxed), lat)
    }
}

fn which(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

async fn get(url: &str) -> anyhow::Result<String> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || Ok(ureq::get(&url).call()?.body_mut().read_to_string()?))
        .await?
}

async fn post(url: &str, body: String) -> anyhow::Result<String> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        Ok(ureq::post(&url)
            .header("content-type", "application/json")
            .send(body.as_bytes())?
            .body_mut()
            .read_to_string()?)
    })
    .await?
}

async fn delete(url: &str) -> anyhow::Result<()> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || Ok(ureq::delete(&url).call().map(drop)?)).await?
}
