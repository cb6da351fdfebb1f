//! Cuts one stream of 16 kHz audio into utterances with the VAD: a start
//! notice once an utterance holds `min_speech` of speech, a partial request
//! while it grows (every `partial_every` of new speech), a final one when it
//! ends (after `end_silence` of silence, or forced at `max_utterance`).
//! Every announced utterance gets a final, empty when it turned out to be
//! noise. With `speculate`, a tentative final goes out as soon as the
//! silence reaches the tail a final keeps (`TAIL_MS`): the same audio the
//! final will hold if no speech follows, so its decode can start while the
//! end of speech is still being confirmed; speech resuming after it says
//! so ([`Request::Resumed`]), so that the decode can stop. When that decode reads as a
//! finished sentence, the consumer may call [`Segmenter::end_early`]: the
//! utterance then ends after `early_end_ms` of silence instead of
//! `end_silence_ms` (an adaptive end of speech). Pure: audio in, requests
//! out.

use std::collections::VecDeque;

use crate::audio::vad::{FRAME, Vad, VadConfig};

/// Samples per millisecond at 16 kHz.
const PER_MS: usize = 16;
/// Silence kept after the last speech frame of a final: Whisper ends
/// words better with a little of it. A tentative final is asked for when
/// the silence reaches it, so it is also how soon a final's decode can
/// start. 100 ms: the held-out prompts' segments make 15.6% WER with it
/// against 16.0% with 200 (the suite's the same), and the decode starts
/// 100 ms sooner.
pub const TAIL_MS: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct SegmenterConfig {
    /// Silence that ends an utterance (ms).
    pub end_silence_ms: usize,
    /// New speech between two partial requests (ms).
    pub partial_every_ms: usize,
    /// Longest audio a partial decodes (ms; 0: the whole utterance). A
    /// longer utterance's earlier audio is settled in pieces, cut at a
    /// quiet frame and decoded once each ([`Request::Piece`]); a partial
    /// then decodes only what follows the last piece, so its cost stops
    /// growing with the utterance.
    pub partial_window_ms: usize,
    /// Longest utterance before it is split (ms).
    pub max_utterance_ms: usize,
    /// An utterance this long (its start to its last speech; ms; 0:
    /// never) ends at a shorter pause, `long_pause_ms`: a long turn goes
    /// out phrase by phrase, at its pauses, instead of waiting for
    /// `end_silence_ms` or being split at `max_utterance_ms` wherever it
    /// is quietest.
    pub long_utterance_ms: usize,
    /// Silence that ends an utterance past `long_utterance_ms`, at first
    /// (ms; at least `TAIL_MS`; see `long_pause_ramp_ms`).
    pub long_pause_ms: usize,
    /// Over this long past `long_utterance_ms` (ms; 0: never), the pause
    /// that ends a long turn shrinks from `long_pause_ms` to `TAIL_MS`,
    /// so that speech with no such pause ends at a breath before it is
    /// split.
    pub long_pause_ramp_ms: usize,
    /// Shorter speech than this is a click or a cough: dropped (ms).
    pub min_speech_ms: usize,
    /// Audio kept before the detected start of speech (ms).
    pub preroll_ms: usize,
    /// Consecutive speech frames that open an utterance.
    pub start_frames: usize,
    /// An utterance whose speech frames vary less than this in level (dB,
    /// standard deviation) is steady noise or a tone, not a voice.
    pub min_level_spread_db: f32,
    /// Ask for a tentative final when the silence reaches `TAIL_MS`.
    pub speculate: bool,
    /// Silence that ends an utterance whose tentative final reads as a
    /// finished sentence ([`Segmenter::end_early`]), in ms; 0: never
    /// early. At least `TAIL_MS`; past `end_silence_ms` it never acts.
    pub early_end_ms: usize,
    pub vad: VadConfig,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            end_silence_ms: 500,
            partial_every_ms: 700,
            partial_window_ms: 6000,
            max_utterance_ms: 15_000,
            long_utterance_ms: 0,
            long_pause_ms: 150,
            long_pause_ramp_ms: 4_000,
            min_speech_ms: 200,
            preroll_ms: 300,
            start_frames: 3,
            min_level_spread_db: 2.5,
            speculate: true,
            early_end_ms: 0,
            vad: VadConfig::default(),
        }
    }
}

/// What the segmenter asks the transcriber for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Speech began: (utterance index, its start in ms). No audio to decode.
    Started(u64, u64),
    /// The utterance so far, for a partial transcript. Its audio is what
    /// follows the utterance's last piece (all of it when it has none).
    Partial(Utterance),
    /// A settled stretch of a long utterance (the `n`-th, from 0), ahead
    /// of the audio its later partials decode: its text heads theirs.
    /// Its `end_ms` is where it was cut.
    Piece(Utterance, usize),
    /// The final this utterance will get if its silence lasts: same index,
    /// same audio. Speech resuming makes it stale (a later tentative or
    /// final of the same index has more audio), and says so with
    /// `Resumed`.
    Tentative(Utterance),
    /// Speech resumed in this utterance after its tentative final was
    /// asked for: that decode is of no use any more.
    Resumed(u64),
    Final(Utterance, Ended),
}

