//! orchestrator: coaching from rules, live metrics and an LLM. Built so
//! far: the live metrics ([`metrics`]) and the rules coach ([`rules`],
//! with the default Spanish set in `rules.es.toml`); the service that
//! subscribes to the relay and publishes them is not built yet and the
//! dispatcher says so.

pub mod metrics;
pub mod rules;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

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
        }
    }
}
