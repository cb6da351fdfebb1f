//! Finding what to redact in one text: number runs (written or spoken,
//! [`crate::text::numbers::runs`]) checked by their check digits or by the
//! words around them, e-mail addresses written or spoken, IBANs and
//! identity documents written as one word.

use super::checks;
use super::{Category, Enabled};
use crate::text::numbers::{self, Word};

/// What the call said just before this text: the categories whose context
/// words were heard lately (any speaker: the agent asks, the customer
/// answers), and the digits this speaker's last final ended with.
#[derive(Debug, Default, Clone)]
pub struct Context {
    pub armed: Armed,
    /// Digits ending this speaker's previous final, not redacted: a number
    /// read out over two utterances is checked whole.
    pub tail: Option<String>,
}

/// Context words heard, by category.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Armed {
    pub card: bool,
    pub security_code: bool,
    pub id_document: bool,
    pub passport: bool,
    pub iban: bool,
    pub phone: bool,
}

impl Armed {
    pub fn any(&self) -> bool {
        self.card
            || self.security_code
            || self.id_document
            || self.passport
            || self.iban
            || self.phone
    }

    pub fn or(self, o: Armed) -> Armed {
        Armed {
            card: self.card || o.card,
            security_code: self.security_code || o.security_code,
            id_document: self.id_document || o.id_document,
            passport: self.passport || o.passport,
            iban: self.iban || o.iban,
            phone: self.phone || o.phone,
        }
    }
}

/// One stretch to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub category: Category,
    /// `[PASAPORTE]` rather than `[DNI]` for an identity document.
    pub passport: bool,
}

impl Span {
    pub fn placeholder(&self) -> &'static str {
        if self.passport {
            "[PASAPORTE]"
        } else {
            self.category.placeholder()
        }
    }
}

/// What one text holds: the stretches to replace, the context words it
/// says, and the digits it ends with (for the speaker's next text).
#[derive(Debug, Default)]
pub struct Found {
    pub spans: Vec<Span>,
    pub armed: Armed,
    pub tail: Option<String>,
}

/// The card number digits a continuation may bring at most.
const MAX_CARD: usize = 19;