/// What ended an utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `end_silence_ms` of silence.
    Pause,
    /// `early_end_ms` of silence after a finished sentence.
    Sentence,
    /// `max_utterance_ms` reached: split at a quiet frame.
    Split,
    /// The stream ended.
    Stream,
}

impl Ended {
    /// As the `transcript` event's `endedBy` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Pause => "pause",
            Ended::Sentence => "sentence",
            Ended::Split => "split",
            Ended::Stream => "stream",
        }
    }
}

/// A piece of audio with its place in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    /// Counts utterances of this stream from 1.
    pub index: u64,
    /// From the start of the stream's audio.
    pub start_ms: u64,
    pub end_ms: u64,
    pub audio: Vec<f32>,
}

struct Open {
    index: u64,
    /// Stream sample where `audio` starts.
    start: u64,
    audio: Vec<f32>,
    /// Samples of `audio` up to the end of the last speech frame.
    speech_end: usize,
    speech_frames: usize,
    speech_db: Vec<f32>,
    /// (tonality, dominant Hz) of each speech frame, to spot tones.
    speech_tone: Vec<(f32, f32)>,
    /// Level of every frame of `audio`, for choosing where to split.
    frame_db: Vec<f32>,
    silence_ms: usize,
    speech_since_partial_ms: usize,
    /// Samples of `audio` settled in pieces: partials decode from here.
    piece_end: usize,
    /// Pieces cut so far.
    pieces: usize,
    /// A `Started` went out for it.
    announced: bool,
    /// Its tentative final read as a finished sentence: it ends after
    /// `early_end_ms` of silence (until speech resumes).
    early: bool,
    /// A tentative final was asked for in the current silence.
    tentative: bool,
}

pub struct Segmenter {
    config: SegmenterConfig,
    vad: Vad,
    /// Samples not yet making a whole frame.
    pending: Vec<f32>,
    /// Recent frames while idle, for the pre-roll.
    preroll: VecDeque<Vec<f32>>,
    /// Consecutive speech frames while idle.
    run: usize,
    /// Stream sample at the start of `pending`.
    position: u64,
    open: Option<Open>,
    next_index: u64,
    /// Utterances dropped by the utterance-level checks.
    pub dropped: u64,
    /// Utterances ended after `early_end_ms` rather than `end_silence_ms`.
    pub ended_early: u64,
    /// Utterances past `long_utterance_ms` ended at a long turn's pause
    /// (`long_pause_ms`, shrinking over `long_pause_ramp_ms`).
    pub ended_long: u64,
    /// Speech the VAD heard in utterances (ms): partials are asked for
    /// every `partial_every_ms` of it.
    pub speech_ms: u64,
}

impl Segmenter {
    pub fn new(config: SegmenterConfig) -> Self {
        Self {
            config,
            vad: Vad::new(config.vad),
            pending: Vec::new(),
            preroll: VecDeque::new(),
            run: 0,
            position: 0,
            open: None,
            next_index: 1,
            dropped: 0,
            ended_early: 0,
            ended_long: 0,
            speech_ms: 0,
        }
    }

    /// Feeds audio; returns what should be transcribed now.
    pub fn push(&mut self, audio: &[f32]) -> Vec<Request> {
        let mut out = Vec::new();
        self.pending.extend_from_slice(audio);
        let whole = self.pending.len() / FRAME * FRAME;
        let frames: Vec<f32> = self.pending.drain(..whole).collect();
        for frame in frames.chunks_exact(FRAME) {
            self.frame(frame, &mut out);
            self.position += FRAME as u64;
        }
        out
    }

    /// The stream ended: finalises what is open.
    pub fn finish(&mut self) -> Vec<Request> {
        let mut out = Vec::new();
        if self.open.is_some() {
            self.close(&mut out, Ended::Stream);
        }
        out
    }

