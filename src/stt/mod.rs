//! stt: Whisper speech-to-text over websocket (docs/contract.md "Audio into
//! stt"). Audio in per call leg, `transcript` events out to the relay and
//! back on the same websocket.
//!
//! - [`server`]: listener, `/ws` validation, `/healthz`, `/metrics`.
//! - [`session`]: one audio stream: decode, resample, segment, transcribe.
//! - [`segmenter`]: VAD-driven utterances, partial and final requests.
//! - [`pool`]: the bounded worker pool (finals before partials; hurry, then
//!   give up, when behind).
//! - [`capacity`]: what stt can carry (measured) and admission at the
//!   handshake.
//! - [`engine`]: whisper-rs inference and the hallucination filters.
//! - [`model`]: model files: list, import (GGML, CTranslate2), fetch.

pub mod beam;
pub mod capacity;
pub mod engine;
pub mod idle;
pub mod metrics;
pub mod model;
pub mod offline;
pub mod pool;
pub mod segmenter;
pub mod server;
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use server::serve;

use crate::setting::{ConfigError, Secret, SecretSlot, Section, Var};

/// Why stt (or `transcribe`) cannot start; the exit code says whose
/// fault it is.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(
        "DEVICE=cuda, but this build of call-coach has no CUDA support: rebuild with `cargo build --release --features cuda`, or set DEVICE=cpu"
    )]
    NoCuda,
    #[error(
        "stt.prompt with stt.hotwords is {tokens} Whisper tokens; at most {max} are read beside the previous final (Whisper's prompt is 224 tokens): shorten them"
    )]
    PromptTooLong { tokens: usize, max: usize },
    #[error(transparent)]
    Bind(#[from] crate::lifecycle::BindError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl crate::lifecycle::ExitStatus for SttError {
    fn exit_code(&self) -> u8 {
        match self {
            SttError::Model(_)
            | SttError::NoCuda
            | SttError::PromptTooLong { .. }
            | SttError::Bind(_) => crate::lifecycle::EXIT_USAGE,
            SttError::Engine(_) | SttError::Io(_) => 1,
        }
    }
}

