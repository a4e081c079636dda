//! One slot of a path's windows, packed for memory: a standalone agent keeps 18 slots for
//! each of 10,000 paths, an aggregator for each of 100,000, and most slots hold a handful of
//! samples. The RTT and IPDV histograms of a slot live in one boxed byte string of varints
//! (about 20 bytes for 5 samples, where two `Vec`s of buckets took 48 bytes inline plus two
//! heap blocks of 64 or more). Slots are written a few times (one merge per report) and read
//! once per scrape, so packing and unpacking on each access is cheap next to the memory.
//!
//! Layout of `hists`: the probes received and lost (two varints), the RTT buckets as
//! varints (index delta and count, one byte for most buckets: see `put_pairs`), then the
//! two bytes `END` and the IPDV buckets the same way (both left out when there is no IPDV).
//! Empty (nothing received, nothing lost, no bucket): no allocation.

use std::cell::RefCell;

use pathpulse_wire::SparseHist;
use pathpulse_wire::hist::{self, MergeSorted};

/// 24 bytes (checked in a test): the start in seconds and the coarse flag in the length's
/// top bit save 8 of the 48 a `u64` start and a `bool` took, 1.5 MB at 10,000 paths; the
/// counts packed with the histograms (2 bytes there for a slot's handful of probes) 8 more,
/// 14 MB at 100,000 paths; STAMP's per-direction views kept beside the slots of the paths
/// that have them ([`crate::window::PathWindows`]) instead of a pointer in every slot 8 more.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Slot {
    /// Start, in whole seconds since the epoch (slot starts are multiples of 5 s).
    start_s: u32,
    /// Length in ms of the data in the slot from its start: [`crate::window::SLOT_MS`]
    /// for a fine slot; for a 1 min slot, up to the end of the last fine slot folded into
    /// it (so it never reaches into a window its data is not in). Top bit: [`COARSE`].
    span: u32,
    /// Counts and histograms (see the module's doc; counts saturate: one path's probes in
    /// at most a minute).
    hists: Box<[u8]>,
}

/// Bit of `Slot::span` set on 1 min slots.
const COARSE: u32 = 1 << 31;

/// 1 min slots (data older than [`crate::window::FINE_MS`], only in the 5 min window) keep
/// RTT buckets at about 2 significant digits: neighbours grouped by up to 8
/// ([`hist::coarse_index`]), so the 5 min window's RTT quantiles and minimum move by at most
/// 0.4%. Three digits put every sample of a jittery minute in its own bucket (300 samples
/// of 20 ms ± 250 µs: about 30 buckets, 4 at this resolution).
pub const COARSE_RTT_BITS: u32 = 3;
/// And IPDV buckets grouped by up to 32 ([`hist::coarse_index_by`]): the 5 min IPDV
/// quantiles within 1.6%, values below 64 µs kept to the µs. IPDV sits at small values,
/// where 3 digits are 1 µs buckets: 240 differences of a path jittering by 500 µs fill
/// about 180 of them (450 bytes a slot, more than all its other data); the 5 min quantile of
/// a few hundred such differences moves more than 1.6% from one window to the next anyway.
pub const COARSE_IPDV_BITS: u32 = 5;

fn coarse_rtt(b: impl Iterator<Item = (u32, u32)>) -> impl Iterator<Item = (u32, u32)> {
    b.map(|(i, n)| (hist::coarse_index_by(i, COARSE_RTT_BITS), n))
}

fn coarse_ipdv(b: impl Iterator<Item = (u32, u32)>) -> impl Iterator<Item = (u32, u32)> {
    b.map(|(i, n)| (hist::coarse_index_by(i, COARSE_IPDV_BITS), n))
}

impl Slot {
    /// Whether a slot can start at `start_ms`: a whole second before 2106.
    pub fn can_start(start_ms: u64) -> bool {
        start_ms.is_multiple_of(1000) && u32::try_from(start_ms / 1000).is_ok()
    }

    /// A fine slot; `start_ms` must pass [`Slot::can_start`] (else it starts at 0).
    pub fn new(start_ms: u64, len_ms: u32) -> Self {
        debug_assert!(Self::can_start(start_ms), "slot start {start_ms} ms");
        Slot {
            start_s: u32::try_from(start_ms / 1000).unwrap_or(0),
            span: len_ms & !COARSE,
            ..Slot::default()
        }
    }

