//! Live call metrics from transcript events alone (no LLM).
//!
//! Times are the utterances' `startMs`/`endMs`. Both legs of a call start
//! together (ari-coach opens them at once), so the two speakers' times are
//! read on one call timeline. How each figure is computed:
//! - `agentTalkRatio`: agent speech / (agent + customer speech), whole call;
//!   `agentTalkRatio2m` the same over the last two minutes of the timeline.
//! - `agentWpm`, `customerWpm`: words of final transcripts per minute of
//!   that speaker's own speech (speaking rate, not per minute of call).
//! - `silenceMs`: wall-clock time since the transcript that reached furthest
//!   on the timeline arrived (partials included, so it stays near zero while
//!   anyone speaks). It runs about half a second short of the real gap: a
//!   final arrives that long after its speech ended.
//! - `overtalkMs`: time both parties spoke at once (overlap of their
//!   utterances).
//! - `longestAgentMonologueMs`: the longest stretch of agent speech with no
//!   customer speech and no pause over 2 s.
//! - `customerQuestions`: customer final utterances with a question mark.

use std::time::Instant;

use crate::event::Figures;

/// Gaps up to this long do not end a monologue.
const MONOLOGUE_GAP_MS: u64 = 2_000;
/// The window of the recent talk ratio.
const RECENT_MS: u64 = 120_000;

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
    /// Furthest `endMs` seen (partials included), and when it arrived.
    timeline_end: u64,
    last_arrival: Option<Instant>,
}

impl CallMetrics {
    /// Takes note of a transcript (partial or final).
    pub fn transcript(
        &mut self,
        agent: bool,
        text: &str,
        start_ms: u64,
        end_ms: u64,
        is_final: bool,
        at: Instant,
    ) {
        if end_ms >= self.timeline_end {
            self.timeline_end = end_ms;
            self.last_arrival = Some(at);
        }
        if !is_final || end_ms <= start_ms {
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

    pub fn snapshot(&self, now: Instant) -> Figures {
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
        let silence_ms = self
            .last_arrival
            .map_or(0, |t| now.saturating_duration_since(t).as_millis() as u64);
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
    use std::time::Duration;

    #[test]
    fn a_scripted_call() {
        let t0 = Instant::now();
        let mut m = CallMetrics::default();
        // Agent 0-10 s (20 words), customer 9-14 s (10 words, a question),
        // agent 15-20 s and 21-30 s (monologue 15-30 s).
        m.transcript(true, &"palabra ".repeat(20), 0, 10_000, true, t0);
        m.transcript(
            false,
            &format!("{} ¿cuánto cuesta?", "palabra ".repeat(8)),
            9_000,
            14_000,
            true,
            t0,
        );
        m.transcript(true, "uno dos tres", 15_000, 20_000, true, t0);
        m.transcript(true, "cuatro cinco", 21_000, 30_000, true, t0);
        // A partial of the customer that ends later than everything.
        m.transcript(false, "y", 31_000, 32_000, false, t0);
        let s = m.snapshot(t0 + Duration::from_millis(1_500));
        assert_eq!(s.agent_speech_ms, 24_000);
        assert_eq!(s.customer_speech_ms, 5_000);
        assert_eq!(s.agent_talk_ratio, round3(24.0 / 29.0));
        assert_eq!(s.agent_wpm, round1(25.0 * 60.0 / 24.0));
        assert_eq!(s.customer_wpm, round1(10.0 * 60.0 / 5.0));
        assert_eq!(s.overtalk_ms, 1_000);
        assert_eq!(s.longest_agent_monologue_ms, 15_000);
        assert_eq!(s.customer_questions, 1);
        assert_eq!(s.silence_ms, 1_500);
    }

    #[test]
    fn recent_ratio_looks_at_the_last_two_minutes() {
        let t0 = Instant::now();
        let mut m = CallMetrics::default();
        m.transcript(true, "hola", 0, 100_000, true, t0);
        m.transcript(false, "hola", 130_000, 190_000, true, t0);
        m.transcript(true, "vale", 190_000, 200_000, true, t0);
        let s = m.snapshot(t0);
        // Window 80-200 s: agent 20 + 10 s, customer 60 s.
        assert_eq!(s.agent_talk_ratio_2m, round3(30.0 / 90.0));
        assert_eq!(s.agent_talk_ratio, round3(110.0 / 170.0));
    }

    #[test]
    fn nothing_yet_is_all_zero() {
        let s = CallMetrics::default().snapshot(Instant::now());
        assert_eq!(
            (s.agent_talk_ratio, s.silence_ms, s.agent_wpm),
            (0.0, 0, 0.0)
        );
    }
}
