//! `call-coach simulate-call`: stands in for Asterisk. Asks rtp2ws for an
//! agent leg and a customer leg exactly as ari-coach does, sends two WAV
//! files (or the two channels of a stereo one) as RTP the way ExternalMedia
//! does (20 ms packets, random SSRC and first sequence number, timestamp
//! +samples per packet, big-endian slin16 as payload type 118), optionally
//! with loss, jitter and so reordering, and releases the legs at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::UdpSocket;

use crate::audio::rtp::Format;
use crate::audio::wav::Wav;
use crate::audio::{g711, rtp};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// The agent's side (WAV, any rate from 4 to 192 kHz, resampled to the
    /// RTP format's).
    #[arg(long, required_unless_present = "stereo")]
    pub agent: Option<PathBuf>,
    /// The customer's side.
    #[arg(long, required_unless_present = "stereo")]
    pub customer: Option<PathBuf>,
    /// One stereo WAV: left the agent, right the customer.
    #[arg(long, conflicts_with_all = ["agent", "customer"])]
    pub stereo: Option<PathBuf>,
    /// rtp2ws control API.
    #[arg(long, default_value = "http://127.0.0.1:7071")]
    pub rtp2ws: String,
    /// Call id (default: a new one).
    #[arg(long)]
    pub call_id: Option<String>,
    /// RTP format, as ari-coach asks for it.
    #[arg(long, default_value = "slin16", value_parser = ["slin16", "slin", "ulaw", "alaw"])]
    pub format: String,
    /// Pace packets at real time (else ten times faster).
    #[arg(long)]
    pub realtime: bool,
    /// Share of packets to drop (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Random delay of up to this many ms per packet (reorders them).
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Seed for loss and jitter.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print nothing (when another command drives it).
    #[arg(skip)]
    pub quiet: bool,
    /// Told the moment the first packet goes out (for `bench-e2e`, which
    /// measures latency from the audio's own timeline).
    #[arg(skip)]
    pub on_start: StartHook,
}

impl Options {
    /// A clean real-time slin16 call, printing nothing, as another command
    /// (`demo`, `bench-e2e`) drives it; the audio is set by the caller.
    pub fn driven(rtp2ws: String, call_id: String) -> Self {
        Self {
            agent: None,
            customer: None,
            stereo: None,
            rtp2ws,
            call_id: Some(call_id),
            format: "slin16".into(),
            realtime: true,
            loss: 0.0,
            jitter_ms: 0,
            seed: 1,
            quiet: true,
            on_start: StartHook::default(),
        }
    }
}

/// A callback given the instant the audio starts.
#[derive(Clone, Default)]
pub struct StartHook(pub Option<std::sync::Arc<dyn Fn(std::time::Instant) + Send + Sync>>);

impl std::fmt::Debug for StartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "StartHook(set)"
        } else {
            "StartHook(none)"
        })
    }
}

struct Side {
    speaker: &'static str,
    samples: Vec<i16>,
}

