//! CTranslate2 (faster-whisper) model directories, converted to the
//! whisper.cpp model: `config.json`, `model.bin` (or `model.bin.part1`,
//! `model.bin.part2`, ... to be joined in order), and `vocabulary.txt` or
//! `vocabulary.json`.
//!
//! `model.bin`: little-endian u32 version, the spec name, u32 revision, u32
//! array count; per array a name, u8 rank, rank x u32 dims, u8 dtype, u32
//! byte count and the data; then u32 alias count and (alias, target) name
//! pairs. Strings are u16 length (with the trailing NUL) + bytes.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::ggml::{self, Data, Hparams, Model, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is not a CTranslate2 model directory: it has no model.bin or model.bin.part1")]
    NoModel(PathBuf),
    #[error("{0} has no vocabulary.txt or vocabulary.json")]
    NoVocabulary(PathBuf),
    #[error("malformed CTranslate2 model: {0}")]
    Malformed(String),
    #[error("not a Whisper model: the spec is {0:?}")]
    NotWhisper(String),
    #[error("missing array {0} in the CTranslate2 model")]
    Missing(String),
}

/// CTranslate2's data type ids.
const DT_F32: u8 = 0;
const DT_I8: u8 = 1;
const DT_I16: u8 = 2;
const DT_I32: u8 = 3;
const DT_F16: u8 = 4;
const DT_BF16: u8 = 5;

struct Array {
    dims: Vec<usize>,
    dtype: u8,
    bytes: Vec<u8>,
}

impl Array {
    fn to_f32(&self, name: &str) -> Result<Vec<f32>, Ct2Error> {
        let b = &self.bytes;
        Ok(match self.dtype {
            DT_F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DT_F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DT_BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DT_I8 => b.iter().map(|x| f32::from(*x as i8)).collect(),
            other => {
                return Err(Ct2Error::Malformed(format!(
                    "{name}: data type {other} is not a tensor type"
                )));
            }
        })
    }

    fn scalar(&self) -> Option<i64> {
        match (self.dtype, self.bytes.as_slice()) {
            (DT_I8, [a]) => Some(i64::from(*a as i8)),
            (DT_I16, [a, b]) => Some(i64::from(i16::from_le_bytes([*a, *b]))),
            (DT_I32, [a, b, c, d]) => Some(i64::from(i32::from_le_bytes([*a, *b, *c, *d]))),
            _ => None,
        }
    }
}

/// Finds the pieces of a model directory.
fn model_files(dir: &Path) -> Result<Vec<PathBuf>, Ct2Error> {
    let single = dir.join("model.bin");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut parts = Vec::new();
    for i in 1.. {
        let p = dir.join(format!("model.bin.part{i}"));
        if !p.is_file() {
            break;
        }
        parts.push(p);
    }
    if parts.is_empty() {
        return Err(Ct2Error::NoModel(dir.to_owned()));
    }
    Ok(parts)
}

/// Whether `dir` looks like a CTranslate2 model directory.
pub fn is_model_dir(dir: &Path) -> bool {
    dir.is_dir() && model_files(dir).is_ok()
}

/// Reads a CTranslate2 Whisper model directory into a whisper.cpp model.
pub fn read_dir(dir: &Path) -> Result<Model, Ct2Error> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Ct2Error::Io { path, source }
    };
    let files = model_files(dir)?;
    let mut readers: Vec<Box<dyn Read>> = Vec::new();
    for f in &files {
        readers.push(Box::new(io::BufReader::new(
            std::fs::File::open(f).map_err(io_err(f))?,
        )));
    }
    let mut input = readers
        .into_iter()
        .reduce(|a, b| Box::new(a.chain(b)))
        .ok_or_else(|| Ct2Error::NoModel(dir.to_owned()))?;
    let arrays = read_arrays(&mut input).map_err(io_err(&files[0]))??;
    let vocab = read_vocabulary(dir)?;
    convert(arrays, vocab)
}

type Arrays = HashMap<String, Array>;

