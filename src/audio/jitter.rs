//! A small jitter buffer for one RTP stream: puts packets back in order
//! within a window, gives up on lost ones, and keeps the timeline true by
//! filling the gaps (lost packets, paused senders) with silence, so the
//! timestamps of what is heard later stay right.
//!
//! Order comes from the sequence number (extended across wrap-around);
//! silence comes from the RTP timestamps, which count samples.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// Packets a gap is waited for before it is declared lost (60 ms of
    /// 20 ms packets = 3).
    pub window: u64,
    /// Longest silence inserted for one gap, in samples: a bigger jump is
    /// a discontinuity, not seconds of audio to invent.
    pub max_fill: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            window: 3,
            max_fill: 16_000,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub lost: u64,
    /// Arrived after their place had been given up.
    pub late: u64,
    /// Arrived before a packet with a lower sequence number.
    pub reordered: u64,
    pub duplicates: u64,
    pub ssrc_changes: u64,
    /// Samples of silence inserted.
    pub filled: u64,
}

struct Pending {
    timestamp: u32,
    samples: Vec<i16>,
}

pub struct JitterBuffer {
    config: JitterConfig,
    ssrc: Option<u32>,
    /// Extended sequence number expected next.
    next: Option<u64>,
    highest: Option<u64>,
    pending: BTreeMap<u64, Pending>,
    /// Timestamp just after the last released samples.
    played_to: Option<u32>,
    pub stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        Self {
            config,
            ssrc: None,
            next: None,
            highest: None,
            pending: BTreeMap::new(),
            played_to: None,
            stats: JitterStats::default(),
        }
    }

    /// The sequence number extended to 64 bits: the candidate nearest the
    /// highest seen so far.
    fn extend(&self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            return u64::from(seq) + (1 << 16);
        };
        let base = (h & !0xffff) | u64::from(seq);
        [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
            .into_iter()
            .min_by_key(|c| c.abs_diff(h))
            .unwrap_or(base)
    }

    /// Takes one packet's samples; appends to `out` whatever can be played
    /// in order now.
    pub fn push(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        samples: Vec<i16>,
        out: &mut Vec<i16>,
    ) {
        if self.ssrc.is_some_and(|s| s != ssrc) {
            // A new source (Asterisk re-INVITE, a restarted sender): play
            // what the old one left, then start over.
            self.flush(out);
            self.stats.ssrc_changes += 1;
            self.next = None;
            self.highest = None;
            self.played_to = None;
        }
        self.ssrc = Some(ssrc);
        self.stats.received += 1;
        let ext = self.extend(seq);
        let next = *self.next.get_or_insert(ext);
        if ext < next {
            self.stats.late += 1;
            return;
        }
        if self.pending.contains_key(&ext) {
            self.stats.duplicates += 1;
            return;
        }
        if self.highest.is_some_and(|h| ext < h) {
            self.stats.reordered += 1;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.pending.insert(ext, Pending { timestamp, samples });
        self.release(out, false);
    }

    /// Plays everything held, giving up on the gaps.
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        self.release(out, true);
    }

    fn release(&mut self, out: &mut Vec<i16>, all: bool) {
        while let Some(next) = self.next {
            if let Some(p) = self.pending.remove(&next) {
                self.play(p, out);
                self.next = Some(next + 1);
                continue;
            }
            let Some((&first, _)) = self.pending.first_key_value() else {
                return;
            };
            let highest = self.highest.unwrap_or(first);
            if all || highest - next >= self.config.window {
                // Everything before the first held packet is lost.
                self.stats.lost += first - next;
                self.next = Some(first);
            } else {
                return;
            }
        }
    }

    fn play(&mut self, p: Pending, out: &mut Vec<i16>) {
        if let Some(expected) = self.played_to {
            // Signed distance, so a small step back is not a 24-hour gap.
            let gap = p.timestamp.wrapping_sub(expected) as i32;
            if gap > 0 {
                let fill = (gap as u32).min(self.config.max_fill);
                out.extend(std::iter::repeat_n(0, fill as usize));
                self.stats.filled += u64::from(fill);
            }
        }
        self.played_to = Some(p.timestamp.wrapping_add(p.samples.len() as u32));
        out.extend_from_slice(&p.samples);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 320;

    /// Packet `i` of a stream: 320 samples all equal to `i`.
    fn packet(i: u32) -> (u16, u32, Vec<i16>) {
        (i as u16, 320 * i, vec![(i % 30_000) as i16; N])
    }

    fn run(order: &[u32], config: JitterConfig) -> (Vec<i16>, JitterStats) {
        let mut jb = JitterBuffer::new(config);
        let mut out = Vec::new();
        for &i in order {
            let (seq, ts, s) = packet(i);
            jb.push(7, seq, ts, s, &mut out);
        }
        jb.flush(&mut out);
        (out, jb.stats)
    }

    /// Which packet each 320-sample block came from (None for silence).
    fn blocks(out: &[i16]) -> Vec<i16> {
        out.chunks(N).map(|c| c[0]).collect()
    }

    #[test]
    fn in_order_passes_through() {
        let (out, stats) = run(&[1, 2, 3, 4], JitterConfig::default());
        assert_eq!(blocks(&out), [1, 2, 3, 4]);
        assert_eq!(stats.lost + stats.late + stats.reordered, 0);
    }

    #[test]
    fn reordering_within_the_window_is_undone() {
        let (out, stats) = run(&[1, 3, 2, 5, 4, 6], JitterConfig::default());
        assert_eq!(blocks(&out), [1, 2, 3, 4, 5, 6]);
        assert_eq!(stats.reordered, 2);
        assert_eq!(stats.lost, 0);
    }

    #[test]
    fn loss_becomes_silence_of_the_right_length() {
        let (out, stats) = run(&[1, 2, 5, 6, 7, 8], JitterConfig::default());
        assert_eq!(blocks(&out), [1, 2, 0, 0, 5, 6, 7, 8]);
        assert_eq!(out.len(), 8 * N);
        assert_eq!(stats.lost, 2);
        assert_eq!(stats.filled, 2 * N as u64);
    }

    #[test]
    fn too_late_packets_are_dropped_and_counted() {
        let (out, stats) = run(&[1, 3, 4, 5, 6, 2], JitterConfig::default());
        assert_eq!(blocks(&out), [1, 0, 3, 4, 5, 6]);
        assert_eq!((stats.lost, stats.late), (1, 1));
    }

    #[test]
    fn sequence_wrap_around_keeps_order() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        for (k, seq) in [65_534u16, 65_535, 1, 0, 2].into_iter().enumerate() {
            let ts = 320 * u32::from(seq.wrapping_add(2));
            jb.push(1, seq, ts, vec![k as i16; N], &mut out);
        }
        jb.flush(&mut out);
        assert_eq!(blocks(&out), [0, 1, 3, 2, 4]);
        assert_eq!(jb.stats.lost, 0);
    }

    #[test]
    fn ssrc_change_flushes_and_restarts() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        jb.push(1, 100, 0, vec![1; N], &mut out);
        jb.push(1, 102, 640, vec![3; N], &mut out);
        jb.push(2, 5_000, 999_999, vec![9; N], &mut out);
        jb.push(2, 5_001, 1_000_319, vec![10; N], &mut out);
        jb.flush(&mut out);
        assert_eq!(blocks(&out), [1, 0, 3, 9, 10]);
        assert_eq!(jb.stats.ssrc_changes, 1);
    }

    #[test]
    fn timestamp_jumps_fill_at_most_max_fill() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        jb.push(1, 1, 0, vec![1; N], &mut out);
        // The sender paused for half a second without sending packets.
        jb.push(1, 2, 320 + 8_000, vec![2; N], &mut out);
        // Then a jump of an hour: only max_fill of silence.
        jb.push(1, 3, 320 + 8_000 + 320 + 57_600_000, vec![3; N], &mut out);
        assert_eq!(out.len(), N + 8_000 + N + 16_000 + N);
    }

    /// Property: whatever the order, duplicates and loss, every packet is
    /// played at most once, in sequence order, and the output never runs
    /// backwards in time.
    #[test]
    fn arbitrary_orders_play_each_packet_once_in_order() {
        let mut x: u64 = 42;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..2_000 {
            let mut order: Vec<u32> = (1..60).filter(|_| rnd(10) != 0).collect();
            for i in 0..order.len() {
                let j = (i + rnd(4) as usize).min(order.len() - 1);
                order.swap(i, j);
            }
            if rnd(2) == 0 && !order.is_empty() {
                let d = order[rnd(order.len() as u64) as usize];
                order.push(d);
            }
            let (out, _) = run(&order, JitterConfig::default());
            let played: Vec<i16> = blocks(&out).into_iter().filter(|b| *b != 0).collect();
            assert!(
                played.windows(2).all(|w| w[0] < w[1]),
                "{order:?} -> {played:?}"
            );
        }
    }
}
