//! The rules coach: phrase and regex triggers on either party's words (on
//! partial and final transcripts), dead-air and monologue rules, and the
//! compliance checklist. Works with no LLM and no API key.
//!
//! A rule fires at most once per utterance (so a partial and its final do
//! not both fire it) and at most once per cooldown per call.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::event::{ChecklistItem, Figures, Severity};
use crate::text::normalise;

/// The default Spanish rules, built into the binary.
pub const DEFAULT_RULES: &str = include_str!("rules.es.toml");

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules file {path}: {message}")]
    File { path: String, message: String },
    #[error("rule {id:?}: {message}")]
    Rule { id: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Who {
    Customer,
    Agent,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Phrase,
    Silence,
    Monologue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    id: String,
    #[serde(default = "default_kind")]
    kind: Kind,
    #[serde(default = "default_who")]
    speaker: Who,
    #[serde(default)]
    phrases: Vec<String>,
    regex: Option<String>,
    /// What people see as the rule's name (defaults to the id).
    title: Option<String>,
    tip: String,
    /// The title and tip in English, for the web UI's EN.
    title_en: Option<String>,
    tip_en: Option<String>,
    #[serde(default = "default_severity")]
    severity: Severity,
    #[serde(default = "default_cooldown")]
    cooldown_secs: u64,
    threshold_secs: Option<u64>,
}

fn default_kind() -> Kind {
    Kind::Phrase
}
fn default_who() -> Who {
    Who::Any
}
fn default_severity() -> Severity {
    Severity::Info
}
fn default_cooldown() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemDef {
    id: String,
    label: String,
    label_en: Option<String>,
    phrases: Vec<String>,
    deadline_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleDef>,
    #[serde(default)]
    checklist: Vec<ItemDef>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub title: String,
    /// English title and tip, when the file has them.
    pub english: Option<(String, String)>,
    kind: Kind,
    speaker: Who,
    /// Normalised, padded with spaces for whole-word matching.
    phrases: Vec<String>,
    regex: Option<regex::Regex>,
    pub tip: String,
    pub severity: Severity,
    cooldown_ms: u64,
    threshold_ms: u64,
}

/// A compliance item.
#[derive(Debug)]
pub struct Item {
    pub id: String,
    pub label: String,
    pub label_en: Option<String>,
    phrases: Vec<String>,
    deadline_ms: u64,
}

/// Every rule and checklist item in force.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub checklist: Vec<Item>,
}

fn padded(phrase: &str) -> String {
    format!(" {} ", normalise(phrase))
}

impl RuleSet {
    /// The built-in Spanish set.
    pub fn default_set() -> Self {
        Self::parse(DEFAULT_RULES, "built-in rules").expect("the built-in rules are valid")
    }

    /// Reads a rules file; `extend` adds it to the built-in set (a rule or
    /// item with the same id replaces the built-in one), otherwise it
    /// replaces the set.
    pub fn load(path: &Path, extend: bool) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let own = Self::parse(&text, &path.display().to_string())?;
        if !extend {
            return Ok(own);
        }
        let mut set = Self::default_set();
        for r in own.rules {
            set.rules.retain(|x| x.id != r.id);
            set.rules.push(r);
        }
        for i in own.checklist {
            set.checklist.retain(|x| x.id != i.id);
            set.checklist.push(i);
        }
        Ok(set)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text).map_err(|e| RulesError::File {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let mut set = RuleSet::default();
        let mut ids = HashSet::new();
        for d in file.rule {
            let bad = |message: &str| RulesError::Rule {
                id: d.id.clone(),
                message: message.to_owned(),
            };
            if !ids.insert(d.id.clone()) {
                return Err(bad("the id is used twice"));
            }
            let regex = d
                .regex
                .as_deref()
                .map(regex::Regex::new)
                .transpose()
                .map_err(|e| bad(&format!("bad regex: {e}")))?;
            let threshold_ms = d.threshold_secs.unwrap_or(0) * 1000;
            match d.kind {
                Kind::Phrase if d.phrases.is_empty() && regex.is_none() => {
                    return Err(bad("a phrase rule needs phrases or a regex"));
                }
                Kind::Silence | Kind::Monologue if threshold_ms == 0 => {
                    return Err(bad("needs threshold_secs"));
                }
                _ => {}
            }
            let english = match (d.title_en, d.tip_en) {
                (Some(title), Some(tip)) => Some((title, tip)),
                (None, None) => None,
                _ => return Err(bad("title_en and tip_en go together")),
            };
            set.rules.push(Rule {
                title: d.title.unwrap_or_else(|| d.id.clone()),
                english,
                id: d.id,
                kind: d.kind,
                speaker: d.speaker,
                phrases: d.phrases.iter().map(|p| padded(p)).collect(),
                regex,
                tip: d.tip,
                severity: d.severity,
                cooldown_ms: d.cooldown_secs * 1000,
                threshold_ms,
            });
        }
        for d in file.checklist {
            if d.phrases.is_empty() {
                return Err(RulesError::Rule {
                    id: d.id,
                    message: "a checklist item needs phrases".into(),
                });
            }
            set.checklist.push(Item {
                id: d.id,
                label: d.label,
                label_en: d.label_en,
                phrases: d.phrases.iter().map(|p| padded(p)).collect(),
                deadline_ms: d.deadline_secs * 1000,
            });
        }
        Ok(set)
    }
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub rule: String,
    pub title: String,
    pub tip: String,
    /// English title and tip, when there are.
    pub english: Option<(String, String)>,
    pub severity: Severity,
    /// What set it off: the phrase heard, or the figure crossed.
    pub trigger: String,
}

