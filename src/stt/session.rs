//! One audio stream over a websocket: binary frames of raw audio in,
//! `transcript` events out (to the relay and back on the socket).
//!
//! `{"type":"end"}` or closing the socket ends the stream: what is open is
//! finalised and every final is delivered before the socket closes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::engine::reject_reason;
use super::pool::{Done, Job, Kind};
use super::segmenter::{Ended, Request, Segmenter, Utterance};
use super::server::State;
use crate::audio::Encoding;
use crate::audio::resample::Upsampler2x;
use crate::event::{Event, Speaker, Speech, Transcript};

/// Longest wait for outstanding finals once a stream ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stream that ended waits for its revisions (its finals are
/// all out by then).
const REVISION_DRAIN: Duration = Duration::from_secs(5);

/// A stream's parameters, checked before the upgrade.
#[derive(Debug, Clone)]
pub struct StreamParams {
    pub call_id: String,
    pub speaker: Speaker,
    pub sample_rate: u32,
    pub encoding: Encoding,
}

impl StreamParams {
    /// From the query string; the error says which parameter is wrong.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        use crate::http::query_param;
        let call_id = query_param(query, "callId").ok_or("callId is required")?;
        if !crate::event::is_valid_call_id(&call_id) {
            return Err(format!(
                "callId must match ^[A-Za-z0-9][A-Za-z0-9._:-]{{0,127}}$, got {call_id:?}"
            ));
        }
        let speaker = query_param(query, "speaker").unwrap_or_else(|| "mix".into());
        let Some(speaker) = Speaker::parse(&speaker) else {
            return Err(format!(
                "speaker must be agent, customer or mix, got {speaker:?}"
            ));
        };
        let sample_rate = match query_param(query, "sampleRate").as_deref() {
            None | Some("16000") => 16_000,
            Some("8000") => 8_000,
            Some(other) => return Err(format!("sampleRate must be 8000 or 16000, got {other:?}")),
        };
        let encoding = match query_param(query, "encoding") {
            None => Encoding::S16le,
            Some(e) => Encoding::parse(&e)
                .ok_or_else(|| format!("encoding must be s16le, s16be, pcmu or pcma, got {e:?}"))?,
        };
        Ok(Self {
            call_id,
            speaker,
            sample_rate,
            encoding,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start_ms: u64,
    end_ms: u64,
    behind_ms: u64,
    /// What ended it (finals only).
    ended: Option<Ended>,
}

/// What an utterance's tentative was when speech resumed in it.
#[derive(Debug, PartialEq, Eq)]
enum Stale {
    /// None was asked for.
    NoTentative,
    /// Its decode is still to come back: to be stopped.
    Decoding,
    /// It was back already: nothing to stop.
    Back,
}

/// A stream's utterances: what was asked of the workers and what went out.
struct Utterances {
    /// `utteranceId` is this prefix and the utterance's index.
    prefix: String,
    /// Each requested utterance's place for its events: start and end
    /// (ms), and how much audio had arrived past its end when it was asked
    /// for (ms; the start of its `lagMs`).
    spans: HashMap<u64, Span>,
    /// Finals asked for and not yet back: the stream closes only after.
    finals_pending: HashSet<u64>,
    /// Utterances whose final went out: late partials are dropped.
    finalised: HashSet<u64>,
    /// Utterances the consumer knows of, by a `speech` event or a partial:
    /// their final must follow, even empty.
    announced: HashSet<u64>,
    /// The text of the last partial per utterance, to skip repeats.
    last_partial: Option<(u64, String)>,
    /// Finals decoded before an earlier one of the stream (workers run
    /// side by side), held so that finals go out in utterance order.
    held: BTreeMap<u64, Done>,
    /// Speculative decodes: per utterance, the latest tentative's length
    /// in samples and its result once back.
    tentative: HashMap<u64, (usize, Option<Done>)>,
    /// Finals whose tentative has the same audio: served by it, no second
    /// decode. The time the final was asked for.
    awaiting: HashMap<u64, Instant>,
    /// The last final's text and where it ended (ms): Whisper's context
    /// for what follows soon enough after it.
    context: Option<(String, u64)>,
    /// A long utterance's pieces' texts, in order (`None` until decoded;
    /// empty if it failed), which head its partials.
    pieces: HashMap<u64, Vec<Option<String>>>,
    /// A partial back before the pieces it follows: sent when they are.
    held_partial: Option<Done>,
    /// Finals out whose revision is asked for: what went out.
    revising: HashMap<u64, Revising>,
}

/// A final that went out, as its revision needs it.
struct Revising {
    span: Span,
    text: String,
    /// The final's `lagMs`.
    lag_ms: u64,
}

/// Where a stream's revisions are asked for and come back.
struct Reviser {
    stream: u64,
    reply: mpsc::UnboundedSender<Done>,
}

impl Utterances {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            spans: HashMap::new(),
            finals_pending: HashSet::new(),
            finalised: HashSet::new(),
            announced: HashSet::new(),
            last_partial: None,
            held: BTreeMap::new(),
            tentative: HashMap::new(),
            awaiting: HashMap::new(),
            context: None,
            pieces: HashMap::new(),
            held_partial: None,
            revising: HashMap::new(),
        }
    }

