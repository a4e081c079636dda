//! Measurement statistics as pure functions.

/// z for a two-sided 95% confidence interval.
pub const Z95: f64 = 1.959_963_984_540_054;
/// z for a two-sided 99% interval.
pub const Z99: f64 = 2.575_829_303_548_901;

/// Loss ratio `lost / (received + lost)`, `None` when nothing was decided.
pub fn loss_ratio(lost: u64, received: u64) -> Option<f64> {
    let n = lost + received;
    (n > 0).then(|| lost as f64 / n as f64)
}

/// Wilson score interval for a binomial proportion: `(lower, upper)` bounds of the loss
/// ratio at confidence `z`. Unlike the normal approximation it behaves at 0 and at 1,
/// which is where loss usually is. `None` when `n == 0`.
pub fn wilson_interval(lost: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let n_f = n as f64;
    let p = lost as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = z * ((p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt()) / denom;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// RFC 3550 interarrival jitter, updated per consecutive pair of replies:
/// `J += (|D| - J) / 16` with `D` the difference of transit times (here: of RTTs, which
/// is the same difference because both probes share the sender's clock).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rfc3550Jitter {
    jitter_us: f64,
    last_rtt_us: Option<u64>,
    defined: bool,
}

impl Rfc3550Jitter {
    pub fn update(&mut self, rtt_us: u64) {
        if let Some(prev) = self.last_rtt_us {
            let d = (rtt_us as f64 - prev as f64).abs();
            self.jitter_us += (d - self.jitter_us) / 16.0;
            self.defined = true;
        }
        self.last_rtt_us = Some(rtt_us);
    }

    /// Current estimate in microseconds, `None` before two samples.
    pub fn value_us(&self) -> Option<f64> {
        self.defined.then_some(self.jitter_us)
    }
}

/// The smallest loss ratio that `n` probes detect with confidence `confidence` (e.g. 0.95):
/// a path losing less than this shows zero losses more often than `1 - confidence` of the
/// time. Solves `(1 - p)^n = 1 - confidence` (about 3/n at 95%, the "rule of three").
pub fn min_detectable_loss(n: u64, confidence: f64) -> Option<f64> {
    (n > 0).then(|| 1.0 - (1.0 - confidence).powf(1.0 / n as f64))
}

/// Simplified ITU-T G.107 E-model used by VoIP monitors: one-way latency and jitter in ms,
/// loss as a ratio. Effective latency EL = latency + 2 jitter + 10 ms; R = 93.2 - EL/40
/// below 160 ms, else 93.2 - (EL - 120)/10; R -= 2.5 per percent lost; clamped to 0..100;
/// MOS = 1 + 0.035 R + 7e-6 R (R - 60) (100 - R).
pub fn mos(latency_ms: f64, jitter_ms: f64, loss: f64) -> f64 {
    let el = latency_ms + 2.0 * jitter_ms + 10.0;
    let mut r = if el < 160.0 {
        93.2 - el / 40.0
    } else {
        93.2 - (el - 120.0) / 10.0
    };
    r -= 2.5 * loss * 100.0;
    let r = r.clamp(0.0, 100.0);
    1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mos_matches_hand_computed_e_model_values() {
        // EL 10 ms: R 92.95, MOS 4.404. EL 210 ms: R 84.2, MOS 4.172. 5% loss: R 80.45.
        assert!(
            (mos(0.0, 0.0, 0.0) - 4.4044).abs() < 1e-3,
            "{}",
            mos(0.0, 0.0, 0.0)
        );
        assert!(
            (mos(190.0, 5.0, 0.0) - 4.1724).abs() < 1e-3,
            "{}",
            mos(190.0, 5.0, 0.0)
        );
        let r = 92.95 - 12.5;
        let want = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r);
        assert!((mos(0.0, 0.0, 0.05) - want).abs() < 1e-9);
        assert!(
            (mos(5_000.0, 500.0, 1.0) - 1.0).abs() < 1e-9,
            "R clamps at 0: MOS 1"
        );
        assert!(mos(20.0, 1.0, 0.0) > mos(20.0, 10.0, 0.0), "jitter hurts");
    }

    #[test]
    fn detectable_loss_follows_the_rule_of_three() {
        let p = min_detectable_loss(300, 0.95).expect("n > 0");
        assert!((p - 3.0 / 300.0).abs() < 0.0005, "{p}");
        assert!((1.0 - p).powi(300) - 0.05 < 1e-9);
        assert_eq!(min_detectable_loss(0, 0.95), None);
        assert!(
            min_detectable_loss(10, 0.95).expect("n") > min_detectable_loss(6000, 0.95).expect("n")
        );
    }

    #[test]
    fn wilson_matches_published_values() {
        // Reference: Newcombe (1998), 95% interval for 0/10 is 0 .. 0.2775; for 1/10 it is
        // 0.0179 .. 0.4042; for 81/263 it is 0.2553 .. 0.3662.
        let (lo, hi) = wilson_interval(0, 10, Z95).expect("n > 0");
        assert!(lo.abs() < 1e-12 && (hi - 0.2775).abs() < 5e-4, "{lo} {hi}");
        let (lo, hi) = wilson_interval(1, 10, Z95).expect("n > 0");
        assert!(
            (lo - 0.0179).abs() < 5e-4 && (hi - 0.4042).abs() < 5e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson_interval(81, 263, Z95).expect("n > 0");
        assert!(
            (lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4,
            "{lo} {hi}"
        );
        assert_eq!(wilson_interval(0, 0, Z95), None);
        let (lo, hi) = wilson_interval(10, 10, Z95).expect("n > 0");
        assert!(hi <= 1.0 && lo > 0.69, "{lo} {hi}");
    }

    #[test]
    fn jitter_converges_to_mean_absolute_difference() {
        let mut j = Rfc3550Jitter::default();
        assert_eq!(j.value_us(), None);
        // Alternating 1000 / 1400 µs: |D| = 400 every time, J -> 400.
        for i in 0..400 {
            j.update(if i % 2 == 0 { 1000 } else { 1400 });
        }
        let v = j.value_us().expect("defined");
        assert!((v - 400.0).abs() < 1.0, "{v}");
        // Constant RTT: jitter decays toward 0 but stays defined.
        for _ in 0..400 {
            j.update(1000);
        }
        assert!(j.value_us().expect("defined") < 1.0);
    }

    #[test]
    fn loss_ratio_edges() {
        assert_eq!(loss_ratio(0, 0), None);
        assert_eq!(loss_ratio(1, 3), Some(0.25));
    }
}

/// Does a hop's loss come from the router rate-limiting its ICMP errors rather than from
/// the path? Routers answer TTL-expired probes from their slow path, at a limited rate;
/// packets that pass through them are not affected. So loss at a hop that the hops after
/// it (and the target) do not show is the router's, not the path's. Judged on counts
/// (lost, probes), not ratios, because hops are probed about once a second: true when the
/// hop loses at least 10% and the lower end of its 99% Wilson interval lies above the
/// upper end of the best later hop's (99%, not 95%: the best of several later hops is
/// compared, and a false verdict hides real loss).
pub fn icmp_ratelimited(hop: (u64, u64), best_later: Option<(u64, u64)>) -> bool {
    let (Some((lost, n)), Some((later_lost, later_n))) = (Some(hop), best_later) else {
        return false;
    };
    let (Some((lo, _)), Some((_, later_hi))) = (
        wilson_interval(lost, n, Z99),
        wilson_interval(later_lost, later_n, Z99),
    ) else {
        return false;
    };
    lost as f64 >= 0.10 * n as f64 && lo > later_hi
}

#[cfg(test)]
mod hop_tests {
    use super::icmp_ratelimited;

    #[test]
    fn loss_that_does_not_continue_downstream_is_rate_limiting() {
        assert!(
            icmp_ratelimited((22, 45), Some((0, 45))),
            "half at the hop, none after it"
        );
        assert!(
            !icmp_ratelimited((9, 45), Some((9, 45))),
            "the loss continues: path loss"
        );
        assert!(
            !icmp_ratelimited((12, 36), Some((5, 36))),
            "33% against 14% of 36 probes each: not significantly more"
        );
        assert!(
            !icmp_ratelimited((2, 45), Some((0, 45))),
            "too little to say"
        );
        assert!(
            !icmp_ratelimited((40, 45), None),
            "nothing after it to compare with"
        );
        assert!(!icmp_ratelimited((0, 0), Some((0, 45))), "no probes");
    }
}
