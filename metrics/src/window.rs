//! Per-path time windows: slots of counts and packed histograms ([`crate::slot`]), merged
//! on demand into the 10 s, 1 min and 5 min views. Pure: `now` is an argument.
//!
//! Memory is tiered: the last [`FINE_MS`] are kept in 5 s slots (so the 10 s and 1 min
//! windows are exact to a slot), older data is folded into 1 min slots (so the 5 min
//! window covers 5 to 6 minutes). That is 18 slots per path instead of 60.

use pathpulse_wire::stamp::Directional;
use pathpulse_wire::{PathReport, SparseHist};

use pathpulse_wire::hist::MergeSorted;

use crate::slot::Slot;

/// STAMP's per-direction view of a slot or window (kept beside a path's slots, only for
/// paths that have one: most have none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirView {
    pub attributed: u64,
    pub forward_lost: u64,
    pub reverse_lost: u64,
    pub owd_forward: SparseHist,
    pub owd_reverse: SparseHist,
}

impl DirView {
    fn add(&mut self, d: &Directional) {
        self.attributed += u64::from(d.attributed);
        self.forward_lost += u64::from(d.forward_lost);
        self.reverse_lost += u64::from(d.reverse_lost);
        self.owd_forward.merge(&d.owd_forward);
        self.owd_reverse.merge(&d.owd_reverse);
    }

    pub(crate) fn merge(&mut self, o: &DirView) {
        self.attributed += o.attributed;
        self.forward_lost += o.forward_lost;
        self.reverse_lost += o.reverse_lost;
        self.owd_forward.merge(&o.owd_forward);
        self.owd_reverse.merge(&o.owd_reverse);
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.owd_forward.shrink_to_fit();
        self.owd_reverse.shrink_to_fit();
    }
}

fn merge_dir(into: &mut Option<Box<DirView>>, from: Option<&DirView>) {
    if let Some(f) = from {
        into.get_or_insert_default().merge(f);
    }
}

/// Slot length. A report joins the slot holding its interval start.
pub const SLOT_MS: u64 = 5_000;
/// Recent data kept in fine slots: the 1 min window plus one slot.
pub const FINE_MS: u64 = 65_000;
/// Length of the coarse slots older data is folded into.
pub const COARSE_MS: u64 = 60_000;
/// The windows exported, with their label value.
pub const WINDOWS: [(&str, u64); 3] = [("10s", 10_000), ("1m", 60_000), ("5m", 300_000)];
/// Longest window: older slots are dropped.
pub const MAX_WINDOW_MS: u64 = 300_000;
/// A report whose interval starts further than this in the future (agent clock ahead) is
/// kept out of the windows (its counters still count).
pub const MAX_FUTURE_MS: u64 = 60_000;

/// What one window says about a path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowView {
    pub hist: SparseHist,
    pub ipdv: SparseHist,
    pub received: u64,
    pub lost: u64,
    /// STAMP paths: per direction.
    pub dir: Option<Box<DirView>>,
}

/// Slots being merged into a view. Each slot's buckets are sorted: they are merged in one
/// pass per slot, into two buffers reused for the whole view.
#[derive(Default)]
struct Acc {
    rtt: Vec<(u32, u32)>,
    ipdv: Vec<(u32, u32)>,
    scratch: Vec<(u32, u32)>,
    received: u64,
    lost: u64,
    dir: Option<Box<DirView>>,
}

impl Acc {
    fn add(&mut self, s: &Slot, dir: Option<&DirView>) {
        let (r, i) = s.pairs();
        for (acc, add) in [(&mut self.rtt, r), (&mut self.ipdv, i)] {
            self.scratch.clear();
            self.scratch
                .extend(MergeSorted::new(acc.iter().copied(), add));
            std::mem::swap(acc, &mut self.scratch);
        }
        let (received, lost) = s.counts();
        self.received += u64::from(received);
        self.lost += u64::from(lost);
        merge_dir(&mut self.dir, dir);
    }

