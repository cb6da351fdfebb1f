//! ari-coach: the Asterisk ARI application `coach`. Only its settings exist
//! so far; the service itself is not built yet and the dispatcher says so.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// Settings of the ari-coach service (`[ari_coach]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// ARI base URL. `ARI_URL`.
    pub ari_url: String,
    /// ARI user. `ARI_USER`.
    pub ari_user: String,
    /// ARI password. `ARI_PASS`, or `ARI_PASS_FILE`, or the credential `ari_pass`.
    pub ari_pass: Option<Secret>,
    /// File holding the ARI password. `ARI_PASS_FILE`.
    pub ari_pass_file: Option<PathBuf>,
    /// Stasis application name. `ARI_APP`.
    pub ari_app: String,
    /// Dial string of the agent. `AGENT_DIAL`.
    pub agent_dial: String,
    /// First RTP port (shared with rtp2ws). `BASE_PORT`.
    pub base_port: u16,
    /// rtp2ws control API address. `RTP2WS_CONTROL`.
    pub rtp2ws_control: SocketAddr,
    /// Where call events are posted. `RELAY_EVENT`.
    pub relay_event: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ari_url: "http://localhost:8088/ari".into(),
            ari_user: "coach".into(),
            ari_pass: None,
            ari_pass_file: None,
            ari_app: "coach".into(),
            agent_dial: "PJSIP/200".into(),
            base_port: 14000,
            rtp2ws_control: SocketAddr::from(([127, 0, 0, 1], 7071)),
            relay_event: "http://127.0.0.1:7070/event".into(),
        }
    }
}
