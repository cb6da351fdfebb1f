//! Relays on NATS JetStream: a real 3-node cluster of `nats-server`
//! processes on loopback, real relays in front of it. Several relays serve
//! the same calls with one gap-free numbering; a NATS node or a relay may
//! die without losing what was acknowledged.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use call_coach::tools::nats_cluster::Cluster;
use serde_json::{Value, json};

use crate::util::{Relay, next_json, numbers, read_until};

const READY: Duration = Duration::from_secs(60);

/// Attempts refused or unanswered in [`post_retrying`], for the log.
static REFUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn cluster(dir: &std::path::Path) -> Cluster {
    Cluster::start(dir, 3, READY).unwrap_or_else(|e| panic!("{e:#}"))
}

fn relay_on(urls: &str) -> Relay {
    Relay::start(&[("RELAY_NATS_URL", urls)])
}

fn ev(call: &str, i: usize) -> Value {
    json!({"type": "transcript", "callId": call, "speaker": "agent", "text": format!("frase {i}"), "final": true})
}

/// Posts with an `Idempotency-Key`, retrying (same key) on the other relay
/// while refused or unreachable, as the services' publisher does. Returns
/// the answer, or None when `give_up` passed.
async fn post_retrying(
    relays: &[&Relay],
    event: &Value,
    key: &str,
    give_up: Duration,
) -> Option<Value> {
    let deadline = Instant::now() + give_up;
    let mut i = 0;
    loop {
        let relay = relays[i % relays.len()];
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            relay.request(
                "POST",
                "/event",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
                event.to_string(),
            ),
        )
        .await;
        if let Ok((202, body)) = answer {
            return Some(serde_json::from_str(&body).expect("json answer"));
        }
        REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if Instant::now() > deadline {
            // What the relays last said, for the failure's log.
            eprintln!("{key}: given up after {give_up:?}; the last answer: {answer:?}");
            return None;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `n` events of call "shared"; returns their seqs.
async fn publish_many(relay: &Relay, from: usize, n: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    for i in from..from + n {
        seqs.push(relay.publish(ev("shared", i)).await);
    }
    seqs
}

/// Every event of a call, read from `relay` from the start.
async fn replay_call(relay: &Relay, call: &str, last: i64) -> Vec<Value> {
    let mut ws = relay.ws(&format!("callId={call}&since=0")).await;
    read_until(&mut ws, "seq", last).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_number_one_call_without_gaps_and_serve_each_others_events() {
    let dir = tempfile::tempdir().unwrap();
    let nats = cluster(dir.path());
    let a = relay_on(&nats.urls());
    let b = relay_on(&nats.urls());
    // A subscriber on each relay before anything is published.
    let mut on_a = a.ws("callId=shared").await;
    let mut on_b = b.ws("callId=shared").await;
    let mut all_b = b.ws("callId=*").await;

    // Both relays take events of the same call at once.
    const EACH: usize = 60;
    let (sa, sb) = tokio::join!(publish_many(&a, 0, EACH), publish_many(&b, 1000, EACH));
    let mut all: Vec<i64> = sa.iter().chain(&sb).copied().collect();
    all.sort();
    assert_eq!(
        all,
        (1..=2 * EACH as i64).collect::<Vec<_>>(),
        "one gap-free seq across both relays"
    );
    // Each relay's answers rise (its own publishes are in order).
    assert!(sa.windows(2).all(|w| w[0] < w[1]) && sb.windows(2).all(|w| w[0] < w[1]));

    // Both subscribers see the same events in the same order.
    let last = 2 * EACH as i64;
    let got_a = read_until(&mut on_a, "seq", last).await;
    let got_b = read_until(&mut on_b, "seq", last).await;
    assert_eq!(numbers(&got_a, "seq"), (1..=last).collect::<Vec<_>>());
    assert_eq!(
        got_a, got_b,
        "the same events, byte for byte, from either relay"
    );
    let pos: Vec<i64> = numbers(&got_a, "pos");
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "pos rises with seq");
    // The all-calls subscriber on b saw them too, by pos.
    let got_all = read_until(&mut all_b, "pos", *pos.last().unwrap()).await;
    assert_eq!(numbers(&got_all, "pos"), pos);

    // Resume on the other relay: since=N from a relay that never served
    // this subscriber.
    let mut again = b.ws("callId=shared&since=77").await;
    let rest = read_until(&mut again, "seq", last).await;
    assert_eq!(numbers(&rest, "seq"), (78..=last).collect::<Vec<_>>());
    let mut again = a.ws(&format!("callId=*&since={}", pos[99])).await;
    let rest = read_until(&mut again, "pos", pos[last as usize - 1]).await;
    assert_eq!(numbers(&rest, "pos"), pos[100..].to_vec());

    // /calls on either relay knows the call.
    for relay in [&a, &b] {
        let (status, body) = relay.request("GET", "/calls", &[], "").await;
        assert_eq!(status, 200);
        let calls: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(calls["calls"][0]["callId"], "shared", "{body}");
        assert_eq!(calls["calls"][0]["lastSeq"], last, "{body}");
    }

    // A relay started later reads the stored calls and numbers on.
    let c = relay_on(&nats.urls());
    assert_eq!(c.publish(ev("shared", 5000)).await, last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = cluster(dir.path());
    let a = relay_on(&nats.urls());
    let b = relay_on(&nats.urls());
    // A call id with `:` and `.` (one subject of its own, not "ast1:1764_5"'s).
    let event = ev("ast1:1764.5", 1);
    let first = post_retrying(&[&a], &event, "stt-1:u1:final", READY)
        .await
        .unwrap();
    assert_eq!(first["seq"], 1);
    assert!(first.get("duplicate").is_none(), "{first}");
    // The same key again, through the other relay: the first copy's numbers.
    let again = post_retrying(&[&b], &event, "stt-1:u1:final", READY)
        .await
        .unwrap();
    assert_eq!(
        (&again["seq"], &again["pos"], &again["duplicate"]),
        (&first["seq"], &first["pos"], &json!(true))
    );
    assert_eq!(
        a.publish(ev("ast1:1764.5", 2)).await,
        2,
        "the duplicate took no number"
    );
    assert_eq!(
        a.publish(ev("ast1:1764_5", 1)).await,
        1,
        "a call of its own"
    );
    let events = replay_call(&b, "ast1:1764.5", 2).await;
    assert_eq!(numbers(&events, "seq"), [1, 2]);
    // A malformed key is refused, not ignored.
    let (status, body) = a
        .request(
            "POST",
            "/event",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "no spaces please"),
            ],
            event.to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Idempotency-Key"), "{body}");
}

/// SIGKILL of one NATS node (the stream's leader) while two relays take
/// events: publishing goes on, and every event answered 202 is there
/// afterwards, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_nats_node_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = cluster(dir.path());
    let a = relay_on(&nats.urls());
    let b = relay_on(&nats.urls());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four calls published by four publishers, alternating relays.
    let publisher = |call: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        let (a, b) = (&a, &b);
        async move {
            let mut acked: Vec<(String, i64)> = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("{call}-{i}");
                let relays: [&Relay; 2] = if i % 2 == 0 { [a, b] } else { [b, a] };
                // Generous: on a loaded CI machine the cluster's new
                // leader may take long to be elected; what counts is that
                // publishing resumes and nothing acknowledged is lost.
                let Some(answer) =
                    post_retrying(&relays, &ev(&call, i), &key, Duration::from_secs(240)).await
                else {
                    // Stop the others too: the cluster's state is read below.
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(format!("{call}: event {i} never accepted"));
                };
                acked.push((format!("frase {i}"), answer["seq"].as_i64().unwrap()));
                i += 1;
            }
            Ok((call, acked))
        }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The stream's leader is the node whose /jsz says so; kill it. The
        // relays chose its replicas themselves (three nodes: three), and
        // only a stream on all three outlives the loss of one.
        let detail = stream_detail(&nats).expect("the events stream is in /jsz");
        let replicas = detail["config"]["num_replicas"].as_u64();
        assert_eq!(replicas, Some(3), "{detail}");
        let leader = detail["cluster"]["leader"]
            .as_str()
            .and_then(|l| nats.nodes.iter().position(|n| n.name == l))
            .unwrap_or_else(|| panic!("the events stream has no leader: {detail}"));
        nats.kill(leader);
        tokio::time::sleep(Duration::from_secs(12)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        leader
    };
    let (killed, r1, r2, r3, r4) = tokio::join!(
        killer,
        publisher("k1".into(), stop.clone()),
        publisher("k2".into(), stop.clone()),
        publisher("k3".into(), stop.clone()),
        publisher("k4".into(), stop.clone()),
    );
    let results = [r1, r2, r3, r4];
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        // What the surviving nodes say of the stream, and their logs.
        let logs: Vec<String> = (0..nats.nodes.len())
            .filter(|&n| n != killed)
            .map(|n| {
                // Without the dead node's route, retried each second.
                let log = nats.log(n);
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("connect to route"))
                    .collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("--- n{} ---\n{tail}", n + 1)
            })
            .collect();
        panic!(
            "{e}; the events stream after node n{} was killed: {}\n{}",
            killed + 1,
            stream_detail(&nats).map_or("in no node's /jsz".into(), |d| d.to_string()),
            logs.join("\n")
        );
    }
    let mut total = 0;
    for (call, acked) in results.into_iter().map(Result::unwrap) {
        assert!(
            acked.len() > 20,
            "{call}: publishing stopped ({} events)",
            acked.len()
        );
        let last = acked.last().unwrap().1;
        // Each event once, numbered 1..=last without a gap, in the order
        // it was acknowledged.
        let stored = replay_call(&b, &call, last).await;
        assert_eq!(
            numbers(&stored, "seq"),
            (1..=last).collect::<Vec<_>>(),
            "{call}"
        );
        let texts: Vec<&str> = stored.iter().map(|e| e["text"].as_str().unwrap()).collect();
        let unique: HashSet<&&str> = texts.iter().collect();
        assert_eq!(unique.len(), texts.len(), "{call}: an event stored twice");
        let by_seq: BTreeMap<i64, &str> = stored
            .iter()
            .map(|e| (e["seq"].as_i64().unwrap(), e["text"].as_str().unwrap()))
            .collect();
        for (text, seq) in &acked {
            assert_eq!(
                by_seq.get(seq),
                Some(&text.as_str()),
                "{call}: acknowledged {text} at {seq}"
            );
        }
        total += acked.len();
    }
    eprintln!(
        "{total} events acknowledged across the kill of node n{} (the stream's leader); {} attempts refused and retried",
        killed + 1,
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// The stream's replicas, chosen by the relay (`relay.nats.replicas` 0):
/// as many as the cluster has servers, up to 3. On 2 nodes JetStream
/// refuses 3, and the relay makes it with 2 and takes events. (On 3 nodes
/// the kill test above asserts 3: a relay that read the count from the
/// servers it had heard of when it connected once made 2 there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_asks_for_as_many_replicas_as_the_cluster_has() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Cluster::start(dir.path(), 2, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let relay = relay_on(&nats.urls());
    let detail = stream_detail(&nats).expect("the events stream is in /jsz");
    assert_eq!(detail["config"]["num_replicas"], 2, "{detail}");
    assert_eq!(relay.publish(ev("two", 1)).await, 1);
}

