//! relay: the event hub. `POST /event` in, stored durably, then out on
//! `GET /ws` to every subscriber of the call (docs/contract.md "Events").
//!
//! - [`server`]: HTTP routing, input checks, auth, the listener loop.
//! - [`ws`]: one websocket subscription: replay from the store, then live.
//! - [`log`]: the event log, either of the two below.
//! - [`store`]: SQLite log with group commit (one machine, the default).
//! - [`jetstream`]: the log on NATS JetStream (several relays and hosts).
//! - [`hub`]: live fan-out with a bounded queue per subscriber.
//! - [`calls`]: the call index behind `GET /calls` and agent tokens.
//! - [`auth`]: the token file and what each token may do.
//! - [`redact`]: PII redaction of every event at ingest, before all else.
//! - [`metrics`]: Prometheus counters.

pub mod auth;
pub mod calls;
pub mod history;
pub mod hub;
pub mod jetstream;
pub mod log;
pub mod metrics;
pub mod redact;
pub mod server;
pub mod store;
pub mod ui;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use server::serve;

use crate::setting::{ConfigError, PathSlot, SecretSlot, Section, Var};

pub use jetstream::NatsSettings;

/// Name of the systemd credential holding the tokens file.
pub const TOKENS_CREDENTIAL: &str = "relay_tokens";

/// Settings of the relay (`[relay]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// HTTP and websocket listen address. `RELAY_LISTEN`.
    pub listen: SocketAddr,
    /// Token file (see [`auth`]); also the credential `relay_tokens`.
    /// `RELAY_TOKENS_FILE`. Without one, the relay is open to anyone who
    /// can reach it, so it only starts on a loopback address.
    pub tokens_file: Option<PathBuf>,
    /// Start on a non-loopback address without tokens anyway.
    pub allow_unauthenticated_remote: bool,
    /// Events older than this many days are deleted; 0 keeps them forever.
    pub retention_days: u32,
    /// `full`: fsync on every group commit (survives power loss);
    /// `normal`: survives a relay crash, not a host crash; faster.
    pub sync: store::Sync,
    /// Events queued per subscriber before it is dropped as too slow.
    pub subscriber_queue: usize,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A call without `call.started` is listed as active while its last
    /// event is at most this many seconds old.
    pub call_recent_secs: u64,
    /// A started call with no `call.ended` is no longer listed as active
    /// after this many seconds without events.
    pub call_stale_secs: u64,
    /// `[relay.nats]`: keep events in NATS JetStream instead of SQLite, so
    /// several relays serve the same calls.
    pub nats: NatsSettings,
    /// `[relay.redact]`: card numbers, security codes, identity documents,
    /// IBANs (and, when turned on, e-mail addresses and phone numbers) are
    /// replaced by placeholders before any event is stored or sent on.
    pub redact: redact::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tokens_file: None,
            allow_unauthenticated_remote: false,
            retention_days: 30,
            sync: store::Sync::Full,
            subscriber_queue: 4096,
            max_connections: 8192,
            call_recent_secs: 300,
            call_stale_secs: 4 * 3600,
            nats: NatsSettings::default(),
            redact: redact::Settings::default(),
        }
    }
}

impl Section for Settings {
    const KEY: &'static str = "relay";
    const ENV: &'static [Var] = &[
        Var::new("RELAY_LISTEN", "listen"),
        Var::new("RELAY_TOKENS_FILE", "tokens_file"),
        Var::new("RELAY_NATS_URL", "nats.url"),
    ];

    fn secrets(&mut self) -> Vec<SecretSlot<'_>> {
        let file = self.nats.token_file.clone();
        vec![SecretSlot::new("nats.token", &mut self.nats.token, &file)]
    }

    fn credential_paths(&mut self) -> Vec<PathSlot<'_>> {
        vec![
            PathSlot {
                key: "tokens_file",
                credential: TOKENS_CREDENTIAL,
                value: &mut self.tokens_file,
            },
            PathSlot {
                key: "nats.credentials_file",
                credential: jetstream::CREDS_CREDENTIAL,
                value: &mut self.nats.credentials_file,
            },
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.subscriber_queue == 0 {
            return Err(ConfigError::invalid(
                "relay.subscriber_queue",
                "must be at least 1",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "relay.max_connections",
                "must be at least 1",
            ));
        }
        if self.redact.context_secs > 3600 {
            return Err(ConfigError::invalid(
                "relay.redact.context_secs",
                "at most 3600 (an hour)",
            ));
        }
        if let Some(url) = &self.nats.url
            && url.split(',').all(|u| u.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "relay.nats.url",
                "no server given: nats://HOST:4222[,nats://HOST2:4222...]",
            ));
        }
        if self.nats.stream.is_empty()
            || self
                .nats
                .stream
                .contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c))
        {
            return Err(ConfigError::invalid(
                "relay.nats.stream",
                "a JetStream stream name: no spaces, '.', '*', '>', '/' or '\\'",
            ));
        }
        if self.nats.subject_prefix.is_empty()
            || self
                .nats
                .subject_prefix
                .split('.')
                .any(|t| t.is_empty() || t.contains(['*', '>', ' ']))
        {
            return Err(ConfigError::invalid(
                "relay.nats.subject_prefix",
                "dot-separated NATS subject tokens without wildcards",
            ));
        }
        Ok(())
    }
}
