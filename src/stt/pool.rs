//! The worker pool: a fixed number of threads, each with its own Whisper
//! decoder state over the one shared model.
//!
//! Finals come first, in arrival order. Each stream has at most one partial
//! waiting: a newer partial (or the utterance's final) replaces it, which is
//! how overload sheds work first (a long utterance's pieces wait with the
//! partials, and only its final drops them: a piece stopped midway for
//! another stream's final is queued again). Partials are served
//! round-robin across streams.
//!
//! When stt falls behind, the lag stays bounded in two more steps: a final
//! that waited longer than `behind` is decoded the cheap way (greedy, the
//! encoder window fitted tightly to its audio), and one that waited longer
//! than `give_up` is not decoded at all: it comes back marked `gave_up`, and
//! the stream says so in its event (`gap`), so no final is lost silently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::capacity::Capacity;
use super::engine::{DecodeOptions, Decoded, Engine, EngineError, Stop};
use super::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Partial,
    /// The `n`-th settled piece of a long utterance, whose text heads its
    /// later partials: decoded as a partial, but never replaced by a newer
    /// one (the utterance's final still drops it).
    Piece(usize),
    Final,
    /// A final decoded speculatively, when the silence that may end its
    /// utterance began: it becomes the final if the utterance ends with
    /// the same audio, and is dropped if speech resumes.
    Tentative,
    /// A final that went out, decoded again the careful way
    /// (`stt.revise_finals`): only while no final or partial waits, and
    /// stopped midway for one (then queued again).
    Revision,
}

/// One transcription to do.
pub struct Job {
    pub stream: u64,
    pub utterance: u64,
    pub kind: Kind,
    pub audio: Vec<f32>,
    /// The stream's previous final text (a partial: its utterance's
    /// pieces' text), for Whisper's prompt.
    pub context: Option<String>,
    /// A partial: how many of its utterance's pieces precede its audio.
    pub pieces: usize,
    /// When the request was made (for latency figures).
    pub queued: Instant,
    pub reply: mpsc::UnboundedSender<Done>,
    /// On one thread: it ran on several once and gave way to another
    /// process.
    pub narrow: bool,
}

impl Kind {
    /// Decoded like a final: first in the queue, with the finals' settings.
    fn is_final_like(self) -> bool {
        matches!(self, Kind::Final | Kind::Tentative)
    }

    /// Decoded for the partials (a partial or a piece): gives way to a
    /// final.
    pub fn is_partial_like(self) -> bool {
        matches!(self, Kind::Partial | Kind::Piece(_))
    }
}

/// A finished transcription.
#[derive(Debug)]
pub struct Done {
    pub utterance: u64,
    pub kind: Kind,
    pub result: Result<Decoded, String>,
    /// Time in Whisper.
    pub decode: Duration,
    /// Time from the request to the result.
    pub total: Duration,
    /// A final that waited past the give-up bound: not decoded.
    pub gave_up: bool,
    /// Samples of audio decoded (a tentative matches its final by this).
    pub samples: usize,
    /// As the job's: the pieces a partial's audio follows.
    pub pieces: usize,
    /// A final (or a tentative): its audio and context, handed back for
    /// its revision. Empty otherwise.
    pub audio: Vec<f32>,
    pub context: Option<String>,
    /// Stopped midway (a partial for a final, a tentative when speech
    /// resumed): its error is no failure.
    pub stopped: bool,
}

impl Done {
    /// A job not decoded (a final given up, a revision dropped), as its
    /// stream is told.
    fn dropped(job: &Job) -> Self {
        Self {
            utterance: job.utterance,
            kind: job.kind,
            result: Err("given up: stt too far behind".into()),
            decode: Duration::ZERO,
            total: job.queued.elapsed(),
            gave_up: true,
            samples: job.audio.len(),
            pieces: job.pieces,
            audio: Vec::new(),
            context: None,
            stopped: false,
        }
    }
}

/// How long a final may wait before the pool hurries, then gives up; and
/// how wide a lone decode may go.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub behind: Duration,
    pub give_up: Duration,
    /// Threads a decode may use when it is the only one and the machine's
    /// other cores are idle (`stt.max_threads_when_idle`).
    pub wide_threads: usize,
    /// How a revision reads its audio (`stt.revision_audio_ctx`,
    /// `stt.revision_beam`).
    pub revision: Careful,
}

/// The settings a revision gets beyond the finals' own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Careful {
    /// Encoder window floor, in frames.
    pub audio_ctx: i32,
    /// Beam width.
    pub beam: usize,
}

