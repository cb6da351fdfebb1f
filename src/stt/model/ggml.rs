//! The whisper.cpp GGML model file: reading, writing, q8_0 quantization,
//! and the pieces a converter must compute (mel filters, byte vocabulary).
//!
//! Layout: magic, 11 i32 hparams, the mel filter bank (i32 n_mel, i32 n_fft,
//! f32 data), the vocabulary (i32 count, then i32 length + bytes per token),
//! then tensors: i32 n_dims, i32 name length, i32 type, dims in reverse
//! order, name, data.

use std::io::{self, Read, Write};

/// `ggml` in little-endian.
pub const MAGIC: u32 = 0x6767_6d6c;
/// whisper.cpp multiplies the quantization version into `ftype`.
const QNT_VERSION: i32 = 2;
const QNT_VERSION_FACTOR: i32 = 1000;
/// ggml type ids.
const TYPE_F32: i32 = 0;
const TYPE_F16: i32 = 1;
const TYPE_Q8_0: i32 = 8;
/// Values per q8_0 block, and bytes per block (f16 scale + 32 i8).
const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 34;

#[derive(Debug, thiserror::Error)]
pub enum GgmlError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a whisper.cpp GGML model (bad magic {0:#x})")]
    Magic(u32),
    #[error("malformed GGML model: {0}")]
    Malformed(String),
    #[error(
        "tensor {0} is stored in a quantized type ({1}); only f16/f32 models can be re-quantized: import the f16 file"
    )]
    Quantized(String, i32),
}

/// Storage of the big weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    F16,
    Q8_0,
}

impl Quant {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f16" | "float16" => Some(Self::F16),
            "q8_0" | "int8" => Some(Self::Q8_0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    fn ftype(self) -> i32 {
        match self {
            Self::F16 => 1,
            Self::Q8_0 => 7 + QNT_VERSION * QNT_VERSION_FACTOR,
        }
    }
}

/// The model's shape, as whisper.cpp reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: i32,
    pub n_audio_ctx: i32,
    pub n_audio_state: i32,
    pub n_audio_head: i32,
    pub n_audio_layer: i32,
    pub n_text_ctx: i32,
    pub n_text_state: i32,
    pub n_text_head: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    pub ftype: i32,
}

impl Hparams {
    /// The usual name of a model of this shape: `base`, `small.en`, ...
    pub fn size_name(&self) -> String {
        let base = match (self.n_audio_layer, self.n_audio_state) {
            (4, 384) => "tiny",
            (6, 512) => "base",
            (12, 768) => "small",
            (24, 1024) => "medium",
            (32, 1280) if self.n_mels == 128 => "large-v3",
            (32, 1280) => "large",
            _ => "custom",
        };
        let english_only = self.n_vocab == 51864;
        format!("{base}{}", if english_only { ".en" } else { "" })
    }

    /// Whether the big matrices are quantized, and how.
    pub fn quant(&self) -> Option<Quant> {
        match self.ftype % QNT_VERSION_FACTOR {
            1 => Some(Quant::F16),
            7 => Some(Quant::Q8_0),
            _ => None,
        }
    }
}

