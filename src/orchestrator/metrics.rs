//! Live call metrics from transcript events alone (no LLM).
//!
//! Times are the utterances' `startMs`/`endMs`. Both legs of a call start
//! together (ari-coach opens them at once), so the two speakers' times are
//! read on one call timeline. How each figure is computed:
//! - `agentTalkRatio`: agent speech / (agent + customer speech), whole call;
//!   `agentTalkRatio2m` the same over the last two minutes of the timeline.
//! - `agentWpm`, `customerWpm`: words of final transcripts per minute of
//!   that speaker's own speech (speaking rate, not per minute of call).
//! - `silenceMs`: on the audio timeline, never from when transcripts
//!   arrive (stt may lag by seconds): zero while an utterance is open (its
//!   `speech` event or a partial came, its final not yet); else the call's
//!   time now, on the audio's clock, less the furthest `endMs` heard. The
//!   audio's clock is the call's (from `call.started`) less the legs' late
//!   start, learnt from the `speech` events, which stt sends in real time.
//! - `overtalkMs`: time both parties spoke at once (overlap of their
//!   utterances).
//! - `longestAgentMonologueMs`: the longest stretch of agent speech with no
//!   customer speech and no pause over 2 s.
//! - `customerQuestions`: customer final utterances with a question mark.

use std::collections::HashMap;

use crate::event::Figures;

/// Gaps up to this long do not end a monologue.
const MONOLOGUE_GAP_MS: u64 = 2_000;
/// The window of the recent talk ratio.
const RECENT_MS: u64 = 120_000;
/// An utterance open this long with no final is taken as lost (stt gone):
/// it stops holding the silence at zero.
const OPEN_EXPIRY_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq)]
struct Span {
    agent: bool,
    start: u64,
    end: u64,
}

/// What is known of one call's speech.
#[derive(Debug, Default)]
pub struct CallMetrics {
    finals: Vec<Span>,
    agent_words: u64,
    customer_words: u64,
    customer_questions: u64,
    /// Time both spoke at once, kept as finals arrive so a snapshot (every
    /// few seconds for every call) does not compare every pair again.
    overtalk_ms: u64,
    /// Furthest `endMs` seen (partials included).
    timeline_end: u64,
    /// Utterances begun and not finished: id -> call time it was heard of.
    open: HashMap<String, u64>,
    /// How far the legs' audio started after the call (ms), once known.
    audio_offset: Option<u64>,
}

impl CallMetrics {
    /// Someone started speaking (a `speech` event): `start_ms` on the audio
    /// timeline, `call_ms` the call's time now.
    pub fn speech(&mut self, utterance: &str, start_ms: u64, call_ms: u64) {
        self.open.insert(utterance.to_owned(), call_ms);
        // The event left stt in real time, a little after `start_ms`: the
        // smallest difference seen is the legs' late start (slightly less,
        // so silence is never overstated).
        let offset = call_ms.saturating_sub(start_ms);
        self.audio_offset = Some(self.audio_offset.map_or(offset, |o| o.min(offset)));
    }

    /// Takes note of a transcript (partial or final).
    #[allow(clippy::too_many_arguments)]
    pub fn transcript(
        &mut self,
        agent: bool,
        text: &str,
        utterance: &str,
        start_ms: u64,
        end_ms: u64,
        is_final: bool,
        call_ms: u64,
    ) {
        self.timeline_end = self.timeline_end.max(end_ms);
        if is_final {
            self.open.remove(utterance);
        } else {
            self.open.entry(utterance.to_owned()).or_insert(call_ms);
        }
        if !is_final || end_ms <= start_ms || text.trim().is_empty() {
            return;
        }
        self.overtalk_ms += self
            .finals
            .iter()
            .filter(|s| s.agent != agent)
            .map(|s| end_ms.min(s.end).saturating_sub(start_ms.max(s.start)))
            .sum::<u64>();
        self.finals.push(Span {
            agent,
            start: start_ms,
            end: end_ms,
        });
        let words = text.split_whitespace().count() as u64;
        if agent {
            self.agent_words += words;
        } else {
            self.customer_words += words;
            if text.contains('?') {
                self.customer_questions += 1;
            }
        }
    }

