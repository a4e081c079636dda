//! A path's recent history as the alert engine keeps it, and the view the rules read.
//!
//! The history is one entry per report for the last [`FINE_MS`], older entries folded into
//! one per [`SLOT_MS`]. A window's statistics are the sum of the entries that ended inside
//! it. The engine asks for the same window (30 s with the built-in rules) on every report
//! of the path, so the history keeps that sum running ([`Tail`]): a new entry is added to
//! it, an entry leaving the window is taken out of it, and a window is read without
//! merging (and sorting) the buckets of every entry again.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use pathpulse_metrics::slot::{PackedHist, Pairs};
use pathpulse_wire::{SparseHist, hist};

use super::rules::{PathInput, WindowStats};
use crate::ui::history::{decode_us, encode_us};

/// Minute medians kept for the latency baseline.
const BASELINE_MINUTES: usize = 60;
/// Minute medians needed before the baseline is used.
const BASELINE_MIN_MINUTES: usize = 5;
/// Recent history kept entry by entry (one per report); older entries are folded.
const FINE_MS: u64 = 10_000;
/// Older history is kept in entries of this length.
const SLOT_MS: u64 = 5_000;

/// One report, or the reports of one [`SLOT_MS`] folded together: 24 bytes and one packed
/// allocation holding its counts and its RTT histogram (was 40 bytes and a packed
/// histogram: 100,000 paths keep about 25 entries each). The RTT buckets are coarsened to
/// about 2 significant digits ([`pathpulse_wire::hist::coarse_index`]: quantiles within
/// 0.4%), enough to judge a threshold and a fraction of the memory.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub end_ms: u64,
    /// Probes received and lost; sum and count of the RFC 3550 jitter values of the
    /// reports in this entry (µs; whole microseconds, so sums are exact in any order).
    /// All saturating at `u32::MAX`, more than a path sends in a window.
    packed: PackedHist<4>,
}

/// An entry's counts, unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub received: u32,
    pub lost: u32,
    pub jitter_sum_us: u32,
    pub jitter_n: u32,
}

impl Entry {
    /// A report's entry.
    pub fn new(
        end_ms: u64,
        (received, lost): (u32, u32),
        rtt: &SparseHist,
        jitter_us: Option<u32>,
    ) -> Entry {
        Entry {
            end_ms,
            packed: PackedHist::new(
                [
                    received,
                    lost,
                    jitter_us.unwrap_or(0),
                    u32::from(jitter_us.is_some()),
                ],
                rtt.buckets()
                    .iter()
                    .map(|&(i, n)| (hist::coarse_index(i), n)),
            ),
        }
    }

    pub fn counts(&self) -> Counts {
        let [received, lost, jitter_sum_us, jitter_n] = self.packed.counts();
        Counts {
            received,
            lost,
            jitter_sum_us,
            jitter_n,
        }
    }

    pub fn rtt(&self) -> Pairs<'_> {
        self.packed.pairs()
    }

    fn absorb(&mut self, o: Entry) {
        self.end_ms = self.end_ms.max(o.end_ms);
        self.packed.merge(&o.packed);
    }
}

/// The histograms of `entries` merged into one.
fn merged<'a>(entries: impl Iterator<Item = &'a Entry>) -> SparseHist {
    SparseHist::from_pairs(entries.flat_map(|e| e.rtt()).collect())
}

/// Running sum of the entries from index `first` on: those inside the window last read.
/// Kept only once a window was read (a path no rule reads a window of costs nothing).
/// RTT counts are `u32` like the entries'; a sum past `u32::MAX` in a bucket (where the
/// straightforward merge saturates) marks it `overflow`, and the window is then merged
/// from its entries.
#[derive(Debug, Clone, Default)]
struct Tail {
    active: bool,
    overflow: bool,
    first: usize,
    received: u64,
    lost: u64,
    jitter_sum_us: u64,
    jitter_n: u64,
    /// RTT buckets (index, count), sorted by index, counts > 0.
    rtt: Vec<(u32, u32)>,
}

