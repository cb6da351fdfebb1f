//! Whisper inference: one model loaded once and shared, one decoder state
//! per worker, and the filters that keep Whisper's inventions ("[Música]",
//! "Gracias por ver el video") out of the transcript.

use std::ffi::c_void;
use std::path::Path;
use std::sync::{Arc, Once};

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperState};

use super::beam::{self, Vocab};
use crate::text::normalise;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load Whisper model {path}: {message}")]
    Load { path: String, message: String },
    #[error("whisper: {0}")]
    Whisper(String),
}

/// Routes whisper.cpp's own logging into `tracing` instead of stderr.
pub fn silence_whisper_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(whisper_rs::install_logging_hooks);
}

/// How to decode.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Forced language code (`es`), or `None` to detect it.
    pub language: Option<String>,
    /// CPU threads for one decode.
    pub threads: usize,
    /// Domain prompt and hotwords, fed as Whisper's initial prompt.
    pub prompt: Option<String>,
    /// The stream's previous final (its tail), after `prompt`.
    pub context: Option<String>,
    /// Beam width; 1 is greedy.
    pub beam: usize,
    /// Fit the encoder window to the audio instead of 30 s, but never
    /// below this many encoder frames (50 per second; 1500 = always 30 s).
    pub min_audio_ctx: i32,
    /// Spoken numbers written as digits (Spanish: `text::numbers`).
    pub digits: bool,
    /// Decode again at a higher temperature when the result (greedy or
    /// searched) looks like a failure (Whisper's own test,
    /// [`beam::looks_failed`]: a low mean log-probability, or the low
    /// entropy of a repetition loop). For finals only: it costs a second
    /// decode where it triggers.
    pub fallback: bool,
}

/// Longest context carried from one utterance to the next, in bytes
/// (Whisper's prompt holds at most 224 tokens, shared with `prompt`).
const CONTEXT_BYTES: usize = 200;

/// Most tokens the domain prompt (with the hotwords) may take: Whisper
/// reads the last 224 tokens of its prompt, and the context (about 60
/// tokens of Spanish in `CONTEXT_BYTES`) comes after the domain prompt, so
/// a longer one would lose its first words without a word said.
pub const PROMPT_TOKENS_MAX: usize = 160;

impl DecodeOptions {
    /// With the stream's previous final text after the domain prompt, as
    /// Whisper's prompt: the words just said carry over a pause, as they
    /// do when a whole file is decoded at once.
    pub fn with_context(&self, context: &str) -> Self {
        let mut start = context.len().saturating_sub(CONTEXT_BYTES);
        while !context.is_char_boundary(start) {
            start += 1;
        }
        // Start at a word.
        let tail = match context[start..].find(' ') {
            Some(i) if start > 0 => &context[start + i + 1..],
            _ => &context[start..],
        };
        Self {
            context: Some(tail.to_owned()),
            ..self.clone()
        }
    }

    /// Whether Whisper is given an initial prompt: the domain prompt or
    /// the context.
    pub fn has_prompt(&self) -> bool {
        self.prompt.is_some() || self.context.is_some()
    }

    /// With no initial prompt at all: neither the context nor the domain
    /// prompt (either can make Whisper echo it).
    pub fn without_prompt(&self) -> Self {
        Self {
            prompt: None,
            context: None,
            ..self.clone()
        }
    }

    /// What Whisper is given as its initial prompt: the domain prompt,
    /// then the context.
    fn initial_prompt(&self) -> Option<String> {
        match (&self.prompt, &self.context) {
            (Some(p), Some(c)) => Some(format!("{p} {c}")),
            (Some(p), None) => Some(p.clone()),
            (None, Some(c)) => Some(c.clone()),
            (None, None) => None,
        }
    }

    /// The cheap form for partials: greedy, no fallback.
    pub fn for_partials(&self) -> Self {
        Self {
            beam: 1,
            fallback: false,
            ..self.clone()
        }
    }
}

