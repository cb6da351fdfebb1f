//! 8 kHz to 16 kHz: zero-stuffing followed by a windowed-sinc low-pass
//! (cut-off 3.8 kHz, Kaiser window), so telephone audio reaches Whisper
//! without imaging above 4 kHz. Streaming: state carries across calls.
//! And [`to_rate`], any rate to any other for whole files (`transcribe`
//! of a 44.1 kHz recording).

/// Filter taps per phase; the full filter has twice as many.
const HALF_TAPS: usize = 16;

/// Doubles the sample rate of a stream.
pub struct Upsampler2x {
    /// Polyphase filter: `phases[p][k]` weights input sample `n - k` for
    /// output `2n + p`.
    phases: [[f32; HALF_TAPS]; 2],
    /// The last HALF_TAPS input samples, newest last.
    history: Vec<f32>,
}

impl Default for Upsampler2x {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler2x {
    pub fn new() -> Self {
        // Odd length: a whole-sample delay, so output samples land exactly
        // on the 16 kHz grid.
        let taps = 2 * HALF_TAPS - 1;
        let center = (taps - 1) as f64 / 2.0;
        let cutoff = 3_800.0 / 16_000.0; // of the output rate
        let beta = 6.0;
        let mut h = vec![0f64; taps];
        for (i, v) in h.iter_mut().enumerate() {
            let x = i as f64 - center;
            let sinc = if x == 0.0 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            let r = x / (center + 1.0);
            let window = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / bessel_i0(beta);
            *v = sinc * window;
        }
        // Gain 2 makes up for the inserted zeros; normalise each phase.
        let mut phases = [[0f32; HALF_TAPS]; 2];
        for (p, phase) in phases.iter_mut().enumerate() {
            let tap_at = |k: usize| h.get(2 * k + p).copied().unwrap_or(0.0);
            let sum: f64 = (0..HALF_TAPS).map(tap_at).sum();
            for (k, tap) in phase.iter_mut().enumerate() {
                *tap = (tap_at(k) / sum) as f32;
            }
        }
        Self {
            phases,
            history: vec![0.0; HALF_TAPS],
        }
    }

    /// Appends two output samples per input sample to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        out.reserve(input.len() * 2);
        for &x in input {
            self.history.remove(0);
            self.history.push(x);
            for phase in &self.phases {
                let y: f32 = phase
                    .iter()
                    .zip(self.history.iter().rev())
                    .map(|(t, s)| t * s)
                    .sum();
                out.push(y);
            }
        }
    }

    /// Output samples of delay the filter adds.
    pub fn delay() -> usize {
        HALF_TAPS - 1
    }
}

/// A whole recording from `from` Hz to `to` Hz, as every file reader does
/// it: 8 to 16 kHz through the live path's [`Upsampler2x`], any other pair
/// of rates in [`RATES`] through [`to_rate`]; an error names the rate.
pub fn convert(pcm: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    match (from, to) {
        (a, b) if a == b => Ok(pcm.to_vec()),
        (8_000, 16_000) => {
            let mut out = Vec::with_capacity(pcm.len() * 2);
            Upsampler2x::new().process(pcm, &mut out);
            Ok(out)
        }
        (a, b) if RATES.contains(&a) && RATES.contains(&b) => Ok(to_rate(pcm, a, b)),
        (a, _) => Err(format!(
            "{a} Hz; the rate must be {} to {} Hz",
            RATES.start(),
            RATES.end()
        )),
    }
}

/// Lowest and highest sample rates [`to_rate`] takes.
pub const RATES: std::ops::RangeInclusive<u32> = 4_000..=192_000;

