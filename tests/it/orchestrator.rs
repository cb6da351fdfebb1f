//! The orchestrator against a real relay: tips from the rules coach (once
//! per utterance), the checklist ticking, live metrics, the summary.

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Service, event_url, next_json};

/// Collects events until one satisfies `done`.
async fn until(ws: &mut crate::util::Ws, seen: &mut Vec<Value>, done: impl Fn(&Value) -> bool) {
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
    // The orchestrator follows all calls from now on: wait until the relay
    // counts its subscription.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
        if metrics.lines().any(|l| l == "relay_subscribers 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orchestrator never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let text = summary["text"].as_str().unwrap();
    assert!(
        text.contains("cancelacion") && text.contains("falta"),
        "{text}"
    );
}