/// Tensor data in one of the types a converter produces.
#[derive(Debug, Clone)]
pub enum Data {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    /// Raw bytes of a ggml type we only pass through.
    Raw {
        ty: i32,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
pub struct Tensor {
    /// whisper.cpp's name, e.g. `encoder.blocks.0.attn.query.weight`.
    pub name: String,
    /// Dimensions in PyTorch (row-major) order.
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    fn to_f32(&self) -> Result<Vec<f32>, GgmlError> {
        match &self.data {
            Data::F32(v) => Ok(v.clone()),
            Data::F16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            Data::Raw { ty, .. } => Err(GgmlError::Quantized(self.name.clone(), *ty)),
        }
    }
}

/// A whole model in memory.
#[derive(Debug, Clone)]
pub struct Model {
    pub hparams: Hparams,
    pub mel_filters: MelFilters,
    /// Token bytes, ids 0 .. up to `<|endoftext|>`.
    pub vocab: Vec<Vec<u8>>,
    pub tensors: Vec<Tensor>,
}

#[derive(Debug, Clone)]
pub struct MelFilters {
    pub n_mel: i32,
    pub n_fft: i32,
    pub data: Vec<f32>,
}

/// Which type a tensor is stored in: whisper.cpp allocates positional
/// embeddings, biases and norms as f32, convolutions as f16, and the
/// matrices in the file's type.
fn stored_type(t: &Tensor, quant: Quant) -> i32 {
    let is_conv_bias = t.name.starts_with("encoder.conv") && t.name.ends_with(".bias");
    if t.dims.len() < 2 || t.name.ends_with("positional_embedding") || is_conv_bias {
        TYPE_F32
    } else if t.dims.len() == 2 && quant == Quant::Q8_0 {
        TYPE_Q8_0
    } else {
        TYPE_F16
    }
}

impl Model {
    /// Writes the model in whisper.cpp's format with `quant` for the
    /// matrices.
    pub fn write(&self, out: &mut impl Write, quant: Quant) -> Result<(), GgmlError> {
        let h = self.hparams;
        put_u32(out, MAGIC)?;
        for v in [
            h.n_vocab,
            h.n_audio_ctx,
            h.n_audio_state,
            h.n_audio_head,
            h.n_audio_layer,
            h.n_text_ctx,
            h.n_text_state,
            h.n_text_head,
            h.n_text_layer,
            h.n_mels,
            quant.ftype(),
        ] {
            put_i32(out, v)?;
        }
        put_i32(out, self.mel_filters.n_mel)?;
        put_i32(out, self.mel_filters.n_fft)?;
        for v in &self.mel_filters.data {
            out.write_all(&v.to_le_bytes())?;
        }
        put_i32(out, len_i32(self.vocab.len())?)?;
        for token in &self.vocab {
            put_i32(out, len_i32(token.len())?)?;
            out.write_all(token)?;
        }
        for t in &self.tensors {
            let ty = match &t.data {
                // Already quantized: kept only when that is what was asked.
                Data::Raw { ty, .. } if *ty == TYPE_Q8_0 && quant == Quant::Q8_0 => *ty,
                Data::Raw { ty, .. } => return Err(GgmlError::Quantized(t.name.clone(), *ty)),
                _ => stored_type(t, quant),
            };
            put_i32(out, len_i32(t.dims.len())?)?;
            put_i32(out, len_i32(t.name.len())?)?;
            put_i32(out, ty)?;
            for d in t.dims.iter().rev() {
                put_i32(out, len_i32(*d)?)?;
            }
            out.write_all(t.name.as_bytes())?;
            match (&t.data, ty) {
                (Data::Raw { bytes, .. }, _) => out.write_all(bytes)?,
                (Data::F16(v), TYPE_F16) => {
                    for x in v {
                        out.write_all(&x.to_bits().to_le_bytes())?;
                    }
                }
                (_, TYPE_F16) => {
                    for x in t.to_f32()? {
                        out.write_all(&half::f16::from_f32(x).to_bits().to_le_bytes())?;
                    }
                }
                (_, TYPE_F32) => {
                    for x in t.to_f32()? {
                        out.write_all(&x.to_le_bytes())?;
                    }
                }
                (_, _) => out.write_all(
                    &quantize_q8_0(&t.to_f32()?)
                        .map_err(|e| GgmlError::Malformed(format!("{}: {e}", t.name)))?,
                )?,
            }
        }
        Ok(())
    }

    /// Reads a GGML model written by whisper.cpp's converters or by us.
    pub fn read(input: &mut impl Read) -> Result<Self, GgmlError> {
        let magic = get_u32(input)?;
        if magic != MAGIC {
            return Err(GgmlError::Magic(magic));
        }
        let mut v = [0i32; 11];
        for x in &mut v {
            *x = get_i32(input)?;
        }
        let hparams = Hparams {
            n_vocab: v[0],
            n_audio_ctx: v[1],
            n_audio_state: v[2],
            n_audio_head: v[3],
            n_audio_layer: v[4],
            n_text_ctx: v[5],
            n_text_state: v[6],
            n_text_head: v[7],
            n_text_layer: v[8],
            n_mels: v[9],
            ftype: v[10],
        };
        let n_mel = get_i32(input)?;
        let n_fft = get_i32(input)?;
        let count = checked_len(n_mel, 1024)? * checked_len(n_fft, 4096)?;
        let mut data = vec![0f32; count];
        for x in &mut data {
            *x = f32::from_le_bytes(get_array(input)?);
        }
        let mel_filters = MelFilters { n_mel, n_fft, data };
        let n_tokens = checked_len(get_i32(input)?, 1 << 20)?;
        let mut vocab = Vec::with_capacity(n_tokens);
        for _ in 0..n_tokens {
            let len = checked_len(get_i32(input)?, 1 << 16)?;
            let mut token = vec![0u8; len];
            input.read_exact(&mut token)?;
            vocab.push(token);
        }
        let mut tensors = Vec::new();
        loop {
            let mut first = [0u8; 4];
            match input.read(&mut first)? {
                0 => break,
                n if n < 4 => input.read_exact(&mut first[n..])?,
                _ => {}
            }
            let n_dims = checked_len(i32::from_le_bytes(first), 4)?;
            let name_len = checked_len(get_i32(input)?, 1024)?;
            let ty = get_i32(input)?;
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(checked_len(get_i32(input)?, 1 << 24)?);
            }
            dims.reverse();
            let mut name = vec![0u8; name_len];
            input.read_exact(&mut name)?;
            let name = String::from_utf8(name)
                .map_err(|_| GgmlError::Malformed("tensor name is not UTF-8".into()))?;
            let n: usize = dims.iter().product();
            let data = match ty {
                TYPE_F32 => {
                    let mut v = vec![0f32; n];
                    for x in &mut v {
                        *x = f32::from_le_bytes(get_array(input)?);
                    }
                    Data::F32(v)
                }
                TYPE_F16 => {
                    let mut v = vec![half::f16::ZERO; n];
                    for x in &mut v {
                        *x = half::f16::from_bits(u16::from_le_bytes(get_array(input)?));
                    }
                    Data::F16(v)
                }
                TYPE_Q8_0 => {
                    if !n.is_multiple_of(Q8_0_BLOCK) {
                        return Err(GgmlError::Malformed(format!("{name}: bad q8_0 size")));
                    }
                    let mut bytes = vec![0u8; n / Q8_0_BLOCK * Q8_0_BYTES];
                    input.read_exact(&mut bytes)?;
                    Data::Raw { ty, bytes }
                }
                other => {
                    return Err(GgmlError::Malformed(format!(
                        "{name}: unsupported tensor type {other}"
                    )));
                }
            };
            tensors.push(Tensor { name, dims, data });
        }
        Ok(Self {
            hparams,
            mel_filters,
            vocab,
            tensors,
        })
    }

    /// Total values in all tensors.
    pub fn parameters(&self) -> usize {
        self.tensors.iter().map(Tensor::elements).sum()
    }
}

/// q8_0 as ggml defines it: blocks of 32 values, each an f16 scale
/// (max |x| / 127) and 32 signed bytes (x / scale, rounded).
pub fn quantize_q8_0(values: &[f32]) -> Result<Vec<u8>, String> {
    if !values.len().is_multiple_of(Q8_0_BLOCK) {
        return Err(format!(
            "{} values is not a multiple of the q8_0 block ({Q8_0_BLOCK})",
            values.len()
        ));
    }
    let mut out = Vec::with_capacity(values.len() / Q8_0_BLOCK * Q8_0_BYTES);
    for block in values.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
    }
    Ok(out)
}