impl Careful {
    /// The finals' `options` made careful: never less than they are.
    fn apply(self, options: &DecodeOptions) -> DecodeOptions {
        DecodeOptions {
            min_audio_ctx: options.min_audio_ctx.max(self.audio_ctx),
            beam: options.beam.max(self.beam),
            ..options.clone()
        }
    }
}

/// Most revisions waiting: past it the oldest is dropped (its first final
/// stands).
pub const REVISIONS_WAITING_MAX: usize = 64;

#[derive(Default)]
struct Queue {
    finals: VecDeque<Job>,
    partials: VecDeque<Job>,
    /// Last of all: only when no final or partial waits, and workers to
    /// spare for the streams with an utterance open (`revisions_may_run`).
    revisions: VecDeque<Job>,
    /// Streams with an utterance open: their tentative or final may come
    /// any moment.
    speaking: std::collections::HashSet<u64>,
    closed: bool,
    /// Workers decoding now.
    busy: usize,
    /// Worker slots a wide decode holds beyond its own: no other decode
    /// starts on them (whisper.cpp's spinning threads stall when there are
    /// more of them than cores).
    lent: usize,
    /// What each worker is decoding now.
    running: Vec<Option<Decoding>>,
}

/// What decides how many threads a decode about to start gets
/// ([`Pool::threads_for`]).
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Its worker's threads.
    base: usize,
    /// The most it may use alone on idle cores.
    wide: usize,
    /// It gave way once: one thread.
    narrow: bool,
    workers: usize,
    /// No other decode runs, and no slot is lent.
    alone: bool,
    /// Threads of the other decodes running now.
    running: usize,
    /// Cores free of other processes (None: not sampled yet).
    free: Option<f64>,
}

/// What a decode was given: its threads, and the worker slots lent to it
/// beyond its own (handed back by [`Pool::done`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Grant {
    threads: usize,
    lent: usize,
}

impl Plan {
    /// The threads this decode gets, and the slots lent to it.
    fn grant(self) -> Grant {
        let grant = |threads, lent| Grant { threads, lent };
        let crowded = |threads| self.free.is_some_and(|f| super::idle::crowded(f, threads));
        if self.base > 1 && (self.narrow || crowded(self.running + self.base)) {
            return grant(1, 0);
        }
        if self.narrow || self.wide <= self.base || !self.alone {
            return grant(self.base, 0);
        }
        let idle = self.free.unwrap_or(0.0).round() as usize;
        // Whole worker slots only, and no more than there are workers.
        let slots = (idle.clamp(self.base, self.wide) / self.base).min(self.workers);
        grant(self.base * slots, slots - 1)
    }
}

/// Which decode a job is: the stream, its utterance, and what of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decoding {
    stream: u64,
    utterance: u64,
    kind: Kind,
}

impl Decoding {
    fn of(job: &Job) -> Self {
        Self {
            stream: job.stream,
            utterance: job.utterance,
            kind: job.kind,
        }
    }
}

impl Queue {
    /// Whether a revision may start (or go on): nobody speaking, or two
    /// workers free beyond one per stream speaking, so that their finals
    /// never wait for a revision to stop (on 2 cores: only while all are
    /// silent).
    fn revisions_may_run(&self, workers: usize) -> bool {
        let free = workers.saturating_sub(self.busy + self.lent);
        self.speaking.is_empty() || free >= self.speaking.len() + 2
    }

    /// Clears the way for `job`, a final or a tentative: its stream's
    /// waiting partial goes (the final will have its words), and for a
    /// final its waiting pieces too. A tentative's utterance may go on, and
    /// its pieces head the partials that follow. How many were dropped.
    fn make_way_for(&mut self, stream: u64, kind: Kind) -> usize {
        let before = self.partials.len();
        let keep = |p: &Job| {
            p.stream != stream || (kind == Kind::Tentative && matches!(p.kind, Kind::Piece(_)))
        };
        self.partials.retain(keep);
        before - self.partials.len()
    }

    /// The worker to stop so that a job of `kind` starts at once: one
    /// decoding a revision, always; else, for a final or a tentative when
    /// no worker is free, one decoding a partial, or for a final, failing
    /// that, one decoding a piece (which is done again after,
    /// `Queue::again`).
    fn to_stop_for(&self, kind: Kind, workers: usize) -> Option<usize> {
        let running = |is: fn(Kind) -> bool| {
            self.running
                .iter()
                .position(|r| r.is_some_and(|r| is(r.kind)))
        };
        // A revision gives way to anything, even with a worker free: the
        // decode then runs alone, and may go wide on the idle cores.
        if let Some(w) = running(|k| k == Kind::Revision) {
            return Some(w);
        }
        if self.busy + self.lent < workers || kind.is_partial_like() {
            return None;
        }
        let partial = running(|k| k == Kind::Partial);
        if partial.is_some() || kind != Kind::Final {
            return partial;
        }
        running(|k| matches!(k, Kind::Piece(_)))
    }