fn to_rate(wav: &Wav, channel: u16, rate: u32) -> anyhow::Result<Vec<i16>> {
    let samples = wav.channel(channel);
    if wav.rate == rate {
        return Ok(samples);
    }
    crate::audio::resample::convert(&crate::audio::to_f32(&samples), wav.rate, rate)
        .map(|pcm| crate::audio::to_i16(&pcm))
        .map_err(|e| anyhow::anyhow!("the file is {e}"))
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let format = Format::parse(&opts.format).context("format")?;
    let rate = format.rate();
    let sides = match (&opts.stereo, &opts.agent, &opts.customer) {
        (Some(path), _, _) => {
            let wav = Wav::read(path)?;
            if wav.channels != 2 {
                bail!(
                    "{} has {} channels; --stereo wants 2",
                    path.display(),
                    wav.channels
                );
            }
            vec![
                Side {
                    speaker: "agent",
                    samples: to_rate(&wav, 0, rate)?,
                },
                Side {
                    speaker: "customer",
                    samples: to_rate(&wav, 1, rate)?,
                },
            ]
        }
        (None, Some(a), Some(c)) => vec![
            Side {
                speaker: "agent",
                samples: to_rate(&Wav::read(a)?, 0, rate)?,
            },
            Side {
                speaker: "customer",
                samples: to_rate(&Wav::read(c)?, 0, rate)?,
            },
        ],
        _ => bail!("give --agent and --customer, or --stereo"),
    };
    // Asterisk sends packets for as long as the call lasts, silence
    // included: pad the shorter side.
    let mut sides = sides;
    let longest = sides.iter().map(|s| s.samples.len()).max().unwrap_or(0);
    for side in &mut sides {
        side.samples.resize(longest, 0);
    }
    let call_id = opts
        .call_id
        .clone()
        .unwrap_or_else(|| format!("sim-{}-{}", std::process::id(), crate::event::now_unix_ms()));
    let base = opts.rtp2ws.trim_end_matches('/').to_owned();
    let host = base
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or("127.0.0.1")
        .to_owned();

    // Ask for the legs exactly as ari-coach does.
    let client = crate::rtp2ws::client::Rtp2ws::new(&base);
    let mut legs = Vec::new();
    for side in &sides {
        let (id, port) = client
            .open(&call_id, side.speaker, &opts.format)
            .await
            .map_err(anyhow::Error::msg)?;
        let target: SocketAddr = format!("{host}:{port}").parse().context("rtp2ws address")?;
        legs.push((id, target));
    }
    if !opts.quiet {
        println!(
            "call {call_id}: agent -> {}, customer -> {}",
            legs[0].1, legs[1].1
        );
    }

    // Every packet of both legs with its send time, then in time order.
    let mut rng = opts.seed.max(1);
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let per_packet = (rate / 50) as usize;
    let mut schedule: Vec<(f64, usize, Vec<u8>)> = Vec::new();
    let (mut sent, mut dropped) = (0u64, 0u64);
    for (leg, side) in sides.iter().enumerate() {
        let ssrc = (random() * f64::from(u32::MAX)) as u32;
        let first_seq = (random() * 65_535.0) as u16;
        for (i, chunk) in side.samples.chunks(per_packet).enumerate() {
            if random() < opts.loss {
                dropped += 1;
                continue;
            }
            let payload: Vec<u8> = match format {
                Format::Slin16 | Format::Slin => {
                    chunk.iter().flat_map(|s| s.to_be_bytes()).collect()
                }
                Format::Ulaw => chunk.iter().map(|s| g711::linear_to_ulaw(*s)).collect(),
                Format::Alaw => chunk.iter().map(|s| g711::linear_to_alaw(*s)).collect(),
            };
            let seq = first_seq.wrapping_add(i as u16);
            let ts = (per_packet * (i + 1)) as u32;
            let packet = rtp::build(format.payload_type(), seq, ts, ssrc, &payload);
            let at = i as f64 * 0.020 + random() * opts.jitter_ms as f64 / 1000.0;
            schedule.push((at, leg, packet));
        }
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let speed = if opts.realtime { 1.0 } else { 10.0 };
    let start = tokio::time::Instant::now();
    if let Some(hook) = &opts.on_start.0 {
        hook(start.into_std());
    }
    for (at, leg, packet) in &schedule {
        tokio::time::sleep_until(start + Duration::from_secs_f64(at / speed)).await;
        socket.send_to(packet, legs[*leg].1).await?;
        sent += 1;
    }
    // Let the jitter buffer see the last packets before closing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (id, _) in &legs {
        if !client.close(id).await.map_err(anyhow::Error::msg)? {
            eprintln!("leg {id} was already closed by rtp2ws");
        }
    }
    if !opts.quiet {
        println!("sent {sent} RTP packets, dropped {dropped} on purpose; legs released");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_at_any_rate_is_sent_at_the_formats() {
        let wav = Wav {
            rate: 44_100,
            channels: 2,
            samples: vec![1000; 2 * 44_100],
        };
        for rate in [8_000, 16_000] {
            let out = to_rate(&wav, 0, rate).unwrap();
            assert_eq!(out.len(), rate as usize);
            // A steady level stays that level.
            assert!(
                out[100..out.len() - 100]
                    .iter()
                    .all(|&s| (s - 1000).abs() <= 2)
            );
        }
        let slow = Wav {
            rate: 1_000,
            channels: 1,
            samples: vec![0; 1000],
        };
        let err = to_rate(&slow, 0, 8_000).unwrap_err().to_string();
        assert!(
            err.contains("1000 Hz") && err.contains("4000 to 192000"),
            "{err}"
        );
    }
}
