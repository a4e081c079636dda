//! The last hour of every path for the smoke graph: bounded rings of RTT quantiles, loss
//! and jitter, sampled from the store's windows. Pure: `now` is an argument.
//!
//! Two tiers, each exact (quantiles are taken from merged histograms, never averaged):
//! the last 10 min in 10 s points and the last hour in 1 min points. A point is 20 bytes
//! (values log-encoded in 16 bits, 0.014% resolution), a path 120 points: 2.4 KB, 2.6 KB
//! with its map entry, so 40,000 paths (a 200-agent full mesh) take about 105 MB (measured
//! by `memory_for_a_200_agent_mesh`).

use std::collections::{HashMap, VecDeque};

use pathpulse_metrics::Store;
use pathpulse_metrics::store::PathKey;
use pathpulse_metrics::window::WindowView;

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
#[derive(Debug, Clone)]
pub struct Ring {
    step_ms: u64,
    len: usize,
    /// Start of the newest point.
    newest_ms: u64,
    points: VecDeque<Point>,
}

impl Ring {
    pub fn new(step_ms: u64, len: usize) -> Ring {
        Ring {
            step_ms,
            len,
            newest_ms: 0,
            points: VecDeque::with_capacity(len),
        }
    }

    /// Add the point of the period starting at `start_ms`; missed periods become empty
    /// points, a period at or before the newest is ignored.
    pub fn push(&mut self, start_ms: u64, p: Point) {
        if !self.points.is_empty() {
            if start_ms <= self.newest_ms {
                return;
            }
            let gap = ((start_ms - self.newest_ms) / self.step_ms).saturating_sub(1);
            for _ in 0..gap.min(self.len as u64) {
                self.append(Point::default());
            }
        }
        self.append(p);
        self.newest_ms = start_ms;
    }

    fn append(&mut self, p: Point) {
        if self.points.len() == self.len {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    /// `(start_ms, point)`, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Point)> {
        let n = self.points.len() as u64;
        let first = self
            .newest_ms
            .saturating_sub(n.saturating_sub(1) * self.step_ms);
        self.points
            .iter()
            .enumerate()
            .map(move |(i, p)| (first + i as u64 * self.step_ms, p))
    }

    pub fn step_ms(&self) -> u64 {
        self.step_ms
    }

    fn all_empty(&self) -> bool {
        self.points.iter().all(Point::is_empty)
    }

    pub fn heap_bytes(&self) -> usize {
        self.points.capacity() * std::mem::size_of::<Point>()
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
            .map(|(t, p)| (t, COARSE_STEP_MS, *p))
            .collect();
        out.extend(self.fine.iter().map(|(t, p)| (t, FINE_STEP_MS, *p)));
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

/// Read the periods `due` from the store (cheap enough to hold its lock; the history's
/// lock is not needed, so the two are never held together).
pub fn read(store: &Store, due: Due) -> Samples {
    if due.fine.is_none() && due.coarse.is_none() {
        return Vec::new();
    }
    store
        .paths
        .iter()
        .map(|(k, st)| {
            let at = |end: Option<u64>, step: u64| {
                end.map(|e| Point::from_view(&st.windows.range(e - step, e), st.jitter_us))
            };
            (
                k.clone(),
                at(due.fine, FINE_STEP_MS),
                at(due.coarse, COARSE_STEP_MS),
            )
        })
        .collect()
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

    #[test]
    fn memory_for_a_200_agent_mesh() {
        // 40,000 full histories: the figure quoted in the module docs and the README.
        let mut h = History::default();
        let full = {
            let mut ph = PathHistory::default();
            for i in 0..FINE_LEN as u64 {
                ph.fine.push(i * FINE_STEP_MS, Point::default());
            }
            for i in 0..COARSE_LEN as u64 {
                ph.coarse.push(i * COARSE_STEP_MS, Point::default());
            }
            ph
        };
        for i in 0..40_000u32 {
            let key = PathKey {
                src: format!("agent-{}", i / 200).into(),
                dst: format!("10.0.{}.{}", i / 200, i % 200).into(),
                probe: pathpulse_wire::ProbeKind::Icmp,
            };
            h.paths.insert(key, full.clone());
        }
        let mb = h.heap_bytes() as f64 / 1e6;
        eprintln!("history of 40,000 paths: {mb:.1} MB");
        assert!(mb < 110.0, "{mb} MB");
    }
}
