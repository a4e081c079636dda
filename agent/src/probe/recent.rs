//! Decided probes the matcher remembers for a while, to tell a late or duplicate reply from
//! a stray one. At 10,000 probes/s and 10 s of retention that is 100,000 probes, so they
//! are kept in a ring indexed by probe id (ids are handed out in order and decided within
//! the timeout, so the ring stays dense), 28 bytes each: a `HashMap` plus an expiry queue
//! took about 100 bytes per probe.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Upper bound of remembered probes (ids), whatever the retention.
pub const MAX_RECENT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    pub target: u32,
    pub addr: IpAddr,
    pub answered: bool,
    /// When it was decided: ms since the ring's epoch, wrapping (ages are seconds).
    at_ms: u32,
}

#[derive(Debug)]
pub struct Recent {
    epoch: Instant,
    /// Probe id of `ring[0]`.
    base: u64,
    /// `None`: not decided yet (in flight), or never sent by this matcher.
    ring: VecDeque<Option<Decided>>,
}

impl Recent {
    pub fn new(now: Instant) -> Self {
        Recent {
            epoch: now,
            base: 1,
            ring: VecDeque::new(),
        }
    }

    fn ms(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// Remember probe `id` as decided at `at`. Ids already forgotten are ignored.
    pub fn remember(&mut self, id: u64, target: usize, addr: IpAddr, answered: bool, at: Instant) {
        let Some(off) = id.checked_sub(self.base) else {
            return;
        };
        let Ok(off) = usize::try_from(off) else {
            return;
        };
        if off >= MAX_RECENT {
            // Far ahead of the oldest remembered id: forget the oldest to make room.
            let drop = (off + 1 - MAX_RECENT).min(self.ring.len());
            self.ring.drain(..drop);
            self.base += (off + 1 - MAX_RECENT) as u64;
            return self.remember(id, target, addr, answered, at);
        }
        if off >= self.ring.len() {
            self.ring.resize(off + 1, None);
        }
        self.ring[off] = Some(Decided {
            target: target as u32,
            addr,
            answered,
            at_ms: self.ms(at),
        });
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Decided> {
        let off = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.ring.get_mut(off)?.as_mut()
    }

    /// Forget probes decided `retention` ago or earlier. The ring is forgotten from its
    /// oldest id on, so a probe still in flight (`None`) holds back the ones after it for at
    /// most its timeout; `in_flight(id)` tells those from ids that were never decided.
    pub fn expire(&mut self, now: Instant, retention: Duration, in_flight: impl Fn(u64) -> bool) {
        let now_ms = self.ms(now);
        let keep_ms = retention.as_millis().min(u128::from(u32::MAX)) as u32;
        while let Some(front) = self.ring.front() {
            let old = match front {
                Some(d) => now_ms.wrapping_sub(d.at_ms) >= keep_ms,
                None => !in_flight(self.base),
            };
            if !old {
                break;
            }
            self.ring.pop_front();
            self.base += 1;
        }
    }

    /// Give memory back after a burst (see [`crate::probe::matcher::shrunk`]).
    pub fn shrink(&mut self) {
        if let Some(to) = crate::probe::matcher::shrunk(self.ring.len(), self.ring.capacity()) {
            self.ring.shrink_to(to);
        }
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        IpAddr::from([127, 0, 0, 2])
    }

    #[test]
    fn probes_are_remembered_for_the_retention_and_in_flight_ones_hold_the_ring() {
        let t0 = Instant::now();
        let mut r = Recent::new(t0);
        r.remember(2, 7, ip(), true, t0);
        r.remember(3, 8, ip(), false, t0 + Duration::from_secs(1));
        assert!(r.get_mut(1).is_none(), "id 1 still in flight");
        assert_eq!(
            r.get_mut(2).map(|d| (d.target, d.answered)),
            Some((7, true))
        );
        let ret = Duration::from_secs(10);
        // Id 1 in flight: nothing is forgotten, even past the retention.
        r.expire(t0 + Duration::from_secs(12), ret, |id| id == 1);
        assert_eq!(r.len(), 3);
        // Id 1 decided long ago (it is not in flight): 1 and 2 go, 3 stays 10 s.
        r.expire(t0 + Duration::from_secs(10), ret, |_| false);
        assert!(r.get_mut(2).is_none());
        assert!(r.get_mut(3).is_some());
        r.expire(t0 + Duration::from_secs(11), ret, |_| false);
        assert!(r.is_empty());
        // Forgotten ids stay forgotten.
        r.remember(2, 7, ip(), true, t0 + Duration::from_secs(11));
        assert!(r.get_mut(2).is_none());
    }

    #[test]
    fn the_ring_is_bounded() {
        let t0 = Instant::now();
        let mut r = Recent::new(t0);
        r.remember(1, 0, ip(), true, t0);
        r.remember(MAX_RECENT as u64 + 5, 1, ip(), true, t0);
        assert_eq!(r.len(), MAX_RECENT);
        assert!(r.get_mut(1).is_none());
        assert!(r.get_mut(MAX_RECENT as u64 + 5).is_some());
        assert!(std::mem::size_of::<Option<Decided>>() <= 28);
    }
}