fn read_arrays(input: &mut impl Read) -> io::Result<Result<Arrays, Ct2Error>> {
    let bad = |m: &str| Ok(Err(Ct2Error::Malformed(m.to_owned())));
    let version = read_u32(input)?;
    if !(1..=10).contains(&version) {
        return bad(&format!("unsupported binary version {version}"));
    }
    let spec = read_string(input)?;
    if spec != "WhisperSpec" {
        return Ok(Err(Ct2Error::NotWhisper(spec)));
    }
    let _revision = read_u32(input)?;
    let count = read_u32(input)?;
    if count > 100_000 {
        return bad("implausible array count");
    }
    let mut arrays = HashMap::new();
    for _ in 0..count {
        let name = read_string(input)?;
        let rank = read_u8(input)?;
        let mut dims = Vec::with_capacity(usize::from(rank));
        for _ in 0..rank {
            dims.push(read_u32(input)? as usize);
        }
        let dtype = read_u8(input)?;
        let len = read_u32(input)? as usize;
        let width = match dtype {
            DT_F32 | DT_I32 => 4,
            DT_F16 | DT_BF16 | DT_I16 => 2,
            DT_I8 => 1,
            _ => return bad(&format!("{name}: unknown data type {dtype}")),
        };
        let elements: usize = dims.iter().product::<usize>().max(1);
        if elements.checked_mul(width) != Some(len) || len > 4 << 30 {
            return bad(&format!("{name}: {len} bytes do not match {dims:?}"));
        }
        let mut bytes = vec![0u8; len];
        input.read_exact(&mut bytes)?;
        arrays.insert(name, Array { dims, dtype, bytes });
    }
    // Aliases (e.g. the output projection sharing the token embedding)
    // carry no data whisper.cpp needs.
    Ok(Ok(arrays))
}

fn read_u8(input: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    input.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_string(input: &mut impl Read) -> io::Result<String> {
    let mut b = [0u8; 2];
    input.read_exact(&mut b)?;
    let mut s = vec![0u8; usize::from(u16::from_le_bytes(b))];
    input.read_exact(&mut s)?;
    while s.last() == Some(&0) {
        s.pop();
    }
    String::from_utf8(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "name is not UTF-8"))
}

/// Token strings in id order, from `vocabulary.txt` (one per line) or
/// `vocabulary.json` (a JSON array).
fn read_vocabulary(dir: &Path) -> Result<Vec<String>, Ct2Error> {
    let txt = dir.join("vocabulary.txt");
    let json = dir.join("vocabulary.json");
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| Ct2Error::Io {
            path: p.to_owned(),
            source,
        })
    };
    if txt.is_file() {
        let text = read(&txt)?;
        let mut tokens: Vec<String> = text.split('\n').map(str::to_owned).collect();
        if tokens.last().is_some_and(String::is_empty) {
            tokens.pop();
        }
        Ok(tokens)
    } else if json.is_file() {
        serde_json::from_str(&read(&json)?)
            .map_err(|e| Ct2Error::Malformed(format!("vocabulary.json: {e}")))
    } else {
        Err(Ct2Error::NoVocabulary(dir.to_owned()))
    }
}

/// The conversion in progress: arrays not yet used, tensors made so far.
struct Converter {
    arrays: Arrays,
    tensors: Vec<Tensor>,
}

impl Converter {
    fn has(&self, name: &str) -> bool {
        self.arrays.contains_key(name)
    }

    /// Removes an array, as f32 values (int8 weights dequantized).
    fn take(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), Ct2Error> {
        let a = self
            .arrays
            .remove(name)
            .ok_or_else(|| Ct2Error::Missing(name.to_owned()))?;
        let mut values = a.to_f32(name)?;
        // int8 weights come with one scale per output row: w = q / scale.
        if a.dtype == DT_I8 && a.dims.len() == 2 {
            let scale_name = format!("{name}_scale");
            if let Some(scale) = self.arrays.remove(&scale_name) {
                let scale = scale.to_f32(&scale_name)?;
                for (row, s) in values.chunks_mut(a.dims[1]).zip(scale) {
                    row.iter_mut().for_each(|v| *v /= s);
                }
            }
        }
        Ok((a.dims, values))
    }

    fn push(&mut self, name: String, dims: Vec<usize>, values: Vec<f32>) {
        let data = if dims.len() >= 2 && !name.ends_with("positional_embedding") {
            Data::F16(values.into_iter().map(half::f16::from_f32).collect())
        } else {
            Data::F32(values)
        };
        self.tensors.push(Tensor { name, dims, data });
    }

    fn norm(&mut self, from: &str, to: &str) -> Result<(), Ct2Error> {
        let (d, g) = self.take(&format!("{from}/gamma"))?;
        self.push(format!("{to}.weight"), d, g);
        let (d, b) = self.take(&format!("{from}/beta"))?;
        self.push(format!("{to}.bias"), d, b);
        Ok(())
    }