    /// A decode on several threads that gave way to another process:
    /// queued again at the head of its queue, to be done on one. A
    /// partial is not when a newer one of its stream waits. What is not
    /// queued again comes back.
    fn again_narrow(&mut self, mut job: Job) -> Option<Job> {
        if self.closed {
            return Some(job);
        }
        job.narrow = true;
        match job.kind {
            Kind::Final | Kind::Tentative => self.finals.push_front(job),
            Kind::Piece(_) | Kind::Revision => return self.again(job),
            Kind::Partial => {
                if self.waiting_partial(job.stream).is_some() {
                    return Some(job);
                }
                self.partials.push_front(job);
            }
        }
        None
    }

    /// The partial of `stream` waiting for a worker (at most one: a newer
    /// one replaces it).
    fn waiting_partial(&mut self, stream: u64) -> Option<&mut Job> {
        self.partials
            .iter_mut()
            .find(|p| p.stream == stream && p.kind == Kind::Partial)
    }

    /// A decode stopped midway: a revision goes back to the head of the
    /// revisions; a piece to the head of the partials, since its words
    /// head its utterance's later partials, unless that utterance's final
    /// is on its way (it has them). What is not queued again comes back.
    fn again(&mut self, job: Job) -> Option<Job> {
        let its_final = Decoding {
            kind: Kind::Final,
            ..Decoding::of(&job)
        };
        if job.kind == Kind::Revision && !self.closed {
            self.revisions.push_front(job);
            return None;
        }
        let final_coming = self.finals.iter().any(|f| Decoding::of(f) == its_final)
            || self.running.contains(&Some(its_final));
        if !matches!(job.kind, Kind::Piece(_)) || final_coming || self.closed {
            return Some(job);
        }
        self.partials.push_front(job);
        None
    }
}

pub struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
    metrics: Arc<Metrics>,
    capacity: Arc<Capacity>,
    workers: usize,
    idle: Arc<super::idle::IdleCpu>,
    /// Per worker: set to stop its decode (a partial, for a final).
    aborts: Vec<AtomicBool>,
    /// Threads of the decodes running now, all workers together: what
    /// other processes must leave free for them ([`Pool::threads_for`]).
    threads: AtomicUsize,
}

