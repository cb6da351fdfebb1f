//! stt with the real Whisper base model: Spanish recordings in every
//! encoding, transcripts to the relay and back on the socket, bad input,
//! silence and noise, relay outages.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Service, event_url, model_dir, next_final, next_json, sound, start_stt, text};

/// Audio of a WAV file as 8 kHz mono samples.
fn samples(name: &str) -> Vec<i16> {
    let bytes = std::fs::read(sound(name)).unwrap();
    // RIFF header of Debian's prompts: 44 bytes, 8 kHz, 16-bit mono.
    assert_eq!(&bytes[8..12], b"WAVE");
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    assert_eq!(rate, 8000);
    let data = bytes.windows(4).position(|w| w == b"data").unwrap() + 8;
    bytes[data..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; ms * 8]
}

/// A relay and an stt posting to it, with settings for quick tests.
fn start_pair(extra: &[(&str, &str)]) -> (Service, Service) {
    let relay = Service::start(&[]);
    let stt = start_stt(&event_url(&relay), extra);
    (relay, stt)
}

type Ws = crate::util::Ws;

async fn open(stt: &Service, query: &str) -> Ws {
    let url = format!("ws://{}/ws?{query}", stt.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("stt websocket")
        .0
}

/// Sends audio in frames of `frame_bytes`, then `{"type":"end"}`; returns
/// every event stt echoed until it closed the socket. `pace` waits between
/// frames (real time); without it the audio goes as fast as it can, which
/// the VAD does not mind (it counts samples) but which leaves no time for
/// partial transcripts.
async fn stream_paced(
    ws: &mut Ws,
    audio: &[u8],
    frame_bytes: usize,
    pace: Option<Duration>,
) -> Vec<Value> {
    let start = tokio::time::Instant::now();
    for (i, chunk) in audio.chunks(frame_bytes).enumerate() {
        if let Some(p) = pace {
            tokio::time::sleep_until(start + p * i as u32).await;
        }
        ws.send(Message::binary(chunk.to_vec())).await.unwrap();
    }
    ws.send(Message::text(r#"{"type":"end"}"#)).await.unwrap();
    let mut events = Vec::new();
    while let Some(ev) = next_json(ws, Duration::from_secs(120)).await {
        events.push(ev);
    }
    events
}

async fn stream(ws: &mut Ws, audio: &[u8], frame_bytes: usize) -> Vec<Value> {
    stream_paced(ws, audio, frame_bytes, None).await
}

/// The finals as first sent (a revised final, `revised: true`, is a
/// second one of its utterance: see `revised`).
fn finals(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["final"] == true && e["revised"] != true)
        .collect()
}

/// The revised finals.
fn revised(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["revised"] == true).collect()
}

fn text_of(events: &[Value]) -> String {
    finals(events)
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn s16le(x: &[i16]) -> Vec<u8> {
    x.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn transcribes_spanish_in_every_encoding_and_publishes_to_the_relay() {
    let (relay, stt) = start_pair(&[]);
    let mut audio = silence(500);
    audio.extend(samples("vm-intro"));
    audio.extend(silence(1500));
    audio.extend(samples("conf-enteringno"));
    audio.extend(silence(1000));

    let mut sub = relay.ws("callId=enc-s16le").await;
    // s16le at real time (20 ms frames), the others as fast as possible.
    let encodings: [(&str, Vec<u8>, usize); 4] = [
        ("s16le", s16le(&audio), 320),
        (
            "s16be",
            audio.iter().flat_map(|s| s.to_be_bytes()).collect(),
            333, // odd-length frames: samples split across frames
        ),
        (
            "pcmu",
            audio
                .iter()
                .map(|s| call_coach::audio::g711::linear_to_ulaw(*s))
                .collect(),
            160,
        ),
        (
            "pcma",
            audio
                .iter()
                .map(|s| call_coach::audio::g711::linear_to_alaw(*s))
                .collect(),
            160,
        ),
    ];
    for (encoding, bytes, frame) in encodings {
        let mut ws = open(
            &stt,
            &format!("callId=enc-{encoding}&speaker=customer&sampleRate=8000&encoding={encoding}"),
        )
        .await;
        let pace = (encoding == "s16le").then_some(Duration::from_millis(20));
        let events = stream_paced(&mut ws, &bytes, frame, pace).await;
        let text = text_of(&events);
        for word in ["mensaje", "tono", "conferencia"] {
            assert!(text.contains(word), "{encoding}: {word:?} not in {text:?}");
        }
        let f = finals(&events);
        assert_eq!(f.len(), 2, "{encoding}: {events:?}");
        // Each utterance is announced (`speech`) before its words.
        for fin in &f {
            let announced = events
                .iter()
                .position(|e| e["type"] == "speech" && e["utteranceId"] == fin["utteranceId"]);
            let at = events.iter().position(|e| e == *fin);
            assert!(
                announced.is_some() && announced < at,
                "{encoding}: {events:?}"
            );
        }
        for e in events.iter().filter(|e| e["type"] != "speech") {
            assert_eq!(e["type"], "transcript");
            assert_eq!(e["callId"], format!("enc-{encoding}"));
            assert_eq!(e["speaker"], "customer");
        }
        // Timestamps: the first utterance starts near 0.5 s less the
        // pre-roll (0.3 s), the second after the 1.5 s pause that follows
        // the first prompt (7.3 s), pre-roll included.
        let (s0, e0) = (
            f[0]["startMs"].as_u64().unwrap(),
            f[0]["endMs"].as_u64().unwrap(),
        );
        let s1 = f[1]["startMs"].as_u64().unwrap();
        assert!(s0 <= 700, "{encoding}: start {s0}");
        assert!((7_300..=8_200).contains(&e0), "{encoding}: end {e0}");
        assert!(
            (8_900..=9_600).contains(&s1),
            "{encoding}: second start {s1}"
        );
        assert_ne!(f[0]["utteranceId"], f[1]["utteranceId"]);
    }

    // The same transcripts reached the relay, partials before their final.
    let mut got = Vec::new();
    while got.iter().filter(|e: &&Value| e["final"] == true).count() < 2 {
        got.push(
            next_json(&mut sub, Duration::from_secs(30))
                .await
                .expect("relay event"),
        );
    }
    let first_final = got.iter().find(|e| e["final"] == true).unwrap();
    let id = first_final["utteranceId"].clone();
    for partial in got.iter().filter(|e| e["final"] == false) {
        if partial["utteranceId"] == id {
            assert!(partial["seq"].as_i64() < first_final["seq"].as_i64());
        }
    }
    assert!(
        got.iter().any(|e| e["final"] == false),
        "no partials for a 7 s utterance"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silence_noise_tones_and_dtmf_produce_no_transcript() {
    let (relay, stt) = start_pair(&[]);
    let mut x: u32 = 7;
    let mut noise = || {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((x >> 16) as i16 as i32 / 8) as i16
    };
    let cases: Vec<(&str, Vec<i16>)> = vec![
        ("silence", silence(30_000)),
        ("noise", (0..30 * 8000).map(|_| noise()).collect()),
        (
            "hold-tone",
            (0..20 * 8000)
                .map(|i| {
                    ((i as f32 * 2.0 * std::f32::consts::PI * 425.0 / 8000.0).sin() * 8000.0) as i16
                })
                .collect(),
        ),
        ("dtmf", dtmf("5551234#")),
        ("music", music(20)),
    ];
    for (name, audio) in cases {
        let call = format!("quiet-{name}");
        let mut ws = open(
            &stt,
            &format!("callId={call}&speaker=agent&sampleRate=8000"),
        )
        .await;
        let events = stream(&mut ws, &s16le(&audio), 640).await;
        assert!(events.is_empty(), "{name}: {events:?}");
        let mut sub = relay.ws(&format!("callId={call}")).await;
        let heard = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
        assert!(heard.is_err(), "{name}: the relay got {heard:?}");
    }
}

/// Hold music: a melody of plucked notes (four harmonics, decaying) over a
/// bass line, 120 beats a minute.
fn music(seconds: usize) -> Vec<i16> {
    let melody = [262.0, 330.0, 392.0, 523.0, 494.0, 392.0, 440.0, 349.0];
    let bass = [131.0, 131.0, 175.0, 196.0];
    let note = 4000; // samples: half a second at 8 kHz
    (0..seconds * 8000)
        .map(|i| {
            let t = (i % note) as f32 / 8000.0;
            let f = melody[(i / note) % melody.len()];
            let b = bass[(i / (note * 2)) % bass.len()];
            let env = (-t * 4.0).exp();
            let tone: f32 = (1..=4)
                .map(|h| (2.0 * std::f32::consts::PI * f * h as f32 * t).sin() / h as f32)
                .sum();
            let low = (2.0 * std::f32::consts::PI * b * t).sin() * 0.5;
            ((tone * env + low) * 4000.0) as i16
        })
        .collect()
}

/// DTMF digits, 100 ms on and 100 ms off each.
fn dtmf(digits: &str) -> Vec<i16> {
    let freqs = |d: char| match d {
        '1' => (697.0, 1209.0),
        '2' => (697.0, 1336.0),
        '3' => (697.0, 1477.0),
        '4' => (770.0, 1209.0),
        '5' => (770.0, 1336.0),
        '6' => (770.0, 1477.0),
        '7' => (852.0, 1209.0),
        '8' => (852.0, 1336.0),
        '9' => (852.0, 1477.0),
        '0' => (941.0, 1336.0),
        '*' => (941.0, 1209.0),
        _ => (941.0, 1477.0),
    };
    let mut out = silence(500);
    for d in digits.chars() {
        let (a, b) = freqs(d);
        out.extend((0..800).map(|i| {
            let t = i as f32 / 8000.0;
            (((2.0 * std::f32::consts::PI * a * t).sin()
                + (2.0 * std::f32::consts::PI * b * t).sin())
                * 6000.0) as i16
        }));
        out.extend(silence(100));
    }
    out.extend(silence(1000));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_a_reason() {
    let (_relay, stt) = start_pair(&[]);
    let cases = [
        ("speaker=agent", "callId is required"),
        ("callId=bad%20id", "callId must match"),
        ("callId=a&speaker=boss", "speaker must be"),
        ("callId=a&sampleRate=44100", "sampleRate must be"),
        ("callId=a&encoding=opus", "encoding must be"),
    ];
    for (query, needle) in cases {
        let url = format!("ws://{}/ws?{query}", stt.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{query}");
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains(needle), "{query}: {body}");
            }
            other => panic!(
                "{query}: expected 400, got {:?}",
                other.map(|_| "a websocket")
            ),
        }
    }
    let (status, body) = stt.request("GET", "/ws?callId=a", &[], "").await;
    assert_eq!(status, 426, "{body}");
    let (status, metrics) = stt.request("GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("stt_streams_rejected_total 6"),
        "{metrics}"
    );
    for name in [
        "stt_queue_finals",
        "stt_queue_partials",
        "stt_partials_skipped_total",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_vanishes_mid_utterance_is_finalised() {
    let (relay, stt) = start_pair(&[]);
    let mut sub = relay.ws("callId=vanish").await;
    let mut ws = open(&stt, "callId=vanish&speaker=agent&sampleRate=8000").await;
    let mut audio = silence(300);
    // Cut the prompt in the middle of speech, then drop the connection.
    let prompt = samples("vm-intro");
    audio.extend_from_slice(&prompt[..prompt.len() * 2 / 3]);
    for chunk in s16le(&audio).chunks(640) {
        ws.send(Message::binary(chunk.to_vec())).await.unwrap();
    }
    drop(ws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout_at(deadline, next_json(&mut sub, Duration::from_secs(60)))
            .await
            .expect("a final before the deadline")
            .expect("relay event");
        if ev["final"] == true {
            let text = ev["text"].as_str().unwrap().to_lowercase();
            assert!(text.contains("mensaje"), "{text}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_clients_and_oversized_frames_are_closed() {
    let (_relay, stt) = start_pair(&[
        ("CALL_COACH_STT__IDLE_TIMEOUT_SECS", "1"),
        ("CALL_COACH_STT__MAX_FRAME_BYTES", "4096"),
    ]);
    let mut idle = open(&stt, "callId=idle&speaker=agent").await;
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.next())
        .await
        .unwrap();
    assert!(
        matches!(&closed, Some(Ok(Message::Close(Some(f)))) if f.reason.contains("no audio")),
        "{closed:?}"
    );

    let mut big = open(&stt, "callId=big&speaker=agent").await;
    let _ = big.send(Message::binary(vec![0u8; 10_000])).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), big.next())
        .await
        .unwrap();
    assert!(
        matches!(&closed, Some(Ok(Message::Close(_))) | None | Some(Err(_))),
        "{closed:?}"
    );
    // stt is still fine.
    assert_eq!(stt.request("GET", "/healthz", &[], "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_outage_loses_nothing() {
    // Pick a port for a relay that is not running yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stt = start_stt(&format!("http://127.0.0.1:{port}/event"), &[]);
    let mut ws = open(&stt, "callId=outage&speaker=agent&sampleRate=8000").await;
    let mut audio = silence(300);
    audio.extend(samples("conf-enteringno"));
    audio.extend(silence(1000));
    let echoed = stream(&mut ws, &s16le(&audio), 640).await;
    assert_eq!(finals(&echoed).len(), 1, "{echoed:?}");
    // Now the relay comes up; stt's retries deliver what it held.
    let relay = Service::start(&[("RELAY_LISTEN", &format!("127.0.0.1:{port}"))]);
    let mut sub = relay.ws("callId=outage").await;
    let ev = next_final(&mut sub, Duration::from_secs(30)).await;
    assert!(text(&ev).contains("conferencia"), "{ev}");
}

/// Word error rate over the `vm-` and `conf-` recordings of five words or
/// more against their reference texts, through `call-coach transcribe` (the
/// stt path: VAD segments, filters, and the revised finals' decode). Single-word
/// prompts are left out: out of context, Whisper base mishears most of
/// them ("Mensa he." for "mensaje"), which says little about the pipeline.
#[test]
fn spanish_word_error_rate_is_within_bounds() {
    let refs = crate::util::sound_references();
    let mut files: Vec<String> = std::fs::read_dir(crate::util::SOUNDS_ES)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".wav")?.to_owned();
            let long = refs.get(&stem)?.split_whitespace().count() >= 5;
            ((stem.starts_with("vm-") || stem.starts_with("conf-")) && long).then_some(stem)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 100,
        "only {} recordings with references",
        files.len()
    );
    let models = model_dir();
    let paths: Vec<String> = files
        .iter()
        .map(|f| sound(f).to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["transcribe"];
    args.extend(paths.iter().map(String::as_str));
    let (code, out, err) = crate::util::run_bin(
        None,
        &args,
        &[
            ("MODEL_DIR", models.to_str().unwrap()),
            ("MODEL_SIZE", "base"),
            ("RUST_LOG", "warn"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mut errors = 0;
    let mut words = 0;
    let mut worst = Vec::new();
    for line in out.lines() {
        let (path, hyp) = line.split_once('\t').unwrap_or((line, ""));
        let stem = std::path::Path::new(path)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let (e, n) = call_coach::text::word_errors(&refs[&stem], hyp);
        errors += e;
        words += n;
        worst.push((e as f64 / n.max(1) as f64, stem, hyp.to_owned()));
    }
    assert_eq!(worst.len(), files.len(), "not every file was transcribed");
    let wer = errors as f64 / words as f64;
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!(
        "WER {:.1}% over {} recordings, {words} words",
        wer * 100.0,
        files.len()
    );
    for (w, stem, hyp) in worst.iter().take(5) {
        eprintln!("  {:.0}% {stem}: {hyp}", w * 100.0);
    }
    // Measured 18.9% with base q8_0 decoded as revised finals are (stt's
    // own beam search, beam 5, a 768-frame window; beam 8 18.6%;
    // whisper.cpp's sampled beam 8 made 19.7%), context from the previous utterance; 20.9% as
    // first finals are (greedy, the fitted window; faster-whisper greedy on
    // the whole files: 19.7%; the references are the prompts' scripts, not
    // verbatim: "marque 1" is spoken "marque el número uno"). A broken
    // resampler, VAD, context, converter, revision setting or beam search
    // lands above 20%; so would cutting the start of utterances.
    assert!(wer < 0.20, "WER {:.1}%", wer * 100.0);
}

/// `bench-stt --once` plays each clip once, scores it against the
/// reference its path ends with (a prompt in a subfolder too), writes the
/// hypotheses as `call-coach wer` reads them, and says which clips have no
/// reference instead of leaving them out of WER silently.
#[test]
fn bench_stt_scores_each_clip_against_the_reference_its_path_ends_with() {
    let (_relay, stt) = start_pair(&[]);
    let dir = tempfile::tempdir().unwrap();
    let refs = dir.path().join("refs.tsv");
    std::fs::write(&refs, "dictate/forhelp.wav\tMarque 0 para obtener ayuda.\n").unwrap();
    let hyps = dir.path().join("hyps.tsv");
    let (with_ref, without) = (sound("dictate/forhelp"), sound("vm-intro"));
    let url = format!("ws://{}", stt.addr);
    let (code, out, err) = crate::util::run_bin(
        None,
        &[
            "bench-stt",
            "--url",
            &url,
            "--calls",
            "1",
            "--once",
            "--speech-ratio",
            "0.8",
            "--reference",
            refs.to_str().unwrap(),
            "--hypotheses",
            hyps.to_str().unwrap(),
            "--clips",
            with_ref.to_str().unwrap(),
            without.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "note: 1 of 2 clips have no reference text and are left out of WER (first: {})",
            without.display()
        )),
        "{out}"
    );
    // The run's line ends with its WER, then the capacity ("4 measured",
    // "100 fixed, measured 3"): a WER was scored.
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("no row for 1 call:\n{out}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    let capacity = fields
        .iter()
        .position(|f| *f == "measured" || *f == "fixed,")
        .unwrap_or_else(|| panic!("no capacity in {row}"));
    let wer = fields[capacity - 2];
    assert!(
        wer.ends_with('%') && wer.trim_end_matches('%').parse::<f64>().is_ok(),
        "no WER in {row}"
    );
    let written = std::fs::read_to_string(&hyps).unwrap();
    let lines: Vec<(&str, &str)> = written.lines().filter_map(|l| l.split_once('\t')).collect();
    assert_eq!(lines.len(), 2, "{written}");
    for clip in [&with_ref, &without] {
        let text = lines
            .iter()
            .find(|(f, _)| *f == clip.to_str().unwrap())
            .map(|(_, t)| t.to_lowercase())
            .unwrap_or_else(|| panic!("{} not in:\n{written}", clip.display()));
        assert!(!text.trim().is_empty(), "{written}");
    }
    assert!(written.to_lowercase().contains("ayuda"), "{written}");
}

/// `call-coach transcribe ARGS` with the test model (base) and `env`:
/// exit code, stdout, stderr.
fn transcribe(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = model_dir();
    let mut all = vec![("MODEL_DIR", dir.to_str().unwrap()), ("MODEL_SIZE", "base")];
    all.extend_from_slice(env);
    let argv: Vec<&str> = std::iter::once("transcribe")
        .chain(args.iter().copied())
        .collect();
    crate::util::run_bin(None, &argv, &all)
}

/// The text `transcribe` printed for `file` (its lines are `FILE<TAB>text`).
fn file_text<'a>(out: &'a str, file: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(file)?.strip_prefix('\t'))
        .unwrap_or_else(|| panic!("no text for {file} in {out}"))
}

/// whisper.cpp's beam search draws its candidates at random (and one of
/// its generators was seeded only when a worker's state was made), so a
/// revision (beam 8) missed likely texts and depended on what the worker
/// had decoded before: after `vm-advopts`, "La doración de este mensaje,
/// este." where `vm-duration` alone gave "La duración de este mensaje
/// este.", and `vm-msgsaved` came out "sumen suje asido guardado." whatever
/// the order. stt's own beam search (`stt::beam`, beam 5) keeps the likeliest
/// continuations at each step: each file reads the same alone and in the
/// batch, and those two read right.
#[test]
fn a_revision_is_the_likeliest_text_whatever_the_worker_decoded_before() {
    let files: Vec<String> = [
        "vm-advopts",
        "vm-duration",
        "vm-star-cancel",
        "conf-invalidpin",
        "vm-msgsaved",
    ]
    .iter()
    .map(|f| sound(f).to_string_lossy().into_owned())
    .collect();
    let text = |out: &str, file: &str| file_text(out, file).to_owned();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, batch, err) = transcribe(&args, &[]);
    assert_eq!(code, 0, "{err}");
    for file in &files[1..] {
        let (code, alone, err) = transcribe(&[file], &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            text(&batch, file),
            text(&alone, file),
            "{file}: in the batch and alone"
        );
    }
    // (Lower case, without accents or punctuation.)
    let plain = |name: &str| {
        let file = files.iter().find(|f| f.contains(name)).expect("listed");
        call_coach::text::normalise(&text(&batch, file))
    };
    assert_eq!(plain("vm-msgsaved"), "su mensaje ha sido guardado");
    assert_eq!(
        plain("conf-invalidpin"),
        "clave de entrada invalida para esta conferencia"
    );
}

/// Seen on the spoken-number recordings (`scripts/make-number-recordings.sh`):
/// espeak-ng's Latin American voice saying an order number makes the
/// revision's beam search loop ("El penímo, el fiel fiel fiel …", 14
/// times). With `final_fallback` on, a searched text that loops (or is
/// weak) is sampled again at a higher temperature, as whisper.cpp's own
/// beam search did before stt searched itself (over those 31 recordings,
/// `transcribe`: digits right 47.9% -> 57.5%). The script's recordings
/// are the same on every run (sox's dither made them differ, and this
/// decode with them).
#[test]
fn with_final_fallback_a_searched_decode_that_loops_is_sampled_again() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/make-number-recordings.sh"
    );
    let made = std::process::Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .output()
        .expect("bash");
    let why = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "{script} (espeak-ng, sox): {why}");
    let file = dir.path().join("pedido1-es-419.wav");
    let file = file.to_str().unwrap();
    // The longest run of one word said again and again.
    let longest_run = |out: &str| {
        let text = file_text(out, file);
        let plain = call_coach::text::normalise(text);
        let words: Vec<&str> = plain.split_whitespace().collect();
        let run = words.chunk_by(|a, b| a == b).map(<[_]>::len).max();
        (run.unwrap_or(0), text.to_owned())
    };
    let (code, off, err) = transcribe(&[file], &[]);
    assert_eq!(code, 0, "{err}");
    let (run, text) = longest_run(&off);
    assert!(
        run >= 5,
        "the case seen: without the fallback it loops: {text:?}"
    );
    let (code, on, err) = transcribe(&[file], &[("CALL_COACH_STT__FINAL_FALLBACK", "true")]);
    assert_eq!(code, 0, "{err}");
    let (run, text) = longest_run(&on);
    assert!(run < 4, "with the fallback it does not: {text:?}");
}

/// Seen live, on a stream that played `queue-thereare` and then
/// `screen-callee-options`: with the first final ("¿Pusted es al cliente
/// número?") as Whisper's context, the second prompt's first utterance
/// (12.6 s of options read out) came back as its first sentence only,
/// "Usted tiene las siguientes opciones.". A decode the context misled like
/// this is done again without it, and the whole text kept. The same text
/// as the domain prompt (`stt.prompt`) misled it the same way, and the
/// decode done again kept it: it is done again without both. (The
/// benchmark's held-out prompt is used here because it is the case that
/// was seen; the suite's prompts did not show it.)
#[test]
fn a_decode_the_context_cut_short_is_done_again_without_it() {
    let file = sound("screen-callee-options");
    let said = "¿Pusted es al cliente número?";
    let file = file.to_str().unwrap();
    let log = [
        ("CALL_COACH_STT__THREADS_PER_WORKER", "2"),
        // The first utterance whole, as it was seen: a long turn's short
        // pause would end it at 8.5 s, "…comunicarse y mediatamente."
        // (README "Long turns").
        ("CALL_COACH_STT__LONG_UTTERANCE_MS", "0"),
        ("RUST_LOG", "warn,call_coach::stt::engine=debug"),
        ("NO_COLOR", "1"),
    ];
    let as_prompt = [&log[..], &[("CALL_COACH_STT__PROMPT", said)]].concat();
    for (args, env) in [
        (&["--context", said, file][..], &log[..]),
        (&[file][..], &as_prompt[..]),
    ] {
        let (code, out, err) = transcribe(args, env);
        assert_eq!(code, 0, "{err}");
        // The first utterance's words past its first sentence are there.
        let text = out.to_lowercase();
        assert!(
            text.contains("llamada") && text.contains("tortura"),
            "{args:?} {env:?}: {out}\n{err}"
        );
        // On the development machine the decode with the context is cut
        // short (another CPU's arithmetic may not be misled at all; the
        // text must then be whole all the same).
        if err.contains("CutShort") {
            assert!(
                err.contains("decoded again without its prompt") && err.contains("kept=\"again\""),
                "{err}"
            );
        }
        eprintln!("{out}{err}");
    }
}

/// A domain prompt (with the hotwords) longer than Whisper reads beside
/// the previous final (160 of the 224 tokens of its prompt) would lose its
/// first words without a word said: stt refuses to start, and
/// `transcribe` to run, saying so.
#[test]
fn a_domain_prompt_too_long_is_refused() {
    let long =
        "Gracias por llamar a Movistar, le atiende el servicio de atención al cliente. ".repeat(12);
    // (A list in the environment: "a, b".)
    let hotwords = (0..120)
        .map(|i| format!("Producto{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let file = sound("vm-intro");
    let dir = model_dir();
    for setting in [
        ("CALL_COACH_STT__PROMPT", long.as_str()),
        ("CALL_COACH_STT__HOTWORDS", hotwords.as_str()),
    ] {
        let (code, out, err) = transcribe(&[file.to_str().unwrap()], &[setting]);
        assert_ne!(code, 0, "{out}");
        assert!(
            err.contains("Whisper tokens") && err.contains("shorten them"),
            "{err}"
        );
        // (Bounded: a regression would leave stt running.)
        let (code, _, err) = crate::util::run_bin(
            Some(std::path::Path::new("timeout")),
            &["120", crate::util::BIN, "stt"],
            &[
                ("MODEL_DIR", dir.to_str().unwrap()),
                ("MODEL_SIZE", "base"),
                ("STT_LISTEN", "127.0.0.1:0"),
                ("RELAY_URL", "http://127.0.0.1:9/event"),
                setting,
            ],
        );
        assert_eq!(code, 64, "{err}");
        assert!(err.contains("stt.prompt with stt.hotwords is"), "{err}");
    }
}

/// A final spelled out letter by letter (a caller spelling a name) is no
/// context for what follows: with "M-E-S-D-N-E" as context, Whisper
/// spelled the next prompt too ("Mark N-E-S-D-S-D-R-M-R-A-O-T-R-N-R-O" for
/// vm-calldiffnum, and live, on the held-out prompts, "E-S-E-D-E-V-A-D-O-S
/// por monos"). Spelled runs are left out of the context.
#[test]
fn spelled_letters_are_not_given_as_context() {
    let file = sound("vm-calldiffnum");
    let (code, out, err) = transcribe(
        &["--context", "M-E-S-D-N-E", file.to_str().unwrap()],
        &[("RUST_LOG", "warn")],
    );
    assert_eq!(code, 0, "{err}");
    let text = out.split('\t').nth(1).unwrap_or_default();
    let spelled = text
        .split_whitespace()
        .any(|w| w.split('-').filter(|p| p.chars().count() == 1).count() >= 3);
    assert!(!spelled, "{out}");
    assert!(text.to_lowercase().contains("número"), "{out}");
}

/// A process spinning on one core, killed when dropped.
struct BusyNeighbour(std::process::Child);

impl Drop for BusyNeighbour {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Beside a busy neighbour (one core taken), a call's two legs played at
/// real time are still transcribed: every prompt's words come, each final
/// after its `speech` event, with `lagMs` that covers the decode and stays
/// bounded; `/capacity` reports what it measured.
#[tokio::test(flavor = "multi_thread")]
async fn beside_a_busy_neighbour_finals_keep_coming_with_their_lag() {
    let _busy = BusyNeighbour(
        std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap(),
    );
    // The measured capacity, as in production.
    let (_relay, stt) = start_pair(&[("CALL_COACH_STT__CAPACITY", "0")]);
    let (_, before) = stt.request("GET", "/capacity", &[], "").await;
    let before: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(before["source"], "startup", "{before}");
    assert!(before["capacity"].as_u64().unwrap() >= 2, "{before}");
    let legs = [
        ("agent", ["vm-intro", "conf-enteringno"]),
        ("customer", ["conf-enteringno", "vm-intro"]),
    ];
    let mut tasks = Vec::new();
    for (speaker, prompts) in legs {
        let mut ws = open(
            &stt,
            &format!("callId=busy&speaker={speaker}&sampleRate=8000"),
        )
        .await;
        let mut audio = silence(500);
        for p in prompts {
            audio.extend(samples(p));
            audio.extend(silence(1500));
        }
        tasks.push(tokio::spawn(async move {
            stream_paced(
                &mut ws,
                &s16le(&audio),
                320,
                Some(Duration::from_millis(20)),
            )
            .await
        }));
    }
    for task in tasks {
        let events = task.await.unwrap();
        let all = text_of(&events).to_lowercase();
        assert!(
            all.contains("mensaje") && all.contains("conferencia"),
            "{events:#?}"
        );
        for fin in finals(&events).iter().filter(|f| !text(f).is_empty()) {
            let id = &fin["utteranceId"];
            let started = events
                .iter()
                .position(|e| e["type"] == "speech" && &e["utteranceId"] == id);
            let ended = events.iter().position(|e| e == *fin);
            assert!(
                started < ended && started.is_some(),
                "no speech event before {fin}"
            );
            let (lag, latency) = (
                fin["lagMs"].as_u64().unwrap(),
                fin["latencyMs"].as_u64().unwrap(),
            );
            // The lag holds the end-of-speech wait and the decode; bounded
            // generously (a loaded test machine), the figures are in the
            // benchmark.
            assert!(lag >= latency && lag < 30_000, "{fin}");
            // Each prompt ends in 1.5 s of silence: the end-of-speech
            // wait (or its shorter form after a sentence) ended it.
            assert!(
                matches!(fin["endedBy"].as_str(), Some("pause" | "sentence")),
                "{fin}"
            );
        }
        assert!(
            events
                .iter()
                .filter(|e| e["type"] == "transcript" && e["final"] == false)
                .all(|e| e.get("endedBy").is_none()),
            "a partial says what ended it: {events:#?}"
        );
    }
    let (_, after) = stt.request("GET", "/capacity", &[], "").await;
    let after: Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["source"], "measured", "{after}");
    assert!(after["loadPerStream"].as_f64().unwrap() > 0.0, "{after}");
    let (_, metrics) = stt.request("GET", "/metrics", &[], "").await;
    for name in [
        "stt_capacity_streams ",
        "stt_lag_seconds ",
        "stt_load_per_stream ",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(metrics.contains("stt_finals_given_up_total 0"), "{metrics}");
}

/// Far behind, stt bounds the lag: finals that waited past `behind_ms` are
/// decoded the cheap way, and those past `give_up_secs` are not decoded but
/// sent empty with `gap: "overload"`: every utterance announced still gets
/// its final, none is lost silently.
#[tokio::test(flavor = "multi_thread")]
async fn a_final_that_waits_too_long_is_given_up_and_says_so() {
    let (_relay, stt) = start_pair(&[
        // Slow on purpose: one single-threaded worker, the full window.
        ("CALL_COACH_STT__WORKERS", "1"),
        ("CALL_COACH_STT__THREADS_PER_WORKER", "1"),
        ("CALL_COACH_STT__MIN_AUDIO_CTX", "1500"),
        ("CALL_COACH_STT__BEHIND_MS", "200"),
        ("CALL_COACH_STT__GIVE_UP_SECS", "1"),
    ]);
    let mut ws = open(&stt, "callId=behind&speaker=agent&sampleRate=8000").await;
    let mut audio = silence(300);
    for p in [
        "vm-intro",
        "conf-enteringno",
        "vm-intro",
        "conf-enteringno",
        "vm-intro",
        "conf-enteringno",
    ] {
        audio.extend(samples(p));
        audio.extend(silence(1000));
    }
    // As fast as it goes: six finals queue at once.
    let events = stream(&mut ws, &s16le(&audio), 640).await;
    let announced: Vec<&Value> = events.iter().filter(|e| e["type"] == "speech").collect();
    let finals = finals(&events);
    assert!(announced.len() >= 6, "{events:#?}");
    for s in &announced {
        assert!(
            finals.iter().any(|f| f["utteranceId"] == s["utteranceId"]),
            "no final for {s}: {events:#?}"
        );
    }
    let gaps: Vec<&&Value> = finals.iter().filter(|f| f["gap"] == "overload").collect();
    assert!(!gaps.is_empty(), "nothing given up: {events:#?}");
    for g in &gaps {
        assert_eq!(g["text"], "", "{g}");
        assert!(g["lagMs"].as_u64().unwrap() >= 1000, "{g}");
    }
    // (A final may have waited behind a partial's slow decode: even the
    // first can be given up. Each one says so.)
    let (_, metrics) = stt.request("GET", "/metrics", &[], "").await;
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        count("stt_finals_given_up_total"),
        gaps.len() as u64,
        "{metrics}"
    );
}

/// A value of stt's `/metrics`.
async fn metric(stt: &Service, name: &str) -> f64 {
    let (_, body) = stt.request("GET", "/metrics", &[], "").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// A call's audio and speech show in `/metrics` while it lasts, not only
/// once it hangs up: a dashboard of a long call sees it as it goes.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_streams_audio_and_speech_while_it_lasts() {
    let (_relay, stt) = start_pair(&[]);
    let bytes = script(500, &[("vm-intro", 1_500)]);
    let sent_s = bytes.len() as f64 / 2.0 / 8_000.0;
    let mut ws = open(&stt, "callId=counted&speaker=agent&sampleRate=8000").await;
    for chunk in bytes.chunks(320) {
        ws.send(Message::binary(chunk.to_vec())).await.unwrap();
    }
    // Still open: the counters have what it sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut heard, mut speech) = (0.0, 0.0);
    while std::time::Instant::now() < deadline {
        heard = metric(&stt, "stt_audio_seconds_total").await;
        speech = metric(&stt, "stt_speech_seconds_total").await;
        if heard >= sent_s - 0.001 && speech > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        (heard - sent_s).abs() < 0.001,
        "{heard} s of {sent_s} counted while open"
    );
    assert!(
        speech > 3.0 && speech < sent_s,
        "{speech} s of speech while open"
    );
    assert_eq!(
        metric(&stt, "stt_streams").await,
        1.0,
        "the stream is still open"
    );
    // Hung up: nothing counted twice.
    let events = stream(&mut ws, &[], 320).await;
    assert!(!finals(&events).is_empty(), "{events:?}");
    assert!((metric(&stt, "stt_audio_seconds_total").await - sent_s).abs() < 0.001);
    assert_eq!(metric(&stt, "stt_speech_seconds_total").await, speech);
}

/// Busy processes, killed when dropped.
struct Neighbours(Vec<std::process::Child>);

impl Drop for Neighbours {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A worker of several threads (as the defaults give on more than 16
/// cores, or `threads_per_worker` set by hand) beside processes holding
/// every core decodes on one thread: whisper.cpp's threads spin-wait for
/// each other, and one descheduled would stall the rest (20 times slower
/// measured on 2 cores). The neighbours run at the lowest priority, so
/// the other tests hardly notice them; stt sees their cores taken all the
/// same.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_of_several_threads_decodes_on_one_beside_a_busy_neighbour() {
    let (_relay, stt) = start_pair(&[
        ("CALL_COACH_STT__WORKERS", "1"),
        ("CALL_COACH_STT__THREADS_PER_WORKER", "2"),
    ]);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _busy = Neighbours(
        (0..cores)
            .map(|_| {
                std::process::Command::new("nice")
                    .args(["-n", "19", "yes"])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("nice yes")
            })
            .collect(),
    );
    // The cores are sampled four times a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bytes = script(300, &[("vm-intro", 1_000)]);
    let mut ws = open(&stt, "callId=neighbour&speaker=agent&sampleRate=8000").await;
    let events = stream(&mut ws, &bytes, 640).await;
    let text = finals(&events)
        .iter()
        .map(|f| f["text"].as_str().unwrap_or_default().to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    let heard = ["mensaje", "tono", "terminar", "tecla"]
        .iter()
        .filter(|w| text.contains(*w))
        .count();
    assert!(heard >= 3, "{events:#?}");
    let narrowed = metric(&stt, "stt_decodes_narrowed_total").await;
    let gave_way = metric(&stt, "stt_decodes_gave_way_total").await;
    assert!(
        narrowed + gave_way >= 1.0,
        "no decode kept to one thread: narrowed {narrowed}, gave way {gave_way}"
    );
}

/// A recording script at 8 kHz: `lead_ms` of silence, then each prompt
/// followed by its silence (ms).
fn script(lead_ms: usize, parts: &[(&str, usize)]) -> Vec<u8> {
    let mut audio = silence(lead_ms);
    for (name, after_ms) in parts {
        audio.extend(samples(name));
        audio.extend(silence(*after_ms));
    }
    s16le(&audio)
}

/// `bytes` (8 kHz) played at real time, in 20 ms frames, into a fresh stt
/// with `env` as speaker `agent` of call `call_id`: its events, and the
/// pair (for stt's metrics; the relay kept alive).
async fn played_live(
    env: &[(&str, &str)],
    call_id: &str,
    bytes: &[u8],
) -> (Vec<Value>, (Service, Service)) {
    let pair = start_pair(env);
    let query = format!("callId={call_id}&speaker=agent&sampleRate=8000");
    let mut ws = open(&pair.1, &query).await;
    let events = stream_paced(&mut ws, bytes, 320, Some(Duration::from_millis(20))).await;
    (events, pair)
}

/// A long utterance (conf-adminmenu: 14 s before its first pause-less
/// split) played at real time: past `partial_window_ms` (6 s) its earlier
/// audio is settled in pieces, and the later partials, which decode only
/// what follows, still begin with the utterance's first words (said in the
/// first second, well before any piece's end), as its final does.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_utterances_partials_begin_with_its_pieces_words() {
    let bytes = script(400, &[("conf-adminmenu", 1000)]);
    // One long utterance, not ended at a short pause past 8 s.
    let env = [("CALL_COACH_STT__LONG_UTTERANCE_MS", "0")];
    let (events, (_relay, stt)) = played_live(&env, "pieces", &bytes).await;
    let first = finals(&events)[0];
    assert!(
        first["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("favor"),
        "{first}"
    );
    let partials: Vec<&str> = events
        .iter()
        .filter(|e| e["final"] == false && e["utteranceId"] == first["utteranceId"])
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(metric(&stt, "stt_partial_pieces_total").await >= 1.0);
    // The speech the detector heard (in a 33 s prompt with pauses), and a
    // partial asked for each `partial_every_ms` (700) of it (one more at
    // most per utterance: a split's rest starts with its speech counted):
    // every partial sent was asked for.
    let speech = metric(&stt, "stt_speech_seconds_total").await;
    assert!((10.0..=33.0).contains(&speech), "speech {speech} s");
    let asked = metric(&stt, "stt_partials_asked_total").await;
    let sent = events.iter().filter(|e| e["final"] == false).count() as f64;
    let utterances = finals(&events).len() as f64;
    assert!(
        sent <= asked && asked <= speech / 0.7 + utterances,
        "{sent} partials sent, {asked} asked, {speech} s of speech, {utterances} finals"
    );
    let last = partials.last().expect("partials of a 14 s utterance");
    assert!(
        last.to_lowercase().contains("favor") && last.split_whitespace().count() >= 10,
        "the last partial lacks the pieces' words: {partials:#?}"
    );
}

/// Played at real time, an utterance's final is decoded when its silence
/// begins and sent once the end of speech is confirmed: the finals are
/// those of stt without speculation, word for word, and stt counts them as
/// served speculatively (none when it is off). A pause shorter than the
/// end of speech, mid-utterance, makes a tentative that is dropped, and
/// stopped midway: speech resumes 200 ms into the decode of 7 s of audio.
#[tokio::test(flavor = "multi_thread")]
async fn speculative_finals_are_the_finals_sooner() {
    // 300 ms after the first prompt: past the tentative (100 ms), short of
    // the end (500 ms).
    let bytes = script(
        400,
        &[
            ("vm-intro", 300),
            ("conf-enteringno", 1500),
            ("conf-onlyperson", 1500),
        ],
    );
    let mut texts = Vec::new();
    for on in ["true", "false"] {
        // Narrow decodes only (a different thread count may round
        // differently), and no partials to keep the workers busy: stt
        // speculates only while no final waits. 20 ms frames at real time:
        // speculation needs the silence to pass.
        let (events, (_relay, stt)) = played_live(
            &[
                ("CALL_COACH_STT__SPECULATIVE_FINALS", on),
                // The pause must not end the utterance (the next test,
                // and the long-turn one).
                ("CALL_COACH_STT__END_SILENCE_AFTER_SENTENCE_MS", "0"),
                ("CALL_COACH_STT__LONG_UTTERANCE_MS", "0"),
                ("CALL_COACH_STT__MAX_THREADS_WHEN_IDLE", "0"),
                ("CALL_COACH_STT__WORKERS", "2"),
                ("CALL_COACH_STT__PARTIAL_EVERY_MS", "60000"),
            ],
            "spec",
            &bytes,
        )
        .await;
        let served = metric(&stt, "stt_finals_speculative_total").await;
        let wasted = metric(&stt, "stt_speculative_wasted_total").await;
        let stopped = metric(&stt, "stt_speculative_stopped_total").await;
        if on == "true" {
            assert!(served >= 1.0, "no final served speculatively");
            assert!(stopped >= 1.0, "the mid-utterance tentative ran on");
            assert!(wasted >= stopped, "{wasted} wasted, {stopped} stopped");
        } else {
            assert_eq!((served, wasted, stopped), (0.0, 0.0, 0.0));
        }
        assert!(finals(&events).len() >= 2, "{events:?}");
        texts.push(text_of(&events));
    }
    assert!(texts[0].contains("conferencia"), "{}", texts[0]);
    assert_eq!(texts[0], texts[1]);
}

/// A pause after a finished sentence ends the utterance sooner than one
/// mid-sentence. With `end_silence_ms` longer than the pauses, the
/// sentence "...en la conferencia." still gets its own final (its
/// speculative final ended with a full stop); with the shorter end off,
/// all of it is one final.
///
/// "Entrando a la conferencia número" usually comes without a stop and
/// joins the prompt after its pause, but Whisper sometimes gives it one
/// (a decode on two threads rounds differently from one on one), and then
/// it ends early too, rightly. So the test holds what must be true either
/// way: only a final whose text ends a sentence was ended by the shorter
/// silence, and every other final but the stream's last joined what came
/// after its pause. (That a comma or no mark keeps an utterance open is
/// `session`'s unit test.)
#[tokio::test(flavor = "multi_thread")]
async fn a_finished_sentence_ends_its_utterance_after_a_shorter_silence() {
    // Pauses long enough for a loaded machine's speculative decode to come
    // back (4.6 s of audio: 0.9 s on one idle core, twice that beside a
    // busy neighbour, and CI runs another test's decodes beside it: 4 s
    // of pause was once not enough there); the end of the stream ends the
    // last utterance.
    let bytes = script(
        400,
        &[
            ("conf-onlyperson", 6_000),
            ("conf-enteringno", 6_000),
            ("vm-intro", 1_000),
        ],
    );
    for early in ["300", "0"] {
        let (events, (_relay, stt)) = played_live(
            &[
                ("CALL_COACH_STT__END_SILENCE_MS", "9000"),
                ("CALL_COACH_STT__MAX_UTTERANCE_MS", "30000"),
                ("CALL_COACH_STT__LONG_UTTERANCE_MS", "0"),
                ("CALL_COACH_STT__END_SILENCE_AFTER_SENTENCE_MS", early),
                ("CALL_COACH_STT__PARTIAL_EVERY_MS", "60000"),
            ],
            "early",
            &bytes,
        )
        .await;
        let f = finals(&events);
        let ended = metric(&stt, "stt_finals_early_total").await;
        if early == "300" {
            assert!((2..=3).contains(&f.len()), "{events:?}");
            assert!(text(f[0]).contains("persona"), "{events:?}");
            let after: Vec<String> = f[1..].iter().map(|ev| text(ev)).collect();
            assert!(after.concat().contains("número"), "{events:?}");
            assert!(after.last().unwrap().contains("mensaje"), "{events:?}");
            // The last one is followed by 1 s of silence: it ends with
            // the stream, or sooner after its full stop where its
            // speculative final was back in time (a fast machine).
            let (last, rest) = f.split_last().unwrap();
            let stops = |ev: &Value| {
                let t = text(ev);
                t.trim_end().ends_with(['.', '?', '!']) && !t.ends_with("..")
            };
            for ev in rest {
                assert!(stops(ev), "ended early without a stop: {ev:?}");
                assert_eq!(ev["endedBy"], "sentence", "{ev:?}");
            }
            let last_early = last["endedBy"] == "sentence";
            assert!(last_early || last["endedBy"] == "stream", "{last:?}");
            assert!(!last_early || stops(last), "{last:?}");
            let early = rest.len() + usize::from(last_early);
            assert_eq!(ended, early as f64, "{events:?}");
        } else {
            assert_eq!(f.len(), 1, "{events:?}");
            assert_eq!(ended, 0.0);
        }
    }
}

/// A long turn ends at a short pause once it is long: three prompts with
/// 200 ms between them (shorter than `end_silence_ms`), 14 s in all. With
/// `long_utterance_ms` (8 s) the pause after the second prompt ends the
/// first utterance (`endedBy: "pause"`), so its text comes before the
/// third prompt is said; off, all of it is one final.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_turn_goes_out_at_its_short_pauses() {
    let bytes = script(
        400,
        &[
            ("vm-intro", 200),
            ("conf-enteringno", 200),
            ("conf-onlyperson", 1_000),
        ],
    );
    // Where the third prompt begins in the stream.
    let third_ms =
        (400 + samples("vm-intro").len() / 8 + 200 + samples("conf-enteringno").len() / 8 + 200)
            as u64;
    for long in ["8000", "0"] {
        let (events, (_relay, stt)) = played_live(
            &[
                ("CALL_COACH_STT__LONG_UTTERANCE_MS", long),
                // No split, no early end: only the long-turn rule.
                ("CALL_COACH_STT__MAX_UTTERANCE_MS", "30000"),
                ("CALL_COACH_STT__END_SILENCE_AFTER_SENTENCE_MS", "0"),
            ],
            "long",
            &bytes,
        )
        .await;
        let f = finals(&events);
        let ended = metric(&stt, "stt_finals_long_pause_total").await;
        let all = text_of(&events).to_lowercase();
        assert!(all.contains("mensaje") && all.contains("persona"), "{all}");
        if long == "8000" {
            assert!(f.len() >= 2, "{events:?}");
            assert!(ended >= 1.0, "none ended at a short pause");
            let first = f[0];
            assert_eq!(first["endedBy"], "pause", "{first}");
            let (start, end) = (
                first["startMs"].as_u64().unwrap(),
                first["endMs"].as_u64().unwrap(),
            );
            assert!(end - start >= 8_000, "ended before 8 s: {first}");
            assert!(
                end <= third_ms,
                "the first final holds the third prompt: {first}"
            );
            assert!(text(first).to_lowercase().contains("mensaje"), "{first}");
        } else {
            assert_eq!(f.len(), 1, "{events:?}");
            assert_eq!(ended, 0.0);
        }
    }
}

/// Digits read out one by one (Asterisk's recorded Spanish digits, a human
/// voice, as a caller reads an account number) come out of the live path
/// as one digit string, not words.
#[tokio::test(flavor = "multi_thread")]
async fn a_spoken_digit_string_comes_out_as_digits() {
    let (_relay, stt) = start_pair(&[]);
    let mut ws = open(&stt, "callId=digits&speaker=customer&sampleRate=8000").await;
    let mut audio = silence(500);
    for d in ["6", "1", "2", "0", "8", "7", "3", "4", "5"] {
        audio.extend(samples(&format!("digits/{d}")));
        audio.extend(silence(150));
    }
    audio.extend(silence(1500));
    let events = stream(&mut ws, &s16le(&audio), 640).await;
    let text = text_of(&events);
    assert!(text.contains("612087345"), "{text}");
}

/// `transcribe` takes a user's own recording at any rate, stereo (its first
/// channel): here a prompt made 44.1 kHz stereo, the voice on the left. An
/// unreadable file among others is said and skipped, the others are
/// transcribed, and the command exits 1.
#[test]
fn transcribe_takes_any_rate_and_goes_on_past_a_bad_file() {
    use call_coach::audio::wav::Wav;
    let dir = tempfile::tempdir().unwrap();
    let voice = Wav::read(&sound("vm-intro")).unwrap();
    assert_eq!((voice.rate, voice.channels), (8_000, 1));
    // 8 to 44.1 kHz by the test's own linear interpolation (not the
    // product's resampler), silence on the right.
    let ratio = 44_100.0 / 8_000.0;
    let n = (voice.samples.len() as f64 * ratio) as usize;
    let mut samples = Vec::with_capacity(2 * n);
    for i in 0..n {
        let t = i as f64 / ratio;
        let k = t as usize;
        let a = f64::from(voice.samples[k]);
        let b = f64::from(*voice.samples.get(k + 1).unwrap_or(&voice.samples[k]));
        samples.push((a + (b - a) * (t - k as f64)) as i16);
        samples.push(0);
    }
    let own = dir.path().join("own-recording.wav");
    let wav = Wav {
        rate: 44_100,
        channels: 2,
        samples,
    };
    std::fs::write(&own, wav.to_bytes()).unwrap();
    let bad = dir.path().join("bad.wav");
    std::fs::write(&bad, b"not audio at all").unwrap();
    let (code, out, err) = transcribe(
        &[bad.to_str().unwrap(), own.to_str().unwrap()],
        &[("CALL_COACH_STT__THREADS_PER_WORKER", "2")],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("bad.wav: not a WAV file") && err.contains("1 of 2 files could not be read"),
        "{err}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("own-recording.wav\t"))
        .unwrap_or_else(|| panic!("no transcript of the 44.1 kHz file:\n{out}\n{err}"))
        .to_lowercase();
    let heard = ["mensaje", "tono", "terminar", "tecla"]
        .iter()
        .filter(|w| line.contains(*w))
        .count();
    assert!(heard >= 3, "{line}");
}

/// Prompts whose first final and careful decode differ, played as this
/// test plays them (first final / revision, whisper.cpp's beam 8, which
/// also passed with 1 and 2 threads per worker; the test passes with stt's
/// own beam search, beam 5, at the default threads): "¿Enski carpeta de ser guardar el mensaje?" /
/// "¿En qué carpeta desea guardar el mensaje?", "está a hora siendo
/// grabada" / "está ahora siendo grabada", "El modo Mudo" / "El modo mudo".
/// (A revision's text no longer depends on what the worker decoded before,
/// so the prompts are chosen by what their own audio gives.)
const REVISED_PROMPTS: [&str; 3] = ["vm-savefolder", "conf-now-recording", "conf-now-unmuted"];

/// A final goes out at once; once stt has nothing else to do, its audio is
/// decoded again the careful way (beam 5, a 768-frame window) and, where
/// the text differs, follows as a second final of the same utterance
/// (`revised: true`), on the socket and to the relay. These prompts come
/// out differently the two ways (measured with `transcribe`).
#[tokio::test(flavor = "multi_thread")]
async fn a_final_is_revised_the_careful_way_when_stt_is_free() {
    // Each prompt decoded on its own, as `transcribe` decodes a file.
    let (relay, stt) = start_pair(&[("CALL_COACH_STT__CONTEXT_FROM_PREVIOUS", "false")]);
    let mut sub = relay.ws("callId=revised").await;
    let prompts = REVISED_PROMPTS.map(|p| (p, 1_000));
    let bytes = script(300, &prompts);
    let mut ws = open(&stt, "callId=revised&speaker=customer&sampleRate=8000").await;
    for chunk in bytes.chunks(640) {
        ws.send(Message::binary(chunk.to_vec())).await.unwrap();
    }
    // Still open: every final with words is revised (none dropped) before
    // the stream ends. Generous: a loaded machine decodes slowly.
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let worded = finals(&events)
            .iter()
            .filter(|f| !text(f).trim().is_empty())
            .count();
        let done = metric(&stt, "stt_revisions_total").await;
        if worded >= REVISED_PROMPTS.len() && done >= worded as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done} revisions of {worded} finals: {events:#?}"
        );
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(200), ws.next()).await
        {
            events.push(serde_json::from_str::<Value>(&t).unwrap());
        }
    }
    events.extend(stream(&mut ws, &[], 640).await);
    assert_eq!(metric(&stt, "stt_revisions_dropped_total").await, 0.0);
    let revised = revised(&events);
    assert!(!revised.is_empty(), "no final revised: {events:#?}");
    assert_eq!(
        metric(&stt, "stt_revisions_sent_total").await,
        revised.len() as f64
    );
    for r in &revised {
        let first = finals(&events)
            .into_iter()
            .find(|f| f["utteranceId"] == r["utteranceId"])
            .unwrap_or_else(|| panic!("{r} revises no final: {events:#?}"));
        assert_eq!(r["final"], true);
        assert_ne!(r["text"], first["text"], "{r}");
        for same in ["startMs", "endMs", "endedBy", "speaker"] {
            assert_eq!(r[same], first[same], "{r} against {first}");
        }
    }
    // The relay has them too.
    let mut on_relay = 0;
    while on_relay < revised.len() {
        let ev = next_json(&mut sub, Duration::from_secs(30))
            .await
            .expect("the relay's events");
        on_relay += usize::from(ev["revised"] == true);
    }
}
