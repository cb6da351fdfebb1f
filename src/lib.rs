//! call-coach: real-time coaching for contact-centre agents on Asterisk.
//!
//! One binary, five services (CONTRACT.md), data flowing one way:
//! Asterisk -> `ari_coach` / `rtp2ws` -> `stt` -> `relay` -> `orchestrator`
//! -> `relay` -> the agent's browser.
//!
//! Code map:
//! - [`cli`]: multicall dispatch (argv[0] stem or first argument), subcommands.
//! - [`config`]: settings of every service: defaults < TOML < environment.
//! - [`event`]: the event envelope of CONTRACT.md; the only wire types.
//! - [`http`]: the HTTP connection loop, websocket upgrades, query strings.
//! - [`publish`]: posting events to the relay, buffered across outages.
//! - [`audio`]: G.711, resampling, WAV, voice activity detection (pure).
//! - [`relay`]: the event hub (store, fan-out, websocket, auth, metrics).
//! - [`stt`], [`rtp2ws`], [`orchestrator`], [`ari_coach`]: the other
//!   services.
//! - [`bench`]: load generators that print figures.
//! - [`simulate`]: `simulate-call`, Asterisk's RTP side for tests and demos.
//! - [`demo`]: `call-coach demo`, the whole pipeline on a sample call;
//!   [`procs`] runs the services as child processes for it and `bench-e2e`.
//! - [`telemetry`], [`shutdown`], [`systemd`]: logging, signals, sd_notify.

pub mod ari_coach;
pub mod audio;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod event;
pub mod http;
pub mod orchestrator;
pub mod procs;
pub mod publish;
pub mod relay;
pub mod rtp2ws;
pub mod shutdown;
pub mod simulate;
pub mod stt;
pub mod systemd;
pub mod telemetry;
pub mod text;

/// Raises the soft open-file limit to the hard limit: every websocket
/// subscriber is a file descriptor, and the default soft limit (often 1024)
/// is far below what a contact centre needs.
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
