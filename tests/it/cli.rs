//! Multicall dispatch, usage errors, `check-config` and `wer`.

use crate::util::{run_bin, service_link};

#[test]
fn list_names_every_service() {
    let (code, out, _) = run_bin(None, &["--list"], &[]);
    assert_eq!(code, 0);
    for name in ["stt", "rtp2ws", "relay", "orchestrator", "ari-coach"] {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{out}"
        );
    }
}

#[test]
fn bad_usage_exits_64_with_usage() {
    for args in [&["frobnicate"][..], &[], &["relay", "--no-such-flag"]] {
        let (code, out, err) = run_bin(None, args, &[]);
        assert_eq!(code, 64, "{args:?}");
        assert!((out + &err).contains("Usage:"), "{args:?} printed no usage");
    }
    let (code, out, _) = run_bin(None, &["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("check-config"));
}

#[test]
fn argv0_stem_picks_the_service() {
    // `relay.exe`-style stems and paths work; a bad flag proves the relay's
    // own parser ran (usage error 64, naming the relay subcommand).
    let dir = tempfile::tempdir().unwrap();
    let link = service_link(dir.path(), "relay");
    let (code, _, err) = run_bin(Some(&link), &["--bogus"], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("call-coach relay"), "{err}");
    // `relay relay --bogus` (a link that also names its service) is the same.
    let (code, _, err) = run_bin(Some(&link), &["relay", "--bogus"], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("unexpected argument '--bogus'"), "{err}");
}

#[test]
fn check_config_shows_sources_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cc.toml");
    std::fs::write(
        &file,
        "[relay]\nretention_days = 7\n[stt]\nmodel_size = \"base\"\n",
    )
    .unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("openrouter_api_key"), "sk-or-secret-from-cred\n").unwrap();
    let (code, out, err) = run_bin(
        None,
        &["check-config", "--config", file.to_str().unwrap()],
        &[
            ("ARI_PASS", "verysecret"),
            ("CALL_COACH_RELAY__SUBSCRIBER_QUEUE", "64"),
            ("LANG", "pt"),
            ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("{key} missing:\n{out}"))
            .to_owned()
    };
    assert!(line("relay.retention_days").contains("= 7"));
    assert!(line("relay.retention_days").contains("cc.toml"));
    assert!(line("relay.subscriber_queue").contains("CALL_COACH_RELAY__SUBSCRIBER_QUEUE"));
    assert!(line("relay.listen").ends_with("# default"));
    assert!(line("stt.language").contains("\"pt\""));
    assert!(line("stt.language").contains("environment variable LANG"));
    // Effective values, as written.
    for (key, shown) in [
        ("model_dir", "/models\""),
        ("stt.max_no_speech_prob", "= 0.6 "),
        ("orchestrator.relay_ws", "followed as callId=*"),
    ] {
        assert!(line(key).contains(shown), "{}", line(key));
    }
    assert!(line("ari_coach.ari_pass").contains("<redacted>"));
    assert!(line("orchestrator.openrouter_api_key").contains("systemd credential"));
    assert!(
        !out.contains("verysecret") && !out.contains("sk-or-secret"),
        "{out}"
    );

    let (code, out, _) = run_bin(None, &["check-config", "relay"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("relay.listen") && !out.contains("stt."));

    // A desktop locale is not the call's language: ignored, and said so.
    let (code, out, err) = run_bin(None, &["check-config", "stt"], &[("LANG", "en_US.UTF-8")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# note: LANG=en_US.UTF-8"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("stt.language = \"es\"") && l.ends_with("# default")),
        "{out}"
    );
}

#[test]
fn check_config_errors_name_key_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cc.toml");
    std::fs::write(&file, "[relay]\nlisten = 7070\n").unwrap();
    let (code, _, err) = run_bin(
        None,
        &["check-config"],
        &[("CALL_COACH_CONFIG", file.to_str().unwrap())],
    );
    assert_eq!(code, 64);
    assert!(
        err.contains("relay.listen") && err.contains("cc.toml"),
        "{err}"
    );

    let (code, _, err) = run_bin(None, &["check-config"], &[("STT_LISTEN", "localhost")]);
    assert_eq!(code, 64);
    assert!(
        err.contains("stt.listen") && err.contains("STT_LISTEN"),
        "{err}"
    );
    // The bad value is shown, and an unknown key lists the keys there are.
    assert!(err.contains("\"localhost\""), "{err}");
    std::fs::write(&file, "[relay]\nlisten_on = \"x\"\n").unwrap();
    let (code, _, err) = run_bin(
        None,
        &["check-config", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 64);
    assert!(
        err.contains("unknown key \"listen_on\"; the keys here are: listen, "),
        "{err}"
    );
    assert!(!err.contains("`"), "{err}");
    // Values Whisper cannot use, and the demo's model, refused up front.
    for (var, value, key) in [
        ("MODEL_SIZE", "huge", "stt.model_size"),
        ("LANG", "xx", "stt.language"),
    ] {
        let (code, _, err) = run_bin(None, &["check-config"], &[(var, value)]);
        assert_eq!(code, 64, "{var}={value}: {err}");
        assert!(err.contains(key) && err.contains(var), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let (code, out, err) = run_bin(
        None,
        &["demo", "--model", "bogus"],
        &[("MODEL_DIR", "/nonexistent")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("--model \"bogus\""), "{err}");
    assert!(!out.contains("Installing"), "{out}");

    let (code, _, err) = run_bin(None, &["check-config"], &[("DEVICE", "tpu")]);
    assert_eq!(code, 64);
    assert!(err.contains("stt.device"), "{err}");

    // ari-coach's settings are checked before it connects anywhere.
    for (var, value, key) in [
        ("AGENT_DIAL", "200", "ari_coach.agent_dial"),
        ("ARI_URL", "localhost:8088/ari", "ari_coach.ari_url"),
    ] {
        let (code, _, err) = run_bin(None, &["ari-coach"], &[(var, value)]);
        assert_eq!(code, 64, "{var}");
        assert!(err.contains(key), "{err}");
    }

    let (code, _, err) = run_bin(
        None,
        &["check-config", "--config", "/nonexistent.toml"],
        &[],
    );
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent.toml"), "{err}");
}

#[test]
fn stt_without_the_configured_model_names_the_one_installed() {
    // After the demo only base is installed; stt's default is small. A
    // directory of its own holds just base, whatever else the test models
    // directory has (with small there, stt would start and never exit).
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        crate::util::model_dir().join("ggml-base-q8_0.bin"),
        dir.path().join("ggml-base-q8_0.bin"),
    )
    .unwrap();
    let (code, _, err) = run_bin(
        None,
        &["stt"],
        &[
            ("MODEL_DIR", dir.path().to_str().unwrap()),
            ("STT_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("call-coach model fetch small"), "{err}");
    assert!(err.contains("MODEL_SIZE=base"), "{err}");
}

/// `wer` scores each transcript file, and each after the first against it,
/// file by file: a gap on every file stands out, one on a single file of
/// many does not.
#[test]
fn wer_compares_transcripts_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let line = |i: usize, text: &str| format!("/sounds/p{i}.wav\t{text}\n");
    let (mut refs, mut same, mut worse, mut once) =
        (String::new(), String::new(), String::new(), String::new());
    for i in 0..40 {
        refs.push_str(&format!("p{i}.wav\tmarque uno para hablar con un agente\n"));
        same.push_str(&line(i, "Marque 1 para hablar con un agente."));
        worse.push_str(&line(i, "Marque 1 para hablar con el agente."));
        once.push_str(&line(
            i,
            if i == 7 {
                "marque un para ablar con agentes"
            } else {
                "Marque uno para hablar con un agente"
            },
        ));
    }
    for (name, text) in [
        ("refs", &refs),
        ("same", &same),
        ("worse", &worse),
        ("once", &once),
    ] {
        std::fs::write(d.join(name), text).unwrap();
    }
    let path = |n: &str| d.join(n).display().to_string();
    let (code, out, err) = run_bin(
        None,
        &[
            "wer",
            "--reference",
            &path("refs"),
            &path("same"),
            &path("worse"),
            &path("once"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].ends_with("same: WER 0.0% (40 files, 280 words)"),
        "{out}"
    );
    assert!(lines[1].contains("worse: WER 14.3%"), "{out}");
    assert!(
        lines[2].contains("+14.3 WER points") && lines[2].ends_with(": worse"),
        "{out}"
    );
    assert!(lines[3].contains("once: WER 1.4%"), "{out}");
    assert!(lines[4].ends_with("not told apart from noise"), "{out}");
}