    fn frame(&mut self, frame: &[f32], out: &mut Vec<Request>) {
        let info = self.vad.frame(frame);
        let c = self.config;
        if let Some(open) = &mut self.open {
            open.audio.extend_from_slice(frame);
            open.frame_db.push(info.db);
            if info.speech {
                self.speech_ms += 20;
                open.speech_frames += 1;
                open.speech_db.push(info.db);
                open.speech_tone.push((info.tonality, info.peak_hz));
                open.speech_end = open.audio.len();
                open.silence_ms = 0;
                open.early = false;
                if std::mem::take(&mut open.tentative) {
                    out.push(Request::Resumed(open.index));
                }
                open.speech_since_partial_ms += 20;
                // Announced once it sounds like a voice: long enough, a
                // varying level, not a held tone (judged on its recent
                // frames, so the check stays cheap).
                if !open.announced
                    && open.speech_frames * 20 >= c.min_speech_ms
                    && level_spread(&open.speech_db) >= c.min_level_spread_db
                    && !is_tone(&open.speech_tone[open.speech_tone.len().saturating_sub(50)..])
                {
                    open.announced = true;
                    out.push(Request::Started(open.index, open.start / PER_MS as u64));
                }
            } else {
                open.silence_ms += 20;
                if c.speculate
                    && open.silence_ms == TAIL_MS
                    && c.end_silence_ms > TAIL_MS
                    && open.audio.len() / PER_MS < c.max_utterance_ms
                    && is_voice(open, c)
                {
                    open.tentative = true;
                    out.push(Request::Tentative(Utterance {
                        index: open.index,
                        start_ms: open.start / PER_MS as u64,
                        end_ms: (open.start + open.speech_end as u64) / PER_MS as u64,
                        audio: open.audio[..final_len(open)].to_vec(),
                    }));
                }
            }
            let length_ms = open.audio.len() / PER_MS;
            if open.silence_ms >= c.end_silence_ms {
                self.close(out, Ended::Pause);
            } else if open.early && open.silence_ms >= c.early_end_ms {
                self.close_early(out);
            } else if long_pause(c, open.speech_end / PER_MS).is_some_and(|p| open.silence_ms >= p)
            {
                self.ended_long += 1;
                self.close(out, Ended::Pause);
            } else if length_ms >= c.max_utterance_ms {
                self.split(out);
            } else if open.speech_since_partial_ms >= c.partial_every_ms
                && level_spread(&open.speech_db) >= c.min_level_spread_db
            {
                open.speech_since_partial_ms = 0;
                if let Some(cut) = piece_cut(open, c.partial_window_ms) {
                    out.push(Request::Piece(
                        Utterance {
                            index: open.index,
                            start_ms: open.start / PER_MS as u64,
                            end_ms: (open.start + cut as u64) / PER_MS as u64,
                            audio: open.audio[open.piece_end..cut].to_vec(),
                        },
                        open.pieces,
                    ));
                    open.piece_end = cut;
                    open.pieces += 1;
                }
                out.push(Request::Partial(Utterance {
                    index: open.index,
                    start_ms: open.start / PER_MS as u64,
                    end_ms: (open.start + open.audio.len() as u64) / PER_MS as u64,
                    audio: open.audio[open.piece_end..].to_vec(),
                }));
            }
            return;
        }
        let preroll_frames = c.preroll_ms / 20;
        self.preroll.push_back(frame.to_vec());
        while self.preroll.len() > preroll_frames.max(c.start_frames) {
            self.preroll.pop_front();
        }
        self.run = if info.speech { self.run + 1 } else { 0 };
        if self.run >= c.start_frames {
            self.speech_ms += self.run as u64 * 20;
            let audio: Vec<f32> = self.preroll.drain(..).flatten().collect();
            let start = self.position + FRAME as u64 - audio.len() as u64;
            self.open = Some(Open {
                index: self.next_index,
                start,
                speech_end: audio.len(),
                speech_frames: self.run,
                speech_db: vec![info.db; self.run],
                speech_tone: vec![(info.tonality, info.peak_hz); self.run],
                frame_db: vec![info.db; audio.len() / FRAME],
                audio,
                silence_ms: 0,
                speech_since_partial_ms: self.run * 20,
                piece_end: 0,
                pieces: 0,
                announced: false,
                early: false,
                tentative: false,
            });
            self.next_index += 1;
            self.run = 0;
        }
    }

    /// Whether an utterance is open: someone may be speaking, and a
    /// tentative or a final may be asked for soon.
    pub fn in_utterance(&self) -> bool {
        self.open.is_some()
    }

    /// The tentative final of utterance `index` reads as a finished
    /// sentence: if that utterance is still open and silent since its
    /// tentative, it ends after `early_end_ms` of silence; at once (the
    /// final returned) when the silence is already that long. Speech
    /// resuming cancels it. Does nothing when `early_end_ms` is 0.
    pub fn end_early(&mut self, index: u64) -> Vec<Request> {
        let mut out = Vec::new();
        let c = self.config;
        let Some(open) = &mut self.open else {
            return out;
        };
        if c.early_end_ms == 0 || open.index != index || open.silence_ms < TAIL_MS {
            return out;
        }
        open.early = true;
        // (An open utterance's silence is shorter than end_silence_ms.)
        if open.silence_ms >= c.early_end_ms {
            self.close_early(&mut out);
        }
        out
    }

