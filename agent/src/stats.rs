//! Per-path statistics of the current report interval, and the jitter that carries over.

use pathpulse_metrics::stats::Rfc3550Jitter;
use std::net::IpAddr;

use pathpulse_wire::{HopReport, HopRole, PathReport, ProbeKind, SparseHist};

/// One hop toward a target: the TTL, who answers there, its role, and the statistics of
/// the TTL-limited probes that expired there.
#[derive(Debug, Clone)]
pub struct HopStats {
    pub ttl: u8,
    pub addr: Option<IpAddr>,
    pub role: HopRole,
    pub stats: PathStats,
}

#[derive(Debug, Clone, Default)]
pub struct PathStats {
    pub dst: String,
    pub probe: Option<ProbeKind>,
    pub sent: u32,
    pub received: u32,
    pub lost: u32,
    pub late: u32,
    pub duplicate: u32,
    pub reordered: u32,
    pub send_errors: u32,
    pub rtt: SparseHist,
    pub rtt_sum_us: u64,
    pub ipdv: SparseHist,
    /// STAMP paths: per-direction counts of the interval (boxed: 64 bytes that every
    /// other path would carry empty).
    pub directional: Option<Box<pathpulse_wire::stamp::Directional>>,
    jitter: Rfc3550Jitter,
    last_rtt_us: Option<u64>,
    /// Since start, for the in-flight count.
    total_sent: u64,
    total_decided: u64,
    /// The last 32 decided probes, newest in bit 0: 1 lost, 0 answered (kept across
    /// reports; see [`PathStats::recent_losses`]).
    outcomes: u32,
    /// The hops toward this target, by TTL (empty: directly connected, or no discovery).
    pub hops: Vec<HopStats>,
    pub route_changes: u32,
}

impl PathStats {
    pub fn new(dst: String, probe: ProbeKind) -> Self {
        PathStats {
            dst,
            probe: Some(probe),
            ..PathStats::default()
        }
    }

    pub fn on_sent(&mut self) {
        self.sent += 1;
        self.total_sent += 1;
    }

    pub fn on_send_error(&mut self) {
        self.send_errors += 1;
    }

    pub fn on_reply(&mut self, rtt_us: u64, reordered: bool) {
        self.received += 1;
        self.total_decided += 1;
        self.outcomes <<= 1;
        self.rtt.record(rtt_us);
        self.rtt_sum_us += rtt_us;
        self.jitter.update(rtt_us);
        if let Some(prev) = self.last_rtt_us {
            self.ipdv.record(rtt_us.abs_diff(prev));
        }
        self.last_rtt_us = Some(rtt_us);
        if reordered {
            self.reordered += 1;
        }
    }

    pub fn on_lost(&mut self) {
        self.lost += 1;
        self.total_decided += 1;
        self.outcomes = self.outcomes << 1 | 1;
    }

    /// Lost probes among the last 30 decided.
    pub fn recent_losses(&self) -> u32 {
        (self.outcomes & ((1 << 30) - 1)).count_ones()
    }

    pub fn on_late(&mut self) {
        self.late += 1;
    }

    pub fn on_duplicate(&mut self) {
        self.duplicate += 1;
    }

    /// The report of the interval that ends now; the interval's counts start again at 0.
    pub fn take_report(&mut self) -> PathReport {
        let mut r = PathReport::default();
        self.take_report_into(&mut r);
        r
    }