/// The rules coach's memory of one call.
#[derive(Debug, Default)]
pub struct CallRules {
    last_fired: HashMap<String, u64>,
    fired_on: HashSet<(String, String)>,
    ticked: HashMap<String, u64>,
    overdue_warned: HashSet<String>,
}

impl CallRules {
    fn may_fire(&mut self, rule: &Rule, now_ms: u64) -> bool {
        let ok = self
            .last_fired
            .get(&rule.id)
            .is_none_or(|t| now_ms >= t + rule.cooldown_ms);
        if ok {
            self.last_fired.insert(rule.id.clone(), now_ms);
        }
        ok
    }

    /// Takes note of a rule tip another orchestrator published for this
    /// call (seen as an event), so this one, should it take the call over,
    /// does not publish it again: the rule's cooldown runs from `now_ms`,
    /// and it never fires again for `utterance_id`.
    pub fn note_published(&mut self, rule_id: &str, utterance_id: Option<&str>, now_ms: u64) {
        let last = self.last_fired.entry(rule_id.to_owned()).or_insert(now_ms);
        *last = (*last).max(now_ms);
        if let Some(u) = utterance_id {
            self.fired_on.insert((rule_id.to_owned(), u.to_owned()));
        }
    }

    /// Checks a transcript (partial or final). Returns the rules that
    /// fired and whether the checklist changed.
    pub fn transcript(
        &mut self,
        set: &RuleSet,
        agent: bool,
        text: &str,
        utterance_id: &str,
        now_ms: u64,
    ) -> (Vec<Fired>, bool) {
        let norm = format!(" {} ", normalise(text));
        let mut fired = Vec::new();
        for rule in set.rules.iter().filter(|r| r.kind == Kind::Phrase) {
            let who_ok = match rule.speaker {
                Who::Any => true,
                Who::Agent => agent,
                Who::Customer => !agent,
            };
            if !who_ok
                || self
                    .fired_on
                    .contains(&(rule.id.clone(), utterance_id.to_owned()))
            {
                continue;
            }
            let hit = rule
                .phrases
                .iter()
                .find(|p| norm.contains(p.as_str()))
                .map(|p| p.trim().to_owned())
                .or_else(|| {
                    rule.regex
                        .as_ref()
                        .and_then(|r| r.find(norm.trim()).map(|m| m.as_str().to_owned()))
                });
            let Some(trigger) = hit else { continue };
            // Seen in this utterance: never again for it, cooldown or not.
            self.fired_on
                .insert((rule.id.clone(), utterance_id.to_owned()));
            if self.may_fire(rule, now_ms) {
                fired.push(Fired {
                    rule: rule.id.clone(),
                    title: rule.title.clone(),
                    tip: rule.tip.clone(),
                    english: rule.english.clone(),
                    severity: rule.severity,
                    trigger,
                });
            }
        }
        let mut changed = false;
        if agent {
            for item in &set.checklist {
                if !self.ticked.contains_key(&item.id)
                    && item.phrases.iter().any(|p| norm.contains(p.as_str()))
                {
                    self.ticked.insert(item.id.clone(), now_ms);
                    changed = true;
                }
            }
        }
        (fired, changed)
    }

