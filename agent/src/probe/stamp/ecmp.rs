//! ECMP spreading, pure: a STAMP target with `ecmp=N` sends from N source ports, one
//! STAMP session (SSID, sequence space) per port, taking turns probe by probe. Routers
//! hashing on the 5-tuple (`fib_multipath_hash_policy=1` on Linux, the default on most
//! routers) then put the sessions on different equal-cost paths, so a single bad path
//! shows as partial loss (about the share of ports it carries) instead of all or nothing.
//!
//! A *flow* is one (target, source port) pair. Flows are numbered target by target; the
//! sender keeps one session and one socket reference per flow.

/// Flows of all targets and whose turn it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spread {
    /// Per target: its first flow and how many it has.
    ranges: Vec<(usize, usize)>,
    /// Per target: the next of its flows to send from.
    turn: Vec<usize>,
    /// Per flow: its target.
    target_of: Vec<usize>,
}

impl Spread {
    /// `ports[t]`: how many source ports target `t` uses (0 is taken as 1).
    pub fn new(ports: &[usize]) -> Spread {
        let mut ranges = Vec::with_capacity(ports.len());
        let mut target_of = Vec::new();
        for (t, &n) in ports.iter().enumerate() {
            let n = n.max(1);
            ranges.push((target_of.len(), n));
            target_of.extend(std::iter::repeat_n(t, n));
        }
        Spread {
            turn: vec![0; ranges.len()],
            ranges,
            target_of,
        }
    }

    pub fn flows(&self) -> usize {
        self.target_of.len()
    }

    pub fn target_of(&self, flow: usize) -> usize {
        self.target_of[flow]
    }

    /// The flows of one target, in turn order.
    pub fn flows_of(&self, target: usize) -> std::ops::Range<usize> {
        let (first, n) = self.ranges[target];
        first..first + n
    }

    /// The flow target `t`'s next probe goes out on; round robin over its ports, so
    /// over any N consecutive probes each port carries exactly one.
    pub fn next(&mut self, target: usize) -> usize {
        let (first, n) = self.ranges[target];
        let k = self.turn[target];
        self.turn[target] = (k + 1) % n;
        first + k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_carries_an_equal_share_in_turn() {
        let mut s = Spread::new(&[1, 4, 0]);
        assert_eq!(s.flows(), 6);
        assert_eq!(s.flows_of(1), 1..5);
        assert_eq!((s.target_of(0), s.target_of(4), s.target_of(5)), (0, 1, 2));
        let picks: Vec<usize> = (0..8).map(|_| s.next(1)).collect();
        assert_eq!(picks, [1, 2, 3, 4, 1, 2, 3, 4]);
        assert_eq!((s.next(0), s.next(0), s.next(2)), (0, 0, 5));
    }

    /// With N ports of which k hash onto a path that loses everything, the target's
    /// loss is k/N: the expected partial loss the lab test looks for.
    #[test]
    fn one_dead_path_shows_as_its_share_of_ports() {
        let mut s = Spread::new(&[8]);
        let dead = [false, true, false, false, true, false, false, false];
        let lost = (0..800).filter(|_| dead[s.next(0)]).count();
        assert_eq!(lost, 200);
    }
}