    /// Piece `n` of utterance `index` was asked for.
    fn piece_asked(&mut self, index: u64, n: usize) {
        let pieces = self.pieces.entry(index).or_default();
        if pieces.len() <= n {
            pieces.resize(n + 1, None);
        }
    }

    /// Piece `n` of utterance `index` came back with `text`.
    fn piece_decoded(&mut self, index: u64, n: usize, text: String) {
        if let Some(slot) = self.pieces.get_mut(&index).and_then(|p| p.get_mut(n)) {
            *slot = Some(text);
        }
    }

    /// Whether the first `n` pieces of utterance `index` are all back.
    fn pieces_back(&self, index: u64, n: usize) -> bool {
        self.pieces
            .get(&index)
            .is_none_or(|p| p.iter().take(n).all(Option::is_some))
    }

    /// The text of utterance `index`'s first `n` pieces (`None` without
    /// any), which heads its partials; a piece not back shows as
    /// `missing` (none when that is empty), one without words not at all.
    fn pieces_text(&self, index: u64, n: usize, missing: &str) -> Option<String> {
        let words: Vec<&str> = self
            .pieces
            .get(&index)?
            .iter()
            .take(n)
            .map(|p| p.as_deref().unwrap_or(missing))
            .filter(|t| !t.is_empty())
            .collect();
        (!words.is_empty()).then(|| words.join(" "))
    }

    /// A decode came back: a tentative one becomes its utterance's final
    /// if that final was asked for with the same audio, waits for it if
    /// not yet, and is dropped if stale (counted as wasted when it went
    /// stale: replaced, its final different, or speech resumed).
    fn arrived(&mut self, mut done: Done) -> Option<Done> {
        if done.kind != Kind::Tentative {
            return Some(done);
        }
        let index = done.utterance;
        match self.tentative.get_mut(&index) {
            Some((samples, slot)) if *samples == done.samples => {
                if let Some(asked) = self.awaiting.remove(&index) {
                    self.tentative.remove(&index);
                    done.kind = Kind::Final;
                    done.total = asked.elapsed();
                    Some(done)
                } else {
                    *slot = Some(done);
                    None
                }
            }
            _ => None,
        }
    }

    /// Speech resumed in utterance `index`: its tentative, if any, is
    /// stale and forgotten.
    fn resumed(&mut self, index: u64) -> Stale {
        match self.tentative.remove(&index) {
            None => Stale::NoTentative,
            Some((_, None)) => Stale::Decoding,
            Some((_, Some(_))) => Stale::Back,
        }
    }

    /// The utterance `done` (a tentative) belongs to, when it is that
    /// utterance's latest tentative and reads as a finished sentence: its
    /// end of speech may come sooner ([`Segmenter::end_early`]).
    fn sentence_ended(&self, done: &Done) -> Option<u64> {
        let latest = self
            .tentative
            .get(&done.utterance)
            .map(|(samples, _)| *samples);
        (done.kind == Kind::Tentative
            && latest == Some(done.samples)
            && done.result.as_ref().is_ok_and(|d| ends_sentence(&d.text)))
        .then_some(done.utterance)
    }

    /// A final was asked for: `true` when a tentative with the same audio
    /// serves it (its result handed back at once if already there).
    fn final_from_tentative(
        &mut self,
        index: u64,
        samples: usize,
        wasted: &crate::telemetry::Counter,
    ) -> (bool, Option<Done>) {
        match self.tentative.get_mut(&index) {
            Some((s, slot)) if *s == samples && samples > 0 => match slot.take() {
                Some(mut done) => {
                    self.tentative.remove(&index);
                    done.kind = Kind::Final;
                    done.total = Duration::ZERO;
                    (true, Some(done))
                }
                None => {
                    self.awaiting.insert(index, Instant::now());
                    (true, None)
                }
            },
            Some(_) => {
                self.tentative.remove(&index);
                wasted.inc();
                (false, None)
            }
            None => (false, None),
        }
    }

