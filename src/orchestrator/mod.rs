//! orchestrator: coaching for every live call. It follows the relay,
//! keeps per-call state, and publishes `metrics`, `tip`, `checklist` and
//! `summary` events.
//!
//! - [`service`]: the relay subscription, per-call state, the tick.
//! - [`metrics`]: live figures from transcripts alone.
//! - [`rules`]: the rules coach and the compliance checklist (default
//!   Spanish set in `rules.es.toml`).
//! - [`group`]: several orchestrators sharing the calls (leases in NATS).
//! - [`llm`]: the LLM coach (OpenRouter or any OpenAI-compatible API),
//!   streamed tips, retries, circuit breaker, daily budget.

pub mod group;
pub mod llm;
pub mod metrics;
pub mod rules;
pub mod service;

pub use service::serve;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::setting::{ConfigError, PathSlot, Secret, SecretSlot, Section, Var};

pub use group::GroupSettings;

/// Settings of the orchestrator service (`[orchestrator]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// API key of the LLM endpoint. `OPENROUTER_API_KEY`, or a file
    /// (`OPENROUTER_API_KEY_FILE`), or the credential `openrouter_api_key`.
    pub openrouter_api_key: Option<Secret>,
    /// File holding the API key. `OPENROUTER_API_KEY_FILE`.
    pub openrouter_api_key_file: Option<PathBuf>,
    /// Chat model name. `OPENROUTER_MODEL`.
    pub openrouter_model: String,
    /// OpenAI-compatible API base. `LLM_BASE_URL`.
    pub llm_base_url: String,
    /// Single-call subscription of the original deployment. `RELAY_WS`.
    pub relay_ws: String,
    /// Where tips, metrics and summaries are posted. `RELAY_EVENT`.
    pub relay_event: String,
    /// Follow only `relay_ws`'s call id, as the original deployment did;
    /// by default every call is followed (`callId=*` on the same relay).
    pub single_call: bool,
    /// Relay token (publish and supervisor roles) when relay auth is on.
    /// `RELAY_TOKEN`, or `RELAY_TOKEN_FILE`, or the credential `relay_token`.
    pub relay_token: Option<Secret>,
    /// File holding the relay token. `RELAY_TOKEN_FILE`.
    pub relay_token_file: Option<PathBuf>,
    /// A rules file (see `rules.es.toml` for the format).
    pub rules_file: Option<PathBuf>,
    /// `replace` the built-in rules with `rules_file`, or `extend` them.
    pub rules_mode: RulesMode,
    /// How often each call's metrics are published, in seconds.
    pub metrics_every_secs: u64,
    /// A call with no events for this long is summarised and forgotten
    /// (its `call.ended` was lost), in seconds.
    pub idle_call_secs: u64,
    /// After `call.ended`, how long the summary waits for the finals of
    /// utterances still being transcribed (stt may lag), in seconds.
    pub end_grace_secs: u64,
    /// Language of the LLM prompt (`es`, `en`).
    pub language: String,
    /// An LLM request that takes longer fails, in seconds.
    pub llm_timeout_secs: u64,
    /// Wait after a customer's final utterance before asking the LLM (more
    /// may follow), in ms.
    pub llm_debounce_ms: u64,
    /// At most one LLM tip per call this often, in seconds.
    pub llm_min_interval_secs: u64,
    /// LLM requests at once, over all calls.
    pub llm_max_concurrent: usize,
    /// Tokens a day for the LLM at most (0: no limit).
    pub llm_daily_token_budget: u64,
    /// `[orchestrator.group]`: several orchestrators share the calls, each
    /// call coached by one of them (leases in NATS JetStream).
    pub group: GroupSettings,
}

impl Section for Settings {
    const KEY: &'static str = "orchestrator";
    const ENV: &'static [Var] = &[
        Var::new("OPENROUTER_API_KEY", "openrouter_api_key"),
        Var::new("OPENROUTER_API_KEY_FILE", "openrouter_api_key_file"),
        Var::new("OPENROUTER_MODEL", "openrouter_model"),
        Var::new("LLM_BASE_URL", "llm_base_url"),
        Var::new("RELAY_WS", "relay_ws"),
        Var::new("RELAY_EVENT", "relay_event"),
        Var::new("RELAY_TOKEN", "relay_token"),
        Var::new("RELAY_TOKEN_FILE", "relay_token_file"),
        Var::new("ORCHESTRATOR_NATS_URL", "group.nats_url"),
    ];

    fn credential_paths(&mut self) -> Vec<PathSlot<'_>> {
        vec![PathSlot {
            key: "group.credentials_file",
            credential: group::CREDS_CREDENTIAL,
            value: &mut self.group.credentials_file,
        }]
    }

    fn secrets(&mut self) -> Vec<SecretSlot<'_>> {
        vec![
            SecretSlot::new("group.token", &mut self.group.token, &self.group.token_file),
            SecretSlot::new("relay_token", &mut self.relay_token, &self.relay_token_file),
            SecretSlot::new(
                "openrouter_api_key",
                &mut self.openrouter_api_key,
                &self.openrouter_api_key_file,
            ),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = |key: &str, value: &str, schemes: &[&str]| {
            if schemes.iter().any(|s| value.starts_with(s)) {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    format!("orchestrator.{key}"),
                    format!("{value:?} is not a {} URL", schemes.join(" or ")),
                ))
            }
        };
        url("relay_ws", &self.relay_ws, &["ws://"])?;
        url("relay_event", &self.relay_event, &["http://", "https://"])?;
        url("llm_base_url", &self.llm_base_url, &["http://", "https://"])?;
        for (key, value) in [
            ("metrics_every_secs", self.metrics_every_secs),
            ("idle_call_secs", self.idle_call_secs),
            ("llm_timeout_secs", self.llm_timeout_secs),
            ("llm_max_concurrent", self.llm_max_concurrent as u64),
            ("group.lease_secs", self.group.lease_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(
                    format!("orchestrator.{key}"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The LLM coach runs with an API key, or with a base URL of its own
    /// (a local server needs no key).
    pub fn llm_enabled(&self) -> bool {
        self.openrouter_api_key.is_some() || self.llm_base_url != Settings::default().llm_base_url
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesMode {
    Replace,
    Extend,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            openrouter_api_key: None,
            openrouter_api_key_file: None,
            openrouter_model: "anthropic/claude-3.5-sonnet".into(),
            llm_base_url: "https://openrouter.ai/api/v1".into(),
            relay_ws: "ws://127.0.0.1:7070/ws?callId=live".into(),
            relay_event: "http://127.0.0.1:7070/event".into(),
            single_call: false,
            relay_token: None,
            relay_token_file: None,
            rules_file: None,
            rules_mode: RulesMode::Replace,
            metrics_every_secs: 5,
            idle_call_secs: 600,
            end_grace_secs: 15,
            language: "es".into(),
            llm_timeout_secs: 20,
            llm_debounce_ms: 1500,
            llm_min_interval_secs: 20,
            llm_max_concurrent: 2,
            llm_daily_token_budget: 500_000,
            group: GroupSettings::default(),
        }
    }
}