    /// How far into the call the audio heard reaches (ms): the furthest
    /// `endMs` plus the legs' late start. Past the wall-clock time only for
    /// audio played faster than real time (`demo --fast`, a replay).
    pub fn audio_end_ms(&self) -> u64 {
        self.timeline_end + self.audio_offset.unwrap_or(0)
    }

    /// Utterances begun whose final has not come (and not given up on).
    pub fn open_utterances(&self, call_ms: u64) -> usize {
        self.open
            .values()
            .filter(|&&at| call_ms.saturating_sub(at) < OPEN_EXPIRY_MS)
            .count()
    }

    /// The figures at `call_ms` into the call.
    pub fn snapshot(&self, call_ms: u64) -> Figures {
        let speech = |agent: bool, from: u64| -> u64 {
            self.finals
                .iter()
                .filter(|s| s.agent == agent && s.end > from)
                .map(|s| s.end - s.start.max(from))
                .sum()
        };
        let ratio = |a: u64, c: u64| {
            if a + c == 0 {
                0.0
            } else {
                a as f64 / (a + c) as f64
            }
        };
        let (agent_ms, customer_ms) = (speech(true, 0), speech(false, 0));
        let recent_from = self.timeline_end.saturating_sub(RECENT_MS);
        let wpm = |words: u64, ms: u64| {
            if ms == 0 {
                0.0
            } else {
                words as f64 * 60_000.0 / ms as f64
            }
        };
        let heard_anything = self.timeline_end > 0 || !self.open.is_empty();
        let silence_ms = if !heard_anything || self.open_utterances(call_ms) > 0 {
            0
        } else {
            call_ms
                .saturating_sub(self.audio_offset.unwrap_or(0))
                .saturating_sub(self.timeline_end)
        };
        Figures {
            agent_talk_ratio: round3(ratio(agent_ms, customer_ms)),
            agent_talk_ratio_2m: round3(ratio(
                speech(true, recent_from),
                speech(false, recent_from),
            )),
            agent_wpm: round1(wpm(self.agent_words, agent_ms)),
            customer_wpm: round1(wpm(self.customer_words, customer_ms)),
            silence_ms,
            overtalk_ms: self.overtalk_ms,
            longest_agent_monologue_ms: self.longest_monologue(),
            customer_questions: self.customer_questions,
            agent_speech_ms: agent_ms,
            customer_speech_ms: customer_ms,
        }
    }