    /// The view so far (the buckets copied: more slots may follow).
    fn view(&self) -> WindowView {
        WindowView {
            hist: SparseHist::from_pairs(self.rtt.clone()),
            ipdv: SparseHist::from_pairs(self.ipdv.clone()),
            received: self.received,
            lost: self.lost,
            dir: self.dir.clone(),
        }
    }

    fn into_view(self) -> WindowView {
        // Already sorted and unique: `from_pairs` only checks that.
        WindowView {
            hist: SparseHist::from_pairs(self.rtt),
            ipdv: SparseHist::from_pairs(self.ipdv),
            received: self.received,
            lost: self.lost,
            dir: self.dir,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PathWindows {
    /// In start order; the capacity is kept at the longest length reached (one more slot
    /// at a time), not doubled.
    slots: Vec<Slot>,
    /// STAMP paths: the per-direction view of each slot that has one, by the slot's start,
    /// in start order. Beside the slots rather than in them: a pointer in every slot was 8
    /// bytes × 18 slots for every path, where most paths (ICMP, UDP, TCP) have none.
    /// Boxed so that it is one thin pointer (8 bytes) in every path's windows.
    #[allow(clippy::box_collection)]
    dirs: Option<Box<Vec<(u64, DirView)>>>,
}

impl PathWindows {
    /// Add a report's interval to its slot, if the interval is inside the longest window.
    /// Returns whether it joined the windows (late replays older than 5 min do not).
    pub fn add(&mut self, interval_start_ms: u64, p: &PathReport, now_ms: u64) -> bool {
        self.expire(now_ms);
        let start = interval_start_ms - interval_start_ms % SLOT_MS;
        if interval_start_ms + MAX_WINDOW_MS < now_ms
            || interval_start_ms > now_ms + MAX_FUTURE_MS
            || !Slot::can_start(start)
        {
            return false;
        }
        let pos = self.slots.partition_point(|s| s.start_ms() < start);
        if self.slots.get(pos).is_none_or(|s| s.start_ms() != start) {
            self.slots.reserve_exact(1);
            self.slots.insert(pos, Slot::new(start, SLOT_MS as u32));
        }
        self.slots[pos].add(&p.rtt, &p.ipdv, p.received, p.lost);
        if let Some(d) = &p.directional {
            self.dir_mut(start).add(d);
        }
        self.compact(now_ms);
        true
    }

    /// Fold fine slots older than [`FINE_MS`] into the 1 min slot holding their start.
    fn compact(&mut self, now_ms: u64) {
        let mut i = 0;
        while i < self.slots.len() {
            let s = &self.slots[i];
            if s.coarse() || s.end_ms() + FINE_MS > now_ms {
                i += 1;
                continue;
            }
            let coarse = s.start_ms() - s.start_ms() % COARSE_MS;
            let merge_into_previous =
                i > 0 && self.slots[i - 1].start_ms() == coarse && self.slots[i - 1].coarse();
            let fine_start = s.start_ms();
            if merge_into_previous {
                let fine = self.slots.remove(i);
                let c = &mut self.slots[i - 1];
                c.absorb(&fine);
                let end = c.end_ms().max(fine.end_ms());
                c.extend_to(end);
            } else {
                let c = &mut self.slots[i];
                let end = c.end_ms();
                c.make_coarse(coarse, end);
                i += 1;
            }
            if let Some(d) = self.take_dir(fine_start) {
                let into = self.dir_mut(coarse);
                into.merge(&d);
                into.shrink_to_fit();
            }
        }
    }

    /// Drop slots that no window covers any more.
    pub fn expire(&mut self, now_ms: u64) {
        let old = self
            .slots
            .iter()
            .take_while(|s| s.end_ms() + MAX_WINDOW_MS <= now_ms)
            .count();
        if old == 0 {
            // Every report calls this: nothing to do most of the time.
            return;
        }
        self.slots.drain(..old);
        if let Some(d) = self.dirs.as_mut() {
            let slots = &self.slots;
            d.retain(|(start, _)| slots.binary_search_by_key(start, Slot::start_ms).is_ok());
            if d.is_empty() {
                self.dirs = None;
            } else {
                d.shrink_to_fit();
            }
        }
    }

    /// The per-direction view of the slot starting at `start_ms`, if it has one.
    fn dir_of(&self, start_ms: u64) -> Option<&DirView> {
        let d = self.dirs.as_deref()?;
        let i = d.binary_search_by_key(&start_ms, |e| e.0).ok()?;
        Some(&d[i].1)
    }

    /// The per-direction view of the slot starting at `start_ms`, made if it has none.
    fn dir_mut(&mut self, start_ms: u64) -> &mut DirView {
        let d = self.dirs.get_or_insert_default();
        let i = match d.binary_search_by_key(&start_ms, |e| e.0) {
            Ok(i) => i,
            Err(i) => {
                // One more at a time, as the slots: doubled, a STAMP path's 19 or so
                // views would sit in room for 32 (80 bytes each).
                d.reserve_exact(1);
                d.insert(i, (start_ms, DirView::default()));
                i
            }
        };
        &mut d[i].1
    }

    /// Remove the per-direction view of the slot starting at `start_ms`.
    fn take_dir(&mut self, start_ms: u64) -> Option<DirView> {
        let d = self.dirs.as_mut()?;
        let i = d.binary_search_by_key(&start_ms, |e| e.0).ok()?;
        Some(d.remove(i).1)
    }

    /// Merge the slots that overlap `(now - window, now]`.
    pub fn view(&self, window_ms: u64, now_ms: u64) -> WindowView {
        let from = now_ms.saturating_sub(window_ms);
        self.merge(|s| s.end_ms() > from && s.start_ms() <= now_ms)
    }

    /// Received and lost over `(now - window, now]`: [`view`](Self::view)'s counts
    /// without merging histograms.
    pub fn counts(&self, window_ms: u64, now_ms: u64) -> (u64, u64) {
        let from = now_ms.saturating_sub(window_ms);
        self.slots
            .iter()
            .filter(|s| s.end_ms() > from && s.start_ms() <= now_ms)
            .map(Slot::counts)
            .fold((0, 0), |(r, l), (sr, sl)| {
                (r + u64::from(sr), l + u64::from(sl))
            })
    }

    /// [`view`](Self::view) of several windows at once, shortest first, in one pass over
    /// the slots (newest first: a shorter window's slots are the newest of a longer one's).
    /// A scrape asks for the three of every path.
    pub fn views<const N: usize>(&self, windows_ms: [u64; N], now_ms: u64) -> [WindowView; N] {
        debug_assert!(windows_ms.is_sorted(), "windows shortest first");
        let mut out: [WindowView; N] = std::array::from_fn(|_| WindowView::default());
        let mut acc = Acc::default();
        let mut w = 0;
        for s in self.slots.iter().rev().filter(|s| s.start_ms() <= now_ms) {
            while w < N && s.end_ms() <= now_ms.saturating_sub(windows_ms[w]) {
                out[w] = acc.view();
                w += 1;
            }
            if w == N {
                break;
            }
            acc.add(s, self.dir_of(s.start_ms()));
        }
        for v in &mut out[w..] {
            *v = acc.view();
        }
        out
    }

    /// Merge the slots that start in `[from_ms, to_ms)`: a closed period for sampling.
    /// Exact for periods of whole fine slots within the last [`FINE_MS`], or of whole
    /// coarse slots beyond.
    pub fn range(&self, from_ms: u64, to_ms: u64) -> WindowView {
        self.merge(|s| s.start_ms() >= from_ms && s.start_ms() < to_ms)
    }

    fn merge(&self, take: impl Fn(&Slot) -> bool) -> WindowView {
        let mut acc = Acc::default();
        for s in self.slots.iter().filter(|s| take(s)) {
            acc.add(s, self.dir_of(s.start_ms()));
        }
        acc.into_view()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.slots.iter().map(Slot::heap_bytes).sum::<usize>()
            + self.dirs.as_deref().map_or(0, |d| {
                std::mem::size_of::<Vec<(u64, DirView)>>()
                    + d.capacity() * std::mem::size_of::<(u64, DirView)>()
                    + d.iter()
                        .map(|(_, v)| v.owd_forward.heap_bytes() + v.owd_reverse.heap_bytes())
                        .sum::<usize>()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rtts: &[u64], lost: u32) -> PathReport {
        let mut p = PathReport {
            dst: "x".into(),
            lost,
            ..Default::default()
        };
        for &v in rtts {
            p.rtt.record(v);
            p.received += 1;
        }
        p
    }

    #[test]
    fn windows_cover_what_they_say() {
        let mut w = PathWindows::default();
        let t0 = 1_000_000_000u64;
        // One report every 5 s for 6 minutes; RTT grows with time so windows differ.
        for i in 0..72u64 {
            let start = t0 + i * 5_000;
            assert!(w.add(
                start,
                &report(&[100 + i], u32::from(i % 2 == 0)),
                start + 5_000
            ));
        }
        let now = t0 + 72 * 5_000;
        let ten = w.view(10_000, now);
        assert_eq!(ten.received, 2, "10 s = the last two 5 s slots");
        assert_eq!(ten.hist.min(), Some(170));
        // The 1 min window is still made of 5 s slots: exactly 12 reports.
        assert_eq!(w.view(60_000, now).received, 12);
        // The 5 min window covers 5 to 6 minutes (1 min slots beyond the last 65 s).
        let five = w.view(300_000, now);
        assert!((60..=72).contains(&five.received), "{}", five.received);
        assert!((five.lost as f64 / five.received as f64 - 0.5).abs() < 0.02);
        assert!(five.hist.min().is_some_and(|m| (100..=112).contains(&m)));
        assert!(w.slots.len() <= 20, "{} slots kept", w.slots.len());
        assert!(
            w.slots
                .iter()
                .zip(w.slots.iter().skip(1))
                .all(|(a, b)| a.end_ms() <= b.start_ms()),
            "slots overlap"
        );
    }

    #[test]
    fn views_in_one_pass_equal_each_view() {
        // Reports with gaps, late replays, lost probes and a future one; every `now` from
        // before the first report to after the last, including slot edges.
        let mut w = PathWindows::default();
        let t0 = 1_000_000_000u64;
        let mut x = 12_345u64;
        for i in 0..90u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            if x >> 61 == 0 {
                continue; // a gap
            }
            let late = if x >> 60 == 15 { 40_000 } else { 0 };
            let start = (t0 + i * 5_000).saturating_sub(late);
            let rtts: Vec<u64> = (0..x % 7)
                .map(|j| 100 + (x >> 20) % 5_000 + j * 37)
                .collect();
            w.add(
                start,
                &report(&rtts, (x % 3) as u32),
                t0 + i * 5_000 + 5_000,
            );
        }
        w.add(t0 + 460_000, &report(&[9], 0), t0 + 450_000);
        for now in (t0 + 150_000..t0 + 520_000).step_by(2_500) {
            let got = w.views([10_000, 60_000, 300_000], now);
            let want = [10_000, 60_000, 300_000].map(|ms| w.view(ms, now));
            assert_eq!(got, want, "now = t0 + {}", now - t0);
            for (ms, v) in [10_000, 60_000, 300_000].iter().zip(&want) {
                assert_eq!(w.counts(*ms, now), (v.received, v.lost));
            }
        }
        assert!(w.views([10_000, 300_000], t0 + 449_999)[1].received > 0);
    }

    /// A jittery path as the loadgen and a real agent send it: 5 samples a second of 20 ms
    /// plus up to 500 µs, their IPDV. The 10 s and 1 min windows are exact; the 5 min
    /// window's RTT quantiles and minimum are within 0.4% of the samples it covers and its
    /// IPDV quantiles within 1.6% (1 min slots keep coarser buckets); and the path's slots
    /// take a fraction of the bytes.
    #[test]
    fn one_minute_slots_are_coarse_and_within_their_bounds() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(3);
        let mut w = PathWindows::default();
        let (mut rtts, mut ipdvs) = (Vec::new(), Vec::new());
        let t0 = 1_000_000_000u64;
        let mut last = None;
        let mut fine_bytes = 0;
        for s in 0..400u64 {
            let mut p = report(&[], 0);
            for _ in 0..5 {
                let v = 20_000 + rng.random_range(0..500u64);
                p.rtt.record(v);
                p.received += 1;
                rtts.push(v);
                if let Some(l) = last.replace(v) {
                    p.ipdv.record(v.abs_diff(l));
                    ipdvs.push(v.abs_diff(l));
                }
            }
            // Each report's interval starts a second later and lasts 5 s, as the loadgen's.
            w.add(t0 + s * 1_000, &p, t0 + s * 1_000 + 1_000);
            if s == 60 {
                fine_bytes = w.heap_bytes();
            }
        }
        let now = t0 + 400_000;
        let exact = |values: &[u64], n: u64| {
            let mut h = SparseHist::new();
            values[values.len() - n as usize..]
                .iter()
                .for_each(|&v| h.record(v));
            h
        };
        for ms in [10_000, 60_000] {
            let v = w.view(ms, now);
            assert_eq!(v.hist, exact(&rtts, v.received), "{ms} ms window");
        }
        let five = w.view(300_000, now);
        assert!(five.received >= 1_500, "{}", five.received);
        let (rtt, ipdv) = (
            exact(&rtts, five.received),
            exact(&ipdvs, five.ipdv.count()),
        );
        assert_eq!(five.hist.count(), rtt.count());
        let within = |got: Option<u64>, want: Option<u64>, share: f64, what: &str| {
            let (g, w) = (got.unwrap_or(0) as f64, want.unwrap_or(0) as f64);
            assert!(
                (g - w).abs() <= (w * share).max(1.0),
                "{what}: {g} vs {w} (±{share})"
            );
        };
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 1.0] {
            within(five.hist.quantile(q), rtt.quantile(q), 0.004, "rtt");
            within(five.ipdv.quantile(q), ipdv.quantile(q), 0.016, "ipdv");
        }
        within(five.hist.min(), rtt.min(), 0.004, "min");
        let bytes = w.heap_bytes();
        // 13 fine slots of about 25 samples each and 5 coarse ones of 300: 2,020 bytes
        // (2,282 with a one-bit flag for a count of 1, 3,063 when every bucket took an
        // index delta and a count, 4,039 when the 1 min slots kept every bucket).
        assert!(
            bytes <= 2_100 && bytes < fine_bytes * 2,
            "{bytes} bytes for 6 min, {fine_bytes} for the first minute"
        );
    }

    /// STAMP paths: the per-direction views, kept beside the slots, follow them: each
    /// window's per-direction counts and one-way delays are those of the reports it covers
    /// (1 min slots included), and they leave with the slots. A path without any has none.
    #[test]
    fn directional_views_follow_their_slots() {
        use pathpulse_wire::stamp::Directional;
        let mut w = PathWindows::default();
        let t0 = 2_000_000_020_000u64;
        // (interval start, forward lost, OWD forward µs) of every report.
        let mut sent = Vec::new();
        for s in 0..400u64 {
            let mut p = report(&[20_000], 0);
            if s % 3 != 0 {
                let fwd = 10_000 + s;
                p.directional = Some(Directional {
                    attributed: 2,
                    forward_lost: u32::from(s % 5 == 0),
                    reverse_lost: 0,
                    owd_forward: {
                        let mut h = SparseHist::new();
                        h.record(fwd);
                        h
                    },
                    owd_reverse: SparseHist::new(),
                });
                sent.push((t0 + s * 1_000, u64::from(s % 5 == 0), fwd));
            }
            assert!(w.add(t0 + s * 1_000, &p, t0 + s * 1_000 + 1_000));
        }
        let now = t0 + 400_000;
        let slot_of = |t: u64| t - t % SLOT_MS;
        for (_, ms) in WINDOWS {
            let v = w.view(ms, now);
            let d = v.dir.expect("a STAMP path's window has directions");
            // The reports whose slot the window takes (its slots overlap the window).
            let inside: Vec<_> = sent
                .iter()
                .filter(|&&(t, _, _)| {
                    // Reports whose slot expired have none.
                    w.slots
                        .iter()
                        .find(|x| x.start_ms() <= slot_of(t) && slot_of(t) < x.end_ms())
                        .is_some_and(|s| s.end_ms() > now - ms && s.start_ms() <= now)
                })
                .collect();
            assert_eq!(d.attributed, 2 * inside.len() as u64, "{ms} ms");
            assert_eq!(
                d.forward_lost,
                inside.iter().map(|x| x.1).sum::<u64>(),
                "{ms} ms"
            );
            assert_eq!(d.owd_forward.count(), inside.len() as u64, "{ms} ms");
            let min = inside.iter().map(|x| x.2).min().expect("reports");
            let got = d.owd_forward.min().expect("samples");
            assert!(got.abs_diff(min) * 200 <= min, "{ms} ms: {got} vs {min}");
        }
        let dirs = w.dirs.as_deref().expect("directions kept");
        assert!(
            dirs.capacity() <= dirs.len() + 1,
            "room for {} views, {} kept",
            dirs.capacity(),
            dirs.len()
        );
        assert_eq!(
            dirs.len(),
            w.slots.len(),
            "one view per slot, all have reports"
        );
        assert!(
            dirs.iter()
                .zip(&w.slots)
                .all(|((start, _), s)| *start == s.start_ms())
        );
        // Everything expires with the slots.
        w.expire(now + 2 * MAX_WINDOW_MS);
        assert!(w.is_empty() && w.dirs.is_none(), "{:?}", w.dirs);
        assert_eq!(
            w.heap_bytes(),
            w.slots.capacity() * std::mem::size_of::<Slot>()
        );

        let mut plain = PathWindows::default();
        plain.add(t0, &report(&[20_000], 0), t0 + 1_000);
        assert!(plain.dirs.is_none() && plain.view(60_000, t0 + 1_000).dir.is_none());
    }

    #[test]
    fn late_and_future_reports_stay_out_of_windows() {
        let mut w = PathWindows::default();
        let now = 10_000_000u64;
        assert!(
            !w.add(now - 400_000, &report(&[1], 0), now),
            "older than 5 min"
        );
        assert!(
            !w.add(now + 3_600_000, &report(&[1], 0), now),
            "agent clock an hour ahead"
        );
        assert!(
            w.add(now - 20_000, &report(&[1], 0), now),
            "20 s late replay still counts"
        );
        assert_eq!(w.view(60_000, now).received, 1);
        assert_eq!(w.view(10_000, now).received, 0);
        assert!(
            w.add(now - 200_000, &report(&[1], 0), now),
            "200 s old replay"
        );
        assert_eq!(w.view(300_000, now).received, 2);
        assert_eq!(
            w.view(60_000, now).received,
            1,
            "the 1 min window stays exact"
        );
        assert!(
            w.slots.iter().any(|s| s.coarse()),
            "old data folded into a 1 min slot"
        );
    }

    #[test]
    fn range_takes_the_slots_starting_inside_it() {
        let mut w = PathWindows::default();
        let now = 10_000_000u64;
        w.add(now - 25_000, &report(&[1], 0), now);
        w.add(now - 15_000, &report(&[2], 1), now);
        w.add(now - 10_000, &report(&[3], 0), now);
        w.add(now - 1_000, &report(&[4], 0), now);
        let r = w.range(now - 20_000, now - 5_000);
        assert_eq!((r.received, r.lost), (2, 1));
        assert_eq!((r.hist.min(), r.hist.max()), (Some(2), Some(3)));
    }

    #[test]
    fn out_of_order_reports_land_in_their_slot() {
        let mut w = PathWindows::default();
        let now = 10_000_000u64;
        w.add(now - 5_000, &report(&[5], 0), now);
        w.add(now - 15_000, &report(&[7], 0), now);
        w.add(now - 5_000, &report(&[6], 0), now);
        let starts: Vec<u64> = w.slots.iter().map(|s| s.start_ms()).collect();
        assert!(starts.windows(2).all(|p| p[0] < p[1]), "{starts:?}");
        assert_eq!(w.view(300_000, now).received, 3);
    }
}
