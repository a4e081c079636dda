//! A path's recent history as the alert engine keeps it, and the view the rules read.
//!
//! The history is one entry per report for the last [`FINE_MS`], older entries folded into
//! one per [`SLOT_MS`]. A window's statistics are the sum of the entries that ended inside
//! it. The engine asks for the same window (30 s with the built-in rules) on every report
//! of the path, so the history keeps that sum running ([`Tail`]): a new entry is added to
//! it, an entry leaving the window is taken out of it, and a window is read without
//! merging (and sorting) the buckets of every entry again.
//!
//! A path's entries lie in one byte buffer ([`Entries`]), not each in its own allocation:
//! about 25 entries a path at 100,000 paths.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use pathpulse_metrics::slot::{self, PackedHist, PackedRef, Pairs};
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

/// One report's entry, as the engine makes it before the history packs it into its
/// buffer ([`Entries`]). The RTT buckets are coarsened to about 2 significant digits
/// ([`pathpulse_wire::hist::coarse_index`]: quantiles within 0.4%), enough to judge a
/// threshold and a fraction of the memory.
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
        self.view().counts()
    }

    fn view(&self) -> EntryRef<'_> {
        EntryRef {
            end_ms: self.end_ms,
            packed: self.packed.view(),
            at: 0,
            next: 0,
        }
    }
}

/// An entry where it lies in a path's [`Entries`]: its end, its packed counts and
/// buckets, and where its bytes start and end in the buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct EntryRef<'a> {
    pub end_ms: u64,
    packed: PackedRef<'a, 4>,
    at: usize,
    next: usize,
}

impl<'a> EntryRef<'a> {
    pub fn counts(&self) -> Counts {
        let [received, lost, jitter_sum_us, jitter_n] = self.packed.counts();
        Counts {
            received,
            lost,
            jitter_sum_us,
            jitter_n,
        }
    }

    pub fn rtt(&self) -> Pairs<'a> {
        self.packed.pairs()
    }
}

/// A path's entries, sorted by end, in one byte buffer of exact size: each entry is its end
/// as a varint delta from the previous entry's end (the first's from `base_ms`), the
/// length of its packed bytes (a varint), then those bytes ([`PackedRef`]: its four counts
/// and RTT buckets). About 16 bytes an entry of a report of 5 probes (and the buffer's
/// rounding up to the allocator's size class, up to 64 bytes above 256), where an entry of
/// its own took 24 bytes in a `VecDeque` and an allocation of 16–32 more: 650–800 bytes a
/// path less at 100,000 paths of 5 probes a second (README, "Sixth round").
///
/// Entries are read in order by scanning (a path has about 25); they are added at the end
/// (a late report: spliced in), taken from the front and folded in place (one pass over
/// the entries folds all that are due, [`Entries::iter_at`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Entries {
    base_ms: u64,
    /// End of the last entry (`base_ms` when empty).
    last_ms: u64,
    len: u32,
    buf: Box<[u8]>,
}

/// Reads a path's [`Entries`] in order.
#[derive(Debug, Clone)]
pub(super) struct Iter<'a> {
    buf: &'a [u8],
    pos: usize,
    end_ms: u64,
}

impl<'a> Iter<'a> {
    fn read(&mut self) -> Option<EntryRef<'a>> {
        let at = self.pos;
        let delta = slot::get(self.buf, &mut self.pos)?;
        let len = usize::try_from(slot::get(self.buf, &mut self.pos)?).ok()?;
        let bytes = self.buf.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        self.end_ms = self.end_ms.saturating_add(delta);
        Some(EntryRef {
            end_ms: self.end_ms,
            packed: PackedRef::new(bytes),
            at,
            next: self.pos,
        })
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = EntryRef<'a>;
    fn next(&mut self) -> Option<EntryRef<'a>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        // Only `Entries` writes the buffer; were it ever short, the iteration ends there
        // (and stays ended) instead of reading past it or from the middle of an entry.
        let e = self.read();
        if e.is_none() {
            self.pos = self.buf.len();
        }
        e
    }
}

