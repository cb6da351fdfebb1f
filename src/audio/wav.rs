//! Minimal RIFF/WAVE reading and writing: 16-bit PCM (and 8-bit µ-law or
//! A-law), mono or stereo. Enough for test audio, the call simulator and
//! the load generators.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: not a WAV file ({1})")]
    Format(String, String),
}

/// Decoded audio, samples interleaved by channel.
#[derive(Debug, Clone)]
pub struct Wav {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
}

/// Decompresses gzip data, up to 256 MiB.
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(256 << 20)
        .read_to_end(&mut out)
        .map_err(|e| format!("not gzip data: {e}"))?;
    Ok(out)
}

impl Wav {
    /// Reads a WAV file; `NAME.wav.gz` is gunzipped first.
    pub fn read(path: &Path) -> Result<Self, WavError> {
        let name = path.display().to_string();
        let mut bytes = std::fs::read(path).map_err(|e| WavError::Io(name.clone(), e))?;
        if path.extension().is_some_and(|e| e == "gz") {
            bytes = gunzip(&bytes).map_err(|e| WavError::Format(name.clone(), e))?;
        }
        Self::parse(&bytes).map_err(|why| WavError::Format(name, why))
    }

    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
            return Err("no RIFF/WAVE header".into());
        }
        let mut pos = 12;
        let mut fmt: Option<(u16, u16, u32, u16)> = None;
        while pos + 8 <= b.len() {
            let id = &b[pos..pos + 4];
            let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
            let body_start = pos + 8;
            let body_end = body_start.saturating_add(len).min(b.len());
            let body = &b[body_start..body_end];
            match id {
                b"fmt " if body.len() >= 16 => {
                    let mut tag = u16::from_le_bytes([body[0], body[1]]);
                    let channels = u16::from_le_bytes([body[2], body[3]]);
                    let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                    let bits = u16::from_le_bytes([body[14], body[15]]);
                    // WAVE_FORMAT_EXTENSIBLE: the real tag is in the sub-format.
                    if tag == 0xfffe && body.len() >= 26 {
                        tag = u16::from_le_bytes([body[24], body[25]]);
                    }
                    fmt = Some((tag, channels, rate, bits));
                }
                b"data" => {
                    let (tag, channels, rate, bits) = fmt.ok_or("data before fmt")?;
                    if channels == 0 || rate == 0 {
                        return Err("zero channels or rate".into());
                    }
                    let samples = match (tag, bits) {
                        (1, 16) => body
                            .chunks_exact(2)
                            .map(|c| i16::from_le_bytes([c[0], c[1]]))
                            .collect(),
                        (7, 8) => body
                            .iter()
                            .map(|x| super::g711::ulaw_to_linear(*x))
                            .collect(),
                        (6, 8) => body
                            .iter()
                            .map(|x| super::g711::alaw_to_linear(*x))
                            .collect(),
                        _ => return Err(format!("unsupported format tag {tag} with {bits} bits")),
                    };
                    return Ok(Self {
                        rate,
                        channels,
                        samples,
                    });
                }
                _ => {}
            }
            pos = body_start.saturating_add(len + (len & 1));
        }
        Err("no data chunk".into())
    }

    /// One channel (0 = left), or the only one.
    pub fn channel(&self, index: u16) -> Vec<i16> {
        let n = usize::from(self.channels);
        let i = usize::from(index.min(self.channels - 1));
        self.samples.iter().skip(i).step_by(n).copied().collect()
    }

    /// Seconds of audio.
    pub fn duration_secs(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.channels) / f64::from(self.rate)
    }

    /// 16-bit PCM WAV bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let data_len = (self.samples.len() * 2) as u32;
        let mut out = Vec::with_capacity(44 + data_len as usize);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data_len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&self.channels.to_le_bytes());
        out.extend_from_slice(&self.rate.to_le_bytes());
        let block = u32::from(self.channels) * 2;
        out.extend_from_slice(&(self.rate * block).to_le_bytes());
        out.extend_from_slice(&(block as u16).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        for s in &self.samples {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_input() {
        let w = Wav {
            rate: 8000,
            channels: 2,
            samples: vec![1, -1, 2, -2, 3, -3],
        };
        let back = Wav::parse(&w.to_bytes()).unwrap();
        assert_eq!((back.rate, back.channels), (8000, 2));
        assert_eq!(back.channel(0), [1, 2, 3]);
        assert_eq!(back.channel(1), [-1, -2, -3]);
        assert!((back.duration_secs() - 3.0 / 8000.0).abs() < 1e-9);
        assert!(Wav::parse(b"RIFF").is_err());
        assert!(Wav::parse(b"RIFF\0\0\0\0WAVEdata\xff\xff\xff\xff").is_err());
        let mut truncated = w.to_bytes();
        truncated.truncate(30);
        assert!(Wav::parse(&truncated).is_err());
    }
}
