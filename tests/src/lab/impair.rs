//! Impairment models of the link emulator, pure and seeded: what happens to one packet
//! in one direction (dropped, delayed by how much, duplicated), given the time it arrived.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// Delay distribution (one way).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Delay {
    #[default]
    None,
    Constant {
        ms: f64,
    },
    /// Uniform in `mean ± spread`.
    Uniform {
        mean_ms: f64,
        spread_ms: f64,
    },
    /// Normal with mean and standard deviation, clamped at 0.
    Normal {
        mean_ms: f64,
        sd_ms: f64,
    },
}

/// Loss model.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    #[default]
    None,
    /// Each packet lost independently with probability `p`.
    Bernoulli { p: f64 },
    /// Gilbert-Elliott: good→bad with `p`, bad→good with `r`, loss probability
    /// `loss_good` in the good state and `loss_bad` in the bad state.
    GilbertElliott {
        p: f64,
        r: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

/// Everything applied to one direction.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Impairment {
    pub delay: Delay,
    pub loss: Loss,
    /// Probability that a forwarded packet is sent twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_gap_ms` more (so later packets
    /// overtake it).
    pub reorder: f64,
    pub reorder_gap_ms: f64,
    /// Rate limit in bits per second (0 = none): packets queue behind each other.
    pub rate_bps: u64,
}

/// The decision for one packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub dropped: bool,
    /// Departure offsets from arrival: one per copy sent (two when duplicated).
    pub delays: Vec<Duration>,
    pub reordered: bool,
}

/// One direction's state: the model, its RNG and the Gilbert-Elliott and rate state.
#[derive(Debug)]
pub struct Direction {
    pub imp: Impairment,
    rng: StdRng,
    bad_state: bool,
    /// When the rate limiter's line is free again, as an offset on the caller's clock.
    line_free_at: Duration,
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64((v.max(0.0)) / 1000.0)
}

impl Direction {
    pub fn new(imp: Impairment, seed: u64) -> Self {
        Direction {
            imp,
            rng: StdRng::seed_from_u64(seed),
            bad_state: false,
            line_free_at: Duration::ZERO,
        }
    }

    fn one_delay(&mut self) -> Duration {
        match self.imp.delay {
            Delay::None => Duration::ZERO,
            Delay::Constant { ms: v } => ms(v),
            Delay::Uniform { mean_ms, spread_ms } => {
                ms(mean_ms + self.rng.random_range(-1.0..=1.0) * spread_ms)
            }
            Delay::Normal { mean_ms, sd_ms } => {
                // Box-Muller.
                let (u1, u2): (f64, f64) =
                    (self.rng.random_range(f64::EPSILON..1.0), self.rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                ms(mean_ms + z * sd_ms)
            }
        }
    }

    fn lost(&mut self) -> bool {
        match self.imp.loss {
            Loss::None => false,
            Loss::Bernoulli { p } => self.rng.random_bool(p.clamp(0.0, 1.0)),
            Loss::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad_state { r } else { p };
                if self.rng.random_bool(flip.clamp(0.0, 1.0)) {
                    self.bad_state = !self.bad_state;
                }
                let l = if self.bad_state { loss_bad } else { loss_good };
                self.rng.random_bool(l.clamp(0.0, 1.0))
            }
        }
    }