    /// What may go out now that `done` came back, in order: a partial at
    /// once, a final once every earlier final of the stream has gone out.
    fn ready(&mut self, done: Done) -> Vec<Done> {
        if done.kind != Kind::Final {
            return vec![done];
        }
        self.held.insert(done.utterance, done);
        let mut out = Vec::new();
        while let Some(&first) = self.held.keys().next() {
            // Still pending: asked for, not back, and not going out now.
            let earlier_pending = self.finals_pending.iter().any(|&p| {
                p < first
                    && !self.held.contains_key(&p)
                    && !out.iter().any(|d: &Done| d.utterance == p)
            });
            if earlier_pending {
                break;
            }
            out.extend(self.held.remove(&first));
        }
        out
    }
}

/// Runs one admitted stream; it counts in `streams` from its handshake
/// (`server`) until this returns.
pub(super) async fn run<S>(io: S, state: Arc<State>, params: StreamParams, stream_id: u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .max_message_size(Some(state.settings.max_frame_bytes))
        .max_frame_size(Some(state.settings.max_frame_bytes));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    // (`streams` was counted at the handshake, when stt admitted it.)
    let span = tracing::info_span!("stream", call_id = %params.call_id, speaker = %params.speaker);
    let _guard = span.enter();
    tracing::info!(rate = params.sample_rate, encoding = ?params.encoding, "stream opened");
    drop(_guard);
    let result = stream(ws, &state, &params, stream_id).await;
    state.pool.forget_stream(stream_id);
    state.metrics.streams.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => {
            tracing::info!(call_id = %params.call_id, speaker = %params.speaker, "stream closed")
        }
        Err(e) => {
            tracing::warn!(call_id = %params.call_id, speaker = %params.speaker, error = %e, "stream ended")
        }
    }
}

