//! The orchestrator against a real relay: tips from the rules coach (once
//! per utterance), the checklist ticking, live metrics, the summary.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Service, event_url, next_json};

/// The orchestrator follows all calls from the moment it subscribes: waits
/// until the relay counts its subscription.
async fn wait_for_subscriber(relay: &Service) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
        if metrics.lines().any(|l| l == "relay_subscribers 1") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orchestrator never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Collects events until one satisfies `done`.
pub(crate) async fn until(
    ws: &mut crate::util::Ws,
    seen: &mut Vec<Value>,
    done: impl Fn(&Value) -> bool,
) {
    loop {
        let ev = next_json(ws, Duration::from_secs(20))
            .await
            .expect("an event");
        let stop = done(&ev);
        seen.push(ev);
        if stop {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn coaches_a_call_from_its_transcripts() {
    let relay = Service::start(&[]);
    let ws_url = format!("ws://{}/ws", relay.addr);
    let _orchestrator = Service::start_named(
        "orchestrator",
        &[
            ("RELAY_WS", &ws_url),
            ("RELAY_EVENT", &event_url(&relay)),
            ("CALL_COACH_ORCHESTRATOR__METRICS_EVERY_SECS", "1"),
        ],
    );
    wait_for_subscriber(&relay).await;
    let mut sub = relay.ws("callId=c-1").await;
    let t = |speaker: &str, text: &str, id: &str, fin: bool, s: u64, e: u64| {
        json!({"type":"transcript","callId":"c-1","speaker":speaker,"text":text,
               "utteranceId":id,"final":fin,"startMs":s,"endMs":e})
    };
    relay
        .publish(json!({"type":"call.started","callId":"c-1","agent":"PJSIP/200","caller":"600"}))
        .await;
    relay
        .publish(t(
            "agent",
            "Buenos días, le informo que esta llamada puede ser grabada.",
            "a-1",
            true,
            0,
            4_000,
        ))
        .await;
    // The same words in a partial and its final: one tip.
    relay
        .publish(t("customer", "Quiero cancelar", "c-1", false, 4_500, 5_500))
        .await;
    relay
        .publish(t(
            "customer",
            "Quiero cancelar el contrato, es demasiado caro.",
            "c-1",
            true,
            4_500,
            7_000,
        ))
        .await;
    let mut seen = Vec::new();
    until(&mut sub, &mut seen, |e| e["type"] == "metrics").await;
    relay
        .publish(json!({"type":"call.ended","callId":"c-1","reason":"hangup"}))
        .await;
    until(&mut sub, &mut seen, |e| e["type"] == "summary").await;
    // A final that reaches the relay just after call.ended (stt finishing
    // the last words during teardown) does not bring the call back.
    relay
        .publish(t(
            "customer",
            "Es demasiado caro.",
            "c-9",
            true,
            8_000,
            9_000,
        ))
        .await;
    let mut other = relay.ws("callId=c-2").await;
    relay
        .publish(json!({"type":"transcript","callId":"c-2","speaker":"customer",
                        "text":"Quiero cancelar.","utteranceId":"x","final":true,"startMs":0,"endMs":900}))
        .await;
    let mut seen_other = Vec::new();
    until(&mut other, &mut seen_other, |e| e["type"] == "tip").await;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        if let Message::Text(t) = m {
            let ev: Value = serde_json::from_str(&t).unwrap();
            // (The call's last metrics may still trail its summary.)
            assert!(
                ev["type"] == "transcript" || ev["type"] == "metrics",
                "c-1 came back after its end: {ev}"
            );
        }
    }

    let of = |ty: &str| -> Vec<&Value> { seen.iter().filter(|e| e["type"] == ty).collect() };
    let tips = of("tip");
    let rules: Vec<&str> = tips.iter().map(|t| t["rule"].as_str().unwrap()).collect();
    assert_eq!(
        rules.iter().filter(|r| **r == "cancelacion").count(),
        1,
        "{rules:?}"
    );
    assert!(rules.contains(&"precio"), "{rules:?}");
    for tip in &tips {
        assert_eq!(tip["source"], "rules");
        assert_eq!(tip["final"], true);
        assert!(tip["tipId"].as_str().unwrap().starts_with("rules-"));
        assert!(["info", "warn", "critical"].contains(&tip["severity"].as_str().unwrap()));
    }
    let checklist = of("checklist");
    let items = checklist.last().expect("a checklist event")["items"]
        .as_array()
        .unwrap()
        .clone();
    let notice = items.iter().find(|i| i["id"] == "aviso-grabacion").unwrap();
    assert_eq!(notice["done"], true);
    let metrics = of("metrics");
    let last = metrics.last().unwrap();
    assert_eq!(last["agentSpeechMs"], 4_000);
    assert_eq!(last["customerSpeechMs"], 2_500);
    assert!(last["agentTalkRatio"].as_f64().unwrap() > 0.6);
    let summary = of("summary")[0];
    assert_eq!(summary["reason"], "hangup");
    assert_eq!(summary["agent"], "PJSIP/200");
    // Rules by title, in Spanish and in English, never by id.
    let text = summary["text"].as_str().unwrap();
    assert!(
        text.contains("Quiere darse de baja")
            && text.contains("falta")
            && !text.contains("cancelacion"),
        "{text}"
    );
    let english = summary["i18n"]["en"]["text"].as_str().unwrap();
    assert!(
        english.contains("Wants to cancel") && english.contains("missing: Identity check"),
        "{english}"
    );
    let cancel = tips.iter().find(|t| t["rule"] == "cancelacion").unwrap();
    assert_eq!(cancel["title"], "Quiere darse de baja");
    assert_eq!(cancel["i18n"]["en"]["title"], "Wants to cancel");
    assert!(
        cancel["i18n"]["en"]["text"]
            .as_str()
            .unwrap()
            .starts_with("The customer wants to leave")
    );
    assert_eq!(notice["i18n"]["en"]["label"], "Recording notice");
}

/// What the stand-in LLM server answers, request by request.
#[derive(Clone)]
pub(crate) enum Answer {
    /// SSE chunks of `delta.content`, with a pause before each.
    Stream(Vec<&'static str>),
    /// An error status, with `Retry-After` seconds if given.
    Status(u16, Option<u64>),
    /// A 200 event stream with this body as it is (for broken streams).
    Raw(&'static str),
}

/// A local server that speaks OpenAI's chat-completions protocol: `POST
/// /v1/chat/completions` with `stream: true` answered as server-sent events
/// (`data: {chunk}` lines, then `data: [DONE]`), or an error status. Returns
/// its base URL and the requests it received.
pub(crate) async fn fake_llm(
    script: Vec<Answer>,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>> = Default::default();
    let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        script,
    )));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (log, script) = (log.clone(), script.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, script) = (log.clone(), script.clone());
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            log.lock().unwrap().push((format!("{path} {auth}"), json));
                            let answer = script
                                .lock()
                                .unwrap()
                                .pop_front()
                                .unwrap_or(Answer::Status(500, None));
                            let (tx, rx) = tokio::sync::mpsc::channel::<
                                Result<Frame<Bytes>, std::convert::Infallible>,
                            >(8);
                            let mut resp = hyper::Response::builder();
                            match answer {
                                Answer::Status(code, retry) => {
                                    resp = resp.status(code);
                                    if let Some(r) = retry {
                                        resp = resp.header("retry-after", r.to_string());
                                    }
                                    drop(tx);
                                }
                                Answer::Raw(body) => {
                                    resp = resp.header("content-type", "text/event-stream");
                                    tokio::spawn(async move {
                                        let _ = tx.send(Ok(Frame::data(Bytes::from(body)))).await;
                                    });
                                }
                                Answer::Stream(chunks) => {
                                    resp = resp.header("content-type", "text/event-stream");
                                    tokio::spawn(async move {
                                        for c in chunks {
                                            tokio::time::sleep(Duration::from_millis(200)).await;
                                            let chunk =
                                                json!({"choices":[{"delta":{"content":c}}]});
                                            let _ = tx
                                                .send(Ok(Frame::data(Bytes::from(format!(
                                                    "data: {chunk}\n\n"
                                                )))))
                                                .await;
                                        }
                                        let usage =
                                            json!({"choices":[],"usage":{"total_tokens":321}});
                                        let _ = tx
                                            .send(Ok(Frame::data(Bytes::from(format!(
                                                "data: {usage}\n\ndata: [DONE]\n\n"
                                            )))))
                                            .await;
                                    });
                                }
                            }
                            let stream = tokio_stream_from(rx);
                            Ok::<_, std::convert::Infallible>(
                                resp.body(StreamBody::new(stream)).unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (base, seen)
}

/// A receiver as a stream of body frames.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// One final utterance of the customer, as stt would publish it.
async fn customer_says(relay: &Service, call: &str, text: &str) {
    relay
        .publish(
            json!({"type":"transcript","callId":call,"speaker":"customer","text":text,
                        "utteranceId":"c-1","final":true,"startMs":0,"endMs":2000}),
        )
        .await;
}

/// A relay and an orchestrator whose LLM is `llm_base`; waits until the
/// orchestrator follows the relay.
pub(crate) async fn start_with_llm(llm_base: &str) -> (Service, Service) {
    start_with_llm_and(llm_base, &[]).await
}

async fn start_with_llm_and(llm_base: &str, extra: &[(&str, &str)]) -> (Service, Service) {
    let relay = Service::start(&[]);
    let ws_url = format!("ws://{}/ws", relay.addr);
    let relay_event = event_url(&relay);
    let mut env = vec![
        ("RELAY_WS", ws_url.as_str()),
        ("RELAY_EVENT", relay_event.as_str()),
        ("LLM_BASE_URL", llm_base),
        ("OPENROUTER_API_KEY", "sk-test-secret"),
        ("OPENROUTER_MODEL", "test/model"),
        ("CALL_COACH_ORCHESTRATOR__LLM_DEBOUNCE_MS", "100"),
    ];
    env.extend_from_slice(extra);
    let orchestrator = Service::start_named("orchestrator", &env);
    wait_for_subscriber(&relay).await;
    (relay, orchestrator)
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_tips_stream_in_after_a_429() {
    let (base, seen) = fake_llm(vec![
        Answer::Status(429, Some(1)),
        Answer::Stream(vec!["Pregunta ", "qué le haría ", "quedarse."]),
        Answer::Stream(vec![
            "Motivo: baja del servicio\n",
            "Resultado: se ofrece un descuento\n",
            "Seguimiento: llamar el lunes",
        ]),
    ])
    .await;
    let (relay, orchestrator) = start_with_llm(&base).await;
    let mut sub = relay.ws("callId=l-1").await;
    customer_says(&relay, "l-1", "Quiero cancelar mi línea.").await;
    let mut seen_events = Vec::new();
    until(&mut sub, &mut seen_events, |e| {
        e["source"] == "llm" && e["final"] == true
    })
    .await;
    let llm: Vec<&Value> = seen_events
        .iter()
        .filter(|e| e["source"] == "llm")
        .collect();
    assert!(
        llm.len() >= 2,
        "no streamed update before the final: {llm:?}"
    );
    let id = &llm[0]["tipId"];
    assert!(llm.iter().all(|e| &e["tipId"] == id), "{llm:?}");
    assert!(llm.iter().rev().skip(1).all(|e| e["final"] == false));
    assert_eq!(
        llm.last().unwrap()["text"],
        "Pregunta qué le haría quedarse."
    );
    // The rules coach answered too, without waiting for the LLM.
    let rules_at = seen_events
        .iter()
        .position(|e| e["rule"] == "cancelacion")
        .expect("rules tip");
    assert!(
        rules_at
            < seen_events
                .iter()
                .position(|e| e["source"] == "llm")
                .unwrap()
    );
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "one 429, one retry");
    let (line, body) = &requests[1];
    assert_eq!(line, "/v1/chat/completions Bearer sk-test-secret");
    assert_eq!(body["model"], "test/model");
    assert_eq!(body["stream"], true);
    assert!(
        body["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("CLIENTE: Quiero cancelar")
    );
    assert!(
        !orchestrator.log().contains("sk-test-secret"),
        "the key reached the log"
    );

    // After the call, the rules summary at once, then the LLM's.
    relay
        .publish(json!({"type":"call.ended","callId":"l-1","reason":"hangup"}))
        .await;
    let mut after = Vec::new();
    until(&mut sub, &mut after, |e| {
        e["type"] == "summary" && e["source"] == "llm"
    })
    .await;
    let rules_summary = after
        .iter()
        .find(|e| e["type"] == "summary" && e["source"] == "rules");
    assert!(rules_summary.is_some(), "{after:?}");
    let llm_summary = after.last().unwrap();
    assert_eq!(llm_summary["callReason"], "baja del servicio");
    assert_eq!(llm_summary["outcome"], "se ofrece un descuento");
    assert_eq!(llm_summary["followUps"], "llamar el lunes");
    assert_eq!(llm_summary["reason"], "hangup");
    assert!(llm_summary["checklist"].is_array());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_stream_is_retried() {
    let (base, seen) = fake_llm(vec![
        Answer::Raw("data: {\"choices\": [oops\n\n"),
        Answer::Stream(vec!["Ofrezca ", "la tarifa plana."]),
    ])
    .await;
    let (relay, _orchestrator) = start_with_llm(&base).await;
    let mut sub = relay.ws("callId=l-3").await;
    customer_says(&relay, "l-3", "¿Tienen algo más barato?").await;
    let mut events = Vec::new();
    until(&mut sub, &mut events, |e| {
        e["source"] == "llm" && e["final"] == true
    })
    .await;
    assert_eq!(events.last().unwrap()["text"], "Ofrezca la tarifa plana.");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_llm_leaves_the_rules_coach_working() {
    let (base, seen) = fake_llm(vec![]).await; // every request: 500
    let (relay, _orchestrator) = start_with_llm(&base).await;
    let mut sub = relay.ws("callId=l-2").await;
    customer_says(&relay, "l-2", "Quiero hablar con un supervisor.").await;
    let mut events = Vec::new();
    until(&mut sub, &mut events, |e| e["rule"] == "supervisor").await;
    // Three attempts, then it gives up; nothing from the LLM is published.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retries did not happen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay
        .publish(json!({"type":"call.ended","callId":"l-2","reason":"hangup"}))
        .await;
    until(&mut sub, &mut events, |e| e["type"] == "summary").await;
    assert!(events.iter().all(|e| e["source"] != "llm"), "{events:?}");
    // Three attempts for the tip; the summary's request may follow.
    assert!(seen.lock().unwrap().len() >= 3);
}

/// Five failures in a row open the breaker: later requests are not sent
/// at all until it closes.
#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_stops_calling_a_failing_provider() {
    let (base, seen) = fake_llm(vec![]).await; // every request: 500
    let (relay, _orchestrator) = start_with_llm_and(
        &base,
        &[("CALL_COACH_ORCHESTRATOR__LLM_MAX_CONCURRENT", "1")],
    )
    .await;
    // b-1: 3 attempts; b-2: 2 more, then the breaker opens; b-3: none.
    for (call, expected) in [("b-1", 3), ("b-2", 5), ("b-3", 5)] {
        let mut sub = relay.ws(&format!("callId={call}")).await;
        customer_says(&relay, call, "Quiero cancelar.").await;
        // Its rules tip comes regardless.
        let mut events = Vec::new();
        until(&mut sub, &mut events, |e| e["rule"] == "cancelacion").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.lock().unwrap().len() < expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{call}: fewer attempts than expected"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The open breaker sends nothing for b-3, even given time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(seen.lock().unwrap().len(), 5);
}

/// A provider slower than `llm_timeout_secs` is cut off and retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_stream_times_out_and_is_retried() {
    let (base, seen) = fake_llm(vec![
        // Eight chunks 200 ms apart: longer than the 1 s timeout.
        Answer::Stream(vec![
            "uno ", "dos ", "tres ", "cuatro ", "cinco ", "seis ", "siete ", "ocho",
        ]),
        Answer::Stream(vec!["Rápido."]),
    ])
    .await;
    let (relay, _orchestrator) =
        start_with_llm_and(&base, &[("CALL_COACH_ORCHESTRATOR__LLM_TIMEOUT_SECS", "1")]).await;
    let mut sub = relay.ws("callId=l-4").await;
    relay
        .publish(
            json!({"type":"transcript","callId":"l-4","speaker":"customer","text":"No me funciona.",
                        "utteranceId":"c-1","final":true,"startMs":0,"endMs":2000}),
        )
        .await;
    let mut events = Vec::new();
    until(&mut sub, &mut events, |e| {
        e["source"] == "llm" && e["final"] == true
    })
    .await;
    assert_eq!(events.last().unwrap()["text"], "Rápido.");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// Events of one call until `done`, for at most `wait`; `None` if it never
/// came (what came is in `seen`).
async fn collect_for(
    ws: &mut crate::util::Ws,
    seen: &mut Vec<Value>,
    wait: Duration,
    done: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = tokio::time::timeout(left, ws.next()).await.ok()??.ok()?;
        let Message::Text(text) = msg else { continue };
        let ev: Value = serde_json::from_str(&text).unwrap();
        seen.push(ev.clone());
        if done(&ev) {
            return Some(ev);
        }
    }
}

/// stt lagging behind: an utterance begun (`speech`) whose words come
/// seconds later is not silence; the silence after it is counted from its
/// end on the audio timeline; and a final that comes after `call.ended`
/// still makes the summary, which waits for it (within the grace period).
#[tokio::test(flavor = "multi_thread")]
async fn lagging_transcripts_are_not_silence_and_late_finals_make_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"silencio\"\ntitle = \"Silencio\"\nkind = \"silence\"\n\
         threshold_secs = 2\ntip = \"Silencio largo.\"\nseverity = \"info\"\ncooldown_secs = 600\n",
    )
    .unwrap();
    let relay = Service::start(&[]);
    let ws_url = format!("ws://{}/ws", relay.addr);
    let _orchestrator = Service::start_named(
        "orchestrator",
        &[
            ("RELAY_WS", &ws_url),
            ("RELAY_EVENT", &event_url(&relay)),
            ("CALL_COACH_ORCHESTRATOR__METRICS_EVERY_SECS", "1"),
            (
                "CALL_COACH_ORCHESTRATOR__RULES_FILE",
                rules.to_str().unwrap(),
            ),
            ("CALL_COACH_ORCHESTRATOR__END_GRACE_SECS", "4"),
        ],
    );
    wait_for_subscriber(&relay).await;
    let mut sub = relay.ws("callId=lag-1").await;
    let speech = |id: &str, start: u64| json!({"type":"speech","callId":"lag-1","speaker":"customer","utteranceId":id,"startMs":start});
    let fin = |id: &str, text: &str, s: u64, e: u64| {
        json!({"type":"transcript","callId":"lag-1","speaker":"customer","text":text,
               "utteranceId":id,"final":true,"startMs":s,"endMs":e,"lagMs":900})
    };
    relay
        .publish(json!({"type":"call.started","callId":"lag-1","agent":"PJSIP/200"}))
        .await;
    relay.publish(speech("u1", 300)).await;
    // The customer talks on; stt's words are 5 s late. No silence tip,
    // and the metrics say no silence.
    let mut seen = Vec::new();
    let tip = collect_for(&mut sub, &mut seen, Duration::from_secs(5), |e| {
        e["type"] == "tip"
    })
    .await;
    assert!(
        tip.is_none(),
        "a silence tip while the customer spoke: {tip:?}"
    );
    let metrics: Vec<&Value> = seen.iter().filter(|e| e["type"] == "metrics").collect();
    assert!(metrics.len() >= 2, "{seen:#?}");
    assert!(metrics.iter().all(|m| m["silenceMs"] == 0), "{metrics:#?}");
    // The words come; then nobody speaks: the real silence is coached.
    relay
        .publish(fin("u1", "Quiero cancelar el contrato.", 300, 5_000))
        .await;
    let of_type = |kind: &'static str| move |e: &Value| e["type"] == kind;
    let tip = collect_for(&mut sub, &mut seen, Duration::from_secs(20), of_type("tip"))
        .await
        .expect("the silence after the words is coached");
    assert_eq!(tip["rule"], "silencio");

    // The customer speaks again and hangs up; the words come after
    // `call.ended`: the summary waits for them and counts them.
    relay.publish(speech("u2", 30_000)).await;
    relay
        .publish(json!({"type":"call.ended","callId":"lag-1","reason":"customer-hangup"}))
        .await;
    let early = collect_for(
        &mut sub,
        &mut seen,
        Duration::from_millis(1500),
        of_type("summary"),
    )
    .await;
    assert!(
        early.is_none(),
        "summarised before the last words: {early:?}"
    );
    relay
        .publish(fin("u2", "Es demasiado caro.", 30_000, 32_000))
        .await;
    let summary = collect_for(
        &mut sub,
        &mut seen,
        Duration::from_secs(20),
        of_type("summary"),
    )
    .await
    .expect("a summary");
    assert_eq!(summary["reason"], "customer-hangup");
    assert_eq!(
        summary["metrics"]["customerSpeechMs"],
        4_700 + 2_000,
        "{summary}"
    );

    // A call that ends with words never coming is summarised after the
    // grace period.
    let mut other = relay.ws("callId=lag-2").await;
    relay
        .publish(json!({"type":"call.started","callId":"lag-2","agent":"PJSIP/200"}))
        .await;
    relay
        .publish(json!({"type":"speech","callId":"lag-2","speaker":"agent","utteranceId":"a1","startMs":100}))
        .await;
    let ended_at = tokio::time::Instant::now();
    relay
        .publish(json!({"type":"call.ended","callId":"lag-2","reason":"agent-hangup"}))
        .await;
    let mut seen_other = Vec::new();
    collect_for(&mut other, &mut seen_other, Duration::from_secs(30), |e| {
        e["type"] == "summary"
    })
    .await
    .expect("a summary after the grace period");
    assert!(
        ended_at.elapsed() >= Duration::from_secs(3),
        "no grace period"
    );
}
