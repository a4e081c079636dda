//! The last hour of every path for the smoke graph: bounded rings of RTT quantiles, loss
//! and jitter, sampled from the store's windows. Pure: `now` is an argument.
//!
//! Two tiers, each exact (quantiles are taken from merged histograms, never averaged):
//! the last 10 min in 10 s points and the last hour in 1 min points. A point is 20 bytes
//! (values log-encoded in 16 bits, 0.014% resolution), a path 120 points: 2.4 KB, 2.6 KB
//! with its map entry, so 40,000 paths (a 200-agent full mesh) take about 105 MB (measured
//! by `memory_for_a_200_agent_mesh`).

use std::collections::HashMap;

use pathpulse_metrics::store::PathKey;
use pathpulse_metrics::window::{PathWindows, WindowView};
use pathpulse_metrics::{SharedStore, Store};

/// Fine tier: step and length (10 min).
pub const FINE_STEP_MS: u64 = 10_000;
pub const FINE_LEN: usize = 60;
/// Coarse tier: step and length (1 h).
pub const COARSE_STEP_MS: u64 = 60_000;
pub const COARSE_LEN: usize = 60;
/// A period is sampled this long after its end, when its reports have arrived (agents
/// report every 5 s by default; a report joins the slot of its interval start).
pub const SETTLE_MS: u64 = 6_000;

/// Quantiles kept per point, in this order.
pub const QUANTILES: [(&str, f64); 7] = [
    ("min", 0.0),
    ("p10", 0.10),
    ("p25", 0.25),
    ("p50", 0.50),
    ("p75", 0.75),
    ("p90", 0.90),
    ("p99", 0.99),
];

const NONE: u16 = u16::MAX;
/// Code steps per natural-log unit: 60 s (6e7 µs) encodes as 64,481.
const SCALE: f64 = 3_600.0;

/// A microsecond value in 16 bits: `round(ln(1 + v) · 3600)`, saturating near 80 s.
pub fn encode_us(v: Option<f64>) -> u16 {
    match v {
        None => NONE,
        Some(v) if v.is_nan() => NONE,
        Some(v) => ((v.max(0.0) + 1.0).ln() * SCALE)
            .round()
            .min(f64::from(NONE - 1)) as u16,
    }
}

pub fn decode_us(code: u16) -> Option<u64> {
    (code != NONE).then(|| ((f64::from(code) / SCALE).exp() - 1.0).round().max(0.0) as u64)
}

/// One period of one path (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    quantiles: [u16; QUANTILES.len()],
    received: u16,
    lost: u16,
    jitter: u16,
}

impl Default for Point {
    fn default() -> Self {
        Point {
            quantiles: [NONE; QUANTILES.len()],
            received: 0,
            lost: 0,
            jitter: NONE,
        }
    }
}

fn sat16(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

impl Point {
    pub fn from_view(v: &WindowView, jitter_us: Option<f64>) -> Point {
        let mut quantiles = [NONE; QUANTILES.len()];
        for (slot, (_, q)) in quantiles.iter_mut().zip(QUANTILES) {
            let value = if q == 0.0 {
                v.hist.min()
            } else {
                v.hist.quantile(q)
            };
            *slot = encode_us(value.map(|x| x as f64));
        }
        Point {
            quantiles,
            received: sat16(v.received),
            lost: sat16(v.lost),
            jitter: if v.received > 0 {
                encode_us(jitter_us)
            } else {
                NONE
            },
        }
    }

    /// Quantiles in µs, in [`QUANTILES`] order; `None` without replies.
    pub fn quantiles_us(&self) -> [Option<u64>; QUANTILES.len()] {
        self.quantiles.map(decode_us)
    }

    pub fn received(&self) -> u64 {
        self.received.into()
    }

    pub fn lost(&self) -> u64 {
        self.lost.into()
    }

    pub fn jitter_us(&self) -> Option<u64> {
        decode_us(self.jitter)
    }

    pub fn is_empty(&self) -> bool {
        self.received == 0 && self.lost == 0
    }
}

/// Points at a fixed step, newest last; at most `len`.
///
/// Packed: the oldest and the newest point are kept whole, every point after the oldest
/// as its change from the one before it, field by field (zigzag varints: a steady path's
/// point takes about 11 bytes instead of 20). Dropping the oldest point folds the first
/// change into it; pushing appends one change. 80 bytes and the changes.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Start of the newest point.
    newest_ms: u64,
    step_ms: u32,
    len: u16,
    count: u16,
    oldest: Point,
    newest: Point,
    /// The changes from each point to the next, oldest first (`count - 1` of them).
    deltas: Vec<u8>,
}

