//! ari-coach: the Asterisk ARI application `coach` (docs/contract.md). It takes
//! every call the dialplan hands it (`Stasis(coach)`), dials the agent,
//! bridges both, and taps each party's voice apart into rtp2ws; or, in
//! attach mode, taps a call the dialplan bridged itself.
//!
//! - [`ari`]: the REST client (the few requests used).
//! - [`events`]: the events websocket, with reconnects.
//! - [`service`]: the dispatcher (routing by channel id) and the reconcile
//!   after every (re)connect.
//! - [`call`]: one call's task, from ringing to teardown.
//! - [`tap`]: one party's tap (rtp2ws leg, snoop, ExternalMedia, bridge).
//! - [`names`]: the ids of what ari-coach creates, derived from the call id.
//! - [`status`]: its loopback `/healthz` and `/metrics`.

pub mod ari;
pub mod call;
pub mod events;
pub mod names;
pub mod service;
pub mod status;
pub mod tap;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use service::serve;

use crate::setting::{ConfigError, Secret, SecretSlot, Section, Var};

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
    /// Dial string of the agent. `AGENT_DIAL`. The dialplan may pick
    /// another per call with `Stasis(coach,agent=PJSIP/201)`.
    pub agent_dial: String,
    /// Seconds the agent's phone rings before the call is given up.
    pub agent_timeout_secs: u64,
    /// Played to the caller when the agent does not answer (e.g.
    /// `sound:vm-nobodyavail`) before hanging up; none: hang up at once.
    pub unavailable_sound: Option<String>,
    /// ExternalMedia format: `slin16` (16 kHz, best), `slin`, `ulaw`, `alaw`.
    pub format: String,
    /// With several Asterisk hosts (one ari-coach each) on one relay: this
    /// host's name, put before its call ids (`PREFIX:1732476767.12`), since
    /// every Asterisk numbers its channels alike. Empty: none.
    pub call_id_prefix: String,
    /// Where Asterisk sends the tapped RTP: the host rtp2ws's UDP ports
    /// listen on (its `rtp_bind`).
    pub rtp_host: String,
    /// Compatibility mode: send the agent to `BASE_PORT+1` and the customer
    /// to `BASE_PORT+2` (rtp2ws with `CALL_ID`) instead of asking rtp2ws for
    /// legs. One call at a time.
    pub fixed_ports: bool,
    /// First RTP port of rtp2ws's compatibility mode. `BASE_PORT`.
    pub base_port: u16,
    /// rtp2ws control API address. `RTP2WS_CONTROL`.
    pub rtp2ws_control: SocketAddr,
    /// Where call events are posted. `RELAY_EVENT`.
    pub relay_event: String,
    /// Token for the relay when its auth is on. `RELAY_TOKEN`, or
    /// `RELAY_TOKEN_FILE`, or the credential `relay_token`.
    pub relay_token: Option<Secret>,
    /// File holding the relay token. `RELAY_TOKEN_FILE`.
    pub relay_token_file: Option<PathBuf>,
    /// Calls coached at once; further calls go back to the dialplan.
    pub max_calls: usize,
    /// Loopback address of `/healthz` (200 while connected to ARI) and
    /// `/metrics`.
    pub listen: SocketAddr,
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
            agent_timeout_secs: 30,
            unavailable_sound: None,
            format: "slin16".into(),
            call_id_prefix: String::new(),
            rtp_host: "127.0.0.1".into(),
            fixed_ports: false,
            base_port: 14000,
            rtp2ws_control: SocketAddr::from(([127, 0, 0, 1], 7071)),
            relay_event: "http://127.0.0.1:7070/event".into(),
            relay_token: None,
            relay_token_file: None,
            max_calls: 200,
            listen: SocketAddr::from(([127, 0, 0, 1], 7072)),
        }
    }
}

impl Section for Settings {
    const KEY: &'static str = "ari_coach";
    const ENV: &'static [Var] = &[
        Var::new("BASE_PORT", "base_port"),
        Var::new("RTP2WS_CONTROL", "rtp2ws_control"),
        Var::new("RELAY_EVENT", "relay_event"),
        Var::new("RELAY_TOKEN", "relay_token"),
        Var::new("RELAY_TOKEN_FILE", "relay_token_file"),
        Var::new("ARI_URL", "ari_url"),
        Var::new("ARI_USER", "ari_user"),
        Var::new("ARI_PASS", "ari_pass"),
        Var::new("ARI_PASS_FILE", "ari_pass_file"),
        Var::new("ARI_APP", "ari_app"),
        Var::new("AGENT_DIAL", "agent_dial"),
    ];

    fn secrets(&mut self) -> Vec<SecretSlot<'_>> {
        vec![
            SecretSlot::new("relay_token", &mut self.relay_token, &self.relay_token_file),
            SecretSlot::new("ari_pass", &mut self.ari_pass, &self.ari_pass_file),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let p = self.call_id_prefix.as_bytes();
        if !p.is_empty()
            && (p.len() > 32
                || !p[0].is_ascii_alphanumeric()
                || !p
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c)))
        {
            return Err(ConfigError::invalid(
                "ari_coach.call_id_prefix",
                "1 to 32 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit (e.g. ast1)",
            ));
        }
        if !(self.ari_url.starts_with("http://") || self.ari_url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "ari_coach.ari_url",
                "must be an http:// or https:// URL such as http://localhost:8088/ari",
            ));
        }
        if self.ari_app.is_empty() || self.ari_app.contains([',', '/', ' ']) {
            return Err(ConfigError::invalid(
                "ari_coach.ari_app",
                "must be a plain name such as coach",
            ));
        }
        if self.agent_dial.is_empty() || !self.agent_dial.contains('/') {
            return Err(ConfigError::invalid(
                "ari_coach.agent_dial",
                "must be a dial string such as PJSIP/200",
            ));
        }
        if crate::audio::rtp::Format::parse(&self.format).is_none() {
            return Err(ConfigError::invalid(
                "ari_coach.format",
                "must be slin16, slin, ulaw or alaw",
            ));
        }
        if self.agent_timeout_secs == 0 || self.agent_timeout_secs > 600 {
            return Err(ConfigError::invalid(
                "ari_coach.agent_timeout_secs",
                "must be between 1 and 600",
            ));
        }
        if self.max_calls == 0 {
            return Err(ConfigError::invalid(
                "ari_coach.max_calls",
                "must be at least 1",
            ));
        }
        if self.fixed_ports && self.base_port > 65_533 {
            return Err(ConfigError::invalid(
                "ari_coach.base_port",
                "fixed_ports needs base_port + 2 within 65535",
            ));
        }
        Ok(())
    }
}
