//! The membership table (pure: times are arguments). An agent becomes a member with its
//! hello, says how it is reached with its join, and stays a member while any of its
//! connections is open and for `leave_after` after the last one closed; then it leaves.
//! The epoch grows with every change that peer lists can see.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use pathpulse_wire::Peer;

use super::policy::{Node, Plan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub site: Option<String>,
    pub isp: Option<String>,
    /// Where its connection comes from, as the aggregator sees it.
    pub seen: IpAddr,
    /// Addresses it asked to be probed at (empty: `seen`).
    pub advertise: Vec<IpAddr>,
    pub stamp_port: Option<u16>,
    /// It sent a join: it takes peer lists (agents of protocol 2 are probed, not told).
    pub joined: bool,
    /// Open connections (QUIC connection ids).
    pub conns: BTreeSet<usize>,
    /// Since when it has no open connection (ms since the epoch).
    pub away_since_ms: Option<u64>,
}

impl Member {
    /// Where peers probe it, preferred first.
    pub fn addrs(&self) -> Vec<IpAddr> {
        if self.advertise.is_empty() {
            vec![self.seen.to_canonical()]
        } else {
            self.advertise.clone()
        }
    }

    fn peer(&self, name: &str) -> Peer {
        Peer {
            name: name.to_string(),
            site: self.site.clone(),
            isp: self.isp.clone(),
            addrs: self.addrs(),
            stamp_port: self.stamp_port,
        }
    }
}

/// What a hello says.
#[derive(Debug, Clone)]
pub struct HelloInfo {
    pub site: Option<String>,
    pub isp: Option<String>,
    pub seen: IpAddr,
}

#[derive(Debug, Default)]
pub struct Table {
    members: BTreeMap<String, Member>,
    epoch: u64,
}

impl Table {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    fn changed(&mut self, yes: bool) -> bool {
        if yes {
            self.epoch += 1;
        }
        yes
    }

    /// An agent said hello on connection `conn`. True when peer lists may change.
    pub fn hello(&mut self, name: &str, h: HelloInfo, conn: usize) -> bool {
        let new = !self.members.contains_key(name);
        let m = self
            .members
            .entry(name.to_string())
            .or_insert_with(|| Member {
                site: None,
                isp: None,
                seen: h.seen,
                advertise: Vec::new(),
                stamp_port: None,
                joined: false,
                conns: BTreeSet::new(),
                away_since_ms: None,
            });
        let before = m.clone();
        m.site = h.site;
        m.isp = h.isp;
        m.seen = h.seen;
        m.conns.insert(conn);
        m.away_since_ms = None;
        let visible =
            new || before.site != m.site || before.isp != m.isp || before.addrs() != m.addrs();
        self.changed(visible)
    }

    /// A member joined: how to reach it. False (and nothing done) for an agent without a
    /// hello on this connection.
    pub fn join(
        &mut self,
        name: &str,
        conn: usize,
        advertise: Vec<IpAddr>,
        stamp_port: Option<u16>,
    ) -> Option<bool> {
        let m = self
            .members
            .get_mut(name)
            .filter(|m| m.conns.contains(&conn))?;
        let before = (m.addrs(), m.stamp_port);
        m.advertise = advertise;
        m.stamp_port = stamp_port;
        m.joined = true;
        let visible = before != (m.addrs(), m.stamp_port);
        Some(self.changed(visible))
    }

    /// A connection of `name` closed at `now_ms`.
    pub fn disconnected(&mut self, name: &str, conn: usize, now_ms: u64) {
        if let Some(m) = self.members.get_mut(name) {
            m.conns.remove(&conn);
            if m.conns.is_empty() {
                m.away_since_ms = Some(now_ms);
            }
        }
    }