/// A whole recording from one sample rate to another (a file, not a
/// stream): windowed-sinc interpolation (Kaiser window, 8 zero crossings a
/// side), low-passed below 45% of the lower rate so nothing folds back.
/// DC gain 1 at every output sample.
pub fn to_rate(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    // Cut-off in cycles per input sample.
    let fc = 0.45 * f64::from(from.min(to)) / f64::from(from);
    let half = (8.0 / (2.0 * fc)).ceil();
    // The kernel (sinc times Kaiser window) tabulated over 0..=half, RES
    // points per input sample, read with linear interpolation: the window's
    // Bessel function once per point, not once per tap.
    const RES: f64 = 512.0;
    let beta = 8.0;
    let i0_beta = bessel_i0(beta);
    let table: Vec<f64> = (0..=(half * RES) as usize + 1)
        .map(|i| {
            let x = i as f64 / RES;
            let sinc = if i == 0 {
                1.0
            } else {
                let a = std::f64::consts::PI * 2.0 * fc * x;
                a.sin() / a
            };
            let r = (x / half).min(1.0);
            sinc * bessel_i0(beta * (1.0 - r * r).sqrt()) / i0_beta
        })
        .collect();
    let kernel = |x: f64| {
        let p = x.abs() * RES;
        let i = p as usize;
        let f = p - i as f64;
        table[i] + (table[i + 1] - table[i]) * f
    };
    let n_out = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    let last = input.len() as isize - 1;
    let mut out = Vec::with_capacity(n_out);
    for n in 0..n_out {
        let t = n as f64 * step;
        let first = (t - half).ceil().max(0.0) as isize;
        let end = ((t + half).floor() as isize).min(last);
        let (mut acc, mut weight) = (0f64, 0f64);
        for k in first..=end {
            let w = kernel(t - k as f64);
            acc += w * f64::from(input[k as usize]);
            weight += w;
        }
        out.push(if weight.abs() > 1e-9 {
            (acc / weight) as f32
        } else {
            0.0
        });
    }
    out
}

fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    for k in 1..50 {
        term *= (x / (2.0 * k as f64)).powi(2);
        sum += term;
        if term < 1e-12 * sum {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin() as f32 * 0.5)
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn passes_speech_band_and_matches_a_true_16k_tone() {
        let mut up = Upsampler2x::new();
        let mut out = Vec::new();
        up.process(&tone(1000.0, 8000.0, 8000), &mut out);
        assert_eq!(out.len(), 16000);
        let want = tone(1000.0, 16000.0, 16000);
        // Compare after the filter's delay settles.
        let d = Upsampler2x::delay();
        let err: Vec<f32> = out[1000..15000]
            .iter()
            .zip(&want[1000 - d..15000 - d])
            .map(|(a, b)| a - b)
            .collect();
        assert!(rms(&err) < 0.02, "error rms {}", rms(&err));
        assert!((rms(&out[1000..]) - 0.3535).abs() < 0.02);
    }

    #[test]
    fn any_rate_reaches_16k_with_the_speech_band_and_without_folding() {
        for from in [11_025u32, 22_050, 44_100, 48_000] {
            // A 1 kHz tone comes through at its level.
            let out = to_rate(&tone(1000.0, f64::from(from), from as usize), from, 16_000);
            assert_eq!(out.len(), 16_000, "{from}");
            let want = tone(1000.0, 16_000.0, 16_000);
            let err: Vec<f32> = out[1000..15000]
                .iter()
                .zip(&want[1000..15000])
                .map(|(a, b)| a - b)
                .collect();
            assert!(rms(&err) < 0.01, "{from}: error rms {}", rms(&err));
        }
        // 12 kHz at 44.1 kHz is above 16 kHz's 8 kHz: removed, not folded
        // down to 4 kHz.
        let out = to_rate(&tone(12_000.0, 44_100.0, 44_100), 44_100, 16_000);
        assert!(rms(&out[1000..15000]) < 0.01, "{}", rms(&out[1000..15000]));
        assert_eq!(to_rate(&[0.5; 10], 16_000, 16_000), vec![0.5; 10]);
        assert!(to_rate(&[], 44_100, 16_000).is_empty());
    }

    #[test]
    fn streaming_in_pieces_equals_one_go() {
        let x = tone(440.0, 8000.0, 1000);
        let (mut a, mut b) = (Upsampler2x::new(), Upsampler2x::new());
        let (mut oa, mut ob) = (Vec::new(), Vec::new());
        a.process(&x, &mut oa);
        for chunk in x.chunks(37) {
            b.process(chunk, &mut ob);
        }
        assert_eq!(oa, ob);
    }
}