/// Settings of the stt service (`[stt]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Websocket listen address. `STT_LISTEN`.
    pub listen: SocketAddr,
    /// Transcription language, forced. `LANG` (language part of a locale).
    pub language: String,
    /// Let Whisper detect the language instead of forcing `language`.
    pub detect_language: bool,
    /// Whisper model size (`tiny`, `base`, `small`, ...). `MODEL_SIZE`.
    pub model_size: String,
    /// A model file to load instead of the one `model_size` and
    /// `compute_type` pick in the model directory.
    pub model_file: Option<PathBuf>,
    /// `cpu` or `cuda`. `DEVICE`.
    pub device: String,
    /// `int8` (GGML q8_0) or `float16` (f16). `COMPUTE_TYPE`.
    pub compute_type: String,
    /// Where transcripts are posted. `RELAY_URL`.
    pub relay_url: String,
    /// Token for the relay when its auth is on. `RELAY_TOKEN`, or
    /// `RELAY_TOKEN_FILE`, or the credential `relay_token`.
    pub relay_token: Option<Secret>,
    /// File holding the relay token. `RELAY_TOKEN_FILE`.
    pub relay_token_file: Option<PathBuf>,
    /// Transcriptions run at once (each with its own decoder state).
    /// Default: one per core (at most 16), one thread each: whisper.cpp's
    /// threads wait for each other by spinning, so a decode spread over
    /// every core stalled whenever a neighbour took one (measured: 2 calls
    /// beside one busy process, p95 19.3 s with 1 worker x 2 threads,
    /// 2.6 s with 2 x 1), before such a decode kept to one thread then.
    pub workers: usize,
    /// CPU threads per transcription; 0 shares the machine's cores among
    /// the workers. While other processes hold the cores a decode's
    /// threads would need, it runs on one instead (and one on several
    /// gives way to a process that comes during it), since a descheduled
    /// thread stalls the others.
    pub threads_per_worker: usize,
    /// A decode that is the only one running, while no other process
    /// uses the machine's other cores (idle, or used by stt itself), may
    /// use up to this many threads ("wide"): a lone final comes back in
    /// about half the time. 0 or 1: never. Sampled from /proc/stat and
    /// /proc/self/stat four times a second; a wide decode whose cores
    /// another process takes meanwhile gives way, and is done again on
    /// its worker's own threads.
    pub max_threads_when_idle: usize,
    /// Beam width for finals; 1 is greedy (fastest). Partials are always
    /// greedy.
    pub beam: usize,
    /// Finals (and revisions) whose decode looks failed (a repetition
    /// loop, low confidence) are decoded again at a higher temperature
    /// (Whisper's temperature fallback), greedy or after a beam search.
    /// Partials never are. Off: measured no gain on
    /// the held-out prompts (18.0% either way), and on hard audio the
    /// sampled retries can be worse than the greedy text (mixed-language
    /// nonsense on a synthetic voice).
    pub final_fallback: bool,
    /// Smallest Whisper encoder window, in frames of 20 ms (64 to 1500):
    /// short utterances use a window fitted to their length but at least
    /// this (1500 = always the full 30 s: slowest, most accurate). Not
    /// set: 256 on `cpu` (measured WER 17.1%; 768 gives 15.9% at 70% more
    /// decode time, which a CPU pays in capacity) and 1500 on `cuda`
    /// (16.0% against 17.0%, at no measurable cost on the GPU).
    pub min_audio_ctx: Option<i32>,
    /// Once a final went out, decode its audio again the careful way
    /// (`revision_beam`, `revision_audio_ctx`) while the workers have no
    /// final or partial to do, and send a second final of the same
    /// utterance (`revised: true`) where the text differs. The first final
    /// keeps its speed; the call's record gets the better text. A revision
    /// gives way midway to any final or partial, and is dropped past
    /// `give_up_secs` or 64 waiting.
    pub revise_finals: bool,
    /// A revision's encoder window floor, in frames of 20 ms (64 to 1500;
    /// never below `min_audio_ctx`). Default 768.
    pub revision_audio_ctx: i32,
    /// A revision's beam width (never below `beam`; at most 8, the widest
    /// measured). Default 5.
    pub revision_beam: usize,
    /// Silence that ends an utterance, in ms.
    pub end_silence_ms: usize,
    /// Start decoding an utterance's final when its silence begins (100
    /// ms), while a worker is free, and send it once the end of speech is
    /// confirmed: the end-of-speech wait and the decode overlap. Dropped
    /// (stopped midway) when speech resumes.
    pub speculative_finals: bool,
    /// Silence that ends an utterance whose speculative final reads as a
    /// finished sentence (Whisper ended it with `.`, `?` or `!`), in ms;
    /// mid-sentence pauses keep `end_silence_ms`. 0: always
    /// `end_silence_ms`. Needs `speculative_finals`; at least 100 (a value
    /// past `end_silence_ms` never acts).
    pub end_silence_after_sentence_ms: usize,
    /// New speech between two partial transcripts, in ms. 700: an
    /// utterance's last stretch gets no partial (its final covers it), and
    /// a partial can be stopped for a final, so 1000 gave one partial per
    /// 1.3-1.4 s of speech; 700 gives one per 0.8-0.95 s, the finals'
    /// latency kept by wide decodes after stt's own (README "Partials per
    /// second of speech").
    pub partial_every_ms: usize,
    /// Longest audio one partial decodes, in ms (0: the whole utterance).
    /// In a longer utterance the earlier audio is settled in pieces (cut
    /// at a quiet frame, each decoded once) whose text heads the partials,
    /// which then decode only what follows: their cost stops growing with
    /// the utterance. The final still decodes the whole utterance.
    pub partial_window_ms: usize,
    /// Longest utterance before it is split, in ms.
    pub max_utterance_ms: usize,
    /// An utterance this long (its start to its last speech) ends at a
    /// shorter pause, `long_pause_ms`, in ms (0: never). A long turn then
    /// goes out phrase by phrase at its pauses: its text sooner, and less
    /// often cut at `max_utterance_ms` wherever it is quietest (README
    /// "Long turns").
    pub long_utterance_ms: usize,
    /// Silence that ends an utterance longer than `long_utterance_ms`,
    /// in ms: at least 100 (a value past `end_silence_ms` never acts).
    pub long_pause_ms: usize,
    /// Over this many ms past `long_utterance_ms`, the pause that ends a
    /// long turn shrinks from `long_pause_ms` to 100 ms (0: it stays
    /// `long_pause_ms`): a turn with no pause that long still ends at a
    /// breath rather than being split at `max_utterance_ms`.
    pub long_pause_ramp_ms: usize,
    /// Shorter speech is ignored, in ms.
    pub min_speech_ms: usize,
    /// Audio kept from before the detected start of speech, in ms: the
    /// VAD hears a word's first syllable late. 500 measured WER 16.8%
    /// against 17.1% (5 words of 1,494: noise), but on Asterisk's
    /// conf-onlyperson with 40 start offsets it turned "conferencia" into
    /// "converencia" 11 times (300: never), so 300 stays.
    pub preroll_ms: usize,
    /// Whisper's no-speech probability above which a result is dropped.
    pub max_no_speech_prob: f32,
    /// Give Whisper the stream's previous final as context (after
    /// `prompt`), so that words carry over a pause as they do when a whole
    /// recording is decoded at once (measured: WER 18.0% -> 17.1%).
    pub context_from_previous: bool,
    /// The previous final is context only for an utterance that starts
    /// at most this long (ms) after it ended: past a long pause (a hold,
    /// another topic) old words would only bias Whisper. 0: always.
    pub context_max_pause_ms: u64,
    /// Write spoken numbers as digits ("cuatro, cinco, seis" -> "456",
    /// "veinte por ciento" -> "20%"); Spanish only. A lone small number
    /// stays a word ("en cinco minutos").
    pub numbers_as_digits: bool,
    /// Domain prompt given to Whisper (product names, the agent script);
    /// with `hotwords`, at most 160 Whisper tokens (stt refuses more: the
    /// previous final follows it in Whisper's 224).
    pub prompt: Option<String>,
    /// Words Whisper should favour; appended to the prompt.
    pub hotwords: Vec<String>,
    /// Concurrent audio streams at most (a hard limit; `capacity` refuses
    /// sooner).
    pub max_streams: usize,
    /// Streams stt takes before refusing new ones at the handshake (503):
    /// 0 measures it (docs/contract.md "Capacity"); a number fixes it.
    pub capacity: usize,
    /// A final waiting longer than this (ms) means stt is behind: new
    /// streams are refused, and waiting finals are decoded the cheap way.
    pub behind_ms: u64,
    /// A final waiting longer than this (s) is given up: sent empty with
    /// `gap: "overload"` instead of decoded, so the lag stays bounded.
    pub give_up_secs: u64,
    /// Largest audio frame a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// A stream with no audio for this many seconds is closed.
    pub idle_timeout_secs: u64,
    /// Transcript events held while the relay is unreachable.
    pub publish_queue: usize,
}