/// Append an entry: its end's delta, its bytes' length, its bytes.
fn put_entry(out: &mut Vec<u8>, delta_ms: u64, packed: &[u8]) {
    slot::put(out, delta_ms);
    slot::put(out, packed.len() as u64);
    out.extend_from_slice(packed);
}

thread_local! {
    /// Where entries are written before they are spliced into a buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Entries {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            buf: &self.buf,
            pos: 0,
            end_ms: self.base_ms,
        }
    }

    /// The entries from index `i` on.
    pub fn from(&self, i: usize) -> std::iter::Skip<Iter<'_>> {
        self.iter().skip(i)
    }

    /// How many entries end at or before `end_ms`.
    pub fn ending_by(&self, end_ms: u64) -> usize {
        if self.last_ms <= end_ms {
            return self.len();
        }
        self.iter().take_while(|e| e.end_ms <= end_ms).count()
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Replace the bytes `range` of the buffer by `with`, the buffer kept at its exact size.
    fn splice(&mut self, range: std::ops::Range<usize>, with: &[u8]) {
        let mut v = std::mem::take(&mut self.buf).into_vec();
        let grow = with.len().saturating_sub(range.len());
        v.reserve_exact(grow);
        v.splice(range, with.iter().copied());
        // In place within the allocator's size class when it shrank.
        self.buf = v.into_boxed_slice();
    }

    /// Insert `e` among the entries, after those ending at or before it; returns its index.
    pub fn insert(&mut self, e: &Entry) -> usize {
        if self.len > 0
            && self.last_ms > e.end_ms
            && let Some(pos) = self.insert_late(e)
        {
            return pos;
        }
        let delta = if self.len == 0 {
            self.base_ms = e.end_ms;
            self.last_ms = e.end_ms;
            0
        } else {
            e.end_ms.saturating_sub(self.last_ms)
        };
        let end = self.buf.len();
        SCRATCH.with_borrow_mut(|out| {
            out.clear();
            put_entry(out, delta, e.packed.view().bytes());
            self.splice(end..end, out);
        });
        self.last_ms = self.last_ms.max(e.end_ms);
        self.len += 1;
        self.len() - 1
    }

    /// A late report: written before the first entry ending after it, whose delta is then
    /// from this one's end. `None` when no entry ends after it.
    fn insert_late(&mut self, e: &Entry) -> Option<usize> {
        SCRATCH.with_borrow_mut(|out| {
            let (mut prev_ms, mut pos) = (self.base_ms, 0);
            let next = self.iter().find(|x| {
                let after = x.end_ms > e.end_ms;
                if !after {
                    (prev_ms, pos) = (x.end_ms, pos + 1);
                }
                after
            })?;
            if pos == 0 {
                // The new first entry: the deltas start from its end.
                prev_ms = e.end_ms;
            }
            out.clear();
            put_entry(out, e.end_ms - prev_ms, e.packed.view().bytes());
            put_entry(out, next.end_ms - e.end_ms, next.packed.bytes());
            let range = next.at..next.next;
            if pos == 0 {
                self.base_ms = e.end_ms;
            }
            self.splice(range, out);
            self.len += 1;
            Some(pos)
        })
    }

    /// Remove the first `n` entries.
    pub fn pop_front(&mut self, n: usize) {
        let Some((next, end_ms)) = self.iter().take(n).last().map(|x| (x.next, x.end_ms)) else {
            return;
        };
        self.splice(0..next, &[]);
        self.base_ms = end_ms;
        self.len -= n.min(self.len()) as u32;
        if self.len == 0 {
            self.last_ms = self.base_ms;
        }
    }

    /// Where entry `i` starts in the buffer and where the entry before it ends (`base_ms`
    /// for the first): what [`Entries::iter_at`] starts from.
    pub fn cursor(&self, i: usize) -> (usize, u64) {
        match i.checked_sub(1).and_then(|j| self.iter().nth(j)) {
            Some(x) => (x.next, x.end_ms),
            None => (0, self.base_ms),
        }
    }

    /// The entries from a [`Entries::cursor`] on.
    pub fn iter_at(&self, (at, before_ms): (usize, u64)) -> Iter<'_> {
        Iter {
            buf: &self.buf,
            pos: at,
            end_ms: before_ms,
        }
    }

    /// Fold the entry after the one at `cursor` into it (it then ends where the later one
    /// did).
    pub fn fold_at(&mut self, cursor: (usize, u64)) {
        SCRATCH.with_borrow_mut(|out| {
            let mut it = self.iter_at(cursor);
            let (Some(a), Some(b)) = (it.next(), it.next()) else {
                return;
            };
            // The merged bytes, then their header written after them and rotated in front.
            out.clear();
            a.packed.merge_into(b.packed, out);
            let len = out.len();
            slot::put(out, b.end_ms - cursor.1);
            slot::put(out, len as u64);
            let head = out.len() - len;
            out.rotate_right(head);
            let range = a.at..b.next;
            self.splice(range, out);
            self.len -= 1;
        });
    }
}

