//! How many of the machine's cores are idle, sampled from `/proc/stat`
//! twice a second: a decode that is alone may spread over idle cores
//! ("wide"), and must not when a neighbour process holds them, because
//! whisper.cpp's threads spin-wait for each other and one descheduled
//! thread stalls the rest (README "Workers").

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Idle cores in hundredths, across the whole machine.
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

    /// Idle cores over the last half second.
    pub fn cores(&self) -> f64 {
        f64::from(self.0.load(Ordering::Relaxed)) / 100.0
    }
}

/// (idle, total) jiffies summed over all cores, and the core count.
type Sample = (u64, u64, u32);

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse(&stat)
}

fn parse(stat: &str) -> Option<Sample> {
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
    Some((all[3] + all[4], all.iter().take(8).sum(), cores.max(1)))
}

/// Idle cores between two samples, in hundredths.
fn idle_cores(a: Sample, b: Sample) -> u32 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return 0;
    }
    let idle = b.0.saturating_sub(a.0);
    (idle * 100 * u64::from(b.2) / total) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_idle_cores_from_proc_stat() {
        let a = parse("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\nintr 1\n").unwrap();
        // Next half second: one core busy, one idle.
        let b = parse("cpu  150 0 150 900 0 0 0 0 0 0\ncpu0 100 0 100 400 0 0 0 0 0 0\ncpu1 50 0 50 500 0 0 0 0 0 0\n").unwrap();
        assert_eq!(a.2, 2);
        assert_eq!(idle_cores(a, b), 100);
        assert!(parse("garbage").is_none());
        // On this machine it reads something sane.
        let here = read().unwrap();
        assert!(here.2 >= 1 && here.1 >= here.0);
    }
}