/// Fields of a point, in the order they are packed.
const FIELDS: usize = QUANTILES.len() + 3;

impl Point {
    fn fields(&self) -> [u16; FIELDS] {
        let mut f = [0; FIELDS];
        f[..QUANTILES.len()].copy_from_slice(&self.quantiles);
        f[QUANTILES.len()] = self.received;
        f[QUANTILES.len() + 1] = self.lost;
        f[QUANTILES.len() + 2] = self.jitter;
        f
    }

    fn from_fields(f: [u16; FIELDS]) -> Point {
        let mut quantiles = [NONE; QUANTILES.len()];
        quantiles.copy_from_slice(&f[..QUANTILES.len()]);
        Point {
            quantiles,
            received: f[QUANTILES.len()],
            lost: f[QUANTILES.len() + 1],
            jitter: f[QUANTILES.len() + 2],
        }
    }
}

/// Append the change from `from` to `to`.
fn put_delta(out: &mut Vec<u8>, from: &Point, to: &Point) {
    for (a, b) in from.fields().into_iter().zip(to.fields()) {
        let d = i32::from(b) - i32::from(a);
        let mut z = ((d << 1) ^ (d >> 31)) as u32;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
}

/// Apply the change at the start of `bytes` to `from`; the point and the bytes read.
/// Bytes this module wrote always decode; a short read keeps what it has.
fn take_delta(bytes: &[u8], from: &Point) -> (Point, usize) {
    let mut f = from.fields();
    let mut at = 0;
    for v in &mut f {
        let mut z = 0u32;
        let mut shift = 0;
        while let Some(&b) = bytes.get(at) {
            at += 1;
            z |= u32::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 || shift > 21 {
                break;
            }
        }
        let d = ((z >> 1) as i32) ^ -((z & 1) as i32);
        *v = (i32::from(*v) + d).clamp(0, i32::from(u16::MAX)) as u16;
    }
    (Point::from_fields(f), at)
}

impl Ring {
    /// `step_ms` up to 49 days, `len` up to 65,535 points (both clamped).
    pub fn new(step_ms: u64, len: usize) -> Ring {
        Ring {
            newest_ms: 0,
            step_ms: u32::try_from(step_ms).unwrap_or(u32::MAX).max(1),
            len: u16::try_from(len).unwrap_or(u16::MAX).max(1),
            count: 0,
            oldest: Point::default(),
            newest: Point::default(),
            deltas: Vec::new(),
        }
    }

    /// Add the point of the period starting at `start_ms`; missed periods become empty
    /// points, a period at or before the newest is ignored.
    pub fn push(&mut self, start_ms: u64, p: Point) {
        if self.count > 0 {
            if start_ms <= self.newest_ms {
                return;
            }
            let gap = ((start_ms - self.newest_ms) / self.step_ms()).saturating_sub(1);
            for _ in 0..gap.min(u64::from(self.len)) {
                self.append(Point::default());
            }
        }
        self.append(p);
        self.newest_ms = start_ms;
    }

    fn append(&mut self, p: Point) {
        if self.count == 0 {
            (self.oldest, self.newest, self.count) = (p, p, 1);
            return;
        }
        // Grown by an eighth at a time, not doubled: a full ring's bytes stay level.
        let need = self.deltas.len() + FIELDS * 3;
        if need > self.deltas.capacity() {
            self.deltas
                .reserve_exact((need - self.deltas.len()).max(self.deltas.len() / 8));
        }
        put_delta(&mut self.deltas, &self.newest, &p);
        self.newest = p;
        self.count += 1;
        if self.count > self.len {
            let (second, used) = take_delta(&self.deltas, &self.oldest);
            self.deltas.drain(..used);
            self.oldest = second;
            self.count -= 1;
        }
    }

    /// `(start_ms, point)`, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Point)> + '_ {
        let (n, step) = (u64::from(self.count), self.step_ms());
        let first = self.newest_ms.saturating_sub(n.saturating_sub(1) * step);
        let mut at = 0;
        let mut cur = self.oldest;
        (0..n).map(move |i| {
            if i > 0 {
                let (p, used) = take_delta(&self.deltas[at..], &cur);
                at += used;
                cur = p;
            }
            (first + i * step, cur)
        })
    }

    pub fn step_ms(&self) -> u64 {
        u64::from(self.step_ms)
    }

    fn all_empty(&self) -> bool {
        // An active path's newest point has data: no decoding for it.
        self.newest.is_empty() && self.iter().all(|(_, p)| p.is_empty())
    }

    pub fn heap_bytes(&self) -> usize {
        self.deltas.capacity()
    }
}