    pub fn start_ms(&self) -> u64 {
        u64::from(self.start_s) * 1000
    }

    pub fn len_ms(&self) -> u32 {
        self.span & !COARSE
    }

    pub fn coarse(&self) -> bool {
        self.span & COARSE != 0
    }

    pub fn end_ms(&self) -> u64 {
        self.start_ms() + u64::from(self.len_ms())
    }

    /// Make this a 1 min slot from `start_ms` (earlier than or at its start, and passing
    /// [`Slot::can_start`]) to `end_ms`.
    pub fn make_coarse(&mut self, start_ms: u64, end_ms: u64) {
        debug_assert!(Self::can_start(start_ms) && start_ms <= self.start_ms());
        self.start_s = u32::try_from(start_ms / 1000).unwrap_or(self.start_s);
        self.span = COARSE;
        self.extend_to(end_ms);
        if !self.hists.is_empty() {
            SCRATCH.with_borrow_mut(|out| {
                let (rtt, ipdv) = self.pairs();
                pack(out, self.counts(), coarse_rtt(rtt), coarse_ipdv(ipdv));
                self.store(out);
            });
        }
    }

    /// Let the slot's data reach `end_ms` (keeps its start and kind).
    pub fn extend_to(&mut self, end_ms: u64) {
        let len = u32::try_from(end_ms.saturating_sub(self.start_ms())).unwrap_or(u32::MAX);
        self.span = (self.span & COARSE) | (len & !COARSE);
    }

    /// Add an interval's counts and histograms.
    pub fn add(&mut self, rtt: &SparseHist, ipdv: &SparseHist, received: u32, lost: u32) {
        if received == 0 && lost == 0 && rtt.is_empty() && ipdv.is_empty() {
            return;
        }
        self.merge_in(
            (received, lost),
            rtt.buckets().iter().copied(),
            ipdv.buckets().iter().copied(),
        );
    }

    /// Fold another slot's counts and histograms into this one (a 1 min slot's buckets
    /// made coarse).
    pub fn absorb(&mut self, other: &Slot) {
        if !other.hists.is_empty() {
            let (rtt, ipdv) = other.pairs();
            self.merge_in(other.counts(), rtt, ipdv);
        }
    }

    /// Add counts and merge sorted RTT and IPDV buckets into the slot's (made coarse in a
    /// 1 min slot).
    fn merge_in(
        &mut self,
        (received, lost): (u32, u32),
        rtt: impl Iterator<Item = (u32, u32)>,
        ipdv: impl Iterator<Item = (u32, u32)>,
    ) {
        let coarse = self.coarse();
        let (r, l) = self.counts();
        let counts = (r.saturating_add(received), l.saturating_add(lost));
        SCRATCH.with_borrow_mut(|out| {
            let (mine_rtt, mine_ipdv) = self.pairs();
            if coarse {
                pack(
                    out,
                    counts,
                    MergeSorted::new(mine_rtt, coarse_rtt(rtt)),
                    MergeSorted::new(mine_ipdv, coarse_ipdv(ipdv)),
                );
            } else {
                pack(
                    out,
                    counts,
                    MergeSorted::new(mine_rtt, rtt),
                    MergeSorted::new(mine_ipdv, ipdv),
                );
            }
            self.store(out);
        });
    }

    /// Keep `packed` as the slot's histograms (see [`keep`]).
    fn store(&mut self, packed: &[u8]) {
        keep(&mut self.hists, packed);
    }

    /// Probes received and lost in the slot.
    pub fn counts(&self) -> (u32, u32) {
        let mut c = Pairs::new(&self.hists);
        (c.get().unwrap_or(0), c.get().unwrap_or(0))
    }

    /// The RTT and IPDV buckets, in index order.
    pub fn pairs(&self) -> (Pairs<'_>, Pairs<'_>) {
        let mut rtt = Pairs::new(&self.hists);
        rtt.get();
        rtt.get();
        // Skip to the IPDV section: past the RTT pairs and their terminator.
        let mut rest = rtt.clone();
        while rest.next().is_some() {}
        rtt.end = rest.pos;
        let ipdv = Pairs {
            bytes: &self.hists,
            pos: rest.pos,
            end: self.hists.len(),
            idx: 0,
        };
        (rtt, ipdv)
    }

