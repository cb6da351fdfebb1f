//! rtp2ws with simulate-call standing in for Asterisk, a real stt with the
//! real model, and a real relay.

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Service, event_url, next_final, next_json, run_bin, sound, start_stt, text};

/// relay, stt posting to it, rtp2ws feeding stt, on ports from `base_port`,
/// with extra rtp2ws settings.
fn start_chain(base_port: u16, extra: &[(&str, &str)]) -> (Service, Service, Service) {
    let relay = Service::start(&[]);
    let stt = start_stt(&event_url(&relay), &[]);
    let stt_url = format!("ws://{}/ws", stt.addr);
    let base_port = base_port.to_string();
    let mut env = vec![
        ("STT_URL", stt_url.as_str()),
        ("RTP2WS_CONTROL", "127.0.0.1:0"),
        ("BASE_PORT", base_port.as_str()),
        ("CALL_COACH_RTP2WS__IDLE_TIMEOUT_SECS", "2"),
    ];
    env.extend_from_slice(extra);
    let rtp2ws = Service::start_named("rtp2ws", &env);
    (relay, stt, rtp2ws)
}

/// An rtp2ws sending to `stt_url` (one URL or several), its ports from
/// `base_port`, with extra settings.
fn rtp2ws_to(stt_url: &str, base_port: &str, extra: &[(&str, &str)]) -> Service {
    let mut env = vec![
        ("STT_URL", stt_url),
        ("RTP2WS_CONTROL", "127.0.0.1:0"),
        ("BASE_PORT", base_port),
    ];
    env.extend_from_slice(extra);
    Service::start_named("rtp2ws", &env)
}

/// Waits for a final of each speaker, both with `word`.
async fn both_speakers_say(sub: &mut crate::util::Ws, word: &str) {
    let mut speakers = Vec::new();
    while speakers.len() < 2 {
        let ev = next_final(sub, Duration::from_secs(60)).await;
        assert!(text(&ev).contains(word), "{ev}");
        speakers.push(ev["speaker"].as_str().unwrap().to_owned());
    }
    speakers.sort();
    assert_eq!(speakers, ["agent", "customer"]);
}

