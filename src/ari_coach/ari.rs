//! The ARI REST client: the few requests ari-coach makes, as documented in
//! the ARI reference (`rest-api/api-docs/*.json`) and observed on Asterisk
//! 23 (`../shared/notes/asterisk-ari.md`). Requests are blocking (ureq) and
//! run on tokio's blocking pool, off the async workers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::setting::Secret;

/// A failed ARI request: Asterisk answered with an error status, or could
/// not be reached.
#[derive(Debug, thiserror::Error)]
pub enum AriError {
    #[error("ARI {method} {path}: {status} {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("ARI {method} {path}: {reason}")]
    Transport {
        method: &'static str,
        path: String,
        reason: String,
    },
}

impl AriError {
    /// The object was already gone (404): for teardown, that is success.
    pub fn is_gone(&self) -> bool {
        matches!(self, AriError::Status { status: 404, .. })
    }

    /// 422 "Channel not in Stasis application": the channel exists but its
    /// `StasisStart` has not happened yet (Asterisk answers snoop and
    /// externalMedia before it), or it left the app.
    pub fn not_in_stasis(&self) -> bool {
        matches!(self, AriError::Status { status: 422, .. })
    }
}

pub type AriResult<T> = Result<T, AriError>;

/// Percent-encodes one path segment (channel and bridge ids come from
/// Asterisk or the dialplan and may hold any character).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Connection to one Asterisk's ARI.
pub struct Ari {
    agent: ureq::Agent,
    /// e.g. `http://localhost:8088/ari`, no trailing slash.
    base: String,
    auth: String,
    pub app: String,
}

/// The parts of an ARI Channel object ari-coach reads.
#[derive(Debug, Clone, Default)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub caller_name: String,
    pub caller_number: String,
}

impl Channel {
    pub fn from_json(v: &Value) -> Self {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default();
        Self {
            id: s("/id").to_owned(),
            name: s("/name").to_owned(),
            caller_name: s("/caller/name").to_owned(),
            caller_number: s("/caller/number").to_owned(),
        }
    }

    /// The caller id as one string: `Name <number>`, or whichever is known.
    pub fn caller_id(&self) -> String {
        match (self.caller_name.is_empty(), self.caller_number.is_empty()) {
            (false, false) => format!("{} <{}>", self.caller_name, self.caller_number),
            (true, false) => self.caller_number.clone(),
            (false, true) => self.caller_name.clone(),
            (true, true) => String::new(),
        }
    }

    /// The endpoint a channel belongs to: `PJSIP/200-0000001a` -> `PJSIP/200`.
    pub fn endpoint(&self) -> String {
        match self.name.rsplit_once('-') {
            Some((head, tail))
                if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                head.to_owned()
            }
            _ => self.name.clone(),
        }
    }
}

/// One message of ARI's events socket, with the fields ari-coach reads
/// (the ARI reference's `Event` models: StasisStart, Dial, ...).
#[derive(Debug, Clone, Default)]
pub struct AriEvent {
    /// `StasisStart`, `ChannelDestroyed`, `Dial`, ...
    pub kind: String,
    /// The channel it is about (`channel`), if any.
    pub channel: Option<Channel>,
    /// `Dial`: the channel dialled.
    pub peer_id: Option<String>,
    /// `Dial`: `ANSWER`, `BUSY`, `NOANSWER`, ...
    pub dial_status: Option<String>,
    /// `ChannelDestroyed`/`ChannelHangupRequest`: the Q.850 cause.
    pub cause: Option<i64>,
    /// `StasisStart`: the application's arguments.
    pub args: Vec<String>,
    /// `PlaybackFinished`: the playback and its target (`channel:ID`).
    pub playback_id: Option<String>,
    pub playback_target: Option<String>,
}

impl AriEvent {
    /// `None` when the frame is not a JSON object with a `type`.
    pub fn parse(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            kind: s("/type")?,
            channel: v
                .get("channel")
                .filter(|c| c.is_object())
                .map(Channel::from_json),
            peer_id: s("/peer/id"),
            dial_status: s("/dialstatus"),
            cause: v.get("cause").and_then(Value::as_i64),
            args: v
                .get("args")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            playback_id: s("/playback/id"),
            playback_target: s("/playback/target_uri"),
        })
    }

    /// The id of the channel it is about.
    pub fn channel_id(&self) -> Option<&str> {
        self.channel.as_ref().map(|c| c.id.as_str())
    }

    /// The channel to route it by: its channel, the dialled peer, or the
    /// channel a playback played on.
    pub fn route(&self) -> Option<&str> {
        self.channel_id()
            .or(self.peer_id.as_deref())
            .or_else(|| self.playback_target.as_deref()?.strip_prefix("channel:"))
    }
}

/// The parts of an ARI Bridge object ari-coach reads.
#[derive(Debug, Clone, Default)]
pub struct Bridge {
    pub id: String,
    pub name: String,
    pub channels: Vec<String>,
}

