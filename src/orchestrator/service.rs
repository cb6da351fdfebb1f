//! The orchestrator's loop: follow the relay (every call, or one), keep
//! each call's metrics and rules state, publish what they produce, and
//! summarise each call when it ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::llm::{self, LlmCoach, LlmConfig};
use super::metrics::CallMetrics;
use super::rules::{CallRules, Fired, RuleSet, RulesError};
use super::{RulesMode, Settings};
use crate::publish::{PublishStats, Publisher};

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("orchestrator.relay_ws {0:?} is not a ws:// URL")]
    BadUrl(String),
}

/// What the orchestrator keeps per call.
struct Call {
    started: Instant,
    last_event: Instant,
    agent: Option<String>,
    metrics: CallMetrics,
    rules: CallRules,
    tips: u64,
    /// Rule id -> how often it fired.
    fired: HashMap<String, u64>,
    /// The last final utterances, speaker-labelled (agent = true), for the
    /// LLM prompt.
    recent: std::collections::VecDeque<(bool, String)>,
    /// When the LLM should be asked (after the debounce), and when it last was.
    llm_due: Option<Instant>,
    llm_last: Option<Instant>,
}

/// Final utterances kept for the LLM prompt.
const RECENT_UTTERANCES: usize = 12;

impl Call {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            last_event: now,
            agent: None,
            metrics: CallMetrics::default(),
            rules: CallRules::default(),
            tips: 0,
            fired: HashMap::new(),
            recent: std::collections::VecDeque::new(),
            llm_due: None,
            llm_last: None,
        }
    }

    fn elapsed_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }
}