/// Runs `simulate-call` against the rtp2ws at `control` (off the async
/// runtime) with the two recordings and any extra flags; returns (status,
/// stdout, stderr).
async fn simulate(
    control: String,
    call_id: &'static str,
    agent: &'static str,
    customer: &'static str,
    extra: &'static [&'static str],
) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let (agent, customer) = (sound(agent), sound(customer));
        let mut args = vec![
            "simulate-call",
            "--agent",
            agent.to_str().unwrap(),
            "--customer",
            customer.to_str().unwrap(),
            "--rtp2ws",
            &control,
            "--call-id",
            call_id,
        ];
        args.extend_from_slice(extra);
        run_bin(None, &args, &[])
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_call_with_loss_and_jitter_is_transcribed_per_speaker() {
    let (relay, _stt, rtp2ws) = start_chain(31_000, &[]);
    let mut sub = relay.ws("callId=sim-1").await;
    let (code, out, err) = simulate(
        format!("http://{}", rtp2ws.addr),
        "sim-1",
        "vm-intro",
        "conf-enteringno",
        &["--loss", "0.05", "--jitter-ms", "40", "--realtime"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dropped") && out.contains("legs released"),
        "{out}"
    );
    // DELETE waits for stt's finals, so both speakers' finals are in.
    let mut finals: Vec<Value> = Vec::new();
    while finals.len() < 2 {
        let ev = next_json(&mut sub, Duration::from_secs(30))
            .await
            .expect("relay event");
        if ev["final"] == true {
            finals.push(ev);
        }
    }
    let text_of = |speaker: &str| -> String {
        finals
            .iter()
            .filter(|e| e["speaker"] == speaker)
            .map(|e| e["text"].as_str().unwrap().to_lowercase())
            .collect()
    };
    assert!(text_of("agent").contains("mensaje"), "{finals:?}");
    assert!(text_of("customer").contains("conferencia"), "{finals:?}");
    for f in &finals {
        let (s, e) = (f["startMs"].as_u64().unwrap(), f["endMs"].as_u64().unwrap());
        assert!(s < e && e < 9_000, "implausible span {s}..{e}");
    }
    // The legs are gone and the loss was seen.
    let (_, streams) = rtp2ws.request("GET", "/streams", &[], "").await;
    assert_eq!(
        serde_json::from_str::<Value>(&streams).unwrap()["streams"],
        json!([])
    );
    let (_, metrics) = rtp2ws.request("GET", "/metrics", &[], "").await;
    let lost: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rtp2ws_lost_packets_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(lost > 5, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn control_api_checks_input_and_legs_guard_their_port() {
    let (_relay, _stt, rtp2ws) = start_chain(32_000, &[]);
    let ct = [("content-type", "application/json")];
    for (body, needle) in [
        ("nope", "not JSON"),
        (r#"{"speaker":"agent"}"#, "callId must match"),
        (r#"{"callId":"c","speaker":"boss"}"#, "speaker must be"),
        (r#"{"callId":"c","format":"opus"}"#, "format must be"),
    ] {
        let (status, text) = rtp2ws.request("POST", "/streams", &ct, body).await;
        assert_eq!(status, 400, "{body}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    let (status, _) = rtp2ws.request("DELETE", "/streams/leg-999", &[], "").await;
    assert_eq!(status, 404);

    let (status, text) = rtp2ws
        .request(
            "POST",
            "/streams",
            &ct,
            r#"{"callId":"guard","speaker":"agent","format":"slin16"}"#,
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let leg: Value = serde_json::from_str(&text).unwrap();
    let port = leg["port"].as_u64().unwrap() as u16;
    assert_eq!(port, 32_000);
    let target = format!("127.0.0.1:{port}");
    let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = call_coach::audio::rtp::build(118, 1, 320, 5, &[0u8; 640]);
    a.send_to(&good, &target).unwrap(); // latches a as the source
    a.send_to(b"hello, not rtp", &target).unwrap();
    a.send_to(
        &call_coach::audio::rtp::build(0, 2, 640, 5, &[0u8; 160]),
        &target,
    )
    .unwrap();
    b.send_to(
        &call_coach::audio::rtp::build(118, 3, 960, 5, &[0u8; 640]),
        &target,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, streams) = rtp2ws.request("GET", "/streams", &[], "").await;
    let streams: Value = serde_json::from_str(&streams).unwrap();
    let c = &streams["streams"][0]["counters"];
    assert_eq!(
        (
            c["packets"].as_u64(),
            c["notRtp"].as_u64(),
            c["wrongPayloadType"].as_u64(),
            c["wrongSource"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(1)),
        "{streams}"
    );
    // With no more packets the leg closes by itself and frees its port.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, streams) = rtp2ws.request("GET", "/streams", &[], "").await;
    assert_eq!(
        serde_json::from_str::<Value>(&streams).unwrap()["streams"],
        json!([])
    );
    let (status, text) = rtp2ws
        .request(
            "POST",
            "/streams",
            &ct,
            r#"{"callId":"again","speaker":"customer"}"#,
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["port"],
        32_000
    );
}

/// The original deployment's mode: `CALL_ID` fixed, RTP straight to
/// `BASE_PORT + 1` (agent) with no control API call.
#[tokio::test(flavor = "multi_thread")]
async fn compatibility_mode_listens_on_fixed_ports() {
    let (relay, _stt, rtp2ws) = start_chain(33_000, &[("CALL_ID", "live")]);
    let (_, streams) = rtp2ws.request("GET", "/streams", &[], "").await;
    for port in [33000, 33001, 33002] {
        assert!(streams.contains(&format!("\"port\":{port}")), "{streams}");
    }
    let mut sub = relay.ws("callId=live").await;
    // vm-intro as 16 kHz big-endian slin16, 20 ms packets, to the agent port.
    let wav = call_coach::audio::wav::Wav::read(&sound("vm-intro")).unwrap();
    let mut up = Vec::new();
    call_coach::audio::resample::Upsampler2x::new()
        .process(&call_coach::audio::to_f32(&wav.channel(0)), &mut up);
    let mut pcm: Vec<i16> = up.iter().map(|x| (x * 32767.0) as i16).collect();
    pcm.extend(vec![0i16; 16_000]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, chunk) in pcm.chunks(320).enumerate() {
        let payload: Vec<u8> = chunk.iter().flat_map(|s| s.to_be_bytes()).collect();
        let packet =
            call_coach::audio::rtp::build(118, i as u16, 320 * (i as u32 + 1), 77, &payload);
        socket.send_to(&packet, "127.0.0.1:33001").unwrap();
        if i % 10 == 0 {
            // A little pacing so the socket buffer never overflows.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    loop {
        let ev = next_json(&mut sub, Duration::from_secs(60))
            .await
            .expect("transcript");
        if ev["final"] == true {
            assert_eq!(ev["speaker"], "agent");
            assert!(
                ev["text"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains("mensaje"),
                "{ev}"
            );
            break;
        }
    }
}

/// stt is down while a call's audio arrives: rtp2ws holds it (up to
/// `buffer_secs`), keeps retrying, and delivers it once stt is up.
#[tokio::test(flavor = "multi_thread")]
async fn audio_waits_for_stt_to_come_back() {
    let relay = Service::start(&[]);
    let stt_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stt_url = format!("ws://127.0.0.1:{stt_port}/ws");
    let rtp2ws = rtp2ws_to(
        &stt_url,
        "34000",
        &[("CALL_COACH_RTP2WS__BUFFER_SECS", "10")],
    );
    let mut sub = relay.ws("callId=sim-outage").await;
    let sim = tokio::spawn(simulate(
        format!("http://{}", rtp2ws.addr),
        "sim-outage",
        "conf-enteringno",
        "conf-enteringno",
        &[],
    ));
    // The audio is sent (ten times real time) while nothing listens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _stt = start_stt(
        &event_url(&relay),
        &[("STT_LISTEN", &format!("127.0.0.1:{stt_port}"))],
    );
    let (code, _, err) = sim.await.unwrap();
    assert_eq!(code, 0, "{err}");
    both_speakers_say(&mut sub, "conferencia").await;
    let (_, metrics) = rtp2ws.request("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("rtp2ws_dropped_audio_ms_total 0"),
        "{metrics}"
    );
}

/// A full stt refuses new streams at the handshake (503, its reason and
/// figures, `Retry-After`); rtp2ws counts the refusal, keeps the audio,
/// retries, and gets the call transcribed once stt has room.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_stt_refuses_and_rtp2ws_retries_until_it_has_room() {
    let relay = Service::start(&[]);
    let stt = start_stt(&event_url(&relay), &[("CALL_COACH_STT__CAPACITY", "2")]);
    let (_, capacity) = stt.request("GET", "/capacity", &[], "").await;
    let capacity: Value = serde_json::from_str(&capacity).unwrap();
    assert_eq!(
        (
            &capacity["capacity"],
            &capacity["headroom"],
            &capacity["source"]
        ),
        (&json!(2), &json!(2), &json!("fixed")),
        "{capacity}"
    );
    // Two streams fill it; they stay open (silence now and then).
    let mut blockers = Vec::new();
    for speaker in ["agent", "customer"] {
        let url = format!(
            "ws://{}/ws?callId=blocker&speaker={speaker}&sampleRate=8000",
            stt.addr
        );
        blockers.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    let url = format!("ws://{}/ws?callId=third&speaker=agent", stt.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "2");
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["reason"], "capacity", "{body}");
            assert_eq!(
                (&body["streams"], &body["capacity"]),
                (&json!(2), &json!(2))
            );
            assert!(
                body["error"].as_str().unwrap().contains("at capacity"),
                "{body}"
            );
        }
        other => panic!("a third stream was not refused: {other:?}"),
    }
    let (_, capacity) = stt.request("GET", "/capacity", &[], "").await;
    assert!(capacity.contains(r#""accepting":false"#), "{capacity}");

    let rtp2ws = rtp2ws_to(&format!("ws://{}/ws", stt.addr), "31400", &[]);
    let mut sub = relay.ws("callId=sim-full").await;
    let sim = tokio::spawn(simulate(
        format!("http://{}", rtp2ws.addr),
        "sim-full",
        "conf-enteringno",
        "conf-enteringno",
        &[],
    ));
    // Both legs are refused, counted, and retried.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = rtp2ws.request("GET", "/metrics", &[], "").await;
        let refused = metrics
            .lines()
            .find_map(|l| l.strip_prefix("rtp2ws_stt_refused_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if refused >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = stt.request("GET", "/metrics", &[], "").await;
    assert!(
        !metrics.contains("stt_streams_refused_total 0\n"),
        "{metrics}"
    );
    // Room again: the held audio goes through, nothing dropped.
    for mut b in blockers {
        use futures_util::SinkExt;
        b.send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"type":"end"}"#,
        ))
        .await
        .unwrap();
    }
    let (code, _, err) = sim.await.unwrap();
    assert_eq!(code, 0, "{err}");
    both_speakers_say(&mut sub, "conferencia").await;
    let (_, metrics) = rtp2ws.request("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("rtp2ws_dropped_audio_ms_total 0"),
        "{metrics}"
    );
}

/// A figure of a service's `/metrics` (0 when absent).
async fn metric(service: &Service, name: &str) -> u64 {
    let (_, metrics) = service.request("GET", "/metrics", &[], "").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `stt_streams_total` of an stt.
async fn streams_total(stt: &Service) -> u64 {
    metric(stt, "stt_streams_total").await
}

/// Two stt hosts behind one rtp2ws (`STT_URL` with two URLs): a call goes
/// to the one with headroom while the other is full, and to the one left
/// when the other is gone.
#[tokio::test(flavor = "multi_thread")]
async fn with_two_stt_hosts_a_call_goes_where_there_is_room() {
    let relay = Service::start(&[]);
    let full = start_stt(&event_url(&relay), &[("CALL_COACH_STT__CAPACITY", "2")]);
    let roomy = start_stt(&event_url(&relay), &[]);
    let mut blockers = Vec::new();
    for speaker in ["agent", "customer"] {
        let url = format!(
            "ws://{}/ws?callId=blocker&speaker={speaker}&sampleRate=8000",
            full.addr
        );
        blockers.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    let urls = format!("ws://{}/ws, ws://{}/ws", full.addr, roomy.addr);
    let rtp2ws = rtp2ws_to(&urls, "31500", &[]);
    let transcribed = |call: &'static str| {
        let (relay, control) = (&relay, format!("http://{}", rtp2ws.addr));
        async move {
            let mut sub = relay.ws(&format!("callId={call}")).await;
            let (code, _, err) =
                simulate(control, call, "conf-enteringno", "conf-enteringno", &[]).await;
            assert_eq!(code, 0, "{err}");
            both_speakers_say(&mut sub, "conferencia").await;
        }
    };
    // The first stt is full: both legs go to the second, at once.
    transcribed("two-hosts-1").await;
    assert_eq!(streams_total(&full).await, 2, "only the blockers");
    assert_eq!(streams_total(&roomy).await, 2);
    // The second goes away; the first has room again: the next call goes
    // there.
    drop(blockers);
    drop(roomy);
    transcribed("two-hosts-2").await;
    assert_eq!(streams_total(&full).await, 4);
    assert_eq!(metric(&rtp2ws, "rtp2ws_dropped_audio_ms_total").await, 0);
}

/// `stt_streams` (open now) of an stt.
async fn streams_open(stt: &Service) -> u64 {
    metric(stt, "stt_streams").await
}

/// The stt host carrying a call dies (SIGKILL) in the middle of the first
/// sentence (at its first partial): rtp2ws moves both legs to the other host and replays what the
/// dead one had not finalised, so the sentence comes whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_stt_host_loses_no_words_rtp2ws_still_holds() {
    let relay = Service::start(&[]);
    let mut hosts = [
        start_stt(&event_url(&relay), &[]),
        start_stt(&event_url(&relay), &[]),
    ];
    let urls = format!("ws://{}/ws,ws://{}/ws", hosts[0].addr, hosts[1].addr);
    let rtp2ws = rtp2ws_to(&urls, "31600", &[]);
    let mut sub = relay.ws("callId=failover").await;
    let sim = tokio::spawn(simulate(
        format!("http://{}", rtp2ws.addr),
        "failover",
        "vm-intro",
        "vm-intro",
        &["--realtime"],
    ));
    // The first sentence is under way on some stt (its first partial).
    loop {
        let ev = next_json(&mut sub, Duration::from_secs(60))
            .await
            .expect("an event");
        assert_ne!(
            ev["final"], true,
            "the sentence ended before the kill: {ev}"
        );
        if ev["type"] == "transcript" {
            break;
        }
    }
    let mut carrying = None;
    for (i, host) in hosts.iter().enumerate() {
        if streams_open(host).await > 0 {
            carrying = Some(i);
        }
    }
    let carrying = carrying.expect("an stt carries the call");
    hosts[carrying].signal(libc::SIGKILL);
    let (code, _, err) = sim.await.unwrap();
    assert_eq!(code, 0, "{err}");
    let mut finals: std::collections::HashMap<String, String> = Default::default();
    while finals.values().filter(|t| t.contains("mensaje")).count() < 2 {
        let ev = next_final(&mut sub, Duration::from_secs(60)).await;
        finals
            .entry(ev["speaker"].as_str().unwrap().to_owned())
            .or_default()
            .push_str(&format!(" {}", text(&ev)));
    }
    for (speaker, said) in &finals {
        assert!(
            said.contains("favor"),
            "{speaker} lost the sentence's start: {said}"
        );
    }
    assert!(metric(&rtp2ws, "rtp2ws_stt_moves_total").await > 0);
}