/// The loaded model, shared by every worker.
#[derive(Clone)]
pub struct Engine {
    ctx: Arc<WhisperContext>,
    vocab: Arc<Vocab>,
}

/// What Whisper made of one piece of audio.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub text: String,
    /// Whisper's estimate that there was no speech at all (0..1).
    pub no_speech_prob: f32,
}

impl Engine {
    /// Loads the model; `gpu` puts it on the GPU (a build with `--features
    /// cuda`, `DEVICE=cuda`), else it runs on the CPU whatever the build.
    pub fn load(path: &Path, gpu: bool) -> Result<Self, EngineError> {
        silence_whisper_logs();
        let mut params = whisper_rs::WhisperContextParameters::default();
        params.use_gpu(gpu);
        // Flash attention stays off (whisper-rs's default): on the CPU it
        // made WER 24.8% against 15.6% on the held-out prompts, ending
        // decodes early (README "Accuracy").
        let ctx = WhisperContext::new_with_params(path, params).map_err(|e| EngineError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let vocab = Arc::new(Vocab::new(&ctx));
        Ok(Self {
            ctx: Arc::new(ctx),
            vocab,
        })
    }

    /// How many tokens `text` is to Whisper.
    pub fn tokens(&self, text: &str) -> Result<usize, EngineError> {
        tokenize(&self.ctx, text).map(|t| t.len())
    }

    /// A decoder state for one worker.
    pub fn worker(&self) -> Result<Worker, EngineError> {
        Ok(Worker {
            state: new_state(&self.ctx)?,
            ctx: Arc::clone(&self.ctx),
            vocab: Arc::clone(&self.vocab),
        })
    }
}

/// `text` as Whisper's tokens (a prompt's).
pub fn tokenize(
    ctx: &WhisperContext,
    text: &str,
) -> Result<Vec<whisper_rs::WhisperTokenId>, EngineError> {
    // (A token is at least one byte.)
    ctx.tokenize(text, text.len() + 16)
        .map_err(|e| EngineError::Whisper(format!("cannot tokenize the prompt: {e}")))
}

/// A decoder state: its buffers, KV caches and random generators as new.
fn new_state(ctx: &WhisperContext) -> Result<WhisperState, EngineError> {
    ctx.create_state()
        .map_err(|e| EngineError::Whisper(e.to_string()))
}

pub struct Worker {
    ctx: Arc<WhisperContext>,
    vocab: Arc<Vocab>,
    /// The decoder's state, kept from one decode to the next.
    state: WhisperState,
}

/// Encoder frames per second of audio (the encoder's 1500 frames are 30 s).
const AUDIO_CTX_PER_SEC: f64 = 50.0;
/// Encoder frames added to a fitted window, so the end of speech is never
/// at the very edge.
const AUDIO_CTX_MARGIN: i32 = 64;

impl Worker {
    /// Transcribes 16 kHz mono audio in [-1, 1].
    pub fn transcribe(
        &mut self,
        audio: &[f32],
        opts: &DecodeOptions,
    ) -> Result<Decoded, EngineError> {
        self.transcribe_unless(audio, opts, None)
    }

    /// As [`Worker::transcribe_unless`], but a decode with an initial
    /// prompt (the context, the domain prompt) that looks misled by it
    /// ([`misled`]: the prompt's echo, or a text cut short) is decoded
    /// again without any, and the second text is kept when it is better
    /// ([`Misled::retry_is_better`]); `true` when it was decoded again.
    pub fn transcribe_checked(
        &mut self,
        audio: &[f32],
        opts: &DecodeOptions,
        abort: Option<&Stop<'_>>,
    ) -> (Result<Decoded, EngineError>, bool) {
        let secs = audio.len() as f64 / 16_000.0;
        match self.transcribe_unless(audio, opts, abort) {
            Ok(d) if opts.has_prompt() => match misled(&d.text, secs) {
                Some(why) => {
                    let again = self.transcribe_unless(audio, &opts.without_prompt(), abort);
                    // A retry that failed keeps the first text; one stopped
                    // (for a final) is stopped.
                    let keep_first = match &again {
                        Ok(r) => !why.retry_is_better(&d.text, &r.text),
                        Err(_) => !abort.is_some_and(|stop| stop()),
                    };
                    // (Lengths only: the text may hold a card number.)
                    tracing::debug!(
                        ?why,
                        kept = if keep_first { "first" } else { "again" },
                        first_chars = d.text.chars().count(),
                        "decoded again without its prompt"
                    );
                    (if keep_first { Ok(d) } else { again }, true)
                }
                None => (Ok(d), false),
            },
            other => (other, false),
        }
    }