/// The subscription URL: `relay_ws` as it is with `single_call`, else the
/// same relay's all-calls stream; `since` resumes after a reconnect.
fn subscription_url(s: &Settings, since: Option<i64>) -> Result<String, OrchestratorError> {
    if !s.relay_ws.starts_with("ws://") {
        return Err(OrchestratorError::BadUrl(s.relay_ws.clone()));
    }
    let (base, query) = s.relay_ws.split_once('?').unwrap_or((&s.relay_ws, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("since="))
        .filter(|p| s.single_call || !p.starts_with("callId="))
        .map(str::to_owned)
        .collect();
    if !s.single_call {
        params.push("callId=*".into());
    }
    if let Some(pos) = since {
        params.push(format!("since={pos}"));
    }
    Ok(format!("{base}?{}", params.join("&")))
}

/// Where events go: tips, checklists and summaries on one publisher, the
/// periodic metrics on another, so a burst of metrics (every call at each
/// tick) never delays a tip.
struct Out {
    urgent: Arc<Publisher>,
    bulk: Arc<Publisher>,
    /// The LLM coach, when one is configured.
    llm: Option<LlmCoach>,
    /// Language of the LLM prompts.
    language: String,
}

impl Out {
    fn send(&self, event: Value) {
        self.urgent.send(event);
    }

    fn metrics(&self, event: Value) {
        self.bulk.send(event);
    }
}

/// Runs until `shutdown`.
pub async fn serve(
    settings: &crate::config::Settings,
    shutdown: CancellationToken,
) -> Result<(), OrchestratorError> {
    let s = settings.orchestrator.clone();
    let rules = Arc::new(match &s.rules_file {
        Some(path) => RuleSet::load(path, s.rules_mode == RulesMode::Extend)?,
        None => RuleSet::default_set(),
    });
    subscription_url(&s, None)?;
    let stats = Arc::new(PublishStats::default());
    let (urgent, urgent_thread) = Publisher::start(
        s.relay_event.clone(),
        s.relay_token.clone(),
        10_000,
        stats.clone(),
    );
    let (bulk, bulk_thread) =
        Publisher::start(s.relay_event.clone(), s.relay_token.clone(), 10_000, stats);
    let llm = s.llm_enabled().then(|| {
        LlmCoach::start(
            LlmConfig {
                base_url: s.llm_base_url.clone(),
                model: s.openrouter_model.clone(),
                api_key: s.openrouter_api_key.clone(),
                timeout: Duration::from_secs(s.llm_timeout_secs.max(1)),
                max_concurrent: s.llm_max_concurrent,
                daily_token_budget: s.llm_daily_token_budget,
            },
            urgent.clone(),
        )
    });
    let publisher = Out {
        urgent: urgent.clone(),
        bulk: bulk.clone(),
        llm,
        language: s.language.clone(),
    };
    tracing::info!(
        rules = rules.rules.len(),
        checklist = rules.checklist.len(),
        llm = publisher.llm.is_some(),
        "orchestrator started"
    );
    crate::systemd::ready("orchestrator following the relay");
    crate::systemd::spawn_watchdog(shutdown.clone(), || true);

    let mut calls: HashMap<String, Call> = HashMap::new();
    let mut ended = Ended::default();
    let mut cursor: Option<i64> = None;
    let mut backoff = Duration::from_millis(200);
    let every = Duration::from_secs(s.metrics_every_secs.max(1));
    let mut tick = tokio::time::interval(every);
    let mut llm_tick = tokio::time::interval(Duration::from_millis(250));
    'connect: while !shutdown.is_cancelled() {
        let url = subscription_url(&s, cursor)?;
        let mut req = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(_) => return Err(OrchestratorError::BadUrl(url)),
        };
        if let Some(t) = &s.relay_token
            && let Ok(v) = format!("Bearer {}", t.expose()).parse()
        {
            req.headers_mut().insert("authorization", v);
        }
        let mut ws = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio_tungstenite::connect_async(req) => match r {
                Ok((ws, _)) => ws,
                Err(e) => {
                    tracing::warn!(error = %e, "relay unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        tracing::info!(%url, "following the relay");
        crate::systemd::notify("STATUS=following the relay");
        backoff = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                _ = tick.tick() => tick_all(&mut calls, &rules, &publisher, &s),
                _ = llm_tick.tick(), if publisher.llm.is_some() => {
                    if let Some(coach) = &publisher.llm {
                        ask_llm(&mut calls, coach, &s);
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let Ok(ev) = serde_json::from_str::<Value>(&text) else { continue };
                        // Resume by relay position for all calls, by seq
                        // for one.
                        let key = if s.single_call { "seq" } else { "pos" };
                        if let Some(pos) = ev[key].as_i64() {
                            cursor = Some(cursor.map_or(pos, |c| c.max(pos)));
                        }
                        if ev["type"] == "relay.dropped" {
                            tracing::warn!("the relay dropped us as too slow; resuming");
                            continue 'connect;
                        }
                        handle(&mut calls, &mut ended, &rules, &publisher, &ev, &s);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        tracing::warn!("lost the relay; reconnecting");
                        continue 'connect;
                    }
                },
            }
        }
    }
    // Calls still open get their summary before we go.
    let open: Vec<String> = calls.keys().cloned().collect();
    for id in open {
        if let Some(call) = calls.remove(&id) {
            finish(&id, call, "orchestrator stopping", &rules, &publisher);
        }
    }
    urgent.close();
    bulk.close();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = urgent_thread.join();
        let _ = bulk_thread.join();
    })
    .await;
    tracing::info!("orchestrator stopped");
    Ok(())
}

/// Calls that ended lately: a final transcript that reaches the relay
/// just after `call.ended` (stt finishing the last words while ari-coach
/// tears the call down) must not start a new call of the same id.
#[derive(Default)]
struct Ended {
    order: std::collections::VecDeque<String>,
    set: std::collections::HashSet<String>,
}

impl Ended {
    const CAP: usize = 10_000;

    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            if self.order.len() > Self::CAP
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if self.set.remove(id) {
            self.order.retain(|x| x != id);
        }
    }
}