impl Pool {
    /// Starts `workers` threads sharing `engine`.
    pub fn start(
        engine: &Engine,
        workers: usize,
        options: DecodeOptions,
        bounds: Bounds,
        metrics: Arc<Metrics>,
        capacity: Arc<Capacity>,
    ) -> Result<(Arc<Pool>, Vec<std::thread::JoinHandle<()>>), EngineError> {
        let pool = Arc::new(Pool {
            queue: Mutex::default(),
            ready: Condvar::new(),
            metrics,
            capacity,
            workers: workers.max(1),
            idle: super::idle::IdleCpu::start(),
            aborts: (0..workers.max(1))
                .map(|_| AtomicBool::new(false))
                .collect(),
            threads: AtomicUsize::new(0),
        });
        pool.lock().running = vec![None; workers.max(1)];
        // Behind: greedy, and the window fitted to the audio alone.
        let hurried = DecodeOptions {
            min_audio_ctx: 0,
            ..options.for_partials()
        };
        let partial = options.for_partials();
        let revision = bounds.revision.apply(&options);
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let mut worker = engine.worker()?;
            let pool = pool.clone();
            let options = options.clone();
            let hurried = hurried.clone();
            let partial = partial.clone();
            let revision = revision.clone();
            let handle = std::thread::Builder::new()
                .name(format!("stt-worker-{i}"))
                .spawn(move || {
                    while let Some(job) = pool.next(i) {
                        let waited = job.queued.elapsed();
                        let is_final = job.kind == Kind::Final;
                        // A revision that waited as long is only dropped:
                        // its first final stands.
                        let late = matches!(job.kind, Kind::Final | Kind::Revision)
                            && waited > bounds.give_up;
                        if late {
                            pool.done(i, Grant::default());
                            if is_final {
                                pool.metrics.finals_given_up.inc();
                            } else {
                                pool.metrics.revisions_dropped.inc();
                            }
                            let _ = job.reply.send(Done::dropped(&job));
                            continue;
                        }
                        let options = if job.kind == Kind::Revision {
                            &revision
                        } else if !job.kind.is_final_like() {
                            &partial
                        } else if waited > bounds.behind {
                            pool.metrics.finals_hurried.inc();
                            &hurried
                        } else {
                            &options
                        };
                        // The context lengthens a decode (measured, 4 calls
                        // on 2 cores: p50 2.0 s without, 3.0 s with): only
                        // while no other final waits.
                        let mut options = match &job.context {
                            Some(c) if !pool.finals_waiting() => options.with_context(c),
                            _ => options.clone(),
                        };
                        let base = options.threads.max(1);
                        let grant = pool.threads_for(
                            base,
                            bounds.wide_threads,
                            job.narrow,
                            job.kind == Kind::Revision,
                        );
                        let threads = grant.threads;
                        if threads > base {
                            pool.metrics.decodes_wide.inc();
                        } else if threads < base && !job.narrow {
                            pool.metrics.decodes_narrowed.inc();
                        }
                        options.threads = threads;
                        let options = &options;
                        let started = Instant::now();
                        // A partial gives way (to a final); a tentative
                        // stops when speech resumes; a decode on several
                        // threads gives way to a process that came for
                        // their cores (its spinning threads would stall:
                        // 20 times slower measured) and is done again on
                        // one.
                        let flag = &pool.aborts[i];
                        let since = pool.idle.samples();
                        let gave_way = AtomicBool::new(false);
                        let stop = || {
                            if job.kind != Kind::Final && flag.load(Ordering::Relaxed) {
                                return true;
                            }
                            let crowded = threads > 1
                                && pool
                                    .idle
                                    .crowded_since(since, pool.threads.load(Ordering::Relaxed));
                            if crowded {
                                gave_way.store(true, Ordering::Relaxed);
                            }
                            crowded
                        };
                        let result = if job.audio.is_empty() {
                            Ok(Decoded {
                                text: String::new(),
                                no_speech_prob: 1.0,
                            })
                        } else {
                            let stoppable = job.kind != Kind::Final || threads > 1;
                            let abort: Option<&Stop<'_>> = stoppable.then_some(&stop);
                            let (result, again) =
                                worker.transcribe_checked(&job.audio, options, abort);
                            if again {
                                pool.metrics.context_dropped.inc();
                            }
                            result.map_err(|e| e.to_string())
                        };
                        let decode = started.elapsed();
                        pool.metrics.decode_micros.add(decode.as_micros() as u64);
                        let aborted = flag.swap(false, Ordering::Relaxed) && result.is_err();
                        let gave_way = !aborted && gave_way.into_inner() && result.is_err();
                        if aborted && job.kind.is_partial_like() {
                            pool.metrics.partials_aborted.inc();
                        } else if aborted && job.kind == Kind::Revision {
                            pool.metrics.revisions_stopped.inc();
                        } else if aborted {
                            pool.metrics.speculative_stopped.inc();
                        }
                        pool.done(i, grant);
                        let job = if gave_way {
                            pool.metrics.decodes_gave_way.inc();
                            match pool.again_narrow(job) {
                                None => continue,
                                // Not queued again: a newer partial of its
                                // stream waits, or stt is closing.
                                Some(job) if job.kind.is_partial_like() => {
                                    pool.metrics.partials_aborted.inc();
                                    continue;
                                }
                                Some(job) => job,
                            }
                        } else if aborted {
                            match pool.again(job) {
                                None => continue,
                                Some(job) => job,
                            }
                        } else {
                            job
                        };
                        match job.kind {
                            Kind::Partial => pool.metrics.partials_done.inc(),
                            Kind::Revision => pool.metrics.revisions_done.inc(),
                            Kind::Piece(_) => pool.metrics.partial_pieces.inc(),
                            // (A tentative stopped midway is no final.)
                            Kind::Tentative if aborted => {}
                            Kind::Final | Kind::Tentative => {
                                pool.metrics.finals_done.inc();
                                // Only a decode on its own threads tells
                                // what a final costs when stt is busy (when
                                // the capacity matters): a wide one is
                                // faster in time but dearer in CPU, and
                                // counted either way it skewed the figure
                                // (4 calls, most finals wide: capacity 9
                                // -> 6 streams measured).
                                if threads == base {
                                    pool.capacity
                                        .final_decoded(decode, job.audio.len() as u64 / 16);
                                }
                            }
                        }
                        let samples = job.audio.len();
                        let (audio, context) = if job.kind.is_final_like() {
                            (job.audio, job.context)
                        } else {
                            (Vec::new(), None)
                        };
                        let _ = job.reply.send(Done {
                            utterance: job.utterance,
                            kind: job.kind,
                            result,
                            decode,
                            total: job.queued.elapsed(),
                            gave_up: false,
                            samples,
                            pieces: job.pieces,
                            audio,
                            context,
                            stopped: aborted,
                        });
                    }
                })
                .map_err(|e| EngineError::Whisper(format!("cannot start a worker: {e}")))?;
            handles.push(handle);
        }
        Ok((pool, handles))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job. A partial replaces the stream's waiting partial; a
    /// final removes its utterance's waiting partial.
    pub fn submit(&self, job: Job) {
        let mut q = self.lock();
        match job.kind {
            Kind::Final | Kind::Tentative => {
                // (A tentative's cost counts once it serves a final: the
                // stream says so, `Pool::final_served`.)
                if job.kind == Kind::Final {
                    self.capacity.final_requested(job.audio.len() as u64 / 16);
                }
                let removed = q.make_way_for(job.stream, job.kind);
                self.metrics.partials_skipped.add(removed as u64);
                let kind = job.kind;
                q.finals.push_back(job);
                if let Some(w) = q.to_stop_for(kind, self.workers) {
                    self.aborts[w].store(true, Ordering::Relaxed);
                }
            }
            Kind::Piece(_) | Kind::Partial => {
                let kind = job.kind;
                match q.waiting_partial(job.stream) {
                    Some(slot) if kind == Kind::Partial => {
                        *slot = job;
                        self.metrics.partials_skipped.inc();
                    }
                    _ => q.partials.push_back(job),
                }
                // A revision running gives way.
                if let Some(w) = q.to_stop_for(kind, self.workers) {
                    self.aborts[w].store(true, Ordering::Relaxed);
                }
            }
            Kind::Revision => {
                if q.revisions.len() >= REVISIONS_WAITING_MAX
                    && let Some(old) = q.revisions.pop_front()
                {
                    self.metrics.revisions_dropped.inc();
                    // Its stream stops waiting for it.
                    let _ = old.reply.send(Done::dropped(&old));
                }
                q.revisions.push_back(job);
            }
        }
        self.publish_depth(&q);
        drop(q);
        self.ready.notify_one();
    }

