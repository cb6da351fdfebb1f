//! The relay against CONTRACT.md: ordering, replay and resume, `callId=*`,
//! slow subscribers, bad input, durability, shutdown, readiness.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::util::{Relay, next_json, numbers, read_until};

fn ev(call: &str, i: usize) -> Value {
    json!({"type": "transcript", "callId": call, "speaker": "agent", "text": format!("frase {i}"), "final": true})
}

#[tokio::test]
async fn ready_only_after_bind_and_health() {
    let relay = Relay::start(&[]);
    // READY=1 came first (Relay::start waited for it): the port must
    // already accept connections.
    let (status, body) = relay.request("GET", "/healthz", &[], "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, text) = relay.request("GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for name in [
        "relay_events_in_total",
        "relay_events_out_total",
        "relay_subscribers",
        "relay_subscriber_drops_total",
        "relay_store_commit_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

/// Every recorded example of the event catalogue (tests/events/, also
/// round-tripped through the typed events by the unit tests) goes through
/// a real relay byte for byte: what a subscriber receives is the example
/// plus the relay's own `seq`, `ts` and `pos`, nothing else changed.
#[tokio::test]
async fn recorded_events_pass_through_the_relay_byte_for_byte() {
    let relay = Relay::start(&[]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/events");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut posted = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.trim_end();
        let value: Value = serde_json::from_str(text).unwrap();
        // The relay's own notice has no call: it is never published.
        let Some(call) = value["callId"].as_str() else {
            continue;
        };
        let (status, body) = relay
            .request(
                "POST",
                "/event",
                &[("content-type", "application/json")],
                text.to_owned(),
            )
            .await;
        assert_eq!(status, 202, "{}: {body}", path.display());
        let answer: Value = serde_json::from_str(&body).unwrap();
        let (seq, pos) = (answer["seq"].as_i64(), answer["pos"].as_i64());
        assert!(seq.is_some() && pos.is_some(), "202 answer: {body}");
        let mut ws = relay.ws(&format!("callId={call}&since=0")).await;
        // The call's earlier examples come first; this one is the last.
        let mut got = loop {
            let ev = next_json(&mut ws, Duration::from_secs(2))
                .await
                .expect("the event came back");
            if ev["seq"].as_i64() == seq {
                break ev;
            }
        };
        if let Some(p) = got.get("pos") {
            assert_eq!(p.as_i64(), pos, "the answer's pos is the event's");
        }
        let map = got.as_object_mut().unwrap();
        for added in ["seq", "ts", "pos"] {
            assert!(
                map.remove(added).is_some() || added == "pos",
                "{added} missing"
            );
        }
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            text,
            "{}",
            path.display()
        );
        posted += 1;
    }
    assert!(posted >= 10, "only {posted} examples");
}

#[tokio::test]
async fn seq_ts_and_order_replay_then_live() {
    let relay = Relay::start(&[]);
    for i in 0..20 {
        assert_eq!(relay.publish(ev("c1", i)).await, i as i64 + 1);
    }
    // Another call numbers from 1 on its own.
    assert_eq!(relay.publish(ev("c2", 0)).await, 1);
    // A publisher's own ts is kept; a publisher's seq is not.
    let seq = relay
        .publish(json!({"type":"x.custom","callId":"c1","ts":"2020-01-01T00:00:00.000Z","seq":999,"extra":{"k":[1,2]}}))
        .await;
    assert_eq!(seq, 21);

    let mut ws = relay.ws("callId=c1").await;
    let got = read_until(&mut ws, "seq", 21).await;
    assert_eq!(numbers(&got, "seq"), (1..=21).collect::<Vec<_>>());
    let ts = got[0]["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
        "ts {ts} is not RFC 3339 UTC with milliseconds"
    );
    assert_eq!(got[20]["ts"], "2020-01-01T00:00:00.000Z");
    assert_eq!(got[20]["extra"], json!({"k":[1,2]}));
    assert!(got.iter().all(|e| e["callId"] == "c1"));

    // Live events follow, still in order; other calls' events do not.
    relay.publish(ev("c2", 1)).await;
    for i in 0..5 {
        relay.publish(ev("c1", 100 + i)).await;
    }
    let live = read_until(&mut ws, "seq", 26).await;
    assert_eq!(numbers(&live, "seq"), (22..=26).collect::<Vec<_>>());

    // since=N skips what was seen.
    let mut ws = relay.ws("callId=c1&since=24").await;
    let got = read_until(&mut ws, "seq", 26).await;
    assert_eq!(numbers(&got, "seq"), vec![25, 26]);
}

/// Subscribers that join with various `since` values while a publisher is
/// busy must each see every later event exactly once, in order.
#[tokio::test]
async fn resume_under_concurrent_publishing_has_no_gap_or_duplicate() {
    let relay = std::sync::Arc::new(Relay::start(&[]));
    const TOTAL: i64 = 1500;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let relay = relay.clone();
            tokio::spawn(async move {
                for i in 0..TOTAL / 4 {
                    relay.publish(ev("busy", (p * 1000 + i) as usize)).await;
                }
            })
        })
        .collect();
    let mut subscribers = Vec::new();
    let mut since = 0;
    while since < TOTAL - 200 {
        let relay = relay.clone();
        let from = since;
        subscribers.push(tokio::spawn(async move {
            let mut ws = relay.ws(&format!("callId=busy&since={from}")).await;
            let got = read_until(&mut ws, "seq", TOTAL).await;
            (from, numbers(&got, "seq"))
        }));
        tokio::time::sleep(Duration::from_millis(15)).await;
        since += 97;
    }
    assert!(subscribers.len() >= 10);
    for p in publishers {
        p.await.unwrap();
    }
    for s in subscribers {
        let (from, seqs) = s.await.unwrap();
        assert_eq!(
            seqs,
            ((from + 1)..=TOTAL).collect::<Vec<_>>(),
            "since={from}"
        );
    }
}

