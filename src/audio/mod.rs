//! Audio: sample formats, G.711, RTP packets, the jitter buffer,
//! resampling, WAV files and voice activity detection. Pure functions and
//! state machines; no I/O but what the caller hands in.

pub mod g711;
pub mod jitter;
pub mod resample;
pub mod rtp;
pub mod vad;
pub mod wav;

/// Whisper's sample rate.
pub const WHISPER_RATE: u32 = 16_000;

/// How raw audio bytes are encoded (docs/contract.md "Audio into stt").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    S16le,
    S16be,
    Pcmu,
    Pcma,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "s16le" => Some(Self::S16le),
            "s16be" => Some(Self::S16be),
            "pcmu" | "ulaw" => Some(Self::Pcmu),
            "pcma" | "alaw" => Some(Self::Pcma),
            _ => None,
        }
    }

    /// Bytes per sample.
    pub fn width(self) -> usize {
        match self {
            Self::S16le | Self::S16be => 2,
            Self::Pcmu | Self::Pcma => 1,
        }
    }

    /// Decodes whole samples of `bytes` into `out`; returns how many bytes
    /// were used (a trailing odd byte of 16-bit audio is left for later).
    pub fn decode(self, bytes: &[u8], out: &mut Vec<i16>) -> usize {
        let used = bytes.len() - bytes.len() % self.width();
        let bytes = &bytes[..used];
        match self {
            Self::S16le => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]])),
            ),
            Self::S16be => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_be_bytes([c[0], c[1]])),
            ),
            Self::Pcmu => out.extend(bytes.iter().map(|b| g711::ulaw_to_linear(*b))),
            Self::Pcma => out.extend(bytes.iter().map(|b| g711::alaw_to_linear(*b))),
        }
        used
    }
}

/// i16 samples to the f32 range Whisper wants.
pub fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|s| f32::from(*s) / 32768.0).collect()
}

/// f32 samples back to i16, clipped.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|x| (x * 32768.0).clamp(-32768.0, 32767.0) as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_keeps_odd_byte_for_later() {
        let mut out = Vec::new();
        assert_eq!(Encoding::S16le.decode(&[1, 0, 2], &mut out), 2);
        assert_eq!(out, [1]);
        assert_eq!(Encoding::S16be.decode(&[0, 1, 0, 2], &mut out), 4);
        assert_eq!(out, [1, 1, 2]);
        out.clear();
        assert_eq!(Encoding::Pcmu.decode(&[0xff, 0x7f], &mut out), 2);
        assert_eq!(out, [0, 0]);
    }
}
