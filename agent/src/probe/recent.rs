//! Decided probes the matcher remembers for a while, to tell a late or duplicate reply from
//! a stray one. At 10,000 probes/s and 10 s of retention that is 100,000 probes, so they
//! are kept in a ring indexed by probe id (ids are handed out in order and decided within
//! the timeout, so the ring stays dense), 12 bytes each: the target and whether it was
//! answered in one word, the address the reply must come from as a 32-bit fingerprint (the
//! IPv4 address itself, a keyed hash of an IPv6 one), and when it was decided. A `HashMap`
//! plus an expiry queue took about 100 bytes per probe, the address in full 28.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::hash::RandomState;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Upper bound of remembered probes (ids), whatever the retention.
pub const MAX_RECENT: usize = 1 << 20;

/// The answered flag in [`Decided::tag`]; the bits below [`CONFIRM`] hold the target index
/// plus one.
const ANSWERED: u32 = 1 << 31;
/// The flag of a confirmation probe in [`Decided::tag`].
const CONFIRM: u32 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// Target index + 1 (so never zero: `Option<Decided>` needs no extra word), and
    /// [`ANSWERED`].
    tag: NonZeroU32,
    /// Fingerprint of the address the probe went to (see [`Recent::fingerprint`]).
    addr: u32,
    /// When it was decided: ms since the ring's epoch, wrapping (ages are seconds).
    at_ms: u32,
}

impl Decided {
    pub fn target(&self) -> usize {
        ((self.tag.get() & !(ANSWERED | CONFIRM)) - 1) as usize
    }

    pub fn confirm(&self) -> bool {
        self.tag.get() & CONFIRM != 0
    }

    pub fn answered(&self) -> bool {
        self.tag.get() & ANSWERED != 0
    }

    fn set_answered(&mut self) {
        self.tag |= ANSWERED;
    }
}

#[derive(Debug)]
pub struct Recent {
    epoch: Instant,
    /// Probe id of `ring[0]`.
    base: u64,
    /// `None`: not decided yet (in flight), or never sent by this matcher.
    ring: VecDeque<Option<Decided>>,
    /// Keys the IPv6 fingerprints, so nobody can pick an address that collides.
    keys: RandomState,
}

impl Recent {
    pub fn new(now: Instant) -> Self {
        Recent {
            epoch: now,
            base: 1,
            ring: VecDeque::new(),
            keys: RandomState::new(),
        }
    }

