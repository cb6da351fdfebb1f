//! stt: Whisper speech-to-text over websocket (CONTRACT.md "Audio into
//! stt"). Only its settings exist so far; the service itself is not built
//! yet and the dispatcher says so.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Settings of the stt service (`[stt]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Websocket listen address. `STT_LISTEN`.
    pub listen: SocketAddr,
    /// Transcription language, forced. `LANG` (language part of a locale).
    pub language: String,
    /// Whisper model size (`tiny`, `base`, `small`, ...). `MODEL_SIZE`.
    pub model_size: String,
    /// `cpu` or `cuda`. `DEVICE`.
    pub device: String,
    /// `int8` (GGML q8_0) or `float16` (f16). `COMPUTE_TYPE`.
    pub compute_type: String,
    /// Where transcripts are posted. `RELAY_URL`.
    pub relay_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            language: "es".into(),
            model_size: "small".into(),
            device: "cpu".into(),
            compute_type: "int8".into(),
            relay_url: "http://127.0.0.1:7070/event".into(),
        }
    }
}

impl Settings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.device.as_str(), "cpu" | "cuda") {
            return Err(ConfigError::invalid(
                "stt.device",
                format!("must be \"cpu\" or \"cuda\", got {:?}", self.device),
            ));
        }
        if !matches!(
            self.compute_type.as_str(),
            "int8" | "float16" | "q8_0" | "f16"
        ) {
            return Err(ConfigError::invalid(
                "stt.compute_type",
                format!(
                    "must be \"int8\" or \"float16\", got {:?}",
                    self.compute_type
                ),
            ));
        }
        Ok(())
    }
}