    pub fn heap_bytes(&self) -> usize {
        self.hists.len()
    }
}

/// One histogram packed like a slot's: its buckets as varints (one byte for most buckets
/// of 1–3 samples, a few more for a far neighbour or a large count) in one exact-size
/// allocation (none when empty). For long-lived copies that are merged and read whole,
/// where a `SparseHist` takes 8 bytes a bucket and its `Vec`'s slack.
///
/// `N` counts can ride in front of the buckets, as varints in the same allocation (the
/// alert history's entries keep their probe counts there: 16 bytes a value as four `u32`
/// fields and a separate box, 4–6 bytes here; merged by adding, saturating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedHist<const N: usize = 0>(Box<[u8]>);

impl<const N: usize> Default for PackedHist<N> {
    fn default() -> Self {
        PackedHist(Box::default())
    }
}

impl PackedHist {
    /// From buckets in index order; equal neighbours are added up, zero counts dropped.
    pub fn from_sorted(buckets: impl Iterator<Item = (u32, u32)>) -> PackedHist {
        Self::new([], buckets)
    }

    pub fn from_hist(h: &SparseHist) -> PackedHist {
        Self::from_sorted(h.buckets().iter().copied())
    }
}

impl<const N: usize> PackedHist<N> {
    /// `counts` and buckets in index order (equal neighbours added up, zero counts
    /// dropped). No allocation when the counts are 0 and there is no bucket.
    pub fn new(counts: [u32; N], buckets: impl Iterator<Item = (u32, u32)>) -> Self {
        SCRATCH.with_borrow_mut(|out| {
            out.clear();
            pack_into(out, counts, buckets);
            PackedHist(Box::from(out.as_slice()))
        })
    }

    /// The packed bytes, read where they lie.
    pub fn view(&self) -> PackedRef<'_, N> {
        PackedRef(&self.0)
    }

    /// The counts (all 0 when empty).
    pub fn counts(&self) -> [u32; N] {
        self.view().counts()
    }

    /// The buckets, in index order.
    pub fn pairs(&self) -> Pairs<'_> {
        self.view().pairs()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Add `other`'s counts and buckets (saturating, as [`SparseHist::merge`]).
    pub fn merge(&mut self, other: &Self) {
        if other.is_empty() {
            return;
        }
        SCRATCH.with_borrow_mut(|out| {
            out.clear();
            self.view().merge_into(other.view(), out);
            keep(&mut self.0, out);
        });
    }

    pub fn to_hist(&self) -> SparseHist {
        SparseHist::from_pairs(self.pairs().collect())
    }

    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

/// The bytes of a [`PackedHist`] where they lie: in its own allocation, or among others in
/// one buffer (the alert history keeps all entries of a path in one, each allocation of a
/// few dozen bytes costing its own rounding and bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedRef<'a, const N: usize = 0>(&'a [u8]);

impl<'a, const N: usize> PackedRef<'a, N> {
    /// Bytes written by [`pack_into`] or [`PackedRef::merge_into`] (others read as
    /// whatever buckets they happen to decode to, never out of `bytes`).
    pub fn new(bytes: &'a [u8]) -> Self {
        PackedRef(bytes)
    }

    pub fn bytes(self) -> &'a [u8] {
        self.0
    }

    /// The counts (all 0 when empty).
    pub fn counts(self) -> [u32; N] {
        let mut r = Pairs::new(self.0);
        std::array::from_fn(|_| r.get().unwrap_or(0))
    }

    /// The buckets, in index order.
    pub fn pairs(self) -> Pairs<'a> {
        let mut r = Pairs::new(self.0);
        for _ in 0..N {
            r.get();
        }
        r
    }

    /// Append the packing of `self` and `other` added up (counts saturating, as
    /// [`SparseHist::merge`]) to `out`.
    pub fn merge_into(self, other: PackedRef<'_, N>, out: &mut Vec<u8>) {
        let (a, b) = (self.counts(), other.counts());
        let counts: [u32; N] = std::array::from_fn(|i| a[i].saturating_add(b[i]));
        pack_into(out, counts, MergeSorted::new(self.pairs(), other.pairs()));
    }
}

