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
    n_vocab: usize,
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
            n_vocab: ctx.n_vocab().max(0) as usize,
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
            let tokens = ctx
                .tokenize(text, text.len() + 16)
                .map_err(|e| EngineError::Whisper(format!("cannot tokenize the prompt: {e}")))?;
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

    /// Log-probabilities of the next token from the decoder's `logits`,
    /// with whisper.cpp's filters for text without timestamps: no special
    /// token but the end, no non-speech symbol, and neither the end nor a
    /// bare space first.
    fn logprobs(&self, logits: &[f32], first: bool, out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(&logits[..self.n_vocab.min(logits.len())]);
        let eot = self.eot as usize;
        for l in out.iter_mut().skip(eot + 1) {
            *l = f32::NEG_INFINITY;
        }
        for &id in &self.suppressed {
            out[id as usize] = f32::NEG_INFINITY;
        }
        if first {
            out[eot] = f32::NEG_INFINITY;
            if let Some(space) = self.space {
                out[space as usize] = f32::NEG_INFINITY;
            }
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = out.iter().map(|&l| f64::from((l - max).exp())).sum();
        let log_sum = max + sum.ln() as f32;
        for l in out.iter_mut() {
            *l -= log_sum;
        }
    }
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
    let mut beams = vec![Hypothesis {
        tokens: Vec::new(),
        logprob: 0.0,
    }];
    let mut ended: Vec<Hypothesis> = Vec::new();
    // The sequence the decoder's cache holds.
    let mut cached: Vec<WhisperTokenId> = Vec::new();
    let mut logprobs = Vec::with_capacity(vocab.n_vocab);
    let mut sequence = Vec::new();
    for _ in 0..max_tokens.max(1) {
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
            let decode = |state: &mut WhisperState, tokens: &[WhisperTokenId], past: usize| {
                state
                    .decode(tokens, past, threads.max(1))
                    .map_err(|e| EngineError::Whisper(e.to_string()))
            };
            if shared < last {
                decode(state, &sequence[shared..last], shared)?;
            }
            decode(state, &sequence[last..], last)?;
            std::mem::swap(&mut cached, &mut sequence);
            let logits = state
                .get_logits()
                .map_err(|e| EngineError::Whisper(e.to_string()))?;
            vocab.logprobs(logits, beam.tokens.is_empty(), &mut logprobs);
            for (token, lp) in best(&logprobs, width + 1) {
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

/// The `k` likeliest tokens, likeliest first (none that cannot be).
fn best(logprobs: &[f32], k: usize) -> Vec<(WhisperTokenId, f32)> {
    let mut ids: Vec<(WhisperTokenId, f32)> = logprobs
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as WhisperTokenId, l))
        .collect();
    let k = k.min(ids.len());
    if k == 0 {
        return Vec::new();
    }
    ids.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    ids.truncate(k);
    ids.sort_by(|a, b| b.1.total_cmp(&a.1));
    ids
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
    fn the_likeliest_come_first() {
        let l = [-3.0, f32::NEG_INFINITY, -0.5, -1.0, -2.0];
        assert_eq!(best(&l, 2), vec![(2, -0.5), (3, -1.0)]);
        assert_eq!(best(&l, 9).len(), 4);
        assert!(best(&[f32::NEG_INFINITY], 3).is_empty());
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