    /// Time-based rules: dead air, monologues, overdue checklist items.
    pub fn tick(&mut self, set: &RuleSet, m: &Figures, now_ms: u64) -> (Vec<Fired>, bool) {
        let mut fired = Vec::new();
        for rule in &set.rules {
            let (value, name) = match rule.kind {
                Kind::Silence => (m.silence_ms, "silenceMs"),
                Kind::Monologue => (m.longest_agent_monologue_ms, "longestAgentMonologueMs"),
                Kind::Phrase => continue,
            };
            if value >= rule.threshold_ms && self.may_fire(rule, now_ms) {
                fired.push(Fired {
                    rule: rule.id.clone(),
                    title: rule.title.clone(),
                    tip: rule.tip.clone(),
                    english: rule.english.clone(),
                    severity: rule.severity,
                    trigger: format!("{name} {value}"),
                });
            }
        }
        let mut changed = false;
        for item in &set.checklist {
            if now_ms >= item.deadline_ms
                && !self.ticked.contains_key(&item.id)
                && self.overdue_warned.insert(item.id.clone())
            {
                changed = true;
                fired.push(Fired {
                    rule: format!("checklist:{}", item.id),
                    title: item.label.clone(),
                    tip: format!("Falta: {}.", item.label),
                    english: item
                        .label_en
                        .as_ref()
                        .map(|l| (l.clone(), format!("Not said yet: {l}."))),
                    severity: Severity::Warn,
                    trigger: format!("deadline {} s", item.deadline_ms / 1000),
                });
            }
        }
        (fired, changed)
    }

    pub fn checklist(&self, set: &RuleSet) -> Vec<ChecklistItem> {
        set.checklist
            .iter()
            .map(|i| ChecklistItem {
                i18n: english(i.label_en.as_ref().map(|l| crate::event::Localized {
                    label: Some(l.clone()),
                    ..Default::default()
                })),
                id: i.id.clone(),
                label: i.label.clone(),
                done: self.ticked.contains_key(&i.id),
                at_ms: self.ticked.get(&i.id).copied(),
                overdue: self.overdue_warned.contains(&i.id) && !self.ticked.contains_key(&i.id),
            })
            .collect()
    }
}

/// An `i18n` map holding English, when there is any.
pub fn english(
    en: Option<crate::event::Localized>,
) -> std::collections::BTreeMap<String, crate::event::Localized> {
    en.map(|l| ("en".to_owned(), l)).into_iter().collect()
}

