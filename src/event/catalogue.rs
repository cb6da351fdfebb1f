//! The catalogue: one type per event the services exchange through the
//! relay (docs/contract.md "Events"). Producers build these; consumers
//! decode them with [`Received::parse`]. The JSON is the wire format: field
//! names and order are those of the contract, and optional fields are left
//! out when absent.
//!
//! Decoding is lenient where the contract asks for it: a field this build
//! does not know is ignored, and a `type` it does not know is kept as
//! [`Received::event`] `None` (the relay passes unknown types through, and
//! so must every consumer).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who spoke: one leg of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    Agent,
    Customer,
    Mix,
}

impl Speaker {
    pub const ALL: [Speaker; 3] = [Speaker::Agent, Speaker::Customer, Speaker::Mix];

    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::Agent => "agent",
            Speaker::Customer => "customer",
            Speaker::Mix => "mix",
        }
    }

    /// `agent`, `customer` or `mix`.
    pub fn parse(s: &str) -> Option<Speaker> {
        Speaker::ALL.into_iter().find(|sp| sp.as_str() == s)
    }
}

impl std::fmt::Display for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent a tip is; the web UI colours and announces by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Critical => "critical",
        }
    }
}

/// Where a tip or a summary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Rules,
    Llm,
}

/// Every event type of the catalogue, tagged by `type` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "call.started")]
    CallStarted(CallStarted),
    #[serde(rename = "call.ended")]
    CallEnded(CallEnded),
    #[serde(rename = "call.tap")]
    CallTap(CallTap),
    #[serde(rename = "transcript")]
    Transcript(Transcript),
    /// Extension: a party started speaking (stt's voice detection, in real
    /// time, however far transcription lags).
    #[serde(rename = "speech")]
    Speech(Speech),
    #[serde(rename = "tip")]
    Tip(Tip),
    #[serde(rename = "checklist")]
    Checklist(Checklist),
    #[serde(rename = "metrics")]
    Metrics(Metrics),
    #[serde(rename = "summary")]
    Summary(Summary),
    /// Sent by the relay to a subscriber it drops as too slow (no `callId`).
    #[serde(rename = "relay.dropped")]
    RelayDropped(RelayDropped),
}

impl Event {
    /// The `type` on the wire (serde writes it; the tests compare).
    #[cfg(test)]
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::CallStarted(_) => "call.started",
            Event::CallEnded(_) => "call.ended",
            Event::CallTap(_) => "call.tap",
            Event::Transcript(_) => "transcript",
            Event::Speech(_) => "speech",
            Event::Tip(_) => "tip",
            Event::Checklist(_) => "checklist",
            Event::Metrics(_) => "metrics",
            Event::Summary(_) => "summary",
            Event::RelayDropped(_) => "relay.dropped",
        }
    }

    /// The call it belongs to (`""` for the relay's own notices).
    pub fn call_id(&self) -> &str {
        match self {
            Event::CallStarted(e) => &e.call_id,
            Event::CallEnded(e) => &e.call_id,
            Event::CallTap(e) => &e.call_id,
            Event::Transcript(e) => &e.call_id,
            Event::Speech(e) => &e.call_id,
            Event::Tip(e) => &e.call_id,
            Event::Checklist(e) => &e.call_id,
            Event::Metrics(e) => &e.call_id,
            Event::Summary(e) => &e.call_id,
            Event::RelayDropped(_) => "",
        }
    }

    /// A partial transcript or a tip still streaming: what a full buffer
    /// may drop first, since a newer one replaces it.
    pub fn is_partial(&self) -> bool {
        match self {
            Event::Transcript(t) => !t.is_final,
            Event::Tip(t) => !t.is_final,
            _ => false,
        }
    }

    /// The JSON text of the event, as posted to the relay.
    pub fn to_json(&self) -> String {
        // Cannot fail for these types: every map has string keys, and
        // serde_json writes a non-finite float as null.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A call began: published by ari-coach (or the demo standing in for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallStarted {
    pub call_id: String,
    /// The agent's endpoint, e.g. `PJSIP/200`.
    #[serde(default)]
    pub agent: String,
    /// The caller id.
    #[serde(default)]
    pub caller: String,
    #[serde(default)]
    pub direction: String,
    /// Extension: `inbound`, `attach` or `adopted` (ari-coach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Extension: the Asterisk channel of each party (ari-coach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Channels>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channels {
    pub customer: String,
    pub agent: Option<String>,
}

/// A call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallEnded {
    pub call_id: String,
    /// `customer-hangup`, `agent-hangup`, `no-answer`, ... (README).
    #[serde(default = "ended")]
    pub reason: String,
    /// Extension: whether the agent answered (ari-coach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered: Option<bool>,
    /// Extension: from the answer to the end, when answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Extension: who called whom, when the agent never answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

impl CallEnded {
    pub fn new(call_id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            call_id: call_id.into(),
            reason: reason.into(),
            answered: None,
            duration_ms: None,
            caller: None,
            agent: None,
        }
    }
}

fn ended() -> String {
    "ended".into()
}

/// Extension: a party's audio tap failed, or was rebuilt (ari-coach).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallTap {
    pub call_id: String,
    pub speaker: Speaker,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<bool>,
}

