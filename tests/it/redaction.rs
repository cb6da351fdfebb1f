//! Redaction through the real relay: what a customer reads out never
//! reaches the store, the database file, a live or replaying subscriber,
//! or the LLM prompt the orchestrator sends.

use std::time::Duration;

use serde_json::{Value, json};

use crate::orchestrator::{Answer, fake_llm, start_with_llm, until};
use crate::util::next_json;

/// The raw digits the customer reads out in the call below.
const RAW: &[&str] = &[
    "4539148803436467",
    "4539 1488 0343 6467",
    "12345678Z",
    "ES9121000418450200051332",
    "9876",
    "453914880343",
];

fn transcript(call: &str, speaker: &str, utt: &str, text: &str, fin: bool) -> Value {
    json!({"type":"transcript","callId":call,"speaker":speaker,"text":text,
           "utteranceId":utt,"final":fin,"startMs":0,"endMs":1000})
}

/// The call: the agent asks, the customer reads a card out in partials,
/// then a DNI, an IBAN, and a security code after the agent asks for it.
fn the_call(call: &str) -> Vec<Value> {
    vec![
        json!({"type":"call.started","callId":call,"agent":"PJSIP/200","caller":"600111222","direction":"inbound"}),
        transcript(
            call,
            "agent",
            "a-1",
            "¿Me dice el número de su tarjeta?",
            true,
        ),
        transcript(call, "customer", "c-1", "Sí, es el 4539", false),
        transcript(call, "customer", "c-1", "Sí, es el 4539 1488", false),
        transcript(call, "customer", "c-1", "Sí, es el 4539 1488 0343", false),
        transcript(
            call,
            "customer",
            "c-1",
            "Sí, es el 4539 1488 0343 6467.",
            true,
        ),
        transcript(
            call,
            "customer",
            "c-2",
            "Mi DNI es 12345678Z y el IBAN ES91 2100 0418 4502 0005 1332.",
            true,
        ),
        transcript(
            call,
            "agent",
            "a-2",
            "Perfecto. ¿Y el código de seguridad?",
            true,
        ),
        transcript(call, "customer", "c-3", "Nueve ocho siete seis.", true),
        transcript(
            call,
            "customer",
            "c-4",
            "Quiero cancelar la línea, me cobran el 20% más.",
            true,
        ),
    ]
}

fn assert_clean(what: &str, text: &str) {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    for raw in RAW {
        let squeezed: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            !text.contains(raw) && !digits.contains(&squeezed),
            "{what} holds {raw:?}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_read_out_reaches_the_store_subscribers_or_the_llm() {
    let (base, seen) = fake_llm(vec![
        Answer::Stream(vec!["Ofrezca ", "una alternativa."]),
        Answer::Stream(vec!["Ofrezca ", "una alternativa."]),
        Answer::Stream(vec!["Ofrezca ", "una alternativa."]),
        Answer::Stream(vec!["Motivo: baja\n", "Resultado: retenido\n"]),
    ])
    .await;
    let (relay, _orchestrator) = start_with_llm(&base).await;
    let mut live = relay.ws("callId=r-1").await;
    let mut stored = Vec::new();
    for event in the_call("r-1") {
        let (status, answer) = relay.post(&event).await;
        assert_eq!(status, 202, "{answer}");
        stored.push(answer["seq"].as_i64().unwrap());
    }

    // Live: every event as the relay fanned it out.
    let mut fanned = Vec::new();
    until(&mut live, &mut fanned, |e| {
        e["type"] == "tip" && e["source"] == "llm" && e["final"] == true
    })
    .await;
    let transcripts: Vec<&Value> = fanned
        .iter()
        .filter(|e| e["type"] == "transcript")
        .collect();
    assert_eq!(transcripts.len(), 9, "{fanned:?}");
    for e in &fanned {
        assert_clean("a live event", &e.to_string());
    }
    let text = |utt: &str| {
        transcripts
            .iter()
            .rfind(|e| e["utteranceId"] == utt)
            .map(|e| e["text"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(text("c-1"), "Sí, es el [TARJETA].");
    assert_eq!(text("c-2"), "Mi DNI es [DNI] y el IBAN [IBAN].");
    assert_eq!(text("c-3"), "[CVV].");
    // What is not personal data stays as it was said.
    assert_eq!(
        text("c-4"),
        "Quiero cancelar la línea, me cobran el 20% más."
    );
    let c2 = transcripts
        .iter()
        .find(|e| e["utteranceId"] == "c-2")
        .unwrap();
    assert_eq!(c2["redacted"], json!({"id_document": 1, "iban": 1}));
    // The agent asked for the card: even the first four digits are hidden.
    assert_eq!(transcripts[1]["text"], "Sí, es el [TARJETA]");

    // The orchestrator's LLM prompts saw only the redacted form.
    relay
        .publish(json!({"type":"call.ended","callId":"r-1","reason":"hangup"}))
        .await;
    until(&mut live, &mut fanned, |e| {
        e["type"] == "summary" && e["source"] == "llm"
    })
    .await;
    let prompts = seen.lock().unwrap().clone();
    assert!(!prompts.is_empty());
    let all_prompts: String = prompts.iter().map(|(_, b)| b.to_string()).collect();
    assert_clean("an LLM prompt", &all_prompts);
    assert!(all_prompts.contains("[TARJETA]"), "{all_prompts}");

    // Replay from the store.
    let mut replay = relay.ws("callId=r-1&since=0").await;
    let mut replayed = Vec::new();
    while let Some(e) = next_json(&mut replay, Duration::from_secs(5)).await {
        replayed.push(e.clone());
        if e["type"] == "summary" && e["source"] == "llm" {
            break;
        }
    }
    assert!(replayed.len() >= 10);
    for e in &replayed {
        assert_clean("a replayed event", &e.to_string());
    }

    // Every export.
    for format in ["txt", "json", "vtt"] {
        let (status, body) = relay
            .request(
                "GET",
                &format!("/calls/r-1/export?format={format}"),
                &[],
                "",
            )
            .await;
        assert_eq!(status, 200, "{format}: {body}");
        assert!(body.contains("[TARJETA]"), "{format}: {body}");
        assert_clean(&format!("the {format} export"), &body);
    }

    // The database files on disk, WAL included.
    let dir = relay.state_dir().join("relay");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        let text = String::from_utf8_lossy(&bytes);
        assert_clean("the relay's database", &text);
    }
    assert!(files >= 1);
    // (The files do hold the call: the check above looked at the right thing.)
    let db = std::fs::read(dir.join("events.sqlite3-wal"))
        .or_else(|_| std::fs::read(dir.join("events.sqlite3")))
        .unwrap();
    assert!(String::from_utf8_lossy(&db).contains("me cobran el 20%"));

    // The metrics count what was replaced, by category.
    let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
    for (category, at_least) in [
        ("card", 3),
        ("id_document", 1),
        ("iban", 1),
        ("security_code", 1),
    ] {
        let line = format!("relay_redactions_total{{category=\"{category}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(n >= at_least, "{category}: {n}\n{metrics}");
    }
    // And the log never shows what was said.
    assert_clean("the relay's log", &relay.log());
}
