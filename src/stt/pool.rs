//! The worker pool: a fixed number of threads, each with its own Whisper
//! decoder state over the one shared model.
//!
//! Finals come first, in arrival order. Each stream has at most one partial
//! waiting: a newer partial (or the utterance's final) replaces it, which is
//! how overload sheds work first. Partials are served round-robin across
//! streams.
//!
//! When stt falls behind, the lag stays bounded in two more steps: a final
//! that waited longer than `behind` is decoded the cheap way (greedy, the
//! encoder window fitted tightly to its audio), and one that waited longer
//! than `give_up` is not decoded at all: it comes back marked `gave_up`, and
//! the stream says so in its event (`gap`), so no final is lost silently.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::capacity::Capacity;
use super::engine::{DecodeOptions, Decoded, Engine, EngineError};
use super::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Partial,
    Final,
}

/// One transcription to do.
pub struct Job {
    pub stream: u64,
    pub utterance: u64,
    pub kind: Kind,
    pub audio: Vec<f32>,
    /// When the request was made (for latency figures).
    pub queued: Instant,
    pub reply: mpsc::UnboundedSender<Done>,
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
}

/// How long a final may wait before the pool hurries, then gives up.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub behind: Duration,
    pub give_up: Duration,
}

#[derive(Default)]
struct Queue {
    finals: VecDeque<Job>,
    partials: VecDeque<Job>,
    closed: bool,
}

pub struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
    metrics: Arc<Metrics>,
    capacity: Arc<Capacity>,
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
        });
        // Behind: greedy, and the window fitted to the audio alone.
        let hurried = DecodeOptions {
            beam: 1,
            min_audio_ctx: 0,
            ..options.clone()
        };
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let mut worker = engine.worker()?;
            let pool = pool.clone();
            let options = options.clone();
            let hurried = hurried.clone();
            let handle = std::thread::Builder::new()
                .name(format!("stt-worker-{i}"))
                .spawn(move || {
                    while let Some(job) = pool.next() {
                        let waited = job.queued.elapsed();
                        let is_final = job.kind == Kind::Final;
                        if is_final && waited > bounds.give_up {
                            pool.metrics.finals_given_up.inc();
                            let _ = job.reply.send(Done {
                                utterance: job.utterance,
                                kind: job.kind,
                                result: Err("given up: stt too far behind".into()),
                                decode: Duration::ZERO,
                                total: waited,
                                gave_up: true,
                            });
                            continue;
                        }
                        let options = if is_final && waited > bounds.behind {
                            pool.metrics.finals_hurried.inc();
                            &hurried
                        } else {
                            &options
                        };
                        let started = Instant::now();
                        let result = if job.audio.is_empty() {
                            Ok(Decoded {
                                text: String::new(),
                                no_speech_prob: 1.0,
                            })
                        } else {
                            worker
                                .transcribe(&job.audio, options)
                                .map_err(|e| e.to_string())
                        };
                        let decode = started.elapsed();
                        pool.metrics.decode_micros.add(decode.as_micros() as u64);
                        match job.kind {
                            Kind::Partial => pool.metrics.partials_done.inc(),
                            Kind::Final => {
                                pool.metrics.finals_done.inc();
                                pool.capacity
                                    .final_decoded(decode, job.audio.len() as u64 / 16);
                            }
                        }
                        let _ = job.reply.send(Done {
                            utterance: job.utterance,
                            kind: job.kind,
                            result,
                            decode,
                            total: job.queued.elapsed(),
                            gave_up: false,
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
            Kind::Final => {
                self.capacity.final_requested(job.audio.len() as u64 / 16);
                let before = q.partials.len();
                q.partials.retain(|p| p.stream != job.stream);
                let removed = (before - q.partials.len()) as u64;
                self.metrics.partials_skipped.add(removed);
                q.finals.push_back(job);
            }
            Kind::Partial => {
                if let Some(slot) = q.partials.iter_mut().find(|p| p.stream == job.stream) {
                    *slot = job;
                    self.metrics.partials_skipped.inc();
                } else {
                    q.partials.push_back(job);
                }
            }
        }
        self.publish_depth(&q);
        drop(q);
        self.ready.notify_one();
    }

    /// Drops the waiting partial of a stream that went away.
    pub fn forget_stream(&self, stream: u64) {
        let mut q = self.lock();
        q.partials.retain(|p| p.stream != stream);
        self.publish_depth(&q);
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
    fn next(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.finals.pop_front().or_else(|| q.partials.pop_front()) {
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
