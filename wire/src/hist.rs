//! Sparse HDR histogram: the RTT histogram that crosses the wire and fills the windows.
//!
//! A dense HDR histogram covering 1 µs – 60 s at 3 significant digits takes 136 KiB
//! (FACTS.md). Network RTTs of one path fall into a few dozen of its buckets, so pathpulse
//! keeps only the buckets that have counts: a sorted list of `(bucket index, count)`.
//! The bucket layout is exactly hdrhistogram's for `sigfig = 3` and a lowest discernible
//! value of 1 µs, so quantiles agree with the `hdrhistogram` crate (tested below) and a
//! sparse histogram can always be expanded into a dense one.

use serde::{Deserialize, Serialize};

/// Sub-bucket count for 3 significant digits: 2 × 10³ rounded up to a power of two.
const SUB_BUCKET_COUNT_MAGNITUDE: u32 = 11;
const SUB_BUCKET_HALF_COUNT_MAGNITUDE: u32 = SUB_BUCKET_COUNT_MAGNITUDE - 1;
const SUB_BUCKET_HALF_COUNT: u64 = 1 << SUB_BUCKET_HALF_COUNT_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = (1 << SUB_BUCKET_COUNT_MAGNITUDE) - 1;
const LEADING_ZERO_COUNT_BASE: u32 = 64 - SUB_BUCKET_HALF_COUNT_MAGNITUDE - 1;

/// Largest value recorded, in microseconds (about 18 hours); larger values are clamped.
pub const MAX_VALUE_US: u64 = 1 << 36;
/// Largest bucket index a valid histogram may carry (index of `MAX_VALUE_US`).
pub const MAX_INDEX: u32 = index_of(MAX_VALUE_US);
/// A decoded histogram with more buckets than this is refused (a sane RTT distribution
/// has a few dozen; this bounds memory spent on hostile input).
pub const MAX_BUCKETS: usize = 4096;

/// Bucket index of a value (µs), identical to hdrhistogram's `index_for`.
pub const fn index_of(value_us: u64) -> u32 {
    let v = if value_us > MAX_VALUE_US {
        MAX_VALUE_US
    } else {
        value_us
    };
    let bucket = LEADING_ZERO_COUNT_BASE - (v | SUB_BUCKET_MASK).leading_zeros();
    let sub_bucket = v >> bucket;
    (((bucket as u64 + 1) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) + sub_bucket - SUB_BUCKET_HALF_COUNT)
        as u32
}

/// The bucket index standing for `index` at about 2 significant digits: indices are grouped
/// by at most 8 neighbours (a group spans at most 0.8% of its values) and each group is
/// represented by its middle index, so a quantile read from coarse indices is within 0.4%
/// of the one read from the originals (the clamp value [`MAX_INDEX`] stays itself). Below
/// 256 µs indices are kept (1 µs). Monotonic:
/// sorted indices stay sorted and equal ones are adjacent. For copies kept only to judge
/// thresholds (the alert engine's history) and for data older than a minute (the 1 min
/// slots of the windows), where 3 digits cost memory and say little more.
pub const fn coarse_index(index: u32) -> u32 {
    coarse_index_by(index, 3)
}

/// [`coarse_index`] with groups of up to `2^bits` neighbours (`bits` ≤ 10): a group spans
/// at most `2^bits / 1024` of its values and a quantile moves by at most half that (`bits`
/// = 3: 0.4%; 5: 1.6%). Values below 1024 µs are grouped less, to the same share, and
/// those below `2^(11 - bits)` µs not at all (1 µs). Monotonic, as [`coarse_index`].
pub const fn coarse_index_by(index: u32, bits: u32) -> u32 {
    // Indices from 1024 on come in groups of 1024 sub-buckets of one width: 2^bits per
    // group is 2^bits/1024–2^bits/512 of a value. Below, index = value in µs: one bit
    // fewer per halving of the value, the same share.
    let bits = if index >= 1024 {
        bits
    } else {
        // index in [2^k, 2^(k+1)), k < 10: bits - (10 - k), at least 0.
        let k = 31 - (index | 1).leading_zeros();
        bits.saturating_sub(10 - k)
    };
    if bits == 0 {
        return index;
    }
    let c = (index & !((1 << bits) - 1)) | (1 << (bits - 1));
    // The last group starts at MAX_INDEX (the clamp value): it stays there.
    if c > MAX_INDEX { MAX_INDEX } else { c }
}

