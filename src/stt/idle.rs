//! How many of the machine's cores no other process is using, sampled
//! from `/proc/stat` (idle time) and `/proc/self/stat` (stt's own time)
//! four times a second: a decode that is alone may spread over those cores
//! ("wide"), and must not when a neighbour process holds them, because
//! whisper.cpp's threads spin-wait for each other and one descheduled
//! thread stalls the rest (README "Workers"; measured: three prompts
//! decoded on 2 threads beside two busy processes on 2 cores took 137-185
//! s, on one thread 7.3 s).
//! stt's own time counts as free: a decode is wide only when it is the
//! only one running, so the cores stt's other decodes used a moment ago
//! are free again. A neighbour that comes while a decode on several
//! threads runs makes it give way ([`IdleCpu::crowded_since`]), and one
//! already there keeps a worker of several threads to one
//! ([`crowded`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How often the cores are sampled.
const PERIOD: Duration = Duration::from_millis(250);

/// Cores free of other processes in hundredths, across the whole
/// machine, over the last [`PERIOD`]; and how many samples were taken.
#[derive(Default)]
pub struct IdleCpu {
    cores: AtomicU32,
    samples: AtomicU64,
}

impl IdleCpu {
    /// Starts the sampler; on a system without `/proc/stat` (or a unit with
    /// systemd's `ProcSubset=pid`, which hides it) it says so once and
    /// reports no idle core, so decodes never go wide.
    pub fn start() -> Arc<Self> {
        let idle = Arc::new(Self::default());
        if read().is_none() {
            tracing::warn!(
                "/proc/stat cannot be read (a unit with ProcSubset=pid hides it): \
                 decodes never use the idle cores (stt.max_threads_when_idle)"
            );
            return idle;
        }
        let weak = Arc::downgrade(&idle);
        let _ = std::thread::Builder::new()
            .name("stt-idle-cpu".into())
            .spawn(move || {
                let mut last = read();
                loop {
                    std::thread::sleep(PERIOD);
                    let Some(idle) = weak.upgrade() else { break };
                    let now = read();
                    if let (Some(a), Some(b)) = (last, now) {
                        idle.cores.store(idle_cores(a, b), Ordering::Relaxed);
                        idle.samples.fetch_add(1, Ordering::Release);
                    }
                    last = now;
                }
            });
        idle
    }

    /// Cores idle or used by stt over the last quarter second.
    pub fn cores(&self) -> f64 {
        f64::from(self.cores.load(Ordering::Relaxed)) / 100.0
    }

    /// [`IdleCpu::cores`] once sampled; `None` before the first sample,
    /// or where `/proc/stat` cannot be read.
    pub fn free(&self) -> Option<f64> {
        (self.samples() > 0).then(|| self.cores())
    }

    /// Samples taken so far: what [`IdleCpu::crowded_since`] counts from.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Acquire)
    }

    /// Whether the latest sample, when taken after `since` (a
    /// [`IdleCpu::samples`]), shows other processes holding so much that a
    /// decode on `threads` threads no longer has its cores: fewer than
    /// `threads - 0.5` free, the rounding [`cores`](IdleCpu::cores) was
    /// read with to go wide.
    pub fn crowded_since(&self, since: u64, threads: usize) -> bool {
        self.samples() > since && crowded(self.cores(), threads)
    }
}

/// Whether `free` cores are too few for `threads` spinning threads.
pub fn crowded(free: f64, threads: usize) -> bool {
    free + 0.5 < threads as f64
}

/// Jiffies summed over all cores, and this process's own.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Idle (idle + iowait) and all time, summed over the cores.
    idle: u64,
    total: u64,
    cores: u32,
    /// This process's user + system time (0 where it cannot be read).
    own: u64,
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| own_jiffies(&s))
        .unwrap_or(0);
    parse(&stat, own)
}

/// user + system time of a process, from its `/proc/PID/stat` (in the
/// same clock ticks as `/proc/stat`).
fn own_jiffies(stat: &str) -> Option<u64> {
    // The name, in parentheses, may hold spaces: count fields after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line; the first after the name is field 3.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// `/proc/stat`, with this process's jiffies `own`.
fn parse(stat: &str, own: u64) -> Option<Sample> {
    let mut lines = stat.lines();
    let all: Vec<u64> = lines
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: idle + iowait is idle.
    if all.len() < 5 {
        return None;
    }
    let cores = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    Some(Sample {
        idle: all[3] + all[4],
        total: all.iter().take(8).sum(),
        cores: cores.max(1),
        own,
    })
}

/// Cores idle or used by this process between two samples, in
/// hundredths.
fn idle_cores(a: Sample, b: Sample) -> u32 {
    let total = b.total.saturating_sub(a.total);
    if total == 0 {
        return 0;
    }
    let free = (b.idle.saturating_sub(a.idle) + b.own.saturating_sub(a.own)).min(total);
    (free * 100 * u64::from(b.cores) / total) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_idle_cores_from_proc_stat() {
        let a = parse("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\nintr 1\n", 0).unwrap();
        // Next half second: one core busy, one idle.
        let b = |own| {
            parse("cpu  150 0 150 900 0 0 0 0 0 0\ncpu0 100 0 100 400 0 0 0 0 0 0\ncpu1 50 0 50 500 0 0 0 0 0 0\n", own).unwrap()
        };
        assert_eq!(b(0).cores, 2);
        assert_eq!(idle_cores(a, b(0)), 100);
        // The busy core was stt's own (50 ticks of its 100): both free.
        assert_eq!(idle_cores(a, b(100)), 200);
        // Half of it: a neighbour held the other half.
        assert_eq!(idle_cores(a, b(50)), 150);
        assert!(parse("garbage", 0).is_none());
        // On this machine it reads something sane.
        let here = read().unwrap();
        assert!(here.cores >= 1 && here.total >= here.idle);
    }

    #[test]
    fn a_wide_decode_is_crowded_once_a_neighbour_holds_part_of_its_cores() {
        // 2 threads: its own two cores (counted free), or one and a half
        // (a light neighbour), are enough; one and a third (a busy loop
        // sharing 2 cores with its 2 threads) is not.
        assert!(!crowded(2.0, 2));
        assert!(!crowded(1.5, 2));
        assert!(crowded(1.33, 2));
        assert!(crowded(0.0, 2));
        assert!(!crowded(0.0, 0));
        // Only samples taken after the decode began count.
        let idle = IdleCpu::default();
        idle.cores.store(100, Ordering::Relaxed);
        assert!(!idle.crowded_since(0, 2), "no sample since");
        idle.samples.store(1, Ordering::Release);
        assert!(idle.crowded_since(0, 2));
        assert!(!idle.crowded_since(1, 2));
        assert!(!idle.crowded_since(0, 1), "one thread fits one core");
    }

    #[test]
    fn reads_a_processs_own_time() {
        // pid (name with spaces) state ppid ... utime stime ...
        let line =
            "4242 (stt worker (1)) S 1 4242 4242 0 -1 4194304 100 0 0 0 70 30 0 0 20 0 9 0 1 1 1";
        assert_eq!(own_jiffies(line), Some(100));
        assert_eq!(own_jiffies("4242 (x) S 1"), None);
        assert!(own_jiffies(&std::fs::read_to_string("/proc/self/stat").unwrap()).is_some());
    }
}
