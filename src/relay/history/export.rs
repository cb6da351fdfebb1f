//! A call's record for download: plain text, JSON (its events as stored)
//! and WebVTT (speaker-labelled cues). Built from the stored events, so it
//! holds what the relay stored: redacted.

use serde_json::Value;

use crate::event::{Event, Received};

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    WebVtt,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Result<Format, String> {
        match s.map(str::to_ascii_lowercase).as_deref() {
            None | Some("txt") | Some("text") => Ok(Format::Text),
            Some("json") => Ok(Format::Json),
            Some("vtt") | Some("webvtt") => Ok(Format::WebVtt),
            Some(other) => Err(format!("format must be txt, json or vtt, got {other:?}")),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; charset=utf-8",
            Format::Json => "application/json",
            Format::WebVtt => "text/vtt; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Text => "txt",
            Format::Json => "json",
            Format::WebVtt => "vtt",
        }
    }
}

/// One final utterance of the call.
struct Line<'a> {
    speaker: &'a str,
    start_ms: u64,
    end_ms: u64,
    text: &'a str,
}

/// The finals with words, in the order they were said; a revised final
/// (`revised`) in place of its utterance's first.
fn finals(events: &[Received]) -> Vec<Line<'_>> {
    let mut lines: Vec<Line<'_>> = Vec::new();
    // Utterance id -> its line.
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in events {
        let Some(Event::Transcript(t)) = &r.event else {
            continue;
        };
        if !t.is_final || t.text.trim().is_empty() {
            continue;
        }
        let line = Line {
            speaker: t.speaker.as_str(),
            start_ms: t.start_ms,
            end_ms: t.end_ms,
            text: t.text.trim(),
        };
        match at.get(t.utterance_id.as_str()) {
            Some(&i) if t.revised == Some(true) => lines[i] = line,
            _ => {
                if !t.utterance_id.is_empty() {
                    at.insert(&t.utterance_id, lines.len());
                }
                lines.push(line);
            }
        }
    }
    lines.sort_by_key(|l| l.start_ms);
    lines
}

fn label(speaker: &str) -> &str {
    match speaker {
        "agent" => "Agente",
        "customer" => "Cliente",
        "mix" => "Mezcla",
        other => other,
    }
}