#[derive(Debug, Clone)]
pub struct PathHistory {
    pub fine: Ring,
    pub coarse: Ring,
}

impl Default for PathHistory {
    fn default() -> Self {
        PathHistory {
            fine: Ring::new(FINE_STEP_MS, FINE_LEN),
            coarse: Ring::new(COARSE_STEP_MS, COARSE_LEN),
        }
    }
}

impl PathHistory {
    /// Points of the last hour, oldest first: coarse points until the fine tier begins,
    /// then fine points. `(start_ms, step_ms, point)`.
    pub fn points(&self) -> Vec<(u64, u64, Point)> {
        let fine_from = self.fine.iter().next().map(|(t, _)| t).unwrap_or(u64::MAX);
        let mut out: Vec<(u64, u64, Point)> = self
            .coarse
            .iter()
            .filter(|(t, _)| t + COARSE_STEP_MS <= fine_from)
            .map(|(t, p)| (t, COARSE_STEP_MS, p))
            .collect();
        out.extend(self.fine.iter().map(|(t, p)| (t, FINE_STEP_MS, p)));
        out
    }

    pub fn heap_bytes(&self) -> usize {
        self.fine.heap_bytes() + self.coarse.heap_bytes()
    }
}

/// The history of every path.
#[derive(Debug, Default)]
pub struct History {
    pub paths: HashMap<PathKey, PathHistory>,
    /// End of the last fine and coarse periods sampled.
    fine_done_ms: u64,
    coarse_done_ms: u64,
}

/// A period end due for sampling at `now`, if after `done`.
fn due(now_ms: u64, step_ms: u64, done_ms: u64) -> Option<u64> {
    let settled = now_ms.checked_sub(SETTLE_MS)?;
    let end = settled - settled % step_ms;
    (end > done_ms && end >= step_ms).then_some(end)
}

/// What one sampling step read from the store (taken under the store's lock).
pub type Samples = Vec<(PathKey, Option<Point>, Option<Point>)>;

/// The ends of the fine and coarse periods to sample now, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub fine: Option<u64>,
    pub coarse: Option<u64>,
}

/// Paths read per hold of the store's lock by [`read_chunked`]: a few milliseconds.
pub const READ_CHUNK: usize = 1_000;

/// Read the periods `due` from the store (the history's lock is not needed, so the two
/// are never held together).
pub fn read(store: &Store, due: Due) -> Samples {
    if due.fine.is_none() && due.coarse.is_none() {
        return Vec::new();
    }
    store
        .paths
        .iter()
        .map(|(k, st)| sample(k.clone(), &st.windows, st.jitter_us, due))
        .collect()
}

/// [`read`], for a blocking thread: [`READ_CHUNK`] paths' windows copied per hold of the
/// store's lock, their points computed with the lock free (read whole under the lock,
/// 100,000 paths held it about a second, with ingest waiting on the async workers). A
/// path that arrives in between may be missed for this period, like one that arrives after.
pub fn read_chunked(store: &SharedStore, due: Due) -> Samples {
    use std::ops::Bound::{Excluded, Unbounded};
    let mut out = Samples::new();
    if due.fine.is_none() && due.coarse.is_none() {
        return out;
    }
    loop {
        let chunk: Vec<(PathKey, PathWindows, Option<f64>)> = {
            let st = store.lock().unwrap_or_else(|e| e.into_inner());
            let from = out.last().map_or(Unbounded, |(k, _, _)| Excluded(k));
            st.paths
                .range((from, Unbounded))
                .take(READ_CHUNK)
                .map(|(k, p)| (k.clone(), p.windows.clone(), p.jitter_us))
                .collect()
        };
        let done = chunk.len() < READ_CHUNK;
        out.extend(
            chunk
                .into_iter()
                .map(|(k, w, jitter)| sample(k, &w, jitter, due)),
        );
        if done {
            return out;
        }
    }
}