    /// A final of `stream` was served by its tentative decode: it counts in
    /// the capacity estimate as a final asked for (a tentative dropped
    /// costs only until speech resumed, and is not counted), and the
    /// stream's waiting partial and pieces go, as for a final queued (a
    /// piece stopped for another stream's final and queued again would
    /// otherwise be decoded for nothing).
    pub fn final_served(&self, stream: u64, samples: usize) {
        self.capacity.final_requested(samples as u64 / 16);
        let mut q = self.lock();
        let removed = q.make_way_for(stream, Kind::Final);
        self.metrics.partials_skipped.add(removed as u64);
        self.publish_depth(&q);
    }

    /// Speech resumed in `utterance` of `stream`: its tentative decode is
    /// dropped if still waiting, or stopped if running.
    pub fn cancel_tentative(&self, stream: u64, utterance: u64) {
        let mut q = self.lock();
        let it = Decoding {
            stream,
            utterance,
            kind: Kind::Tentative,
        };
        let before = q.finals.len();
        q.finals.retain(|j| Decoding::of(j) != it);
        if q.finals.len() < before {
            self.publish_depth(&q);
        } else if let Some(w) = q.running.iter().position(|r| *r == Some(it)) {
            self.aborts[w].store(true, Ordering::Relaxed);
        }
    }

    /// A decode stopped midway: a piece is queued again (`Queue::again`);
    /// what is not comes back.
    fn again(&self, job: Job) -> Option<Job> {
        self.queue_again(job, Queue::again)
    }

    /// As [`Queue::again_narrow`], waking a worker when queued again.
    fn again_narrow(&self, job: Job) -> Option<Job> {
        self.queue_again(job, Queue::again_narrow)
    }

    fn queue_again(&self, job: Job, how: fn(&mut Queue, Job) -> Option<Job>) -> Option<Job> {
        let mut q = self.lock();
        let job = how(&mut q, job);
        if job.is_none() {
            self.publish_depth(&q);
            drop(q);
            self.ready.notify_one();
        }
        job
    }

    /// Stream `stream` opened an utterance (`true`) or closed it: while
    /// streams speak, revisions wait (and one running stops) unless
    /// workers are to spare (`Queue::revisions_may_run`), and none goes
    /// wide.
    pub fn speaking(&self, stream: u64, open: bool) {
        let mut q = self.lock();
        let changed = if open {
            q.speaking.insert(stream)
        } else {
            q.speaking.remove(&stream)
        };
        if !changed {
            return;
        }
        if open {
            let stop = !q.revisions_may_run(self.workers) || q.lent > 0;
            for (w, r) in q.running.iter().enumerate() {
                if stop && r.is_some_and(|r| r.kind == Kind::Revision) {
                    self.aborts[w].store(true, Ordering::Relaxed);
                }
            }
        } else {
            drop(q);
            self.ready.notify_all();
        }
    }