impl Bridge {
    pub fn from_json(v: &Value) -> Self {
        Self {
            id: v["id"].as_str().unwrap_or_default().to_owned(),
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            channels: v["channels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

type Query = Vec<(&'static str, String)>;

impl Ari {
    pub fn new(base: &str, user: &str, pass: Option<&Secret>, app: &str) -> Arc<Self> {
        use base64::Engine;
        let credentials = format!("{user}:{}", pass.map(Secret::expose).unwrap_or_default());
        let agent = crate::net::agent(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .http_status_as_error(false)
                .build(),
        );
        Arc::new(Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            app: app.to_owned(),
        })
    }

    /// The `Authorization` header value (also used by the events socket).
    pub fn authorization(&self) -> &str {
        &self.auth
    }

    /// `ws://HOST/ari/events?app=APP&subscribeAll=false`.
    pub fn events_url(&self) -> String {
        let ws = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.base.trim_start_matches("http://"))
        };
        format!("{ws}/events?app={}&subscribeAll=false", segment(&self.app))
    }

    fn blocking(
        &self,
        method: &'static str,
        path: &str,
        query: &Query,
        body: Option<&Value>,
    ) -> AriResult<Value> {
        let url = format!("{}{path}", self.base);
        let transport = |reason: String| AriError::Transport {
            method,
            path: path.to_owned(),
            reason,
        };
        let result = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                for (k, v) in query {
                    req = req.query(*k, v);
                }
                req.header("authorization", &self.auth).call()
            }
            _ => {
                let mut req = self.agent.post(&url);
                for (k, v) in query {
                    req = req.query(*k, v);
                }
                let req = req.header("authorization", &self.auth);
                match body {
                    Some(b) => req
                        .header("content-type", "application/json")
                        .send(b.to_string().as_bytes()),
                    None => req.send_empty(),
                }
            }
        };
        let mut resp = result.map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| transport(e.to_string()))?;
        if (200..300).contains(&status) {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(AriError::Status {
            method,
            path: path.to_owned(),
            status,
            message,
        })
    }

