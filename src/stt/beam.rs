//! Beam search over Whisper's decoder, done here rather than by
//! whisper.cpp: its beam search draws each step's candidates at random
//! from the token distribution (`whisper_sample_token_topk` samples k
//! times and keeps duplicates out), so it often never tries the likeliest
//! continuations and a revision's text depended on the draw ("sumen suje
//! asido guardado" for "Su mensaje ha sido guardado"). This is OpenAI's
//! beam search (`whisper/decoding.py`, `BeamSearchDecoder`, patience 1):
//! each step extends every open beam by its `width + 1` likeliest tokens,
//! keeps the `width` best open sequences by summed log-probability, and
//! stops once `width` have ended; the winner has the best mean
//! log-probability per token.
//!
//! It runs on a state whose encoder output is already there (a one-token
//! `whisper_full` on the same audio, which also sets the window and gives
//! the no-speech probability), through `whisper_decode`, which keeps one
//! sequence in the decoder's cache: each beam is decoded from where it
//! parts from the sequence in the cache, and the beams are visited in
//! token order so that neighbours share most of their prefix.

use whisper_rs::{WhisperContext, WhisperState, WhisperTokenId};

use super::engine::EngineError;

/// Tokens whisper.cpp never lets its decoders write with `suppress_nst`
/// (OpenAI's `non_speech_tokens`): each alone and after a space.
const NON_SPEECH: &[&str] = &[
    "\"",
    "#",
    "(",
    ")",
    "*",
    "+",
    "/",
    ":",
    ";",
    "<",
    "=",
    ">",
    "@",
    "[",
    "\\",
    "]",
    "^",
    "_",
    "`",
    "{",
    "|",
    "}",
    "~",
    "「",
    "」",
    "『",
    "』",
    "<<",
    ">>",
    "<<<",
    ">>>",
    "--",
    "---",
    "-(",
    "-[",
    "('",
    "(\"",
    "((",
    "))",
    "(((",
    ")))",
    "[[",
    "]]",
    "{{",
    "}}",
    "♪♪",
    "♪♪♪",
    "♩",
    "♪",
    "♫",
    "♬",
    "♭",
    "♮",
    "♯",
];

/// What the search needs of the vocabulary, read once per model.
pub struct Vocab {
    eot: WhisperTokenId,
    /// A space alone: never the first token (OpenAI's `suppress_blank`).
    space: Option<WhisperTokenId>,
    /// Text tokens never written (non-speech symbols, a word starting
    /// with `-` or `'`).
    suppressed: Vec<WhisperTokenId>,
    /// Positions the decoder has (448): prompt and text together.
    n_text_ctx: usize,
}

impl Vocab {
    pub fn new(ctx: &WhisperContext) -> Self {
        let eot = ctx.token_eot();
        let mut suppressed = Vec::new();
        let mut space = None;
        for id in 0..eot {
            let Ok(bytes) = ctx.token_to_bytes(id) else {
                continue;
            };
            if bytes == b" " {
                space = Some(id);
            }
            let bare = bytes.strip_prefix(b" ").unwrap_or(bytes);
            let nst = NON_SPEECH.iter().any(|t| t.as_bytes() == bare);
            if nst || bytes == b" -" || bytes == b" '" {
                suppressed.push(id);
            }
        }
        Self {
            eot,
            space,
            suppressed,
            n_text_ctx: ctx.n_text_ctx().max(0) as usize,
        }
    }

    /// The decoder's prompt as `whisper_full` makes it: the previous-text
    /// marker and the initial prompt's last tokens (at most half the text
    /// window), then start, language and task, and no timestamps.
    pub fn prompt(
        ctx: &WhisperContext,
        initial: Option<&str>,
        lang_id: Option<i32>,
    ) -> Result<Vec<WhisperTokenId>, EngineError> {
        let mut prompt = Vec::new();
        if let Some(text) = initial.filter(|t| !t.is_empty()) {
            let tokens = super::engine::tokenize(ctx, text)?;
            let most = (ctx.n_text_ctx().max(2) / 2 - 1) as usize;
            prompt.push(ctx.token_prev());
            prompt.extend_from_slice(&tokens[tokens.len().saturating_sub(most)..]);
        }
        prompt.push(ctx.token_sot());
        if ctx.is_multilingual() {
            prompt.push(ctx.token_lang(lang_id.unwrap_or(0)));
            prompt.push(ctx.token_transcribe());
        }
        prompt.push(ctx.token_not());
        Ok(prompt)
    }

