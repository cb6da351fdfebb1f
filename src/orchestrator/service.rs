//! The orchestrator's loop: follow the relay (every call, or one), keep
//! each call's metrics and rules state, publish what they produce, and
//! summarise each call when it ends.
//!
//! A call's end does not wait for stt, so finals can follow `call.ended`:
//! the call is kept, ending, until every utterance begun has its final (or
//! `end_grace_secs` passed), and summarised then with all its words.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::group::{self, Ask, Change, Group};
use super::llm::{self, LlmCoach, LlmConfig};
use super::metrics::CallMetrics;
use super::rules::{self, CallRules, Fired, RuleSet, RulesError};
use super::{RulesMode, Settings};
use crate::event::{
    CallEnded, CallStarted, Checklist, Event, Figures, Localized, Metrics, Source, Speaker, Speech,
    Summary, Tip, Transcript,
};
use crate::relay_client::{PublishStats, Publisher, Scope, Subscription};

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("orchestrator.relay_ws {0:?} is not a ws:// URL")]
    BadUrl(String),
    #[error("orchestrator group: {0}")]
    Group(String),
}

impl crate::lifecycle::ExitStatus for OrchestratorError {
    fn exit_code(&self) -> u8 {
        // A bad rules file or URL: the configuration must change.
        crate::lifecycle::EXIT_USAGE
    }
}

/// What the orchestrator keeps per call.
struct Call {
    started: Instant,
    last_event: Instant,
    agent: Option<String>,
    metrics: CallMetrics,
    rules: CallRules,
    tips: u64,
    /// Rule id -> how often it fired (in id order, as the summary lists them).
    fired: BTreeMap<String, u64>,
    /// The last final utterances, speaker-labelled (agent = true), for the
    /// LLM prompt, with their utterance ids (a revised final replaces its
    /// utterance's text).
    recent: std::collections::VecDeque<(bool, String, String)>,
    /// When the LLM should be asked (after the debounce), and when it last was.
    llm_due: Option<Instant>,
    llm_last: Option<Instant>,
    /// `call.ended` came (when, and its reason): waiting for late finals.
    ending: Option<(Instant, String)>,
    /// This instance coaches the call (always, without a group); else it
    /// keeps the call's state in step, publishing nothing, in case it has
    /// to take the call over.
    owned: bool,
    /// Unowned: the rule tips this instance would have published and has
    /// not yet seen the coaching instance publish. Published on taking the
    /// call over (its holder died before publishing them).
    unconfirmed: std::collections::VecDeque<Tip>,
}

/// Unconfirmed tips kept per call at most.
const UNCONFIRMED: usize = 32;

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
            fired: BTreeMap::new(),
            recent: std::collections::VecDeque::new(),
            llm_due: None,
            llm_last: None,
            ending: None,
            owned: true,
            unconfirmed: std::collections::VecDeque::new(),
        }
    }

    /// The call's time: since it started, up to its end once it ended.
    fn elapsed_ms(&self, now: Instant) -> u64 {
        let until = self.ending.as_ref().map_or(now, |(at, _)| (*at).min(now));
        until.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Keeps a final's words for the LLM prompt; `false` if it had none,
    /// or if it revised an utterance already kept (its text is replaced).
    fn remember(&mut self, agent: bool, text: &str, utterance: &str) -> bool {
        if text.trim().is_empty() {
            return false;
        }
        if let Some(kept) = self
            .recent
            .iter_mut()
            .find(|(_, _, u)| !utterance.is_empty() && u == utterance)
        {
            kept.1 = text.to_owned();
            return false;
        }
        self.recent
            .push_back((agent, text.to_owned(), utterance.to_owned()));
        if self.recent.len() > RECENT_UTTERANCES {
            self.recent.pop_front();
        }
        true
    }

    /// The kept utterances as the LLM prompt takes them.
    fn transcript(&self) -> Vec<(bool, String)> {
        self.recent
            .iter()
            .map(|(agent, text, _)| (*agent, text.clone()))
            .collect()
    }

    /// Ended, and nothing more to wait for: every utterance begun has its
    /// final, or the grace period is over.
    fn ready_to_finish(&self, now: Instant, grace: Duration) -> bool {
        self.ending.as_ref().is_some_and(|(at, _)| {
            self.metrics.open_utterances(self.elapsed_ms(now)) == 0
                || now.saturating_duration_since(*at) >= grace
        })
    }
}

