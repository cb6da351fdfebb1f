//! The LLM coach: any OpenAI-compatible chat-completions endpoint
//! (OpenRouter by default, or a local vLLM, llama.cpp server or Ollama),
//! called with ureq on threads of its own, off the async runtime.
//!
//! Answers are streamed (SSE): the tip is published as it is written, every
//! update under one `tipId`, then once more with `final: true`. Failures are
//! retried with backoff (honouring `Retry-After` on 429), a circuit breaker
//! stops calling a provider that keeps failing, and a daily token budget
//! caps the spend. The rules coach does not depend on any of this.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::event::{Event, Figures, Severity, Source, Summary, Tip};
use crate::relay_client::Publisher;
use crate::setting::Secret;

/// Consecutive failures that open the breaker, and how long it stays open.
const BREAKER_FAILURES: u32 = 5;
const BREAKER_OPEN: Duration = Duration::from_secs(60);
/// Attempts per request (the first plus retries).
const ATTEMPTS: u32 = 3;
/// Streamed text is published at most this often.
const UPDATE_EVERY: Duration = Duration::from_millis(150);

#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Secret>,
    pub timeout: Duration,
    pub max_concurrent: usize,
    /// Tokens a day at most (prompt + answer); 0 = no limit.
    pub daily_token_budget: u64,
}

/// One request: a tip (streamed as it is written) or a call's summary.
pub struct Job {
    pub call_id: String,
    pub kind: JobKind,
    pub messages: Vec<Value>,
}

pub enum JobKind {
    Tip {
        tip_id: String,
    },
    /// The rules summary already published; the LLM's text completes it.
    Summary {
        base: Box<Summary>,
    },
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// Counters for the closing figures and tests.
#[derive(Default)]
pub struct LlmStats {
    pub requests: AtomicU64,
    pub tips: AtomicU64,
    pub failures: AtomicU64,
    pub skipped_breaker: AtomicU64,
    pub skipped_budget: AtomicU64,
    pub tokens_today: AtomicU64,
}

pub struct LlmCoach {
    jobs: std::sync::mpsc::SyncSender<Job>,
    pub stats: Arc<LlmStats>,
}

struct Shared {
    config: LlmConfig,
    publisher: Arc<Publisher>,
    breaker: Mutex<Breaker>,
    stats: Arc<LlmStats>,
    day: Mutex<u64>,
}

impl LlmCoach {
    pub fn start(config: LlmConfig, publisher: Arc<Publisher>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(64);
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(LlmStats::default());
        let shared = Arc::new(Shared {
            config: config.clone(),
            publisher,
            breaker: Mutex::default(),
            stats: stats.clone(),
            day: Mutex::new(day_number()),
        });
        for i in 0..config.max_concurrent.max(1) {
            let rx = rx.clone();
            let shared = shared.clone();
            let _ = std::thread::Builder::new()
                .name(format!("llm-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        shared.run(job);
                    }
                });
        }
        Self { jobs: tx, stats }
    }

    /// Queues a request; a full queue drops it (the rules coach carries on).
    pub fn request(&self, job: Job) {
        if self.jobs.try_send(job).is_err() {
            tracing::warn!("LLM queue full: tip request dropped");
        }
    }
}

fn day_number() -> u64 {
    (crate::event::now_unix_ms() / 86_400_000) as u64
}

impl Shared {
    fn run(&self, job: Job) {
        if let Ok(mut b) = self.breaker.lock()
            && let Some(until) = b.open_until
        {
            if Instant::now() < until {
                self.stats.skipped_breaker.fetch_add(1, Ordering::Relaxed);
                return;
            }
            b.open_until = None;
        }
        if let Ok(mut day) = self.day.lock() {
            let today = day_number();
            if *day != today {
                *day = today;
                self.stats.tokens_today.store(0, Ordering::Relaxed);
            }
        }
        let budget = self.config.daily_token_budget;
        if budget > 0 && self.stats.tokens_today.load(Ordering::Relaxed) >= budget {
            self.stats.skipped_budget.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match self.stream_once(&job) {
                Ok(()) => {
                    if let Ok(mut b) = self.breaker.lock() {
                        b.failures = 0;
                    }
                    self.stats.tips.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(Failure {
                    retry_after,
                    message,
                    retryable,
                }) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(call_id = %job.call_id, attempt, error = %message, "LLM request failed");
                    let open = self.breaker.lock().map(|mut b| {
                        b.failures += 1;
                        if b.failures >= BREAKER_FAILURES {
                            b.open_until = Some(Instant::now() + BREAKER_OPEN);
                            tracing::error!(
                                "LLM provider keeps failing: pausing it for {} s",
                                BREAKER_OPEN.as_secs()
                            );
                            true
                        } else {
                            false
                        }
                    });
                    if !retryable || open.unwrap_or(false) || attempt == ATTEMPTS {
                        return;
                    }
                    std::thread::sleep(retry_after.unwrap_or(wait).min(Duration::from_secs(30)));
                    wait *= 2;
                }
            }
        }
    }