/// One path's points of the due periods.
fn sample(
    k: PathKey,
    w: &PathWindows,
    jitter_us: Option<f64>,
    due: Due,
) -> (PathKey, Option<Point>, Option<Point>) {
    let at = |end: Option<u64>, step: u64| {
        end.map(|e| Point::from_view(&w.range(e - step, e), jitter_us))
    };
    (
        k,
        at(due.fine, FINE_STEP_MS),
        at(due.coarse, COARSE_STEP_MS),
    )
}

impl History {
    /// The periods due for sampling at `now`.
    pub fn due(&self, now_ms: u64) -> Due {
        Due {
            fine: due(now_ms, FINE_STEP_MS, self.fine_done_ms),
            coarse: due(now_ms, COARSE_STEP_MS, self.coarse_done_ms),
        }
    }

    /// Record what [`read`] returned for `due`; drop paths silent for the whole hour.
    pub fn record(&mut self, due: Due, samples: Samples) {
        for (key, f, c) in samples {
            let h = self.paths.entry(key).or_default();
            if let (Some(end), Some(p)) = (due.fine, f) {
                h.fine.push(end - FINE_STEP_MS, p);
            }
            if let (Some(end), Some(p)) = (due.coarse, c) {
                h.coarse.push(end - COARSE_STEP_MS, p);
            }
        }
        if let Some(e) = due.fine {
            self.fine_done_ms = self.fine_done_ms.max(e);
        }
        if let Some(e) = due.coarse {
            self.coarse_done_ms = self.coarse_done_ms.max(e);
            self.paths
                .retain(|_, h| !(h.coarse.all_empty() && h.fine.all_empty()));
        }
    }

    /// Sample at `now`: [`due`](Self::due), [`read`] and [`record`](Self::record).
    pub fn sample(&mut self, store: &Store, now_ms: u64) {
        let due = self.due(now_ms);
        let samples = read(store, due);
        self.record(due, samples);
    }