async fn stream<S>(
    ws: WebSocketStream<S>,
    state: &State,
    params: &StreamParams,
    stream_id: u64,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let s = &state.settings;
    let (mut tx, mut rx) = ws.split();
    let (reply_tx, mut replies) = mpsc::unbounded_channel::<Done>();
    let mut segmenter = Segmenter::new(s.segmenter_config());
    let mut upsampler = (params.sample_rate == 8_000).then(Upsampler2x::new);
    let mut leftover: Vec<u8> = Vec::new();
    let mut decoded: Vec<i16> = Vec::new();
    let mut utts = Utterances::new(format!("{}-{}", params.speaker, unique_tag(stream_id)));
    let reviser = Reviser {
        stream: stream_id,
        reply: reply_tx.clone(),
    };
    let idle = Duration::from_secs(s.idle_timeout_secs.max(1));
    let mut last_audio = Instant::now();
    let mut samples_in: u64 = 0;
    let mut reason: Option<(CloseCode, &'static str)> = None;
    let rate_per_ms = u64::from(params.sample_rate / 1000);

    let metrics = &state.metrics;
    // Requests to the workers, with `samples_in` of audio received so far;
    // a start of speech goes out as it is, and a final its tentative
    // already decoded comes back at once, ready to deliver (in order).
    let submit = |requests: Vec<Request>, utts: &mut Utterances, samples_in: u64| {
        let received_ms = samples_in / rate_per_ms.max(1);
        let mut started = Vec::new();
        let mut served = Vec::new();
        for r in requests {
            let mut ended = None;
            let (kind, u) = match r {
                Request::Started(index, start_ms) => {
                    utts.announced.insert(index);
                    started.push(Event::Speech(Speech {
                        call_id: params.call_id.clone(),
                        speaker: params.speaker,
                        utterance_id: format!("{}-{index}", utts.prefix),
                        start_ms,
                    }));
                    continue;
                }
                Request::Partial(u) => {
                    metrics.partials_asked.inc();
                    (Kind::Partial, u)
                }
                Request::Piece(u, n) => {
                    utts.piece_asked(u.index, n);
                    (Kind::Piece(n), u)
                }
                Request::Resumed(index) => {
                    let stale = utts.resumed(index);
                    if stale != Stale::NoTentative {
                        metrics.speculative_wasted.inc();
                    }
                    if stale == Stale::Decoding {
                        state.pool.cancel_tentative(stream_id, index);
                    }
                    continue;
                }
                Request::Tentative(u) => {
                    // Only while no final waits: never delays real work.
                    if state.pool.finals_waiting() {
                        continue;
                    }
                    if utts
                        .tentative
                        .insert(u.index, (u.audio.len(), None))
                        .is_some()
                    {
                        metrics.speculative_wasted.inc();
                    }
                    (Kind::Tentative, u)
                }
                Request::Final(u, why) => {
                    ended = Some(why);
                    (Kind::Final, u)
                }
            };
            if matches!(kind, Kind::Partial | Kind::Final) {
                utts.spans.insert(
                    u.index,
                    Span {
                        start_ms: u.start_ms,
                        end_ms: u.end_ms,
                        behind_ms: received_ms.saturating_sub(u.end_ms),
                        ended,
                    },
                );
            }
            if kind == Kind::Final {
                utts.finals_pending.insert(u.index);
                let (covered, done) =
                    utts.final_from_tentative(u.index, u.audio.len(), &metrics.speculative_wasted);
                if covered {
                    metrics.finals_speculative.inc();
                    state.pool.final_served(stream_id, u.audio.len());
                    served.extend(done);
                    continue;
                }
            }
            let Utterance {
                index,
                audio,
                start_ms,
                ..
            } = u;
            state.pool.submit(Job {
                stream: stream_id,
                utterance: index,
                kind,
                audio,
                // A partial goes on from its utterance's pieces; a final
                // from the previous final (not the previous final for a
                // partial: it is replaced soon, and the context lengthens
                // every decode).
                context: if kind.is_partial_like() {
                    utts.pieces_text(index, usize::MAX, "")
                } else {
                    s.context_for(utts.context.as_ref(), start_ms)
                        .map(str::to_owned)
                },
                pieces: utts.pieces.get(&index).map_or(0, Vec::len),
                queued: Instant::now(),
                reply: reply_tx.clone(),
                narrow: false,
            });
        }
        for event in &started {
            state.publisher.send(event.clone());
        }
        let ready: Vec<Done> = served.into_iter().flat_map(|d| utts.ready(d)).collect();
        (started, ready)
    };

    let mut counted = Counted::default();
    // Whether an utterance is open, as the pool was last told (revisions
    // wait while streams speak).
    let mut speaking = false;
    let tell_speaking = |segmenter: &Segmenter, speaking: &mut bool| {
        if segmenter.in_utterance() != *speaking {
            *speaking = !*speaking;
            state.pool.speaking(stream_id, *speaking);
        }
    };
    // Receive audio until the stream ends.
    loop {
        counted.add_new(metrics, samples_in, params.sample_rate, &segmenter);
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                reason = Some((CloseCode::Away, "stt shutting down"));
                break;
            }
            _ = tokio::time::sleep_until((last_audio + idle).into()) => {
                reason = Some((CloseCode::Policy, "no audio received in time"));
                break;
            }
            done = replies.recv() => {
                let ended = done.as_ref().and_then(|d| utts.sentence_ended(d));
                let done = done.and_then(|d| utts.arrived(d));
                let mut out = done.map(|d| utts.ready(d)).unwrap_or_default();
                if let Some(index) = ended {
                    out.extend(submit(segmenter.end_early(index), &mut utts, samples_in).1);
                    tell_speaking(&segmenter, &mut speaking);
                }
                for done in out {
                    deliver(state, params, &mut utts, done, &mut tx, &reviser).await;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    last_audio = Instant::now();
                    leftover.extend_from_slice(&bytes);
                    decoded.clear();
                    let used = params.encoding.decode(&leftover, &mut decoded);
                    leftover.drain(..used);
                    samples_in += decoded.len() as u64;
                    state.capacity.audio(decoded.len() as u64 / rate_per_ms.max(1));
                    let pcm = crate::audio::to_f32(&decoded);
                    let pcm16 = match &mut upsampler {
                        Some(up) => {
                            let mut out = Vec::with_capacity(pcm.len() * 2);
                            up.process(&pcm, &mut out);
                            out
                        }
                        None => pcm,
                    };
                    let (started, ready) = submit(segmenter.push(&pcm16), &mut utts, samples_in);
                    tell_speaking(&segmenter, &mut speaking);
                    for event in started {
                        let _ = tx.send(Message::text(event.to_json())).await;
                    }
                    for done in ready {
                        deliver(state, params, &mut utts, done, &mut tx, &reviser).await;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if serde_json::from_str::<Control>(&text).is_ok_and(|c| c.kind == "end") {
                        break;
                    }
                    let _ = tx.send(Message::text(json!({"type":"error","error":"text frames must be {\"type\":\"end\"}; audio goes in binary frames"}).to_string())).await;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // Oversized frames and protocol errors end the stream;
                    // what was heard so far is still finalised.
                    tracing::warn!(error = %e, "websocket error");
                    reason = Some((CloseCode::Size, "frame too large or malformed"));
                    break;
                }
            }
        }
    }
    let finished = submit(segmenter.finish(), &mut utts, samples_in).1;
    tell_speaking(&segmenter, &mut speaking);
    for done in finished {
        deliver(state, params, &mut utts, done, &mut tx, &reviser).await;
    }
    counted.add_new(metrics, samples_in, params.sample_rate, &segmenter);

    // Deliver every outstanding final before closing.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !utts.finals_pending.is_empty() {
        match tokio::time::timeout_at(deadline.into(), replies.recv()).await {
            Ok(Some(done)) => {
                let Some(done) = utts.arrived(done) else {
                    continue;
                };
                for done in utts.ready(done) {
                    deliver(state, params, &mut utts, done, &mut tx, &reviser).await;
                }
            }
            _ => {
                tracing::error!(
                    left = utts.finals_pending.len() - utts.held.len(),
                    "finals still pending at the drain deadline"
                );
                // What is decoded still goes out, in order.
                for (_, done) in std::mem::take(&mut utts.held) {
                    deliver(state, params, &mut utts, done, &mut tx, &reviser).await;
                }
                break;
            }
        }
    }
    // The revisions asked for: a short wait (they come last, and a busy stt
    // may drop them); what is not back by then keeps its first final.
    let deadline = Instant::now() + REVISION_DRAIN;
    while !utts.revising.is_empty() && state.settings.revise_finals {
        match tokio::time::timeout_at(deadline.into(), replies.recv()).await {
            Ok(Some(done)) if done.kind == Kind::Revision => {
                deliver(state, params, &mut utts, done, &mut tx, &reviser).await;
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let frame = reason.map(|(code, why)| CloseFrame {
        code,
        reason: why.into(),
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), tx.send(Message::Close(frame))).await;
    Ok(())
}

/// A stream's running totals that the metrics already have: what is new
/// is added as the stream goes, so a dashboard sees a long call's audio
/// and speech while it lasts, not only once it hangs up.
#[derive(Default)]
struct Counted {
    audio_ms: u64,
    speech_ms: u64,
    dropped: u64,
    ended_early: u64,
    ended_long: u64,
}

impl Counted {
    /// Adds to the metrics what the stream's totals (`samples_in` at
    /// `rate`, the segmenter's counts) gained since last time.
    fn add_new(
        &mut self,
        m: &super::metrics::Metrics,
        samples_in: u64,
        rate: u32,
        seg: &Segmenter,
    ) {
        let audio_ms = samples_in * 1000 / u64::from(rate.max(1));
        for (now, had, counter) in [
            (audio_ms, &mut self.audio_ms, &m.audio_ms),
            (seg.speech_ms, &mut self.speech_ms, &m.speech_ms),
            (seg.dropped, &mut self.dropped, &m.segments_dropped),
            (seg.ended_early, &mut self.ended_early, &m.finals_early),
            (seg.ended_long, &mut self.ended_long, &m.finals_long),
        ] {
            if now > *had {
                counter.add(now - *had);
                *had = now;
            }
        }
    }
}

/// Whether Whisper's text ends a sentence: `.`, `?` or `!` (a trailing
/// `...` is speech trailing off, not an end).
fn ends_sentence(text: &str) -> bool {
    let t = text.trim_end_matches(|c: char| c.is_whitespace() || c == '"' || c == '»');
    (t.ends_with(['?', '!']) || t.ends_with('.')) && !t.ends_with("..") && !t.ends_with('…')
}

/// Turns a finished transcription into a `transcript` event, if it is one.
async fn deliver<W>(
    state: &State,
    params: &StreamParams,
    utts: &mut Utterances,
    done: Done,
    tx: &mut W,
    reviser: &Reviser,
) where
    W: futures_util::Sink<Message> + Unpin,
{
    let index = done.utterance;
    if done.kind == Kind::Revision {
        return deliver_revision(state, params, utts, done, tx).await;
    }
    let is_final = done.kind == Kind::Final;
    if is_final {
        utts.finals_pending.remove(&index);
    } else if utts.finalised.contains(&index) || utts.finals_pending.contains(&index) {
        // Its final is out or on its way: this partial is stale.
        return;
    }
    let done = match done.kind {
        Kind::Piece(n) => {
            // Kept to head the partials that follow; no event of its own.
            // Without words, it adds none; failed, it shows as `…` (the
            // final will have them). (Stopped for another stream's final,
            // the pool decodes it again; stopped for its own, it is stale.)
            let text = match &done.result {
                Ok(d) if reject_reason(d, state.settings.max_no_speech_prob).is_none() => {
                    d.text.clone()
                }
                Ok(_) => String::new(),
                Err(_) => "…".to_owned(),
            };
            utts.piece_decoded(index, n, text);
            // A partial that waited for it (and any other piece) goes now.
            match utts.held_partial.take() {
                Some(p) if p.utterance == index && utts.pieces_back(index, p.pieces) => p,
                held => {
                    utts.held_partial = held;
                    return;
                }
            }
        }
        Kind::Partial if !utts.pieces_back(index, done.pieces) => {
            // Back before a piece it follows: sent once that piece is.
            utts.held_partial = Some(done);
            return;
        }
        _ => done,
    };
    let Some(&span) = utts.spans.get(&index) else {
        return;
    };
    let gap = done.gave_up.then(|| "overload".to_owned());
    let Done {
        result,
        total,
        decode,
        audio,
        context,
        ..
    } = done;
    let decoded = match result {
        Ok(d) => d,
        Err(e) => {
            if done.gave_up {
                tracing::warn!(
                    waited_ms = total.as_millis() as u64,
                    "a final given up: stt too far behind"
                );
            } else if done.stopped {
                tracing::debug!(kind = ?done.kind, "a decode stopped midway");
            } else {
                tracing::error!(error = %e, "transcription failed");
            }
            if !is_final {
                return;
            }
            super::engine::Decoded {
                text: String::new(),
                no_speech_prob: 1.0,
            }
        }
    };
    let mut text = decoded.text.clone();
    if let Some(why) = reject_reason(&decoded, state.settings.max_no_speech_prob) {
        if !decoded.text.is_empty() {
            state.metrics.filtered.inc();
            // What was said is not logged: it may hold a card number (the
            // relay redacts; the journal would not).
            tracing::debug!(
                reason = why,
                chars = decoded.text.chars().count(),
                "dropped a transcription"
            );
        }
        text.clear();
    }
    if is_final {
        utts.finalised.insert(index);
        utts.pieces.remove(&index);
        if utts
            .held_partial
            .as_ref()
            .is_some_and(|p| p.utterance == index)
        {
            utts.held_partial = None;
        }
        if !text.is_empty() {
            utts.context = super::engine::as_context(&text).map(|c| (c, span.end_ms));
        }
        // An empty final is only needed to close an utterance announced
        // (a `speech` event or a partial went out), or to say it was
        // given up.
        if text.is_empty() && !utts.announced.remove(&index) && gap.is_none() {
            return;
        }
    } else {
        if text.is_empty() {
            return;
        }
        if let Some(head) = utts.pieces_text(index, done.pieces, "…") {
            text = format!("{head} {text}");
        }
        if utts.last_partial.as_ref() == Some(&(index, text.clone())) {
            return;
        }
        utts.last_partial = Some((index, text.clone()));
        utts.announced.insert(index);
    }
    tracing::debug!(
        final_ = is_final,
        decode_ms = decode.as_millis() as u64,
        chars = text.chars().count(),
        "transcript"
    );
    let lag_ms = span.behind_ms + total.as_millis() as u64;
    let event = Transcript {
        latency_ms: Some(total.as_millis() as u64),
        lag_ms: Some(lag_ms),
        gap,
        ..transcript(params, utts, index, &span, text.clone(), is_final)
    };
    publish(state, tx, event).await;
    // A final with words: decoded again the careful way when the workers
    // have nothing else to do.
    if is_final && !text.is_empty() && !audio.is_empty() && state.settings.revise_finals {
        utts.revising.insert(index, Revising { span, text, lag_ms });
        state.pool.submit(Job {
            stream: reviser.stream,
            utterance: index,
            kind: Kind::Revision,
            audio,
            context,
            pieces: 0,
            queued: Instant::now(),
            reply: reviser.reply.clone(),
            narrow: false,
        });
    }
}

/// A revision came back: a second final of its utterance (`revised`),
/// where its text has words, passes the filters, and differs from the
/// first final's. It becomes the context for what follows, unless a later
/// final already has.
async fn deliver_revision<W>(
    state: &State,
    params: &StreamParams,
    utts: &mut Utterances,
    done: Done,
    tx: &mut W,
) where
    W: futures_util::Sink<Message> + Unpin,
{
    let index = done.utterance;
    let Some(first) = utts.revising.remove(&index) else {
        return;
    };
    let Ok(decoded) = done.result else {
        return;
    };
    let text = decoded.text.trim();
    if text.is_empty()
        || reject_reason(&decoded, state.settings.max_no_speech_prob).is_some()
        || text == first.text.trim()
    {
        return;
    }
    state.metrics.revisions_sent.inc();
    if let Some((context, end_ms)) = &mut utts.context
        && *end_ms == first.span.end_ms
        && let Some(c) = super::engine::as_context(text)
    {
        *context = c;
    }
    tracing::debug!(
        decode_ms = done.decode.as_millis() as u64,
        chars = text.chars().count(),
        "revised final"
    );
    let event = Transcript {
        latency_ms: Some(done.total.as_millis() as u64),
        lag_ms: Some(first.lag_ms + done.total.as_millis() as u64),
        revised: Some(true),
        ..transcript(params, utts, index, &first.span, text.to_owned(), true)
    };
    publish(state, tx, event).await;
}

/// A `transcript` event of utterance `index` over `span`, without the
/// timing fields, `gap` or `revised` (the caller sets those).
fn transcript(
    params: &StreamParams,
    utts: &Utterances,
    index: u64,
    span: &Span,
    text: String,
    is_final: bool,
) -> Transcript {
    Transcript {
        call_id: params.call_id.clone(),
        speaker: params.speaker,
        text,
        is_final,
        utterance_id: format!("{}-{index}", utts.prefix),
        start_ms: span.start_ms,
        end_ms: span.end_ms,
        latency_ms: None,
        lag_ms: None,
        gap: None,
        // (Only a final's span has it.)
        ended_by: span.ended.map(|e| e.as_str().to_owned()),
        revised: None,
    }
}

/// Sends a transcript to the stream's client and to the relay.
async fn publish<W>(state: &State, tx: &mut W, transcript: Transcript)
where
    W: futures_util::Sink<Message> + Unpin,
{
    let event = Event::Transcript(transcript);
    state.publisher.send(event.clone());
    let _ = tx.send(Message::text(event.to_json())).await;
}

/// A text frame from the audio's sender: `{"type":"end"}` is the only one.
#[derive(serde::Deserialize)]
struct Control {
    #[serde(rename = "type")]
    kind: String,
}

/// A short tag unique to this stream in this process's life and across
/// restarts (time-based), so utterance ids never repeat within a call.
fn unique_tag(stream_id: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{:x}", (nanos / 1000) ^ (stream_id << 40))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(utterance: u64, kind: Kind) -> Done {
        Done {
            utterance,
            kind,
            result: Err(String::new()),
            decode: Duration::ZERO,
            total: Duration::ZERO,
            gave_up: false,
            samples: 0,
            pieces: 0,
            audio: Vec::new(),
            context: None,
            stopped: false,
        }
    }

    #[test]
    fn finals_go_out_in_utterance_order_partials_at_once() {
        let mut u = Utterances::new(String::new());
        u.finals_pending = [1, 2, 3].into_iter().collect();
        let order = |v: Vec<Done>| v.iter().map(|d| d.utterance).collect::<Vec<_>>();
        // Final 3 decoded first (another worker): held.
        assert!(u.ready(done(3, Kind::Final)).is_empty());
        // A partial never waits, nor a revision (of a final already out).
        assert_eq!(order(u.ready(done(4, Kind::Partial))), [4]);
        let revision = u.arrived(done(0, Kind::Revision)).expect("passes");
        assert_eq!(order(u.ready(revision)), [0]);
        // Final 2 waits for 1; 1 releases 1, 2 and 3 in order.
        assert!(u.ready(done(2, Kind::Final)).is_empty());
        assert_eq!(order(u.ready(done(1, Kind::Final))), [1, 2, 3]);
        assert!(u.held.is_empty());
    }

    #[test]
    fn a_long_utterances_pieces_head_its_partials_in_order() {
        let mut u = Utterances::new(String::new());
        assert_eq!(u.pieces_text(1, 9, "…"), None);
        assert!(u.pieces_back(1, 9), "no pieces: nothing to wait for");
        u.piece_asked(1, 0);
        u.piece_asked(1, 1);
        u.piece_asked(1, 2);
        // The second came back first (another worker).
        u.piece_decoded(1, 1, "y luego".into());
        assert!(!u.pieces_back(1, 2) && u.pieces_back(1, 0));
        assert_eq!(u.pieces_text(1, 2, "…").as_deref(), Some("… y luego"));
        assert_eq!(u.pieces_text(1, 2, "").as_deref(), Some("y luego"));
        u.piece_decoded(1, 0, "primero".into());
        assert!(u.pieces_back(1, 2) && !u.pieces_back(1, 3));
        // A partial that follows two pieces shows those two only.
        assert_eq!(u.pieces_text(1, 2, "…").as_deref(), Some("primero y luego"));
        // A piece without words adds none.
        u.piece_decoded(1, 2, String::new());
        assert_eq!(u.pieces_text(1, 3, "…").as_deref(), Some("primero y luego"));
        // Another utterance's, or one never asked for: nothing.
        u.piece_decoded(2, 0, "otra".into());
        assert_eq!(u.pieces_text(2, 1, "…"), None);
    }

    #[test]
    fn a_sentence_ends_at_a_full_stop_a_question_or_an_exclamation() {
        for t in [
            "Buenos días.",
            "¿Me oye?",
            "¡Gracias!",
            "Vale. ",
            "Dijo «sí.»",
        ] {
            assert!(ends_sentence(t), "{t}");
        }
        for t in ["", "Pues...", "Pues…", "el número es", "uno, dos,", "y"] {
            assert!(!ends_sentence(t), "{t}");
        }
    }

    #[test]
    fn only_the_latest_tentative_read_as_a_sentence_ends_its_utterance_early() {
        let said = |samples, text: &str| Done {
            result: Ok(crate::stt::engine::Decoded {
                text: text.into(),
                no_speech_prob: 0.0,
            }),
            samples,
            ..done(1, Kind::Tentative)
        };
        let mut u = Utterances::new("agent-x".into());
        u.tentative.insert(1, (200, None));
        assert_eq!(u.sentence_ended(&said(200, "Hola.")), Some(1));
        assert_eq!(u.sentence_ended(&said(100, "Hola.")), None, "stale");
        assert_eq!(u.sentence_ended(&said(200, "Hola,")), None);
        let partial = Done {
            kind: Kind::Partial,
            ..said(200, "Hola.")
        };
        assert_eq!(u.sentence_ended(&partial), None);
    }

    #[test]
    fn a_tentative_serves_its_final_only_with_the_same_audio() {
        let wasted = crate::telemetry::Counter::default();
        let tentative = |utterance, samples| Done {
            samples,
            ..done(utterance, Kind::Tentative)
        };
        let mut u = Utterances::new(String::new());
        // Back before the final is asked for: kept, then handed over.
        u.tentative.insert(1, (100, None));
        assert!(u.arrived(tentative(1, 100)).is_none());
        let (covered, d) = u.final_from_tentative(1, 100, &wasted);
        assert!(covered);
        assert_eq!(d.map(|d| d.kind), Some(Kind::Final));
        // Asked for first: the tentative becomes the final when it lands.
        u.tentative.insert(2, (200, None));
        let (covered, d) = u.final_from_tentative(2, 200, &wasted);
        assert!(covered && d.is_none());
        assert_eq!(
            u.arrived(tentative(2, 200)).map(|d| d.kind),
            Some(Kind::Final)
        );
        // Speech resumed: the final has more audio; the tentative is
        // dropped and the final decoded on its own.
        u.tentative.insert(3, (300, None));
        let (covered, d) = u.final_from_tentative(3, 400, &wasted);
        assert!(!covered && d.is_none());
        assert!(u.arrived(tentative(3, 300)).is_none());
        // Counted once, when it went stale, not again when it landed.
        assert_eq!(wasted.get(), 1);
        assert!(u.tentative.is_empty() && u.awaiting.is_empty());
        // Speech resumed before it was back: to be stopped; once back:
        // nothing to stop; none asked for: nothing. Either way, a later
        // final is decoded on its own.
        u.tentative.insert(4, (400, None));
        assert_eq!(u.resumed(4), Stale::Decoding);
        assert!(u.arrived(tentative(4, 400)).is_none());
        u.tentative.insert(5, (500, None));
        assert!(u.arrived(tentative(5, 500)).is_none());
        assert_eq!(u.resumed(5), Stale::Back);
        assert_eq!(u.resumed(6), Stale::NoTentative);
        assert!(matches!(
            u.final_from_tentative(5, 500, &wasted),
            (false, None)
        ));
        assert!(u.tentative.is_empty() && u.awaiting.is_empty());
    }
}
