//! Relay tokens: roles, scopes, and refusing to run open on a network.

use serde_json::json;

use crate::util::{AGENT200, PUBLISH, Relay, SUPERVISOR, run_bin, tokens_file};

#[tokio::test]
async fn tokens_gate_every_request_by_role() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path());
    let mut relay = Relay::start(&[("RELAY_TOKENS_FILE", path.to_str().unwrap())]);
    let event = json!({"type":"call.started","callId":"c200","agent":"PJSIP/200"});
    let ct = [("content-type", "application/json")];

    // No token, a wrong token: 401. Health checks need none.
    let (status, _) = relay.post(&event).await;
    assert_eq!(status, 401);
    relay.token = Some("wrong-token-0123456789".into());
    assert_eq!(relay.post(&event).await.0, 401);
    relay.token = None;
    assert_eq!(relay.request("GET", "/healthz", &[], "").await.0, 200);
    assert_eq!(relay.request("GET", "/metrics", &[], "").await.0, 401);
    assert!(relay.try_ws("callId=c200").await.is_err());

    // A subscriber token may not publish; a publish token may.
    relay.token = Some(AGENT200.into());
    assert_eq!(relay.post(&event).await.0, 403);
    relay.token = Some(PUBLISH.into());
    assert_eq!(relay.publish(event).await, 1);
    relay
        .publish(json!({"type":"call.started","callId":"c201","agent":"PJSIP/201"}))
        .await;
    // ?token= works for publishers too.
    relay.token = None;
    let (status, _) = relay
        .request(
            "POST",
            &format!("/event?token={PUBLISH}"),
            &ct,
            r#"{"type":"t","callId":"c200"}"#,
        )
        .await;
    assert_eq!(status, 202);

    // The agent token follows its agent's calls (and its named call) only.
    relay.token = Some(AGENT200.into());
    let mut ws = relay.ws("callId=c200").await;
    let first = crate::util::next_json(&mut ws, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first["agent"], "PJSIP/200");
    assert!(relay.try_ws("callId=extra").await.is_ok());
    for query in ["callId=c201", "callId=*", ""] {
        match relay.try_ws(query).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{query}")
            }
            other => panic!(
                "{query}: expected 403, got {:?}",
                other.map(|_| "a websocket")
            ),
        }
    }
    let (status, body) = relay.request("GET", "/calls", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("c200") && !body.contains("c201"), "{body}");

    // Browsers pass the token in the query string.
    relay.token = None;
    assert!(
        relay
            .try_ws(&format!("callId=*&token={SUPERVISOR}"))
            .await
            .is_ok()
    );
    relay.token = Some(SUPERVISOR.into());
    let (_, body) = relay.request("GET", "/calls", &[], "").await;
    assert!(body.contains("c200") && body.contains("c201"), "{body}");
    assert_eq!(relay.post(&json!({"type":"t","callId":"x"})).await.0, 403);
}

#[test]
fn refuses_network_address_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let link = crate::util::service_link(dir.path(), "relay");
    let state = dir.path().join("state");
    let (code, _, err) = run_bin(
        Some(&link),
        &[],
        &[
            ("RELAY_LISTEN", "0.0.0.0:0"),
            ("STATE_DIR", state.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("without tokens"), "{err}");

    // A bad tokens file is a configuration error too, with its line.
    let bad = dir.path().join("bad-tokens");
    std::fs::write(&bad, "short publish\n").unwrap();
    let (code, _, err) = run_bin(
        Some(&link),
        &[],
        &[
            ("RELAY_LISTEN", "127.0.0.1:0"),
            ("RELAY_TOKENS_FILE", bad.to_str().unwrap()),
            ("STATE_DIR", state.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("line 1"), "{err}");
}

#[tokio::test]
async fn network_address_allowed_with_tokens_or_explicit_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path());
    let relay = Relay::start(&[
        ("RELAY_LISTEN", "0.0.0.0:0"),
        ("RELAY_TOKENS_FILE", path.to_str().unwrap()),
    ]);
    assert!(relay.addr.starts_with("0.0.0.0:"));
    let relay = Relay::start(&[
        ("RELAY_LISTEN", "0.0.0.0:0"),
        ("CALL_COACH_RELAY__ALLOW_UNAUTHENTICATED_REMOTE", "true"),
    ]);
    assert!(relay.addr.starts_with("0.0.0.0:"));
}

#[tokio::test]
async fn tokens_from_a_systemd_credential() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(tokens_file(dir.path()), creds.join("relay_tokens")).unwrap();
    let mut relay = Relay::start(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    assert_eq!(relay.post(&json!({"type":"t","callId":"x"})).await.0, 401);
    relay.token = Some(PUBLISH.into());
    assert_eq!(relay.publish(json!({"type":"t","callId":"x"})).await, 1);
}
