//! The relay's index of calls: last `seq` per call (the writer numbers from
//! it) and what `call.started`/`call.ended` said, for `GET /calls` and for
//! agent-scoped tokens. The writer updates it after each commit; it is
//! rebuilt from the store's `calls` table at start.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::event::{Envelope, Event, rfc3339_millis};

/// What the relay knows about one call.
#[derive(Debug, Clone, Default)]
pub struct CallInfo {
    pub call_id: String,
    /// Highest `seq` stored for the call.
    pub last_seq: i64,
    /// When its latest event was stored (Unix ms).
    pub last_ms: i64,
    /// When `call.started` was stored, if it was.
    pub started_ms: Option<i64>,
    /// When `call.ended` was stored, if it was.
    pub ended_ms: Option<i64>,
    pub agent: Option<String>,
    pub caller: Option<String>,
    pub direction: Option<String>,
    pub end_reason: Option<String>,
}

impl CallInfo {
    pub fn new(call_id: &str) -> Self {
        Self {
            call_id: call_id.to_owned(),
            ..Self::default()
        }
    }

    /// Takes note of a call's lifecycle events. A `call.started` counts
    /// even when its fields do not decode; a field it leaves out (or empty)
    /// keeps what an earlier one said.
    pub fn observe(&mut self, event: &Envelope, now_ms: i64) {
        match event.event_type() {
            "call.started" => {
                self.started_ms = Some(now_ms);
                self.ended_ms = None;
                self.end_reason = None;
                if let Some(Event::CallStarted(s)) = event.decode() {
                    let given = |v: String| (!v.is_empty()).then_some(v);
                    self.agent = given(s.agent).or(self.agent.take());
                    self.caller = given(s.caller).or(self.caller.take());
                    self.direction = given(s.direction).or(self.direction.take());
                }
            }
            "call.ended" => {
                self.ended_ms = Some(now_ms);
                self.end_reason = match event.decode() {
                    Some(Event::CallEnded(e)) => Some(e.reason),
                    _ => None,
                };
            }
            _ => {}
        }
    }
}

/// When a call counts as active.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    /// A call with no `call.started` is active while its last event is at
    /// most this old (ms).
    pub recent_ms: i64,
    /// A started call with no `call.ended` stops counting as active after
    /// this long without events (ms): its `call.ended` was lost.
    pub stale_ms: i64,
}

/// One row of `GET /calls`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveCall {
    pub call_id: String,
    pub last_seq: i64,
    pub last_event_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
}

#[derive(Default)]
pub struct Calls {
    by_id: Mutex<HashMap<String, CallInfo>>,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallInfo>> {
        // A panic while holding the lock cannot leave a CallInfo half
        // written in a way that matters; keep serving.
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn load(&self, calls: Vec<CallInfo>) {
        let mut map = self.lock();
        for c in calls {
            map.insert(c.call_id.clone(), c);
        }
    }

    /// Calls known.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn get(&self, call_id: &str) -> Option<CallInfo> {
        self.lock().get(call_id).cloned()
    }

    pub fn update(&self, calls: impl IntoIterator<Item = CallInfo>) {
        let mut map = self.lock();
        for c in calls {
            map.insert(c.call_id.clone(), c);
        }
    }

    pub fn forget(&self, ids: &[String]) {
        let mut map = self.lock();
        for id in ids {
            map.remove(id);
        }
    }

    /// The agent a call was started for, if known.
    pub fn agent_of(&self, call_id: &str) -> Option<String> {
        self.lock().get(call_id).and_then(|c| c.agent.clone())
    }

    /// Active calls, oldest first, among those `visible` allows.
    pub fn active(
        &self,
        now_ms: i64,
        activity: Activity,
        visible: impl Fn(&CallInfo) -> bool,
    ) -> Vec<ActiveCall> {
        let map = self.lock();
        let mut out: Vec<&CallInfo> = map
            .values()
            .filter(|c| {
                let idle = now_ms - c.last_ms;
                c.ended_ms.is_none()
                    && if c.started_ms.is_some() {
                        idle <= activity.stale_ms
                    } else {
                        idle <= activity.recent_ms
                    }
            })
            .filter(|c| visible(c))
            .collect();
        out.sort_by_key(|c| (c.started_ms.unwrap_or(c.last_ms), c.call_id.clone()));
        out.into_iter()
            .map(|c| ActiveCall {
                call_id: c.call_id.clone(),
                last_seq: c.last_seq,
                last_event_at: rfc3339_millis(c.last_ms),
                started_at: c.started_ms.map(rfc3339_millis),
                agent: c.agent.clone(),
                caller: c.caller.clone(),
                direction: c.direction.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> Envelope {
        Envelope::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn lifecycle_and_activity() {
        let calls = Calls::default();
        let act = Activity {
            recent_ms: 1_000,
            stale_ms: 10_000,
        };
        let mut a = CallInfo::new("a");
        a.observe(
            &ev(r#"{"type":"call.started","callId":"a","agent":"PJSIP/200","caller":"600"}"#),
            100,
        );
        a.last_ms = 100;
        let mut b = CallInfo::new("b");
        b.last_ms = 100;
        calls.update([a.clone(), b]);
        let ids = |now| -> Vec<String> {
            calls
                .active(now, act, |_| true)
                .into_iter()
                .map(|c| c.call_id)
                .collect()
        };
        assert_eq!(ids(500), ["a", "b"]);
        // b had no call.started: only recent activity keeps it listed.
        assert_eq!(ids(5_000), ["a"]);
        assert_eq!(ids(20_000), Vec::<String>::new());
        a.observe(
            &ev(r#"{"type":"call.ended","callId":"a","reason":"hangup"}"#),
            200,
        );
        calls.update([a]);
        assert_eq!(ids(500), ["b"]);
        assert_eq!(calls.agent_of("a").as_deref(), Some("PJSIP/200"));
    }

    #[test]
    fn a_later_or_odd_call_started_keeps_what_is_known() {
        let mut a = CallInfo::new("a");
        a.observe(
            &ev(r#"{"type":"call.started","callId":"a","agent":"PJSIP/200","caller":"600"}"#),
            100,
        );
        // A second one without a caller, then one whose agent is no string.
        a.observe(
            &ev(r#"{"type":"call.started","callId":"a","agent":"PJSIP/201"}"#),
            200,
        );
        assert_eq!(
            (a.agent.as_deref(), a.caller.as_deref()),
            (Some("PJSIP/201"), Some("600"))
        );
        a.observe(
            &ev(r#"{"type":"call.started","callId":"a","agent":5}"#),
            300,
        );
        assert_eq!(a.started_ms, Some(300));
        assert_eq!(a.agent.as_deref(), Some("PJSIP/201"));
        a.observe(
            &ev(r#"{"type":"call.ended","callId":"a","reason":"hangup"}"#),
            400,
        );
        assert_eq!(
            (a.ended_ms, a.end_reason.as_deref()),
            (Some(400), Some("hangup"))
        );
    }
}
