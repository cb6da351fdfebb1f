//! The worker pool: a fixed number of threads, each with its own Whisper
//! decoder state over the one shared model.
//!
//! Finals come first, in arrival order, and are never dropped. Each stream
//! has at most one partial waiting: a newer partial (or the utterance's
//! final) replaces it, which is how overload sheds work. Partials are served
//! round-robin across streams.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

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
}

impl Pool {
    /// Starts `workers` threads sharing `engine`.
    pub fn start(
        engine: &Engine,
        workers: usize,
        options: DecodeOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Pool>, Vec<std::thread::JoinHandle<()>>), EngineError> {
        let pool = Arc::new(Pool {
            queue: Mutex::default(),
            ready: Condvar::new(),
            metrics,
        });
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let mut worker = engine.worker()?;
            let pool = pool.clone();
            let options = options.clone();
            let handle = std::thread::Builder::new()
                .name(format!("stt-worker-{i}"))
                .spawn(move || {
                    while let Some(job) = pool.next() {
                        let started = Instant::now();
                        let result = if job.audio.is_empty() {
                            Ok(Decoded {
                                text: String::new(),
                                no_speech_prob: 1.0,
                            })
                        } else {
                            worker
                                .transcribe(&job.audio, &options)
                                .map_err(|e| e.to_string())
                        };
                        let decode = started.elapsed();
                        pool.metrics.decode_micros.add(decode.as_micros() as u64);
                        match job.kind {
                            Kind::Partial => pool.metrics.partials_done.inc(),
                            Kind::Final => pool.metrics.finals_done.inc(),
                        }
                        let _ = job.reply.send(Done {
                            utterance: job.utterance,
                            kind: job.kind,
                            result,
                            decode,
                            total: job.queued.elapsed(),
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
