//! RTP (RFC 3550) packets as Asterisk ExternalMedia sends them: parsing
//! that never panics, whatever the bytes, and building (for the call
//! simulator and tests).

use serde::Serialize;

/// Payload types rtp2ws accepts (notes/asterisk-ari.md, RFC 3551).
pub const PT_PCMU: u8 = 0;
pub const PT_PCMA: u8 = 8;
/// L16 mono at 44.1 kHz in RFC 3551, but Asterisk's `slin` (8 kHz).
pub const PT_SLIN: u8 = 10;
/// Asterisk's dynamic payload type for `slin16` (16 kHz).
pub const PT_SLIN16: u8 = 118;

/// Why bytes are not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("shorter than an RTP header")]
    TooShort,
    #[error("RTP version {0}, not 2")]
    Version(u8),
    #[error("the CSRC list runs past the end")]
    Csrc,
    #[error("the header extension runs past the end")]
    Extension,
    #[error("bad padding length")]
    Padding,
}

/// A parsed packet, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Parses one datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, RtpError> {
    if buf.len() < 12 {
        return Err(RtpError::TooShort);
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = buf[0] & 0x20 != 0;
    let extension = buf[0] & 0x10 != 0;
    let csrc_count = usize::from(buf[0] & 0x0f);
    let mut header = 12 + 4 * csrc_count;
    if buf.len() < header {
        return Err(RtpError::Csrc);
    }
    if extension {
        if buf.len() < header + 4 {
            return Err(RtpError::Extension);
        }
        let words = usize::from(u16::from_be_bytes([buf[header + 2], buf[header + 3]]));
        header += 4 + 4 * words;
        if buf.len() < header {
            return Err(RtpError::Extension);
        }
    }
    let mut end = buf.len();
    if padding {
        let pad = usize::from(buf[end - 1]);
        if pad == 0 || pad > end - header {
            return Err(RtpError::Padding);
        }
        end -= pad;
    }
    Ok(Packet {
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7f,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        payload: &buf[header..end],
    })
}

/// Builds a plain packet (no padding, CSRC or extension), as Asterisk does.
pub fn build(
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + payload.len());
    out.push(0x80);
    out.push(payload_type & 0x7f);
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload format of an RTP stream, by the names Asterisk and
/// ari-coach use (`slin16`, `slin`, `ulaw`, `alaw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Slin16,
    Slin,
    Ulaw,
    Alaw,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "slin16" => Some(Self::Slin16),
            "slin" | "slin8" => Some(Self::Slin),
            "ulaw" | "pcmu" => Some(Self::Ulaw),
            "alaw" | "pcma" => Some(Self::Alaw),
            _ => None,
        }
    }

    pub fn payload_type(self) -> u8 {
        match self {
            Self::Slin16 => PT_SLIN16,
            Self::Slin => PT_SLIN,
            Self::Ulaw => PT_PCMU,
            Self::Alaw => PT_PCMA,
        }
    }

    pub fn rate(self) -> u32 {
        match self {
            Self::Slin16 => 16_000,
            _ => 8_000,
        }
    }

    /// Payload bytes to samples (L16 is big-endian on the wire).
    pub fn decode(self, payload: &[u8]) -> Vec<i16> {
        match self {
            Self::Slin16 | Self::Slin => payload
                .chunks_exact(2)
                .map(|c| i16::from_be_bytes([c[0], c[1]]))
                .collect(),
            Self::Ulaw => payload
                .iter()
                .map(|b| super::g711::ulaw_to_linear(*b))
                .collect(),
            Self::Alaw => payload
                .iter()
                .map(|b| super::g711::alaw_to_linear(*b))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_builds() {
        let payload: Vec<u8> = (0..640u32).map(|i| i as u8).collect();
        let bytes = build(PT_SLIN16, 65_535, 320, 0xdead_beef, &payload);
        let p = parse(&bytes).unwrap();
        assert_eq!(
            (p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc),
            (false, 118, 65_535, 320, 0xdead_beef)
        );
        assert_eq!(p.payload, &payload[..]);
    }

    #[test]
    fn csrc_extension_and_padding() {
        // V=2, P=1, X=1, CC=2, M=1, PT=0.
        let mut b = vec![0xb2, 0x80, 0, 7, 0, 0, 1, 0, 0, 0, 0, 9];
        b.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // two CSRCs
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // one-word extension
        b.extend_from_slice(&[5, 6, 7]); // payload
        b.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = parse(&b).unwrap();
        assert!(p.marker);
        assert_eq!((p.payload_type, p.sequence, p.ssrc), (0, 7, 9));
        assert_eq!(p.payload, &[5, 6, 7]);
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(parse(&[0x40; 12]), Err(RtpError::Version(1)));
        assert_eq!(
            parse(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RtpError::Csrc)
        );
        let mut ext = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(parse(&ext), Err(RtpError::Extension));
        ext.truncate(14);
        assert_eq!(parse(&ext), Err(RtpError::Extension));
        let mut pad = build(0, 1, 1, 1, &[1, 2]);
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 0;
        assert_eq!(parse(&pad), Err(RtpError::Padding));
        *pad.last_mut().unwrap() = 3;
        assert_eq!(parse(&pad), Err(RtpError::Padding));
    }

    /// Property: any bytes at all give a packet or an error, never a
    /// panic, and a packet's payload lies inside the datagram.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let len = (next() % 80) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards version 2 so the deeper paths are exercised.
            if let Some(b) = buf.first_mut()
                && next() % 4 != 0
            {
                *b = (*b & 0x3f) | 0x80;
            }
            if let Ok(p) = parse(&buf) {
                let start = p.payload.as_ptr() as usize - buf.as_ptr() as usize;
                assert!(start >= 12 && start + p.payload.len() <= buf.len());
            }
        }
    }
}
