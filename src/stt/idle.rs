//! How many of the machine's cores no other process is using, sampled
//! from `/proc/stat` (idle time) and `/proc/self/stat` (stt's own time)
//! twice a second: a decode that is alone may spread over those cores
//! ("wide"), and must not when a neighbour process holds them, because
//! whisper.cpp's threads spin-wait for each other and one descheduled
//! thread stalls the rest (README "Workers"). stt's own time counts as
//! free: a decode is wide only when it is the only one running, so the
//! cores stt's other decodes used a moment ago are free again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Cores free of other processes in hundredths, across the whole
/// machine.
#[derive(Default)]
pub struct IdleCpu(AtomicU32);

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
                while let Some(idle) = weak.upgrade() {
                    std::thread::sleep(Duration::from_millis(500));
                    let now = read();
                    if let (Some(a), Some(b)) = (last, now) {
                        idle.0.store(idle_cores(a, b), Ordering::Relaxed);
                    }
                    last = now;
                }
            });
        idle
    }

    /// Cores idle or used by stt over the last half second.
    pub fn cores(&self) -> f64 {
        f64::from(self.0.load(Ordering::Relaxed)) / 100.0
    }
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
    fn reads_a_processs_own_time() {
        // pid (name with spaces) state ppid ... utime stime ...
        let line =
            "4242 (stt worker (1)) S 1 4242 4242 0 -1 4194304 100 0 0 0 70 30 0 0 20 0 9 0 1 1 1";
        assert_eq!(own_jiffies(line), Some(100));
        assert_eq!(own_jiffies("4242 (x) S 1"), None);
        assert!(own_jiffies(&std::fs::read_to_string("/proc/self/stat").unwrap()).is_some());
    }
}