    pub fn heap_bytes(&self) -> usize {
        self.paths.capacity()
            * (std::mem::size_of::<PathKey>() + std::mem::size_of::<PathHistory>())
            + self
                .paths
                .values()
                .map(PathHistory::heap_bytes)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pathpulse_wire::{AgentHealth, PathReport, Report};

    #[test]
    fn encoding_keeps_four_significant_digits() {
        for v in [0u64, 1, 3, 17, 999, 1_234, 45_678, 1_000_000, 59_999_999] {
            let back = decode_us(encode_us(Some(v as f64))).expect("some");
            let err = (back as f64 - v as f64).abs() / (v as f64).max(1.0);
            assert!(err < 2e-4, "{v} -> {back}");
        }
        assert_eq!(decode_us(encode_us(None)), None);
        assert!(decode_us(encode_us(Some(1e12))).is_some(), "saturates");
    }

    #[test]
    fn ring_fills_gaps_and_stays_bounded() {
        let mut r = Ring::new(10, 5);
        let p = |n: u16| Point {
            received: n,
            ..Point::default()
        };
        r.push(100, p(1));
        r.push(130, p(2));
        r.push(130, p(9)); // same period again: ignored
        let got: Vec<(u64, u64)> = r.iter().map(|(t, p)| (t, p.received())).collect();
        assert_eq!(got, [(100, 1), (110, 0), (120, 0), (130, 2)]);
        for i in 0..20 {
            r.push(140 + i * 10, p(3));
        }
        assert_eq!(r.iter().count(), 5);
        assert_eq!(r.iter().next().map(|(t, _)| t), Some(290));
        r.push(10_000, p(4)); // a long outage: the ring holds only empty points before it
        assert_eq!(r.iter().filter(|(_, p)| !p.is_empty()).count(), 1);
    }

    fn report(start_ms: u64, rtts: &[u64], lost: u32) -> Report {
        let mut p = PathReport {
            dst: "127.0.0.2".into(),
            lost,
            jitter_us: Some(40),
            ..Default::default()
        };
        for &v in rtts {
            p.rtt.record(v);
            p.received += 1;
        }
        p.sent = p.received + lost;
        Report {
            seq: 0,
            agent: "a".into(),
            interval_start_ms: start_ms,
            interval_ms: 5_000,
            paths: vec![p],
            health: AgentHealth::default(),
        }
    }

    #[test]
    fn an_hour_of_samples_gives_coarse_then_fine_points() {
        let mut store = Store::new(15_000);
        let mut h = History::default();
        let t0 = 1_800_000_000_000u64; // a whole hour
        for i in 0..(75 * 12) {
            let start = t0 + i * 5_000;
            let rtt = 1_000 + (i / 12) * 10; // 10 µs more per minute
            store.apply(
                &report(start, &[rtt, rtt * 2], u32::from(i % 4 == 0)),
                start + 5_000,
            );
            h.sample(&store, start + 5_000);
        }
        let ph = h.paths.values().next().expect("one path");
        let pts = ph.points();
        let fine: Vec<_> = pts.iter().filter(|p| p.1 == FINE_STEP_MS).collect();
        let coarse: Vec<_> = pts.iter().filter(|p| p.1 == COARSE_STEP_MS).collect();
        assert_eq!(fine.len(), FINE_LEN);
        assert!((48..=50).contains(&coarse.len()), "{}", coarse.len());
        assert!(pts.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "ordered");
        let span = pts.last().map(|p| p.0 + p.1).unwrap_or(0) - pts[0].0;
        assert!((3_540_000..=3_660_000).contains(&span), "{span}");
        // A fine point: two reports (4 replies, p50 = the smaller RTT), loss 1 in 2 reports
        // of every 4.
        let (_, _, p) = fine[fine.len() - 1];
        assert_eq!(p.received(), 4);
        let q = p.quantiles_us();
        let min = q[0].expect("min");
        assert!(q[3].expect("p50") <= 2 * min && q[6].expect("p99") >= 2 * min - 2);
        assert_eq!(p.jitter_us(), Some(40));
        let (_, _, c) = coarse[0];
        assert_eq!((c.received(), c.lost()), (24, 3));
        assert!(ph.heap_bytes() <= 2_400, "{}", ph.heap_bytes());
    }

    /// A small deterministic generator (xorshift), so the tests need no seed crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A period of `n` replies at `base_us` plus up to `spread_us` of jitter, a loss in 50.
    fn period(rng: &mut Rng, n: u64, base_us: u64, spread_us: u64) -> Point {
        let mut v = WindowView::default();
        for _ in 0..n {
            if rng.next().is_multiple_of(50) {
                v.lost += 1;
            } else {
                v.hist.record(base_us + rng.next() % spread_us.max(1));
                v.received += 1;
            }
        }
        Point::from_view(&v, Some((spread_us / 3) as f64 + (rng.next() % 20) as f64))
    }

    #[test]
    fn a_ring_is_80_bytes_and_its_changes() {
        assert_eq!(std::mem::size_of::<Ring>(), 80);
    }

    #[test]
    fn packed_rings_give_back_every_point_pushed() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut r = Ring::new(10, 60);
        let mut model: std::collections::VecDeque<(u64, Point)> = Default::default();
        let mut t = 0;
        for i in 0..500u64 {
            // Extremes next to ordinary points: empty periods, saturated codes, outages.
            let p = match rng.next() % 8 {
                0 => Point::default(),
                1 => Point {
                    quantiles: [0, 1, 2, NONE - 1, NONE - 1, NONE, 3],
                    received: u16::MAX,
                    lost: 0,
                    jitter: NONE,
                },
                _ => {
                    let (n, base) = (1 + rng.next() % 200, 1 + rng.next() % 80_000);
                    period(&mut rng, n, base, 1 + i * 97)
                }
            };
            let gap = if rng.next().is_multiple_of(10) {
                1 + rng.next() % 5
            } else {
                1
            };
            for _ in 1..gap {
                t += 10;
                model.push_back((t, Point::default()));
            }
            t += 10;
            model.push_back((t, p));
            while model.len() > 60 {
                model.pop_front();
            }
            r.push(t, p);
            let got: Vec<(u64, Point)> = r.iter().collect();
            assert_eq!(got, Vec::from(model.clone()), "after push {i}");
        }
    }