fn handle(
    calls: &mut HashMap<String, Call>,
    ended: &mut Ended,
    rules: &RuleSet,
    publisher: &Out,
    ev: &Value,
    s: &Settings,
) {
    let llm = publisher.llm.is_some();
    let Some(call_id) = ev["callId"].as_str() else {
        return;
    };
    let now = Instant::now();
    match ev["type"].as_str().unwrap_or_default() {
        "call.started" => {
            ended.remove(call_id);
            let mut call = Call::new(now);
            call.agent = ev["agent"].as_str().map(str::to_owned);
            calls.insert(call_id.to_owned(), call);
        }
        "call.ended" => {
            ended.insert(call_id);
            if let Some(call) = calls.remove(call_id) {
                let reason = ev["reason"].as_str().unwrap_or("ended").to_owned();
                finish(call_id, call, &reason, rules, publisher);
            }
        }
        "transcript" if ended.set.contains(call_id) => {}
        "transcript" => {
            let call = calls
                .entry(call_id.to_owned())
                .or_insert_with(|| Call::new(now));
            call.last_event = now;
            let agent = ev["speaker"] == "agent";
            let text = ev["text"].as_str().unwrap_or_default();
            let is_final = ev["final"] == true;
            let (start, end) = (
                ev["startMs"].as_u64().unwrap_or(0),
                ev["endMs"].as_u64().unwrap_or(0),
            );
            call.metrics
                .transcript(agent, text, start, end, is_final, now);
            let utterance = ev["utteranceId"].as_str().unwrap_or_default();
            let at = call.elapsed_ms(now);
            let (fired, changed) = call.rules.transcript(rules, agent, text, utterance, at);
            publish_tips(call_id, call, fired, Some(utterance), publisher);
            if changed {
                publish_checklist(call_id, call, rules, publisher);
            }
            if is_final && !text.trim().is_empty() {
                call.recent.push_back((agent, text.to_owned()));
                if call.recent.len() > RECENT_UTTERANCES {
                    call.recent.pop_front();
                }
                // The customer spoke: ask the LLM once they pause.
                if llm && !agent {
                    call.llm_due = Some(now + Duration::from_millis(s.llm_debounce_ms));
                }
            }
        }
        _ => {}
    }
}

fn tick_all(calls: &mut HashMap<String, Call>, rules: &RuleSet, publisher: &Out, s: &Settings) {
    let now = Instant::now();
    let idle = Duration::from_secs(s.idle_call_secs.max(1));
    let stale: Vec<String> = calls
        .iter()
        .filter(|(_, c)| now.duration_since(c.last_event) > idle)
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(call) = calls.remove(&id) {
            finish(
                &id,
                call,
                "no events (call.ended missing)",
                rules,
                publisher,
            );
        }
    }
    for (id, call) in calls.iter_mut() {
        let snapshot = call.metrics.snapshot(now);
        let at = call.elapsed_ms(now);
        publisher.metrics(metrics_event(id, &snapshot, at));
        let (fired, changed) = call.rules.tick(rules, &snapshot, at);
        publish_tips(id, call, fired, None, publisher);
        if changed {
            publish_checklist(id, call, rules, publisher);
        }
    }
}

/// Sends the calls whose debounce has passed to the LLM, at most once per
/// `llm_min_interval_secs` per call.
fn ask_llm(calls: &mut HashMap<String, Call>, coach: &LlmCoach, s: &Settings) {
    let now = Instant::now();
    let interval = Duration::from_secs(s.llm_min_interval_secs);
    for (id, call) in calls.iter_mut() {
        let due = call.llm_due.is_some_and(|d| d <= now);
        let rested = call
            .llm_last
            .is_none_or(|t| now.duration_since(t) >= interval);
        if !(due && rested) {
            continue;
        }
        call.llm_due = None;
        call.llm_last = Some(now);
        call.tips += 1;
        let transcript: Vec<(bool, String)> = call.recent.iter().cloned().collect();
        let fired: Vec<String> = call.fired.keys().cloned().collect();
        let metrics = serde_json::to_value(call.metrics.snapshot(now)).unwrap_or_default();
        coach.request(llm::Job {
            call_id: id.clone(),
            kind: llm::JobKind::Tip {
                tip_id: format!("llm-{}", call.tips),
            },
            messages: llm::messages(&s.language, &transcript, &metrics, &fired),
        });
    }
}

fn metrics_event(call_id: &str, snapshot: &super::metrics::Snapshot, call_ms: u64) -> Value {
    let mut ev = serde_json::to_value(snapshot).unwrap_or_else(|_| json!({}));
    ev["type"] = json!("metrics");
    ev["callId"] = json!(call_id);
    ev["callMs"] = json!(call_ms);
    ev
}