    /// As [`PathStats::take_report`], into `r`, the report of an earlier interval that
    /// was used already: its `dst` string and histogram buffers are reused (the
    /// histograms' go back to this path for the next interval), so a steady agent does
    /// not allocate per path and interval.
    pub fn take_report_into(&mut self, r: &mut PathReport) {
        // Every field named: one added later must be placed here, carried or reset.
        let PathStats {
            dst,
            probe,
            sent,
            received,
            lost,
            late,
            duplicate,
            reordered,
            send_errors,
            rtt,
            rtt_sum_us,
            ipdv,
            directional,
            jitter,
            last_rtt_us: _,
            total_sent,
            total_decided,
            outcomes: _,
            hops,
            route_changes,
        } = self;
        r.in_flight = total_sent.saturating_sub(*total_decided) as u32;
        r.rtt.clear();
        std::mem::swap(rtt, &mut r.rtt);
        r.ipdv.clear();
        std::mem::swap(ipdv, &mut r.ipdv);
        r.hops.clear();
        r.hops.extend(hops.iter_mut().map(|h| HopReport {
            ttl: h.ttl,
            addr: h.addr.map(|a| a.to_string()),
            role: Some(h.role),
            stats: h.stats.take_report(),
        }));
        r.dst.clone_from(dst);
        r.probe = *probe;
        r.sent = std::mem::take(sent);
        r.received = std::mem::take(received);
        r.lost = std::mem::take(lost);
        r.late = std::mem::take(late);
        r.duplicate = std::mem::take(duplicate);
        r.reordered = std::mem::take(reordered);
        r.send_errors = std::mem::take(send_errors);
        r.rtt_sum_us = std::mem::take(rtt_sum_us);
        r.jitter_us = jitter.value_us().map(|j| j.round() as u32);
        r.route_changes = std::mem::take(route_changes);
        r.directional = directional.take().map(|d| *d);
    }

    /// Heap plus inline bytes of this path's state (for the memory goal).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.dst.capacity()
            + self.rtt.heap_bytes()
            + self.ipdv.heap_bytes()
            + self.hops.iter().map(|h| h.stats.bytes()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_carries_across_intervals_and_counts_reset() {
        let mut s = PathStats::new("127.0.0.2".into(), ProbeKind::Icmp);
        for _ in 0..3 {
            s.on_sent();
        }
        s.on_reply(100, false);
        let r1 = s.take_report();
        assert_eq!((r1.sent, r1.received, r1.lost, r1.in_flight), (3, 1, 0, 2));
        s.on_lost();
        s.on_reply(140, true);
        let r2 = s.take_report();
        assert_eq!(
            (r2.sent, r2.received, r2.lost, r2.reordered, r2.in_flight),
            (0, 1, 1, 1, 0)
        );
        assert_eq!(r2.jitter_us, Some(3), "(140-100)/16 = 2.5, rounded");
        assert_eq!(r2.rtt.count(), 1);
        assert_eq!(
            r2.ipdv.count(),
            1,
            "one consecutive pair across the interval boundary"
        );
        assert_eq!(r2.ipdv.max(), Some(40));
        assert_eq!(
            r1.sent + r2.sent,
            r1.received + r2.received + r1.lost + r2.lost + r2.in_flight
        );
    }

    #[test]
    fn a_reused_report_equals_a_fresh_one() {
        let mut s = PathStats::new("127.0.0.2".into(), ProbeKind::Icmp);
        let mut reused = PathReport::default();
        for round in 0..3u64 {
            for i in 0..4 {
                s.on_sent();
                s.on_reply(1_000 + round * 500 + i * 37, i == 2);
            }
            s.on_sent();
            s.on_lost();
            s.on_duplicate();
            let mut fresh_source = s.clone();
            let fresh = fresh_source.take_report();
            s.take_report_into(&mut reused);
            assert_eq!(reused, fresh, "round {round}");
            assert_eq!(s.rtt.count(), 0, "the path's histograms start empty");
            assert_eq!((s.sent, s.lost, s.duplicate), (0, 0, 0));
        }
    }

    #[test]
    fn a_path_at_one_probe_per_second_stays_under_2_kb() {
        let mut s = PathStats::new("203.0.113.200".into(), ProbeKind::Icmp);
        for i in 0..5 {
            s.on_sent();
            s.on_reply(10_000 + i * 37, false);
        }
        assert!(s.bytes() < 2048, "{} bytes", s.bytes());
    }
}
