//! Per-agent rate limits: a token bucket per agent identity (the certificate's name) for
//! reports and one for registrations (hellos). A legitimate agent sends one report per
//! interval and a hello per connection or replayed session, far below the defaults; the
//! burst lets a replay after a long outage through at full speed. Beyond it the frame is
//! refused with `RateLimited` (counted in `pathpulse_ingest_refused_total{reason=
//! "rate_limited"}`); the agent keeps a refused report in its spool and sends it again
//! after its backoff, so a limit slows a sender down and loses nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Sustained rate and burst of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// Reports per agent: 20/s sustained, 600 at once (a 50-minute outage at 5 s reports).
pub const DEFAULT_REPORTS: Rate = Rate {
    per_second: 20.0,
    burst: 600.0,
};
/// Registrations (hellos) per agent: 10 a minute sustained, 20 at once.
pub const DEFAULT_REGISTRATIONS: Rate = Rate {
    per_second: 10.0 / 60.0,
    burst: 20.0,
};

/// Buckets kept before idle (full) ones are forgotten.
const PRUNE_ABOVE: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per key.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate.per_second).min(self.rate.burst);
        b.at = now;
    }

    /// Take one token for `key`: `false` when its bucket is empty.
    pub fn allow(&self, key: &str, now: Instant) -> bool {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, b| {
                self.refill(b, now);
                b.tokens < self.rate.burst
            });
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.rate.burst,
            at: now,
        });
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The ingest's limits.
#[derive(Debug)]
pub struct Limits {
    pub reports: Limiter,
    pub registrations: Limiter,
}

impl Limits {
    pub fn new(reports: Rate, registrations: Rate) -> Limits {
        Limits {
            reports: Limiter::new(reports),
            registrations: Limiter::new(registrations),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_per_key() {
        let l = Limiter::new(Rate {
            per_second: 2.0,
            burst: 5.0,
        });
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| l.allow("a", t0)).count(), 5, "the burst");
        assert!(l.allow("b", t0), "another agent has its own bucket");
        assert!(!l.allow("a", t0 + Duration::from_millis(400)));
        assert!(l.allow("a", t0 + Duration::from_millis(500)), "2/s refills");
        // Ten seconds at 1/s, under the 2/s rate: never refused.
        let t1 = t0 + Duration::from_secs(60);
        assert!((0..10).all(|i| l.allow("a", t1 + Duration::from_secs(i))));
    }

    #[test]
    fn idle_buckets_are_forgotten_beyond_the_bound() {
        let l = Limiter::new(Rate {
            per_second: 1.0,
            burst: 1.0,
        });
        let t0 = Instant::now();
        for i in 0..=PRUNE_ABOVE + 1 {
            l.allow(&format!("k{i}"), t0);
        }
        l.allow("late", t0 + Duration::from_secs(5));
        let n = l.buckets.lock().expect("lock").len();
        assert!(n <= 2, "{n} buckets kept");
    }
}
