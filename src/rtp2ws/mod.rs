//! rtp2ws: Asterisk ExternalMedia RTP to stt websocket streams, one per
//! call leg (docs/contract.md "rtp2ws").
//!
//! - [`client`]: a client of that API (ari-coach, `simulate-call`).
//! - [`control`]: the loopback HTTP API (`POST/GET/DELETE /streams`).
//! - [`leg`]: one leg: a UDP port, RTP checks, the jitter buffer, and the
//!   stt websocket with reconnects and a bounded buffer.
//! - [`stt_pool`]: several stt hosts: which one a stream goes to.

pub mod client;
pub mod control;
pub mod leg;
pub mod stt_pool;

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use control::serve;

use crate::setting::{ConfigError, Section, Var};

/// Settings of the rtp2ws service (`[rtp2ws]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Single-call compatibility mode: fixed ports for this call id. `CALL_ID`.
    pub call_id: Option<String>,
    /// First UDP port for RTP. `BASE_PORT`.
    pub base_port: u16,
    /// How many ports from `base_port` legs may use.
    pub port_range: u16,
    /// Address the RTP ports listen on (Asterisk's side of the host).
    pub rtp_bind: IpAddr,
    /// Loopback HTTP control API address. `RTP2WS_CONTROL`.
    pub control: SocketAddr,
    /// The stt websocket, or several separated by commas (each stream goes
    /// to the one with the most headroom, and moves on when one refuses or
    /// fails). `STT_URL`.
    pub stt_url: String,
    /// A leg with no packets for this many seconds is closed.
    pub idle_timeout_secs: u64,
    /// Reordering window of the jitter buffer, in ms.
    pub jitter_ms: u64,
    /// Audio held while stt is unreachable, in seconds; older audio is
    /// dropped and counted.
    pub buffer_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            call_id: None,
            base_port: 14000,
            port_range: 1000,
            rtp_bind: IpAddr::from([127, 0, 0, 1]),
            control: SocketAddr::from(([127, 0, 0, 1], 7071)),
            stt_url: "ws://127.0.0.1:8080/ws".into(),
            idle_timeout_secs: 30,
            jitter_ms: 60,
            buffer_secs: 5,
        }
    }
}

impl Section for Settings {
    const KEY: &'static str = "rtp2ws";
    const ENV: &'static [Var] = &[
        Var::new("CALL_ID", "call_id"),
        Var::new("BASE_PORT", "base_port"),
        Var::new("RTP2WS_CONTROL", "control"),
        Var::new("STT_URL", "stt_url"),
    ];

    fn validate(&self) -> Result<(), ConfigError> {
        if self.port_range == 0 || u32::from(self.base_port) + u32::from(self.port_range) > 65_536 {
            return Err(ConfigError::invalid(
                "rtp2ws.port_range",
                "base_port + port_range must stay within 65535, and the range is at least 1",
            ));
        }
        if let Some(id) = &self.call_id
            && !crate::event::is_valid_call_id(id)
        {
            return Err(ConfigError::invalid(
                "rtp2ws.call_id",
                format!("{id:?} is not a valid callId"),
            ));
        }
        let urls = stt_pool::parse_urls(&self.stt_url);
        if urls.is_empty() || urls.iter().any(|u| !u.starts_with("ws://")) {
            return Err(ConfigError::invalid(
                "rtp2ws.stt_url",
                "must be a ws:// URL, or several separated by commas",
            ));
        }
        Ok(())
    }
}