#[tokio::test]
async fn all_calls_subscription_and_resume_by_pos() {
    let relay = Relay::start(&[]);
    let mut star = relay.ws("callId=*").await;
    let mut none = relay.ws("").await;
    for i in 0..30 {
        relay.publish(ev(["a", "b", "c"][i % 3], i)).await;
    }
    for ws in [&mut star, &mut none] {
        let got = read_until(ws, "pos", 30).await;
        assert_eq!(numbers(&got, "pos"), (1..=30).collect::<Vec<_>>());
        for call in ["a", "b", "c"] {
            let seqs: Vec<i64> = got
                .iter()
                .filter(|e| e["callId"] == call)
                .map(|e| e["seq"].as_i64().unwrap())
                .collect();
            assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "call {call}");
        }
    }
    // Resume the all-calls stream from a relay-wide position.
    let mut ws = relay.ws("callId=*&since=25").await;
    let got = read_until(&mut ws, "pos", 30).await;
    assert_eq!(numbers(&got, "pos"), (26..=30).collect::<Vec<_>>());
    // Without since, all calls means from now on: no weeks of history.
    let mut live = relay.ws("callId=*").await;
    relay.publish(ev("d", 0)).await;
    let first = next_json(&mut live, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first["pos"], 31);
    // A single call without since still starts at its first event.
    let mut one = relay.ws("callId=b").await;
    let first = next_json(&mut one, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first["seq"], 1);
}

#[tokio::test]
async fn slow_subscriber_is_dropped_without_slowing_others() {
    let relay = Relay::start(&[("CALL_COACH_RELAY__SUBSCRIBER_QUEUE", "8")]);
    let mut slow = relay.ws("callId=flood").await;
    let mut fast = relay.ws("callId=flood").await;
    let fast_reader = tokio::spawn(async move {
        let got = read_until(&mut fast, "seq", 300).await;
        numbers(&got, "seq")
    });
    // Big events fill the slow client's socket buffers quickly.
    let filler = "x".repeat(60_000);
    let started = Instant::now();
    for i in 0..300 {
        relay
            .publish(json!({"type":"transcript","callId":"flood","text":filler,"i":i}))
            .await;
    }
    let publish_time = started.elapsed();
    assert_eq!(fast_reader.await.unwrap(), (1..=300).collect::<Vec<_>>());

    // The slow one now reads: whatever it was sent, then the notice.
    let mut seqs = Vec::new();
    let notice = loop {
        let ev = next_json(&mut slow, Duration::from_secs(20))
            .await
            .expect("a drop notice before the close");
        if ev["type"] == "relay.dropped" {
            break ev;
        }
        seqs.push(ev["seq"].as_i64().unwrap());
    };
    let since = notice["since"].as_i64().unwrap();
    assert_eq!(seqs, (1..=since).collect::<Vec<_>>());
    assert!(since < 300, "the slow subscriber was never dropped");
    let close = tokio::time::timeout(Duration::from_secs(10), slow.next())
        .await
        .unwrap();
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Again),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // It resumes where it was dropped and gets the rest.
    let mut again = relay.ws(&format!("callId=flood&since={since}")).await;
    let rest = read_until(&mut again, "seq", 300).await;
    assert_eq!(
        numbers(&rest, "seq"),
        ((since + 1)..=300).collect::<Vec<_>>()
    );
    let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("relay_subscriber_drops_total 1"),
        "{metrics}"
    );
    eprintln!("published 300 x 60 KB with a stuck subscriber in {publish_time:?}");
}