/// `utterance`: the transcript whose words set the tips off (phrase rules);
/// published as `utteranceId` so the UI and the benchmark can tie a tip to
/// what was said.
fn publish_tips(
    call_id: &str,
    call: &mut Call,
    fired: Vec<Fired>,
    utterance: Option<&str>,
    publisher: &Out,
) {
    for f in fired {
        call.tips += 1;
        *call.fired.entry(f.rule.clone()).or_default() += 1;
        let mut tip = json!({
            "type": "tip",
            "callId": call_id,
            "tipId": format!("rules-{}-{}", f.rule, call.tips),
            "text": f.tip,
            "source": "rules",
            "final": true,
            "severity": f.severity,
            "rule": f.rule,
            "trigger": f.trigger,
        });
        if let Some(u) = utterance.filter(|u| !u.is_empty()) {
            tip["utteranceId"] = json!(u);
        }
        publisher.send(tip);
    }
}

fn publish_checklist(call_id: &str, call: &Call, rules: &RuleSet, publisher: &Out) {
    publisher.send(json!({
        "type": "checklist",
        "callId": call_id,
        "items": call.rules.checklist(rules),
    }));
}

/// Publishes the last metrics and the summary of a call.
fn finish(call_id: &str, call: Call, reason: &str, rules: &RuleSet, publisher: &Out) {
    let now = Instant::now();
    let m = call.metrics.snapshot(now);
    let duration_ms = call.elapsed_ms(now);
    publisher.metrics(metrics_event(call_id, &m, duration_ms));
    let checklist = call.rules.checklist(rules);
    let missing: Vec<&str> = checklist
        .iter()
        .filter(|i| !i.done)
        .map(|i| i.label.as_str())
        .collect();
    let mut fired: Vec<(&String, &u64)> = call.fired.iter().collect();
    fired.sort();
    let tips_text = if fired.is_empty() {
        "sin avisos".to_owned()
    } else {
        fired
            .iter()
            .map(|(r, n)| {
                if **n > 1 {
                    format!("{r} ({n})")
                } else {
                    (*r).clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let checklist_text = if missing.is_empty() {
        "checklist completo".to_owned()
    } else {
        format!("falta: {}", missing.join(", "))
    };
    let text = format!(
        "Llamada de {} s ({reason}). El agente habló el {:.0}% del tiempo; {} preguntas del cliente; monólogo más largo {} s. Avisos: {tips_text}. Cumplimiento: {checklist_text}.",
        duration_ms / 1000,
        m.agent_talk_ratio * 100.0,
        m.customer_questions,
        m.longest_agent_monologue_ms / 1000,
    );
    let summary = json!({
        "type": "summary",
        "callId": call_id,
        "text": text,
        "source": "rules",
        "reason": reason,
        "agent": call.agent,
        "durationMs": duration_ms,
        "metrics": m,
        "rulesFired": call.fired,
        "checklist": checklist,
    });
    publisher.send(summary.clone());
    // With an LLM, a fuller summary (reason, outcome, follow-ups) follows.
    if let Some(coach) = &publisher.llm
        && !call.recent.is_empty()
    {
        let transcript: Vec<(bool, String)> = call.recent.iter().cloned().collect();
        coach.request(llm::Job {
            call_id: call_id.to_owned(),
            messages: llm::summary_messages(&publisher.language, &transcript, &summary),
            kind: llm::JobKind::Summary { base: summary },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_urls() {
        let mut s = Settings::default();
        assert_eq!(
            subscription_url(&s, None).unwrap(),
            "ws://127.0.0.1:7070/ws?callId=*"
        );
        assert_eq!(
            subscription_url(&s, Some(42)).unwrap(),
            "ws://127.0.0.1:7070/ws?callId=*&since=42"
        );
        s.single_call = true;
        assert_eq!(
            subscription_url(&s, Some(3)).unwrap(),
            "ws://127.0.0.1:7070/ws?callId=live&since=3"
        );
        s.relay_ws = "http://x".into();
        assert!(subscription_url(&s, None).is_err());
    }
}
