//! The LLM coach against a real OpenAI-compatible server running a real
//! model on this machine (no cloud, no stand-in): a customer's words get a
//! streamed LLM tip, and the end of the call an LLM summary, both through
//! the real relay. `scripts/test-local-llm.sh` sets up llama.cpp's server
//! with SmolLM2-135M-Instruct and runs this; it is not part of `cargo test`
//! (Cargo.toml: `test = false`), since building that server takes minutes.

// The helpers are shared with tests/it; this test uses a few of them.
#![allow(dead_code)]

#[path = "../it/util.rs"]
mod util;

use std::time::Duration;

use serde_json::{Value, json};

use util::{Service, event_url, next_json};

#[tokio::test(flavor = "multi_thread")]
async fn a_local_model_streams_a_tip_and_writes_the_summary() {
    let base = std::env::var("LOCAL_LLM_URL").expect(
        "LOCAL_LLM_URL (an OpenAI-compatible /v1 base) is needed: run scripts/test-local-llm.sh",
    );
    let model = std::env::var("LOCAL_LLM_MODEL").unwrap_or_else(|_| "smollm2".into());
    let relay = Service::start(&[]);
    let ws_url = format!("ws://{}/ws", relay.addr);
    let _orchestrator = Service::start_named(
        "orchestrator",
        &[
            ("RELAY_WS", ws_url.as_str()),
            ("RELAY_EVENT", event_url(&relay).as_str()),
            ("LLM_BASE_URL", base.as_str()),
            ("OPENROUTER_MODEL", model.as_str()),
            // A CPU model on a busy machine: generous, and no waiting.
            ("CALL_COACH_ORCHESTRATOR__LLM_TIMEOUT_SECS", "120"),
            ("CALL_COACH_ORCHESTRATOR__LLM_DEBOUNCE_MS", "200"),
        ],
    );
    // The orchestrator follows calls from when it subscribes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
        if metrics.lines().any(|l| l == "relay_subscribers 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no subscriber");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sub = relay.ws("callId=llm-1").await;
    relay
        .publish(json!({"type":"call.started","callId":"llm-1","agent":"PJSIP/200","caller":"600"}))
        .await;
    let say = |speaker: &str, id: &str, text: &str, at: u64| {
        json!({"type":"transcript","callId":"llm-1","speaker":speaker,"text":text,
               "utteranceId":id,"final":true,"startMs":at,"endMs":at + 2500})
    };
    relay
        .publish(say(
            "agent",
            "a1",
            "Buenos días, le atiende Marta, ¿en qué puedo ayudarle?",
            0,
        ))
        .await;
    relay
        .publish(say(
            "customer",
            "c1",
            "Hola, la factura de este mes ha subido mucho y estoy pensando en cambiarme de compañía.",
            3000,
        ))
        .await;
    let mut seen: Vec<Value> = Vec::new();
    let limit = Duration::from_secs(180);
    let started = tokio::time::Instant::now();
    while !seen
        .iter()
        .any(|e| e["type"] == "tip" && e["source"] == "llm" && e["final"] == true)
    {
        let left = limit.saturating_sub(started.elapsed());
        let ev = next_json(&mut sub, left)
            .await
            .unwrap_or_else(|| panic!("no LLM tip within {limit:?}; events: {seen:#?}"));
        seen.push(ev);
    }
    let llm_tips: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "tip" && e["source"] == "llm")
        .collect();
    let last = llm_tips.last().unwrap();
    let text = last["text"].as_str().unwrap_or_default();
    println!("LLM tip ({} parts): {text}", llm_tips.len());
    assert!(text.trim().len() >= 5, "an empty tip: {last}");
    // Streamed: parts of one tip share its id, the last one final.
    assert!(llm_tips.len() >= 2, "not streamed: {llm_tips:#?}");
    assert!(llm_tips.iter().all(|t| t["tipId"] == last["tipId"]));

    relay
        .publish(json!({"type":"call.ended","callId":"llm-1","reason":"customer-hangup"}))
        .await;
    let started = tokio::time::Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        let ev = next_json(&mut sub, left)
            .await
            .unwrap_or_else(|| panic!("no LLM summary within {limit:?}"));
        if ev["type"] == "summary" && ev["source"] == "llm" {
            let text = ev["text"].as_str().unwrap_or_default();
            println!("LLM summary: {text}");
            assert!(text.trim().len() >= 10, "{ev}");
            assert_eq!(ev["reason"], "customer-hangup");
            break;
        }
    }
}