#[tokio::test]
async fn each_bad_input_gets_its_own_4xx_and_nothing_breaks() {
    let relay = Relay::start(&[]);
    let json_ct = [("content-type", "application/json")];
    // (method, path, headers, body, expected status, words in the error)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            b"{not json".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            b"[1,2]".to_vec(),
            400,
            "JSON object",
        ),
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            br#"{"callId":"a"}"#.to_vec(),
            400,
            "`type`",
        ),
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            br#"{"type":"t"}"#.to_vec(),
            400,
            "`callId`",
        ),
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            br#"{"type":"Bad","callId":"a"}"#.to_vec(),
            400,
            "`type` must match",
        ),
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            br#"{"type":"t","callId":"a b"}"#.to_vec(),
            400,
            "`callId` must match",
        ),
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            br#"{"type":"t","callId":"*"}"#.to_vec(),
            400,
            "subscribing",
        ),
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            b"\xff\xfe".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "POST",
            "/event",
            vec![("content-type", "text/plain")],
            br#"{"type":"t","callId":"a"}"#.to_vec(),
            415,
            "application/json",
        ),
        (
            "POST",
            "/event",
            vec![],
            br#"{"type":"t","callId":"a"}"#.to_vec(),
            415,
            "application/json",
        ),
        (
            "POST",
            "/event",
            json_ct.to_vec(),
            big_event(70_000),
            413,
            "larger than 65536",
        ),
        ("GET", "/event", vec![], vec![], 405, "use POST"),
        ("DELETE", "/calls", vec![], vec![], 405, "not allowed"),
        ("GET", "/nope", vec![], vec![], 404, "no such endpoint"),
        ("GET", "/ws", vec![], vec![], 426, "websocket"),
        (
            "GET",
            "/ws?callId=bad%20id",
            vec![],
            vec![],
            400,
            "callId must match",
        ),
        (
            "GET",
            "/ws?callId=a&since=-1",
            vec![],
            vec![],
            400,
            "since must be",
        ),
        (
            "GET",
            "/ws?callId=a&since=abc",
            vec![],
            vec![],
            400,
            "since must be",
        ),
    ];
    for (method, path, headers, body, want, needle) in cases {
        let (status, text) = relay.request(method, path, &headers, body).await;
        assert_eq!(status, want, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
    }
    // Exactly 64 KiB is accepted; chunked bodies are limited too.
    let exact = big_event(65_536);
    assert_eq!(exact.len(), 65_536);
    let (status, _) = relay.request("POST", "/event", &json_ct, exact).await;
    assert_eq!(status, 202);
    let (status, _) = chunked_post(&relay.addr, big_event(100_000)).await;
    assert_eq!(status, 413);
    // A client that opens a connection and sends nothing blocks no one.
    let _idle = tokio::net::TcpStream::connect(&relay.addr).await.unwrap();
    assert_eq!(relay.publish(ev("after", 0)).await, 1);
    let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("relay_rejected_total{reason=\"too_large\"} 2"),
        "{metrics}"
    );
}

/// An event of exactly `len` bytes.
fn big_event(len: usize) -> Vec<u8> {
    let head = r#"{"type":"t","callId":"big","text":""#;
    let tail = r#""}"#;
    let mut v = head.as_bytes().to_vec();
    v.resize(len - tail.len(), b'a');
    v.extend_from_slice(tail.as_bytes());
    v
}

