//! Confirmation bursts: when a regular probe of a path is suspected lost (its reply
//! overdue by its smoothed RTT, four variations and 10 ms: `Matcher::suspected`) or
//! decided lost, a short burst of extra probes goes to the same target, and its outcome goes to the aggregators at once
//! ([`pathpulse_wire::ClientMsg::Confirm`]). At 10 probes/s a path holds 20 probes in two
//! seconds, too few to tell a 20% loss onset from 1% background loss with confidence; a
//! burst of 60 probes 3 ms apart is that evidence in a fifth of a second. Nagios's retry
//! interval and BFD's poll sequence do the same: probe faster while a fault is suspected.
//!
//! Burst probes are kept out of the path's counters and histograms (its loss, RTT and
//! jitter are the regular probes' alone, as `ping` and `fping` would measure them); the
//! probe that started a burst is not in it, so a burst is an unbiased sample of the loss
//! right after. Bounds: one burst at a time per path, at most [`BUCKET`] in a row and then
//! one per [`REFILL`], none while the path lost 4 or more of its last 30 probes (its own
//! probes then show the loss plainly), and a burst whose first [`CLEAN_STOP`] probes are
//! all answered stops there (at 1% background loss three bursts in four do). So at 1%
//! background loss a path at 10 probes/s sends about 4 burst probes a second more; the
//! most it ever adds is 12 a second (a burst of 60 every 5 s, under steady light loss).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Probes of a burst and the time between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    /// Probes per burst; 0 turns bursts off.
    pub probes: u32,
    pub spacing: Duration,
}

impl Default for Confirmation {
    fn default() -> Self {
        Confirmation {
            probes: DEFAULT_PROBES,
            spacing: DEFAULT_SPACING,
        }
    }
}

pub const DEFAULT_PROBES: u32 = 60;
pub const DEFAULT_SPACING: Duration = Duration::from_millis(3);
/// Most probes per burst.
pub const MAX_PROBES: u32 = 1000;
/// A burst stops when this many of its probes were answered and none lost.
pub const CLEAN_STOP: u32 = 30;
/// Bursts a path may start in a row.
pub const BUCKET: f64 = 3.0;
/// Time for a path to earn one more burst once it has used its [`BUCKET`].
pub const REFILL: Duration = Duration::from_secs(5);

/// A finished burst: probes sent, answered and lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub sent: u32,
    pub received: u32,
    pub lost: u32,
}

#[derive(Debug)]
struct Burst {
    /// Index of the target in the prober's list (to send), as given to [`Bursts::start`].
    target: usize,
    left: u32,
    next_at: Instant,
    in_flight: u32,
    done: Outcome,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The bursts of one prober, keyed by the path's slot.
#[derive(Debug, Default)]
pub struct Bursts {
    cfg: Confirmation,
    active: HashMap<usize, Burst>,
    buckets: HashMap<usize, Bucket>,
}

impl Bursts {
    pub fn new(cfg: Confirmation) -> Self {
        Bursts {
            cfg,
            active: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    pub fn config(&self) -> Confirmation {
        self.cfg
    }

    /// New settings: bursts under way are dropped, and so is what the paths had used of
    /// their bucket.
    pub fn reset(&mut self, cfg: Confirmation) {
        self.cfg = cfg;
        self.active.clear();
        self.buckets.clear();
    }

    /// The targets' list changed: each burst's target is now `position(slot)`; a burst
    /// whose path is gone ends without a word.
    pub fn retarget(&mut self, position: impl Fn(usize) -> Option<usize>) {
        self.active.retain(|&slot, b| match position(slot) {
            Some(t) => {
                b.target = t;
                true
            }
            None => false,
        });
        self.buckets.retain(|&slot, _| position(slot).is_some());
    }

    /// A regular probe of path `slot` (target `target` of the prober's list) was lost:
    /// start a burst unless one is under way, bursts are off, or the path's bucket is
    /// empty. Returns whether one started.
    pub fn start(&mut self, slot: usize, target: usize, now: Instant) -> bool {
        if self.cfg.probes == 0 || self.active.contains_key(&slot) {
            return false;
        }
        let b = self.buckets.entry(slot).or_insert(Bucket {
            tokens: BUCKET,
            at: now,
        });
        let earned = now.saturating_duration_since(b.at).as_secs_f64() / REFILL.as_secs_f64();
        b.tokens = (b.tokens + earned).min(BUCKET);
        b.at = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        self.active.insert(
            slot,
            Burst {
                target,
                left: self.cfg.probes,
                next_at: now,
                in_flight: 0,
                done: Outcome::default(),
            },
        );
        true
    }

    /// When the next burst probe is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.active
            .values()
            .filter(|b| b.left > 0)
            .map(|b| b.next_at)
            .min()
    }

    /// The burst probes due by `now`: (slot, target) each, one per burst per call (a
    /// burst behind its schedule catches up at the next turns, never in a volley).
    pub fn due(&mut self, now: Instant, out: &mut Vec<(usize, usize)>) {
        for (&slot, b) in self.active.iter_mut() {
            if b.left > 0 && b.next_at <= now {
                b.left -= 1;
                b.next_at += self.cfg.spacing;
                out.push((slot, b.target));
            }
        }
    }

    /// A burst probe of `slot` left the socket (`true`) or could not be sent.
    pub fn sent(&mut self, slot: usize, ok: bool) -> Option<Outcome> {
        let b = self.active.get_mut(&slot)?;
        if ok {
            b.done.sent += 1;
            b.in_flight += 1;
        }
        self.finished(slot)
    }

    /// A burst probe of `slot` was answered (`true`) or lost; returns the burst's outcome
    /// once its last probe is decided.
    pub fn decided(&mut self, slot: usize, answered: bool) -> Option<Outcome> {
        let b = self.active.get_mut(&slot)?;
        if b.in_flight == 0 {
            return None; // a probe of an earlier burst (before a reset)
        }
        b.in_flight -= 1;
        if answered {
            b.done.received += 1;
            if b.done.lost == 0 && b.done.received >= CLEAN_STOP {
                b.left = 0;
            }
        } else {
            b.done.lost += 1;
        }
        self.finished(slot)
    }

    fn finished(&mut self, slot: usize) -> Option<Outcome> {
        let b = self.active.get(&slot)?;
        if b.left > 0 || b.in_flight > 0 {
            return None;
        }
        self.active.remove(&slot).map(|b| b.done)
    }

    /// Bursts under way.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(probes: u32) -> Confirmation {
        Confirmation {
            probes,
            spacing: Duration::from_millis(5),
        }
    }

