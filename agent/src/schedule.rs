//! When to send each probe, pure. Targets are spread evenly over their interval (target
//! `i` of `n` starts at `i/n` of it) with a little random jitter, so a thousand targets
//! never fire in one burst; each next send is computed from the previous *scheduled*
//! time, so the rate does not drift. A scheduler that fell behind (a stalled runtime)
//! skips ahead instead of bursting to catch up, and reports the lag.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Jitter applied to every send time: ± this fraction of the interval.
pub const JITTER_FRACTION: f64 = 0.02;

#[derive(Debug)]
pub struct Schedule {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Unjittered next time per target; the jittered time is what the heap holds.
    base: Vec<Instant>,
    intervals: Vec<Duration>,
    rng: SmallRng,
}

/// A probe that is due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub target: usize,
    /// How late the send is against its scheduled time.
    pub lag: Duration,
}

impl Schedule {
    pub fn new(intervals: Vec<Duration>, start: Instant, seed: u64) -> Self {
        let n = intervals.len().max(1);
        let mut s = Schedule {
            heap: BinaryHeap::new(),
            base: Vec::new(),
            intervals,
            rng: SmallRng::seed_from_u64(seed),
        };
        for i in 0..s.intervals.len() {
            let offset = s.intervals[i].mul_f64(i as f64 / n as f64);
            s.base.push(start + offset);
            let t = s.jittered(i);
            s.heap.push(Reverse((t, i)));
        }
        s
    }

    fn jittered(&mut self, i: usize) -> Instant {
        let span = self.intervals[i].mul_f64(JITTER_FRACTION);
        let j = span.mul_f64(self.rng.random_range(-1.0..=1.0_f64).abs());
        if self.rng.random_bool(0.5) {
            self.base[i] + j
        } else {
            self.base[i].checked_sub(j).unwrap_or(self.base[i])
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Every target due at `now`, each rescheduled for its next interval.
    pub fn pop_due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some(Reverse((t, i))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            due.push(Due {
                target: i,
                lag: now.saturating_duration_since(t),
            });
            let iv = self.intervals[i];
            let mut next = self.base[i] + iv;
            if next + iv < now {
                // Fell more than an interval behind: skip the missed sends.
                let missed = (now - next).as_nanos() / iv.as_nanos().max(1);
                next += iv * (missed as u32);
            }
            self.base[i] = next;
            let t = self.jittered(i);
            self.heap.push(Reverse((t, i)));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_targets_are_spread_over_the_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(vec![Duration::from_secs(1); 1000], t0, 1);
        // Count sends per 10 ms bucket over 3 s: an even spread is 10 per bucket.
        let mut buckets = vec![0u32; 300];
        let mut now = t0;
        while now < t0 + Duration::from_secs(3) {
            for d in s.pop_due(now) {
                let _ = d;
                buckets[((now - t0).as_millis() / 10) as usize] += 1;
            }
            now += Duration::from_millis(1);
        }
        let total: u32 = buckets.iter().sum();
        assert!((2990..=3010).contains(&total), "{total} sends in 3 s");
        let max = *buckets.iter().max().expect("buckets");
        assert!(max <= 20, "burst of {max} sends in one 10 ms bucket");
    }

    #[test]
    fn rate_does_not_drift_and_a_stall_skips_instead_of_bursting() {
        let t0 = Instant::now();
        let mut s = Schedule::new(vec![Duration::from_millis(100)], t0, 2);
        let mut sends = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            sends += s.pop_due(now).len();
            now += Duration::from_millis(1);
        }
        assert!(
            (99..=101).contains(&sends),
            "{sends} sends in 10 s at 100 ms"
        );
        // Stall for 1 s: one send with a lag of about 1 s, not ten.
        let due = s.pop_due(now + Duration::from_secs(1));
        assert_eq!(due.len(), 1);
        assert!(due[0].lag >= Duration::from_millis(850), "{:?}", due[0].lag);
        assert!(
            s.next_due().expect("scheduled")
                > now + Duration::from_secs(1) - Duration::from_millis(10)
        );
    }
}