    /// One streamed chat completion, publishing the tip as it grows.
    fn stream_once(&self, job: &Job) -> Result<(), Failure> {
        let c = &self.config;
        let agent = crate::net::agent(
            ureq::Agent::config_builder()
                .timeout_global(Some(c.timeout))
                .http_status_as_error(false)
                .build(),
        );
        let url = format!("{}/chat/completions", c.base_url.trim_end_matches('/'));
        let body = json!({
            "model": c.model,
            "messages": job.messages,
            "stream": true,
            "max_tokens": match job.kind { JobKind::Tip { .. } => 120, JobKind::Summary { .. } => 300 },
            "temperature": 0.3,
        });
        let mut req = agent.post(&url).header("content-type", "application/json");
        if let Some(key) = &c.api_key {
            req = req.header("authorization", &format!("Bearer {}", key.expose()));
        }
        let mut resp = req
            .send(body.to_string().as_bytes())
            .map_err(|e| Failure::retry(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(Failure {
                retry_after,
                message: format!("HTTP {status}"),
                retryable: status == 429 || status >= 500,
            });
        }
        let reader = BufReader::new(resp.body_mut().with_config().limit(1 << 20).reader());
        let mut text = String::new();
        let mut last_update = Instant::now();
        let mut tokens = 0u64;
        let mut done = false;
        for line in reader.lines() {
            let line = line.map_err(|e| Failure::retry(format!("stream broke: {e}")))?;
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                break;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                return Err(Failure::retry(format!(
                    "malformed stream chunk: {data:.80}"
                )));
            };
            if let Some(total) = chunk["usage"]["total_tokens"].as_u64() {
                tokens = total;
            }
            if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
                text.push_str(delta);
                if last_update.elapsed() >= UPDATE_EVERY && !text.trim().is_empty() {
                    last_update = Instant::now();
                    self.publish(job, &text, false);
                }
            }
        }
        if !done && text.is_empty() {
            return Err(Failure::retry("the stream ended without an answer".into()));
        }
        if text.trim().is_empty() {
            return Err(Failure {
                retry_after: None,
                message: "empty answer".into(),
                retryable: false,
            });
        }
        let estimate = tokens.max(
            (job.messages
                .iter()
                .map(|m| m.to_string().len())
                .sum::<usize>()
                + text.len()) as u64
                / 4,
        );
        self.stats
            .tokens_today
            .fetch_add(estimate, Ordering::Relaxed);
        self.publish(job, &text, true);
        Ok(())
    }

    fn publish(&self, job: &Job, text: &str, is_final: bool) {
        match &job.kind {
            JobKind::Tip { tip_id } => self.publisher.send(Event::Tip(Tip {
                call_id: job.call_id.clone(),
                tip_id: tip_id.clone(),
                text: text.trim().to_owned(),
                source: Source::Llm,
                is_final,
                severity: Severity::Info,
                rule: None,
                trigger: None,
                utterance_id: None,
                title: None,
                i18n: Default::default(),
            })),
            // A summary is published once, whole.
            JobKind::Summary { base } if is_final => {
                let mut ev = base.clone();
                let field = |label: &str| {
                    text.lines().find_map(|l| {
                        let l = l.trim().trim_start_matches(['-', '*', ' ']);
                        let (k, v) = l.split_once(':')?;
                        crate::text::normalise(k)
                            .starts_with(label)
                            .then(|| v.trim().to_owned())
                    })
                };
                ev.source = Source::Llm;
                ev.text = text.trim().to_owned();
                // The rules summary's translations do not fit these words.
                ev.i18n.clear();
                ev.call_reason = field("motivo").or_else(|| field("reason"));
                ev.outcome = field("resultado").or_else(|| field("outcome"));
                ev.follow_ups = field("seguimiento").or_else(|| field("follow"));
                self.publisher.send(Event::Summary(*ev));
            }
            JobKind::Summary { .. } => {}
        }
    }
}

struct Failure {
    retry_after: Option<Duration>,
    message: String,
    retryable: bool,
}

impl Failure {
    fn retry(message: String) -> Self {
        Self {
            retry_after: None,
            message,
            retryable: true,
        }
    }
}

/// The prompt for a call's summary: the transcript, figures, rules fired
/// and checklist; answered as three labelled lines.
pub fn summary_messages(
    language: &str,
    transcript: &[(bool, String)],
    summary: &Summary,
) -> Vec<Value> {
    let system = match language {
        "en" => {
            "Summarise a finished contact-centre call in three lines: 'Reason: ...', 'Outcome: ...', 'Follow-up: ...'. Be brief and factual."
        }
        _ => {
            "Resume una llamada de centro de contacto ya terminada en tres líneas: 'Motivo: ...', 'Resultado: ...', 'Seguimiento: ...'. Sé breve y objetivo."
        }
    };
    let user = format!(
        "Transcripción (final):\n{}\n\nDatos de la llamada: {}",
        labelled(transcript),
        Event::Summary(summary.clone()).to_json()
    );
    chat(system, &user)
}

/// The transcript as `AGENTE: ...` / `CLIENTE: ...` lines.
fn labelled(transcript: &[(bool, String)]) -> String {
    transcript
        .iter()
        .map(|(agent, text)| format!("{}: {text}", if *agent { "AGENTE" } else { "CLIENTE" }))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A system and a user message.
fn chat(system: &str, user: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": user}),
    ]
}

/// The prompt for one tip: the recent speaker-labelled transcript, the
/// call's figures and the rules that fired; Spanish by default.
pub fn messages(
    language: &str,
    transcript: &[(bool, String)],
    metrics: &Figures,
    fired: &[String],
) -> Vec<Value> {
    let system = match language {
        "en" => {
            "You coach a contact-centre agent during a live call. Reply with ONE short, actionable tip (at most 25 words) for the agent's next sentence. No preamble."
        }
        _ => {
            "Eres un coach de agentes de centro de contacto durante una llamada en vivo. Responde con UN solo consejo breve y accionable (máximo 25 palabras) para la próxima frase del agente. Sin preámbulos."
        }
    };
    let user = format!(
        "Transcripción reciente:\n{}\n\nMétricas: {}\nReglas activadas: {}",
        labelled(transcript),
        serde_json::to_string(metrics).unwrap_or_default(),
        if fired.is_empty() {
            "ninguna".to_owned()
        } else {
            fired.join(", ")
        }
    );
    chat(system, &user)
}