/// A POST with `Transfer-Encoding: chunked` (no Content-Length to check).
async fn chunked_post(addr: &str, body: Vec<u8>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /event HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(8192) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The relay may answer and close before reading everything.
    let _ = s.write_all(&req).await;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn every_acknowledged_event_survives_sigkill() {
    let relay = std::sync::Arc::new(Relay::start(&[]));
    let mut tasks = Vec::new();
    for p in 0..8 {
        let relay = relay.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50 {
                let call = format!("k{}", (p + i) % 3);
                acked.push((call.clone(), relay.publish(ev(&call, i)).await));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let relay = std::sync::Arc::try_unwrap(relay).ok().expect("sole owner");
    let relay = relay.kill_and_restart();
    for call in ["k0", "k1", "k2"] {
        let mut want: Vec<i64> = acked
            .iter()
            .filter(|(c, _)| c == call)
            .map(|(_, s)| *s)
            .collect();
        want.sort();
        let last = *want.last().unwrap();
        assert_eq!(
            want,
            (1..=last).collect::<Vec<_>>(),
            "acks of {call} had gaps"
        );
        let mut ws = relay.ws(&format!("callId={call}&since=0")).await;
        let got = read_until(&mut ws, "seq", last).await;
        assert_eq!(numbers(&got, "seq"), want);
        // Numbering carries on after the restart.
        assert_eq!(relay.publish(ev(call, 999)).await, last + 1);
    }
    let mut star = relay.ws("callId=*&since=0").await;
    let all = read_until(&mut star, "pos", 403).await;
    assert_eq!(numbers(&all, "pos"), (1..=403).collect::<Vec<_>>());
}

#[tokio::test]
async fn sigterm_closes_subscribers_with_1001_and_exits_cleanly() {
    let mut relay = Relay::start(&[]);
    let mut ws = relay.ws("callId=x").await;
    relay.publish(ev("x", 0)).await;
    assert_eq!(
        next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["seq"],
        1
    );
    relay.signal(libc::SIGTERM);
    let close = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .expect("exited within 10 s");
    assert!(status.success(), "exit status {status}");
    let mut saw_stopping = false;
    while let Some(msg) = relay.recv_notify(Duration::from_millis(100)) {
        saw_stopping |= msg.lines().any(|l| l == "STOPPING=1");
    }
    assert!(saw_stopping, "no STOPPING=1; log:\n{}", relay.log());
    assert!(relay.log().contains("relay stopped"));
}

#[tokio::test]
async fn watchdog_pings_when_asked() {
    let relay = Relay::start(&[("WATCHDOG_USEC", "200000")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pings = 0;
    while Instant::now() < deadline && pings < 3 {
        if let Some(msg) = relay.recv_notify(Duration::from_millis(300)) {
            pings += msg.lines().filter(|l| *l == "WATCHDOG=1").count();
        }
    }
    assert!(pings >= 3, "only {pings} watchdog pings in 30 s");
}

#[tokio::test]
async fn active_calls_listing() {
    let relay = Relay::start(&[]);
    relay
        .publish(json!({"type":"call.started","callId":"a1","agent":"PJSIP/200","caller":"600","direction":"inbound"}))
        .await;
    relay
        .publish(json!({"type":"call.started","callId":"a2","agent":"PJSIP/201"}))
        .await;
    relay.publish(ev("a2", 0)).await;
    relay.publish(ev("loose", 0)).await; // no call.started, but recent
    relay
        .publish(json!({"type":"call.ended","callId":"a2","reason":"hangup"}))
        .await;
    let (status, body) = relay.request("GET", "/calls", &[], "").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let calls = v["calls"].as_array().unwrap();
    let ids: Vec<&str> = calls
        .iter()
        .map(|c| c["callId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "loose"], "{body}");
    assert_eq!(calls[0]["agent"], "PJSIP/200");
    assert_eq!(calls[0]["caller"], "600");
    assert_eq!(calls[0]["lastSeq"], 1);
}

#[tokio::test]
async fn subscriber_ping_is_answered() {
    let relay = Relay::start(&[]);
    let mut ws = relay.ws("callId=p").await;
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(matches!(msg, Some(Ok(Message::Pong(p))) if &p[..] == b"hi"));
}

/// A publisher that did not get its answer retries with the same
/// `Idempotency-Key`: the event is stored once, and the retry is answered
/// with the first copy's numbers (the JetStream mode does the same,
/// tests/it/relay_nats.rs).
#[tokio::test]
async fn a_retried_publish_with_the_same_key_is_stored_once() {
    let relay = Relay::start(&[]);
    let post = |key: &'static str, i: usize| {
        let relay = &relay;
        async move {
            let (status, body) = relay
                .request(
                    "POST",
                    "/event",
                    &[
                        ("content-type", "application/json"),
                        ("idempotency-key", key),
                    ],
                    ev("keyed", i).to_string(),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()
        }
    };
    let first = post("k-1", 1).await;
    let again = post("k-1", 1).await;
    assert_eq!(
        (&again["seq"], &again["pos"], &again["duplicate"]),
        (&first["seq"], &first["pos"], &json!(true))
    );
    let next = post("k-2", 2).await;
    assert_eq!(next["seq"], 2);
    let mut ws = relay.ws("callId=keyed&since=0").await;
    let events = read_until(&mut ws, "seq", 2).await;
    assert_eq!(
        events.iter().map(|e| e["text"].clone()).collect::<Vec<_>>(),
        [json!("frase 1"), json!("frase 2")]
    );
    let (_, metrics) = relay.request("GET", "/metrics", &[], "").await;
    assert!(metrics.contains("relay_duplicates_total 1"), "{metrics}");
}