/// The events stream's entry in the first live node's `/jsz?streams=1`
/// that has it (`config`, `state`, `cluster`: leader and replicas).
fn stream_detail(nats: &Cluster) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    for n in &nats.nodes {
        let url = format!("http://127.0.0.1:{}/jsz?streams=1&config=1", n.monitor_port);
        let Some(v) = call_coach::http::get_json(&agent, &url) else {
            continue;
        };
        for acc in v["account_details"].as_array().into_iter().flatten() {
            for s in acc["stream_detail"].as_array().into_iter().flatten() {
                if s["name"] == "CALLCOACH_EVENTS" {
                    return Some(s.clone());
                }
            }
        }
    }
    None
}

/// A relay SIGKILLed during a call: its subscriber and its publisher move
/// to the other relay and resume; nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_loses_nothing_its_clients_resume_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let nats = cluster(dir.path());
    let mut a = relay_on(&nats.urls());
    let b = relay_on(&nats.urls());
    let mut ws = a.ws("callId=move").await;
    for i in 0..30 {
        post_retrying(&[&a], &ev("move", i), &format!("move-{i}"), READY)
            .await
            .unwrap();
    }
    let seen = read_until(&mut ws, "seq", 30).await;
    let since = seen.last().unwrap()["seq"].as_i64().unwrap();
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(10));
    // The socket dies with it.
    assert!(next_json(&mut ws, Duration::from_secs(10)).await.is_none());
    // The publisher goes on through b (retrying its last event once more
    // with the same key changes nothing).
    post_retrying(&[&b], &ev("move", 29), "move-29", READY)
        .await
        .unwrap();
    for i in 30..50 {
        post_retrying(&[&b], &ev("move", i), &format!("move-{i}"), READY)
            .await
            .unwrap();
    }
    let mut ws = b.ws(&format!("callId=move&since={since}")).await;
    let rest = read_until(&mut ws, "seq", 50).await;
    assert_eq!(numbers(&rest, "seq"), (31..=50).collect::<Vec<_>>());
    let texts: Vec<String> = seen
        .iter()
        .chain(&rest)
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        (0..50).map(|i| format!("frase {i}")).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_at_start_or_lost_later_is_said_plainly() {
    // At start: a clear error naming the key, and a non-zero exit.
    let port = call_coach::tools::procs::port_or_free(0);
    let bin_dir = tempfile::tempdir().unwrap();
    let (code, _out, err) = crate::util::run_bin(
        Some(&crate::util::service_link(bin_dir.path(), "relay")),
        &[],
        &[
            ("RELAY_LISTEN", "127.0.0.1:0"),
            ("RELAY_NATS_URL", &format!("nats://127.0.0.1:{port}")),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("relay.nats.url") && err.contains("RELAY_NATS_URL"),
        "{err}"
    );

    // At run time: 503 with a reason while NATS is gone, never a 202;
    // back to 202 by itself once NATS is back.
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Cluster::start(dir.path(), 1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let relay = relay_on(&nats.urls());
    assert_eq!(relay.publish(ev("lost", 0)).await, 1);
    nats.kill(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = relay.post(&ev("lost", 1)).await;
        assert_ne!(status, 202, "accepted while NATS was down: {body}");
        if status == 503 || Instant::now() > deadline {
            break (status, body);
        }
    };
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("NATS"), "{body}");
    let (status, health) = relay.request("GET", "/healthz", &[], "").await;
    assert_eq!((status, health.as_str()), (503, "not connected to NATS\n"));
    // An erasure cannot be done meanwhile: 503, counted as the store's
    // failure, not as a bad request.
    let (status, body) = relay.request("DELETE", "/calls/lost", &[], "").await;
    assert_eq!(status, 503, "{body}");
    let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("relay_rejected_total{reason=\"store\"} 1")
            && metrics.contains("relay_rejected_total{reason=\"bad_request\"} 0"),
        "{metrics}"
    );
    nats.restart(0, READY).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = relay.post(&ev("lost", 1)).await;
        if status == 202 {
            assert_eq!(body["seq"], 2, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not recover: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A cluster that lost its quorum (two of three nodes gone) still holds
/// the relay's connection, but no stream leader answers: an erasure is a
/// 503 to ask again, not a 500, and so is a post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_quorum_is_unavailable_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = cluster(dir.path());
    let first = nats.urls().split(',').next().unwrap().to_owned();
    let relay = relay_on(&first);
    assert_eq!(relay.publish(ev("quorum", 0)).await, 1);
    nats.kill(1);
    nats.kill(2);
    let (status, body) = relay.request("DELETE", "/calls/quorum", &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("retry later"), "{body}");
    let (status, body) = relay.post(&ev("quorum", 1)).await;
    assert_eq!(status, 503, "{body}");
    // (The erasure is counted as the store's failure.)
    let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("relay_rejected_total{reason=\"store\"} 1"),
        "{metrics}"
    );
}

/// `relay.retention_days` becomes the stream's age limit, also for a stream
/// made by an earlier start with another value; what was stored stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_follows_the_setting_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Cluster::start(dir.path(), 1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let max_age_days = || -> f64 {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let url = format!(
            "http://127.0.0.1:{}/jsz?streams=1&config=1",
            nats.nodes[0].monitor_port
        );
        let v = call_coach::http::get_json(&agent, &url).expect("/jsz");
        let stream = &v["account_details"][0]["stream_detail"][0];
        assert_eq!(stream["name"], "CALLCOACH_EVENTS", "{v}");
        stream["config"]["max_age"].as_f64().expect("max_age") / 86_400e9
    };
    let relay = Relay::start(&[("RELAY_NATS_URL", &nats.urls())]);
    assert_eq!(relay.publish(ev("kept", 0)).await, 1);
    assert_eq!(max_age_days(), 30.0, "the default, 30 days");
    drop(relay);
    let relay = Relay::start(&[
        ("RELAY_NATS_URL", &nats.urls()),
        ("CALL_COACH_RELAY__RETENTION_DAYS", "7"),
    ]);
    assert_eq!(max_age_days(), 7.0);
    assert_eq!(
        relay.publish(ev("kept", 1)).await,
        2,
        "the stored event stayed"
    );
}