/// (bucket, sub-bucket) of an index.
const fn split(index: u32) -> (u32, u64) {
    let idx = index as u64;
    let bucket = (idx >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) as i64 - 1;
    let mut sub = (idx & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT;
    if bucket < 0 {
        sub -= SUB_BUCKET_HALF_COUNT;
        return (0, sub);
    }
    (bucket as u32, sub)
}

/// Lowest value (µs) that falls into bucket `index`.
pub const fn lowest_of(index: u32) -> u64 {
    let (bucket, sub) = split(index);
    sub << bucket
}

/// Highest value (µs) that falls into bucket `index`: what hdrhistogram reports for a quantile.
pub const fn highest_of(index: u32) -> u64 {
    let (bucket, _) = split(index);
    lowest_of(index) + (1u64 << bucket) - 1
}

/// Middle of bucket `index` (µs), used for sums and bucket conversions.
pub const fn median_of(index: u32) -> u64 {
    let (bucket, _) = split(index);
    lowest_of(index) + ((1u64 << bucket) >> 1)
}

/// A sparse HDR histogram of RTT samples in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Encoded", try_from = "Encoded")]
pub struct SparseHist {
    /// Sorted by bucket index, counts > 0.
    buckets: Vec<(u32, u32)>,
}

/// Error for a histogram that does not satisfy the invariants (hostile or corrupt input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistError {
    #[error("histogram has {0} buckets, more than the limit of {MAX_BUCKETS}")]
    TooManyBuckets(usize),
    #[error("histogram bucket index {0} is beyond the largest valid index {MAX_INDEX}")]
    IndexOutOfRange(u64),
    #[error("histogram bucket with a zero count or a repeated index")]
    NotCanonical,
    #[error("histogram encoding has an odd number of fields")]
    Truncated,
}

/// Wire form: alternating (index delta, count), varint-encoded by postcard.
#[derive(Serialize, Deserialize)]
struct Encoded(Vec<u32>);

impl From<SparseHist> for Encoded {
    fn from(h: SparseHist) -> Self {
        let mut out = Vec::with_capacity(h.buckets.len() * 2);
        let mut prev = 0u32;
        for (i, (idx, count)) in h.buckets.iter().enumerate() {
            out.push(if i == 0 { *idx } else { idx - prev });
            out.push(*count);
            prev = *idx;
        }
        Encoded(out)
    }
}

impl TryFrom<Encoded> for SparseHist {
    type Error = HistError;
    fn try_from(e: Encoded) -> Result<Self, HistError> {
        if !e.0.len().is_multiple_of(2) {
            return Err(HistError::Truncated);
        }
        let n = e.0.len() / 2;
        if n > MAX_BUCKETS {
            return Err(HistError::TooManyBuckets(n));
        }
        let mut buckets = Vec::with_capacity(n);
        let mut idx: u64 = 0;
        for (i, pair) in e.0.chunks_exact(2).enumerate() {
            let (delta, count) = (u64::from(pair[0]), pair[1]);
            if (i > 0 && delta == 0) || count == 0 {
                return Err(HistError::NotCanonical);
            }
            idx += delta;
            if idx > u64::from(MAX_INDEX) {
                return Err(HistError::IndexOutOfRange(idx));
            }
            buckets.push((idx as u32, count));
        }
        Ok(SparseHist { buckets })
    }
}

impl SparseHist {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record one sample (µs).
    pub fn record(&mut self, value_us: u64) {
        self.record_n(index_of(value_us), 1);
    }

    fn record_n(&mut self, index: u32, n: u32) {
        match self.buckets.binary_search_by_key(&index, |b| b.0) {
            Ok(pos) => self.buckets[pos].1 = self.buckets[pos].1.saturating_add(n),
            Err(pos) => self.buckets.insert(pos, (index, n)),
        }
    }

