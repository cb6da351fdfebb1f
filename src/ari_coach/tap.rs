//! Tapping one party of a call: an rtp2ws leg (`POST /streams`), a snoop on
//! the party's channel (`spy=in`: that party's own voice), an ExternalMedia
//! channel sending RTP to the leg's port, and a bridge joining the two.
//! Every piece is undone on failure and on teardown, gone pieces counting
//! as removed, so that both can run any number of times.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::ari::Ari;
use super::names;

/// rtp2ws's control API (`RTP2WS_CONTROL`).
pub struct Rtp2ws {
    agent: ureq::Agent,
    base: String,
}

impl Rtp2ws {
    pub fn new(control: std::net::SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            agent: ureq::Agent::config_builder()
                // DELETE waits for the leg's audio to reach stt.
                .timeout_global(Some(Duration::from_secs(70)))
                .http_status_as_error(false)
                .build()
                .into(),
            base: format!("http://{control}"),
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

    /// Releases a leg (after its audio reached stt); a leg already gone is fine.
    pub async fn close(self: &Arc<Self>, leg: &str) -> Result<(), String> {
        let (status, v) = self
            .request("DELETE", format!("/streams/{leg}"), None)
            .await?;
        match status {
            204 | 404 => Ok(()),
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

/// How taps are made (from the settings).
#[derive(Clone)]
pub struct TapConfig {
    /// ExternalMedia format (`slin16`, `slin`, `ulaw`, `alaw`).
    pub format: String,
    /// Host Asterisk sends RTP to: where rtp2ws's UDP ports listen.
    pub rtp_host: String,
    /// Compatibility mode: fixed ports `base_port+1` (agent) and
    /// `base_port+2` (customer) instead of asking rtp2ws for legs.
    pub fixed_ports: Option<u16>,
}

/// One party's tap, as far as it got.
#[derive(Debug, Clone)]
pub struct Tap {
    pub speaker: &'static str,
    /// The channel listened to.
    pub snooped: String,
    pub leg: Option<String>,
    /// Names Asterisk gave this tap's snoop and ExternalMedia channels
    /// (`Snoop/...-0000001f`): unique per instance, unlike the ids, which
    /// a rebuilt tap reuses. Events of an earlier instance do not match.
    pub channel_names: Vec<String>,
}

impl Tap {
    /// Builds the whole tap; on failure removes what was built and says why.
    pub async fn create(
        ari: &Arc<Ari>,
        rtp2ws: &Arc<Rtp2ws>,
        cfg: &TapConfig,
        call: &str,
        speaker: &'static str,
        snooped: &str,
    ) -> Result<Tap, String> {
        let mut tap = Tap {
            speaker,
            snooped: snooped.to_owned(),
            leg: None,
            channel_names: Vec::new(),
        };
        match tap.build(ari, rtp2ws, cfg, call).await {
            Ok(()) => Ok(tap),
            Err(e) => {
                tap.remove(ari, rtp2ws, call).await;
                Err(e)
            }
        }
    }

    async fn build(
        &mut self,
        ari: &Arc<Ari>,
        rtp2ws: &Arc<Rtp2ws>,
        cfg: &TapConfig,
        call: &str,
    ) -> Result<(), String> {
        let port = match cfg.fixed_ports {
            Some(base) => base + if self.speaker == "agent" { 1 } else { 2 },
            None => {
                let (leg, port) = rtp2ws.open(call, self.speaker, &cfg.format).await?;
                self.leg = Some(leg);
                port
            }
        };
        let snoop = names::snoop(call, self.speaker);
        let em = names::external_media(call, self.speaker);
        let bridge = names::tap_bridge(call, self.speaker);
        ari.snoop(
            &self.snooped,
            &snoop,
            &format!("snoop,{call},{}", self.speaker),
        )
        .await
        .map_err(|e| e.to_string())?;
        ari.external_media(&em, &format!("{}:{port}", cfg.rtp_host), &cfg.format)
            .await
            .map_err(|e| e.to_string())?;
        ari.create_bridge(&bridge, &names::tap_bridge_name(&self.snooped))
            .await
            .map_err(|e| e.to_string())?;
        ari.add_channels(&bridge, &[&snoop, &em])
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Whether an event's channel is this instance's snoop or ExternalMedia.
    pub fn owns(&self, channel_name: &str) -> bool {
        self.channel_names.iter().any(|n| n == channel_name)
    }

    /// Hangs up the snoop and the ExternalMedia channel, destroys the tap
    /// bridge and releases the leg. Failures are logged; what is left is
    /// found by the next reconcile.
    pub async fn remove(&mut self, ari: &Arc<Ari>, rtp2ws: &Arc<Rtp2ws>, call: &str) {
        remove_ari_pieces(ari, call, self.speaker).await;
        if let Some(leg) = self.leg.take()
            && let Err(e) = rtp2ws.close(&leg).await
        {
            tracing::warn!(call, leg, "releasing the rtp2ws leg failed: {e}");
        }
    }
}

/// The ARI half of a tap's removal, by name alone (also for taps left by an
/// earlier run).
pub async fn remove_ari_pieces(ari: &Arc<Ari>, call: &str, speaker: &str) {
    let (snoop, em, bridge) = (
        names::snoop(call, speaker),
        names::external_media(call, speaker),
        names::tap_bridge(call, speaker),
    );
    let (a, b, c) = tokio::join!(
        ari.hangup(&snoop),
        ari.hangup(&em),
        ari.destroy_bridge(&bridge)
    );
    for (what, r) in [(snoop, a), (em, b), (bridge, c)] {
        if let Err(e) = r {
            tracing::warn!(call, "removing {what} failed: {e}");
        }
    }
}