    #[test]
    fn a_steady_paths_points_take_about_half_their_size_packed() {
        // The loadgen's paths: 5 replies a second within 500 µs of their RTT; a 10 s fine
        // point has 50, a 1 min coarse point 300.
        let mut rng = Rng(7);
        let mut ph = PathHistory::default();
        for i in 0..FINE_LEN as u64 {
            ph.fine
                .push(i * FINE_STEP_MS, period(&mut rng, 50, 20_000, 500));
        }
        for i in 0..COARSE_LEN as u64 {
            ph.coarse
                .push(i * COARSE_STEP_MS, period(&mut rng, 300, 20_000, 500));
        }
        let per_point = ph.heap_bytes() as f64 / (FINE_LEN + COARSE_LEN) as f64;
        eprintln!("steady path: {per_point:.1} bytes a point packed, 20 whole");
        assert!(per_point <= 13.0, "{per_point}");
        // A wide one (Wi-Fi: 2 to 60 ms) costs more but stays under the whole points.
        let mut wide = PathHistory::default();
        for i in 0..FINE_LEN as u64 {
            wide.fine
                .push(i * FINE_STEP_MS, period(&mut rng, 50, 2_000, 58_000));
        }
        let per_point = wide.heap_bytes() as f64 / FINE_LEN as f64;
        eprintln!("wide path: {per_point:.1} bytes a point packed");
        assert!(per_point < 20.0, "{per_point}");
    }

    #[test]
    fn a_chunked_read_is_the_read_in_one() {
        let store = Store::new(15_000);
        let shared: SharedStore = std::sync::Arc::new(std::sync::Mutex::new(store));
        let t0 = 1_800_000_000_000u64;
        {
            let mut st = shared.lock().expect("lock");
            for a in 0..(2 * READ_CHUNK + 7) {
                let mut r = report(t0, &[1_000 + a as u64, 2_000], u32::from(a % 3 == 0));
                r.agent = format!("agent-{a:05}");
                st.apply(&r, t0 + 5_000);
            }
        }
        let due = Due {
            fine: Some(t0 + FINE_STEP_MS),
            coarse: Some(t0 + COARSE_STEP_MS),
        };
        let whole = read(&shared.lock().expect("lock"), due);
        let chunked = read_chunked(&shared, due);
        assert_eq!(whole.len(), 2 * READ_CHUNK + 7);
        assert_eq!(chunked, whole);
        assert!(
            whole
                .iter()
                .all(|(_, f, c)| f.is_some_and(|p| p.received() == 2)
                    && c.is_some_and(|p| p.received() == 2))
        );
    }

    #[test]
    fn memory_for_a_200_agent_mesh() {
        // 40,000 full histories of steady paths: the figure quoted in the module docs and
        // the README.
        let mut rng = Rng(11);
        let mut h = History::default();
        for i in 0..40_000u32 {
            let key = PathKey {
                src: format!("agent-{}", i / 200).into(),
                dst: format!("10.0.{}.{}", i / 200, i % 200).into(),
                probe: pathpulse_wire::ProbeKind::Icmp,
            };
            let base = 1_000 + rng.next() % 40_000;
            let mut ph = PathHistory::default();
            let pts: Vec<Point> = (0..8).map(|_| period(&mut rng, 50, base, 500)).collect();
            for j in 0..FINE_LEN.max(COARSE_LEN) as u64 {
                let p = pts[(rng.next() % 8) as usize];
                ph.fine.push(j * FINE_STEP_MS, p);
                ph.coarse.push(j * COARSE_STEP_MS, p);
            }
            h.paths.insert(key, ph);
        }
        let mb = h.heap_bytes() as f64 / 1e6;
        eprintln!("history of 40,000 paths: {mb:.1} MB");
        assert!(mb < 70.0, "{mb} MB");
    }
}
