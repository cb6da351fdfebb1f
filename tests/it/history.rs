//! Past calls through the real relay: history with filters and full-text
//! search (accents folded), exports, scorecards, erasure, the token rules,
//! and bad input answered 4xx.

use serde_json::{Value, json};

use crate::util::{AGENT200, PUBLISH, Relay, SUPERVISOR, Service, tokens_file};

fn said(call: &str, speaker: &str, utt: &str, text: &str, start: u64) -> Value {
    json!({"type":"transcript","callId":call,"speaker":speaker,"text":text,
           "utteranceId":utt,"final":true,"startMs":start,"endMs":start + 1500})
}

/// One whole call: started, said, a rule tip, the checklist, the summary,
/// ended. `missed`: the identification item left undone.
fn a_call(
    call: &str,
    agent: &str,
    lines: &[(&str, &str)],
    rule: Option<&str>,
    missed: bool,
) -> Vec<Value> {
    let mut events = vec![
        json!({"type":"call.started","callId":call,"agent":agent,"caller":"600111222","direction":"inbound"}),
    ];
    for (i, (speaker, text)) in lines.iter().enumerate() {
        events.push(said(
            call,
            speaker,
            &format!("u{i}"),
            text,
            1000 + 2000 * i as u64,
        ));
    }
    if let Some(rule) = rule {
        events.push(json!({"type":"tip","callId":call,"tipId":format!("{call}-t"),"text":"Ofrezca una alternativa.","source":"rules","final":true,"severity":"warning","rule":rule}));
    }
    let checklist = json!([
        {"id":"saludo","label":"Saludo","done":true},
        {"id":"identificacion","label":"Identificación","done":!missed}
    ]);
    events.push(json!({"type":"summary","callId":call,"text":format!("Llamada {call}."),"source":"rules","reason":"customer-hangup","agent":agent,"durationMs":42_000,
        "metrics":{"agentTalkRatio":0.4,"agentTalkRatio2m":0.4,"agentWpm":150.0,"customerWpm":140.0,"silenceMs":3000,"overtalkMs":1000,"longestAgentMonologueMs":5000,"customerQuestions":1,"agentSpeechMs":10000,"customerSpeechMs":15000},
        "rulesFired": rule.map(|r| json!({r: 1})).unwrap_or(json!({})),
        "checklist": checklist}));
    events.push(json!({"type":"call.ended","callId":call,"reason":"customer-hangup"}));
    events
}