    fn linear(&mut self, from: &str, to: &str) -> Result<(), Ct2Error> {
        let (d, w) = self.take(&format!("{from}/weight"))?;
        self.push(format!("{to}.weight"), d, w);
        let (d, b) = self.take(&format!("{from}/bias"))?;
        self.push(format!("{to}.bias"), d, b);
        Ok(())
    }

    /// Self-attention: CTranslate2 stacks query, key and value in
    /// `linear_0` (3 x n_state rows); whisper.cpp wants them apart, and has
    /// no key bias (it is all zeros).
    fn self_attention(&mut self, p: &str, q: &str, n_state: usize) -> Result<(), Ct2Error> {
        self.norm(
            &format!("{p}/self_attention/layer_norm"),
            &format!("{q}.attn_ln"),
        )?;
        let (d, w) = self.take(&format!("{p}/self_attention/linear_0/weight"))?;
        let (_, b) = self.take(&format!("{p}/self_attention/linear_0/bias"))?;
        if d.len() != 2 || d[0] != 3 * n_state || b.len() != 3 * n_state {
            return Err(Ct2Error::Malformed(format!(
                "{p}/self_attention/linear_0 has shape {d:?}, expected [{}, {n_state}]",
                3 * n_state
            )));
        }
        let cols = d[1];
        let block = n_state * cols;
        for (i, part) in ["query", "key", "value"].into_iter().enumerate() {
            let weight = w[i * block..(i + 1) * block].to_vec();
            self.push(
                format!("{q}.attn.{part}.weight"),
                vec![n_state, cols],
                weight,
            );
            if part != "key" {
                let bias = b[i * n_state..(i + 1) * n_state].to_vec();
                self.push(format!("{q}.attn.{part}.bias"), vec![n_state], bias);
            }
        }
        self.linear(
            &format!("{p}/self_attention/linear_1"),
            &format!("{q}.attn.out"),
        )
    }

    /// Cross-attention: query, then key and value stacked, then output.
    fn cross_attention(&mut self, p: &str, q: &str) -> Result<(), Ct2Error> {
        self.norm(
            &format!("{p}/attention/layer_norm"),
            &format!("{q}.cross_attn_ln"),
        )?;
        self.linear(
            &format!("{p}/attention/linear_0"),
            &format!("{q}.cross_attn.query"),
        )?;
        let (d, w) = self.take(&format!("{p}/attention/linear_1/weight"))?;
        let (_, b) = self.take(&format!("{p}/attention/linear_1/bias"))?;
        if d.len() != 2 || d[0] % 2 != 0 || b.len() != d[0] {
            return Err(Ct2Error::Malformed(format!(
                "{p}/attention/linear_1 has shape {d:?}"
            )));
        }
        let (rows, cols) = (d[0] / 2, d[1]);
        self.push(
            format!("{q}.cross_attn.key.weight"),
            vec![rows, cols],
            w[..rows * cols].to_vec(),
        );
        self.push(
            format!("{q}.cross_attn.value.weight"),
            vec![rows, cols],
            w[rows * cols..].to_vec(),
        );
        self.push(
            format!("{q}.cross_attn.value.bias"),
            vec![rows],
            b[rows..].to_vec(),
        );
        self.linear(
            &format!("{p}/attention/linear_2"),
            &format!("{q}.cross_attn.out"),
        )
    }

    fn ffn(&mut self, p: &str, q: &str) -> Result<(), Ct2Error> {
        self.norm(&format!("{p}/ffn/layer_norm"), &format!("{q}.mlp_ln"))?;
        self.linear(&format!("{p}/ffn/linear_0"), &format!("{q}.mlp.0"))?;
        self.linear(&format!("{p}/ffn/linear_1"), &format!("{q}.mlp.2"))
    }

    fn scalar(&self, name: &str) -> Option<usize> {
        self.arrays
            .get(name)
            .and_then(Array::scalar)
            .and_then(|v| usize::try_from(v).ok())
    }
}