    /// As [`Worker::transcribe`], stopping early (an error) once `abort`
    /// says so: a partial gives way to a final this way, and a wide decode
    /// to a neighbour process.
    pub fn transcribe_unless(
        &mut self,
        audio: &[f32],
        opts: &DecodeOptions,
        abort: Option<&Stop<'_>>,
    ) -> Result<Decoded, EngineError> {
        let secs = audio.len() as f64 / 16_000.0;
        let ctx = (secs * AUDIO_CTX_PER_SEC).ceil() as i32 + AUDIO_CTX_MARGIN;
        let audio_ctx = ctx.clamp(opts.min_audio_ctx.clamp(64, 1500), 1500);
        // A runaway decode ("7, 7, 7, ...") stops at a length no speaker
        // reaches: about 8 tokens a second plus some slack.
        let max_tokens = (secs * 8.0) as usize + 24;
        let prompt = opts.initial_prompt();
        let full = Full {
            opts,
            prompt: prompt.as_deref(),
            abort: &abort,
            audio_ctx,
        };
        // Whisper wants at least a second of audio; pad short pieces.
        let padded;
        let audio = if audio.len() < 16_000 {
            padded = {
                let mut v = audio.to_vec();
                v.resize(16_100, 0.0);
                v
            };
            &padded[..]
        } else {
            audio
        };
        let state = &mut self.state;
        if opts.beam <= 1 {
            let params = full.params(max_tokens, opts.fallback);
            return decode(state, params, audio, opts);
        }
        // A beam decode is searched here (`beam`): whisper.cpp runs the
        // encoder and one greedy token first, for the window and the
        // no-speech probability.
        let first = decode(state, full.params(1, false), audio, opts)?;
        let lang = match opts.language.as_deref() {
            Some(l) => whisper_rs::get_lang_id(l),
            None => Some(state.full_lang_id_from_state()),
        };
        let prompt = Vocab::prompt(&self.ctx, prompt.as_deref(), lang)?;
        let never = || false;
        let stop: &Stop<'_> = abort.unwrap_or(&never);
        let found = beam::search(
            state,
            &self.vocab,
            &prompt,
            opts.beam,
            max_tokens,
            opts.threads,
            stop,
        )?;
        if opts.fallback && beam::looks_failed(found.as_ref(), first.no_speech_prob) {
            // Whisper's temperature fallback, as whisper.cpp's own beam
            // search does it: sampled again from the first temperature
            // above 0 on.
            let mut params = full.params(max_tokens, true);
            params.set_temperature(FALLBACK_TEMPERATURE_STEP);
            tracing::debug!("a searched decode looked failed: sampled again");
            return decode(state, params, audio, opts);
        }
        let text = found.map_or_else(String::new, |h| beam::text(&self.ctx, &h.tokens));
        Ok(Decoded {
            text: finish_text(&text, opts),
            no_speech_prob: first.no_speech_prob,
        })
    }
}

/// Each fallback step raises the temperature by this (whisper.cpp's and
/// OpenAI's default).
const FALLBACK_TEMPERATURE_STEP: f32 = 0.2;

/// What every `whisper_full` of one decode shares.
struct Full<'a> {
    opts: &'a DecodeOptions,
    prompt: Option<&'a str>,
    abort: &'a Option<&'a Stop<'a>>,
    audio_ctx: i32,
}