    /// Drops the waiting partial and revisions of a stream that went away.
    pub fn forget_stream(&self, stream: u64) {
        let mut q = self.lock();
        if q.speaking.remove(&stream) {
            self.ready.notify_all();
        }
        q.partials.retain(|p| p.stream != stream);
        let before = q.revisions.len();
        q.revisions.retain(|p| p.stream != stream);
        self.metrics
            .revisions_dropped
            .add((before - q.revisions.len()) as u64);
        self.publish_depth(&q);
    }

    /// Whether finals wait for a worker: a final then decodes without
    /// the context, and nothing is speculated (it would delay them).
    pub fn finals_waiting(&self) -> bool {
        !self.lock().finals.is_empty()
    }

    /// Threads for a decode about to start: its worker's `base`; up to
    /// `wide` when it is the only decode running and the other cores are
    /// idle (no neighbour would deschedule one of its spinning threads);
    /// one when it is `narrow`, or when other processes hold the cores its
    /// `base` threads would need beside stt's other decodes (a worker of
    /// several threads, as the defaults give on more than 16 cores, would
    /// stall as a wide decode does).
    /// The slots of the other workers a wide decode spreads over are lent
    /// to it until it is done, so no decode starts beside it.
    fn threads_for(&self, base: usize, wide: usize, narrow: bool, revision: bool) -> Grant {
        let mut q = self.lock();
        // A revision told to stop is as good as gone (it stops within a
        // step): the decode it makes way for may still go wide.
        let others = q
            .running
            .iter()
            .enumerate()
            .filter(|(w, r)| {
                r.is_some_and(|r| {
                    r.kind != Kind::Revision || !self.aborts[*w].load(Ordering::Relaxed)
                })
            })
            .count();
        let plan = Plan {
            base,
            // A revision goes wide only while nobody speaks.
            wide: if revision && !q.speaking.is_empty() {
                base
            } else {
                wide
            },
            narrow,
            workers: self.workers,
            alone: others == 1 && q.lent == 0,
            running: self.threads.load(Ordering::Relaxed),
            free: self.idle.free(),
        };
        let grant = plan.grant();
        q.lent += grant.lent;
        self.threads.fetch_add(grant.threads, Ordering::Relaxed);
        grant
    }

    /// Worker `i` finished a decode, handing back what it was granted.
    fn done(&self, i: usize, grant: Grant) {
        let mut q = self.lock();
        q.busy -= 1;
        q.running[i] = None;
        q.lent -= grant.lent.min(q.lent);
        self.threads.fetch_sub(grant.threads, Ordering::Relaxed);
        drop(q);
        self.ready.notify_all();
    }

    /// How long the oldest waiting final has waited: how far behind stt is.
    pub fn oldest_final_wait(&self) -> Duration {
        self.lock()
            .finals
            .front()
            .map_or(Duration::ZERO, |j| j.queued.elapsed())
    }

    fn publish_depth(&self, q: &Queue) {
        self.metrics
            .queue_finals
            .store(q.finals.len() as i64, Ordering::Relaxed);
        self.metrics
            .queue_partials
            .store(q.partials.len() as i64, Ordering::Relaxed);
    }