/// `min_audio_ctx` when unset, on a CPU (a 5 s window: capacity first)
/// and on a GPU (the full 30 s window: accuracy, cheaply).
const AUDIO_CTX_FLOOR_CPU: i32 = 256;
const AUDIO_CTX_FLOOR_CUDA: i32 = 1500;

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            language: "es".into(),
            detect_language: false,
            model_size: "small".into(),
            model_file: None,
            device: "cpu".into(),
            compute_type: "int8".into(),
            relay_url: "http://127.0.0.1:7070/event".into(),
            relay_token: None,
            relay_token_file: None,
            workers: default_workers(),
            threads_per_worker: 0,
            max_threads_when_idle: 4,
            beam: 1,
            final_fallback: false,
            min_audio_ctx: None,
            revise_finals: true,
            revision_audio_ctx: 768,
            revision_beam: 5,
            end_silence_ms: 500,
            speculative_finals: true,
            end_silence_after_sentence_ms: 300,
            partial_every_ms: 700,
            partial_window_ms: 6000,
            max_utterance_ms: 15_000,
            long_utterance_ms: 8_000,
            long_pause_ms: 150,
            long_pause_ramp_ms: 4_000,
            min_speech_ms: 200,
            preroll_ms: 300,
            max_no_speech_prob: 0.6,
            context_from_previous: true,
            context_max_pause_ms: 20_000,
            numbers_as_digits: true,
            prompt: None,
            hotwords: Vec::new(),
            max_streams: 256,
            capacity: 0,
            behind_ms: 2_000,
            give_up_secs: 30,
            max_frame_bytes: 256 * 1024,
            idle_timeout_secs: 60,
            publish_queue: 10_000,
        }
    }
}