async fn get(relay: &Relay, path: &str) -> (u16, Value) {
    let (status, body) = relay.request("GET", path, &[], "").await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn ids(page: &Value) -> Vec<String> {
    page["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|c| c["callId"].as_str().unwrap().to_owned())
        .collect()
}

async fn publish_all(relay: &mut Service, events: Vec<Value>) {
    relay.token = Some(PUBLISH.into());
    for e in events {
        relay.publish(e).await;
    }
    relay.token = Some(SUPERVISOR.into());
}

#[tokio::test(flavor = "multi_thread")]
async fn past_calls_are_found_exported_scored_and_erased() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let mut relay = Relay::start(&[("RELAY_TOKENS_FILE", tokens.to_str().unwrap())]);
    publish_all(
        &mut relay,
        a_call(
            "h-1",
            "PJSIP/200",
            &[
                ("agent", "Buenos días, ¿en qué le ayudo?"),
                ("customer", "Quería cancelar la línea del móvil."),
            ],
            Some("cancelacion"),
            false,
        ),
    )
    .await;
    publish_all(
        &mut relay,
        a_call(
            "h-2",
            "PJSIP/201",
            &[("customer", "Tengo un problema con la factura de marzo.")],
            None,
            true,
        ),
    )
    .await;
    publish_all(
        &mut relay,
        a_call(
            "h-3",
            "PJSIP/200",
            &[("customer", "El router parpadea en naranja.")],
            None,
            true,
        ),
    )
    .await;

    // Newest first; a cursor pages through.
    let (status, all) = get(&relay, "/history").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(ids(&all), ["h-3", "h-2", "h-1"]);
    let h1 = &all["calls"][2];
    assert_eq!(h1["agent"], "PJSIP/200");
    assert_eq!(h1["durationMs"], 42_000);
    assert_eq!(h1["summary"], "Llamada h-1.");
    assert_eq!(h1["rulesFired"], json!({"cancelacion": 1}));
    assert_eq!(h1["missed"], json!([]));
    assert_eq!(all["calls"][1]["missed"], json!(["identificacion"]));
    let (_, first) = get(&relay, "/history?limit=2").await;
    assert_eq!(ids(&first), ["h-3", "h-2"]);
    let next = first["next"].as_str().unwrap();
    let (_, second) = get(&relay, &format!("/history?limit=2&before={next}")).await;
    assert_eq!(ids(&second), ["h-1"]);
    assert!(second.get("next").is_none());

    // Search: a word said in the call, any case, accents or not.
    for q in ["linea", "LÍNEA", "cancelar+linea", "Línea%20móvil"] {
        let (status, found) = get(&relay, &format!("/history?q={q}")).await;
        assert_eq!(status, 200, "{q}: {found}");
        assert_eq!(ids(&found), ["h-1"], "{q}");
    }
    let (_, found) = get(&relay, "/history?q=cancelar").await;
    assert!(
        found["calls"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("[cancelar]"),
        "{found}"
    );
    let (_, none) = get(&relay, "/history?q=hipoteca").await;
    assert_eq!(ids(&none), Vec::<String>::new());
    // Filters: agent, rule fired, item missed, dates.
    assert_eq!(
        ids(&get(&relay, "/history?agent=PJSIP/201").await.1),
        ["h-2"]
    );
    assert_eq!(
        ids(&get(&relay, "/history?rule=cancelacion").await.1),
        ["h-1"]
    );
    assert_eq!(
        ids(&get(&relay, "/history?missed=identificacion").await.1),
        ["h-3", "h-2"]
    );
    assert_eq!(
        ids(&get(&relay, "/history?from=2020-01-01&to=2020-01-31")
            .await
            .1),
        Vec::<String>::new()
    );

    // Bad input: a clear 400 naming what is wrong, never a 500.
    for (query, needle) in [
        ("from=ayer", "from must be"),
        ("from=2026-02-30", "from must be"),
        ("from=2020-01-01&to=2026-01-01", "400 days"),
        ("q=%22linea%22", "not searchable"),
        ("q=linea*", "not searchable"),
        ("q=NEAR(linea%20movil)", "not searchable"),
        ("q=text:linea", "not searchable"),
        ("q=-", "no word"),
        ("limit=100000", "limit"),
        ("before=1_", "before"),
        ("order=asc", "unknown parameter"),
    ] {
        let (status, body) = get(&relay, &format!("/history?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    assert_eq!(get(&relay, "/scorecards?to=never").await.0, 400);
    assert_eq!(get(&relay, "/scorecards?format=pdf").await.0, 400);
    assert_eq!(get(&relay, "/calls/h-1/export?format=doc").await.0, 400);
    assert_eq!(get(&relay, "/calls/nope/export").await.0, 404);
    assert_eq!(get(&relay, "/calls/h-1").await.0, 405);

    // Exports: text, JSON events, WebVTT with speakers.
    let (status, txt) = relay
        .request("GET", "/calls/h-1/export?format=txt", &[], "")
        .await;
    assert_eq!(status, 200);
    assert!(
        txt.contains("[0:01] Agente: Buenos días, ¿en qué le ayudo?"),
        "{txt}"
    );
    assert!(
        txt.contains("[0:03] Cliente: Quería cancelar la línea del móvil."),
        "{txt}"
    );
    let (_, json_export) = get(&relay, "/calls/h-1/export?format=json").await;
    assert_eq!(json_export["events"].as_array().unwrap().len(), 6);
    assert_eq!(json_export["events"][0]["seq"], 1);
    let (_, vtt) = relay
        .request("GET", "/calls/h-1/export?format=vtt", &[], "")
        .await;
    assert!(vtt.starts_with("WEBVTT"), "{vtt}");
    assert!(
        vtt.contains("00:00:03.000 --> 00:00:04.500\n<v Cliente>Quería cancelar"),
        "{vtt}"
    );

    // Scorecards per agent, and as CSV.
    let (status, cards) = get(&relay, "/scorecards").await;
    assert_eq!(status, 200, "{cards}");
    let agents = cards["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    let a200 = agents.iter().find(|a| a["agent"] == "PJSIP/200").unwrap();
    assert_eq!(a200["calls"], 2);
    assert_eq!(a200["avgHandleMs"], 42_000.0);
    assert_eq!(a200["talkRatio"], 0.4);
    assert_eq!(a200["rules"], json!({"cancelacion": 1}));
    assert_eq!(a200["checklist"]["identificacion"]["done"], 1);
    assert_eq!(a200["checklist"]["identificacion"]["calls"], 2);
    let (status, csv) = relay
        .request("GET", "/scorecards?format=csv", &[], "")
        .await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("agent,calls,avg_handle_secs"), "{csv}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("PJSIP/200,2,42.0,84.0,0.400,3.0,1.0,1,0.500,1.000")),
        "{csv}"
    );

    // An agent sees their own calls only; a publisher none.
    relay.token = Some(AGENT200.into());
    assert_eq!(ids(&get(&relay, "/history").await.1), ["h-3", "h-1"]);
    assert_eq!(
        ids(&get(&relay, "/history?agent=PJSIP/201").await.1),
        Vec::<String>::new()
    );
    assert_eq!(get(&relay, "/calls/h-2/export").await.0, 403);
    assert_eq!(get(&relay, "/calls/h-1/export").await.0, 200);
    assert_eq!(relay.request("DELETE", "/calls/h-1", &[], "").await.0, 403);
    relay.token = Some(PUBLISH.into());
    assert_eq!(get(&relay, "/history").await.0, 403);
    relay.token = None;
    assert_eq!(get(&relay, "/history").await.0, 401);

    // A supervisor erases a call: gone from history, search, export and
    // the database file.
    relay.token = Some(SUPERVISOR.into());
    let (status, body) = relay.request("DELETE", "/calls/h-1", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["deleted"], 6);
    assert_eq!(ids(&get(&relay, "/history").await.1), ["h-3", "h-2"]);
    assert_eq!(
        ids(&get(&relay, "/history?q=linea").await.1),
        Vec::<String>::new()
    );
    assert_eq!(get(&relay, "/calls/h-1/export").await.0, 404);
    assert_eq!(relay.request("DELETE", "/calls/h-1", &[], "").await.0, 404);
    let files = std::fs::read_dir(relay.state_dir().join("relay")).unwrap();
    for f in files {
        let path = f.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("Quería cancelar"),
            "{} still holds the call",
            path.display()
        );
        assert!(
            !text.contains("cancelar la"),
            "{} still holds the call",
            path.display()
        );
    }
    let log = relay.log();
    assert!(
        log.contains("call erased on request") && log.contains("h-1"),
        "{log}"
    );
    assert!(!log.contains("cancelar"), "the log holds what was said");

    // The history is on disk: a restarted relay answers the same.
    let mut relay = relay.kill_and_restart();
    relay.token = Some(SUPERVISOR.into());
    assert_eq!(ids(&get(&relay, "/history?q=naranja").await.1), ["h-3"]);
    assert_eq!(ids(&get(&relay, "/history").await.1), ["h-3", "h-2"]);
}

#[test]
fn bench_history_prints_search_latency() {
    let (code, out, err) = crate::util::run_bin(
        None,
        &["bench-history", "--calls", "300", "--queries", "3"],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("history of 300 calls"), "{out}");
    for question in [
        "latest 50, no filter",
        "a common word",
        "two words",
        "rule fired + item missed",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(question))
            .unwrap_or_else(|| panic!("no {question:?} line:\n{out}"));
        let figures: Vec<f64> = line[question.len()..]
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(figures.len(), 4, "{line}");
        assert!(figures[0] > 0.0 && figures[3] > 0.0, "{line}");
    }
}