/// Maps the CTranslate2 arrays onto whisper.cpp's tensors.
fn convert(arrays: Arrays, vocab: Vec<String>) -> Result<Model, Ct2Error> {
    let mut c = Converter {
        arrays,
        tensors: Vec::new(),
    };
    let (pe_dims, pe) = c.take("encoder/position_encodings/encodings")?;
    if pe_dims.len() != 2 {
        return Err(Ct2Error::Malformed(
            "encoder position encodings are not 2-D".into(),
        ));
    }
    let (n_audio_ctx, n_audio_state) = (pe_dims[0], pe_dims[1]);
    c.push("encoder.positional_embedding".into(), pe_dims, pe);
    let mut n_mels = 80;
    for conv in ["conv1", "conv2"] {
        let (d, w) = c.take(&format!("encoder/{conv}/weight"))?;
        if conv == "conv1" && d.len() == 3 {
            n_mels = d[1];
        }
        c.push(format!("encoder.{conv}.weight"), d, w);
        let (d, b) = c.take(&format!("encoder/{conv}/bias"))?;
        c.push(format!("encoder.{conv}.bias"), vec![d[0], 1], b);
    }
    let mut n_audio_layer = 0;
    while c.has(&format!(
        "encoder/layer_{n_audio_layer}/ffn/linear_0/weight"
    )) {
        let p = format!("encoder/layer_{n_audio_layer}");
        let q = format!("encoder.blocks.{n_audio_layer}");
        c.self_attention(&p, &q, n_audio_state)?;
        c.ffn(&p, &q)?;
        n_audio_layer += 1;
    }
    c.norm("encoder/layer_norm", "encoder.ln_post")?;

    let (d, pe) = c.take("decoder/position_encodings/encodings")?;
    let n_text_ctx = d[0];
    c.push("decoder.positional_embedding".into(), d, pe);
    let (d, emb) = c.take("decoder/embeddings/weight")?;
    if d.len() != 2 {
        return Err(Ct2Error::Malformed("token embeddings are not 2-D".into()));
    }
    let (n_vocab, n_text_state) = (d[0], d[1]);
    c.push("decoder.token_embedding.weight".into(), d, emb);
    let mut n_text_layer = 0;
    while c.has(&format!("decoder/layer_{n_text_layer}/ffn/linear_0/weight")) {
        let p = format!("decoder/layer_{n_text_layer}");
        let q = format!("decoder.blocks.{n_text_layer}");
        c.self_attention(&p, &q, n_text_state)?;
        c.cross_attention(&p, &q)?;
        c.ffn(&p, &q)?;
        n_text_layer += 1;
    }
    c.norm("decoder/layer_norm", "decoder.ln")?;
    if n_audio_layer == 0 || n_text_layer == 0 {
        return Err(Ct2Error::Malformed("the model has no layers".into()));
    }

    // Every Whisper size has 64-dimensional heads; the spec may say so.
    let n_audio_head = c.scalar("encoder/num_heads").unwrap_or(n_audio_state / 64);
    let n_text_head = c.scalar("decoder/num_heads").unwrap_or(n_text_state / 64);
    let to_i32 = |v: usize| {
        i32::try_from(v).map_err(|_| Ct2Error::Malformed(format!("dimension {v} is too large")))
    };
    let hparams = Hparams {
        n_vocab: to_i32(n_vocab)?,
        n_audio_ctx: to_i32(n_audio_ctx)?,
        n_audio_state: to_i32(n_audio_state)?,
        n_audio_head: to_i32(n_audio_head)?,
        n_audio_layer: to_i32(n_audio_layer)?,
        n_text_ctx: to_i32(n_text_ctx)?,
        n_text_state: to_i32(n_text_state)?,
        n_text_head: to_i32(n_text_head)?,
        n_text_layer: to_i32(n_text_layer)?,
        n_mels: to_i32(n_mels)?,
        ftype: 1,
    };
    Ok(Model {
        hparams,
        mel_filters: ggml::mel_filters(n_mels),
        vocab: byte_vocabulary(&vocab)?,
        tensors: c.tensors,
    })
}

/// The vocabulary as whisper.cpp stores it: the bytes of each token up to
/// `<|endoftext|>`, decoded from GPT-2's byte-to-character map.
fn byte_vocabulary(tokens: &[String]) -> Result<Vec<Vec<u8>>, Ct2Error> {
    let decoder = ggml::byte_decoder();
    let end = tokens
        .iter()
        .position(|t| t == "<|endoftext|>")
        .ok_or_else(|| Ct2Error::Malformed("the vocabulary has no <|endoftext|>".into()))?;
    tokens[..end]
        .iter()
        .map(|t| {
            t.chars()
                .map(|c| {
                    decoder.get(&c).copied().ok_or_else(|| {
                        Ct2Error::Malformed(format!(
                            "token {t:?} has a character outside the byte map"
                        ))
                    })
                })
                .collect()
        })
        .collect()
}