    /// Send every due probe of the bursts until none is left, answering with `answer`.
    fn drain(b: &mut Bursts, t0: Instant, mut answer: impl FnMut(u32) -> bool) -> Vec<Outcome> {
        let (mut out, mut done, mut now, mut n) = (Vec::new(), Vec::new(), t0, 0);
        while let Some(at) = b.next_due() {
            now = now.max(at);
            b.due(now, &mut out);
            for (slot, _) in out.drain(..) {
                done.extend(b.sent(slot, true));
                done.extend(b.decided(slot, answer(n)));
                n += 1;
            }
        }
        done
    }

    #[test]
    fn a_burst_sends_its_probes_spaced_and_reports_once_decided() {
        let t0 = Instant::now();
        let mut b = Bursts::new(cfg(10));
        assert!(b.start(3, 0, t0));
        assert!(!b.start(3, 0, t0), "one burst at a time per path");
        let mut out = Vec::new();
        b.due(t0, &mut out);
        assert_eq!(out, vec![(3, 0)]);
        b.due(t0, &mut out);
        assert_eq!(out.len(), 1, "the next one is 5 ms later");
        assert_eq!(b.next_due(), Some(t0 + Duration::from_millis(5)));
        assert_eq!(b.sent(3, true), None);
        // Lost every third: 10 probes, 4 lost (0, 3, 6, 9 of the rest counted from 1).
        assert_eq!(b.decided(3, false), None);
        let done = drain(&mut b, t0, |n| n % 3 != 2);
        assert_eq!(
            done,
            vec![Outcome {
                sent: 10,
                received: 6,
                lost: 4
            }]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_clean_burst_stops_early_and_a_lossy_one_runs_to_its_end() {
        let t0 = Instant::now();
        let mut b = Bursts::new(cfg(60));
        b.start(1, 0, t0);
        assert_eq!(
            drain(&mut b, t0, |_| true),
            vec![Outcome {
                sent: CLEAN_STOP,
                received: CLEAN_STOP,
                lost: 0
            }]
        );
        let t1 = t0 + Duration::from_secs(60);
        b.start(1, 0, t1);
        let done = drain(&mut b, t1, |n| n != 10);
        assert_eq!(
            done,
            vec![Outcome {
                sent: 60,
                received: 59,
                lost: 1
            }]
        );
    }

    #[test]
    fn bursts_are_bounded_per_path_and_off_at_zero() {
        let t0 = Instant::now();
        let mut b = Bursts::new(cfg(1));
        let mut started = 0;
        for i in 0..10 {
            let now = t0 + Duration::from_millis(100 * i);
            if b.start(7, 0, now) {
                started += 1;
                drain(&mut b, now, |_| true);
            }
        }
        assert_eq!(started, 3, "three in a row, then one per {REFILL:?}");
        assert!(!b.start(7, 0, t0 + Duration::from_millis(1000)));
        assert!(b.start(7, 0, t0 + Duration::from_millis(100) + REFILL));
        assert!(b.start(8, 0, t0), "another path has its own bucket");
        let mut off = Bursts::new(cfg(0));
        assert!(!off.start(1, 0, t0));
        assert_eq!(off.next_due(), None);
    }

    #[test]
    fn a_probe_that_could_not_be_sent_does_not_wait_to_be_decided() {
        let t0 = Instant::now();
        let mut b = Bursts::new(cfg(2));
        b.start(2, 5, t0);
        let mut out = Vec::new();
        b.due(t0, &mut out);
        assert_eq!(b.sent(2, false), None);
        b.due(t0 + Duration::from_millis(5), &mut out);
        assert_eq!(out, vec![(2, 5), (2, 5)]);
        assert_eq!(b.sent(2, true), None);
        assert_eq!(
            b.decided(2, true),
            Some(Outcome {
                sent: 1,
                received: 1,
                lost: 0
            })
        );
        // After a reset, outcomes of the old burst's probes change nothing.
        b.start(2, 5, t0);
        b.reset(cfg(2));
        assert_eq!(b.decided(2, false), None);
        assert!(b.is_empty());
    }
}