    fn ms(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// 32 bits standing for an address: an IPv4 address is its own fingerprint (exact);
    /// an IPv6 one is hashed with this ring's random keys.
    fn fingerprint(&self, addr: &IpAddr) -> u32 {
        match addr {
            IpAddr::V4(a) => u32::from(*a),
            IpAddr::V6(a) => self.keys.hash_one(a) as u32,
        }
    }

    /// Whether a reply from `src` may be the answer to the decided probe `d`.
    pub fn from_target(&self, d: &Decided, src: &IpAddr) -> bool {
        d.addr == self.fingerprint(src)
    }

    /// Remember probe `id` as decided at `at`. Ids already forgotten are ignored, and so
    /// are target indexes of 2^30 - 1 and above (a target list never holds that many).
    pub fn remember(
        &mut self,
        id: u64,
        target: usize,
        addr: IpAddr,
        answered: bool,
        confirm: bool,
        at: Instant,
    ) {
        let Some(off) = id.checked_sub(self.base) else {
            return;
        };
        let Ok(off) = usize::try_from(off) else {
            return;
        };
        let Some(tag) = u32::try_from(target)
            .ok()
            .and_then(|t| t.checked_add(1))
            .filter(|t| t & (ANSWERED | CONFIRM) == 0)
            .and_then(NonZeroU32::new)
        else {
            return;
        };
        if off >= MAX_RECENT {
            // Far ahead of the oldest remembered id: forget the oldest to make room.
            let drop = (off + 1 - MAX_RECENT).min(self.ring.len());
            self.ring.drain(..drop);
            self.base += (off + 1 - MAX_RECENT) as u64;
            return self.remember(id, target, addr, answered, confirm, at);
        }
        if off >= self.ring.len() {
            self.ring.resize(off + 1, None);
        }
        let tag = if answered { tag | ANSWERED } else { tag };
        let tag = if confirm { tag | CONFIRM } else { tag };
        self.ring[off] = Some(Decided {
            tag,
            addr: self.fingerprint(&addr),
            at_ms: self.ms(at),
        });
    }

    pub fn get(&self, id: u64) -> Option<Decided> {
        let off = usize::try_from(id.checked_sub(self.base)?).ok()?;
        *self.ring.get(off)?
    }

    /// Mark the decided probe `id` answered (a late reply came); false if not remembered.
    pub fn mark_answered(&mut self, id: u64) -> bool {
        let Some(off) = id
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
        else {
            return false;
        };
        match self.ring.get_mut(off) {
            Some(Some(d)) => {
                d.set_answered();
                true
            }
            _ => false,
        }
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
        r.remember(2, 7, ip(), true, false, t0);
        r.remember(3, 8, ip(), false, false, t0 + Duration::from_secs(1));
        assert!(r.get(1).is_none(), "id 1 still in flight");
        assert_eq!(
            r.get(2).map(|d| (d.target(), d.answered())),
            Some((7, true))
        );
        let ret = Duration::from_secs(10);
        // Id 1 in flight: nothing is forgotten, even past the retention.
        r.expire(t0 + Duration::from_secs(12), ret, |id| id == 1);
        assert_eq!(r.len(), 3);
        // Id 1 decided long ago (it is not in flight): 1 and 2 go, 3 stays 10 s.
        r.expire(t0 + Duration::from_secs(10), ret, |_| false);
        assert!(r.get(2).is_none());
        assert!(r.get(3).is_some());
        r.expire(t0 + Duration::from_secs(11), ret, |_| false);
        assert!(r.is_empty());
        // Forgotten ids stay forgotten.
        r.remember(2, 7, ip(), true, false, t0 + Duration::from_secs(11));
        assert!(r.get(2).is_none());
    }

    #[test]
    fn the_ring_is_bounded() {
        let t0 = Instant::now();
        let mut r = Recent::new(t0);
        r.remember(1, 0, ip(), true, false, t0);
        r.remember(MAX_RECENT as u64 + 5, 1, ip(), true, false, t0);
        assert_eq!(r.len(), MAX_RECENT);
        assert!(r.get(1).is_none());
        assert!(r.get(MAX_RECENT as u64 + 5).is_some());
        assert_eq!(std::mem::size_of::<Option<Decided>>(), 12);
    }

    #[test]
    fn the_source_must_match_the_target_address_in_both_families() {
        let t0 = Instant::now();
        let mut r = Recent::new(t0);
        let v6: IpAddr = "2001:db8::7".parse().expect("v6");
        r.remember(1, 0, ip(), false, false, t0);
        r.remember(2, 1, v6, false, false, t0);
        let (d1, d2) = (r.get(1).expect("1"), r.get(2).expect("2"));
        assert!(r.from_target(&d1, &ip()));
        assert!(!r.from_target(&d1, &IpAddr::from([127, 0, 0, 3])));
        assert!(r.from_target(&d2, &v6));
        for other in ["2001:db8::8", "2001:db9::7", "::ffff:127.0.0.2"] {
            let other: IpAddr = other.parse().expect("v6");
            assert!(!r.from_target(&d2, &other), "{other} taken for {v6}");
        }
        // Late answer marked once; the flag does not disturb the target.
        assert!(!d1.answered());
        assert!(r.mark_answered(1));
        assert_eq!(
            r.get(1).map(|d| (d.target(), d.answered())),
            Some((0, true))
        );
        assert!(!r.mark_answered(9), "never decided");
        // Target indexes that do not fit beside the flags are not remembered (no mix-up).
        r.remember(3, (1 << 30) - 1, ip(), false, false, t0);
        assert!(r.get(3).is_none());
        r.remember(4, (1 << 30) - 2, ip(), true, true, t0);
        assert_eq!(
            r.get(4).map(|d| (d.target(), d.answered(), d.confirm())),
            Some(((1 << 30) - 2, true, true))
        );
        r.remember(5, 6, ip(), false, true, t0);
        assert_eq!(
            r.get(5).map(|d| (d.target(), d.answered(), d.confirm())),
            Some((6, false, true))
        );
    }
}