/// `h:mm:ss.mmm` (WebVTT) or `m:ss` (text).
fn clock(ms: u64, vtt: bool) -> String {
    let s = ms / 1000;
    if vtt {
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            s / 3600,
            (s / 60) % 60,
            s % 60,
            ms % 1000
        )
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The call's record in `format`; `events` in `seq` order, as stored.
pub fn render(call_id: &str, events: &[Value], format: Format) -> String {
    if format == Format::Json {
        return serde_json::json!({ "callId": call_id, "events": events }).to_string();
    }
    let received: Vec<Received> = events
        .iter()
        .filter_map(|v| Received::from_value(v.clone()))
        .collect();
    let lines = finals(&received);
    if format == Format::WebVtt {
        let mut out = format!("WEBVTT - call {call_id}\n\n");
        for (i, l) in lines.iter().enumerate() {
            let end = l.end_ms.max(l.start_ms + 1);
            out += &format!(
                "{}\n{} --> {}\n<v {}>{}\n\n",
                i + 1,
                clock(l.start_ms, true),
                clock(end, true),
                label(l.speaker),
                // A cue's text may not hold "-->" nor start a tag.
                l.text
                    .replace("-->", "->")
                    .replace('<', "‹")
                    .replace('\n', " ")
            );
        }
        return out;
    }
    let mut out = format!("Llamada {call_id}\n");
    for r in &received {
        match &r.event {
            Some(Event::CallStarted(c)) => {
                for (name, v) in [("Agente", &c.agent), ("Cliente", &c.caller)] {
                    if !v.is_empty() {
                        out += &format!("{name}: {v}\n");
                    }
                }
                if let Some(ts) = &r.ts {
                    out += &format!("Inicio: {ts}\n");
                }
            }
            Some(Event::CallEnded(_)) => {
                if let Some(ts) = &r.ts {
                    out += &format!("Fin: {ts}\n");
                }
            }
            _ => {}
        }
    }
    out.push('\n');
    for l in &lines {
        out += &format!(
            "[{}] {}: {}\n",
            clock(l.start_ms, false),
            label(l.speaker),
            l.text
        );
    }
    let summary = received.iter().rev().find_map(|r| match &r.event {
        Some(Event::Summary(s)) => Some(s.text.as_str()),
        _ => None,
    });
    if let Some(text) = summary {
        out += &format!("\nResumen: {text}\n");
    }
    out
}

/// The `Content-Disposition` file name of a call's export.
pub fn file_name(call_id: &str, format: Format) -> String {
    // Call ids are [A-Za-z0-9._:-]; ':' is not welcome in file names.
    format!("call-{}.{}", call_id.replace(':', "_"), format.extension())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call() -> Vec<Value> {
        vec![
            json!({"type":"call.started","callId":"x","agent":"PJSIP/200","caller":"600","ts":"2026-11-26T09:00:00.000Z","seq":1}),
            json!({"type":"transcript","callId":"x","speaker":"customer","text":"Hola, <b>quiero</b> --> ayuda","final":true,"startMs":3500,"endMs":5250}),
            json!({"type":"transcript","callId":"x","speaker":"agent","text":"Buenos días.","final":true,"startMs":1000,"endMs":2000}),
            json!({"type":"transcript","callId":"x","speaker":"agent","text":"Buenos","final":false,"startMs":1000,"endMs":1500}),
            json!({"type":"summary","callId":"x","text":"Pide ayuda.","source":"rules","reason":"hangup",
                "durationMs":5000,"metrics":crate::event::Figures::default(),"rulesFired":{},"checklist":[]}),
        ]
    }

    #[test]
    fn text_and_webvtt_hold_the_finals_in_order() {
        let txt = render("x", &call(), Format::Text);
        assert!(txt.contains("Agente: PJSIP/200\n"), "{txt}");
        let body: Vec<&str> = txt.lines().filter(|l| l.starts_with('[')).collect();
        assert_eq!(
            body,
            [
                "[0:01] Agente: Buenos días.",
                "[0:03] Cliente: Hola, <b>quiero</b> --> ayuda"
            ]
        );
        assert!(txt.ends_with("Resumen: Pide ayuda.\n"));

        let vtt = render("x", &call(), Format::WebVtt);
        assert!(vtt.starts_with("WEBVTT"));
        assert!(
            vtt.contains("1\n00:00:01.000 --> 00:00:02.000\n<v Agente>Buenos días.\n"),
            "{vtt}"
        );
        assert!(
            vtt.contains(
                "2\n00:00:03.500 --> 00:00:05.250\n<v Cliente>Hola, ‹b>quiero‹/b> -> ayuda\n"
            ),
            "{vtt}"
        );

        let j: Value = serde_json::from_str(&render("x", &call(), Format::Json)).unwrap();
        assert_eq!(j["events"].as_array().unwrap().len(), 5);
        assert_eq!(file_name("a:b", Format::WebVtt), "call-a_b.vtt");
        assert!(Format::parse(Some("pdf")).is_err());
    }

    #[test]
    fn a_revised_final_takes_its_first_finals_place() {
        let events = vec![
            json!({"type":"transcript","callId":"x","speaker":"customer","text":"cuatro cinco seis","final":true,"utteranceId":"c-1","startMs":1000,"endMs":3000}),
            json!({"type":"transcript","callId":"x","speaker":"agent","text":"Gracias.","final":true,"utteranceId":"a-1","startMs":4000,"endMs":5000}),
            json!({"type":"transcript","callId":"x","speaker":"customer","text":"456","final":true,"revised":true,"utteranceId":"c-1","startMs":1000,"endMs":3000}),
            // Another utterance's first final with a reused id stays.
            json!({"type":"transcript","callId":"x","speaker":"agent","text":"Otra.","final":true,"utteranceId":"a-1","startMs":6000,"endMs":7000}),
        ];
        let txt = render("x", &events, Format::Text);
        let body: Vec<&str> = txt.lines().filter(|l| l.starts_with('[')).collect();
        assert_eq!(
            body,
            [
                "[0:01] Cliente: 456",
                "[0:04] Agente: Gracias.",
                "[0:06] Agente: Otra."
            ]
        );
    }
}
