//! One slot of a path's windows, packed for memory: a standalone agent keeps 18 slots for
//! each of 10,000 paths, an aggregator for each of 100,000, and most slots hold a handful of
//! samples. The RTT and IPDV histograms of a slot live in one boxed byte string of varints
//! (about 20 bytes for 5 samples, where two `Vec`s of buckets took 48 bytes inline plus two
//! heap blocks of 64 or more). Slots are written a few times (one merge per report) and read
//! once per scrape, so packing and unpacking on each access is cheap next to the memory.
//!
//! Layout of `hists`: the RTT buckets as (index delta, count) varint pairs, then a `0, 0`
//! pair (a count is never 0), then the IPDV buckets the same way. Empty: no allocation.

use std::cell::RefCell;

use pathpulse_wire::SparseHist;
use pathpulse_wire::hist::MergeSorted;

use crate::window::DirView;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Slot {
    pub start_ms: u64,
    /// Length of the data in the slot from its start: [`crate::window::SLOT_MS`] for a
    /// fine slot; for a 1 min slot, up to the end of the last fine slot folded into it (so
    /// it never reaches into a window its data is not in).
    pub len_ms: u32,
    /// Counts of the slot (saturating: one path's probes in at most a minute).
    pub received: u32,
    pub lost: u32,
    pub coarse: bool,
    hists: Box<[u8]>,
    pub dir: Option<Box<DirView>>,
}

impl Slot {
    pub fn new(start_ms: u64, len_ms: u32) -> Self {
        Slot {
            start_ms,
            len_ms,
            ..Slot::default()
        }
    }

    pub fn end_ms(&self) -> u64 {
        self.start_ms + u64::from(self.len_ms)
    }

    /// Add an interval's counts and histograms.
    pub fn add(&mut self, rtt: &SparseHist, ipdv: &SparseHist, received: u32, lost: u32) {
        self.received = self.received.saturating_add(received);
        self.lost = self.lost.saturating_add(lost);
        if rtt.is_empty() && ipdv.is_empty() {
            return;
        }
        SCRATCH.with_borrow_mut(|out| {
            let (mine_rtt, mine_ipdv) = self.pairs();
            pack(
                out,
                MergeSorted::new(mine_rtt, rtt.buckets().iter().copied()),
                MergeSorted::new(mine_ipdv, ipdv.buckets().iter().copied()),
            );
            self.store(out);
        });
    }

    /// Fold another slot's data (counts, histograms, directions) into this one.
    pub fn absorb(&mut self, other: &Slot) {
        self.received = self.received.saturating_add(other.received);
        self.lost = self.lost.saturating_add(other.lost);
        if !other.hists.is_empty() {
            SCRATCH.with_borrow_mut(|out| {
                let (a_rtt, a_ipdv) = self.pairs();
                let (b_rtt, b_ipdv) = other.pairs();
                pack(
                    out,
                    MergeSorted::new(a_rtt, b_rtt),
                    MergeSorted::new(a_ipdv, b_ipdv),
                );
                self.store(out);
            });
        }
        if let Some(d) = other.dir.as_deref() {
            self.dir.get_or_insert_default().merge(d);
        }
    }

    /// Keep `packed` as the slot's histograms: in place when the length did not change
    /// (only counts grew), else one allocation of the exact size (growing a `Vec` and
    /// shrinking it leaves small free chunks between long-lived ones).
    fn store(&mut self, packed: &[u8]) {
        if packed.len() == self.hists.len() {
            self.hists.copy_from_slice(packed);
        } else {
            self.hists = Box::from(packed);
        }
    }

    /// The RTT and IPDV buckets, in index order.
    pub fn pairs(&self) -> (Pairs<'_>, Pairs<'_>) {
        let mut rtt = Pairs::new(&self.hists);
        // Skip to the IPDV section: past the RTT pairs and their terminator.
        let mut rest = Pairs::new(&self.hists);
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
            + self.dir.as_ref().map_or(0, |d| {
                std::mem::size_of::<DirView>()
                    + d.owd_forward.heap_bytes()
                    + d.owd_reverse.heap_bytes()
            })
    }
}

thread_local! {
    /// Where slots are packed before their bytes are copied out.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Pack two sorted bucket sequences into the slot layout, into `out`.
fn pack(
    out: &mut Vec<u8>,
    rtt: impl Iterator<Item = (u32, u32)>,
    ipdv: impl Iterator<Item = (u32, u32)>,
) {
    out.clear();
    let put_all = |out: &mut Vec<u8>, it: &mut dyn Iterator<Item = (u32, u32)>| {
        let mut prev = 0;
        for (idx, n) in it {
            put(out, idx - prev);
            put(out, n);
            prev = idx;
        }
    };
    put_all(out, &mut rtt.filter(|b| b.1 > 0));
    let rtt_end = out.len();
    out.extend_from_slice(&[0, 0]);
    put_all(out, &mut ipdv.filter(|b| b.1 > 0));
    if out.len() == rtt_end + 2 {
        // No IPDV: the terminator is not needed either.
        out.truncate(rtt_end);
    }
}

/// LEB128 varint.
fn put(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads (index, count) pairs until a zero count or `end`.
pub(crate) struct Pairs<'a> {
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

    fn get(&mut self) -> Option<u32> {
        let mut v = 0u32;
        for shift in (0..35).step_by(7) {
            if self.pos >= self.end {
                return None;
            }
            let b = *self.bytes.get(self.pos)?;
            self.pos += 1;
            v |= u32::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

impl Iterator for Pairs<'_> {
    type Item = (u32, u32);
    fn next(&mut self) -> Option<(u32, u32)> {
        let delta = self.get()?;
        let n = self.get()?;
        if n == 0 {
            return None;
        }
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
        assert_eq!((s.received, s.lost), (9, 3));

        // Absorbing a slot adds everything; an IPDV-only slot and an empty one too.
        let mut other = Slot::new(0, 5_000);
        other.add(&hist(&[]), &hist(&[7, 7]), 0, 2);
        s.absorb(&other);
        s.absorb(&Slot::new(0, 5_000));
        let (r2, i2) = unpack(&s);
        assert_eq!(r2, r);
        assert_eq!(i2.count(), i.count() + 2);
        assert_eq!(s.lost, 5);
    }

    #[test]
    fn five_loopback_samples_take_a_few_dozen_bytes() {
        let mut s = Slot::new(0, 5_000);
        s.add(&hist(&[41, 38, 52, 40, 39]), &hist(&[3, 14, 12, 1]), 5, 0);
        assert!(s.heap_bytes() <= 24, "{} bytes", s.heap_bytes());
        assert!(std::mem::size_of::<Slot>() <= 48);
        assert_eq!(Slot::default().heap_bytes(), 0);
    }
}
