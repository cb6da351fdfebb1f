//! Every type of the catalogue against a recorded example
//! (`tests/events/*.json`, also posted through a real relay by
//! `tests/it/relay.rs`): decoding then encoding gives the same bytes.

use super::*;

/// (file name, its text): one example per type and notable variant.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "call.started",
        include_str!("../../tests/events/call.started.json"),
    ),
    (
        "call.ended",
        include_str!("../../tests/events/call.ended.json"),
    ),
    (
        "call.ended.no-answer",
        include_str!("../../tests/events/call.ended.no-answer.json"),
    ),
    ("call.tap", include_str!("../../tests/events/call.tap.json")),
    (
        "call.tap.restored",
        include_str!("../../tests/events/call.tap.restored.json"),
    ),
    (
        "transcript",
        include_str!("../../tests/events/transcript.json"),
    ),
    (
        "transcript.gap",
        include_str!("../../tests/events/transcript.gap.json"),
    ),
    ("speech", include_str!("../../tests/events/speech.json")),
    (
        "tip.rules",
        include_str!("../../tests/events/tip.rules.json"),
    ),
    ("tip.llm", include_str!("../../tests/events/tip.llm.json")),
    (
        "checklist",
        include_str!("../../tests/events/checklist.json"),
    ),
    ("metrics", include_str!("../../tests/events/metrics.json")),
    (
        "summary.rules",
        include_str!("../../tests/events/summary.rules.json"),
    ),
    (
        "summary.llm",
        include_str!("../../tests/events/summary.llm.json"),
    ),
    (
        "relay.dropped",
        include_str!("../../tests/events/relay.dropped.json"),
    ),
];

#[test]
fn every_example_round_trips_byte_for_byte() {
    for (name, text) in EXAMPLES {
        let text = text.trim_end();
        let got = Received::parse(text).unwrap_or_else(|| panic!("{name}: not an event"));
        let event = got.event.unwrap_or_else(|| panic!("{name}: not decoded"));
        assert!(
            name.starts_with(event.type_name()),
            "{name}: {}",
            event.type_name()
        );
        assert_eq!(event.to_json(), text, "{name}");
    }
}

#[test]
fn every_type_has_an_example() {
    let types: std::collections::BTreeSet<&str> = EXAMPLES
        .iter()
        .filter_map(|(_, t)| Received::parse(t)?.event.map(|e| e.type_name()))
        .collect();
    for t in [
        "call.started",
        "call.ended",
        "call.tap",
        "transcript",
        "tip",
        "checklist",
        "metrics",
        "summary",
        "relay.dropped",
    ] {
        assert!(types.contains(t), "no example decodes as {t}");
    }
}

#[test]
fn relay_numbering_and_unknown_fields_are_accepted() {
    let text = r#"{"type":"transcript","callId":"c1","speaker":"agent","text":"hola","final":false,
        "utteranceId":"u1","startMs":0,"endMs":900,"seq":7,"ts":"2026-11-25T10:00:00.000Z","pos":99,
        "fromANewerPeer":{"x":1}}"#;
    let r = Received::parse(text).unwrap();
    assert_eq!(
        (r.seq, r.pos, r.ts.as_deref()),
        (Some(7), Some(99), Some("2026-11-25T10:00:00.000Z"))
    );
    match r.event {
        Some(Event::Transcript(t)) => {
            assert_eq!(t.speaker, Speaker::Agent);
            assert!(!t.is_final);
            assert_eq!(t.latency_ms, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_types_are_kept_not_refused() {
    let r = Received::parse(r#"{"type":"bench.tick","callId":"c","seq":3}"#).unwrap();
    assert_eq!(r.type_name, "bench.tick");
    assert_eq!(r.call_id, "c");
    assert_eq!(r.seq, Some(3));
    assert!(r.event.is_none());
    // A known type whose fields do not fit is not an error either.
    let r = Received::parse(r#"{"type":"tip","callId":"c"}"#).unwrap();
    assert!(r.event.is_none());
    assert!(Received::parse("[1]").is_none());
    assert!(Received::parse("{").is_none());
}