impl Tail {
    fn add(&mut self, e: &Entry) {
        let c = e.counts();
        self.received += u64::from(c.received);
        self.lost += u64::from(c.lost);
        self.jitter_sum_us += u64::from(c.jitter_sum_us);
        self.jitter_n += u64::from(c.jitter_n);
        if !self.overflow {
            self.add_rtt(e.rtt());
        }
    }

    fn add_rtt(&mut self, b: impl Iterator<Item = (u32, u32)> + Clone) {
        let mut mine = 0;
        let in_place = b.clone().all(|(idx, _)| {
            while mine < self.rtt.len() && self.rtt[mine].0 < idx {
                mine += 1;
            }
            mine < self.rtt.len() && self.rtt[mine].0 == idx
        });
        let mut overflow = false;
        if in_place {
            let mut mine = 0;
            for (idx, n) in b {
                while self.rtt[mine].0 < idx {
                    mine += 1;
                }
                let x = &mut self.rtt[mine].1;
                (*x, overflow) = match x.checked_add(n) {
                    Some(v) => (v, overflow),
                    None => (*x, true),
                };
            }
        } else {
            let (old, mut i) = (std::mem::take(&mut self.rtt), 0);
            self.rtt.reserve_exact(old.len() + b.clone().count());
            for (idx, n) in b {
                while i < old.len() && old[i].0 < idx {
                    self.rtt.push(old[i]);
                    i += 1;
                }
                if i < old.len() && old[i].0 == idx {
                    overflow |= old[i].1.checked_add(n).is_none();
                    self.rtt.push((idx, old[i].1.saturating_add(n)));
                    i += 1;
                } else {
                    self.rtt.push((idx, n));
                }
            }
            self.rtt.extend_from_slice(&old[i..]);
        }
        self.overflow |= overflow;
    }

