//! PII redaction at the relay's door: every event is redacted before it is
//! stored, fanned out, replayed, exported or read by the orchestrator (and
//! so before any LLM prompt). Card numbers, security codes, identity
//! documents, IBANs, and (when turned on) e-mail addresses and phone
//! numbers become typed placeholders (`[TARJETA]`, `[CVV]`, `[DNI]`,
//! `[PASAPORTE]`, `[IBAN]`, `[EMAIL]`, `[TELÉFONO]`), and the event gets a
//! `redacted` count per category. The original is never stored or logged.
//!
//! - [`find`]: what to replace in one text, given the call's context.
//! - [`checks`]: Luhn, the DNI/NIE letter, IBAN mod-97.
//!
//! A number can be read out over several events: the partials of one
//! utterance (each a longer prefix: a long digit run in a partial is
//! hidden before its check digit is heard), or two finals (the digits a
//! speaker's final ends with are checked together with the digits their
//! next text starts with). Context words ("tarjeta", "código de
//! seguridad", "DNI", ...) heard from either speaker arm their category
//! for `context_secs`, so the customer's answer to "¿me da el número de su
//! tarjeta?" is redacted even without a check digit.

pub mod checks;
pub mod find;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Envelope, NOT_SPEECH};
use find::{Armed, Context};

/// What is redacted, as named in `redacted` counts and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Card,
    SecurityCode,
    IdDocument,
    Iban,
    Email,
    Phone,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Card,
        Category::SecurityCode,
        Category::IdDocument,
        Category::Iban,
        Category::Email,
        Category::Phone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Card => "card",
            Category::SecurityCode => "security_code",
            Category::IdDocument => "id_document",
            Category::Iban => "iban",
            Category::Email => "email",
            Category::Phone => "phone",
        }
    }

    pub fn placeholder(self) -> &'static str {
        match self {
            Category::Card => "[TARJETA]",
            Category::SecurityCode => "[CVV]",
            Category::IdDocument => "[DNI]",
            Category::Iban => "[IBAN]",
            Category::Email => "[EMAIL]",
            Category::Phone => "[TELÉFONO]",
        }
    }
}

/// `[relay.redact]`: which categories are redacted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Card numbers (Luhn-checked, or any digits after a card is asked for).
    pub cards: bool,
    /// Security codes (CVV/CVC) after their context words.
    pub security_codes: bool,
    /// DNI/NIE (check letter) and passport numbers.
    pub id_documents: bool,
    /// IBANs (mod-97), and long account numbers after "IBAN" or "cuenta bancaria".
    pub iban: bool,
    /// E-mail addresses, written or spoken ("arroba").
    pub email: bool,
    /// Phone numbers (Spanish 9-digit, +34, or digits after "teléfono").
    pub phone: bool,
    /// How long context words ("tarjeta", "DNI", ...) arm their category
    /// for the call's next texts, in seconds.
    pub context_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cards: true,
            security_codes: true,
            id_documents: true,
            iban: true,
            email: false,
            phone: false,
            context_secs: 30,
        }
    }
}

impl Settings {
    pub fn enabled(&self) -> Enabled {
        Enabled {
            cards: self.cards,
            security_codes: self.security_codes,
            id_documents: self.id_documents,
            iban: self.iban,
            email: self.email,
            phone: self.phone,
        }
    }
}

/// The categories turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enabled {
    pub cards: bool,
    pub security_codes: bool,
    pub id_documents: bool,
    pub iban: bool,
    pub email: bool,
    pub phone: bool,
}

impl Enabled {
    pub fn all() -> Self {
        Self {
            cards: true,
            security_codes: true,
            id_documents: true,
            iban: true,
            email: true,
            phone: true,
        }
    }

    fn any(&self) -> bool {
        self.cards
            || self.security_codes
            || self.id_documents
            || self.iban
            || self.email
            || self.phone
    }
}

/// Calls remembered at most; the least recently heard go first.
const MAX_CALLS: usize = 20_000;

/// What the redactor remembers of one call between its events.
struct CallMemory {
    heard: Instant,
    /// Until when each context is armed.
    card: Option<Instant>,
    security_code: Option<Instant>,
    id_document: Option<Instant>,
    passport: Option<Instant>,
    iban: Option<Instant>,
    phone: Option<Instant>,
    /// Speaker -> the digits their last final ended with, and when.
    tails: Vec<(String, String, Instant)>,
}

impl CallMemory {
    fn new(now: Instant) -> Self {
        Self {
            heard: now,
            card: None,
            security_code: None,
            id_document: None,
            passport: None,
            iban: None,
            phone: None,
            tails: Vec::new(),
        }
    }