    fn close_early(&mut self, out: &mut Vec<Request>) {
        self.ended_early += 1;
        self.close(out, Ended::Sentence);
    }

    /// Speech too long without a pause: ends the utterance at the quietest
    /// frame of its last three seconds (a breath, a word boundary) rather
    /// than mid-word, and carries the rest into the next utterance.
    fn split(&mut self, out: &mut Vec<Request>) {
        let Some(open) = &mut self.open else {
            return;
        };
        let n = open.frame_db.len();
        let cut = quietest_frame(&open.frame_db, n.saturating_sub(150)..n.saturating_sub(5))
            .map_or(n, |i| i + 1);
        let rest_audio = open.audio.split_off((cut * FRAME).min(open.audio.len()));
        let rest_db = open.frame_db.split_off(cut.min(n));
        let rest_start = open.start + (cut * FRAME) as u64;
        open.speech_end = open.speech_end.min(open.audio.len());
        self.close(out, Ended::Split);
        let speech_frames = rest_db.len();
        self.open = Some(Open {
            index: self.next_index,
            start: rest_start,
            speech_end: rest_audio.len(),
            speech_frames,
            speech_db: rest_db.clone(),
            speech_tone: Vec::new(),
            frame_db: rest_db,
            audio: rest_audio,
            silence_ms: 0,
            speech_since_partial_ms: speech_frames * 20,
            piece_end: 0,
            pieces: 0,
            announced: false,
            early: false,
            tentative: false,
        });
        self.next_index += 1;
    }

    fn close(&mut self, out: &mut Vec<Request>, why: Ended) {
        let Some(mut open) = self.open.take() else {
            return;
        };
        let c = self.config;
        let keep = final_len(&open);
        open.audio.truncate(keep);
        if !is_voice(&open, c) {
            self.dropped += 1;
            // Send a final anyway if it was announced (or partials were
            // requested), so the consumer can close the utterance; with no
            // audio it is empty.
            if open.announced || open.speech_frames * 20 >= c.partial_every_ms {
                out.push(Request::Final(
                    Utterance {
                        index: open.index,
                        start_ms: open.start / PER_MS as u64,
                        end_ms: (open.start + keep as u64) / PER_MS as u64,
                        audio: Vec::new(),
                    },
                    why,
                ));
            }
            return;
        }
        out.push(Request::Final(
            Utterance {
                index: open.index,
                start_ms: open.start / PER_MS as u64,
                end_ms: (open.start + open.speech_end as u64) / PER_MS as u64,
                audio: open.audio,
            },
            why,
        ));
    }
}

/// Where a long utterance's next piece ends (a sample of `audio`, at a
/// frame boundary), when what its partials would decode has grown past
/// `window_ms`: after the quietest frame (a breath or a word boundary,
/// not mid-word) between 2 s into that stretch and 2 s before its end,
/// so that neither the piece nor what follows it is too short for
/// Whisper to read.
fn piece_cut(open: &Open, window_ms: usize) -> Option<usize> {
    if window_ms == 0 || (open.audio.len() - open.piece_end) / PER_MS <= window_ms {
        return None;
    }
    let first = open.piece_end / FRAME + 100;
    let last = open.frame_db.len().saturating_sub(100);
    quietest_frame(&open.frame_db, first..last).map(|i| (i + 1) * FRAME)
}

/// The pause that ends an utterance `speech_ms` long (start to last
/// speech) once it is past `long_utterance_ms`: `long_pause_ms`,
/// shrinking to `TAIL_MS` over the next `long_pause_ramp_ms`. `None`
/// while it is shorter, or with the rule off.
fn long_pause(c: SegmenterConfig, speech_ms: usize) -> Option<usize> {
    if c.long_utterance_ms == 0 || speech_ms < c.long_utterance_ms {
        return None;
    }
    let pause = c.long_pause_ms.max(TAIL_MS);
    if c.long_pause_ramp_ms == 0 || pause >= c.end_silence_ms {
        return Some(pause);
    }
    let past = speech_ms
        .saturating_sub(c.long_utterance_ms)
        .min(c.long_pause_ramp_ms);
    Some(pause - (pause - TAIL_MS) * past / c.long_pause_ramp_ms)
}

/// The quietest of `frames` (indexes into `frame_db`): where to cut an
/// utterance, at a breath or a word boundary rather than mid-word.
fn quietest_frame(frame_db: &[f32], frames: std::ops::Range<usize>) -> Option<usize> {
    frames.min_by(|a, b| frame_db[*a].total_cmp(&frame_db[*b]))
}

/// Samples a final of `open` holds: its speech and `TAIL_MS` of silence.
fn final_len(open: &Open) -> usize {
    (open.speech_end + TAIL_MS * PER_MS).min(open.audio.len())
}

