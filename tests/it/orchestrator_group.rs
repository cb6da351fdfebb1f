//! Two orchestrators as a group (leases in a real 3-node NATS JetStream
//! cluster), each on its own relay, both relays on the cluster: every call
//! is coached by exactly one of them; when one is SIGKILLed the other takes
//! its calls over within a bound, and no rule tip is published twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use call_coach::tools::nats_cluster::Cluster;
use serde_json::{Value, json};

use crate::util::{Relay, Service, event_url, next_json};

const CALLS: usize = 6;

fn orchestrator(relay: &Relay, nats: &str, name: &str) -> Service {
    Service::start_named(
        "orchestrator",
        &[
            ("RELAY_WS", &format!("ws://{}/ws", relay.addr)),
            ("RELAY_EVENT", &event_url(relay)),
            ("ORCHESTRATOR_NATS_URL", nats),
            ("CALL_COACH_ORCHESTRATOR__METRICS_EVERY_SECS", "1"),
            ("CALL_COACH_ORCHESTRATOR__GROUP__LEASE_SECS", "3"),
            ("CALL_COACH_ORCHESTRATOR__GROUP__INSTANCE", name),
        ],
    )
}

async fn wait_for_subscriber(relay: &Relay) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
        if metrics.lines().any(|l| l == "relay_subscribers 1") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the orchestrator never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn says(call: &str, utterance: &str, text: &str, at_ms: u64) -> Value {
    json!({"type":"transcript","callId":call,"speaker":"customer","text":text,
           "utteranceId":utterance,"final":true,"startMs":at_ms,"endMs":at_ms + 900})
}