    fn context(&self, speaker: &str, now: Instant, window: Duration) -> Context {
        let live = |t: Option<Instant>| t.is_some_and(|t| t > now);
        Context {
            armed: Armed {
                card: live(self.card),
                security_code: live(self.security_code),
                id_document: live(self.id_document),
                passport: live(self.passport),
                iban: live(self.iban),
                phone: live(self.phone),
            },
            tail: self
                .tails
                .iter()
                .find(|(s, _, at)| s == speaker && now.duration_since(*at) < window)
                .map(|(_, d, _)| d.clone()),
        }
    }

    fn arm(&mut self, a: Armed, until: Instant) {
        for (on, slot) in [
            (a.card, &mut self.card),
            (a.security_code, &mut self.security_code),
            (a.id_document, &mut self.id_document),
            (a.passport, &mut self.passport),
            (a.iban, &mut self.iban),
            (a.phone, &mut self.phone),
        ] {
            if on {
                *slot = Some(until);
            }
        }
    }
}

/// How many of each category one event had redacted.
pub type Counts = BTreeMap<Category, u64>;

/// The redactor the relay runs every incoming event through.
pub struct Redactor {
    on: Enabled,
    window: Duration,
    calls: Mutex<HashMap<String, CallMemory>>,
}

impl Redactor {
    pub fn new(settings: &Settings) -> Self {
        Self {
            on: settings.enabled(),
            window: Duration::from_secs(settings.context_secs),
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// Redacts every speech-bearing string of the event in place, and
    /// sets its `redacted` field to the counts (removed when nothing was).
    pub fn redact(&self, event: &mut Envelope) -> Counts {
        let mut counts = Counts::new();
        event.set_redacted(None);
        if !self.on.any() {
            return counts;
        }
        let now = Instant::now();
        let call_id = event.call_id().to_owned();
        let speaker = event.speaker().unwrap_or("").to_owned();
        let partial = event.is_partial();
        let ended = event.event_type() == "call.ended";
        // The lock is held to read the call's context and to write it back,
        // never while texts are searched: every publisher goes through here.
        let ctx = self
            .memory()
            .get(&call_id)
            .map(|m| m.context(&speaker, now, self.window))
            .unwrap_or_default();
        let mut armed = Armed::default();
        let mut tail = None;
        for (key, value) in event.fields.iter_mut() {
            if NOT_SPEECH.contains(&key.as_str()) {
                continue;
            }
            // A transcript's one speech field is its text: the digits it
            // ends with are the speaker's tail.
            self.walk(value, &ctx, partial, &mut counts, &mut |found| {
                armed = armed.or(found.armed);
                if found.tail.is_some() {
                    tail = found.tail.clone();
                }
            });
        }
        let mut calls = self.memory();
        if ended {
            calls.remove(&call_id);
        } else if armed.any() || tail.is_some() || calls.contains_key(&call_id) {
            if !calls.contains_key(&call_id) && calls.len() >= MAX_CALLS {
                forget_oldest(&mut calls);
            }
            let m = calls.entry(call_id).or_insert_with(|| CallMemory::new(now));
            m.heard = now;
            m.arm(armed, now + self.window);
            if !partial && !speaker.is_empty() {
                m.tails.retain(|(s, _, _)| *s != speaker);
                if let Some(t) = tail {
                    m.tails.push((speaker, t, now));
                }
            }
        }
        drop(calls);
        if !counts.is_empty() {
            event.set_redacted(Some(
                counts
                    .iter()
                    .map(|(c, n)| (c.name().to_owned(), Value::from(*n)))
                    .collect(),
            ));
        }
        counts
    }

    /// The calls' memory. A panic elsewhere while it was held leaves it
    /// usable: redaction must never be skipped for it.
    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallMemory>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn walk(
        &self,
        value: &mut Value,
        ctx: &Context,
        partial: bool,
        counts: &mut Counts,
        seen: &mut dyn FnMut(&find::Found),
    ) {
        match value {
            Value::String(s) => {
                let found = find::find(s, ctx, partial, &self.on);
                for span in &found.spans {
                    *counts.entry(span.category).or_default() += 1;
                }
                if !found.spans.is_empty() {
                    *s = find::replace(s, &found.spans);
                }
                seen(&found);
            }
            Value::Array(items) => {
                for v in items {
                    self.walk(v, ctx, partial, counts, seen);
                }
            }
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if !NOT_SPEECH.contains(&k.as_str()) {
                        self.walk(v, ctx, partial, counts, seen);
                    }
                }
            }
            _ => {}
        }
    }

    /// Calls remembered now.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.memory().len()
    }
}

/// Drops the least recently heard half of the calls.
fn forget_oldest(calls: &mut HashMap<String, CallMemory>) {
    let mut heard: Vec<Instant> = calls.values().map(|m| m.heard).collect();
    heard.sort_unstable();
    let cut = heard[heard.len() / 2];
    calls.retain(|_, m| m.heard > cut);
}

#[cfg(test)]
mod tests;