/// The relay subscription: every call, or with `single_call` the one call
/// `relay_ws` names (`callId=live` by default).
fn subscription(s: &Settings) -> Result<Subscription, OrchestratorError> {
    let scope = if s.single_call {
        let query = s.relay_ws.split_once('?').map_or("", |(_, q)| q);
        Scope::Call(
            crate::http::query_param(Some(query), "callId").unwrap_or_else(|| "live".into()),
        )
    } else {
        Scope::All
    };
    Subscription::new(&s.relay_ws, scope, s.relay_token.clone())
        .map_err(|e| OrchestratorError::BadUrl(e.0))
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
    /// With a group: where calls are claimed and forgotten.
    asks: Option<tokio::sync::mpsc::UnboundedSender<Ask>>,
}

impl Out {
    /// The call's state, made on first sight: with a group, owned only once
    /// its lease is ours.
    fn open_call<'a>(
        &self,
        calls: &'a mut HashMap<String, Call>,
        call_id: &str,
        now: Instant,
    ) -> &'a mut Call {
        calls.entry(call_id.to_owned()).or_insert_with(|| {
            let mut call = Call::new(now);
            if let Some(asks) = &self.asks {
                call.owned = false;
                let _ = asks.send(Ask::Claim(call_id.to_owned()));
            }
            call
        })
    }

    /// The call is finished or dropped here: no lease to renew or watch.
    fn forget(&self, call_id: &str) {
        if let Some(asks) = &self.asks {
            let _ = asks.send(Ask::Forget(call_id.to_owned()));
        }
    }

    fn send(&self, event: Event) {
        self.urgent.send(event);
    }

    fn metrics(&self, event: Event) {
        self.bulk.send(event);
    }
}

/// Runs until `shutdown`.
pub async fn serve(
    settings: &super::Settings,
    shutdown: CancellationToken,
) -> Result<(), OrchestratorError> {
    let s = settings.clone();
    let rules = Arc::new(match &s.rules_file {
        Some(path) => RuleSet::load(path, s.rules_mode == RulesMode::Extend)?,
        None => RuleSet::default_set(),
    });
    let mut relay = subscription(&s)?;
    let mut group: Option<Group> = match &s.group.nats_url {
        Some(_) => Some(
            group::join(&s.group, shutdown.clone())
                .await
                .map_err(OrchestratorError::Group)?,
        ),
        None => None,
    };
    let stats = Arc::new(PublishStats::default());
    let (urgent, urgent_thread) = Publisher::start(
        s.relay_event.clone(),
        s.relay_token.clone(),
        10_000,
        stats.clone(),
    );
    let (bulk, bulk_thread) = Publisher::start(
        s.relay_event.clone(),
        s.relay_token.clone(),
        10_000,
        stats.clone(),
    );
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
        asks: group.as_ref().map(|g| g.asks.clone()),
    };
    tracing::info!(
        rules = rules.rules.len(),
        checklist = rules.checklist.len(),
        llm = publisher.llm.is_some(),
        group = group.as_ref().map(|g| g.instance.as_str()),
        "orchestrator started"
    );
    crate::lifecycle::ready("orchestrator following the relay", &shutdown, || true);

    let mut calls: HashMap<String, Call> = HashMap::new();
    let mut ended = Ended::default();
    let every = Duration::from_secs(s.metrics_every_secs.max(1));
    let mut tick = tokio::time::interval(every);
    let mut llm_tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => tick_all(&mut calls, &rules, &publisher, &s),
            _ = llm_tick.tick(), if publisher.llm.is_some() => {
                if let Some(coach) = &publisher.llm {
                    ask_llm(&mut calls, coach, &s);
                }
            }
            received = relay.next() => {
                if let Some(event) = &received.event {
                    handle(&mut calls, &mut ended, &rules, &publisher, event, &s);
                }
            }
            Some(change) = next_change(&mut group) => match change {
                Change::Owned(id) => if let Some(call) = calls.get_mut(&id) {
                    if !call.owned {
                        tracing::info!(call = %id, "coaching the call");
                    }
                    call.owned = true;
                    // What the last holder did not live to publish.
                    for tip in call.unconfirmed.drain(..) {
                        publisher.send(Event::Tip(tip));
                    }
                },
                Change::Lost(id) => if let Some(call) = calls.get_mut(&id) {
                    call.owned = false;
                },
            },
        }
    }
    // Calls still open get their summary before we go; in a group the
    // others take them over instead (the leases are released).
    let open: Vec<String> = calls.keys().cloned().collect();
    for id in open {
        if let Some(call) = calls.remove(&id)
            && group.is_none()
        {
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
    let llm = publisher
        .llm
        .as_ref()
        .map(|c| c.stats.clone())
        .unwrap_or_default();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        published = stats.published.get(),
        publish_retries = stats.retries.get(),
        dropped = stats.dropped.get(),
        llm_requests = load(&llm.requests),
        llm_tips = load(&llm.tips),
        llm_failures = load(&llm.failures),
        llm_skipped_breaker = load(&llm.skipped_breaker),
        llm_skipped_budget = load(&llm.skipped_budget),
        "orchestrator stopped"
    );
    Ok(())
}