    async fn request(
        self: &Arc<Self>,
        method: &'static str,
        path: String,
        query: Query,
        body: Option<Value>,
    ) -> AriResult<Value> {
        let ari = self.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || ari.blocking(method, &p, &query, body.as_ref()))
            .await
            .unwrap_or_else(|e| {
                Err(AriError::Transport {
                    method,
                    path,
                    reason: format!("request task failed: {e}"),
                })
            })
    }

    /// `POST /channels/{id}/answer`.
    pub async fn answer(self: &Arc<Self>, channel: &str) -> AriResult<()> {
        let path = format!("/channels/{}/answer", segment(channel));
        self.request("POST", path, vec![], None).await.map(drop)
    }

    /// `DELETE /channels/{id}`; a channel already gone counts as hung up.
    pub async fn hangup(self: &Arc<Self>, channel: &str) -> AriResult<()> {
        let path = format!("/channels/{}", segment(channel));
        match self
            .request("DELETE", path, vec![("reason_code", "16".into())], None)
            .await
        {
            Err(e) if e.is_gone() => Ok(()),
            r => r.map(drop),
        }
    }

    /// `POST /channels/{id}/continue`: back to the dialplan, after `Stasis`.
    pub async fn continue_in_dialplan(self: &Arc<Self>, channel: &str) -> AriResult<()> {
        let path = format!("/channels/{}/continue", segment(channel));
        self.request("POST", path, vec![], None).await.map(drop)
    }

    /// `GET /channels/{id}`.
    pub async fn channel(self: &Arc<Self>, channel: &str) -> AriResult<Channel> {
        let path = format!("/channels/{}", segment(channel));
        let v = self.request("GET", path, vec![], None).await?;
        Ok(Channel::from_json(&v))
    }

    /// `GET /channels`: every channel on the Asterisk.
    pub async fn channels(self: &Arc<Self>) -> AriResult<Vec<Channel>> {
        let v = self
            .request("GET", "/channels".into(), vec![], None)
            .await?;
        Ok(v.as_array()
            .map(|a| a.iter().map(Channel::from_json).collect())
            .unwrap_or_default())
    }

    /// `GET /bridges`.
    pub async fn bridges(self: &Arc<Self>) -> AriResult<Vec<Bridge>> {
        let v = self.request("GET", "/bridges".into(), vec![], None).await?;
        Ok(v.as_array()
            .map(|a| a.iter().map(Bridge::from_json).collect())
            .unwrap_or_default())
    }

    /// `POST /bridges` (mixing) with our id and a name.
    pub async fn create_bridge(self: &Arc<Self>, id: &str, name: &str) -> AriResult<()> {
        let body = serde_json::json!({"type": "mixing", "bridgeId": id, "name": name});
        self.request("POST", "/bridges".into(), vec![], Some(body))
            .await
            .map(drop)
    }

    /// `POST /bridges/{id}/addChannel?channel=a,b`.
    pub async fn add_channels(self: &Arc<Self>, bridge: &str, channels: &[&str]) -> AriResult<()> {
        let path = format!("/bridges/{}/addChannel", segment(bridge));
        self.request("POST", path, vec![("channel", channels.join(","))], None)
            .await
            .map(drop)
    }

    /// `DELETE /bridges/{id}`; a bridge already gone counts as destroyed.
    pub async fn destroy_bridge(self: &Arc<Self>, bridge: &str) -> AriResult<()> {
        let path = format!("/bridges/{}", segment(bridge));
        match self.request("DELETE", path, vec![], None).await {
            Err(e) if e.is_gone() => Ok(()),
            r => r.map(drop),
        }
    }

    /// `POST /channels`: dials `endpoint` into this app with `app_args`.
    pub async fn originate(
        self: &Arc<Self>,
        endpoint: &str,
        channel_id: &str,
        app_args: &str,
        caller_id: &str,
        timeout_secs: u64,
    ) -> AriResult<Channel> {
        let mut body = serde_json::json!({
            "endpoint": endpoint,
            "app": self.app,
            "appArgs": app_args,
            "channelId": channel_id,
            "timeout": timeout_secs,
        });
        if !caller_id.is_empty() {
            body["callerId"] = caller_id.into();
        }
        let v = self
            .request("POST", "/channels".into(), vec![], Some(body))
            .await?;
        Ok(Channel::from_json(&v))
    }

    /// `POST /channels/{id}/snoop?spy=in`: a channel carrying the audio
    /// coming from `channel` (its party's own voice), in this app.
    pub async fn snoop(
        self: &Arc<Self>,
        channel: &str,
        snoop_id: &str,
        app_args: &str,
    ) -> AriResult<Channel> {
        let path = format!("/channels/{}/snoop", segment(channel));
        let query = vec![
            ("spy", "in".to_owned()),
            ("app", self.app.clone()),
            ("appArgs", app_args.to_owned()),
            ("snoopId", snoop_id.to_owned()),
        ];
        let v = self.request("POST", path, query, None).await?;
        Ok(Channel::from_json(&v))
    }

    /// `POST /channels/externalMedia`: RTP of `format` sent to `host:port`.
    pub async fn external_media(
        self: &Arc<Self>,
        channel_id: &str,
        external_host: &str,
        format: &str,
    ) -> AriResult<Channel> {
        let query = vec![
            ("app", self.app.clone()),
            ("external_host", external_host.to_owned()),
            ("format", format.to_owned()),
            ("channelId", channel_id.to_owned()),
        ];
        let v = self
            .request("POST", "/channels/externalMedia".into(), query, None)
            .await?;
        Ok(Channel::from_json(&v))
    }

    /// The subscription path and its `eventSource` list for these channels.
    fn subscription(&self, channels: &[&str]) -> (String, String) {
        let path = format!("/applications/{}/subscription", segment(&self.app));
        let sources = channels
            .iter()
            .map(|c| format!("channel:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        (path, sources)
    }

    /// `POST /applications/{app}/subscription?eventSource=channel:ID`: this
    /// app then receives the events of a channel it does not own.
    pub async fn subscribe(self: &Arc<Self>, channels: &[&str]) -> AriResult<()> {
        let (path, sources) = self.subscription(channels);
        self.request("POST", path, vec![("eventSource", sources)], None)
            .await
            .map(drop)
    }

    /// `DELETE /applications/{app}/subscription?eventSource=channel:ID`.
    pub async fn unsubscribe(self: &Arc<Self>, channels: &[&str]) -> AriResult<()> {
        let (path, sources) = self.subscription(channels);
        match self
            .request("DELETE", path, vec![("eventSource", sources)], None)
            .await
        {
            Err(e) if e.is_gone() => Ok(()),
            // 422: already not subscribed.
            Err(AriError::Status { status: 422, .. }) => Ok(()),
            r => r.map(drop),
        }
    }

    /// `POST /channels/{id}/play?media=...`.
    pub async fn play(
        self: &Arc<Self>,
        channel: &str,
        media: &str,
        playback_id: &str,
    ) -> AriResult<()> {
        let path = format!("/channels/{}/play", segment(channel));
        let query = vec![
            ("media", media.to_owned()),
            ("playbackId", playback_id.to_owned()),
        ];
        self.request("POST", path, query, None).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_strips_the_channel_suffix() {
        let c = |name: &str| Channel {
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(c("PJSIP/200-0000001a").endpoint(), "PJSIP/200");
        assert_eq!(c("PJSIP/agent-7-00000002").endpoint(), "PJSIP/agent-7");
        assert_eq!(c("SIP/trunk").endpoint(), "SIP/trunk");
    }

    #[test]
    fn events_url_and_segments() {
        let ari = Ari::new("http://localhost:8088/ari/", "coach", None, "co ach");
        assert_eq!(
            ari.events_url(),
            "ws://localhost:8088/ari/events?app=co%20ach&subscribeAll=false"
        );
        assert_eq!(segment("1732.12-agent"), "1732.12-agent");
        assert_eq!(segment("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn caller_id_in_words() {
        let mut c = Channel {
            caller_name: "Cliente".into(),
            caller_number: "5551234".into(),
            ..Default::default()
        };
        assert_eq!(c.caller_id(), "Cliente <5551234>");
        c.caller_name.clear();
        assert_eq!(c.caller_id(), "5551234");
    }
}