    /// The `k` likeliest next tokens and their log-probabilities, from the
    /// decoder's `logits`, with whisper.cpp's filters for text without
    /// timestamps: no special token but the end, no non-speech symbol, and
    /// neither the end nor a bare space first. (Two plain passes over the
    /// vocabulary: this runs for every beam and token, also in the tests'
    /// unoptimised builds.)
    fn next(
        &self,
        logits: &[f32],
        first: bool,
        k: usize,
        masked: &mut Vec<f32>,
    ) -> Vec<(WhisperTokenId, f32)> {
        let eot = self.eot as usize;
        masked.clear();
        // The special tokens come after the end: left out.
        masked.extend_from_slice(&logits[..(eot + 1).min(logits.len())]);
        for &id in &self.suppressed {
            if let Some(l) = masked.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        if first {
            for id in [Some(self.eot), self.space].into_iter().flatten() {
                if let Some(l) = masked.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        top_logprobs(masked, k)
    }
}

/// The `k` highest of `logits` as log-probabilities (log-softmax over all
/// of them), highest first; none that cannot be.
fn top_logprobs(logits: &[f32], k: usize) -> Vec<(WhisperTokenId, f32)> {
    // (index, logit), highest first.
    let mut top: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    let mut floor = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > floor || (top.len() < k && l > f32::NEG_INFINITY) {
            let at = top.iter().position(|&(_, t)| l > t).unwrap_or(top.len());
            top.insert(at, (i, l));
            top.truncate(k);
            if top.len() == k {
                floor = top[k - 1].1;
            }
        }
    }
    let Some(&(_, max)) = top.first() else {
        return Vec::new();
    };
    let mut sum = 0.0f64;
    for &l in logits {
        sum += f64::from((l - max).exp());
    }
    let log_sum = max + sum.ln() as f32;
    top.into_iter()
        .map(|(i, l)| (i as WhisperTokenId, l - log_sum))
        .collect()
}

/// One sequence the search holds: its tokens after the prompt (without
/// the end) and their summed log-probability (with the end's, once ended).
#[derive(Debug, Clone)]
pub struct Hypothesis {
    pub tokens: Vec<WhisperTokenId>,
    pub logprob: f64,
}

impl Hypothesis {
    /// Mean log-probability per token: how the winner is chosen.
    pub fn score(&self) -> f64 {
        self.logprob / self.tokens.len().max(1) as f64
    }
}

/// Searches `width` beams for the text of the audio whose encoder output
/// `state` holds, after `prompt`, for at most `max_tokens` tokens;
/// `stop` ends it early (an error). `None`: nothing but the end.
pub fn search(
    state: &mut WhisperState,
    vocab: &Vocab,
    prompt: &[WhisperTokenId],
    width: usize,
    max_tokens: usize,
    threads: usize,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Hypothesis>, EngineError> {
    let width = width.max(1);
    let steps = steps(prompt.len(), max_tokens, vocab.n_text_ctx);
    let mut beams = vec![Hypothesis {
        tokens: Vec::new(),
        logprob: 0.0,
    }];
    let mut ended: Vec<Hypothesis> = Vec::new();
    // The sequence the decoder's cache holds.
    let mut cached: Vec<WhisperTokenId> = Vec::new();
    let mut masked = Vec::with_capacity(vocab.eot as usize + 1);
    let mut sequence = Vec::new();
    let decode = |state: &mut WhisperState, tokens: &[WhisperTokenId], past: usize| {
        state
            .decode(tokens, past, threads.max(1))
            .map_err(|e| EngineError::Whisper(e.to_string()))
    };
    for _ in 0..steps {
        beams.sort_by(|a, b| a.tokens.cmp(&b.tokens));
        // (score, beam, token)
        let mut candidates: Vec<(f64, usize, WhisperTokenId)> = Vec::new();
        for (i, beam) in beams.iter().enumerate() {
            // Asked before each decoder pass (a few milliseconds each on a
            // CPU), so that a final waits no longer for a revision to stop
            // than it did inside whisper.cpp.
            if stop() {
                return Err(EngineError::Whisper("decode stopped".into()));
            }
            sequence.clear();
            sequence.extend_from_slice(prompt);
            sequence.extend_from_slice(&beam.tokens);
            let shared = cached
                .iter()
                .zip(&sequence)
                .take_while(|(a, b)| a == b)
                .count()
                .min(sequence.len() - 1);
            // `whisper_get_logits` gives a batch's first row, and only its
            // last token's is computed: the last token goes alone.
            let last = sequence.len() - 1;
            if shared < last {
                decode(state, &sequence[shared..last], shared)?;
            }
            decode(state, &sequence[last..], last)?;
            std::mem::swap(&mut cached, &mut sequence);
            let logits = state
                .get_logits()
                .map_err(|e| EngineError::Whisper(e.to_string()))?;
            let next = vocab.next(logits, beam.tokens.is_empty(), width + 1, &mut masked);
            for (token, lp) in next {
                candidates.push((beam.logprob + f64::from(lp), i, token));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut next = Vec::with_capacity(width);
        for (logprob, i, token) in candidates {
            let tokens = beams[i].tokens.clone();
            if token == vocab.eot {
                if ended.len() < width {
                    ended.push(Hypothesis { tokens, logprob });
                }
            } else {
                let mut tokens = tokens;
                tokens.push(token);
                next.push(Hypothesis { tokens, logprob });
                if next.len() == width {
                    break;
                }
            }
        }
        beams = next;
        if ended.len() >= width || beams.is_empty() {
            break;
        }
    }
    // Cut at the length limit: the open beams compete too.
    if ended.len() < width {
        ended.extend(beams);
    }
    Ok(ended
        .into_iter()
        .filter(|h| !h.tokens.is_empty())
        .max_by(|a, b| a.score().total_cmp(&b.score())))
}

/// Whisper's temperature fallback (OpenAI's decoder and whisper.cpp):
/// a text whose last 32 tokens are this repetitive (the entropy of their
/// counts, in nats) is a failed decode ...
pub const ENTROPY_MIN: f64 = 2.4;
/// ... and so is one under this mean log-probability per token, unless
/// the audio is likely no speech at all (`NO_SPEECH_MIN`).
pub const MEAN_LOGPROB_MIN: f64 = -1.0;
/// whisper.cpp's `no_speech_thold`: above it, a weak text is silence.
pub const NO_SPEECH_MIN: f32 = 0.6;
/// How many of the last tokens the repetition test counts.
const ENTROPY_TOKENS: usize = 32;

/// Whether a searched text looks like a failed decode, by whisper.cpp's
/// test for its temperature fallback: a repetition loop (over 32 tokens,
/// the last 32 with entropy under [`ENTROPY_MIN`]), or a mean
/// log-probability under [`MEAN_LOGPROB_MIN`] where `no_speech_prob` is
/// under [`NO_SPEECH_MIN`]. Nothing found (only the end) is no failure.
pub fn looks_failed(found: Option<&Hypothesis>, no_speech_prob: f32) -> bool {
    let Some(h) = found else {
        return false;
    };
    let n = h.tokens.len();
    let looped = n > ENTROPY_TOKENS && entropy(&h.tokens[n - ENTROPY_TOKENS..]) < ENTROPY_MIN;
    looped || (h.score() < MEAN_LOGPROB_MIN && no_speech_prob < NO_SPEECH_MIN)
}

/// The entropy (nats) of how often each token occurs in `tokens`.
fn entropy(tokens: &[WhisperTokenId]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for t in tokens {
        *counts.entry(t).or_insert(0usize) += 1;
    }
    let n = tokens.len() as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// How many tokens a search may write after a prompt of `prompt` tokens:
/// `max_tokens`, but never past the decoder's positions (a position past
/// them is outside its tables), nor past half of them, as whisper.cpp
/// decodes at most.
fn steps(prompt: usize, max_tokens: usize, n_text_ctx: usize) -> usize {
    max_tokens
        .min((n_text_ctx / 2).saturating_sub(4))
        .min(n_text_ctx.saturating_sub(prompt))
}

/// The text of `tokens`, as whisper.cpp joins them.
pub fn text(ctx: &WhisperContext, tokens: &[WhisperTokenId]) -> String {
    let mut bytes = Vec::new();
    for &t in tokens {
        if let Ok(b) = ctx.token_to_bytes(t) {
            bytes.extend_from_slice(b);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_likeliest_come_first_as_log_probabilities() {
        let l = [-3.0, f32::NEG_INFINITY, 2.0, 1.0, 0.0];
        let top = top_logprobs(&l, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 3]);
        let sum: f32 = [-3.0f32, 2.0, 1.0, 0.0].iter().map(|l| l.exp()).sum();
        assert!((top[0].1 - (2.0 - sum.ln())).abs() < 1e-5, "{top:?}");
        assert!((top[1].1 - (1.0 - sum.ln())).abs() < 1e-5, "{top:?}");
        // Fewer than asked where the rest cannot be; none where none can.
        assert_eq!(top_logprobs(&l, 9).len(), 4);
        assert!(top_logprobs(&[f32::NEG_INFINITY; 3], 3).is_empty());
        // Ties and a decreasing run keep the order.
        let d = [5.0, 4.0, 3.0, 2.0, 1.0];
        let ids: Vec<_> = top_logprobs(&d, 3).iter().map(|t| t.0).collect();
        assert_eq!(ids, [0, 1, 2]);
    }

    #[test]
    fn a_loop_or_a_weak_text_is_a_failed_decode_as_whisper_cpp_tests_it() {
        let h = |tokens: Vec<WhisperTokenId>, mean: f64| Hypothesis {
            logprob: mean * tokens.len() as f64,
            tokens,
        };
        // 33 tokens, 4 kinds in the last 32 (8 each): entropy ln 4 = 1.39.
        let looped: Vec<_> = (0..33).map(|i| i % 4).collect();
        assert!(looks_failed(Some(&h(looped.clone(), -0.1)), 0.0));
        // The same loop at 32 tokens is too short to judge by entropy.
        assert!(!looks_failed(Some(&h(looped[..32].to_vec(), -0.1)), 0.0));
        // 40 tokens, all different: entropy ln 32 = 3.47.
        let varied: Vec<_> = (0..40).collect();
        assert!((entropy(&varied[8..]) - 32f64.ln()).abs() < 1e-9);
        assert!(!looks_failed(Some(&h(varied.clone(), -0.1)), 0.0));
        // Weak: failed where the audio is likely speech, not where silence.
        assert!(looks_failed(Some(&h(varied.clone(), -1.2)), 0.5));
        assert!(!looks_failed(Some(&h(varied, -1.2)), 0.7));
        assert!(!looks_failed(None, 0.0));
    }

    #[test]
    fn a_search_never_writes_past_the_decoders_positions() {
        // The longest prompt (marker, 223 tokens, 4 task tokens) and 30 s.
        assert_eq!(steps(228, 264, 448), 220);
        assert_eq!(steps(4, 40, 448), 40);
        assert_eq!(steps(300, 264, 448), 148);
        assert_eq!(steps(500, 10, 448), 0);
    }

    #[test]
    fn the_winner_has_the_best_mean() {
        let short = Hypothesis {
            tokens: vec![1],
            logprob: -2.0,
        };
        let long = Hypothesis {
            tokens: vec![1, 2, 3, 4],
            logprob: -4.0,
        };
        assert!(long.score() > short.score());
    }
}