/// The next lease change, or never without a group.
async fn next_change(group: &mut Option<Group>) -> Option<Change> {
    match group {
        Some(g) => g.changes.recv().await,
        None => std::future::pending().await,
    }
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
    event: &Event,
    s: &Settings,
) {
    let llm = publisher.llm.is_some();
    let now = Instant::now();
    match event {
        Event::CallStarted(CallStarted { call_id, agent, .. }) => {
            ended.remove(call_id);
            // A call id started again: fresh state, the lease kept.
            let owned = calls.remove(call_id).map(|c| c.owned);
            let call = publisher.open_call(calls, call_id, now);
            if let Some(owned) = owned {
                call.owned = owned;
            }
            call.agent = (!agent.is_empty()).then(|| agent.clone());
        }
        Event::CallEnded(CallEnded {
            call_id, reason, ..
        }) => {
            ended.insert(call_id);
            if let Some(call) = calls.get_mut(call_id)
                && call.ending.is_none()
            {
                call.ending = Some((now, reason.clone()));
            }
            finish_if_ready(calls, call_id, rules, publisher, s);
        }
        // Words of a call already summarised: too late.
        Event::Transcript(_) | Event::Speech(_)
            if ended.set.contains(event.call_id()) && !calls.contains_key(event.call_id()) => {}
        Event::Speech(Speech {
            call_id,
            utterance_id,
            start_ms,
            ..
        }) => {
            let call = publisher.open_call(calls, call_id, now);
            call.last_event = now;
            let at = call.elapsed_ms(now);
            call.metrics.speech(utterance_id, *start_ms, at);
        }
        Event::Transcript(t) => {
            let Transcript {
                call_id,
                speaker,
                text,
                is_final,
                utterance_id,
                start_ms,
                end_ms,
                revised,
                ..
            } = t;
            let call = publisher.open_call(calls, call_id, now);
            call.last_event = now;
            let agent = *speaker == Speaker::Agent;
            let at = call.elapsed_ms(now);
            // A revised final's span counted with its first final.
            if *revised != Some(true) {
                call.metrics.transcript(
                    agent,
                    text,
                    utterance_id,
                    *start_ms,
                    *end_ms,
                    *is_final,
                    at,
                );
            }
            if call.ending.is_some() {
                // A late final of an ended call: it counts in the summary,
                // coaches no one.
                if *is_final {
                    call.remember(agent, text, utterance_id);
                }
                finish_if_ready(calls, call_id, rules, publisher, s);
                return;
            }
            let (fired, changed) = call.rules.transcript(rules, agent, text, utterance_id, at);
            publish_tips(call_id, call, fired, Some(utterance_id), publisher);
            if changed {
                publish_checklist(call_id, call, rules, publisher);
            }
            if *is_final && call.remember(agent, text, utterance_id) {
                // The customer spoke: ask the LLM once they pause.
                if llm && !agent {
                    call.llm_due = Some(now + Duration::from_millis(s.llm_debounce_ms));
                }
            }
        }
        // What the orchestrator coaching a call published, seen by the
        // others in the group: tips not to publish again on taking over,
        // and the summary that ends the call for everyone.
        Event::Tip(tip) => {
            if let Some(call) = calls.get_mut(&tip.call_id)
                && !call.owned
            {
                if let Some(n) = tip.tip_id.rsplit('-').next().and_then(|n| n.parse().ok()) {
                    call.tips = call.tips.max(n);
                }
                if let Some(rule) = &tip.rule {
                    let at = call.elapsed_ms(now);
                    call.rules
                        .note_published(rule, tip.utterance_id.as_deref(), at);
                    call.unconfirmed
                        .retain(|t| !(t.rule == tip.rule && t.utterance_id == tip.utterance_id));
                }
            }
        }
        Event::Summary(summary) if calls.get(&summary.call_id).is_some_and(|c| !c.owned) => {
            calls.remove(&summary.call_id);
            ended.insert(&summary.call_id);
            publisher.forget(&summary.call_id);
        }
        _ => {}
    }
}