/// Finds what to redact in `text`. `partial`: the text may still grow (a
/// partial transcript), so a long run of digits is hidden even before its
/// check digit is heard.
pub fn find(text: &str, ctx: &Context, partial: bool, on: &Enabled) -> Found {
    let ws = numbers::words(text);
    let mut found = Found {
        armed: context_words(&ws),
        ..Found::default()
    };
    let armed = ctx.armed.or(found.armed);
    let mut spans: Vec<Span> = Vec::new();
    let add = |spans: &mut Vec<Span>, span: Span| {
        if !spans
            .iter()
            .any(|s| s.start < span.end && span.start < s.end)
        {
            spans.push(span);
        }
    };
    let span = |start, end, category| Span {
        start,
        end,
        category,
        passport: false,
    };

    if on.email {
        for (s, e) in emails(text, &ws) {
            add(&mut spans, span(s, e, Category::Email));
        }
    }
    // Identifiers written as one word, or as letters then digits.
    for (i, w) in ws.iter().enumerate() {
        if on.iban
            && let Some(end) = iban_from(text, &ws, i)
        {
            add(&mut spans, span(w.start, end, Category::Iban));
            continue;
        }
        if on.id_documents && checks::dni_or_nie(&w.folded) {
            add(&mut spans, span(w.start, w.end, Category::IdDocument));
            continue;
        }
        let has_digit = w.folded.bytes().any(|b| b.is_ascii_digit());
        let has_letter = w.folded.bytes().any(|b| b.is_ascii_alphabetic());
        if on.id_documents
            && armed.passport
            && has_digit
            && has_letter
            && (6..=12).contains(&w.folded.len())
        {
            add(
                &mut spans,
                Span {
                    passport: true,
                    ..span(w.start, w.end, Category::IdDocument)
                },
            );
        }
    }

    let runs = merged_runs(text, &ws);
    let last = runs.len().saturating_sub(1);
    for (k, run) in runs.iter().enumerate() {
        let d = run.digits.as_str();
        let starts_text = !text[..run.start].chars().any(char::is_alphanumeric);
        let ends_text = k == last && !text[run.end..].chars().any(char::is_alphanumeric);
        let continued = match (&ctx.tail, starts_text) {
            (Some(t), true) => Some(format!("{t}{d}")),
            _ => None,
        };
        let not_a_code = excluded(&ws, run.start, run.end);
        let card_like = |n: &str| (13..=MAX_CARD).contains(&n.len()) && checks::luhn(n);
        let whole = |category| Some(span(run.start, run.end, category));
        let dni_end = (on.id_documents && d.len() == 8)
            .then(|| dni_letter_after(&ws, text, run.end, d))
            .flatten();
        let nie_start = (on.id_documents && d.len() == 7)
            .then(|| nie_prefix(&ws, text, run.start))
            .flatten();
        let hit = if on.cards && (card_like(d) || continued.as_deref().is_some_and(card_like)) {
            whole(Category::Card)
        } else if let Some(end) = dni_end {
            Some(span(run.start, end, Category::IdDocument))
        } else if on.id_documents && armed.id_document && d.len() == 8 {
            let end = letter_after(&ws, text, run.end).unwrap_or(run.end);
            Some(span(run.start, end, Category::IdDocument))
        } else if let Some(start) = nie_start {
            let end = letter_after(&ws, text, run.end).unwrap_or(run.end);
            Some(span(start, end, Category::IdDocument))
        } else if on.id_documents && armed.passport && d.len() >= 6 {
            Some(Span {
                passport: true,
                ..span(run.start, run.end, Category::IdDocument)
            })
        } else if on.iban && armed.iban && d.len() >= 10 {
            whole(Category::Iban)
        } else if on.security_codes
            && armed.security_code
            && (3..=4).contains(&d.len())
            && !not_a_code
        {
            whole(Category::SecurityCode)
        } else if on.cards && armed.card && d.len() >= 4 && !not_a_code {
            whole(Category::Card)
        } else if on.phone && phone_like(text, run.start, d, armed.phone) {
            // "+34 ...": the plus goes too.
            let start = run.start - usize::from(text[..run.start].ends_with('+'));
            Some(span(start, run.end, Category::Phone))
        } else if on.cards
            && partial
            && !not_a_code
            && (d.len() >= 7 || continued.as_ref().is_some_and(|c| c.len() >= 7))
        {
            // A card number still being read out: no check digit yet.
            whole(Category::Card)
        } else {
            None
        };
        let category = hit.map(|h| h.category);
        if let Some(h) = hit {
            add(&mut spans, h);
        }
        // Digits ending a final may go on in the speaker's next one; a
        // card already complete does not.
        if ends_text && d.len() >= 4 {
            let digits = continued.unwrap_or_else(|| d.to_owned());
            let complete = category == Some(Category::Card) && card_like(&digits);
            if digits.len() < MAX_CARD && !complete {
                found.tail = Some(digits);
            }
        }
    }
    spans.sort_by_key(|s| s.start);
    found.spans = spans;
    found
}