/// Whether the utterance as a whole sounds like a voice: long enough, a
/// varying level, not a held tone.
fn is_voice(open: &Open, c: SegmenterConfig) -> bool {
    open.speech_frames * 20 >= c.min_speech_ms
        && level_spread(&open.speech_db) >= c.min_level_spread_db
        && !is_tone(&open.speech_tone)
}

/// DTMF row and column frequencies (Hz).
const DTMF_HZ: [f32; 8] = [697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0];

/// Whether an utterance is a held tone or DTMF rather than a voice: most
/// of its frames are nearly pure and either share one frequency or sit on
/// DTMF frequencies. A voice's dominant harmonic wanders with its pitch.
fn is_tone(frames: &[(f32, f32)]) -> bool {
    if frames.is_empty() {
        return false;
    }
    let pure: Vec<f32> = frames
        .iter()
        .filter(|(t, _)| *t > 0.9)
        .map(|(_, hz)| *hz)
        .collect();
    let n = frames.len() as f32;
    let dtmf = pure
        .iter()
        .filter(|hz| DTMF_HZ.iter().any(|d| (*hz - d).abs() <= 32.0))
        .count() as f32;
    let modal = pure
        .iter()
        .map(|a| pure.iter().filter(|b| (*a - *b).abs() <= 32.0).count())
        .max()
        .unwrap_or(0) as f32;
    dtmf / n > 0.5 || modal / n > 0.6
}