    /// Decide for a packet of `len` bytes arriving at `now` (an offset on a monotonic clock).
    pub fn decide(&mut self, now: Duration, len: usize) -> Decision {
        if self.lost() {
            return Decision {
                dropped: true,
                delays: vec![],
                reordered: false,
            };
        }
        let mut d = self.one_delay();
        if self.imp.rate_bps > 0 {
            let tx = Duration::from_secs_f64(len as f64 * 8.0 / self.imp.rate_bps as f64);
            let start = self.line_free_at.max(now);
            self.line_free_at = start + tx;
            d += self.line_free_at - now;
        }
        let reordered =
            self.imp.reorder > 0.0 && self.rng.random_bool(self.imp.reorder.clamp(0.0, 1.0));
        if reordered {
            d += ms(self.imp.reorder_gap_ms);
        }
        let mut delays = vec![d];
        if self.imp.duplicate > 0.0 && self.rng.random_bool(self.imp.duplicate.clamp(0.0, 1.0)) {
            delays.push(d);
        }
        Decision {
            dropped: false,
            delays,
            reordered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bernoulli_loss_rate_is_close_to_p() {
        let mut d = Direction::new(
            Impairment {
                loss: Loss::Bernoulli { p: 0.2 },
                ..Default::default()
            },
            1,
        );
        let lost = (0..100_000)
            .filter(|_| d.decide(Duration::ZERO, 84).dropped)
            .count();
        assert!((19_500..=20_500).contains(&lost), "{lost}");
    }

    #[test]
    fn gilbert_elliott_loses_in_bursts() {
        let imp = Impairment {
            loss: Loss::GilbertElliott {
                p: 0.01,
                r: 0.2,
                loss_good: 0.0,
                loss_bad: 1.0,
            },
            ..Default::default()
        };
        let mut d = Direction::new(imp, 2);
        let outcomes: Vec<bool> = (0..200_000)
            .map(|_| d.decide(Duration::ZERO, 84).dropped)
            .collect();
        let lost = outcomes.iter().filter(|l| **l).count() as f64 / outcomes.len() as f64;
        // Stationary bad-state share p / (p + r) = 0.0476.
        assert!((0.04..0.056).contains(&lost), "{lost}");
        let bursts = outcomes.windows(2).filter(|w| !w[0] && w[1]).count() as f64;
        let mean_burst = outcomes.iter().filter(|l| **l).count() as f64 / bursts;
        assert!(
            (4.0..6.0).contains(&mean_burst),
            "mean burst {mean_burst}, expected 1/r = 5"
        );
    }

    #[test]
    fn delays_follow_their_distribution() {
        let imp = Impairment {
            delay: Delay::Uniform {
                mean_ms: 20.0,
                spread_ms: 5.0,
            },
            ..Default::default()
        };
        let mut d = Direction::new(imp, 3);
        let v: Vec<f64> = (0..20_000)
            .map(|_| d.decide(Duration::ZERO, 84).delays[0].as_secs_f64() * 1000.0)
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 20.0).abs() < 0.1, "{mean}");
        assert!(v.iter().all(|x| (15.0..=25.0).contains(x)));
        let imp = Impairment {
            delay: Delay::Normal {
                mean_ms: 10.0,
                sd_ms: 2.0,
            },
            ..Default::default()
        };
        let mut d = Direction::new(imp, 4);
        let v: Vec<f64> = (0..20_000)
            .map(|_| d.decide(Duration::ZERO, 84).delays[0].as_secs_f64() * 1000.0)
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(
            (mean - 10.0).abs() < 0.1 && (sd - 2.0).abs() < 0.1,
            "{mean} {sd}"
        );
    }

    #[test]
    fn duplication_reordering_and_rate_limit() {
        let imp = Impairment {
            duplicate: 0.1,
            reorder: 0.05,
            reorder_gap_ms: 7.0,
            ..Default::default()
        };
        let mut d = Direction::new(imp, 5);
        let ds: Vec<Decision> = (0..10_000).map(|_| d.decide(Duration::ZERO, 84)).collect();
        let dups = ds.iter().filter(|x| x.delays.len() == 2).count();
        let reord = ds.iter().filter(|x| x.reordered).count();
        assert!(
            (900..1100).contains(&dups) && (400..600).contains(&reord),
            "{dups} {reord}"
        );
        assert!(
            ds.iter()
                .filter(|x| x.reordered)
                .all(|x| x.delays[0] == Duration::from_millis(7))
        );
        // 1 Mbit/s: a 1250-byte packet takes 10 ms on the line; back-to-back ones queue.
        let mut d = Direction::new(
            Impairment {
                rate_bps: 1_000_000,
                ..Default::default()
            },
            6,
        );
        let a = d.decide(Duration::ZERO, 1250).delays[0];
        let b = d.decide(Duration::ZERO, 1250).delays[0];
        assert_eq!(
            (a, b),
            (Duration::from_millis(10), Duration::from_millis(20))
        );
    }

    #[test]
    fn same_seed_same_decisions() {
        let imp = Impairment {
            delay: Delay::Normal {
                mean_ms: 5.0,
                sd_ms: 1.0,
            },
            loss: Loss::Bernoulli { p: 0.3 },
            ..Default::default()
        };
        let (mut a, mut b) = (Direction::new(imp, 9), Direction::new(imp, 9));
        for _ in 0..1000 {
            assert_eq!(a.decide(Duration::ZERO, 84), b.decide(Duration::ZERO, 84));
        }
    }
}
