//! Voice activity detection on 20 ms frames of 16 kHz audio.
//!
//! A frame is speech-like when its energy stands clearly above the noise
//! floor (the quietest frame of the last few seconds). Each frame also
//! reports its dominant frequency and how much of the band it holds, so
//! the segmenter can tell a held tone or DTMF from a voice over a whole
//! utterance (one frame of a clean vowel looks as tonal as a beep).

/// Samples per frame at 16 kHz (20 ms).
pub const FRAME: usize = 320;
const FFT: usize = 512;
/// Frames of history the noise floor is taken from (3 s).
const FLOOR_FRAMES: usize = 150;

/// Tunables of the frame classifier.
#[derive(Debug, Clone, Copy)]
pub struct VadConfig {
    /// dB above the noise floor a frame must reach.
    pub above_floor_db: f32,
    /// Absolute minimum level of speech, dBFS.
    pub min_level_db: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            above_floor_db: 10.0,
            min_level_db: -50.0,
        }
    }
}

/// What the detector thinks of one frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub speech: bool,
    /// Level in dBFS.
    pub db: f32,
    /// Share of 300-3400 Hz energy in the two strongest narrow peaks.
    pub tonality: f32,
    /// The strongest frequency in 300-3400 Hz (Hz).
    pub peak_hz: f32,
}

pub struct Vad {
    config: VadConfig,
    history: std::collections::VecDeque<f32>,
    fft: Fft,
}

impl Vad {
    pub fn new(config: VadConfig) -> Self {
        // Until real quiet is heard, assume a quiet line: a stream that
        // starts in mid-sentence must not take its speech for the floor.
        let assumed = config.min_level_db - config.above_floor_db;
        Self {
            config,
            history: std::iter::repeat_n(assumed, FLOOR_FRAMES).collect(),
            fft: Fft::new(FFT),
        }
    }

    /// Classifies one frame of [`FRAME`] samples.
    pub fn frame(&mut self, samples: &[f32]) -> Frame {
        let energy = samples.iter().map(|x| x * x).sum::<f32>() / samples.len().max(1) as f32;
        let db = 10.0 * (energy + 1e-10).log10();
        self.history.pop_front();
        self.history.push_back(db);
        let floor = self.history.iter().copied().fold(f32::INFINITY, f32::min);
        let loud = db > self.config.min_level_db && db > floor + self.config.above_floor_db;
        let (tonality, peak_hz) = if loud {
            self.tonality(samples)
        } else {
            (0.0, 0.0)
        };
        Frame {
            speech: loud,
            db,
            tonality,
            peak_hz,
        }
    }

    fn tonality(&mut self, samples: &[f32]) -> (f32, f32) {
        let power = self.fft.power(samples);
        let bin_hz = 16_000.0 / FFT as f32;
        let lo = (300.0 / bin_hz) as usize;
        let hi = ((3_400.0 / bin_hz) as usize).min(power.len() - 1);
        let band = &power[lo..=hi];
        let total: f32 = band.iter().sum();
        if total <= 0.0 {
            return (0.0, 0.0);
        }
        let mut taken = vec![false; band.len()];
        let mut peaks = 0.0;
        let mut peak_hz = 0.0;
        for round in 0..2 {
            let Some((i, _)) = band
                .iter()
                .enumerate()
                .filter(|(i, _)| !taken[*i])
                .max_by(|a, b| a.1.total_cmp(b.1))
            else {
                break;
            };
            if round == 0 {
                peak_hz = (lo + i) as f32 * bin_hz;
            }
            for j in i.saturating_sub(2)..=(i + 2).min(band.len() - 1) {
                if !taken[j] {
                    taken[j] = true;
                    peaks += band[j];
                }
            }
        }
        (peaks / total, peak_hz)
    }
}

/// A radix-2 FFT for power spectra of one real frame (Hann window).
struct Fft {
    n: usize,
    window: Vec<f32>,
    re: Vec<f32>,
    im: Vec<f32>,
}

