use serde_json::json;

use super::*;

fn redact_alone(text: &str) -> String {
    let found = find::find(text, &Context::default(), false, &Enabled::all());
    find::replace(text, &found.spans)
}

#[test]
fn the_corpus_both_ways() {
    let mut wrong = Vec::new();
    let mut cases = 0;
    for line in include_str!("corpus.txt").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (input, want) = match line.strip_prefix("= ") {
            Some(same) => (same, same),
            None => line.split_once(" => ").expect("IN => OUT or = IN"),
        };
        cases += 1;
        let got = redact_alone(input);
        if got != want {
            wrong.push(format!("{input:?}\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(cases > 50, "corpus not read: {cases}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn transcript(call: &str, speaker: &str, text: &str, is_final: bool) -> Envelope {
    Envelope::from_value(json!({"type":"transcript","callId":call,"speaker":speaker,
        "text":text,"final":is_final,"utteranceId":"u","startMs":0,"endMs":1}))
    .unwrap()
}

fn text_of(e: &Envelope) -> &str {
    e.fields["text"].as_str().unwrap()
}

#[test]
fn the_answer_to_a_card_question_is_redacted_without_a_check_digit() {
    let r = Redactor::new(&Settings::default());
    let mut ask = transcript("c1", "agent", "¿Me dice el número de su tarjeta?", true);
    assert!(r.redact(&mut ask).is_empty());
    let mut answer = transcript("c1", "customer", "Sí, es el 4539 1488 0343.", true);
    let counts = r.redact(&mut answer);
    assert_eq!(text_of(&answer), "Sí, es el [TARJETA].");
    assert_eq!(counts.get(&Category::Card), Some(&1));
    assert_eq!(answer.fields["redacted"], json!({"card": 1}));
    // Another call heard nothing of it.
    let mut other = transcript("c2", "customer", "Es el 4539 1488 0343.", true);
    r.redact(&mut other);
    assert_eq!(text_of(&other), "Es el 4539 1488 0343.");
    assert!(other.fields.get("redacted").is_none());
}

/// The agent asks for the security code; what the customer's "Es 123."
/// becomes.
fn answer_to_a_code_question(r: &Redactor) -> String {
    r.redact(&mut transcript(
        "c1",
        "agent",
        "¿Y el código de seguridad?",
        true,
    ));
    let mut answer = transcript("c1", "customer", "Es 123.", true);
    r.redact(&mut answer);
    text_of(&answer).to_owned()
}

#[test]
fn context_lapses_and_ends_with_the_call() {
    let r = Redactor::new(&Settings {
        context_secs: 0,
        ..Settings::default()
    });
    assert_eq!(answer_to_a_code_question(&r), "Es 123.");

    let r = Redactor::new(&Settings::default());
    assert_eq!(answer_to_a_code_question(&r), "Es [CVV].");
    assert_eq!(r.remembered(), 1);
    let mut end =
        Envelope::from_value(json!({"type":"call.ended","callId":"c1","reason":"hangup"})).unwrap();
    r.redact(&mut end);
    assert_eq!(r.remembered(), 0);
}

#[test]
fn a_card_read_over_two_finals_is_checked_whole() {
    let r = Redactor::new(&Settings::default());
    let mut first = transcript(
        "c1",
        "customer",
        "Cuatro uno uno uno, uno uno uno uno",
        true,
    );
    r.redact(&mut first);
    // The other speaker in between changes nothing.
    r.redact(&mut transcript("c1", "agent", "Sí.", true));
    let mut second = transcript("c1", "customer", "uno uno uno uno, uno uno uno uno.", true);
    r.redact(&mut second);
    assert_eq!(text_of(&second), "[TARJETA].");
    // Digits that do not make a card with the ones before stay.
    let mut third = transcript("c1", "customer", "1234 y ya está", true);
    r.redact(&mut third);
    assert_eq!(text_of(&third), "1234 y ya está");
}

#[test]
fn no_partial_of_a_card_shows_more_than_six_digits() {
    let r = Redactor::new(&Settings::default());
    let said = "4111 1111 1111 1111";
    let mut shown = Vec::new();
    for end in 1..=said.len() {
        let mut partial = transcript("c1", "customer", &format!("Es el {}", &said[..end]), false);
        r.redact(&mut partial);
        shown.push(text_of(&partial).to_owned());
    }
    let mut last = transcript("c1", "customer", &format!("Es el {said}."), true);
    r.redact(&mut last);
    shown.push(text_of(&last).to_owned());
    for s in &shown {
        let digits = s.chars().filter(char::is_ascii_digit).count();
        assert!(digits <= 6, "{s:?} shows {digits} digits");
    }
    assert_eq!(shown.last().unwrap(), "Es el [TARJETA].");
}

#[test]
fn every_speech_field_is_redacted_and_ids_are_not() {
    let r = Redactor::new(&Settings::default());
    let mut summary = Envelope::from_value(json!({
        "type":"summary","callId":"c1","source":"llm","reason":"hangup",
        "agent":"PJSIP/200","caller":"612345678",
        "text":"El cliente dio su tarjeta 4111111111111111.",
        "followUps":"Confirmar el IBAN ES9121000418450200051332",
        "checklist":[{"id":"dni","label":"DNI 12345678Z","done":true}],
        "i18n":{"en":{"text":"Card 4111 1111 1111 1111"}},
        "redacted":{"card":99}
    }))
    .unwrap();
    let counts = r.redact(&mut summary);
    let f = &summary.fields;
    assert_eq!(f["text"], "El cliente dio su tarjeta [TARJETA].");
    assert_eq!(f["followUps"], "Confirmar el IBAN [IBAN]");
    assert_eq!(f["checklist"][0]["label"], "DNI [DNI]");
    assert_eq!(f["checklist"][0]["id"], "dni");
    assert_eq!(f["i18n"]["en"]["text"], "Card [TARJETA]");
    assert_eq!(f["caller"], "612345678");
    assert_eq!(f["agent"], "PJSIP/200");
    assert_eq!(counts.get(&Category::Card), Some(&2));
    assert_eq!(
        f["redacted"],
        json!({"card": 2, "id_document": 1, "iban": 1})
    );
}

#[test]
fn categories_turned_off_are_left_alone() {
    let r = Redactor::new(&Settings {
        cards: false,
        security_codes: false,
        id_documents: false,
        iban: false,
        ..Settings::default()
    });
    let text = "Tarjeta 4111 1111 1111 1111, DNI 12345678Z, CVV 123.";
    let mut e = transcript("c1", "customer", text, true);
    assert!(r.redact(&mut e).is_empty());
    assert_eq!(text_of(&e), text);

    let r = Redactor::new(&Settings::default());
    let text = "Escriba a ana@example.com o al 612 345 678.";
    let mut e = transcript("c1", "customer", text, true);
    r.redact(&mut e);
    assert_eq!(text_of(&e), text, "e-mail and phone are off by default");
}

#[test]
fn memory_is_bounded() {
    let r = Redactor::new(&Settings::default());
    for i in 0..(MAX_CALLS + 10) {
        r.redact(&mut transcript(
            &format!("c{i}"),
            "agent",
            "¿Su tarjeta?",
            true,
        ));
    }
    assert!(r.remembered() <= MAX_CALLS);
}