    /// Add every count of `other` into `self`. In place when `other` brings no new bucket
    /// (the usual case for a path's next report); otherwise one allocation of the exact size.
    pub fn merge(&mut self, other: &SparseHist) {
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
            return;
        }
        let merged = MergeSorted::new(self.buckets.iter().copied(), other.buckets.iter().copied());
        let len = merged.count();
        if len == self.buckets.len() {
            let mut mine = self.buckets.iter_mut();
            for &(idx, n) in &other.buckets {
                if let Some(b) = mine.find(|b| b.0 == idx) {
                    b.1 = b.1.saturating_add(n);
                }
            }
            return;
        }
        let mut out = Vec::with_capacity(len);
        out.extend(MergeSorted::new(
            self.buckets.iter().copied(),
            other.buckets.iter().copied(),
        ));
        self.buckets = out;
    }

    /// Many histograms merged at once: one sort of all their buckets instead of one pass
    /// (and allocation) per histogram, for windows made of many small ones.
    pub fn merged<'a>(hists: impl IntoIterator<Item = &'a SparseHist>) -> SparseHist {
        let mut all: Vec<(u32, u32)> = Vec::new();
        for h in hists {
            all.extend_from_slice(&h.buckets);
        }
        SparseHist::from_pairs(all)
    }

    /// A histogram from `(bucket index, count)` pairs in any order: repeated indices are
    /// added up, zero counts dropped, indices past [`MAX_INDEX`] clamped to it.
    pub fn from_pairs(mut all: Vec<(u32, u32)>) -> SparseHist {
        // Merged windows come sorted: checking is a pass, sorting even sorted input more.
        if !all.is_sorted_by_key(|b| b.0) {
            all.sort_unstable_by_key(|b| b.0);
        }
        let mut w = 0;
        for r in 0..all.len() {
            let (i, n) = all[r];
            let i = i.min(MAX_INDEX);
            if n == 0 {
                continue;
            }
            if w > 0 && all[w - 1].0 == i {
                all[w - 1].1 = all[w - 1].1.saturating_add(n);
            } else {
                all[w] = (i, n);
                w += 1;
            }
        }
        all.truncate(w);
        SparseHist { buckets: all }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| u64::from(b.1)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// `(index, count)` pairs in increasing index order.
    pub fn buckets(&self) -> &[(u32, u32)] {
        &self.buckets
    }

    /// Value (µs) at quantile `q` in 0..=1, as hdrhistogram's `value_at_quantile` computes it
    /// (the highest value equivalent to the bucket holding that rank). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (idx, count) in &self.buckets {
            seen += u64::from(*count);
            if seen >= rank {
                return Some(if q == 0.0 {
                    lowest_of(*idx)
                } else {
                    highest_of(*idx)
                });
            }
        }
        self.buckets.last().map(|b| highest_of(b.0))
    }

    pub fn min(&self) -> Option<u64> {
        self.buckets.first().map(|b| lowest_of(b.0))
    }

    /// The histogram reduced to the buckets [`quantile`](Self::quantile) answers for `qs`,
    /// and the last one, each with the counts of the buckets folded into it: the quantiles
    /// of `qs` and the count are unchanged, and so is [`min`](Self::min) when `qs` has 0.
    /// What a scrape keeps of the windows it exports (a few buckets instead of dozens).
    pub fn only_quantiles(&self, qs: &[f64]) -> SparseHist {
        let total = self.count();
        let mut ranks: Vec<u64> = qs
            .iter()
            .map(|q| ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1))
            .collect();
        ranks.sort_unstable();
        let mut out = Vec::with_capacity(ranks.len() + 1);
        let (mut seen, mut folded, mut next) = (0u64, 0u64, 0);
        for (i, &(idx, n)) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            folded += u64::from(n);
            let answers = next < ranks.len() && seen >= ranks[next];
            while next < ranks.len() && seen >= ranks[next] {
                next += 1;
            }
            if answers || i + 1 == self.buckets.len() {
                out.push((idx, u32::try_from(folded).unwrap_or(u32::MAX)));
                folded = 0;
            }
        }
        SparseHist { buckets: out }
    }

    pub fn max(&self) -> Option<u64> {
        self.buckets.last().map(|b| highest_of(b.0))
    }

    /// Heap bytes held (for memory accounting and benchmarks).
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(u32, u32)>()
    }

    pub fn shrink_to_fit(&mut self) {
        self.buckets.shrink_to_fit();
    }

    /// Forget every sample, keeping the allocation for the next ones.
    pub fn clear(&mut self) {
        self.buckets.clear();
    }
}