/// `GET path` on `relay` as JSON (status, body).
async fn get_json(relay: &Relay, path: &str) -> (u16, Value) {
    let (status, body) = relay.request("GET", path, &[], "").await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// The call ids `/history?query` lists on `relay`, once they are `want`
/// (the archive follows the stream a moment behind).
async fn history_becomes(relay: &Relay, query: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = get_json(relay, &format!("/history?{query}")).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<&str> = page["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["callId"].as_str().unwrap())
            .collect();
        if ids == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/history?{query} lists {ids:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archiving_relay_keeps_the_stream_history_and_erasures_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Cluster::start(dir.path(), 1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let urls = nats.urls();
    let archive = Relay::start(&[
        ("RELAY_NATS_URL", &urls),
        ("CALL_COACH_RELAY__NATS__ARCHIVE", "true"),
    ]);
    let plain = relay_on(&urls);
    for (call, agent, said) in [
        ("a-1", "PJSIP/200", "Quiero la portabilidad de mi línea."),
        ("a-2", "PJSIP/201", "La factura de marzo viene mal."),
    ] {
        for e in [
            json!({"type":"call.started","callId":call,"agent":agent,"caller":"600"}),
            json!({"type":"transcript","callId":call,"speaker":"customer","text":said,"final":true,"utteranceId":"u1","startMs":0,"endMs":1500}),
            json!({"type":"summary","callId":call,"text":"Resumen.","source":"rules","reason":"hangup","agent":agent,"durationMs":30000,
                   "metrics":{"agentTalkRatio":0.5,"agentTalkRatio2m":0.5,"agentWpm":150.0,"customerWpm":140.0,"silenceMs":1000,"overtalkMs":0,
                              "longestAgentMonologueMs":0,"customerQuestions":0,"agentSpeechMs":0,"customerSpeechMs":0},"rulesFired":{"queja":1},
                   "checklist":[{"id":"identificacion","label":"Identificación","done":false}]}),
            json!({"type":"call.ended","callId":call,"reason":"hangup"}),
        ] {
            plain.publish(e).await;
        }
    }
    // Published through the other relay, found on the archiving one.
    history_becomes(&archive, "q=linea", &["a-1"]).await;
    history_becomes(&archive, "", &["a-2", "a-1"]).await;
    history_becomes(
        &archive,
        "missed=identificacion&rule=queja",
        &["a-2", "a-1"],
    )
    .await;
    let (status, cards) = get_json(&archive, "/scorecards").await;
    assert_eq!(status, 200, "{cards}");
    assert_eq!(cards["agents"].as_array().unwrap().len(), 2);
    // A relay without the archive says where the history is.
    let (status, body) = get_json(&plain, "/history").await;
    assert_eq!(status, 501);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("relay.nats.archive"),
        "{body}"
    );
    // Export reads the stream on any relay.
    let (status, txt) = plain
        .request("GET", "/calls/a-1/export?format=txt", &[], "")
        .await;
    assert_eq!(status, 200);
    assert!(txt.contains("Cliente: Quiero la portabilidad"), "{txt}");

    // Erased through one relay: gone from the stream and from the archive.
    let (status, body) = plain.request("DELETE", "/calls/a-1", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["deleted"], 4);
    assert_eq!(
        plain.request("GET", "/calls/a-1/export", &[], "").await.0,
        404
    );
    history_becomes(&archive, "q=linea", &[]).await;
    history_becomes(&archive, "", &["a-2"]).await;
    // The WAL is emptied just after the erasure's commit, which the
    // history already shows: on a loaded machine the files may lag it.
    let relay_dir = archive.state_dir().join("relay");
    let holding = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&relay_dir)
            .unwrap()
            .filter_map(|f| {
                let path = f.ok()?.path();
                let bytes = std::fs::read(&path).ok()?;
                String::from_utf8_lossy(&bytes)
                    .contains("portabilidad")
                    .then_some(path)
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !holding().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(holding().is_empty(), "{:?} still hold the call", holding());
    // Restarted, the archive is brought up to date from the stream: the
    // erased call stays erased.
    let archive = archive.kill_and_restart();
    history_becomes(&archive, "", &["a-2"]).await;
    history_becomes(&archive, "q=factura", &["a-2"]).await;
}

/// A stream just made answers JetStream's API before its subjects reach
/// every server of the cluster; a publish through another server then finds
/// "no responders" for a moment. A relay serves only once a write through
/// its own server reaches the stream, so its first POST is stored: here on
/// each node, for streams made by relays started side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_takes_its_first_event_on_any_node_of_a_new_stream() {
    let dir = tempfile::tempdir().unwrap();
    let nats = cluster(dir.path());
    let nodes: Vec<String> = nats.urls().split(',').map(str::to_owned).collect();
    for round in 0..4 {
        let stream = format!("FRESH{round}");
        let prefix = format!("fresh{round}.events");
        let relays: Vec<Relay> = std::thread::scope(|s| {
            let started: Vec<_> = (0..nodes.len())
                .map(|i| {
                    let (url, stream, prefix) =
                        (&nodes[(round + i) % nodes.len()], &stream, &prefix);
                    s.spawn(move || {
                        Relay::start(&[
                            ("RELAY_NATS_URL", url),
                            ("CALL_COACH_RELAY__NATS__STREAM", stream),
                            ("CALL_COACH_RELAY__NATS__SUBJECT_PREFIX", prefix),
                        ])
                    })
                })
                .collect();
            started.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let events: Vec<Value> = (0..relays.len())
            .map(|i| ev(&format!("first{i}"), 0))
            .collect();
        let answers =
            futures_util::future::join_all(relays.iter().zip(&events).map(|(r, e)| r.post(e)))
                .await;
        for (i, (status, body)) in answers.iter().enumerate() {
            assert_eq!(
                *status,
                202,
                "round {round}: relay on node {}: {body}",
                (round + i) % nodes.len()
            );
            assert_eq!(body["seq"], 1, "{body}");
        }
        // Nothing but the events: the probe was not stored.
        let mut pos: Vec<i64> = answers
            .iter()
            .map(|(_, b)| b["pos"].as_i64().unwrap())
            .collect();
        pos.sort();
        assert_eq!(pos, vec![1, 2, 3], "{answers:?}");
    }
}

/// A stream JetStream will not give this relay is said at start, naming the
/// settings, instead of 503s later or a minute of "not answering yet": one
/// of the stream's name made for another prefix, a new name whose subjects
/// another stream already takes, and replicas one server cannot hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_taken_by_another_deployment_is_said_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Cluster::start(dir.path(), 1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let url = nats.urls();
    let first = relay_on(&url);
    assert_eq!(first.publish(ev("kept", 0)).await, 1);
    let bin_dir = tempfile::tempdir().unwrap();
    let relay_bin = crate::util::service_link(bin_dir.path(), "relay");
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("CALL_COACH_RELAY__NATS__SUBJECT_PREFIX", "other.events")],
            "relay.nats.subject_prefix",
        ),
        (
            &[("CALL_COACH_RELAY__NATS__STREAM", "ANOTHER_NAME")],
            "another stream takes the subjects callcoach.events.>",
        ),
        // A new stream of three replicas on one server, not a cluster.
        (
            &[
                ("CALL_COACH_RELAY__NATS__STREAM", "THIRD"),
                ("CALL_COACH_RELAY__NATS__SUBJECT_PREFIX", "third.events"),
                ("CALL_COACH_RELAY__NATS__REPLICAS", "3"),
            ],
            "relay.nats.replicas = 1",
        ),
    ];
    let state = dir.path().join("s").display().to_string();
    for (env, says) in cases {
        let started = Instant::now();
        let mut all = vec![
            ("RELAY_LISTEN", "127.0.0.1:0"),
            ("RELAY_NATS_URL", url.as_str()),
            ("STATE_DIR", state.as_str()),
        ];
        all.extend_from_slice(env);
        let (code, _out, err) = crate::util::run_bin(Some(&relay_bin), &[], &all);
        assert_ne!(code, 0, "{env:?}: {err}");
        assert!(err.contains(says), "{env:?}: {err}");
        // Not after the minute a forming cluster is given.
        assert!(started.elapsed() < Duration::from_secs(45), "{env:?}");
    }
    // The first deployment's stream is untouched.
    assert_eq!(first.publish(ev("kept", 1)).await, 2);
}