/// The title of a rule or checklist reminder (`checklist:ID`) by id, in
/// the call's language and in English; the id itself when unknown.
pub fn title_of(set: &RuleSet, id: &str) -> (String, String) {
    if let Some(item) = id
        .strip_prefix("checklist:")
        .and_then(|i| set.checklist.iter().find(|x| x.id == i))
    {
        let en = item.label_en.clone().unwrap_or_else(|| item.label.clone());
        return (item.label.clone(), en);
    }
    match set.rules.iter().find(|r| r.id == id) {
        Some(r) => (
            r.title.clone(),
            r.english
                .as_ref()
                .map_or_else(|| r.title.clone(), |(t, _)| t.clone()),
        ),
        None => (id.to_owned(), id.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_rule_has_a_title_and_english() {
        let set = RuleSet::default_set();
        for r in &set.rules {
            assert_ne!(r.title, r.id, "{} has no title", r.id);
            assert!(r.english.is_some(), "{} has no English", r.id);
        }
        for i in &set.checklist {
            assert!(i.label_en.is_some(), "{} has no English", i.id);
        }
        assert_eq!(
            title_of(&set, "checklist:aviso-grabacion"),
            ("Aviso de grabación".into(), "Recording notice".into())
        );
        assert_eq!(title_of(&set, "nope"), ("nope".into(), "nope".into()));
        let half = "[[rule]]\nid = \"x\"\nphrases = [\"a\"]\ntip = \"t\"\ntitle_en = \"X\"\n";
        let err = RuleSet::parse(half, "f").unwrap_err().to_string();
        assert!(err.contains("title_en and tip_en"), "{err}");
    }

    fn fire(
        c: &mut CallRules,
        set: &RuleSet,
        agent: bool,
        text: &str,
        utt: &str,
        ms: u64,
    ) -> Vec<String> {
        c.transcript(set, agent, text, utt, ms)
            .0
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn the_default_set_covers_what_a_contact_centre_needs() {
        let set = RuleSet::default_set();
        let cases = [
            (false, "Quiero darme de baja, me voy", "cancelacion"),
            (
                false,
                "Esto es una vergüenza, quiero poner una queja",
                "queja",
            ),
            (false, "En Movistar me lo dejan más barato", "competidor"),
            (false, "Es demasiado caro para lo que es", "precio"),
            (false, "Quiero hablar con un supervisor", "supervisor"),
            (true, "Mire, eso no es mi problema", "frase-prohibida"),
        ];
        for (i, (agent, text, rule)) in cases.into_iter().enumerate() {
            // A call of its own each: one phrase can fire several rules.
            let mut c = CallRules::default();
            let got = fire(&mut c, &set, agent, text, &format!("u{i}"), 1000 * i as u64);
            assert!(got.contains(&rule.to_owned()), "{text:?} -> {got:?}");
        }
        // The agent saying a customer phrase fires nothing.
        let mut c = CallRules::default();
        assert!(fire(&mut c, &set, true, "¿Quiere cancelar?", "u9", 99_000).is_empty());
        let ids: Vec<&str> = set.rules.iter().map(|r| r.id.as_str()).collect();
        assert!(ids.contains(&"silencio") && ids.contains(&"monologo"));
        assert_eq!(set.checklist.len(), 3);
    }

    #[test]
    fn once_per_utterance_and_per_cooldown() {
        let set = RuleSet::default_set();
        let mut c = CallRules::default();
        // A partial and its final: one tip.
        assert_eq!(
            fire(&mut c, &set, false, "quiero cancelar", "a-1", 1_000),
            ["cancelacion"]
        );
        assert!(
            fire(
                &mut c,
                &set,
                false,
                "quiero cancelar el contrato",
                "a-1",
                2_000
            )
            .is_empty()
        );
        // Another utterance inside the cooldown (120 s): nothing.
        assert!(fire(&mut c, &set, false, "que lo quiero cancelar", "a-2", 60_000).is_empty());
        // After it: again.
        assert_eq!(
            fire(&mut c, &set, false, "cancelar ya", "a-3", 122_000),
            ["cancelacion"]
        );
    }

    #[test]
    fn whole_words_only() {
        let set = RuleSet::default_set();
        let mut c = CallRules::default();
        // "aclaro" is not a word of any rule.
        assert!(fire(&mut c, &set, false, "se lo aclaro enseguida", "x", 0).is_empty());
        // "claro" is everyday Spanish; the operator only in context.
        assert!(fire(&mut c, &set, false, "Sí, claro, es el 45678", "y", 0).is_empty());
        assert_eq!(
            fire(&mut c, &set, false, "Pues me voy a Claro", "z", 0),
            ["competidor"]
        );
    }

    #[test]
    fn checklist_ticks_and_warns_when_overdue() {
        let set = RuleSet::default_set();
        let mut c = CallRules::default();
        let (_, changed) = c.transcript(
            &set,
            true,
            "Le informo que esta llamada puede ser grabada.",
            "g",
            5_000,
        );
        assert!(changed);
        let m = super::super::metrics::CallMetrics::default().snapshot(0);
        let (tips, changed) = c.tick(&set, &m, 130_000);
        let rules: Vec<String> = tips.iter().map(|f| f.rule.clone()).collect();
        assert!(
            rules.contains(&"checklist:verificacion-identidad".to_owned()),
            "{rules:?}"
        );
        assert!(!rules.iter().any(|r| r == "checklist:aviso-grabacion"));
        assert!(changed);
        // Warned once only.
        assert!(
            c.tick(&set, &m, 131_000)
                .0
                .iter()
                .all(|f| !f.rule.starts_with("checklist:"))
        );
        let state = c.checklist(&set);
        assert!(state[0].done && state[0].at_ms == Some(5_000));
        assert!(!state[1].done && state[1].overdue);
    }

    #[test]
    fn dead_air_and_monologue_rules() {
        let set = RuleSet::default_set();
        let mut c = CallRules::default();
        let mut m = super::super::metrics::CallMetrics::default().snapshot(0);
        m.silence_ms = 9_000;
        m.longest_agent_monologue_ms = 50_000;
        let rules: Vec<String> = c
            .tick(&set, &m, 10_000)
            .0
            .into_iter()
            .map(|f| f.rule)
            .collect();
        assert!(
            rules.contains(&"silencio".into()) && rules.contains(&"monologo".into()),
            "{rules:?}"
        );
        assert!(
            c.tick(&set, &m, 11_000)
                .0
                .iter()
                .all(|f| f.rule.starts_with("checklist:"))
        );
    }

    #[test]
    fn bad_rule_files_are_refused_with_the_rule_named() {
        let bad = [
            ("[[rule]]\nid = \"x\"\ntip = \"t\"\n", "needs phrases"),
            (
                "[[rule]]\nid = \"x\"\ntip = \"t\"\nregex = \"(\"\n",
                "bad regex",
            ),
            (
                "[[rule]]\nid = \"x\"\nkind = \"silence\"\ntip = \"t\"\n",
                "threshold_secs",
            ),
            (
                "[[rule]]\nid = \"x\"\ntip = \"t\"\nphrases=[\"a\"]\n[[rule]]\nid = \"x\"\ntip = \"t\"\nphrases=[\"b\"]\n",
                "twice",
            ),
            (
                "[[rule]]\nid = \"x\"\ntip = \"t\"\nphrases=[\"a\"]\nbogus = 1\n",
                "bogus",
            ),
        ];
        for (text, needle) in bad {
            let err = RuleSet::parse(text, "test").unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let set = RuleSet::parse(
            "[[rule]]\nid = \"r\"\nregex = \"numero \\\\d+\"\ntip = \"t\"\n",
            "t",
        )
        .unwrap();
        let mut c = CallRules::default();
        assert_eq!(fire(&mut c, &set, false, "Mi número 42", "u", 0), ["r"]);
    }
}