impl<'a> Full<'a> {
    /// whisper.cpp's parameters for a greedy decode of at most
    /// `max_tokens`, with its temperature fallback where `fallback`.
    fn params(&self, max_tokens: usize, fallback: bool) -> FullParams<'a, 'a> {
        let opts = self.opts;
        // One sample per fallback temperature: a retry costs one decode.
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(opts.threads.max(1) as i32);
        params.set_language(opts.language.as_deref());
        params.set_detect_language(false);
        params.set_translate(false);
        params.set_no_context(true);
        params.set_single_segment(true);
        params.set_no_timestamps(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        params.set_temperature(0.0);
        if fallback {
            // whisper.cpp's defaults (those of OpenAI's reference decoder).
            params.set_temperature_inc(FALLBACK_TEMPERATURE_STEP);
            params.set_entropy_thold(beam::ENTROPY_MIN as f32);
            params.set_logprob_thold(beam::MEAN_LOGPROB_MIN as f32);
        } else {
            // A partial must come back quickly; a bad one is caught by the
            // filters, and its final replaces it.
            params.set_temperature_inc(0.0);
        }
        if let Some(prompt) = self.prompt {
            params.set_initial_prompt(prompt);
        }
        if let Some(stop) = self.abort {
            // SAFETY: the callback only calls `stop`, which outlives every
            // `full` of this decode (`abort` is borrowed for the whole of
            // `transcribe_unless`); whisper.cpp calls it between graph
            // steps, and `Stop` is `Sync` for any thread of it that does.
            unsafe {
                params.set_abort_callback(Some(abort_when));
                params.set_abort_callback_user_data(stop as *const &Stop<'_> as *mut c_void);
            }
        }
        params.set_audio_ctx(self.audio_ctx);
        params.set_max_tokens(max_tokens as i32);
        params
    }
}

/// One decode of `audio` on `state`, and its text as stt sends it.
fn decode(
    state: &mut WhisperState,
    params: FullParams<'_, '_>,
    audio: &[f32],
    opts: &DecodeOptions,
) -> Result<Decoded, EngineError> {
    state
        .full(params, audio)
        .map_err(|e| EngineError::Whisper(e.to_string()))?;
    let mut text = String::new();
    let mut no_speech_prob: f32 = 0.0;
    for segment in state.as_iter() {
        if let Ok(s) = segment.to_str_lossy() {
            text.push_str(&s);
        }
        no_speech_prob = no_speech_prob.max(segment.no_speech_probability());
    }
    Ok(Decoded {
        text: finish_text(&text, opts),
        no_speech_prob,
    })
}

/// A decode's text as stt sends it: trimmed, a repetition loop cut, and
/// numbers as digits where asked.
fn finish_text(text: &str, opts: &DecodeOptions) -> String {
    let text = collapse_repeats(text.trim());
    if opts.digits && opts.language.as_deref() == Some("es") {
        crate::text::numbers::to_digits(&text, crate::text::numbers::Mode::Display)
    } else {
        text
    }
}

/// Asked between a decode's steps: `true` stops it (an error).
pub type Stop<'a> = dyn Fn() -> bool + Sync + 'a;

/// whisper.cpp's abort callback: stop when the decode's [`Stop`] says so.
unsafe extern "C" fn abort_when(data: *mut c_void) -> bool {
    // SAFETY: `data` points at the `&Stop` given in `transcribe_unless`,
    // alive for the decode that calls this.
    let stop = unsafe { *(data as *const &Stop<'_>) };
    // No panic may unwind into C: one stops the decode.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(stop)).unwrap_or(true)
}

/// Phrases Whisper produces on silence, noise and music (subtitle credits
/// from its training data): never a transcript.
const HALLUCINATIONS: &[&str] = &[
    "musica",
    "musica de fondo",
    "gracias por ver",
    "gracias por ver el video",
    "gracias por vernos",
    "muchas gracias por ver el video",
    "suscribete",
    "suscribete al canal",
    "no olvides suscribirte",
    "subtitulos realizados por la comunidad de amara org",
    "subtitulado por la comunidad de amara org",
    "subtitulos por la comunidad de amara org",
    "amara org",
    "thanks for watching",
    "thank you for watching",
    "aplausos",
    "risas",
    "silencio",
    "nos vemos en el proximo video",
    "hasta el proximo video",
];

/// Short phrases Whisper also invents, but people really say: dropped only
/// when Whisper itself doubts there was speech.
const WEAK_HALLUCINATIONS: &[&str] = &[
    "gracias",
    "muchas gracias",
    "thank you",
    "you",
    "adios",
    "chau",
];

/// Above this no-speech probability a weak hallucination is dropped.
const WEAK_NO_SPEECH: f32 = 0.2;

/// Whisper's repetition loop ("Me quedo. Me quedo. Me quedo. Me qu"): a
/// sentence said again right after itself is kept once, and a trailing
/// fragment that only restarts the previous sentence (the token limit cut
/// the loop) is dropped.
pub fn collapse_repeats(text: &str) -> String {
    let mut sentences: Vec<&str> = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        if matches!(c, '.' | '?' | '!' | '…') && (end == bytes.len() || bytes[end] == b' ') {
            sentences.push(text[start..end].trim());
            start = end;
        }
    }
    if start < text.len() && !text[start..].trim().is_empty() {
        sentences.push(text[start..].trim());
    }
    let mut kept: Vec<&str> = Vec::new();
    for (i, s) in sentences.iter().enumerate() {
        let norm = normalise(s);
        if let Some(prev) = kept.last() {
            let prev_norm = normalise(prev);
            if norm == prev_norm {
                continue;
            }
            let last = i + 1 == sentences.len();
            if last && !norm.is_empty() && prev_norm.starts_with(&norm) {
                continue;
            }
        }
        kept.push(s);
    }
    kept.join(" ")
}

/// Why a decode is not a transcript, if it is not.
pub fn reject_reason(decoded: &Decoded, max_no_speech: f32) -> Option<&'static str> {
    let text = decoded.text.trim();
    if text.is_empty() {
        return Some("empty");
    }
    // Whole-text annotations: "[Música]", "(risas)", "♪ ♪", "*suspiro*".
    let bracketed = (text.starts_with('[') && text.ends_with(']'))
        || (text.starts_with('(') && text.ends_with(')'))
        || (text.starts_with('*') && text.ends_with('*'));
    if bracketed || text.chars().all(|c| !c.is_alphanumeric()) || text.contains('♪') {
        return Some("annotation");
    }
    if decoded.no_speech_prob > max_no_speech {
        return Some("no speech");
    }
    let norm = normalise(text);
    if HALLUCINATIONS.contains(&norm.as_str()) {
        return Some("known hallucination");
    }
    if decoded.no_speech_prob > WEAK_NO_SPEECH && WEAK_HALLUCINATIONS.contains(&norm.as_str()) {
        return Some("likely hallucination");
    }
    None
}

/// How a decode with a context prompt (the previous final) can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misled {
    /// The text says some words twice ([`repeats_itself`]): the prompt's
    /// echo ("el volumen de su habla hacia otros participantes, de su
    /// volumen de su habla hacia otros participantes").
    Echo,
    /// Far fewer characters than the audio holds speech for: Whisper ended
    /// early, after the first sentence of 13 s of speech.
    CutShort,
}

/// Audio shorter than this is never taken as cut short (s): a few spelled
/// letters are slow but short.
const CUT_SHORT_MIN_SECS: f64 = 5.0;
/// Fewer characters per second of audio than this is a text cut short
/// (speech runs at 10 to 20; the slowest whole text of 5 s or more seen on
/// the prompts ran at 8).
const CUT_SHORT_CHARS_PER_SEC: f64 = 5.0;

impl Misled {
    /// Whether the text decoded again without context (`retry`) is better
    /// than the first (`first`): free of the echo (when both repeat, the
    /// speaker did), or longer than the cut-short one.
    pub fn retry_is_better(self, first: &str, retry: &str) -> bool {
        match self {
            Misled::Echo => !repeats_itself(retry),
            Misled::CutShort => retry.trim().chars().count() > first.trim().chars().count(),
        }
    }
}

/// Whether a text decoded with context from `secs` of audio looks misled
/// by that context, and how.
pub fn misled(text: &str, secs: f64) -> Option<Misled> {
    if repeats_itself(text) {
        Some(Misled::Echo)
    } else if secs >= CUT_SHORT_MIN_SECS
        && (text.trim().chars().count() as f64) < CUT_SHORT_CHARS_PER_SEC * secs
    {
        Some(Misled::CutShort)
    } else {
        None
    }
}

/// A final's text as the context of the stream's next utterance: without
/// letters or digits spelled one by one ("M-E-S-D-N-E", "I-L-9"), which
/// make Whisper spell what follows too (measured: after "M-E-S-D-N-E",
/// "ha sido llevados por monos" came out "M-C-D-E-V-A-D-O-S por monos").
/// `None` when nothing else is left.
pub fn as_context(text: &str) -> Option<String> {
    let spelled = |word: &str| {
        let word = word.trim_end_matches(['.', ',', ';', ':', '?', '!']);
        let parts: Vec<&str> = word.split('-').collect();
        parts.len() >= 3
            && parts
                .iter()
                .all(|p| p.chars().count() == 1 && p.chars().all(char::is_alphanumeric))
    };
    let kept: Vec<&str> = text.split_whitespace().filter(|w| !spelled(w)).collect();
    let words = kept.join(" ");
    (words.chars().any(char::is_alphanumeric)).then_some(words)
}

/// Whether a decoded text says the same run of four or more words twice in
/// a row ("para incrementar el volumen, para incrementar el volumen"), or
/// of five or more anywhere: the echo a context prompt can cause. Case,
/// accents and punctuation aside. (A speaker who repeats five words is
/// caught too; [`Misled::retry_is_better`] then keeps the first text.)
pub fn repeats_itself(text: &str) -> bool {
    let normal = crate::text::normalise(text);
    let words: Vec<&str> = normal.split_whitespace().collect();
    let n = words.len();
    // Five or more twice anywhere holds every longer run twice in a row.
    let four_in_a_row = n >= 8 && (0..=n - 8).any(|at| words[at..at + 4] == words[at + 4..at + 8]);
    four_in_a_row
        || (n >= 10
            && (0..=n - 10).any(|at| {
                let run = &words[at..at + 5];
                words[at + 5..].windows(5).any(|w| w == run)
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelled_letters_are_no_context() {
        assert_eq!(as_context("M-E-S-D-N-E"), None);
        assert_eq!(as_context("M-E-S-D-N-E."), None);
        assert_eq!(
            as_context("Use el 7 para la Cú. I-L-9 para la zeta.").as_deref(),
            Some("Use el 7 para la Cú. para la zeta.")
        );
        // Words with hyphens, grouped digits and two letters stay.
        for kept in ["un e-mail", "el 612-087-345", "la A-B", "Hola."] {
            assert_eq!(as_context(kept).as_deref(), Some(kept));
        }
        assert_eq!(as_context(" , "), None);
    }

    fn d(text: &str, p: f32) -> Decoded {
        Decoded {
            text: text.into(),
            no_speech_prob: p,
        }
    }

    #[test]
    fn repetition_loops_collapse() {
        assert_eq!(
            collapse_repeats(
                "Bueno, ¿con ese descuento me quedo? Bueno, ¿con ese descuento me quedo? Bueno, ¿con ese descuento me quedo? Bueno, ¿con ese desc"
            ),
            "Bueno, ¿con ese descuento me quedo?"
        );
        assert_eq!(
            collapse_repeats("Perfecto. Ya está. ¿Algo más?"),
            "Perfecto. Ya está. ¿Algo más?"
        );
        // Not a repetition: different sentences, a final new fragment.
        assert_eq!(collapse_repeats("Sí. No. Sí."), "Sí. No. Sí.");
        assert_eq!(
            collapse_repeats("Hola, buenos días. Quiero cancelar"),
            "Hola, buenos días. Quiero cancelar"
        );
        assert_eq!(collapse_repeats(""), "");
        assert_eq!(collapse_repeats("3.5 euros"), "3.5 euros");
    }

    #[test]
    fn filters() {
        assert_eq!(reject_reason(&d("[Música]", 0.0), 0.6), Some("annotation"));
        assert_eq!(reject_reason(&d("(risas)", 0.0), 0.6), Some("annotation"));
        assert_eq!(reject_reason(&d("♪ la la ♪", 0.0), 0.6), Some("annotation"));
        assert_eq!(reject_reason(&d("...", 0.0), 0.6), Some("annotation"));
        assert_eq!(
            reject_reason(&d("¡Gracias por ver el video!", 0.0), 0.6),
            Some("known hallucination")
        );
        assert_eq!(
            reject_reason(
                &d("Subtítulos realizados por la comunidad de Amara.org", 0.1),
                0.6
            ),
            Some("known hallucination")
        );
        assert_eq!(
            reject_reason(&d("Quiero cancelar", 0.9), 0.6),
            Some("no speech")
        );
        assert_eq!(
            reject_reason(&d("Quiero cancelar mi contrato.", 0.1), 0.6),
            None
        );
        assert_eq!(reject_reason(&d("Gracias, adiós", 0.1), 0.6), None);
        assert_eq!(reject_reason(&d("Gracias.", 0.05), 0.6), None);
        assert_eq!(
            reject_reason(&d("Gracias.", 0.4), 0.6),
            Some("likely hallucination")
        );
    }

    #[test]
    fn a_text_that_says_four_words_twice_repeats_itself() {
        for t in [
            "Para incrementar el volumen del audio, para incrementar el volumen del audio.",
            "Hola. Su número de cliente, por favor. Su número de cliente, por favor.",
            // Five words twice, apart (an echo seen on a real prompt).
            "Para incrementar el volumen de su habla hacia otros participantes, de su volumen de su habla hacia otros participantes.",
        ] {
            assert!(repeats_itself(t), "{t}");
        }
        for t in [
            "Sí, sí, claro que sí.",
            "uno dos tres uno dos cuatro",
            "Para reducir el volumen del audio de otros participantes.",
            // Four words twice, apart: ordinary speech.
            "Marque el número uno para aceptar, marque el número dos para rechazar.",
            "",
        ] {
            assert!(!repeats_itself(t), "{t}");
        }
    }

    #[test]
    fn a_decode_with_context_is_misled_when_it_echoes_or_ends_too_soon() {
        // 35 characters for 12.8 s of speech: Whisper stopped after the
        // first sentence (seen live, after an unrelated previous final).
        let cut = "Usted tiene las siguientes opciones.";
        assert_eq!(misled(cut, 12.8), Some(Misled::CutShort));
        // The same text for 3 s of audio is whole; so are spelled letters.
        assert_eq!(misled(cut, 3.0), None);
        assert_eq!(misled("M-E-S-D-N", 3.3), None);
        assert_eq!(
            misled(
                "La conferencia iniciará cuando nuestro glorioso líder llegue.",
                7.3
            ),
            None
        );
        let echo = "Para incrementar el volumen de su habla hacia otros participantes, de su volumen de su habla hacia otros participantes.";
        assert_eq!(misled(echo, 5.9), Some(Misled::Echo));

        // The text decoded again is kept only when it is better.
        let whole = "Usted tiene las siguientes opciones. Marque el número 1 si desea comunicarse inmediatamente con la llamada.";
        assert!(Misled::CutShort.retry_is_better(cut, whole));
        assert!(!Misled::CutShort.retry_is_better(cut, "Usted tiene."));
        let clean = "Para incrementar el volumen de su habla hacia otros participantes.";
        assert!(Misled::Echo.retry_is_better(echo, clean));
        // Both say it twice: the speaker did; the first text stays.
        assert!(!Misled::Echo.retry_is_better(echo, echo));
    }
}