/// The inverse of [`quantize_q8_0`], for the tests.
#[cfg(test)]
pub fn dequantize_q8_0(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / Q8_0_BYTES * Q8_0_BLOCK);
    for block in bytes.chunks_exact(Q8_0_BYTES) {
        let d = half::f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32();
        out.extend(block[2..].iter().map(|q| f32::from(*q as i8) * d));
    }
    out
}

/// The Slaney-style mel filter bank Whisper uses (librosa's
/// `filters.mel(sr=16000, n_fft=400, n_mels)`, norm "slaney"), row-major
/// `n_mels x (n_fft/2 + 1)`.
pub fn mel_filters(n_mels: usize) -> MelFilters {
    const SR: f64 = 16_000.0;
    const N_FFT: usize = 400;
    let n_bins = N_FFT / 2 + 1;
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f >= min_log_hz {
            min_log_mel + (f / min_log_hz).ln() / logstep
        } else {
            f / f_sp
        }
    };
    let mel_to_hz = |m: f64| {
        if m >= min_log_mel {
            min_log_hz * (logstep * (m - min_log_mel)).exp()
        } else {
            f_sp * m
        }
    };
    let max_mel = hz_to_mel(SR / 2.0);
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|i| SR / 2.0 * i as f64 / (n_bins - 1) as f64)
        .collect();
    let mut data = Vec::with_capacity(n_mels * n_bins);
    for i in 0..n_mels {
        let (lo, mid, hi) = (mel_f[i], mel_f[i + 1], mel_f[i + 2]);
        let enorm = 2.0 / (hi - lo);
        for &f in &fft_freqs {
            let lower = (f - lo) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            data.push((lower.min(upper).max(0.0) * enorm) as f32);
        }
    }
    MelFilters {
        n_mel: n_mels as i32,
        n_fft: n_bins as i32,
        data,
    }
}

