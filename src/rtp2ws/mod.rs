//! rtp2ws: Asterisk ExternalMedia RTP to stt websocket streams (CONTRACT.md
//! "rtp2ws"). Only its settings exist so far; the service itself is not
//! built yet and the dispatcher says so.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the rtp2ws service (`[rtp2ws]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Single-call compatibility mode: fixed ports for this call id. `CALL_ID`.
    pub call_id: Option<String>,
    /// First UDP port for RTP. `BASE_PORT`.
    pub base_port: u16,
    /// Loopback HTTP control API address. `RTP2WS_CONTROL`.
    pub control: SocketAddr,
    /// The stt websocket. `STT_URL`.
    pub stt_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            call_id: None,
            base_port: 14000,
            control: SocketAddr::from(([127, 0, 0, 1], 7071)),
            stt_url: "ws://127.0.0.1:8080/ws".into(),
        }
    }
}
