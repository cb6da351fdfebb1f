//! Whisper models on disk: the `call-coach model` commands (`list`,
//! `import`, `fetch`) and finding the file stt loads.
//!
//! The model directory holds whisper.cpp GGML files named as the official
//! ones: `ggml-<size>.bin` (f16) and `ggml-<size>-q8_0.bin`. `COMPUTE_TYPE`
//! int8 picks q8_0, float16 picks f16; `MODEL_SIZE` picks the size.

pub mod ct2;
pub mod fetch;
pub mod ggml;

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

pub use ggml::Quant;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ggml(#[from] ggml::GgmlError),
    #[error(transparent)]
    Ct2(#[from] ct2::Ct2Error),
    #[error(
        "no Whisper model {file} in {dir}.\n  Install it with: call-coach model fetch {size}{quant_flag}\n  or from a file you have: call-coach model import PATH --name {size}{quant_flag}{installed}"
    )]
    Missing {
        file: String,
        dir: PathBuf,
        size: String,
        quant_flag: String,
        /// What is installed instead, as a hint (empty when nothing is).
        installed: String,
    },
    #[error("{0} is neither a whisper.cpp GGML file nor a CTranslate2 model directory")]
    Unknown(PathBuf),
    #[error("model name {0:?} may only hold letters, digits, '.', '-' and '_'")]
    BadName(String),
    #[error("the converted model does not load in whisper.cpp: {0}")]
    DoesNotLoad(String),
    #[error("{0}")]
    Fetch(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file name of a model of `size` stored as `quant`.
/// The Whisper model sizes there are (`fetch` installs the official
/// ones it lists; others come in by `model import`).
pub const KNOWN_SIZES: &[&str] = &[
    "tiny",
    "tiny.en",
    "base",
    "base.en",
    "small",
    "small.en",
    "medium",
    "medium.en",
    "large-v1",
    "large-v2",
    "large-v3",
    "large-v3-turbo",
    "large",
];

pub fn is_known_size(size: &str) -> bool {
    KNOWN_SIZES.contains(&size)
}

pub fn file_name(size: &str, quant: Quant) -> String {
    match quant {
        Quant::F16 => format!("ggml-{size}.bin"),
        Quant::Q8_0 => format!("ggml-{size}-q8_0.bin"),
    }
}

/// `COMPUTE_TYPE` to the stored type: int8 is q8_0, float16 is f16.
pub fn quant_for_compute_type(compute_type: &str) -> Quant {
    Quant::parse(compute_type).unwrap_or(Quant::Q8_0)
}

/// The model file stt loads, or an error that says how to install it.
pub fn resolve(dir: &Path, size: &str, quant: Quant) -> Result<PathBuf, ModelError> {
    let path = dir.join(file_name(size, quant));
    if path.is_file() {
        return Ok(path);
    }
    let mut names: Vec<String> = list(dir)
        .unwrap_or_default()
        .iter()
        .map(Installed::name)
        .collect();
    names.dedup();
    let installed = match names.as_slice() {
        [] => String::new(),
        [one] => format!(
            "\n  or use the model that is installed: stt.model_size = \"{one}\" (MODEL_SIZE={one})"
        ),
        many => format!(
            "\n  or use one that is installed ({}): stt.model_size (MODEL_SIZE)",
            many.join(", ")
        ),
    };
    Err(ModelError::Missing {
        file: file_name(size, quant),
        dir: dir.to_owned(),
        size: size.to_owned(),
        quant_flag: match quant {
            Quant::F16 => " --quant f16".into(),
            Quant::Q8_0 => String::new(),
        },
        installed,
    })
}

/// One installed model.
#[derive(Debug)]
pub struct Installed {
    pub path: PathBuf,
    pub bytes: u64,
    pub hparams: ggml::Hparams,
}

impl Installed {
    /// The name `model_size` gives it: `ggml-base-q8_0.bin` is `base`.
    pub fn name(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = file.strip_prefix("ggml-").unwrap_or(&file);
        let stem = stem.strip_suffix(".bin").unwrap_or(stem);
        stem.strip_suffix("-q8_0").unwrap_or(stem).to_owned()
    }
}

/// The models in `dir`, by file name.
pub fn list(dir: &Path) -> Result<Vec<Installed>, ModelError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("ggml-") && name.ends_with(".bin")) {
            continue;
        }
        let Ok(hparams) = read_hparams(&path) else {
            continue;
        };
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        out.push(Installed {
            path,
            bytes,
            hparams,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Reads just the header of a GGML file.
pub fn read_hparams(path: &Path) -> Result<ggml::Hparams, ModelError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut head = [0u8; 48];
    f.read_exact(&mut head).map_err(io_err(path))?;
    let word = |i: usize| {
        i32::from_le_bytes([
            head[i * 4],
            head[i * 4 + 1],
            head[i * 4 + 2],
            head[i * 4 + 3],
        ])
    };
    let magic = word(0) as u32;
    if magic != ggml::MAGIC {
        return Err(ggml::GgmlError::Magic(magic).into());
    }
    Ok(ggml::Hparams {
        n_vocab: word(1),
        n_audio_ctx: word(2),
        n_audio_state: word(3),
        n_audio_head: word(4),
        n_audio_layer: word(5),
        n_text_ctx: word(6),
        n_text_state: word(7),
        n_text_head: word(8),
        n_text_layer: word(9),
        n_mels: word(10),
        ftype: word(11),
    })
}

/// Reads a GGML file or a CTranslate2 directory.
pub fn read_any(path: &Path) -> Result<ggml::Model, ModelError> {
    if ct2::is_model_dir(path) {
        return Ok(ct2::read_dir(path)?);
    }
    if path.is_file() {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(io_err(path))?;
        let mut magic = [0u8; 4];
        if f.read_exact(&mut magic).is_err() || u32::from_le_bytes(magic) != ggml::MAGIC {
            return Err(ModelError::Unknown(path.to_owned()));
        }
        let f = std::fs::File::open(path).map_err(io_err(path))?;
        return Ok(ggml::Model::read(&mut BufReader::new(f))?);
    }
    Err(ModelError::Unknown(path.to_owned()))
}

/// Imports a model into `dir` as `ggml-<name>[-q8_0].bin`: converted,
/// quantized, checked to load in whisper.cpp, then renamed into place, so a
/// failure never leaves a half-written model behind. Returns its path.
pub fn import(
    source: &Path,
    dir: &Path,
    name: Option<&str>,
    quant: Quant,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, ModelError> {
    progress(&format!("reading {}", source.display()));
    let model = read_any(source)?;
    let name = name
        .map(str::to_owned)
        .unwrap_or_else(|| model.hparams.size_name());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(ModelError::BadName(name));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let target = dir.join(file_name(&name, quant));
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        file_name(&name, quant),
        std::process::id()
    ));
    let result = (|| {
        progress(&format!(
            "writing {} ({}, {} parameters)",
            target.display(),
            quant.name(),
            model.parameters()
        ));
        let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::new(file);
        model.write(&mut out, quant)?;
        out.flush().map_err(io_err(&tmp))?;
        out.get_ref().sync_all().map_err(io_err(&tmp))?;
        drop(out);
        progress("checking that whisper.cpp loads it");
        check_loads(&tmp)?;
        std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
        Ok(target.clone())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Loads a model file in whisper.cpp and drops it.
pub fn check_loads(path: &Path) -> Result<(), ModelError> {
    crate::stt::engine::silence_whisper_logs();
    let path_str = path
        .to_str()
        .ok_or_else(|| ModelError::DoesNotLoad("the path is not UTF-8".into()))?;
    whisper_rs::WhisperContext::new_with_params(path_str, Default::default())
        .map(drop)
        .map_err(|e| ModelError::DoesNotLoad(e.to_string()))
}