/// The text with each span replaced by its placeholder.
pub fn replace(text: &str, spans: &[Span]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for s in spans {
        out.push_str(&text[at..s.start]);
        out.push_str(s.placeholder());
        at = s.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Context words of each category in the text's folded words.
fn context_words(ws: &[Word]) -> Armed {
    let mut a = Armed::default();
    for (i, w) in ws.iter().enumerate() {
        let next = ws.get(i + 1).map(|n| n.folded.as_str()).unwrap_or("");
        match w.folded.as_str() {
            "tarjeta" | "tarjetas" | "card" | "visa" | "mastercard" | "amex" => a.card = true,
            "cvv" | "cvc" | "cvv2" | "cv2" | "pin" => a.security_code = true,
            "codigo" if next == "de" && ws.get(i + 2).is_some_and(|n| n.folded == "seguridad") => {
                a.security_code = true
            }
            "security" if next == "code" => a.security_code = true,
            "digitos" | "numeros"
                if ws[i + 1..].iter().take(3).any(|n| {
                    matches!(n.folded.as_str(), "detras" | "atras" | "reverso" | "dorso")
                }) =>
            {
                a.security_code = true
            }
            "dni" | "nie" | "nif" | "documento" => a.id_document = true,
            "pasaporte" | "passport" => a.passport = true,
            "iban" => a.iban = true,
            "cuenta" if matches!(next, "bancaria" | "corriente") => a.iban = true,
            "numero" if next == "de" && ws.get(i + 2).is_some_and(|n| n.folded == "cuenta") => {
                a.iban = true
            }
            "telefono" | "movil" | "celular" | "phone" | "whatsapp" | "fijo" => a.phone = true,
            _ => {}
        }
    }
    a
}

/// Number runs with the runs between which stands only `.` (written
/// groups "4111.1111", sentence stops Whisper put in a pause) merged.
fn merged_runs(text: &str, ws: &[Word]) -> Vec<numbers::Run> {
    let mut out: Vec<numbers::Run> = Vec::new();
    for run in numbers::runs_in(text, ws) {
        if let Some(prev) = out.last_mut() {
            let gap = &text[prev.end..run.start];
            if gap
                .chars()
                .all(|c| c.is_whitespace() || matches!(c, '.' | ',' | '-'))
                && prev.digits.len() + run.digits.len() <= 40
            {
                prev.end = run.end;
                prev.digits.push_str(&run.digits);
                continue;
            }
        }
        out.push(run);
    }
    out
}

const MONTHS: &[&str] = &[
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "setiembre",
    "octubre",
    "noviembre",
    "diciembre",
];

/// A run that reads as an amount, a percentage, a time or a date: never
/// a code, whatever was asked before.
fn excluded(ws: &[Word], start: usize, end: usize) -> bool {
    const UNITS: &[&str] = &[
        "euro",
        "euros",
        "eur",
        "dolar",
        "dolares",
        "centimos",
        "pesos",
        "por",
        "porciento",
        "minuto",
        "minutos",
        "hora",
        "horas",
        "segundo",
        "segundos",
        "dia",
        "dias",
        "semana",
        "semanas",
        "mes",
        "meses",
        "ano",
        "anos",
        "gb",
        "megas",
        "gigas",
        "minutes",
        "hours",
        "days",
    ];
    // Words are in order: find the neighbours by binary search, so a long
    // text with many numbers stays linear.
    let first_after = ws.partition_point(|w| w.start < end);
    let first_before = ws.partition_point(|w| w.end <= start);
    let after: Vec<&str> = ws[first_after..]
        .iter()
        .take(2)
        .map(|w| w.folded.as_str())
        .collect();
    let before: Vec<&str> = ws[..first_before]
        .iter()
        .rev()
        .take(2)
        .map(|w| w.folded.as_str())
        .collect();
    after.first().is_some_and(|w| UNITS.contains(w))
        || (after.first() == Some(&"de") && after.get(1).is_some_and(|w| MONTHS.contains(w)))
        || before.iter().any(|w| MONTHS.contains(w))
        || matches!(
            before.first(),
            Some(&"extension" | &"ext" | &"planta" | &"las")
        )
}

/// The DNI check letter right after 8 digits, if it is the right one: as
/// a lone letter ("... 78 Z") or after "letra". Returns where it ends.
fn dni_letter_after(ws: &[Word], text: &str, end: usize, digits: &str) -> Option<usize> {
    let want = checks::dni_letter(digits)?.to_ascii_lowercase();
    let (letter, at) = letter_word_after(ws, text, end)?;
    (letter == want).then_some(at)
}

/// Any lone letter (or "letra X") right after `end`: where it ends.
fn letter_after(ws: &[Word], text: &str, end: usize) -> Option<usize> {
    letter_word_after(ws, text, end).map(|(_, at)| at)
}

fn letter_word_after(ws: &[Word], text: &str, end: usize) -> Option<(char, usize)> {
    let i = ws.partition_point(|w| w.start < end);
    if i >= ws.len() {
        return None;
    }
    let gap = &text[end..ws[i].start];
    if !gap
        .chars()
        .all(|c| c.is_whitespace() || matches!(c, ',' | '-' | '.'))
    {
        return None;
    }
    let lone = |w: &Word| {
        let mut cs = w.folded.chars();
        match (cs.next(), cs.next()) {
            (Some(c), None) if c.is_ascii_alphabetic() => Some(c),
            _ => None,
        }
    };
    if let Some(c) = lone(&ws[i]) {
        return Some((c, ws[i].end));
    }
    if ws[i].folded == "letra"
        && let Some(n) = ws.get(i + 1)
        && let Some(c) = lone(n)
    {
        return Some((c, n.end));
    }
    None
}

/// A NIE's X, Y or Z right before 7 digits: where it starts.
fn nie_prefix(ws: &[Word], text: &str, start: usize) -> Option<usize> {
    let w = &ws[..ws.partition_point(|w| w.end <= start)].last()?;
    let gap = &text[w.end..start];
    (matches!(w.folded.as_str(), "x" | "y" | "z")
        && gap.chars().all(|c| c.is_whitespace() || c == '-')
        && text[w.start..w.end].chars().all(|c| c.is_ascii_uppercase()))
    .then_some(w.start)
}

/// A phone number: 9 digits starting 6 to 9 (Spain), the same after 34
/// or 0034, or 7 to 15 digits after a phone word.
fn phone_like(text: &str, start: usize, d: &str, armed: bool) -> bool {
    let plus = text[..start].trim_end().ends_with('+');
    let national = |n: &str| n.len() == 9 && matches!(n.as_bytes()[0], b'6'..=b'9');
    national(d)
        || (plus || d.starts_with("34")) && d.strip_prefix("34").is_some_and(national)
        || d.strip_prefix("0034").is_some_and(national)
        || armed && (7..=15).contains(&d.len())
}

/// An IBAN starting at word `i` ("ES91 2100 0418 ..." or as one word):
/// where it ends, if the longest candidate passes mod-97.
fn iban_from(text: &str, ws: &[Word], i: usize) -> Option<usize> {
    let first = ws[i].folded.as_bytes();
    // "ES91..." as one word, or "ES" then "91..."; nothing else starts one.
    let starts = match first.len() {
        2 => first.iter().all(u8::is_ascii_alphabetic),
        n if n >= 4 => {
            first[..2].iter().all(u8::is_ascii_alphabetic)
                && first[2..4].iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    if !starts {
        return None;
    }
    let mut candidate = String::new();
    let mut best = None;
    for (k, w) in ws[i..].iter().enumerate() {
        if k > 0 {
            let gap = &text[ws[i + k - 1].end..w.start];
            if !gap.chars().all(|c| c == ' ' || c == '-') || gap.is_empty() {
                break;
            }
        }
        if !w.folded.bytes().all(|b| b.is_ascii_alphanumeric()) {
            break;
        }
        candidate.push_str(&w.folded);
        if candidate.len() > 34 {
            break;
        }
        if candidate.len() >= 4 && !candidate.as_bytes()[2..4].iter().all(u8::is_ascii_digit) {
            return None;
        }
        if checks::iban(&candidate) {
            best = Some(w.end);
        }
    }
    best
}

/// E-mail addresses: written (`ana.perez@example.com`) or spoken ("ana
/// punto perez arroba gmail punto com"). Byte ranges.
fn emails(text: &str, ws: &[Word]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let local = |c: char| c.is_alphanumeric() || "._%+-".contains(c);
    let domain = |c: char| c.is_alphanumeric() || ".-".contains(c);
    for (at, _) in text.match_indices('@') {
        let start = text[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| local(*c))
            .last()
            .map(|(i, _)| i);
        let right: String = text[at + 1..].chars().take_while(|c| domain(*c)).collect();
        let right = right.trim_end_matches(['.', '-']);
        if let Some(start) = start
            && right.contains('.')
        {
            out.push((start, at + 1 + right.len()));
        }
    }
    const JOIN: &[&str] = &["punto", "guion", "bajo", "dot"];
    let glued = |a: &Word, b: &Word| {
        let gap = &text[a.end..b.start];
        !gap.is_empty() && gap.chars().all(|c| "._-".contains(c))
    };
    for (k, w) in ws.iter().enumerate() {
        if w.folded != "arroba" || k == 0 || k + 1 >= ws.len() {
            continue;
        }
        let mut left = k - 1;
        while left > 0 {
            if glued(&ws[left - 1], &ws[left]) {
                left -= 1;
            } else if left >= 2 && JOIN.contains(&ws[left - 1].folded.as_str()) {
                left -= 2;
            } else {
                break;
            }
        }
        let mut right = k + 1;
        let mut dots = 0;
        loop {
            if right + 1 < ws.len() && glued(&ws[right], &ws[right + 1]) {
                dots += usize::from(text[ws[right].end..ws[right + 1].start].contains('.'));
                right += 1;
            } else if right + 2 < ws.len() && JOIN.contains(&ws[right + 1].folded.as_str()) {
                dots += usize::from(matches!(ws[right + 1].folded.as_str(), "punto" | "dot"));
                right += 2;
            } else {
                break;
            }
        }
        if dots > 0 {
            out.push((ws[left].start, ws[right].end));
        }
    }
    out
}