/// Two sorted `(index, count)` sequences as one, counts of equal indices added.
pub struct MergeSorted<A: Iterator<Item = (u32, u32)>, B: Iterator<Item = (u32, u32)>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = (u32, u32)>, B: Iterator<Item = (u32, u32)>> MergeSorted<A, B> {
    pub fn new(a: A, b: B) -> Self {
        MergeSorted {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<A: Iterator<Item = (u32, u32)>, B: Iterator<Item = (u32, u32)>> Iterator
    for MergeSorted<A, B>
{
    type Item = (u32, u32);
    fn next(&mut self) -> Option<(u32, u32)> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let out = (x.0, x.1.saturating_add(y.1));
                self.a.next();
                self.b.next();
                Some(out)
            }
            (Some(x), Some(y)) if x.0 < y.0 => self.a.next(),
            (Some(_), Some(_)) | (None, _) => self.b.next(),
            (Some(_), None) => self.a.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Coarse indices keep order, stay valid, and move a value by at most 0.4%.
    #[test]
    fn coarse_index_is_monotonic_and_within_four_per_mille() {
        let mut prev = 0;
        for i in 0..=MAX_INDEX {
            let c = coarse_index(i);
            assert!(c >= prev && c <= MAX_INDEX, "index {i} -> {c}");
            prev = c;
            let (v, cv) = (median_of(i) as f64, median_of(c) as f64);
            if v >= 256.0 {
                assert!((cv - v).abs() / v <= 0.0045, "index {i}: {v} -> {cv}");
            } else {
                assert_eq!(c, i);
            }
        }
    }

    /// Coarser groups: order kept, valid, a value moved by at most half a group's share
    /// (1.6% for 32 neighbours), values below 64 µs kept.
    #[test]
    fn coarse_index_by_five_bits_is_monotonic_and_within_sixteen_per_mille() {
        let mut prev = 0;
        let mut groups = 0;
        for i in 0..=MAX_INDEX {
            let c = coarse_index_by(i, 5);
            assert!(c >= prev && c <= MAX_INDEX, "index {i} -> {c}");
            groups += u32::from(c != prev);
            prev = c;
            let (v, cv) = (median_of(i) as f64, median_of(c) as f64);
            if v >= 64.0 {
                assert!((cv - v).abs() / v <= 0.017, "index {i}: {v} -> {cv}");
            } else {
                assert_eq!(c, i);
            }
        }
        assert!(
            groups < MAX_INDEX / 16,
            "{groups} groups of {MAX_INDEX} indices"
        );
        for i in (0..=MAX_INDEX).step_by(7) {
            assert_eq!(coarse_index_by(i, 3), coarse_index(i));
        }
    }

    fn reference() -> Histogram<u64> {
        Histogram::new_with_bounds(1, MAX_VALUE_US, 3).expect("valid bounds")
    }

    #[test]
    fn bucket_layout_matches_hdrhistogram() {
        let h = reference();
        for v in [
            1u64, 2, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 12_345, 999_999, 60_000_000,
        ] {
            let idx = index_of(v);
            assert_eq!(lowest_of(idx), h.lowest_equivalent(v), "lowest of {v}");
            assert_eq!(highest_of(idx), h.highest_equivalent(v), "highest of {v}");
            assert_eq!(median_of(idx), h.median_equivalent(v), "median of {v}");
        }
    }

    #[test]
    fn quantiles_match_hdrhistogram_on_random_rtts() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..20 {
            let mut ours = SparseHist::new();
            let mut theirs = reference();
            let n = rng.random_range(1..3000);
            let base = rng.random_range(10..200_000u64);
            for _ in 0..n {
                let v = base + rng.random_range(0..base);
                ours.record(v);
                theirs.record(v).expect("in range");
            }
            for q in [0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(
                    ours.quantile(q),
                    Some(theirs.value_at_quantile(q)),
                    "round {round} q {q} n {n}"
                );
            }
            assert_eq!(ours.count(), theirs.len());
        }
    }

    #[test]
    fn only_quantiles_keeps_the_quantiles_count_and_min() {
        let mut rng = StdRng::seed_from_u64(5);
        let qs = [0.0, 0.5, 0.9, 0.99, 0.999];
        for n in [0u64, 1, 2, 3, 10, 100, 1_000, 20_000] {
            let mut h = SparseHist::new();
            for _ in 0..n {
                let v = if rng.random_bool(0.1) {
                    rng.random_range(1..5_000_000)
                } else {
                    rng.random_range(20_000..20_500)
                };
                h.record(v);
            }
            let slim = h.only_quantiles(&qs);
            for q in qs {
                assert_eq!(slim.quantile(q), h.quantile(q), "n {n} q {q}");
            }
            assert_eq!((slim.count(), slim.min()), (h.count(), h.min()), "n {n}");
            assert!(
                slim.buckets().len() <= qs.len() + 1,
                "{}",
                slim.buckets().len()
            );
            if n >= 1_000 {
                assert!(h.buckets().len() > 5 * slim.buckets().len(), "n {n}");
                // Other quantiles are not kept.
                assert!((1..100).any(|i| {
                    let q = f64::from(i) / 100.0;
                    slim.quantile(q) != h.quantile(q)
                }));
            }
        }
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut rng = StdRng::seed_from_u64(11);
        let (mut a, mut b, mut all) = (SparseHist::new(), SparseHist::new(), SparseHist::new());
        for i in 0..5000u64 {
            let v = rng.random_range(1..5_000_000);
            if i % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        assert_eq!(SparseHist::merged([&a, &b]), all);
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(SparseHist::merged([]), SparseHist::new());
        // In place: nothing new in the second histogram.
        let mut twice = all.clone();
        twice.merge(&all);
        assert_eq!(twice.count(), 2 * all.count());
        assert_eq!(twice.buckets().len(), all.buckets().len());
        let pairs: Vec<(u32, u32)> = all
            .buckets()
            .iter()
            .rev()
            .copied()
            .chain([(3, 0)])
            .collect();
        assert_eq!(
            SparseHist::from_pairs(pairs),
            all,
            "any order, zero counts dropped"
        );
    }

    #[test]
    fn wire_roundtrip_is_compact() {
        let mut h = SparseHist::new();
        for v in [812u64, 790, 805, 1900, 799, 830, 801, 795, 3_000, 802] {
            h.record(v);
        }
        let bytes = postcard::to_stdvec(&h).expect("encode");
        let back: SparseHist = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, h);
        assert!(bytes.len() < 40, "10 samples took {} bytes", bytes.len());
    }

    #[test]
    fn hostile_encodings_are_refused() {
        let cases: Vec<(Vec<u32>, &str)> = vec![
            (vec![5], "odd"),
            (vec![5, 0], "zero count"),
            (vec![5, 1, 0, 1], "repeated index"),
            (vec![u32::MAX, 1], "index out of range"),
            (vec![MAX_INDEX, 1, 1, 1], "index out of range after delta"),
        ];
        for (fields, what) in cases {
            let bytes = postcard::to_stdvec(&fields).expect("encode");
            assert!(
                postcard::from_bytes::<SparseHist>(&bytes).is_err(),
                "{what} accepted"
            );
        }
        let many: Vec<u32> = (0..(MAX_BUCKETS as u32 + 1)).flat_map(|_| [1, 1]).collect();
        let bytes = postcard::to_stdvec(&many).expect("encode");
        assert!(postcard::from_bytes::<SparseHist>(&bytes).is_err());
    }

    #[test]
    fn huge_values_clamp_instead_of_panicking() {
        let mut h = SparseHist::new();
        h.record(u64::MAX);
        h.record(0);
        assert_eq!(h.count(), 2);
        assert!(h.max().expect("non-empty") >= MAX_VALUE_US);
    }
}