/// Words of one party: partials while they speak, then one final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transcript {
    pub call_id: String,
    pub speaker: Speaker,
    #[serde(default)]
    pub text: String,
    #[serde(rename = "final", default)]
    pub is_final: bool,
    /// Shared by the partials and the final of one utterance.
    #[serde(default)]
    pub utterance_id: String,
    /// From the start of that leg's audio.
    #[serde(default)]
    pub start_ms: u64,
    #[serde(default)]
    pub end_ms: u64,
    /// Extension: from the decode request to the result, inside stt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Extension: how far behind the audio this event is: from the arrival
    /// at stt of the audio at `endMs` to this event leaving stt (for a
    /// final, the end-of-speech wait included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// Extension, finals only: why this utterance has no words although
    /// someone spoke (`overload`: stt gave up on it, too far behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
    /// Extension, finals only: what ended the utterance: `pause` (the
    /// end-of-speech wait, `stt.end_silence_ms`, or the shorter pause
    /// of a long turn, `stt.long_pause_ms` down to 100 ms over
    /// `stt.long_pause_ramp_ms`), `sentence` (the shorter
    /// wait after a finished sentence), `split` (`stt.max_utterance_ms`)
    /// or `stream` (the audio stream ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// Extension, finals only: `true` on a second final of the same
    /// utterance, decoded again the careful way while stt had nothing else
    /// to do (`stt.revise_finals`), whose text differs from the first. It
    /// replaces the first final's text; its span and `endedBy` are the
    /// first's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised: Option<bool>,
}

/// Extension: a party started speaking. stt sends it as soon as its voice
/// detection is sure (a fraction of a second into the utterance), before
/// and independently of any transcription; the final `transcript` with the
/// same `utteranceId` closes the utterance (an empty final when the sound
/// turned out not to be speech). Consumers use it to tell silence from
/// speech not yet transcribed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Speech {
    pub call_id: String,
    pub speaker: Speaker,
    pub utterance_id: String,
    /// From the start of that leg's audio.
    #[serde(default)]
    pub start_ms: u64,
}

/// Coaching for the agent; LLM tips stream (same `tipId`, `final` last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tip {
    pub call_id: String,
    pub tip_id: String,
    pub text: String,
    pub source: Source,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub severity: Severity,
    /// Extension: the rule that fired (`source` `rules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Extension: the words or figure that set it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Extension: the transcript whose words set it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utterance_id: Option<String>,
    /// Extension: the rule's title, for people (`rule` is its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Extension: `title` and `text` in other languages, by code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub i18n: BTreeMap<String, Localized>,
}

/// Extension: an event's words in another language (`i18n.en`); each
/// field translates the event's field of the same name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Localized {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Extension: the call's checklist, whole, each time an item changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checklist {
    pub call_id: String,
    pub items: Vec<ChecklistItem>,
}

/// One checklist item as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChecklistItem {
    pub id: String,
    pub label: String,
    pub done: bool,
    /// Call time when it was said (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// Past its deadline and still not said.
    #[serde(default)]
    pub overdue: bool,
    /// Extension: `label` in other languages, by code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub i18n: BTreeMap<String, Localized>,
}

/// Live figures of a call, every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    pub call_id: String,
    #[serde(flatten)]
    pub figures: Figures,
    /// Call time of these figures (ms since the call started).
    pub call_ms: u64,
}

/// The figures of [`Metrics`] (also inside [`Summary`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub agent_talk_ratio: f64,
    /// The ratio over the last two minutes.
    #[serde(rename = "agentTalkRatio2m")]
    pub agent_talk_ratio_2m: f64,
    pub agent_wpm: f64,
    pub customer_wpm: f64,
    pub silence_ms: u64,
    pub overtalk_ms: u64,
    pub longest_agent_monologue_ms: u64,
    pub customer_questions: u64,
    pub agent_speech_ms: u64,
    pub customer_speech_ms: u64,
}

/// After the call: from the rules at once, then (with an LLM) a fuller one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub call_id: String,
    pub text: String,
    pub source: Source,
    /// Why the call ended (its `call.ended` reason, or why the
    /// orchestrator closed it).
    pub reason: String,
    pub agent: Option<String>,
    pub duration_ms: u64,
    pub metrics: Figures,
    /// Rule id -> how often it fired.
    pub rules_fired: BTreeMap<String, u64>,
    pub checklist: Vec<ChecklistItem>,
    /// LLM summaries: the customer's reason for calling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_ups: Option<String>,
    /// Extension: `text` in other languages, by code (rules summaries).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub i18n: BTreeMap<String, Localized>,
}

/// The relay's last frame to a subscriber it drops as too slow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayDropped {
    pub reason: String,
    /// Resume with `since=` this cursor.
    pub since: i64,
}

/// An event as a subscriber receives it: the relay's numbering and the
/// event, when its type is one of the catalogue's.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Per call, from 1, gap-free.
    pub seq: Option<i64>,
    /// Relay-wide position (the cursor for `callId=*`).
    pub pos: Option<i64>,
    /// RFC 3339 UTC.
    pub ts: Option<String>,
    pub call_id: String,
    /// The `type` on the wire, known or not.
    pub type_name: String,
    /// `None` for a type this build does not know, or one whose fields do
    /// not decode (logged at debug level).
    pub event: Option<Event>,
}

impl Received {
    /// Decodes one websocket text frame from the relay. `None` when it is
    /// not a JSON object with a `type`.
    pub fn parse(text: &str) -> Option<Received> {
        let value: Value = serde_json::from_str(text).ok()?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Option<Received> {
        let Value::Object(map) = &value else {
            return None;
        };
        let int = |k: &str| map.get(k).and_then(Value::as_i64);
        let str_of = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
        let type_name = str_of("type")?;
        let (seq, pos, ts) = (int("seq"), int("pos"), str_of("ts"));
        let call_id = str_of("callId").unwrap_or_default();
        let event = match serde_json::from_value::<Event>(value) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::debug!(r#type = %type_name, error = %e, "event not in the catalogue");
                None
            }
        };
        Some(Received {
            seq,
            pos,
            ts,
            call_id,
            type_name,
            event,
        })
    }
}
