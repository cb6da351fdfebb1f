//! G.711 µ-law and A-law to linear 16-bit PCM (ITU-T G.711).

/// One µ-law byte to a linear sample.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let t = ((i32::from(u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// One A-law byte to a linear sample.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = i32::from(a & 0x0f) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// A linear sample to µ-law (for tests and the call simulator).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample);
    let sign = if pcm < 0 {
        pcm = -pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(32_635) + 0x84;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && pcm & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (pcm >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// A linear sample to A-law (for the call simulator).
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xd5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    const SEG_END: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];
    let seg = SEG_END.iter().position(|e| pcm <= *e).unwrap_or(8) as i32;
    let aval = if seg >= 8 {
        0x7f
    } else {
        let shift = if seg < 2 { 1 } else { seg };
        (seg << 4) | ((pcm >> shift) & 0x0f)
    };
    (aval as u8) ^ mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
    }

    #[test]
    fn alaw_round_trip_is_close() {
        for s in (-32000i32..32000).step_by(97) {
            let back = i32::from(alaw_to_linear(linear_to_alaw(s as i16)));
            let tol = (s.abs() / 16).max(16);
            assert!((back - s).abs() <= tol, "{s} -> {back}");
        }
    }

    #[test]
    fn ulaw_round_trip_is_close() {
        for s in (-32000i32..32000).step_by(97) {
            let back = i32::from(ulaw_to_linear(linear_to_ulaw(s as i16)));
            let tol = (s.abs() / 16).max(8);
            assert!((back - s).abs() <= tol, "{s} -> {back}");
        }
    }
}
