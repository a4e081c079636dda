//! State the probers write and the reporter reads: per-path statistics of the current
//! interval and the agent's own health counters. One short lock per event.
//!
//! Paths live in slots whose index never changes while the agent runs, so a reload can
//! add and remove targets while probes are in flight: a removed path is *retired* (the
//! next report carries its last interval, then the slot is freed and later events for it
//! are ignored); an added path gets a new slot.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Notify, broadcast};

use pathpulse_wire::message::ConfirmPath;
use pathpulse_wire::{AgentHealth, PathReport, ProbeKind};

use crate::probe::matcher::StrayReason;
use crate::stats::PathStats;

#[derive(Debug, Default)]
pub struct Paths {
    slots: Vec<Option<PathStats>>,
    /// Slots reported one last time at the next `take`, then freed.
    retiring: Vec<usize>,
}

#[derive(Debug)]
pub struct Shared {
    paths: Mutex<Paths>,
    health: Mutex<AgentHealth>,
    /// Woken when a path's interval so far shows loss an alert may act on, so that the
    /// reporter sends early instead of at the end of a long report interval.
    lossy: Notify,
    /// Finished confirmation bursts, for every uplink (see `probe::confirm`); when each
    /// was finished, so that an uplink drops what waited for a connection.
    confirms: broadcast::Sender<(Instant, ConfirmPath)>,
}

/// Finished bursts an uplink may be behind by before it skips the oldest.
const CONFIRM_QUEUE: usize = 256;

/// A path wakes the reporter early when this many of its last 30 decided probes were lost
/// (and one of them in the current interval). At 1% background loss about 0.4% of losses
/// have three more within 30 probes: about one early report per path an hour at 10
/// probes/s. At 20% loss the fourth loss comes after about 20 probes.
const EARLY_LOST: u32 = 4;

/// What ends with an interval besides the paths' reports ([`Shared::take_into`]).
#[derive(Debug, Default)]
pub struct Ended {
    pub health: AgentHealth,
    /// Paths that were retired: this was their last report.
    pub retired: Vec<(String, ProbeKind)>,
}

/// One report interval's worth of state, taken by the reporter.
#[derive(Debug, Default)]
pub struct Taken {
    pub paths: Vec<PathReport>,
    pub health: AgentHealth,
    /// Paths that were retired: this was their last report.
    pub retired: Vec<(String, ProbeKind)>,
}

fn worth_early(p: &PathStats) -> bool {
    p.lost > 0 && p.recent_losses() >= EARLY_LOST
}

impl Shared {
    pub fn new(paths: Vec<PathStats>) -> Self {
        Shared {
            paths: Mutex::new(Paths {
                slots: paths.into_iter().map(Some).collect(),
                retiring: Vec::new(),
            }),
            health: Mutex::default(),
            lossy: Notify::new(),
            confirms: broadcast::channel(CONFIRM_QUEUE).0,
        }
    }

    /// A confirmation burst of path `i` finished, `others` of the prober's still under way
    /// (ignored for a freed slot).
    pub fn confirmed(&self, i: usize, o: crate::probe::confirm::Outcome, others: usize) {
        let path = match self.lock_paths().slots.get(i) {
            Some(Some(p)) => ConfirmPath {
                dst: p.dst.clone(),
                probe: p.probe.unwrap_or(ProbeKind::Icmp),
                sent: o.sent,
                received: o.received,
                lost: o.lost,
                others_under_way: u32::try_from(others).unwrap_or(u32::MAX),
            },
            _ => return,
        };
        // No uplink listening (standalone agent): nobody to tell.
        let _ = self.confirms.send((Instant::now(), path));
    }

    /// Finished confirmation bursts from now on.
    pub fn confirms(&self) -> broadcast::Receiver<(Instant, ConfirmPath)> {
        self.confirms.subscribe()
    }

    /// A probe on path `i` is lost.
    pub fn lost(&self, i: usize) {
        let mut early = false;
        if let Some(Some(p)) = self.lock_paths().slots.get_mut(i) {
            p.on_lost();
            early = worth_early(p);
        }
        if early {
            self.lossy.notify_one();
        }
    }

    /// Has path `i` lost [`EARLY_LOST`] or more of its last 30 decided probes? Its regular
    /// probes then say enough by themselves: no confirmation burst.
    pub fn visibly_lossy(&self, i: usize) -> bool {
        matches!(self.lock_paths().slots.get(i), Some(Some(p)) if p.recent_losses() >= EARLY_LOST)
    }

    /// Does some path's interval so far still show loss worth an early report? (A wake-up
    /// can be stale: the report it asked for may have gone at its regular time.)
    pub fn lossy_now(&self) -> bool {
        self.lock_paths().slots.iter().flatten().any(worth_early)
    }