/// Summarises an ended call once it is ready (see [`Call::ready_to_finish`]).
fn finish_if_ready(
    calls: &mut HashMap<String, Call>,
    call_id: &str,
    rules: &RuleSet,
    publisher: &Out,
    s: &Settings,
) {
    let grace = Duration::from_secs(s.end_grace_secs);
    if calls
        .get(call_id)
        .is_some_and(|c| c.ready_to_finish(Instant::now(), grace))
        && let Some(call) = calls.remove(call_id)
    {
        let reason = call
            .ending
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        finish(call_id, call, &reason, rules, publisher);
    }
}

fn tick_all(calls: &mut HashMap<String, Call>, rules: &RuleSet, publisher: &Out, s: &Settings) {
    let now = Instant::now();
    let ending: Vec<String> = calls
        .iter()
        .filter(|(_, c)| c.ending.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    for id in ending {
        finish_if_ready(calls, &id, rules, publisher, s);
    }
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
    for (id, call) in calls.iter_mut().filter(|(_, c)| c.ending.is_none()) {
        let at = call.elapsed_ms(now);
        let snapshot = call.metrics.snapshot(at);
        if call.owned {
            publisher.metrics(metrics_event(id, &snapshot, at));
        }
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
    for (id, call) in calls.iter_mut().filter(|(_, c)| c.owned) {
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
        let transcript = call.transcript();
        let fired: Vec<String> = call.fired.keys().cloned().collect();
        let metrics = call.metrics.snapshot(call.elapsed_ms(now));
        coach.request(llm::Job {
            call_id: id.clone(),
            kind: llm::JobKind::Tip {
                tip_id: format!("llm-{}", call.tips),
            },
            messages: llm::messages(&s.language, &transcript, &metrics, &fired),
        });
    }
}

fn metrics_event(call_id: &str, figures: &Figures, call_ms: u64) -> Event {
    Event::Metrics(Metrics {
        call_id: call_id.to_owned(),
        figures: figures.clone(),
        call_ms,
    })
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
        let tip = Tip {
            call_id: call_id.to_owned(),
            tip_id: format!("rules-{}-{}", f.rule, call.tips),
            text: f.tip,
            source: Source::Rules,
            is_final: true,
            severity: f.severity,
            rule: Some(f.rule),
            trigger: Some(f.trigger),
            utterance_id: utterance.filter(|u| !u.is_empty()).map(str::to_owned),
            title: Some(f.title),
            i18n: rules::english(f.english.map(|(title, text)| Localized {
                title: Some(title),
                text: Some(text),
                label: None,
            })),
        };
        if call.owned {
            publisher.send(Event::Tip(tip));
        } else {
            if call.unconfirmed.len() >= UNCONFIRMED {
                call.unconfirmed.pop_front();
            }
            call.unconfirmed.push_back(tip);
        }
    }
}

fn publish_checklist(call_id: &str, call: &Call, rules: &RuleSet, publisher: &Out) {
    if !call.owned {
        return;
    }
    publisher.send(Event::Checklist(Checklist {
        call_id: call_id.to_owned(),
        items: call.rules.checklist(rules),
    }));
}

/// The rules summary in the call's language (Spanish) and in English:
/// rules and checklist items by title, the end reason in words.
fn summary_texts(
    call: &Call,
    checklist: &[crate::event::ChecklistItem],
    reason: &str,
    duration_ms: u64,
    m: &crate::event::Figures,
    rules: &RuleSet,
) -> (String, String) {
    let fired = |english: bool| -> Vec<String> {
        call.fired
            .iter()
            .map(|(id, n)| {
                let (es, en) = rules::title_of(rules, id);
                let title = if english { en } else { es };
                if *n > 1 {
                    format!("{title} ({n})")
                } else {
                    title
                }
            })
            .collect()
    };
    let missing = |english: bool| -> Vec<String> {
        checklist
            .iter()
            .filter(|i| !i.done)
            .map(|i| match i.i18n.get("en").and_then(|l| l.label.clone()) {
                Some(en) if english => en,
                _ => i.label.clone(),
            })
            .collect()
    };
    let (why_es, why_en) = match reason {
        "customer-hangup" => ("colgó el cliente", "the customer hung up"),
        "agent-hangup" => ("colgó el agente", "the agent hung up"),
        "customer-abandoned" => (
            "el cliente colgó antes de ser atendido",
            "the customer hung up before being answered",
        ),
        "demo-finished" => ("fin de la demo", "end of the demo"),
        "orchestrator stopping" => ("el coach se detuvo", "the coach stopped"),
        _ => (reason, reason),
    };
    let (f_es, f_en, miss_es, miss_en) = (fired(false), fired(true), missing(false), missing(true));
    let es = format!(
        "Llamada de {} s ({why_es}). El agente habló el {:.0}% del tiempo; {} preguntas del cliente; monólogo más largo {} s. Avisos: {}. Cumplimiento: {}.",
        duration_ms / 1000,
        m.agent_talk_ratio * 100.0,
        m.customer_questions,
        m.longest_agent_monologue_ms / 1000,
        if f_es.is_empty() {
            "sin avisos".to_owned()
        } else {
            f_es.join(", ")
        },
        if miss_es.is_empty() {
            "checklist completo".to_owned()
        } else {
            format!("falta: {}", miss_es.join(", "))
        },
    );
    let en = format!(
        "Call of {} s ({why_en}). The agent talked {:.0}% of the time; {} customer questions; longest monologue {} s. Tips: {}. Compliance: {}.",
        duration_ms / 1000,
        m.agent_talk_ratio * 100.0,
        m.customer_questions,
        m.longest_agent_monologue_ms / 1000,
        if f_en.is_empty() {
            "none".to_owned()
        } else {
            f_en.join(", ")
        },
        if miss_en.is_empty() {
            "checklist complete".to_owned()
        } else {
            format!("missing: {}", miss_en.join(", "))
        },
    );
    (es, en)
}

/// Publishes the last metrics and the summary of a call.
fn finish(call_id: &str, call: Call, reason: &str, rules: &RuleSet, publisher: &Out) {
    publisher.forget(call_id);
    if !call.owned {
        // The instance coaching it publishes the summary.
        return;
    }
    let now = Instant::now();
    // The call lasted as long as its audio, also where that was played
    // faster than real time (`demo --fast`: "Llamada de 7 s" after
    // transcripts up to 01:09).
    let duration_ms = call.elapsed_ms(now).max(call.metrics.audio_end_ms());
    let m = call.metrics.snapshot(duration_ms);
    publisher.metrics(metrics_event(call_id, &m, duration_ms));
    let checklist = call.rules.checklist(rules);
    let (es, en) = summary_texts(&call, &checklist, reason, duration_ms, &m, rules);
    let transcript = call.transcript();
    let summary = Summary {
        call_id: call_id.to_owned(),
        text: es,
        i18n: rules::english(Some(Localized {
            text: Some(en),
            ..Default::default()
        })),
        source: Source::Rules,
        reason: reason.to_owned(),
        agent: call.agent.clone(),
        duration_ms,
        metrics: m,
        rules_fired: call.fired,
        checklist,
        call_reason: None,
        outcome: None,
        follow_ups: None,
    };
    publisher.send(Event::Summary(summary.clone()));
    // With an LLM, a fuller summary (reason, outcome, follow-ups) follows.
    if let Some(coach) = &publisher.llm
        && !transcript.is_empty()
    {
        coach.request(llm::Job {
            call_id: call_id.to_owned(),
            messages: llm::summary_messages(&publisher.language, &transcript, &summary),
            kind: llm::JobKind::Summary {
                base: Box::new(summary),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revised_final_replaces_its_utterances_text_and_is_not_new() {
        let mut call = Call::new(Instant::now());
        assert!(call.remember(false, "quiero pagar cuatro cinco", "c-1"));
        assert!(call.remember(true, "de acuerdo", "a-1"));
        // The revision of c-1: replaced in place, not a new utterance
        // (the LLM is not asked again).
        assert!(!call.remember(false, "quiero pagar 45", "c-1"));
        assert!(!call.remember(false, " ", "c-2"));
        assert_eq!(
            call.transcript(),
            [
                (false, "quiero pagar 45".to_owned()),
                (true, "de acuerdo".to_owned())
            ]
        );
    }

    #[test]
    fn subscriptions_follow_single_call() {
        let mut s = Settings::default();
        assert_eq!(
            subscription(&s).unwrap().url(),
            "ws://127.0.0.1:7070/ws?callId=*"
        );
        assert_eq!(
            subscription(&s).unwrap().since(Some(42)).url(),
            "ws://127.0.0.1:7070/ws?callId=*&since=42"
        );
        s.single_call = true;
        assert_eq!(
            subscription(&s).unwrap().url(),
            "ws://127.0.0.1:7070/ws?callId=live"
        );
        assert_eq!(
            subscription(&s).unwrap().since(Some(3)).url(),
            "ws://127.0.0.1:7070/ws?callId=live&since=3"
        );
        s.relay_ws = "http://x".into();
        assert!(subscription(&s).is_err());
    }
}