    /// Members away for longer than `leave_after_ms` leave; their names are returned.
    pub fn expire(&mut self, now_ms: u64, leave_after_ms: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.away_since_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) > leave_after_ms)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            self.members.remove(n);
        }
        self.changed(!gone.is_empty());
        gone
    }

    /// The peer list of `name` under the policy (`k` peers per other site; `None`: all).
    pub fn peers_of(&self, name: &str, k: Option<usize>) -> Vec<Peer> {
        let Some(me) = self.members.get(name) else {
            return Vec::new();
        };
        self.plan(k)
            .peers_of(name, me.site.as_deref().unwrap_or(""))
            .into_iter()
            .filter_map(|p| self.members.get(p).map(|m| m.peer(p)))
            .collect()
    }

    /// Peer names of every member (for the membership API).
    pub fn all_peers(&self, k: Option<usize>) -> BTreeMap<&str, Vec<&str>> {
        let plan = self.plan(k);
        self.members
            .iter()
            .map(|(n, m)| {
                (
                    n.as_str(),
                    plan.peers_of(n, m.site.as_deref().unwrap_or("")),
                )
            })
            .collect()
    }

    fn plan(&self, k: Option<usize>) -> Plan<'_> {
        Plan::new(
            self.members.iter().map(|(n, m)| Node {
                name: n.as_str(),
                site: m.site.as_deref().unwrap_or(""),
            }),
            k,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(site: &str, ip: &str) -> HelloInfo {
        HelloInfo {
            site: Some(site.into()),
            isp: Some("isp-a".into()),
            seen: ip.parse().expect("ip"),
        }
    }

    #[test]
    fn members_come_with_hello_and_go_after_the_grace_period() {
        let mut t = Table::default();
        assert!(t.hello("a", hello("hq", "10.0.0.1"), 1));
        assert!(t.hello("b", hello("hq", "10.0.0.2"), 2));
        assert_eq!(t.epoch(), 2);
        let p = t.peers_of("a", Some(3));
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].name.as_str(), p[0].addrs.as_slice()),
            ("b", &["10.0.0.2".parse().expect("ip")][..])
        );
        // The join overrides the address and adds the reflector port.
        assert_eq!(
            t.join("b", 2, vec!["192.0.2.9".parse().expect("ip")], Some(862)),
            Some(true)
        );
        assert_eq!(
            t.join("b", 2, vec!["192.0.2.9".parse().expect("ip")], Some(862)),
            Some(false)
        );
        assert_eq!(
            t.join("b", 99, vec![], None),
            None,
            "not this member's connection"
        );
        let p = &t.peers_of("a", Some(3))[0];
        assert_eq!(
            (p.addrs[0].to_string(), p.stamp_port),
            ("192.0.2.9".into(), Some(862))
        );
        // A reconnect before the old connection is seen closing: still there.
        assert!(!t.hello("b", hello("hq", "10.0.0.2"), 3));
        t.disconnected("b", 2, 1_000);
        assert!(t.expire(100_000, 30_000).is_empty(), "connection 3 is open");
        t.disconnected("b", 3, 2_000);
        let epoch = t.epoch();
        assert!(
            t.expire(32_000, 30_000).is_empty(),
            "inside the grace period"
        );
        assert_eq!(t.expire(32_001, 30_000), ["b"]);
        assert_eq!(t.epoch(), epoch + 1);
        assert!(t.peers_of("a", Some(3)).is_empty());
        // Back within the grace period: nothing visible changed.
        t.disconnected("a", 1, 40_000);
        let epoch = t.epoch();
        assert!(!t.hello("a", hello("hq", "10.0.0.1"), 4));
        assert_eq!(t.epoch(), epoch);
        assert!(t.expire(1_000_000, 30_000).is_empty());
    }

    #[test]
    fn v4_mapped_addresses_are_given_as_v4() {
        let mut t = Table::default();
        t.hello("a", hello("hq", "::ffff:10.0.0.1"), 1);
        t.hello("b", hello("hq", "10.0.0.2"), 2);
        assert_eq!(t.peers_of("b", None)[0].addrs[0].to_string(), "10.0.0.1");
        let all = t.all_peers(None);
        assert_eq!(all["a"], ["b"]);
    }
}
