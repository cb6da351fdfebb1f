//! A client of rtp2ws's control API (`POST/GET/DELETE /streams`), as
//! ari-coach and `simulate-call` ask for legs. Blocking requests (ureq) on
//! tokio's blocking pool.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

/// rtp2ws's control API (`RTP2WS_CONTROL`).
pub struct Rtp2ws {
    agent: ureq::Agent,
    base: String,
}

impl Rtp2ws {
    /// `base`: `http://HOST:PORT` of the control API.
    pub fn new(base: &str) -> Arc<Self> {
        Arc::new(Self {
            agent: crate::net::agent(
                ureq::Agent::config_builder()
                    // DELETE waits for the leg's audio to reach stt.
                    .timeout_global(Some(Duration::from_secs(70)))
                    .http_status_as_error(false)
                    .build(),
            ),
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    fn blocking(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let result = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(b.to_string().as_bytes()),
            ("DELETE", _) => self.agent.delete(&url).call(),
            _ => self.agent.get(&url).call(),
        };
        let mut resp = result.map_err(|e| format!("rtp2ws {method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn request(
        self: &Arc<Self>,
        method: &'static str,
        path: String,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.blocking(method, &path, body.as_ref()))
            .await
            .unwrap_or_else(|e| Err(format!("rtp2ws request task failed: {e}")))
    }

    /// Opens a leg; returns its id and UDP port.
    pub async fn open(
        self: &Arc<Self>,
        call_id: &str,
        speaker: &str,
        format: &str,
    ) -> Result<(String, u16), String> {
        let body = json!({"callId": call_id, "speaker": speaker, "format": format});
        let (status, v) = self.request("POST", "/streams".into(), Some(body)).await?;
        if status != 201 {
            return Err(format!(
                "rtp2ws refused the {speaker} leg: {status} {}",
                v["error"].as_str().unwrap_or("")
            ));
        }
        match (v["id"].as_str(), v["port"].as_u64()) {
            (Some(id), Some(port)) if port > 0 && port <= 65_535 => {
                Ok((id.to_owned(), port as u16))
            }
            _ => Err(format!("rtp2ws answered 201 without id and port: {v}")),
        }
    }

    /// Releases a leg (after its audio reached stt); `Ok(false)` when
    /// rtp2ws had already closed it (idle).
    pub async fn close(self: &Arc<Self>, leg: &str) -> Result<bool, String> {
        let (status, v) = self
            .request("DELETE", format!("/streams/{leg}"), None)
            .await?;
        match status {
            204 => Ok(true),
            404 => Ok(false),
            _ => Err(format!("rtp2ws DELETE /streams/{leg}: {status} {v}")),
        }
    }

    /// Every open leg as (id, callId).
    pub async fn legs(self: &Arc<Self>) -> Result<Vec<(String, String)>, String> {
        let (status, v) = self.request("GET", "/streams".into(), None).await?;
        if status != 200 {
            return Err(format!("rtp2ws GET /streams: {status}"));
        }
        Ok(v["streams"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        Some((
                            s["id"].as_str()?.to_owned(),
                            s["callId"].as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}