/// The calls an orchestrator's log says it coaches.
fn coached_by(o: &Service) -> Vec<String> {
    o.log()
        .lines()
        .filter(|l| l.contains("coaching the call"))
        .filter_map(|l| l.split("call=").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_orchestrators_calls_are_taken_over_without_repeated_tips() {
    let dir = tempfile::tempdir().unwrap();
    let nats =
        Cluster::start(dir.path(), 3, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    let urls = nats.urls();
    let a = Relay::start(&[("RELAY_NATS_URL", &urls)]);
    let b = Relay::start(&[("RELAY_NATS_URL", &urls)]);
    let mut o1 = orchestrator(&a, &urls, "o1");
    let mut o2 = orchestrator(&b, &urls, "o2");
    wait_for_subscriber(&a).await;
    wait_for_subscriber(&b).await;
    let mut all = a.ws("callId=*").await;

    // Ids as ari-coach makes them (a prefix, Asterisk's `epoch.n`).
    let calls: Vec<String> = (0..CALLS).map(|i| format!("ast1:1764000000.{i}")).collect();
    for call in &calls {
        a.publish_retrying(json!({"type":"call.started","callId":call,"agent":"PJSIP/200"}))
            .await;
        a.publish_retrying(says(call, "u1", "Quiero cancelar el contrato.", 1_000))
            .await;
    }
    // Each call: one cancellation tip, and metrics, from one instance.
    let mut tips: HashMap<(String, String), usize> = HashMap::new();
    let mut metrics: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !(calls
            .iter()
            .all(|c| tips.contains_key(&(c.clone(), "cancelacion".into())))
            && calls
                .iter()
                .all(|c| metrics.get(c).is_some_and(|n| *n >= 2)))
    {
        let Some(ev) = next_json(&mut all, Duration::from_secs(20)).await else {
            break;
        };
        record(&ev, &mut tips, &mut metrics);
    }
    for c in &calls {
        assert_eq!(
            tips.get(&(c.clone(), "cancelacion".into())),
            Some(&1),
            "{c}: {tips:?}"
        );
    }
    let (mine1, mine2) = (coached_by(&o1), coached_by(&o2));
    let mut both: Vec<&String> = mine1.iter().chain(&mine2).collect();
    both.sort();
    assert_eq!(
        both,
        calls.iter().collect::<Vec<_>>(),
        "o1 {mine1:?}, o2 {mine2:?}: each call once"
    );
    // The first to see a call takes it; which one that is depends on the
    // machine's load (on a busy one, one instance may take all six). The
    // one coaching more calls is killed, so the takeover has calls to move.
    eprintln!("o1 coaches {mine1:?}, o2 {mine2:?}");
    let (victim, survivor, mine1) = if mine1.len() >= mine2.len() {
        (&mut o1, &o2, mine1)
    } else {
        (&mut o2, &o1, mine2)
    };

    // It dies. Its calls get metrics and tips from the other again, within
    // a bound.
    victim.signal(libc::SIGKILL);
    victim.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    for call in &calls {
        // A new objection (one tip due), and the cancellation said again
        // (inside its cooldown: no tip, whoever coaches).
        a.publish_retrying(says(call, "u2", "Es demasiado caro.", 5_000))
            .await;
        a.publish_retrying(says(call, "u3", "Le digo que quiero cancelar.", 7_000))
            .await;
    }
    let mut after: HashMap<String, usize> = HashMap::new();
    let mut taken: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline
        && !(calls
            .iter()
            .all(|c| tips.contains_key(&(c.clone(), "precio".into())))
            && mine1.iter().all(|c| taken.contains_key(c)))
    {
        let Some(ev) = next_json(&mut all, Duration::from_secs(20)).await else {
            break;
        };
        let call = ev["callId"].as_str().unwrap_or_default().to_owned();
        if ev["type"] == "metrics" && mine1.contains(&call) {
            *after.entry(call.clone()).or_default() += 1;
            // The first metrics after the survivor took over.
            if after[&call] >= 2 {
                taken.entry(call).or_insert_with(|| killed.elapsed());
            }
        }
        record(&ev, &mut tips, &mut metrics);
    }
    // Let any late duplicate arrive before counting.
    let settle = Instant::now() + Duration::from_secs(3);
    while let Ok(Some(ev)) =
        tokio::time::timeout_at(settle.into(), next_json(&mut all, Duration::from_secs(20))).await
    {
        record(&ev, &mut tips, &mut metrics);
    }
    for c in &calls {
        assert_eq!(
            tips.get(&(c.clone(), "precio".into())),
            Some(&1),
            "{c}: {tips:?}"
        );
        assert_eq!(
            tips.get(&(c.clone(), "cancelacion".into())),
            Some(&1),
            "{c}: a rule tip twice: {tips:?}"
        );
    }
    for c in &mine1 {
        assert!(
            taken.contains_key(c),
            "{c}: no metrics from the survivor after the kill"
        );
    }
    let slowest = taken.values().max().copied().unwrap_or_default();
    eprintln!(
        "the killed instance's {} calls taken over, the slowest {} ms after the kill (lease 3 s)",
        mine1.len(),
        slowest.as_millis()
    );
    assert!(slowest < Duration::from_secs(30), "took {slowest:?}");
    let survivors_now = coached_by(survivor);
    for c in &mine1 {
        assert!(
            survivors_now.contains(c),
            "the survivor never said it took {c} over"
        );
    }
}

fn record(
    ev: &Value,
    tips: &mut HashMap<(String, String), usize>,
    metrics: &mut HashMap<String, usize>,
) {
    let call = ev["callId"].as_str().unwrap_or_default().to_owned();
    match ev["type"].as_str() {
        Some("tip") => {
            let rule = ev["rule"].as_str().unwrap_or_default().to_owned();
            *tips.entry((call, rule)).or_default() += 1;
        }
        Some("metrics") => *metrics.entry(call).or_default() += 1,
        _ => {}
    }
}

/// Leases JetStream will not keep however long one asks (three replicas on
/// one server, not a cluster) are said at start, naming the setting, not
/// after a minute of "not answering yet".
#[test]
fn a_bucket_one_server_cannot_hold_is_said_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let nats =
        Cluster::start(dir.path(), 1, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    let bin_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (code, _out, err) = crate::util::run_bin(
        Some(&crate::util::service_link(bin_dir.path(), "orchestrator")),
        &[],
        &[
            ("ORCHESTRATOR_NATS_URL", &nats.urls()),
            ("CALL_COACH_ORCHESTRATOR__GROUP__REPLICAS", "3"),
            ("RELAY_WS", "ws://127.0.0.1:9/ws"),
            ("RELAY_EVENT", "http://127.0.0.1:9/event"),
            ("STATE_DIR", &dir.path().join("s").display().to_string()),
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("orchestrator.group.replicas = 1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(45));
}