    /// Take out an entry that was added (its buckets are all there, with at least its
    /// counts).
    fn sub(&mut self, e: &Entry) {
        let c = e.counts();
        self.received -= u64::from(c.received);
        self.lost -= u64::from(c.lost);
        self.jitter_sum_us -= u64::from(c.jitter_sum_us);
        self.jitter_n -= u64::from(c.jitter_n);
        if self.overflow {
            return;
        }
        let mut mine = 0;
        let mut emptied = false;
        for (idx, n) in e.rtt() {
            while self.rtt[mine].0 < idx {
                mine += 1;
            }
            let x = &mut self.rtt[mine];
            x.1 -= n;
            emptied |= x.1 == 0;
        }
        if emptied {
            self.rtt.retain(|x| x.1 > 0);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct PathHistory {
    /// Sorted by `end_ms`.
    entries: VecDeque<Entry>,
    pub first_seen_ms: u64,
    pub last_data_ms: u64,
    last_reply_ms: Option<u64>,
    sent_since_reply: u64,
    minute: u64,
    /// Minute medians, log-coded in 16 bits as the page's points are (4 significant
    /// digits, up to about 80 s: [`crate::ui::history::encode_us`]).
    minute_p50s: VecDeque<u16>,
    /// The sum of the window last read (written while the rules read the history).
    tail: RefCell<Tail>,
}

impl PathHistory {
    pub fn new(first_seen_ms: u64, last_data_ms: u64) -> PathHistory {
        PathHistory {
            first_seen_ms,
            last_data_ms,
            ..PathHistory::default()
        }
    }

    /// Add a report's entry; `sent` is its probes sent (for the silence of path-down).
    pub fn add(&mut self, e: Entry, sent: u32, keep_ms: u64, now_ms: u64) {
        if e.counts().received > 0 {
            self.last_reply_ms = Some(self.last_reply_ms.unwrap_or(0).max(e.end_ms));
            self.sent_since_reply = 0;
        } else {
            self.sent_since_reply += u64::from(sent);
        }
        // A minute closes when the first entry of a later one arrives: its median joins
        // the baseline (its entries are still kept: the history covers more than 60 s).
        let minute = e.end_ms / 60_000;
        if minute > self.minute {
            let closed = self.minute;
            let hist = merged(self.entries.iter().filter(|x| x.end_ms / 60_000 == closed));
            if let Some(p50) = hist.quantile(0.5) {
                if self.minute_p50s.len() >= BASELINE_MINUTES {
                    self.minute_p50s.pop_front();
                }
                self.minute_p50s.reserve_exact(1);
                self.minute_p50s.push_back(encode_us(Some(p50 as f64)));
            }
            self.minute = minute;
        }
        let tail = self.tail.get_mut();
        let pos = if self.entries.back().is_none_or(|x| x.end_ms <= e.end_ms) {
            self.entries.len()
        } else {
            self.entries.partition_point(|x| x.end_ms <= e.end_ms)
        };
        if !tail.active {
        } else if pos >= tail.first {
            tail.add(&e);
        } else {
            tail.first += 1;
        }
        // Grown one entry at a time, not doubled: the count settles (reports in the kept
        // window, folded) and 100,000 paths would each carry the slack.
        self.entries.reserve_exact(1);
        self.entries.insert(pos, e);
        self.last_data_ms = now_ms;
        while self
            .entries
            .front()
            .is_some_and(|x| x.end_ms + keep_ms < now_ms)
        {
            if let Some(gone) = self.entries.pop_front()
                && tail.active
            {
                if tail.first > 0 {
                    tail.first -= 1;
                } else {
                    tail.sub(&gone);
                }
            }
        }
        self.fold(now_ms);
    }

    /// Entries older than [`FINE_MS`] are folded into one per [`SLOT_MS`] of their end:
    /// about 25 entries per path instead of one per report (windows beyond 10 s are then
    /// exact to 5 s).
    fn fold(&mut self, now_ms: u64) {
        let tail = self.tail.get_mut();
        let mut i = 1;
        while i < self.entries.len() && self.entries[i].end_ms + FINE_MS < now_ms {
            if self.entries[i - 1].end_ms / SLOT_MS == self.entries[i].end_ms / SLOT_MS {
                if let Some(e) = self.entries.remove(i) {
                    // The folded entry ends where the later one did: it is in the sum
                    // when that one was.
                    if !tail.active {
                    } else if i < tail.first {
                        tail.first -= 1;
                    } else if i == tail.first {
                        tail.add(&self.entries[i - 1]);
                        tail.first = i - 1;
                    }
                    self.entries[i - 1].absorb(e);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Move the running sum to the entries that ended after `from_ms`.
    fn seek(&self, from_ms: u64) -> std::cell::Ref<'_, Tail> {
        {
            let mut t = self.tail.borrow_mut();
            if !t.active {
                *t = Tail {
                    active: true,
                    first: self.entries.len(),
                    ..Tail::default()
                };
            }
            let target = self.entries.partition_point(|e| e.end_ms <= from_ms);
            while t.first < target {
                let i = t.first;
                t.sub(&self.entries[i]);
                t.first += 1;
            }
            while t.first > target {
                t.first -= 1;
                let i = t.first;
                t.add(&self.entries[i]);
            }
            if t.overflow {
                // Sum the buckets again (the entries that overflowed may have left).
                t.overflow = false;
                t.rtt.clear();
                for e in self.entries.range(t.first..) {
                    t.add_rtt(e.rtt());
                }
            }
        }
        self.tail.borrow()
    }

    /// The merged RTT histogram of the window `seek` moved to.
    fn tail_rtt(&self, t: &Tail) -> SparseHist {
        if t.overflow {
            merged(self.entries.range(t.first..))
        } else {
            SparseHist::from_pairs(t.rtt.clone())
        }
    }

    /// A window's statistics computed from its entries, without the running sum (what
    /// [`PathHistory::seek`] must agree with).
    #[cfg(test)]
    fn window_merged(&self, from_ms: u64) -> (u64, u64, u64, u64, SparseHist) {
        let inside = || self.entries.iter().rev().take_while(|e| e.end_ms > from_ms);
        let (mut r, mut l, mut js, mut jn) = (0, 0, 0, 0);
        for e in inside().map(Entry::counts) {
            r += u64::from(e.received);
            l += u64::from(e.lost);
            js += u64::from(e.jitter_sum_us);
            jn += u64::from(e.jitter_n);
        }
        (r, l, js, jn, merged(inside()))
    }
}

/// A path's history seen at one instant: what the rules read. Window statistics are
/// computed once per window length (several rules read the same one).
pub(super) struct PathView<'a> {
    h: &'a PathHistory,
    now_ms: u64,
    /// The agent's report interval: a window is never shorter than two of them.
    interval_ms: u64,
    cache: RefCell<Vec<WindowStats>>,
}

impl<'a> PathView<'a> {
    pub fn new(h: &'a PathHistory, now_ms: u64, interval_ms: u64) -> PathView<'a> {
        PathView {
            h,
            now_ms,
            interval_ms,
            cache: RefCell::new(Vec::new()),
        }
    }

    /// Where `window` starts: the entries that ended after it are inside.
    fn start_ms(&self, window: Duration) -> u64 {
        let w = (window.as_millis() as u64).max(2 * self.interval_ms);
        self.now_ms.saturating_sub(w)
    }
}

impl PathInput for PathView<'_> {
    fn window(&self, window: Duration) -> WindowStats {
        if let Some(s) = self.cache.borrow().iter().find(|s| s.window == window) {
            return s.clone();
        }
        let t = self.h.seek(self.start_ms(window));
        let s = WindowStats {
            window,
            received: t.received,
            lost: t.lost,
            rtt: self.h.tail_rtt(&t),
            jitter_us: (t.jitter_n > 0).then(|| t.jitter_sum_us as f64 / t.jitter_n as f64),
        };
        drop(t);
        self.cache.borrow_mut().push(s.clone());
        s
    }

    fn counts(&self, window: Duration) -> (u64, u64) {
        let from = self.start_ms(window);
        self.h
            .entries
            .iter()
            .rev()
            .take_while(|e| e.end_ms > from)
            .map(Entry::counts)
            .fold((0, 0), |(r, l), e| {
                (r + u64::from(e.received), l + u64::from(e.lost))
            })
    }

    fn baseline_p50_us(&self) -> Option<u64> {
        let m = &self.h.minute_p50s;
        if m.len() < BASELINE_MIN_MINUTES {
            return None;
        }
        // The median of at most 60 values, without an allocation (the codes are in the
        // values' order).
        let mut v = [0u16; BASELINE_MINUTES];
        let v = &mut v[..m.len()];
        for (x, &y) in v.iter_mut().zip(m) {
            *x = y;
        }
        let mid = v.len() / 2;
        decode_us(*v.select_nth_unstable(mid).1)
    }

    fn silence(&self) -> (Duration, bool) {
        let since = self.h.last_reply_ms.unwrap_or(self.h.first_seen_ms);
        (
            Duration::from_millis(self.now_ms.saturating_sub(since)),
            self.h.sent_since_reply > 0,
        )
    }
}

/// Several paths seen as one (a roll-up): their probe counts summed, their RTT
/// histograms merged, never an average of their ratios. No baseline and no silence of
/// its own.
pub(super) struct GroupView<'a> {
    pub members: Vec<PathView<'a>>,
}

impl PathInput for GroupView<'_> {
    fn window(&self, window: Duration) -> WindowStats {
        let stats: Vec<WindowStats> = self.members.iter().map(|m| m.window(window)).collect();
        let (mut js, mut jn) = (0.0, 0u64);
        for s in &stats {
            if let Some(j) = s.jitter_us {
                js += j;
                jn += 1;
            }
        }
        WindowStats {
            window,
            received: stats.iter().map(|s| s.received).sum(),
            lost: stats.iter().map(|s| s.lost).sum(),
            rtt: SparseHist::merged(stats.iter().map(|s| &s.rtt)),
            jitter_us: (jn > 0).then(|| js / jn as f64),
        }
    }

    fn counts(&self, window: Duration) -> (u64, u64) {
        self.members
            .iter()
            .map(|m| m.counts(window))
            .fold((0, 0), |(r, l), (mr, ml)| (r + mr, l + ml))
    }

    fn baseline_p50_us(&self) -> Option<u64> {
        None
    }

    fn silence(&self) -> (Duration, bool) {
        (Duration::ZERO, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn entry(rng: &mut StdRng, end_ms: u64) -> Entry {
        let mut rtt = SparseHist::new();
        let base = rng.random_range(100..50_000u64);
        let n = rng.random_range(0..8u32);
        for _ in 0..n {
            rtt.record(base + rng.random_range(0..base / 4 + 1));
        }
        let jitter = rng.random_bool(0.5).then(|| rng.random_range(0..5_000u32));
        Entry::new(end_ms, (n, rng.random_range(0..2)), &rtt, jitter)
    }

    /// The running sum agrees with merging the window's entries, whatever the order of
    /// additions (late reports), expiry, folding and the windows read.
    #[test]
    fn running_window_equals_the_merged_entries_on_random_input() {
        let mut rng = StdRng::seed_from_u64(10);
        for round in 0..40 {
            let mut h = PathHistory::new(0, 0);
            let keep_ms = rng.random_range(20_000..90_000);
            let windows = [3_000, 10_000, 30_000, 60_000, rng.random_range(1..80_000)];
            let mut now = 1_000_000u64;
            for step in 0..300 {
                now += rng.random_range(0..2_500);
                // Mostly fresh reports, some late ones, a few in the future of others.
                let end = now.saturating_sub(match rng.random_range(0..10) {
                    0 => rng.random_range(0..keep_ms),
                    1 => rng.random_range(0..15_000),
                    _ => rng.random_range(0..1_000),
                });
                let e = entry(&mut rng, end);
                h.add(e, 1, keep_ms, now);
                for _ in 0..rng.random_range(0..4) {
                    let w = windows[rng.random_range(0..windows.len())];
                    let from = now.saturating_sub(w);
                    let (r, l, js, jn, rtt) = h.window_merged(from);
                    let t = h.seek(from);
                    assert_eq!(
                        (
                            t.received,
                            t.lost,
                            t.jitter_sum_us,
                            t.jitter_n,
                            h.tail_rtt(&t)
                        ),
                        (r, l, js, jn, rtt),
                        "round {round} step {step} window {w}"
                    );
                }
            }
        }
    }

    /// What the rules read through the view: the same statistics as the window computed
    /// straightforwardly (jitter as a mean of the reports' values).
    #[test]
    fn view_window_equals_the_straightforward_statistics() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut h = PathHistory::new(0, 0);
        let mut now = 5_000_000u64;
        for _ in 0..200 {
            now += 1_000;
            let end = now - rng.random_range(0..2_000);
            let e = entry(&mut rng, end);
            h.add(e, 1, 70_000, now);
            let view = PathView::new(&h, now, 1_000);
            for w in [3, 30, 60, 10, 30] {
                let w = Duration::from_secs(w);
                let from = now - w.as_millis() as u64;
                let (received, lost, js, jn, rtt) = h.window_merged(from);
                let want = WindowStats {
                    window: w,
                    received,
                    lost,
                    rtt,
                    jitter_us: (jn > 0).then(|| js as f64 / jn as f64),
                };
                assert_eq!(view.window(w), want);
                assert_eq!(view.counts(w), (received, lost));
            }
        }
    }

    /// A bucket summing past `u32::MAX` saturates, as the straightforward merge does, and
    /// the sum is exact again once the entries that overflowed left the window.
    #[test]
    fn bucket_overflow_falls_back_to_the_merge() {
        let big = |end_ms, n| {
            Entry::new(
                end_ms,
                (1, 0),
                &SparseHist::from_pairs(vec![(100, n), (200, 1)]),
                None,
            )
        };
        let mut h = PathHistory::new(0, 0);
        let now = 100_000;
        h.add(big(now - 20_000, 3_000_000_000), 1, 70_000, now);
        let _ = h.seek(now - 30_000);
        h.add(big(now - 1_000, 3_000_000_000), 1, 70_000, now);
        h.add(big(now, 5), 1, 70_000, now);
        for from in [now - 30_000, now - 5_000, now - 30_000, now - 500] {
            let t = h.seek(from);
            assert_eq!(h.tail_rtt(&t), h.window_merged(from).4, "from {from}");
        }
        assert_eq!(
            h.tail_rtt(&h.seek(now - 30_000)).buckets()[0],
            (100, u32::MAX)
        );
    }

    /// An entry is 24 bytes, its counts packed with its histogram, which is coarse:
    /// 100,000 paths keep about 25 each.
    #[test]
    fn entries_are_small_and_coarse() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        // Counts round-trip, add up saturating when folded, and an entry of nothing
        // allocates nothing.
        let one = hist::SparseHist::new();
        let mut a = Entry::new(5, (7, u32::MAX - 1), &one, Some(300));
        a.absorb(Entry::new(9, (1, 3), &one, None));
        let want = Counts {
            received: 8,
            lost: u32::MAX,
            jitter_sum_us: 300,
            jitter_n: 1,
        };
        assert_eq!((a.end_ms, a.counts(), a.rtt().count()), (9, want, 0));
        let none = Entry::new(1, (0, 0), &one, None);
        assert_eq!(
            (none.counts(), none.packed.heap_bytes()),
            (Counts::default(), 0)
        );
        let mut rtt = SparseHist::new();
        for v in 20_000..20_500 {
            rtt.record(v);
        }
        let e = Entry::new(0, (500, 0), &rtt, None);
        let (fine, coarse) = (rtt.buckets().len(), e.rtt().count());
        assert!(coarse * 8 <= fine + 8, "{fine} buckets -> {coarse}");
        let q = |h: &SparseHist| h.quantile(0.95).expect("samples") as f64;
        let (a, b) = (q(&rtt), q(&SparseHist::from_pairs(e.rtt().collect())));
        assert!((a - b).abs() / a < 0.005, "p95 {a} -> {b}");
    }

    /// A group's loss is its paths' probe counts summed, not the mean of their ratios.
    #[test]
    fn a_group_sums_its_paths_counts() {
        let add = |h: &mut PathHistory, received, lost| {
            let mut rtt = SparseHist::new();
            rtt.record(1_000 * u64::from(received));
            h.add(
                Entry::new(10_000, (received, lost), &rtt, None),
                received + lost,
                70_000,
                10_000,
            );
        };
        let (mut busy, mut thin) = (PathHistory::new(0, 0), PathHistory::new(0, 0));
        add(&mut busy, 90, 10);
        add(&mut thin, 1, 9);
        let group = GroupView {
            members: vec![
                PathView::new(&busy, 10_000, 1_000),
                PathView::new(&thin, 10_000, 1_000),
            ],
        };
        let w = Duration::from_secs(3);
        assert_eq!(group.counts(w), (91, 19));
        let s = group.window(w);
        assert_eq!((s.received, s.lost), (91, 19));
        assert_eq!(s.rtt.buckets().len(), 2, "histograms merged: {s:?}");
        assert_eq!(group.baseline_p50_us(), None);
    }

    #[test]
    fn baseline_is_the_median_of_the_minute_medians() {
        let mut h = PathHistory::new(0, 0);
        let view = |h: &PathHistory| PathView::new(h, 0, 1_000).baseline_p50_us();
        let code = |us: u64| encode_us(Some(us as f64));
        h.minute_p50s.extend([9_000, 1_000, 7_000, 3_000].map(code));
        assert_eq!(view(&h), None);
        h.minute_p50s.extend([5_000, 2_000].map(code));
        let mut v: Vec<u64> = h.minute_p50s.iter().filter_map(|&x| decode_us(x)).collect();
        v.sort_unstable();
        assert_eq!(view(&h), Some(v[v.len() / 2]));
        assert!(
            v[v.len() / 2].abs_diff(5_000) <= 1,
            "4 significant digits kept"
        );
        h.minute_p50s = (0..60).rev().map(|i| code(1_000 + i * 100)).collect();
        assert!(
            view(&h).is_some_and(|v| v.abs_diff(4_000) <= 1),
            "{:?}",
            view(&h)
        );
        h.minute_p50s = [u64::from(u32::MAX); 60].map(code).into();
        assert!(
            view(&h).is_some_and(|v| v > 60_000_000),
            "saturates, not wraps"
        );
    }
}