    /// Resolves when a path shows loss worth an early report (see [`Shared::lost`]).
    pub async fn lossy(&self) {
        self.lossy.notified().await;
    }

    /// Run `f` on path `i` (ignores a freed slot or an index out of range).
    pub fn path(&self, i: usize, f: impl FnOnce(&mut PathStats)) {
        if let Some(Some(p)) = self.lock_paths().slots.get_mut(i) {
            f(p);
        }
    }

    fn lock_paths(&self) -> MutexGuard<'_, Paths> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new path; returns its slot.
    pub fn add(&self, p: PathStats) -> usize {
        let mut g = self.lock_paths();
        g.slots.push(Some(p));
        g.slots.len() - 1
    }

    /// Stop counting into slot `i` after the next report (which carries its last interval).
    pub fn retire(&self, i: usize) {
        let mut g = self.lock_paths();
        if g.slots.get(i).is_some_and(Option::is_some) && !g.retiring.contains(&i) {
            g.retiring.push(i);
        }
    }

    /// Paths with a live slot (retiring ones included).
    pub fn len(&self) -> usize {
        self.lock_paths().slots.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn health(&self, f: impl FnOnce(&mut AgentHealth)) {
        f(&mut self.health.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn stray(&self, r: StrayReason) {
        self.health(|h| match r {
            StrayReason::NotOurs => h.stray_not_ours += 1,
            StrayReason::WrongSource => h.stray_wrong_source += 1,
            StrayReason::UnknownProbe => h.stray_unknown_probe += 1,
        });
    }

    pub fn lag(&self, lag_us: u64) {
        let lag = u32::try_from(lag_us).unwrap_or(u32::MAX);
        self.health(|h| h.max_scheduling_lag_us = h.max_scheduling_lag_us.max(lag));
    }

    /// End the interval: every path's report and the health counters, reset; retired
    /// paths are reported once more and then freed.
    pub fn take(&self) -> Taken {
        let mut paths = Vec::new();
        let Ended { health, retired } = self.take_into(&mut paths);
        Taken {
            paths,
            health,
            retired,
        }
    }

    /// As [`Shared::take`], the paths' reports into `paths`: the last interval's reports,
    /// whose buffers are reused ([`PathStats::take_report_into`]).
    pub fn take_into(&self, paths: &mut Vec<PathReport>) -> Ended {
        let mut g = self.lock_paths();
        let live = g.slots.iter().flatten().count();
        paths.resize_with(live, PathReport::default);
        for (p, r) in g.slots.iter_mut().flatten().zip(paths.iter_mut()) {
            p.take_report_into(r);
        }
        let retiring = std::mem::take(&mut g.retiring);
        let retired = free(&mut g, retiring);
        drop(g);
        Ended {
            health: self.take_health(),
            retired,
        }
    }

    fn take_health(&self) -> AgentHealth {
        std::mem::take(&mut *self.health.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// End the interval in parts, without holding every path's report at once: the
    /// health counters now, then [`Shared::take_part`] until it returns no next slot,
    /// then [`Shared::end_parts`]. Paths retired before this call get their last report
    /// in the parts; later ones at the next interval.
    pub fn begin_parts(&self) -> Begun {
        let retiring = std::mem::take(&mut self.lock_paths().retiring);
        Begun {
            health: self.take_health(),
            retiring,
        }
    }

    /// The reports of up to `max` (at least 1) live paths from slot `from` on, into the
    /// first entries of `paths` (reused). Returns how many, and the slot the next part
    /// starts at (`None`: this was the last part).
    pub fn take_part(
        &self,
        from: usize,
        max: usize,
        paths: &mut Vec<PathReport>,
    ) -> (usize, Option<usize>) {
        let mut g = self.lock_paths();
        let mut n = 0;
        for (i, slot) in g.slots.iter_mut().enumerate().skip(from) {
            let Some(p) = slot else { continue };
            if n == max.max(1) {
                return (n, Some(i));
            }
            if n == paths.len() {
                paths.push(PathReport::default());
            }
            p.take_report_into(&mut paths[n]);
            n += 1;
        }
        (n, None)
    }

    /// Free the slots retired before [`Shared::begin_parts`]; returns what they were.
    pub fn end_parts(&self, begun: Begun) -> Vec<(String, ProbeKind)> {
        free(&mut self.lock_paths(), begun.retiring)
    }
}

/// An interval being ended in parts ([`Shared::begin_parts`]).
#[derive(Debug)]
pub struct Begun {
    pub health: AgentHealth,
    retiring: Vec<usize>,
}

/// Free retired slots; returns their (dst, probe).
fn free(g: &mut Paths, retiring: Vec<usize>) -> Vec<(String, ProbeKind)> {
    let mut retired = Vec::with_capacity(retiring.len());
    for i in retiring {
        if let Some(p) = g.slots.get_mut(i).and_then(Option::take)
            && let Some(probe) = p.probe
        {
            retired.push((p.dst, probe));
        }
    }
    retired
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_path_is_reported_once_more_then_ignored() {
        let s = Shared::new(vec![
            PathStats::new("a".into(), ProbeKind::Icmp),
            PathStats::new("b".into(), ProbeKind::Tcp),
        ]);
        s.path(0, |p| p.on_sent());
        s.path(1, |p| p.on_sent());
        let c = s.add(PathStats::new("c".into(), ProbeKind::Icmp));
        assert_eq!(c, 2);
        s.retire(1);
        s.path(1, |p| p.on_lost());
        let t = s.take();
        let dsts: Vec<&str> = t.paths.iter().map(|p| p.dst.as_str()).collect();
        assert_eq!(dsts, ["a", "b", "c"]);
        assert_eq!((t.paths[1].sent, t.paths[1].lost), (1, 1));
        assert_eq!(t.retired, [("b".to_string(), ProbeKind::Tcp)]);
        // Late events for the freed slot go nowhere; the others keep their slots.
        s.path(1, |p| p.on_lost());
        s.path(2, |p| p.on_sent());
        let t = s.take();
        let dsts: Vec<&str> = t.paths.iter().map(|p| p.dst.as_str()).collect();
        assert_eq!(dsts, ["a", "c"]);
        assert_eq!(t.paths[1].sent, 1);
        assert!(t.retired.is_empty());
        assert_eq!(s.len(), 2);
    }

    #[tokio::test]
    async fn loss_worth_an_alert_wakes_the_reporter_and_background_loss_does_not() {
        let s = Shared::new(vec![PathStats::new("a".into(), ProbeKind::Icmp)]);
        let woken = |s: &Shared| {
            let mut f = std::pin::pin!(s.lossy());
            std::future::Future::poll(
                f.as_mut(),
                &mut std::task::Context::from_waker(std::task::Waker::noop()),
            )
            .is_ready()
        };
        // 1% background: losses 30 or more probes apart never wake it.
        for i in 0..200 {
            if i % 30 == 0 {
                s.lost(0);
            } else {
                s.path(0, |p| p.on_reply(100, false));
            }
        }
        assert!(!woken(&s) && !s.lossy_now(), "one loss per 30 probes");
        s.take();
        // 20%: the fourth loss within 20 probes wakes it, once.
        for i in 0..20 {
            if i % 5 == 0 {
                s.lost(0);
            } else {
                s.path(0, |p| p.on_reply(100, false));
            }
        }
        assert!(s.lossy_now());
        assert!(woken(&s), "4 lost of 20");
        assert!(!woken(&s), "one wake-up per notification");
        // A new interval without loss is not lossy, whatever the history says.
        s.take();
        assert!(!s.lossy_now());
        s.lost(0);
        assert!(s.lossy_now(), "the fifth loss of the last 30");
    }

    #[test]
    fn taking_in_parts_gives_the_whole_take() {
        let make = || {
            let s = Shared::new(
                (0..10)
                    .map(|i| PathStats::new(format!("127.0.0.{i}"), ProbeKind::Icmp))
                    .collect(),
            );
            for i in 0..10 {
                for _ in 0..=i {
                    s.path(i, |p| p.on_sent());
                }
                s.path(i, |p| p.on_reply(100 + i as u64, false));
            }
            s.health(|h| h.stray_not_ours = 3);
            s.retire(4);
            s
        };
        let whole = make().take();
        let s = make();
        let begun = s.begin_parts();
        assert_eq!(begun.health.stray_not_ours, 3);
        // Retired after the start: reported again at the next interval.
        s.retire(7);
        let (mut parts, mut buf, mut from) = (Vec::new(), Vec::new(), Some(0));
        while let Some(f) = from {
            let (n, next) = s.take_part(f, 3, &mut buf);
            assert!(n <= 3);
            parts.extend_from_slice(&buf[..n]);
            from = next;
        }
        assert_eq!(parts, whole.paths);
        assert_eq!(s.end_parts(begun), whole.retired);
        assert_eq!(s.len(), 9);
        let next = s.take();
        assert_eq!(next.paths.len(), 9);
        assert_eq!(next.retired, [("127.0.0.7".to_string(), ProbeKind::Icmp)]);
    }
}