    /// The next job for a worker: finals first; `None` once closed.
    fn next(&self, i: usize) -> Option<Job> {
        let mut q = self.lock();
        loop {
            let free = q.busy + q.lent < self.workers;
            let revise = q.revisions_may_run(self.workers);
            let job = free
                .then(|| {
                    q.finals
                        .pop_front()
                        .or_else(|| q.partials.pop_front())
                        .or_else(|| revise.then(|| q.revisions.pop_front()).flatten())
                })
                .flatten();
            if let Some(job) = job {
                q.busy += 1;
                q.running[i] = Some(Decoding::of(&job));
                self.aborts[i].store(false, Ordering::Relaxed);
                self.publish_depth(&q);
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lets the workers finish what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(stream: u64, utterance: u64, kind: Kind) -> Job {
        Job {
            stream,
            utterance,
            kind,
            audio: Vec::new(),
            context: None,
            pieces: 0,
            queued: Instant::now(),
            reply: mpsc::unbounded_channel().0,
            narrow: false,
        }
    }

    fn decoding(stream: u64, utterance: u64, kind: Kind) -> Option<Decoding> {
        Some(Decoding {
            stream,
            utterance,
            kind,
        })
    }

    fn kinds(jobs: &VecDeque<Job>) -> Vec<(u64, Kind)> {
        jobs.iter().map(|j| (j.stream, j.kind)).collect()
    }

    #[test]
    fn a_decode_goes_wide_alone_on_idle_cores_and_narrow_beside_a_neighbour() {
        let plan = |base, workers, alone, running, free: Option<f64>| Plan {
            base,
            wide: 4,
            narrow: false,
            workers,
            alone,
            running,
            free,
        };
        let g = |threads, lent| Grant { threads, lent };
        // One thread per worker (up to 16 cores): wide only alone on idle
        // cores, in whole worker slots.
        assert_eq!(plan(1, 2, true, 0, Some(2.0)).grant(), g(2, 1));
        assert_eq!(plan(1, 2, true, 0, Some(1.4)).grant(), g(1, 0));
        assert_eq!(plan(1, 2, false, 1, Some(2.0)).grant(), g(1, 0));
        assert_eq!(plan(1, 8, true, 0, Some(8.0)).grant(), g(4, 3));
        assert_eq!(plan(1, 2, true, 0, None).grant(), g(1, 0));
        // Several per worker (1 worker of 2 threads on 2 cores; 16 of 4
        // on 64): their own threads while the cores are free of other
        // processes, one when a neighbour holds those they need.
        assert_eq!(plan(2, 1, true, 0, Some(2.0)).grant(), g(2, 0));
        assert_eq!(plan(2, 1, true, 0, Some(1.0)).grant(), g(1, 0));
        assert_eq!(plan(2, 1, true, 0, None).grant(), g(2, 0));
        assert_eq!(plan(4, 16, false, 56, Some(63.0)).grant(), g(4, 0));
        assert_eq!(plan(4, 16, false, 60, Some(63.0)).grant(), g(1, 0));
        // Gave way once: one thread, never wide.
        let narrow = |base| Plan {
            narrow: true,
            ..plan(base, 2, true, 0, Some(2.0))
        };
        assert_eq!(narrow(1).grant(), g(1, 0));
        assert_eq!(narrow(2).grant(), g(1, 0));
    }

    #[test]
    fn a_revision_reads_the_careful_way_never_less_than_a_final() {
        let finals = DecodeOptions {
            language: Some("es".into()),
            threads: 1,
            prompt: None,
            context: None,
            beam: 1,
            min_audio_ctx: 256,
            digits: true,
            fallback: false,
        };
        let careful = Careful {
            audio_ctx: 768,
            beam: 5,
        };
        let r = careful.apply(&finals);
        assert_eq!((r.min_audio_ctx, r.beam, r.digits), (768, 5, true));
        let wider = DecodeOptions {
            min_audio_ctx: 1500,
            beam: 8,
            ..finals
        };
        let r = careful.apply(&wider);
        assert_eq!((r.min_audio_ctx, r.beam), (1500, 8));
    }

    #[test]
    fn a_revision_gives_way_to_any_decode_and_is_queued_again_first() {
        let mut q = Queue {
            busy: 2,
            running: vec![
                decoding(1, 1, Kind::Revision),
                decoding(2, 1, Kind::Partial),
            ],
            ..Queue::default()
        };
        // Every kind stops the revision before a partial, even with a
        // worker free.
        for kind in [Kind::Final, Kind::Tentative, Kind::Partial, Kind::Piece(0)] {
            assert_eq!(q.to_stop_for(kind, 2), Some(0), "{kind:?}");
            assert_eq!(q.to_stop_for(kind, 3), Some(0), "{kind:?}");
        }
        // Without one, a partial stops nothing, a final a partial.
        q.running[0] = decoding(1, 2, Kind::Partial);
        assert_eq!(q.to_stop_for(Kind::Partial, 2), None);
        assert_eq!(q.to_stop_for(Kind::Final, 2), Some(0));
        // Stopped, it heads the revisions.
        q.revisions.push_back(job(3, 1, Kind::Revision));
        assert!(q.again(job(1, 1, Kind::Revision)).is_none());
        assert_eq!(
            kinds(&q.revisions),
            [(1, Kind::Revision), (3, Kind::Revision)]
        );
        q.closed = true;
        assert!(q.again(job(1, 1, Kind::Revision)).is_some());
    }

    #[test]
    fn revisions_wait_while_streams_speak_unless_workers_are_to_spare() {
        let mut q = Queue::default();
        assert!(q.revisions_may_run(2));
        q.speaking.insert(1);
        // On 2 workers: only in silence; on 3, one speaker leaves room.
        assert!(!q.revisions_may_run(2));
        assert!(q.revisions_may_run(3));
        q.busy = 2;
        assert!(!q.revisions_may_run(4));
        q.speaking.insert(2);
        assert!(q.revisions_may_run(6));
        q.speaking.clear();
        assert!(q.revisions_may_run(2));
    }

    #[test]
    fn revisions_come_last_and_the_oldest_goes_past_the_bound() {
        let pool = Pool {
            queue: Mutex::default(),
            ready: Condvar::new(),
            metrics: Arc::default(),
            capacity: Arc::new(Capacity::new(1, 0.1, None, 8)),
            workers: 1,
            idle: super::super::idle::IdleCpu::start(),
            aborts: vec![AtomicBool::new(false)],
            threads: AtomicUsize::new(0),
        };
        pool.lock().running = vec![None];
        let (tx, mut rx) = mpsc::unbounded_channel();
        let revision = |utterance| Job {
            reply: tx.clone(),
            ..job(1, utterance, Kind::Revision)
        };
        pool.submit(revision(0));
        pool.submit(job(2, 1, Kind::Partial));
        pool.submit(job(3, 1, Kind::Final));
        let mut order = Vec::new();
        for _ in 0..3 {
            let j = pool.next(0).expect("a job");
            order.push(j.kind);
            pool.done(0, Grant::default());
        }
        assert_eq!(order, [Kind::Final, Kind::Partial, Kind::Revision]);
        // Bounded: one past the bound drops the oldest, which its stream
        // is told of (not decoded).
        for u in 1..=REVISIONS_WAITING_MAX as u64 + 1 {
            pool.submit(revision(u));
        }
        let dropped = rx.try_recv().expect("the oldest dropped");
        assert!(dropped.gave_up && dropped.utterance == 1 && dropped.kind == Kind::Revision);
        assert_eq!(pool.lock().revisions.len(), REVISIONS_WAITING_MAX);
        assert_eq!(pool.metrics.revisions_dropped.get(), 1);
        // A stream starts speaking: with no worker to spare, a revision
        // running stops, and none starts until it is silent again.
        pool.lock().running = vec![decoding(1, 2, Kind::Revision)];
        pool.speaking(9, true);
        assert!(pool.aborts[0].load(Ordering::Relaxed));
        assert!(!pool.lock().revisions_may_run(1));
        pool.speaking(9, false);
        assert!(pool.lock().revisions_may_run(1));
        pool.lock().running = vec![None];
        // Its stream gone, the rest go too.
        pool.forget_stream(1);
        assert!(pool.lock().revisions.is_empty());
        assert_eq!(
            pool.metrics.revisions_dropped.get(),
            1 + REVISIONS_WAITING_MAX as u64
        );
    }

    #[test]
    fn a_tentative_leaves_its_utterances_pieces_waiting() {
        let mut q = Queue::default();
        for j in [
            job(1, 4, Kind::Piece(0)),
            job(1, 4, Kind::Partial),
            job(2, 9, Kind::Partial),
        ] {
            q.partials.push_back(j);
        }
        assert_eq!(q.make_way_for(1, Kind::Tentative), 1);
        assert_eq!(
            kinds(&q.partials),
            [(1, Kind::Piece(0)), (2, Kind::Partial)]
        );
        assert_eq!(q.make_way_for(1, Kind::Final), 1);
        assert_eq!(kinds(&q.partials), [(2, Kind::Partial)]);
    }

    #[test]
    fn a_piece_is_stopped_only_for_a_final_and_only_when_no_partial_is() {
        let mut q = Queue {
            running: vec![decoding(1, 4, Kind::Piece(0)), None],
            busy: 1,
            lent: 1,
            ..Queue::default()
        };
        assert_eq!(q.to_stop_for(Kind::Tentative, 2), None);
        assert_eq!(q.to_stop_for(Kind::Final, 2), Some(0));
        q.running[1] = decoding(2, 9, Kind::Partial);
        q.busy = 2;
        q.lent = 0;
        assert_eq!(q.to_stop_for(Kind::Tentative, 2), Some(1));
        assert_eq!(q.to_stop_for(Kind::Final, 2), Some(1));
        // A worker free: nothing is stopped.
        assert_eq!(q.to_stop_for(Kind::Final, 3), None);
    }

    #[test]
    fn a_stopped_piece_is_queued_again_first_unless_its_final_is_coming() {
        let mut q = Queue::default();
        q.partials.push_back(job(2, 9, Kind::Partial));
        assert!(q.again(job(1, 4, Kind::Piece(1))).is_none());
        assert_eq!(kinds(&q.partials)[0], (1, Kind::Piece(1)));
        // A partial stopped is not done again: a newer one will come.
        assert!(q.again(job(2, 9, Kind::Partial)).is_some());
        q.finals.push_back(job(1, 4, Kind::Final));
        assert!(q.again(job(1, 4, Kind::Piece(2))).is_some());
        q.finals.clear();
        q.running = vec![decoding(1, 4, Kind::Final)];
        assert!(q.again(job(1, 4, Kind::Piece(2))).is_some());
        // Another utterance's final does not make it stale.
        assert!(q.again(job(1, 5, Kind::Piece(0))).is_none());
        assert_eq!(q.partials.len(), 3);
    }
}