impl Section for Settings {
    const KEY: &'static str = "stt";
    const ENV: &'static [Var] = &[
        Var::new("STT_LISTEN", "listen"),
        Var::read_with("LANG", "language", language_from_lang),
        Var::new("MODEL_SIZE", "model_size"),
        Var::new("DEVICE", "device"),
        Var::new("COMPUTE_TYPE", "compute_type"),
        Var::new("RELAY_URL", "relay_url"),
        Var::new("RELAY_TOKEN", "relay_token"),
        Var::new("RELAY_TOKEN_FILE", "relay_token_file"),
    ];

    fn secrets(&mut self) -> Vec<SecretSlot<'_>> {
        vec![SecretSlot::new(
            "relay_token",
            &mut self.relay_token,
            &self.relay_token_file,
        )]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !whisper_knows(&self.language) {
            return Err(ConfigError::invalid(
                "stt.language",
                format!(
                    "{:?} is not a language Whisper knows; use a code such as \"es\", \"en\" or \"pt\"",
                    self.language
                ),
            ));
        }
        if !matches!(self.device.as_str(), "cpu" | "cuda") {
            return Err(ConfigError::invalid(
                "stt.device",
                format!("must be \"cpu\" or \"cuda\", got {:?}", self.device),
            ));
        }
        if model::Quant::parse(&self.compute_type).is_none() {
            return Err(ConfigError::invalid(
                "stt.compute_type",
                format!(
                    "must be \"int8\" or \"float16\", got {:?}",
                    self.compute_type
                ),
            ));
        }
        if let Some(ctx) = self.min_audio_ctx
            && !(64..=1500).contains(&ctx)
        {
            return Err(ConfigError::invalid(
                "stt.min_audio_ctx",
                format!(
                    "must be 64 to 1500 (frames of 20 ms; 1500 is Whisper's full 30 s window), got {ctx}"
                ),
            ));
        }
        if !(64..=1500).contains(&self.revision_audio_ctx) {
            return Err(ConfigError::invalid(
                "stt.revision_audio_ctx",
                format!(
                    "must be 64 to 1500 (frames of 20 ms), got {}",
                    self.revision_audio_ctx
                ),
            ));
        }
        for (key, beam) in [
            ("stt.beam", self.beam),
            ("stt.revision_beam", self.revision_beam),
        ] {
            // Each beam costs a decoder pass per token (`stt::beam`): 8 is
            // the widest measured, and no better than 5, the default
            // (README "stt's own beam search").
            if !(1..=8).contains(&beam) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be 1 (greedy) to 8 (the widest measured), got {beam}"),
                ));
            }
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(ConfigError::invalid("stt.workers", "must be 1 to 64"));
        }
        if !(0.0..=1.0).contains(&self.max_no_speech_prob) {
            return Err(ConfigError::invalid(
                "stt.max_no_speech_prob",
                "must be between 0 and 1",
            ));
        }
        if self.end_silence_ms < 100 {
            return Err(ConfigError::invalid(
                "stt.end_silence_ms",
                "must be at least 100",
            ));
        }
        // Longer than end_silence_ms is allowed: the normal end comes first.
        let early = self.end_silence_after_sentence_ms;
        if early != 0 && early < segmenter::TAIL_MS {
            return Err(ConfigError::invalid(
                "stt.end_silence_after_sentence_ms",
                format!("must be 0 (off) or at least {} ms", segmenter::TAIL_MS),
            ));
        }
        // Longer than end_silence_ms is allowed too: it never acts.
        if self.long_pause_ms < segmenter::TAIL_MS {
            return Err(ConfigError::invalid(
                "stt.long_pause_ms",
                format!("must be at least {} ms", segmenter::TAIL_MS),
            ));
        }
        if self.long_utterance_ms != 0 && self.long_utterance_ms < 1_000 {
            return Err(ConfigError::invalid(
                "stt.long_utterance_ms",
                "must be 0 (off) or at least 1000",
            ));
        }
        if self.partial_window_ms != 0 && self.partial_window_ms < 4_000 {
            return Err(ConfigError::invalid(
                "stt.partial_window_ms",
                "must be 0 (off) or at least 4000 (a piece is cut at least 2 s from either end of the window)",
            ));
        }
        if self.preroll_ms > 2_000 {
            return Err(ConfigError::invalid(
                "stt.preroll_ms",
                "must be at most 2000",
            ));
        }
        if self.threads_per_worker > 64 {
            return Err(ConfigError::invalid(
                "stt.threads_per_worker",
                "must be 0 (the cores shared out among the workers) to 64",
            ));
        }
        if self.max_threads_when_idle > 64 {
            return Err(ConfigError::invalid(
                "stt.max_threads_when_idle",
                "must be 0 to 64",
            ));
        }
        if self.partial_every_ms < 200 {
            return Err(ConfigError::invalid(
                "stt.partial_every_ms",
                "must be at least 200",
            ));
        }
        if self.behind_ms < 200 {
            return Err(ConfigError::invalid(
                "stt.behind_ms",
                "must be at least 200",
            ));
        }
        if self.give_up_secs.saturating_mul(1000) <= self.behind_ms {
            return Err(ConfigError::invalid(
                "stt.give_up_secs",
                "must be longer than stt.behind_ms",
            ));
        }
        if self.max_utterance_ms < 1000 || self.max_utterance_ms > 30_000 {
            return Err(ConfigError::invalid(
                "stt.max_utterance_ms",
                "must be 1000 to 30000 (Whisper sees 30 s at most)",
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// The model file these settings ask for: `model_file`, else the
    /// installed model of `model_size` in `model_dir`.
    pub fn model_path(&self, model_dir: &std::path::Path) -> Result<PathBuf, model::ModelError> {
        match &self.model_file {
            Some(path) => Ok(path.clone()),
            None => model::resolve(
                model_dir,
                &self.model_size,
                model::quant_for_compute_type(&self.compute_type),
            ),
        }
    }

    /// `language`, or `None` when detection was asked for.
    pub fn forced_language(&self) -> Option<String> {
        (!self.detect_language).then(|| self.language.clone())
    }

    /// How a stream is cut into utterances.
    pub fn segmenter_config(&self) -> segmenter::SegmenterConfig {
        segmenter::SegmenterConfig {
            end_silence_ms: self.end_silence_ms,
            partial_every_ms: self.partial_every_ms,
            partial_window_ms: self.partial_window_ms,
            max_utterance_ms: self.max_utterance_ms,
            long_utterance_ms: self.long_utterance_ms,
            long_pause_ms: self.long_pause_ms,
            long_pause_ramp_ms: self.long_pause_ramp_ms,
            min_speech_ms: self.min_speech_ms,
            preroll_ms: self.preroll_ms,
            speculate: self.speculative_finals,
            early_end_ms: self.end_silence_after_sentence_ms,
            ..Default::default()
        }
    }

    /// How the workers decode.
    pub fn decode_options(&self) -> engine::DecodeOptions {
        engine::DecodeOptions {
            language: self.forced_language(),
            threads: self.threads(),
            prompt: self.full_prompt(),
            context: None,
            beam: self.beam,
            min_audio_ctx: self.audio_ctx_floor(),
            digits: self.numbers_as_digits,
            fallback: self.final_fallback,
        }
    }

    /// `min_audio_ctx`, or the device's default when not set.
    pub fn audio_ctx_floor(&self) -> i32 {
        self.min_audio_ctx.unwrap_or(if self.device == "cuda" {
            AUDIO_CTX_FLOOR_CUDA
        } else {
            AUDIO_CTX_FLOOR_CPU
        })
    }

    /// What a revision gets beyond the finals' own settings (never less
    /// than they have).
    pub fn revision(&self) -> pool::Careful {
        pool::Careful {
            audio_ctx: self.audio_ctx_floor().max(self.revision_audio_ctx),
            beam: self.beam.max(self.revision_beam),
        }
    }

    /// The rule an unset `min_audio_ctx` follows, as `check-config` and
    /// the configuration example say it.
    pub fn audio_ctx_floor_rule() -> String {
        format!("{AUDIO_CTX_FLOOR_CPU} on device \"cpu\", {AUDIO_CTX_FLOOR_CUDA} on \"cuda\"")
    }

    /// The context for an utterance starting at `start_ms`: the previous
    /// final's text, given where it ended (ms), when `context_from_previous`
    /// is on and it ended recently enough.
    pub fn context_for<'a>(
        &self,
        previous: Option<&'a (String, u64)>,
        start_ms: u64,
    ) -> Option<&'a str> {
        let (text, end_ms) = previous.filter(|_| self.context_from_previous)?;
        let pause = start_ms.saturating_sub(*end_ms);
        (self.context_max_pause_ms == 0 || pause <= self.context_max_pause_ms).then_some(text)
    }

    /// The prompt with the hotwords appended.
    pub fn full_prompt(&self) -> Option<String> {
        let mut parts: Vec<String> = self.prompt.iter().cloned().collect();
        if !self.hotwords.is_empty() {
            parts.push(self.hotwords.join(", "));
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    /// Refuses a prompt (with the hotwords) longer than Whisper reads
    /// beside the context ([`engine::PROMPT_TOKENS_MAX`]); it takes the
    /// model's tokenizer, so it is checked once the model is loaded.
    pub fn check_prompt(&self, engine: &engine::Engine) -> Result<(), SttError> {
        let Some(prompt) = self.full_prompt() else {
            return Ok(());
        };
        let tokens = engine.tokens(&prompt)?;
        let max = engine::PROMPT_TOKENS_MAX;
        if tokens > max {
            return Err(SttError::PromptTooLong { tokens, max });
        }
        Ok(())
    }

    /// How long a final may wait before stt counts as behind.
    pub fn behind(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.behind_ms)
    }

    /// CPU threads per worker.
    pub fn threads(&self) -> usize {
        if self.threads_per_worker > 0 {
            return self.threads_per_worker;
        }
        (cores() / self.workers).max(1)
    }
}

/// The cores this process may use (1 where the system will not say).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One decoder per core, at most 16 (each holds its own state).
fn default_workers() -> usize {
    cores().min(16)
}

/// `LANG` sets the call's language only when it is a bare language code,
/// as in the original units (`LANG=es`). A locale such as `en_US.UTF-8`
/// is the shell's interface language, which every desktop and server
/// sets: it is ignored, with a notice saying so; `C` and `POSIX` silently.
pub fn language_from_lang(value: &str) -> Result<String, String> {
    let bare = (2..=3).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphabetic());
    if bare {
        return Ok(value.to_ascii_lowercase());
    }
    let head = value.split(['.', '@']).next().unwrap_or_default();
    if matches!(head, "" | "C" | "POSIX") {
        return Err(String::new());
    }
    Err(format!(
        "LANG={value} is a locale (this shell's interface language), not the \
         call's: ignored for transcription. Set stt.language \
         (CALL_COACH_STT__LANGUAGE), or LANG to a bare code such as LANG=es"
    ))
}

