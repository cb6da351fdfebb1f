//! ari-coach against the ARI simulator (`ari_sim`), with the real relay,
//! stt (base model) and rtp2ws: calls placed, both parties transcribed
//! apart, every way a call ends, failures and reconnects, many calls.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::ari_sim::{Answer, AriSim, Voice};
use crate::util::{Service, Ws, event_url, start_stt, text};

/// The whole chain: relay, stt, rtp2ws, the simulator, ari-coach.
struct Rig {
    relay: Service,
    _stt: Service,
    rtp2ws: Service,
    sim: AriSim,
    coach: Service,
}

async fn rig(base_port: u16, extra: &[(&str, &str)]) -> Rig {
    rig_with_stt(base_port, extra, &[]).await
}

/// [`rig`] with extra stt settings.
async fn rig_with_stt(base_port: u16, extra: &[(&str, &str)], stt_extra: &[(&str, &str)]) -> Rig {
    let relay = Service::start(&[]);
    let stt = start_stt(&event_url(&relay), stt_extra);
    let stt_url = format!("ws://{}/ws", stt.addr);
    let base = base_port.to_string();
    let rtp2ws = Service::start_named(
        "rtp2ws",
        &[
            ("STT_URL", stt_url.as_str()),
            ("RTP2WS_CONTROL", "127.0.0.1:0"),
            ("BASE_PORT", base.as_str()),
        ],
    );
    let sim = AriSim::start("coach", "coach", "s3cret").await;
    let relay_event = event_url(&relay);
    let mut env = coach_env(&sim, &rtp2ws, &relay_event);
    env.push(("CALL_COACH_ARI_COACH__AGENT_TIMEOUT_SECS", "2"));
    env.extend_from_slice(extra);
    let coach = Service::start_named("ari-coach", &env);
    sim.wait_connected(Duration::from_secs(10)).await;
    Rig {
        relay,
        _stt: stt,
        rtp2ws,
        sim,
        coach,
    }
}

/// ari-coach's environment for the simulator `sim`, rtp2ws and a relay.
fn coach_env<'a>(
    sim: &'a AriSim,
    rtp2ws: &'a Service,
    relay_event: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("ARI_URL", sim.url.as_str()),
        ("ARI_USER", "coach"),
        ("ARI_PASS", "s3cret"),
        ("RTP2WS_CONTROL", rtp2ws.addr.as_str()),
        ("RELAY_EVENT", relay_event),
        ("AGENT_DIAL", "PJSIP/200"),
        ("CALL_COACH_ARI_COACH__LISTEN", "127.0.0.1:0"),
    ]
}

/// Reads a call's events until `done` says so; returns all of them.
async fn until(ws: &mut Ws, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    until_more(ws, Vec::new(), timeout, done).await
}

/// As [`until`], for a subscription already partly read into `seen`.
async fn until_more(
    ws: &mut Ws,
    mut seen: Vec<Value>,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => seen.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => {}
            Ok(_) => panic!("the relay closed the subscription; events so far: {seen:#?}"),
            Err(_) => panic!("timed out; events so far: {seen:#?}"),
        }
    }
    seen
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn finals_of(events: &[Value], speaker: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "transcript" && e["final"] == true && e["speaker"] == speaker)
        .map(text)
        .collect::<Vec<_>>()
        .join(" ")
}

fn has_final(events: &[Value], speaker: &str, word: &str) -> bool {
    finals_of(events, speaker).contains(word)
}