    fn longest_monologue(&self) -> u64 {
        let mut spans: Vec<&Span> = self.finals.iter().collect();
        spans.sort_by_key(|s| s.start);
        let mut best = 0;
        let mut run: Option<(u64, u64)> = None;
        for s in spans {
            if !s.agent {
                run = None;
                continue;
            }
            run = match run {
                Some((start, end)) if s.start <= end + MONOLOGUE_GAP_MS => {
                    Some((start, end.max(s.end)))
                }
                _ => Some((s.start, s.end)),
            };
            if let Some((start, end)) = run {
                best = best.max(end - start);
            }
        }
        best
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scripted_call() {
        let mut m = CallMetrics::default();
        // Agent 0-10 s (20 words), customer 9-14 s (10 words, a question),
        // agent 15-20 s and 21-30 s (monologue 15-30 s).
        m.transcript(true, &"palabra ".repeat(20), "a1", 0, 10_000, true, 10_500);
        m.transcript(
            false,
            &format!("{} ¿cuánto cuesta?", "palabra ".repeat(8)),
            "c1",
            9_000,
            14_000,
            true,
            14_500,
        );
        m.transcript(true, "uno dos tres", "a2", 15_000, 20_000, true, 20_500);
        m.transcript(true, "cuatro cinco", "a3", 21_000, 30_000, true, 30_500);
        // A partial of the customer that ends later than everything, then
        // its (empty) final: the utterance was noise.
        m.transcript(false, "y", "c2", 31_000, 32_000, false, 32_300);
        assert_eq!(m.snapshot(32_400).silence_ms, 0, "open utterance");
        m.transcript(false, "", "c2", 31_000, 32_000, true, 32_500);
        let s = m.snapshot(33_500);
        assert_eq!(s.agent_speech_ms, 24_000);
        assert_eq!(s.customer_speech_ms, 5_000);
        assert_eq!(s.agent_talk_ratio, round3(24.0 / 29.0));
        assert_eq!(s.agent_wpm, round1(25.0 * 60.0 / 24.0));
        assert_eq!(s.customer_wpm, round1(10.0 * 60.0 / 5.0));
        assert_eq!(s.overtalk_ms, 1_000);
        assert_eq!(s.longest_agent_monologue_ms, 15_000);
        assert_eq!(s.customer_questions, 1);
        assert_eq!(s.silence_ms, 1_500);
        assert_eq!(m.audio_end_ms(), 32_000);
    }

    #[test]
    fn the_audio_heard_reaches_past_its_late_start() {
        let mut m = CallMetrics::default();
        // The legs started 2 s into the call; speech heard up to 69 s.
        m.speech("a1", 1_000, 3_100);
        m.transcript(true, "hola", "a1", 1_000, 69_000, true, 3_500);
        assert_eq!(m.audio_end_ms(), 71_100);
    }

    #[test]
    fn recent_ratio_looks_at_the_last_two_minutes() {
        let mut m = CallMetrics::default();
        m.transcript(true, "hola", "a1", 0, 100_000, true, 0);
        m.transcript(false, "hola", "c1", 130_000, 190_000, true, 0);
        m.transcript(true, "vale", "a2", 190_000, 200_000, true, 0);
        let s = m.snapshot(200_000);
        // Window 80-200 s: agent 20 + 10 s, customer 60 s.
        assert_eq!(s.agent_talk_ratio_2m, round3(30.0 / 90.0));
        assert_eq!(s.agent_talk_ratio, round3(110.0 / 170.0));
    }

    #[test]
    fn nothing_yet_is_all_zero() {
        let s = CallMetrics::default().snapshot(9_000);
        assert_eq!(
            (s.agent_talk_ratio, s.silence_ms, s.agent_wpm),
            (0.0, 0, 0.0)
        );
    }

    #[test]
    fn transcripts_that_lag_do_not_look_like_silence() {
        let mut m = CallMetrics::default();
        // The legs start 1 s into the call. The customer speaks 2-12 s of
        // audio (3-13 s of the call); stt is 20 s behind.
        m.speech("c1", 2_000, 3_300);
        for call_ms in [5_000, 12_000, 20_000, 30_000] {
            assert_eq!(m.snapshot(call_ms).silence_ms, 0, "at {call_ms}");
        }
        // The final comes 20 s late: the silence since 12 s of audio is
        // real, and counted from there, not from the final's arrival.
        m.transcript(false, "hola buenas", "c1", 2_000, 12_000, true, 32_000);
        let s = m.snapshot(33_000);
        assert_eq!(s.silence_ms, 33_000 - 1_300 - 12_000);
        // Someone speaks again: silence is zero at once, before any words.
        m.speech("a1", 22_500, 24_000 + 10_000);
        assert_eq!(m.snapshot(35_000).silence_ms, 0);
        // A start never finished (stt died) stops counting after a minute.
        assert_eq!(m.open_utterances(34_000), 1);
        assert_eq!(m.open_utterances(34_000 + OPEN_EXPIRY_MS), 0);
    }
}