/// Whether Whisper knows `code` (`es`, `en`, `pt`, ...).
pub fn whisper_knows(code: &str) -> bool {
    engine::silence_whisper_logs();
    whisper_rs::get_lang_id(code).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_after_a_sentence_is_at_least_the_tail_and_may_pass_the_normal_end() {
        let with = |end, early| {
            Settings {
                end_silence_ms: end,
                end_silence_after_sentence_ms: early,
                ..Default::default()
            }
            .validate()
        };
        assert!(with(250, 300).is_ok(), "past the normal end: never acts");
        assert!(with(500, 0).is_ok());
        assert!(with(500, 100).is_ok());
        assert!(with(500, 80).is_err());
    }

    #[test]
    fn the_previous_final_is_context_only_after_a_short_enough_pause() {
        let s = Settings::default();
        let at = |end: u64| ("hola".to_owned(), end);
        assert_eq!(s.context_for(Some(&at(1_000)), 3_000), Some("hola"));
        assert_eq!(s.context_for(Some(&at(1_000)), 21_000), Some("hola"));
        assert_eq!(s.context_for(Some(&at(1_000)), 21_001), None);
        assert_eq!(s.context_for(None, 3_000), None);
        let always = Settings {
            context_max_pause_ms: 0,
            ..Default::default()
        };
        assert_eq!(always.context_for(Some(&at(0)), 600_000), Some("hola"));
        let off = Settings {
            context_from_previous: false,
            ..Default::default()
        };
        assert_eq!(off.context_for(Some(&at(1_000)), 3_000), None);
    }

    #[test]
    fn the_encoder_window_floor_follows_the_device_unless_set() {
        let with = |device: &str, ctx| Settings {
            device: device.into(),
            min_audio_ctx: ctx,
            ..Default::default()
        };
        assert_eq!(with("cpu", None).decode_options().min_audio_ctx, 256);
        assert_eq!(with("cuda", None).decode_options().min_audio_ctx, 1500);
        assert_eq!(with("cuda", Some(512)).decode_options().min_audio_ctx, 512);
        assert!(with("cpu", Some(1500)).validate().is_ok());
        assert!(with("cpu", Some(64)).validate().is_ok());
        let err = with("cpu", Some(3000)).validate().unwrap_err().to_string();
        assert!(
            err.contains("stt.min_audio_ctx") && err.contains("3000"),
            "{err}"
        );
        assert!(with("cpu", Some(0)).validate().is_err());
        // A revision reads 768 frames with beam 5, never less than finals.
        let r = with("cpu", None).revision();
        assert_eq!((r.audio_ctx, r.beam), (768, 5));
        assert_eq!(with("cuda", None).revision().audio_ctx, 1500);
        let wide = Settings {
            beam: 6,
            revision_beam: 3,
            ..with("cpu", Some(1000))
        };
        let r = wide.revision();
        assert_eq!((r.audio_ctx, r.beam), (1000, 6));
        for bad in [
            Settings {
                revision_audio_ctx: 2000,
                ..Default::default()
            },
            Settings {
                revision_beam: 0,
                ..Default::default()
            },
            // Wider than measured.
            Settings {
                revision_beam: 9,
                ..Default::default()
            },
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains("stt.revision_"), "{err}");
        }
    }

    #[test]
    fn threads_per_worker_is_0_to_64() {
        let with = |threads| Settings {
            threads_per_worker: threads,
            ..Settings::default()
        };
        assert!(with(0).validate().is_ok());
        assert!(with(64).validate().is_ok());
        let err = with(65).validate().unwrap_err().to_string();
        assert!(err.contains("stt.threads_per_worker"), "{err}");
    }

    #[test]
    fn a_long_turns_pause_is_at_least_the_tail_and_may_pass_the_normal_end() {
        let with = |end, long, pause| {
            Settings {
                end_silence_ms: end,
                long_utterance_ms: long,
                long_pause_ms: pause,
                ..Default::default()
            }
            .validate()
        };
        assert!(Settings::default().validate().is_ok());
        assert!(
            with(100, 8_000, 150).is_ok(),
            "past the normal end: never acts"
        );
        assert!(with(500, 0, 150).is_ok());
        assert!(with(500, 1_000, 100).is_ok());
        let err = with(500, 8_000, 80).unwrap_err().to_string();
        assert!(err.contains("stt.long_pause_ms"), "{err}");
        let err = with(500, 999, 150).unwrap_err().to_string();
        assert!(err.contains("stt.long_utterance_ms"), "{err}");
    }
}