async fn no_legs(rtp2ws: &Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = rtp2ws.request("GET", "/streams", &[], "").await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["streams"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(Instant::now() < deadline, "rtp2ws legs left open: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent who answers after `after_ms` and speaks after `lead` seconds.
fn agent_says(after_ms: u64, lead: f64, recordings: &[&str]) -> Answer {
    Answer::After(
        Duration::from_millis(after_ms),
        Voice::script(lead, recordings),
    )
}

/// The call's `call.ended` (waiting for it), with what came before.
async fn ended(ws: &mut Ws, timeout: Duration) -> (Value, Vec<Value>) {
    let events = until(ws, timeout, |e| !of_type(e, "call.ended").is_empty()).await;
    (of_type(&events, "call.ended")[0].clone(), events)
}

/// Waits for the call's `call.started`.
async fn started(ws: &mut Ws) -> Vec<Value> {
    until(ws, Duration::from_secs(20), |e| {
        !of_type(e, "call.started").is_empty()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_call_is_transcribed_per_speaker_and_leaves_nothing_behind() {
    let rig = rig(33_000, &[]).await;
    rig.sim
        .endpoint("PJSIP/200", agent_says(300, 1.0, &["vm-intro"]));
    let customer = rig.sim.inbound(
        ("Cliente", "5551234"),
        Voice::script(2.0, &["conf-onlyperson"]),
        &["inbound", "1000"],
    );
    let mut sub = rig.relay.ws(&format!("callId={customer}")).await;
    let events = until(&mut sub, Duration::from_secs(60), |e| {
        has_final(e, "agent", "mensaje") && has_final(e, "customer", "conferencia")
    })
    .await;
    let started = of_type(&events, "call.started");
    assert_eq!(started.len(), 1, "{events:#?}");
    assert_eq!(started[0]["agent"], "PJSIP/200");
    assert_eq!(started[0]["caller"], "Cliente <5551234>");
    assert_eq!(started[0]["direction"], "inbound");
    // Each speaker's voice came only from its own tap.
    assert!(
        !finals_of(&events, "agent").contains("conferencia"),
        "{events:#?}"
    );
    assert!(
        !finals_of(&events, "customer").contains("mensaje"),
        "{events:#?}"
    );
    // The customer hangs up: ari-coach hangs up the agent and removes
    // the snoops, the ExternalMedia channels, the bridges and the legs.
    rig.sim.remote_hangup(&customer);
    let (end, _) = ended(&mut sub, Duration::from_secs(30)).await;
    assert_eq!(end["reason"], "customer-hangup", "{end}");
    assert_eq!(end["answered"], true);
    rig.sim.wait_empty(&[], Duration::from_secs(10)).await;
    no_legs(&rig.rtp2ws).await;
    // ari-coach's own status.
    let (status, _) = rig.coach.request("GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    // The call's task ends once its teardown is done (after call.ended).
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (_, metrics) = rig.coach.request("GET", "/metrics", &[], "").await;
        if metrics.contains("ari_coach_calls_active 0") || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for line in [
        "ari_coach_connected 1",
        "ari_coach_calls_active 0",
        "ari_coach_calls_started_total{mode=\"inbound\"} 1",
        "ari_coach_calls_ended_total{reason=\"customer-hangup\"} 1",
        "ari_coach_taps_failed_total 0",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    // Only a tap's bridge may meet channels not in Stasis yet: the caller
    // is answered and bridged, and the agent bridged, after their own
    // StasisStart.
    let refused = rig.sim.refused();
    assert!(
        refused
            .iter()
            .all(|r| r.contains("-tap-") && r.ends_with("/addChannel")),
        "{refused:?}"
    );
    // The requests were the documented ones.
    let requests = rig.sim.requests();
    for expected in [
        format!("POST /channels/{customer}/answer"),
        "POST /channels".into(),
        format!("POST /channels/{customer}/snoop"),
        "POST /channels/externalMedia".into(),
        format!("DELETE /bridges/{customer}-call"),
    ] {
        assert!(
            requests.contains(&expected),
            "{expected} not in {requests:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_hanging_up_first_ends_the_call_for_the_customer_too() {
    let rig = rig(33_100, &[]).await;
    rig.sim
        .endpoint("PJSIP/200", agent_says(300, 1.0, &["queue-thankyou"]));
    let customer = rig.sim.inbound(("", "600"), Voice::script(0.0, &[]), &[]);
    let mut sub = rig.relay.ws(&format!("callId={customer}")).await;
    let events = until(&mut sub, Duration::from_secs(60), |e| {
        has_final(e, "agent", "paciencia")
    })
    .await;
    assert_eq!(of_type(&events, "call.started")[0]["caller"], "600");
    rig.sim.remote_hangup(&format!("{customer}-agent"));
    assert_eq!(
        ended(&mut sub, Duration::from_secs(30)).await.0["reason"],
        "agent-hangup"
    );
    // call.ended goes out first; the teardown (hanging up the customer
    // too) follows it.
    rig.sim.wait_empty(&[], Duration::from_secs(10)).await;
    assert!(!rig.sim.exists(&customer), "the customer was not hung up");
    assert!(
        rig.sim
            .requests()
            .contains(&format!("DELETE /channels/{customer}"))
    );
    no_legs(&rig.rtp2ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_who_never_answers_or_is_busy_ends_the_call_with_the_reason() {
    let rig = rig(33_200, &[]).await;
    rig.sim.endpoint("PJSIP/200", Answer::Never);
    rig.sim.endpoint("PJSIP/201", Answer::Busy);
    let first = rig
        .sim
        .inbound(("Cliente", "5550001"), Voice::script(0.0, &[]), &[]);
    // The dialplan may choose the agent per call.
    let second = rig.sim.inbound(
        ("Cliente", "5550002"),
        Voice::script(0.0, &[]),
        &["inbound", "agent=PJSIP/201"],
    );
    for (call, reason) in [(&first, "agent-no-answer"), (&second, "agent-busy")] {
        let mut sub = rig.relay.ws(&format!("callId={call}")).await;
        let (end, events) = ended(&mut sub, Duration::from_secs(20)).await;
        assert!(of_type(&events, "call.started").is_empty(), "{events:#?}");
        assert_eq!(end["reason"], reason, "{end}");
        assert_eq!(end["answered"], false);
        assert!(end["caller"].as_str().unwrap().contains("555000"), "{end}");
    }
    rig.sim.wait_empty(&[], Duration::from_secs(10)).await;
    no_legs(&rig.rtp2ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_tap_is_tried_again_and_one_that_keeps_failing_degrades_only_its_party() {
    let rig = rig(33_300, &[]).await;
    rig.sim
        .endpoint("PJSIP/200", agent_says(300, 1.0, &["vm-intro"]));
    let calls_tap = |events: &[Value], ok: bool| -> Vec<Value> {
        of_type(events, "call.tap")
            .into_iter()
            .filter(|e| e["ok"] == ok)
            .cloned()
            .collect()
    };

    // Once: the customer's first tap fails, the second attempt works.
    let first = rig.sim.inbound(
        ("Cliente", "5551234"),
        Voice::script(3.0, &["conf-onlyperson"]),
        &[],
    );
    rig.sim.fail("POST", &format!("/{first}/snoop"), 500, 1);
    let mut sub = rig.relay.ws(&format!("callId={first}")).await;
    let events = until(&mut sub, Duration::from_secs(60), |e| {
        has_final(e, "customer", "conferencia") && has_final(e, "agent", "mensaje")
    })
    .await;
    let failed = calls_tap(&events, false);
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0]["speaker"], "customer");
    assert!(
        // ("ARI POST /channels/ID/snoop: 500 ...": not a port or an id
        // that happens to hold "500".)
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("/snoop: 500 "),
        "{}",
        failed[0]
    );
    let restored = calls_tap(&events, true);
    assert_eq!(restored.len(), 1, "{events:#?}");
    assert_eq!(restored[0]["speaker"], "customer");
    assert_eq!(restored[0]["restored"], true);
    rig.sim.remote_hangup(&first);
    ended(&mut sub, Duration::from_secs(30)).await;

    // Always: the first attempt and its three retries fail; the agent is
    // still coached, and no half-built tap of the customer is left.
    let second = rig.sim.inbound(
        ("Cliente", "5551235"),
        Voice::script(2.0, &["conf-onlyperson"]),
        &[],
    );
    rig.sim.fail("POST", &format!("/{second}/snoop"), 500, 100);
    let mut sub = rig.relay.ws(&format!("callId={second}")).await;
    let events = until(&mut sub, Duration::from_secs(60), |e| {
        calls_tap(e, false).len() == 4 && has_final(e, "agent", "mensaje")
    })
    .await;
    assert!(calls_tap(&events, true).is_empty(), "{events:#?}");
    assert!(finals_of(&events, "customer").is_empty(), "{events:#?}");
    assert!(
        rig.sim
            .leftovers()
            .iter()
            .all(|l| !l.contains(&format!("{second}-snoop-customer"))
                && !l.contains(&format!("{second}-em-customer"))
                && !l.contains(&format!("{second}-tap-customer"))),
        "{:?}",
        rig.sim.leftovers()
    );
    // No fifth attempt (it would be due 1 s after the fourth).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, metrics) = rig.coach.request("GET", "/metrics", &[], "").await;
    for line in [
        "ari_coach_taps_failed_total 5",
        "ari_coach_taps_restored_total 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    rig.sim.remote_hangup(&second);
    ended(&mut sub, Duration::from_secs(30)).await;
    rig.sim.wait_empty(&[], Duration::from_secs(10)).await;
    no_legs(&rig.rtp2ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn taps_wait_for_their_channels_to_enter_stasis_and_a_lost_one_is_rebuilt() {
    let rig = rig(33_800, &[]).await;
    // Asterisk answers snoop and externalMedia before the new channels'
    // StasisStart; here 700 ms before, far longer than ari-coach takes to
    // ask for the bridge, so every first addChannel meets a 422.
    rig.sim.stasis_delay(Duration::from_millis(700));
    rig.sim
        .endpoint("PJSIP/200", agent_says(200, 1.0, &["vm-intro"]));
    let customer = rig.sim.inbound(
        ("Cliente", "5551234"),
        Voice::script(5.0, &["conf-onlyperson"]),
        &[],
    );
    let mut sub = rig.relay.ws(&format!("callId={customer}")).await;
    // Both taps are built despite the race.
    rig.sim
        .wait_bridged(
            &format!("{customer}-tap-customer"),
            2,
            Duration::from_secs(20),
        )
        .await;
    rig.sim
        .wait_bridged(&format!("{customer}-tap-agent"), 2, Duration::from_secs(20))
        .await;
    let refused = rig.sim.refused();
    assert!(
        refused
            .iter()
            .any(|r| r.contains("-tap-customer/addChannel"))
            && refused.iter().any(|r| r.contains("-tap-agent/addChannel")),
        "the race never happened: {refused:?}"
    );
    // The customer's ExternalMedia channel goes away mid-call: the tap is
    // rebuilt (meeting the race again) and the customer's words, which
    // start after that, are transcribed.
    rig.sim.remote_hangup(&format!("{customer}-em-customer"));
    let events = until(&mut sub, Duration::from_secs(60), |e| {
        has_final(e, "customer", "conferencia") && has_final(e, "agent", "mensaje")
    })
    .await;
    let taps = of_type(&events, "call.tap");
    assert_eq!(taps.len(), 1, "{events:#?}");
    assert_eq!(taps[0]["speaker"], "customer");
    assert_eq!(taps[0]["ok"], true);
    assert_eq!(taps[0]["restored"], true);
    assert!(
        !rig.coach.log().contains("tapping failed"),
        "{}",
        rig.coach.log()
    );
    rig.sim.remote_hangup(&customer);
    assert_eq!(
        ended(&mut sub, Duration::from_secs(30)).await.0["reason"],
        "customer-hangup"
    );
    rig.sim.wait_empty(&[], Duration::from_secs(10)).await;
    no_legs(&rig.rtp2ws).await;
    // The pieces Asterisk had already destroyed with the customer (its
    // snoop) answered 404 to the teardown: done, not a failure.
    let log = rig.coach.log();
    assert!(!log.contains("failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_events_socket_is_reconnected_and_reconciled() {
    let rig = rig(33_400, &[]).await;
    // A speaks again well after the reconnect; B's customer hangs up
    // while ari-coach cannot hear it.
    rig.sim
        .endpoint("PJSIP/200", agent_says(200, 6.0, &["vm-intro"]));
    let a = rig
        .sim
        .inbound(("A", "1"), Voice::script(1.0, &["conf-onlyperson"]), &[]);
    let b = rig.sim.inbound(("B", "2"), Voice::script(0.0, &[]), &[]);
    let mut sub_a = rig.relay.ws(&format!("callId={a}")).await;
    let mut sub_b = rig.relay.ws(&format!("callId={b}")).await;
    started(&mut sub_a).await;
    started(&mut sub_b).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.sim.drop_socket(Duration::from_millis(1500));
    rig.sim.remote_hangup(&b);
    // B ends once ari-coach is back and sees what happened.
    assert_eq!(
        ended(&mut sub_b, Duration::from_secs(20)).await.0["reason"],
        "customer-hangup"
    );
    assert!(rig.sim.connections() >= 2);
    // A is still coached: the agent's words after the reconnect arrive.
    let events = until(&mut sub_a, Duration::from_secs(60), |e| {
        has_final(e, "agent", "mensaje") && has_final(e, "customer", "conferencia")
    })
    .await;
    assert!(of_type(&events, "call.ended").is_empty());
    rig.sim.remote_hangup(&a);
    ended(&mut sub_a, Duration::from_secs(30)).await;
    rig.sim.wait_empty(&[], Duration::from_secs(10)).await;
    no_legs(&rig.rtp2ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_ari_coach_adopts_the_call_still_up() {
    let mut rig = rig(33_500, &[]).await;
    rig.sim
        .endpoint("PJSIP/200", agent_says(200, 5.0, &["vm-intro"]));
    let call = rig.sim.inbound(("C", "3"), Voice::script(0.0, &[]), &[]);
    let mut sub = rig.relay.ws(&format!("callId={call}")).await;
    started(&mut sub).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Killed outright: nothing is cleaned up, the call stays up.
    rig.coach = rig.coach.kill_and_restart();
    let events = until(&mut sub, Duration::from_secs(60), |e| {
        has_final(e, "agent", "mensaje")
    })
    .await;
    assert!(of_type(&events, "call.ended").is_empty(), "{events:#?}");
    // Adopting rebuilt the taps once, quietly: no tap was seen as lost.
    assert!(of_type(&events, "call.tap").is_empty(), "{events:#?}");
    rig.sim.remote_hangup(&call);
    assert_eq!(
        ended(&mut sub, Duration::from_secs(30)).await.0["reason"],
        "customer-hangup"
    );
    rig.sim.wait_empty(&[], Duration::from_secs(10)).await;
    no_legs(&rig.rtp2ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_mode_taps_a_call_the_dialplan_bridged_and_leaves_the_parties_alone() {
    let rig = rig(33_600, &[]).await;
    let (customer, agent) = rig.sim.outside_call(
        Voice::script(2.0, &["conf-onlyperson"]),
        Voice::script(1.0, &["vm-intro"]),
    );
    let mut sub = rig.relay.ws(&format!("callId={customer}")).await;
    // The member's gosub sends the messenger (README: `coach-attach`).
    let messenger = rig.sim.messenger(&["attach", &customer, &agent]);
    let events = until(&mut sub, Duration::from_secs(60), |e| {
        has_final(e, "agent", "mensaje") && has_final(e, "customer", "conferencia")
    })
    .await;
    let started = of_type(&events, "call.started")[0];
    assert_eq!(started["agent"], "PJSIP/200", "{started}");
    assert_eq!(started["caller"], "Cliente <5550100>");
    assert_eq!(started["mode"], "attach");
    assert!(!rig.sim.exists(&messenger), "the messenger was not hung up");
    rig.sim.remote_hangup(&customer);
    assert_eq!(
        ended(&mut sub, Duration::from_secs(30)).await.0["reason"],
        "customer-hangup"
    );
    // The parties belong to the queue, which hung up the agent: ari-coach
    // removed only its own taps and never hung up either party.
    rig.sim.wait_empty(&[], Duration::from_secs(10)).await;
    let requests = rig.sim.requests();
    for party in [&customer, &agent] {
        assert!(
            !requests.contains(&format!("DELETE /channels/{party}")),
            "{requests:#?}"
        );
    }
    no_legs(&rig.rtp2ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_calls_are_each_transcribed_and_cleaned_up() {
    let rig = rig(33_700, &[]).await;
    rig.sim
        .endpoint("PJSIP/200", agent_says(100, 1.0, &["queue-thankyou"]));
    let mut calls = Vec::new();
    for i in 0..20 {
        let id = rig.sim.inbound(
            ("Cliente", &format!("55500{i:02}")),
            Voice::script(1.5, &["vm-goodbye"]),
            &[],
        );
        calls.push((id.clone(), rig.relay.ws(&format!("callId={id}")).await));
    }
    for (id, sub) in &mut calls {
        let events = until(sub, Duration::from_secs(120), |e| {
            has_final(e, "agent", "gracias") && !finals_of(e, "customer").is_empty()
        })
        .await;
        assert_eq!(of_type(&events, "call.started").len(), 1, "{id}");
        assert!(
            finals_of(&events, "customer").contains("pronto"),
            "{id}: {events:#?}"
        );
    }
    for (id, _) in &calls {
        rig.sim.remote_hangup(id);
    }
    for (id, sub) in &mut calls {
        let (end, _) = ended(sub, Duration::from_secs(60)).await;
        assert_eq!(end["reason"], "customer-hangup", "{id}");
    }
    rig.sim.wait_empty(&[], Duration::from_secs(20)).await;
    no_legs(&rig.rtp2ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_reported_and_retried() {
    let sim = AriSim::start("coach", "coach", "right").await;
    let mut coach = Service::start_named(
        "ari-coach",
        &[
            ("ARI_URL", sim.url.as_str()),
            ("ARI_PASS", "wrong"),
            ("RELAY_EVENT", "http://127.0.0.1:9/event"),
            ("CALL_COACH_ARI_COACH__LISTEN", "127.0.0.1:0"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !coach.log().contains("Asterisk answered 401") {
        assert!(Instant::now() < deadline, "{}", coach.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        coach.log().contains("check ARI_USER and ARI_PASS"),
        "{}",
        coach.log()
    );
    assert!(!coach.log().contains("wrong"), "the password was logged");
    assert!(!sim.connected());
    let (status, body) = coach.request("GET", "/healthz", &[], "").await;
    assert_eq!(status, 503, "{body}");
    coach.signal(libc::SIGTERM);
    let status = coach.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(status.success(), "{status}");
}

/// ari-coach publishes `call.ended` as soon as Asterisk says the call is
/// over, not once stt has transcribed the last words: with a slow stt (one
/// single-threaded worker, the full 30 s window, a wide beam), a hangup in
/// the middle of the customer's sentence ends the call at once, and that
/// sentence's final follows `call.ended`.
#[tokio::test(flavor = "multi_thread")]
async fn call_ended_does_not_wait_for_a_slow_stt() {
    let rig = rig_with_stt(
        33_900,
        &[],
        &[
            ("CALL_COACH_STT__WORKERS", "1"),
            ("CALL_COACH_STT__THREADS_PER_WORKER", "1"),
            ("CALL_COACH_STT__MIN_AUDIO_CTX", "1500"),
            ("CALL_COACH_STT__BEAM", "5"),
        ],
    )
    .await;
    rig.sim.endpoint("PJSIP/200", agent_says(300, 30.0, &[]));
    let customer = rig.sim.inbound(
        ("Cliente", "5551234"),
        Voice::script(1.0, &["vm-intro", "vm-intro"]),
        &[],
    );
    let mut sub = rig.relay.ws(&format!("callId={customer}")).await;
    let speaking = |e: &[Value]| {
        of_type(e, "speech")
            .iter()
            .any(|s| s["speaker"] == "customer")
    };
    let events = until(&mut sub, Duration::from_secs(60), speaking).await;
    let utterance = of_type(&events, "speech")
        .iter()
        .find(|s| s["speaker"] == "customer")
        .map(|s| s["utteranceId"].clone())
        .unwrap();
    let hangup = Instant::now();
    rig.sim.remote_hangup(&customer);
    let events = until_more(&mut sub, events, Duration::from_secs(30), |e| {
        !of_type(e, "call.ended").is_empty()
    })
    .await;
    let took = hangup.elapsed();
    eprintln!("call.ended {took:?} after the hangup");
    let is_its_final = |e: &Value| e["final"] == true && e["utteranceId"] == utterance;
    let events = until_more(&mut sub, events, Duration::from_secs(120), |e| {
        e.iter().any(is_its_final)
    })
    .await;
    let ended_at = events.iter().position(|e| e["type"] == "call.ended");
    let final_at = events.iter().position(is_its_final);
    assert!(
        ended_at < final_at,
        "call.ended waited for stt: {events:#?}"
    );
    // Bounded generously for a loaded machine; typically well under 1 s.
    assert!(took < Duration::from_secs(10), "{took:?}");
    rig.sim.wait_empty(&[], Duration::from_secs(60)).await;
    no_legs(&rig.rtp2ws).await;

    // A SIGTERM in the middle of a teardown: `call.ended` still goes out.
    let mut rig = rig;
    let second = rig.sim.inbound(
        ("Cliente", "5551235"),
        Voice::script(1.0, &["vm-intro"]),
        &[],
    );
    let mut sub = rig.relay.ws(&format!("callId={second}")).await;
    until(&mut sub, Duration::from_secs(60), speaking).await;
    rig.sim.remote_hangup(&second);
    let tearing_down = format!("DELETE /channels/{second}-agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rig.sim.requests().contains(&tearing_down) {
        assert!(Instant::now() < deadline, "no teardown");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rig.coach.signal(libc::SIGTERM);
    let (end, _) = ended(&mut sub, Duration::from_secs(30)).await;
    assert_eq!(end["reason"], "customer-hangup", "{end}");
    assert!(rig.coach.wait_exit(Duration::from_secs(30)).is_some());
}

/// Two Asterisk hosts, one ari-coach each, one relay: both Asterisks number
/// their channels alike (here the very same ids), so each ari-coach puts
/// its own prefix before its call ids and the relay keeps the calls apart.
#[tokio::test(flavor = "multi_thread")]
async fn two_asterisks_with_the_same_channel_ids_make_two_calls_in_one_relay() {
    let relay = Service::start(&[]);
    let stt = start_stt(&event_url(&relay), &[]);
    let stt_url = format!("ws://{}/ws", stt.addr);
    let rtp2ws = Service::start_named(
        "rtp2ws",
        &[
            ("STT_URL", stt_url.as_str()),
            ("RTP2WS_CONTROL", "127.0.0.1:0"),
            ("BASE_PORT", "35000"),
        ],
    );
    let relay_event = event_url(&relay);
    let mut hosts = Vec::new();
    for (prefix, recording) in [("ast1", "vm-intro"), ("ast2", "conf-onlyperson")] {
        let sim = AriSim::start("coach", "coach", "s3cret").await;
        let mut env = coach_env(&sim, &rtp2ws, &relay_event);
        env.push(("CALL_COACH_ARI_COACH__CALL_ID_PREFIX", prefix));
        let coach = Service::start_named("ari-coach", &env);
        sim.wait_connected(Duration::from_secs(10)).await;
        sim.endpoint("PJSIP/200", agent_says(300, 1.0, &[recording]));
        hosts.push((prefix, recording, sim, coach));
    }
    let channels: Vec<String> = hosts
        .iter()
        .map(|(_, _, sim, _)| {
            sim.inbound(
                ("Cliente", "5551234"),
                Voice::script(2.0, &[]),
                &["inbound", "1000"],
            )
        })
        .collect();
    assert_eq!(channels[0], channels[1], "the simulated hosts number alike");
    for (prefix, recording, _, _) in &hosts {
        let call = format!("{prefix}:{}", channels[0]);
        let mut sub = relay.ws(&format!("callId={call}")).await;
        // Words Whisper gets right however loaded the machine ("la
        // converencia" came once under load; "persona" is steadier).
        let word = if *recording == "vm-intro" {
            "mensaje"
        } else {
            "persona"
        };
        let events = until(&mut sub, Duration::from_secs(60), |e| {
            has_final(e, "agent", word)
        })
        .await;
        assert_eq!(
            of_type(&events, "call.started").len(),
            1,
            "{call}: {events:#?}"
        );
        let other = if word == "mensaje" {
            "persona"
        } else {
            "mensaje"
        };
        assert!(
            !finals_of(&events, "agent").contains(other),
            "{call} got the other host's words: {events:#?}"
        );
    }
    let (_, calls) = relay.request("GET", "/calls", &[], "").await;
    for (prefix, _, _, _) in &hosts {
        assert!(
            calls.contains(&format!("\"{prefix}:{}\"", channels[0])),
            "{calls}"
        );
    }
}