impl Fft {
    fn new(n: usize) -> Self {
        let window = (0..FRAME)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (FRAME - 1) as f32).cos())
            .collect();
        Self {
            n,
            window,
            re: vec![0.0; n],
            im: vec![0.0; n],
        }
    }

    /// |X(k)|^2 for k in 0..=n/2.
    fn power(&mut self, x: &[f32]) -> Vec<f32> {
        let n = self.n;
        self.re.iter_mut().for_each(|v| *v = 0.0);
        self.im.iter_mut().for_each(|v| *v = 0.0);
        for (i, (s, w)) in x.iter().zip(&self.window).enumerate().take(n) {
            self.re[i] = s * w;
        }
        // Bit reversal.
        let bits = n.trailing_zeros();
        for i in 0..n {
            let j = i.reverse_bits() >> (usize::BITS - bits);
            if j > i {
                self.re.swap(i, j);
            }
        }
        let mut len = 2;
        while len <= n {
            let angle = -2.0 * std::f32::consts::PI / len as f32;
            for start in (0..n).step_by(len) {
                for k in 0..len / 2 {
                    let (s, c) = (angle * k as f32).sin_cos();
                    let a = start + k;
                    let b = a + len / 2;
                    let tr = self.re[b] * c - self.im[b] * s;
                    let ti = self.re[b] * s + self.im[b] * c;
                    self.re[b] = self.re[a] - tr;
                    self.im[b] = self.im[a] - ti;
                    self.re[a] += tr;
                    self.im[a] += ti;
                }
            }
            len *= 2;
        }
        (0..=n / 2)
            .map(|k| self.re[k] * self.re[k] + self.im[k] * self.im[k])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tones(freqs: &[f32], amp: f32, frames: usize) -> Vec<f32> {
        (0..frames * FRAME)
            .map(|i| {
                freqs
                    .iter()
                    .map(|f| (2.0 * std::f32::consts::PI * f * i as f32 / 16_000.0).sin())
                    .sum::<f32>()
                    * amp
            })
            .collect()
    }

    fn classify(x: &[f32]) -> Vec<Frame> {
        let mut vad = Vad::new(VadConfig::default());
        // A second of near silence first, so there is a floor.
        for _ in 0..50 {
            vad.frame(&[0.0005; FRAME]);
        }
        x.chunks(FRAME).map(|f| vad.frame(f)).collect()
    }

    #[test]
    fn silence_is_not_speech() {
        assert!(classify(&vec![0.0; FRAME * 50]).iter().all(|f| !f.speech));
    }

    #[test]
    fn pure_tones_and_dtmf_are_tonal_at_their_frequency() {
        for freqs in [&[425.0][..], &[697.0, 1209.0], &[941.0, 1477.0], &[1000.0]] {
            let frames = classify(&tones(freqs, 0.3, 25));
            let f = frames[10];
            assert!(f.tonality > 0.9, "{freqs:?}: {f:?}");
            assert!(
                freqs.iter().any(|x| (x - f.peak_hz).abs() <= 32.0),
                "{freqs:?}: peak {}",
                f.peak_hz
            );
        }
    }

    #[test]
    fn harmonic_voice_like_sound_is_speech() {
        // 25 harmonics of 140 Hz with a falling envelope: a crude vowel.
        let freqs: Vec<f32> = (1..25).map(|h| 140.0 * h as f32).collect();
        let mut x = tones(&freqs, 0.02, 25);
        for (i, v) in x.iter_mut().enumerate() {
            *v *= 1.0 / (1.0 + (i % 2000) as f32 / 4000.0);
        }
        let frames = classify(&x);
        let speech = frames.iter().filter(|f| f.speech).count();
        assert!(speech > 20, "only {speech} of 25 frames: {:?}", frames[3]);
        assert!(frames[10].tonality < 0.5, "{:?}", frames[10]);
    }
}