/// Append `counts` and buckets in index order (equal neighbours added up, zero counts
/// dropped) to `out` as a [`PackedRef`] reads them; nothing when the counts are 0 and
/// there is no bucket.
pub fn pack_into<const N: usize>(
    out: &mut Vec<u8>,
    counts: [u32; N],
    buckets: impl Iterator<Item = (u32, u32)>,
) {
    let start = out.len();
    for c in counts {
        put(out, u64::from(c));
    }
    put_pairs(out, buckets);
    if out.len() == start + N && out[start..].iter().all(|&b| b == 0) {
        out.truncate(start);
    }
}

/// Keep `packed` in `dst`, resized to its exact length: a reallocation, which jemalloc does
/// in place while the size stays in its size class (16 bytes apart up to 128), so most
/// reports rewrite a slot's bytes where they are instead of allocating new ones and freeing
/// the old (churn that leaves free chunks between long-lived ones). No spare capacity is
/// kept: 100,000 paths' slots would each carry it.
fn keep(dst: &mut Box<[u8]>, packed: &[u8]) {
    if packed.len() == dst.len() {
        dst.copy_from_slice(packed);
        return;
    }
    let mut v = std::mem::take(dst).into_vec();
    v.clear();
    v.reserve_exact(packed.len());
    v.extend_from_slice(packed);
    *dst = v.into_boxed_slice();
}

/// Append a sorted bucket sequence as varints (equal neighbours added up, zero counts
/// dropped): per bucket `index delta << 2 | min(count, 4) - 1`, then the count if it is 4
/// or more. Most buckets hold one to three samples (a jittery path's few dozen samples a
/// 5 s slot spread over as many buckets; its 1 min slots' 300 IPDV values over about a
/// hundred): one byte for those, where a `(delta, count)` pair took two. Measured on
/// 200 paths of 1–40 ms + up to 500 µs at 5 samples a second: a path's 18 slots took 2,318
/// bytes of pairs, 1,632 with a one-bit flag for a count of 1, 1,375 so.
fn put_pairs(out: &mut Vec<u8>, buckets: impl Iterator<Item = (u32, u32)>) {
    let (mut prev, mut run): (u32, Option<(u32, u32)>) = (0, None);
    let mut flush = |out: &mut Vec<u8>, (idx, n): (u32, u32)| {
        put(out, u64::from(idx - prev) << 2 | u64::from(n.min(4) - 1));
        if n >= 4 {
            put(out, u64::from(n));
        }
        prev = idx;
    };
    for (idx, n) in buckets.filter(|b| b.1 > 0) {
        run = match run {
            Some((i, m)) if i == idx => Some((i, m.saturating_add(n))),
            Some(r) => {
                flush(out, r);
                Some((idx, n))
            }
            None => Some((idx, n)),
        };
    }
    if let Some(r) = run {
        flush(out, r);
    }
}

thread_local! {
    /// Where slots are packed before their bytes are copied out.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Pack counts and two sorted bucket sequences into the slot layout, into `out`.
fn pack(
    out: &mut Vec<u8>,
    (received, lost): (u32, u32),
    rtt: impl Iterator<Item = (u32, u32)>,
    ipdv: impl Iterator<Item = (u32, u32)>,
) {
    out.clear();
    put(out, u64::from(received));
    put(out, u64::from(lost));
    put_pairs(out, rtt);
    let rtt_end = out.len();
    out.extend_from_slice(&END);
    put_pairs(out, ipdv);
    if out.len() == rtt_end + 2 {
        // No IPDV: the terminator is not needed either.
        out.truncate(rtt_end);
    }
    if out == &[0, 0] {
        // Nothing at all: no allocation.
        out.clear();
    }
}

/// Ends the RTT buckets of a slot: a bucket token with a count following (delta 0) and
/// the count 0, which no bucket has.
const END: [u8; 2] = [3, 0];

/// LEB128 varint.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads (index, count) buckets (see `put_pairs`) until `END` or `end`.
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    idx: u32,
}