/// Standard deviation of the levels, in dB.
fn level_spread(db: &[f32]) -> f32 {
    if db.len() < 2 {
        return 0.0;
    }
    let mean = db.iter().sum::<f32>() / db.len() as f32;
    (db.iter().map(|d| (d - mean).powi(2)).sum::<f32>() / db.len() as f32).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crude voice: harmonics of 150 Hz with a 4 Hz syllable envelope.
    fn voice(ms: usize) -> Vec<f32> {
        (0..ms * PER_MS)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let env = 0.55 + 0.45 * (2.0 * std::f32::consts::PI * 4.0 * t).sin();
                (1..20)
                    .map(|h| (2.0 * std::f32::consts::PI * 150.0 * h as f32 * t).sin())
                    .sum::<f32>()
                    * 0.01
                    * env
            })
            .collect()
    }

    /// Half a second of silence, `n` phrases of `phrase_ms` each followed
    /// by `pause_ms` of silence, then a second of silence.
    fn phrases(n: usize, phrase_ms: usize, pause_ms: usize) -> Vec<f32> {
        let mut audio = vec![0.0; 8_000];
        for _ in 0..n {
            audio.extend(voice(phrase_ms));
            audio.extend(vec![0.0; pause_ms * PER_MS]);
        }
        audio.extend(vec![0.0; 16_000]);
        audio
    }

    /// The finals (or the tentative finals) among the requests.
    fn utterances(reqs: &[Request], tentative: bool) -> Vec<&Utterance> {
        reqs.iter()
            .filter_map(|r| match r {
                Request::Final(u, _) if !tentative => Some(u),
                Request::Tentative(u) if tentative => Some(u),
                _ => None,
            })
            .collect()
    }

    fn finals(reqs: &[Request]) -> Vec<&Utterance> {
        utterances(reqs, false)
    }

    /// What ended each final.
    fn ended(reqs: &[Request]) -> Vec<Ended> {
        reqs.iter()
            .filter_map(|r| match r {
                Request::Final(_, why) => Some(*why),
                _ => None,
            })
            .collect()
    }

    fn run(seg: &mut Segmenter, audio: &[f32]) -> Vec<Request> {
        audio.chunks(333).flat_map(|c| seg.push(c)).collect()
    }

    #[test]
    fn one_utterance_with_partials_and_a_final() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut audio = vec![0.0; 16_000];
        audio.extend(voice(2_500));
        audio.extend(vec![0.0; 16_000]);
        let reqs = run(&mut seg, &audio);
        let partials = reqs
            .iter()
            .filter(|r| matches!(r, Request::Partial(_)))
            .count();
        let finals = finals(&reqs);
        // One per `partial_every_ms` (700) of the 2.5 s of speech.
        assert_eq!(partials, 3, "{reqs:?}");
        assert_eq!(finals.len(), 1);
        let u = finals[0];
        assert_eq!(u.index, 1);
        assert!((650..=1000).contains(&u.start_ms), "start {}", u.start_ms);
        assert!((3400..=3600).contains(&u.end_ms), "end {}", u.end_ms);
        assert_eq!(reqs[0], Request::Started(1, u.start_ms));
        assert_eq!(ended(&reqs), [Ended::Pause]);
        assert!(seg.finish().is_empty());
        // 2.5 s of voice, the silence around it not counted.
        assert!(
            (2_000..=2_600).contains(&seg.speech_ms),
            "speech {} ms",
            seg.speech_ms
        );
    }

    fn tentatives(reqs: &[Request]) -> Vec<&Utterance> {
        utterances(reqs, true)
    }

    #[test]
    fn a_tentative_final_has_the_finals_audio_and_goes_stale_when_speech_resumes() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        // Speech, a 300 ms pause (past the tentative, short of the end),
        // more speech, then silence.
        let mut audio = vec![0.0; 16_000];
        audio.extend(voice(1_500));
        audio.extend(vec![0.0; 300 * PER_MS]);
        audio.extend(voice(1_000));
        audio.extend(vec![0.0; 16_000]);
        let reqs = run(&mut seg, &audio);
        let t = tentatives(&reqs);
        let f = finals(&reqs);
        assert_eq!(f.len(), 1, "{reqs:?}");
        assert_eq!(t.len(), 2, "one per pause");
        // The first (at the mid pause) is stale: less audio than the final.
        assert!(t[0].audio.len() < f[0].audio.len());
        // The last is the final, sample for sample, and came first.
        assert_eq!(t[1], f[0]);
        let pos = |want: &Request| reqs.iter().position(|r| r == want).unwrap();
        assert!(
            pos(&Request::Tentative(t[1].clone()))
                < pos(&Request::Final(f[0].clone(), Ended::Pause))
        );
        // Speech resuming said so, once, between the two.
        let resumed: Vec<usize> = (0..reqs.len())
            .filter(|&i| reqs[i] == Request::Resumed(1))
            .collect();
        assert_eq!(resumed.len(), 1, "{reqs:?}");
        assert!(pos(&Request::Tentative(t[0].clone())) < resumed[0]);
        assert!(resumed[0] < pos(&Request::Tentative(t[1].clone())));
        // Off: none.
        let mut seg = Segmenter::new(SegmenterConfig {
            speculate: false,
            ..Default::default()
        });
        assert!(tentatives(&run(&mut seg, &audio)).is_empty());
    }

    #[test]
    fn a_finished_sentence_ends_after_the_shorter_silence_and_speech_cancels_it() {
        let config = SegmenterConfig {
            early_end_ms: 300,
            ..Default::default()
        };
        let speech = |seg: &mut Segmenter| {
            let mut audio = vec![0.0; 16_000];
            audio.extend(voice(1_500));
            run(seg, &audio)
        };
        let silence = |seg: &mut Segmenter, ms: usize| run(seg, &vec![0.0; ms * PER_MS]);
        // Asked once the tentative is out: the final follows at 300 ms.
        let mut seg = Segmenter::new(config);
        speech(&mut seg);
        let reqs = silence(&mut seg, 240);
        let t = tentatives(&reqs);
        assert_eq!(t.len(), 1, "{reqs:?}");
        assert!(seg.end_early(t[0].index).is_empty(), "not 300 ms yet");
        // (Ended by 360 ms of silence, not the usual 500.)
        let reqs = silence(&mut seg, 120);
        assert_eq!(
            finals(&reqs),
            vec![t[0]],
            "the tentative's audio, at 300 ms"
        );
        assert_eq!(ended(&reqs), [Ended::Sentence]);
        // Asked late (the decode took long): the final comes back at once.
        let mut seg = Segmenter::new(config);
        speech(&mut seg);
        let t = silence(&mut seg, 400);
        let reqs = seg.end_early(tentatives(&t)[0].index);
        assert_eq!(finals(&reqs), tentatives(&t));
        assert_eq!(seg.ended_early, 1);
        // Speech resumed before it: the normal end applies.
        let mut seg = Segmenter::new(config);
        speech(&mut seg);
        silence(&mut seg, 240);
        let mut reqs = run(&mut seg, &voice(500));
        assert!(seg.end_early(1).is_empty());
        reqs.extend(silence(&mut seg, 400));
        assert!(finals(&reqs).is_empty(), "400 ms < 500 ms: {reqs:?}");
        assert_eq!(ended(&silence(&mut seg, 200)), [Ended::Pause]);
        assert_eq!(seg.ended_early, 0);
        // Off (0), or for another utterance: nothing.
        let mut seg = Segmenter::new(SegmenterConfig::default());
        speech(&mut seg);
        silence(&mut seg, 400);
        assert!(seg.end_early(1).is_empty());
        assert!(finals(&silence(&mut seg, 100)).len() == 1);
        let mut seg = Segmenter::new(config);
        speech(&mut seg);
        silence(&mut seg, 400);
        assert!(seg.end_early(7).is_empty());
    }

    #[test]
    fn long_speech_is_split_and_end_of_stream_finalises() {
        let config = SegmenterConfig {
            max_utterance_ms: 3_000,
            ..Default::default()
        };
        let mut seg = Segmenter::new(config);
        let mut audio = vec![0.0; 8_000];
        audio.extend(voice(7_000));
        let mut reqs = run(&mut seg, &audio);
        assert!(seg.open.is_some(), "speech was still going on");
        reqs.extend(seg.finish());
        let finals = finals(&reqs);
        assert!(finals.len() >= 3, "{} finals", finals.len());
        let why = ended(&reqs);
        assert_eq!(why.last(), Some(&Ended::Stream), "{why:?}");
        assert!(
            why[..why.len() - 1].iter().all(|w| *w == Ended::Split),
            "{why:?}"
        );
        for pair in finals.windows(2) {
            assert_eq!(pair[1].index, pair[0].index + 1);
            // Split pieces follow each other without losing audio.
            assert!(
                pair[1].start_ms <= pair[0].end_ms + 20,
                "{:?} then {:?}",
                (pair[0].start_ms, pair[0].end_ms),
                (pair[1].start_ms, pair[1].end_ms)
            );
        }
        for u in &finals {
            assert!(
                u.end_ms - u.start_ms <= 3_000,
                "{}..{}",
                u.start_ms,
                u.end_ms
            );
        }
        let total: u64 = finals.iter().map(|u| u.audio.len() as u64).sum();
        assert!(
            total >= 7_000 * PER_MS as u64 - 16_000,
            "audio lost: {total}"
        );
    }

    #[test]
    fn a_long_turn_ends_at_a_shorter_pause_once_it_is_long() {
        // Phrases of 3 s with 250 ms pauses between them, then the end.
        let config = SegmenterConfig {
            long_utterance_ms: 5_000,
            long_pause_ms: 200,
            ..Default::default()
        };
        let audio = phrases(4, 3_000, 250);
        let mut seg = Segmenter::new(config);
        let reqs = run(&mut seg, &audio);
        let got = finals(&reqs);
        // The first pause comes at 3 s of speech: too short to end at it.
        // The second, at 6.25 s, ends the first utterance; the next runs
        // over two phrases again, and ends at 200 ms of the last silence.
        assert_eq!(got.len(), 2, "{:?}", ended(&reqs));
        assert_eq!(ended(&reqs), [Ended::Pause, Ended::Pause]);
        assert_eq!(seg.ended_long, 2);
        let first = got[0];
        assert!(
            (6_200..=6_800).contains(&(first.end_ms - first.start_ms)),
            "{}..{}",
            first.start_ms,
            first.end_ms
        );
        // Not cut inside speech: the next starts in the pause or after.
        assert!(
            got[1].start_ms >= first.end_ms - 20,
            "{:?}",
            got[1].start_ms
        );
        // Its tentative final, asked at the pause's first 100 ms, has the
        // same audio: the final's decode starts before the pause ends.
        assert!(tentatives(&reqs).iter().any(|t| t.audio == first.audio));

        // Off (the default): one utterance, the short pauses kept inside.
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let reqs = run(&mut seg, &audio);
        assert_eq!(ended(&reqs), [Ended::Pause]);
        assert_eq!(seg.ended_long, 0);
    }

    #[test]
    fn a_long_turn_with_only_short_breaths_ends_at_one_before_the_split() {
        // Phrases of 2 s with 120 ms breaths between them: shorter than
        // `long_pause_ms`, so without the ramp nothing ends them before
        // `max_utterance_ms` splits them wherever it is quietest.
        let config = |ramp| SegmenterConfig {
            long_utterance_ms: 8_000,
            long_pause_ms: 150,
            long_pause_ramp_ms: ramp,
            ..Default::default()
        };
        let audio = phrases(8, 2_000, 120);

        let mut seg = Segmenter::new(config(4_000));
        let reqs = run(&mut seg, &audio);
        let got = finals(&reqs);
        assert_eq!(ended(&reqs), [Ended::Pause, Ended::Pause]);
        assert_eq!(seg.ended_long, 1);
        // Not at the breaths before the pause needed has come down to
        // them (150 ms at 8 s, 100 ms at 12 s), and not as late as a split.
        let first = got[0].end_ms - got[0].start_ms;
        assert!((9_000..14_000).contains(&first), "{first} ms");
        assert!(got[1].start_ms >= got[0].end_ms - 20, "{:?}", got[1]);

        let mut seg = Segmenter::new(config(0));
        let reqs = run(&mut seg, &audio);
        assert_eq!(ended(&reqs), [Ended::Split, Ended::Pause]);
        assert_eq!(seg.ended_long, 0);
    }

    #[test]
    fn a_long_utterances_partials_decode_only_what_follows_its_pieces() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut audio = vec![0.0; 8_000];
        audio.extend(voice(14_000));
        let reqs = run(&mut seg, &audio);
        let mut pieces = Vec::new();
        let mut settled = 0;
        for r in &reqs {
            match r {
                Request::Piece(u, n) => {
                    assert_eq!(*n, pieces.len(), "pieces in order");
                    settled += u.audio.len();
                    pieces.push(u.clone());
                }
                Request::Partial(u) => {
                    // Its audio is what follows the pieces, and stays
                    // within the window (and one partial step).
                    let utterance_samples = (u.end_ms - u.start_ms) as usize * PER_MS;
                    assert!(
                        (utterance_samples - settled).abs_diff(u.audio.len()) <= FRAME,
                        "{} + {} != {utterance_samples}",
                        settled,
                        u.audio.len()
                    );
                    assert!(u.audio.len() <= 7_100 * PER_MS, "{}", u.audio.len());
                }
                _ => {}
            }
        }
        assert!(pieces.len() >= 2, "{} pieces", pieces.len());
        // Each piece is at least 2 s and cut on a frame boundary, one
        // after the other.
        for p in &pieces {
            assert!(p.audio.len() >= 2_000 * PER_MS && p.audio.len() % FRAME == 0);
            assert_eq!(p.start_ms, pieces[0].start_ms, "the utterance's start");
        }
        // The final is the whole utterance.
        let reqs = run(&mut seg, &vec![0.0; 16_000]);
        let f = finals(&reqs);
        assert_eq!(f.len(), 1);
        assert!(f[0].audio.len() >= 14_000 * PER_MS, "{}", f[0].audio.len());
        // Off (0): every partial decodes the whole utterance.
        let mut seg = Segmenter::new(SegmenterConfig {
            partial_window_ms: 0,
            ..Default::default()
        });
        let reqs = run(&mut seg, &audio);
        assert!(!reqs.iter().any(|r| matches!(r, Request::Piece(..))));
        let longest = reqs
            .iter()
            .filter_map(|r| match r {
                Request::Partial(u) => Some(u.audio.len()),
                _ => None,
            })
            .max();
        assert!(longest > Some(12_000 * PER_MS), "{longest:?}");
    }

    #[test]
    fn silence_noise_and_tones_make_no_final_with_audio() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut audio = vec![0.0; 16_000];
        // Steady white-ish noise (LCG), then a hold tone.
        let mut x: u32 = 1;
        audio.extend((0..16_000 * 10).map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 16) as f32 / 65_536.0 * 0.2 - 0.1
        }));
        audio.extend((0..16_000 * 5).map(|i| (i as f32 * 0.166_9).sin() * 0.3));
        let reqs: Vec<Request> = run(&mut seg, &audio)
            .into_iter()
            .chain(seg.finish())
            .collect();
        assert!(
            reqs.iter()
                .all(|r| matches!(r, Request::Final(u, _) if u.audio.is_empty())
                    || matches!(r, Request::Partial(_) | Request::Started(..))),
            "{:?}",
            reqs.iter()
                .map(|r| match r {
                    Request::Started(i, at) => format!("S{i} {at}"),
                    Request::Partial(u) => format!("P{} {}-{}", u.index, u.start_ms, u.end_ms),
                    Request::Piece(u, n) => format!("piece {n} of {}", u.index),
                    Request::Tentative(u) => format!("T{} {}-{}", u.index, u.start_ms, u.end_ms),
                    Request::Resumed(i) => format!("R{i}"),
                    Request::Final(u, _) =>
                        format!("F{} {}-{} {}", u.index, u.start_ms, u.end_ms, u.audio.len()),
                })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_announced_utterance_dropped_as_a_tone_still_gets_an_empty_final_and_tones_are_not_announced()
     {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut audio = vec![0.0; 8_000];
        // A voice for 300 ms (announced), then a held 1 kHz tone for 1.2 s
        // in the same utterance: a tone on the whole, dropped.
        audio.extend(voice(300));
        audio.extend((0..16 * 1_200).map(|i| (i as f32 * std::f32::consts::FRAC_PI_8).sin() * 0.3));
        audio.extend(vec![0.0; 16_000]);
        let reqs: Vec<Request> = run(&mut seg, &audio)
            .into_iter()
            .chain(seg.finish())
            .collect();
        let started = reqs
            .iter()
            .filter_map(|r| match r {
                Request::Started(i, _) => Some(*i),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert!(!started.is_empty(), "{reqs:?}");
        let closed: Vec<u64> = finals(&reqs).iter().map(|u| u.index).collect();
        assert_eq!(started, closed, "each announced utterance is closed");
        assert!(finals(&reqs).iter().all(|u| u.audio.is_empty()));
        assert_eq!(seg.dropped, started.len() as u64);
        // A tone alone is never announced.
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let tone: Vec<f32> = (0..16 * 2_000)
            .map(|i| (i as f32 * std::f32::consts::FRAC_PI_8).sin() * 0.3)
            .collect();
        let reqs = run(&mut seg, &tone);
        assert!(
            !reqs.iter().any(|r| matches!(r, Request::Started(..))),
            "{reqs:?}"
        );
    }
}