/// The histograms of `entries` merged into one.
fn merged<'a>(entries: impl Iterator<Item = EntryRef<'a>>) -> SparseHist {
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
    fn add(&mut self, e: &EntryRef<'_>) {
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
    fn sub(&mut self, e: &EntryRef<'_>) {
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
    entries: Entries,
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
    /// Confirmation bursts of the last [`CONFIRM_KEEP_MS`]: (arrival ms, received, lost).
    confirms: VecDeque<(u64, u32, u32)>,
}

/// How long confirmation bursts are kept (longer than any window that reads them).
const CONFIRM_KEEP_MS: u64 = 10_000;
/// Confirmation bursts kept per path at most (an agent bursts at most a few a second).
const CONFIRM_KEEP: usize = 64;

impl PathHistory {
    pub fn new(first_seen_ms: u64, last_data_ms: u64) -> PathHistory {
        PathHistory {
            first_seen_ms,
            last_data_ms,
            ..PathHistory::default()
        }
    }

    /// A confirmation burst of this path arrived at `now_ms`.
    pub fn add_confirm(&mut self, received: u32, lost: u32, now_ms: u64) {
        while self
            .confirms
            .front()
            .is_some_and(|c| c.0 + CONFIRM_KEEP_MS < now_ms || self.confirms.len() >= CONFIRM_KEEP)
        {
            self.confirms.pop_front();
        }
        self.confirms.push_back((now_ms, received, lost));
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
        let pos = self.entries.insert(&e);
        if !tail.active {
        } else if pos >= tail.first {
            tail.add(&e.view());
        } else {
            tail.first += 1;
        }
        self.last_data_ms = now_ms;
        let gone = self
            .entries
            .iter()
            .take_while(|x| x.end_ms + keep_ms < now_ms);
        let mut n = 0;
        for x in gone {
            n += 1;
            if !tail.active {
            } else if tail.first > 0 {
                tail.first -= 1;
            } else {
                tail.sub(&x);
            }
        }
        self.entries.pop_front(n);
        self.fold(now_ms);
    }

    /// Entries older than [`FINE_MS`] are folded into one per [`SLOT_MS`] of their end:
    /// about 25 entries per path instead of one per report (windows beyond 10 s are then
    /// exact to 5 s).
    fn fold(&mut self, now_ms: u64) {
        let tail = self.tail.get_mut();
        // Entry `i - 1` starts at `cursor`: one pass over the entries, folds included.
        let (mut i, mut cursor) = (1, self.entries.cursor(0));
        loop {
            let mut it = self.entries.iter_at(cursor);
            let (Some(a), Some(b)) = (it.next(), it.next()) else {
                break;
            };
            if b.end_ms + FINE_MS >= now_ms {
                break;
            }
            if a.end_ms / SLOT_MS != b.end_ms / SLOT_MS {
                i += 1;
                cursor = (a.next, a.end_ms);
                continue;
            }
            // The folded entry ends where the later one did: it is in the sum when that
            // one was.
            if !tail.active {
            } else if i < tail.first {
                tail.first -= 1;
            } else if i == tail.first {
                tail.add(&a);
                tail.first = i - 1;
            }
            self.entries.fold_at(cursor);
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
            let target = self.entries.ending_by(from_ms);
            if t.first < target {
                for e in self.entries.from(t.first).take(target - t.first) {
                    t.sub(&e);
                }
            } else {
                for e in self.entries.from(target).take(t.first - target) {
                    t.add(&e);
                }
            }
            t.first = target;
            if t.overflow {
                // Sum the buckets again (the entries that overflowed may have left).
                t.overflow = false;
                t.rtt.clear();
                for e in self.entries.from(t.first) {
                    t.add_rtt(e.rtt());
                }
            }
        }
        self.tail.borrow()
    }

    /// The merged RTT histogram of the window `seek` moved to.
    fn tail_rtt(&self, t: &Tail) -> SparseHist {
        if t.overflow {
            merged(self.entries.from(t.first))
        } else {
            SparseHist::from_pairs(t.rtt.clone())
        }
    }

    /// A window's statistics computed from its entries, without the running sum (what
    /// [`PathHistory::seek`] must agree with).
    #[cfg(test)]
    fn window_merged(&self, from_ms: u64) -> (u64, u64, u64, u64, SparseHist) {
        let inside = || self.entries.iter().skip_while(|e| e.end_ms <= from_ms);
        let (mut r, mut l, mut js, mut jn) = (0, 0, 0, 0);
        for e in inside().map(|e| e.counts()) {
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
            .skip_while(|e| e.end_ms <= from)
            .map(|e| e.counts())
            .fold((0, 0), |(r, l), e| {
                (r + u64::from(e.received), l + u64::from(e.lost))
            })
    }

    fn confirm_counts(&self, window: Duration) -> (u64, u64) {
        let from = self.now_ms.saturating_sub(window.as_millis() as u64);
        self.h
            .confirms
            .iter()
            .filter(|c| c.0 > from && c.0 <= self.now_ms)
            .fold((0, 0), |(r, l), c| (r + u64::from(c.1), l + u64::from(c.2)))
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

    fn confirm_counts(&self, window: Duration) -> (u64, u64) {
        self.members
            .iter()
            .map(|m| m.confirm_counts(window))
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

    /// An entry read back: its end, counts and buckets.
    type Plain = (u64, Counts, Vec<(u32, u32)>);

    /// What a path's buffer holds, read back.
    fn contents(e: &Entries) -> Vec<Plain> {
        e.iter()
            .map(|x| (x.end_ms, x.counts(), x.rtt().collect()))
            .collect()
    }

    /// The buffer holds what a plain list of entries would: entries inserted in order and
    /// late (before the first, between two, at equal ends), taken from the front and
    /// folded, ends far apart (multi-byte deltas) and equal.
    #[test]
    fn entries_buffer_equals_a_list_of_entries() {
        let mut rng = StdRng::seed_from_u64(21);
        for round in 0..200 {
            let mut e = Entries::default();
            let mut model: Vec<Plain> = Vec::new();
            let mut now = rng.random_range(0..1u64 << 40);
            for step in 0..rng.random_range(0..120) {
                match rng.random_range(0..10) {
                    0..6 => {
                        now += [0, 1, 300, 1_000, 70_000][rng.random_range(0..5)];
                        let end = match rng.random_range(0..4) {
                            0 => now.saturating_sub(rng.random_range(0..20_000)),
                            _ => now,
                        };
                        let x = entry(&mut rng, end);
                        let at = e.insert(&x);
                        let want = model.partition_point(|m| m.0 <= end);
                        assert_eq!(at, want, "round {round} step {step}");
                        model.insert(at, (end, x.counts(), x.view().rtt().collect()));
                    }
                    6..8 => {
                        let n = rng.random_range(0..3).min(model.len());
                        e.pop_front(n);
                        model.drain(..n);
                    }
                    _ if model.len() >= 2 => {
                        let i = rng.random_range(1..model.len());
                        e.fold_at(e.cursor(i - 1));
                        let (b, a) = (model.remove(i), &mut model[i - 1]);
                        let (ca, cb) = (a.1, b.1);
                        a.0 = b.0;
                        a.1 = Counts {
                            received: ca.received.saturating_add(cb.received),
                            lost: ca.lost.saturating_add(cb.lost),
                            jitter_sum_us: ca.jitter_sum_us.saturating_add(cb.jitter_sum_us),
                            jitter_n: ca.jitter_n.saturating_add(cb.jitter_n),
                        };
                        let mut h = SparseHist::from_pairs(a.2.clone());
                        h.merge(&SparseHist::from_pairs(b.2));
                        a.2 = h.buckets().to_vec();
                    }
                    _ => {}
                }
                assert_eq!(contents(&e), model, "round {round} step {step}");
                assert_eq!(e.len(), model.len());
                let ends = model
                    .iter()
                    .flat_map(|m| [m.0.saturating_sub(1), m.0, m.0 + 1]);
                for probe in ends.chain([0, now.saturating_sub(5_000), now]) {
                    let want = model.partition_point(|m| m.0 <= probe);
                    assert_eq!(e.ending_by(probe), want, "round {round} step {step}");
                }
            }
        }
    }

    /// Counts are packed with the coarse histogram; a path's entries in one buffer take
    /// about 16 bytes each for a report of 5 probes (an entry of its own took 24 bytes
    /// and an allocation of 16–32 more).
    #[test]
    fn entries_are_small_and_coarse() {
        // Counts round-trip, add up saturating when folded, and an entry of nothing
        // takes no packed byte.
        let one = hist::SparseHist::new();
        let mut b = Entries::default();
        b.insert(&Entry::new(5, (7, u32::MAX - 1), &one, Some(300)));
        b.insert(&Entry::new(9, (1, 3), &one, None));
        b.fold_at(b.cursor(0));
        let want = Counts {
            received: 8,
            lost: u32::MAX,
            jitter_sum_us: 300,
            jitter_n: 1,
        };
        assert_eq!(contents(&b), vec![(9, want, vec![])]);
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
        let (fine, coarse) = (rtt.buckets().len(), e.view().rtt().count());
        assert!(coarse * 8 <= fine + 8, "{fine} buckets -> {coarse}");
        let q = |h: &SparseHist| h.quantile(0.95).expect("samples") as f64;
        let (a, b) = (
            q(&rtt),
            q(&SparseHist::from_pairs(e.view().rtt().collect())),
        );
        assert!((a - b).abs() / a < 0.005, "p95 {a} -> {b}");
        // A jittery path's reports (20 ms ± 500 µs, 5 probes, 1 s apart), kept as the
        // history keeps them: 10 s one by one, then folded by 5 s.
        let mut rng = StdRng::seed_from_u64(5);
        let mut h = PathHistory::new(0, 0);
        let mut now = 10_000_000u64;
        for _ in 0..120 {
            now += 1_000;
            let mut rtt = SparseHist::new();
            for _ in 0..5 {
                rtt.record(20_000 + rng.random_range(0..500));
            }
            let jitter = Some(rng.random_range(0..300));
            h.add(Entry::new(now, (5, 0), &rtt, jitter), 5, 70_000, now);
        }
        let (n, bytes) = (h.entries.len(), h.entries.heap_bytes());
        assert!((20..=30).contains(&n), "{n} entries");
        assert!(bytes <= 17 * n, "{n} entries in {bytes} bytes");
        assert_eq!(std::mem::size_of::<Entries>(), 40);
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