impl<'a> Pairs<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Pairs {
            bytes,
            pos: 0,
            end: bytes.len(),
            idx: 0,
        }
    }

    /// A count (saturating at `u32::MAX`; counts are written from `u32`s).
    fn get(&mut self) -> Option<u32> {
        self.get64().map(|v| u32::try_from(v).unwrap_or(u32::MAX))
    }

    fn get64(&mut self) -> Option<u64> {
        get(&self.bytes[..self.end.min(self.bytes.len())], &mut self.pos)
    }
}

/// Read a LEB128 varint at `*pos` and move past it; `None` (and `*pos` somewhere after) at
/// the end of `bytes` or on a varint longer than 10 bytes.
pub fn get(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl Iterator for Pairs<'_> {
    type Item = (u32, u32);
    fn next(&mut self) -> Option<(u32, u32)> {
        let token = self.get64()?;
        let n = match token & 3 {
            3 => self.get()?,
            c => c as u32 + 1,
        };
        if n == 0 {
            return None;
        }
        let delta = u32::try_from(token >> 2).unwrap_or(u32::MAX);
        self.idx = self.idx.saturating_add(delta);
        Some((self.idx, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> SparseHist {
        let mut h = SparseHist::new();
        for &v in values {
            h.record(v);
        }
        h
    }

    fn unpack(s: &Slot) -> (SparseHist, SparseHist) {
        let (r, i) = s.pairs();
        (
            SparseHist::from_pairs(r.collect()),
            SparseHist::from_pairs(i.collect()),
        )
    }

    /// A packed histogram holds the same buckets as the `SparseHist` it came from, merges
    /// like `SparseHist::merge` and takes at most 4 bytes a bucket here.
    #[test]
    fn packed_hist_round_trips_and_merges() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let draw = |rng: &mut StdRng| {
                let base = rng.random_range(1..2_000_000u64);
                let v: Vec<u64> = (0..rng.random_range(0..40))
                    .map(|_| base + rng.random_range(0..base / 10 + 1))
                    .collect();
                hist(&v)
            };
            let (a, b) = (draw(&mut rng), draw(&mut rng));
            let mut p = PackedHist::from_hist(&a);
            assert_eq!(p.to_hist(), a);
            assert!(
                p.heap_bytes() <= a.buckets().len() * 4,
                "{} B",
                p.heap_bytes()
            );
            p.merge(&PackedHist::from_hist(&b));
            let mut want = a.clone();
            want.merge(&b);
            assert_eq!(p.to_hist(), want);
        }
        // Equal neighbours are added up, zero counts dropped.
        let p =
            PackedHist::from_sorted([(5, 1), (5, 2), (6, 0), (9, u32::MAX), (9, 1)].into_iter());
        assert_eq!(p.pairs().collect::<Vec<_>>(), vec![(5, 3), (9, u32::MAX)]);
        assert!(PackedHist::from_sorted(std::iter::empty()).is_empty());
    }

    #[test]
    fn packed_histograms_equal_the_merged_ones() {
        let rtts = [
            hist(&[31, 33, 35, 1_000_000, 35]),
            hist(&[]),
            hist(&[2, 60_000_000, 33]),
        ];
        let ipdvs = [hist(&[2, 0, 999_999]), hist(&[4]), hist(&[])];
        let mut s = Slot::new(5_000, 5_000);
        for (r, i) in rtts.iter().zip(&ipdvs) {
            s.add(r, i, 3, 1);
        }
        let (r, i) = unpack(&s);
        assert_eq!(r, SparseHist::merged(&rtts));
        assert_eq!(i, SparseHist::merged(&ipdvs));
        assert_eq!(s.counts(), (9, 3));

        // Absorbing a slot adds everything; an IPDV-only slot and an empty one too.
        let mut other = Slot::new(0, 5_000);
        other.add(&hist(&[]), &hist(&[7, 7]), 0, 2);
        s.absorb(&other);
        s.absorb(&Slot::new(0, 5_000));
        let (r2, i2) = unpack(&s);
        assert_eq!(r2, r);
        assert_eq!(i2.count(), i.count() + 2);
        assert_eq!(s.counts(), (9, 5));
        // Counts alone (every probe lost) are kept; an empty slot allocates nothing.
        let mut lost = Slot::new(0, 5_000);
        assert_eq!((lost.counts(), lost.heap_bytes()), ((0, 0), 0));
        lost.add(&hist(&[]), &hist(&[]), 0, u32::MAX);
        lost.add(&hist(&[]), &hist(&[]), 0, 1);
        assert_eq!(lost.counts(), (0, u32::MAX), "saturating");
        assert_eq!(lost.pairs().0.count() + lost.pairs().1.count(), 0);
    }

    #[test]
    fn a_slot_is_24_bytes_and_keeps_its_bounds() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        let now_ms = 1_764_000_000_000;
        let mut s = Slot::new(now_ms, 5_000);
        assert_eq!(
            (s.start_ms(), s.end_ms(), s.coarse()),
            (now_ms, now_ms + 5_000, false)
        );
        s.extend_to(now_ms + 7_500);
        assert_eq!((s.len_ms(), s.coarse()), (7_500, false));
        s.make_coarse(now_ms - 40_000, now_ms + 5_000);
        assert_eq!(
            (s.start_ms(), s.len_ms(), s.coarse()),
            (now_ms - 40_000, 45_000, true)
        );
        s.extend_to(now_ms + 10_000);
        assert_eq!((s.end_ms(), s.coarse()), (now_ms + 10_000, true));
        assert!(Slot::can_start(u64::from(u32::MAX) * 1000));
        assert!(!Slot::can_start(u64::from(u32::MAX) * 1000 + 1000));
        assert!(!Slot::can_start(1_500));
    }

    /// A jittery path's slot (25 samples of 20 ms + up to 500 µs, their 24 differences):
    /// most buckets hold one to three samples and take one byte; the buckets read back as
    /// merged. Value 0 (the first IPDV bucket, delta 0) and every kind of count round-trip.
    #[test]
    fn a_bucket_of_a_jittery_slot_takes_about_a_byte() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(11);
        let mut s = Slot::new(0, 5_000);
        let (mut all_rtt, mut all_ipdv) = (SparseHist::new(), SparseHist::new());
        let mut last = None;
        for _ in 0..5 {
            let v: Vec<u64> = (0..5).map(|_| 20_000 + rng.random_range(0..500)).collect();
            let d: Vec<u64> = v
                .iter()
                .filter_map(|&x| last.replace(x).map(|l: u64| x.abs_diff(l)))
                .collect();
            let (r, i) = (hist(&v), hist(&d));
            s.add(&r, &i, 5, 0);
            all_rtt.merge(&r);
            all_ipdv.merge(&i);
        }
        assert_eq!(unpack(&s), (all_rtt.clone(), all_ipdv.clone()));
        let buckets = all_rtt.buckets().len() + all_ipdv.buckets().len();
        // A byte a bucket; counts, END, the first RTT index's second and third bytes and
        // the deltas beyond 31 (IPDV values more than 31 µs apart): 50 bytes here, about
        // half what (delta, count) pairs took.
        assert!(
            s.heap_bytes() <= buckets + 12,
            "{} bytes for {buckets} buckets",
            s.heap_bytes()
        );

        let mut z = Slot::new(0, 5_000);
        let ipdv = [0, 0, 0, 7, 9, 9, 12, 12, 12, 40, 40, 40, 40, 40, 2_000_000];
        z.add(&hist(&[]), &hist(&ipdv), 0, 0);
        z.add(&hist(&[]), &hist(&[0]), 0, 0);
        let (r, i) = unpack(&z);
        let mut want = hist(&ipdv);
        want.record(0);
        assert_eq!((r.count(), &i), (0, &want));
        assert_eq!(
            &i.buckets()[..5],
            &[(0, 4), (7, 1), (9, 2), (12, 3), (40, 5)]
        );
    }

    #[test]
    fn five_loopback_samples_take_a_few_dozen_bytes() {
        let mut s = Slot::new(0, 5_000);
        s.add(&hist(&[41, 38, 52, 40, 39]), &hist(&[3, 14, 12, 1]), 5, 0);
        assert!(s.heap_bytes() <= 24, "{} bytes", s.heap_bytes());
        assert_eq!(Slot::default().heap_bytes(), 0);
    }
}