/// GPT-2's printable-character stand-ins for bytes, inverted: the tokens
/// of Whisper's vocabulary files are written with these characters.
pub fn byte_decoder() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| Some((char::from_u32(c)?, b as u8)))
        .collect()
}

fn put_u32(out: &mut impl Write, v: u32) -> io::Result<()> {
    out.write_all(&v.to_le_bytes())
}

fn put_i32(out: &mut impl Write, v: i32) -> io::Result<()> {
    out.write_all(&v.to_le_bytes())
}

fn len_i32(n: usize) -> Result<i32, GgmlError> {
    i32::try_from(n).map_err(|_| GgmlError::Malformed(format!("{n} does not fit an i32")))
}

fn get_array<const N: usize>(input: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    input.read_exact(&mut b)?;
    Ok(b)
}

fn get_u32(input: &mut impl Read) -> io::Result<u32> {
    Ok(u32::from_le_bytes(get_array(input)?))
}

fn get_i32(input: &mut impl Read) -> io::Result<i32> {
    Ok(i32::from_le_bytes(get_array(input)?))
}

/// A count from the file, refused when negative or beyond `max`, so a
/// corrupt file cannot make us allocate gigabytes.
fn checked_len(v: i32, max: usize) -> Result<usize, GgmlError> {
    usize::try_from(v)
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| GgmlError::Malformed(format!("implausible count {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let values: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let q = quantize_q8_0(&values).unwrap();
        assert_eq!(q.len(), 4 * Q8_0_BYTES);
        let back = dequantize_q8_0(&q);
        for (block, back) in values.chunks(32).zip(back.chunks(32)) {
            let step = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (a, b) in block.iter().zip(back) {
                assert!((a - b).abs() <= step * 0.51 + 1e-3, "{a} vs {b}");
            }
        }
        assert!(quantize_q8_0(&[1.0; 31]).is_err());
        assert_eq!(
            dequantize_q8_0(&quantize_q8_0(&[0.0; 32]).unwrap()),
            vec![0.0; 32]
        );
    }

    #[test]
    fn mel_filters_have_the_slaney_shape() {
        let m = mel_filters(80);
        assert_eq!((m.n_mel, m.n_fft, m.data.len()), (80, 201, 80 * 201));
        // Row 0 rises from bin 0 (librosa's Slaney formula, as Whisper uses);
        // that the real model transcribes with these filters is tested in
        // tests/it (the WER test).
        assert!((m.data[1] - 0.024_862_593).abs() < 1e-6, "{}", m.data[1]);
        assert_eq!(m.data[0], 0.0);
        let row79 = &m.data[79 * 201..80 * 201];
        let peak = row79.iter().cloned().fold(0f32, f32::max);
        assert!(peak > 0.0 && row79[200] == 0.0);
        // Slaney normalisation: each filter's area (in Hz) is about 1.
        for row in m.data.chunks(201) {
            let area: f32 = row.iter().sum::<f32>() * 40.0;
            assert!((0.8..1.2).contains(&area), "area {area}");
        }
    }

    #[test]
    fn byte_decoder_covers_all_bytes() {
        let d = byte_decoder();
        assert_eq!(d.len(), 256);
        assert_eq!(d[&'Ġ'], b' ');
        assert_eq!(d[&'a'], b'a');
        assert_eq!(d[&'Ċ'], b'\n');
    }

    #[test]
    fn truncated_or_garbage_files_are_errors() {
        assert!(matches!(
            Model::read(&mut &b"nope"[..]),
            Err(GgmlError::Magic(_))
        ));
        let mut bytes = MAGIC.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        assert!(Model::read(&mut &bytes[..]).is_err());
        let mut bytes = MAGIC.to_le_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(0xffu8, 60));
        assert!(Model::read(&mut &bytes[..]).is_err());
    }
}
