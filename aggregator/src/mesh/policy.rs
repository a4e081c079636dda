//! Who probes whom (pure): full mesh inside a site, and toward every other site the `k`
//! members that rendezvous (highest-random-weight) hashing ranks highest for the prober.
//!
//! Each agent ranks the members of another site by a hash of (its own name, the member's
//! name) and takes the top `k`. The ranking of two members never depends on anyone else,
//! so a join or a leave changes a prober's choice in that site by at most one member
//! (the newcomer displaces the lowest-ranked, or the departed one is replaced by the
//! next), and lists elsewhere do not move. Every agent of site S probes `min(k, |T|)`
//! members of every other site T, so each site pair is covered in both directions as long
//! as both sites have a member. Load: an agent probes `|S| - 1 + k·(sites - 1)` peers at
//! most, the mesh `n·(|S| - 1 + k·(sites - 1))` paths in all instead of `n·(n - 1)`; and
//! since the hash differs per prober, the probes toward T spread over T's members.

use std::collections::BTreeMap;

/// One member as the policy sees it: a name and a site (agents without a site share the
/// unnamed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node<'a> {
    pub name: &'a str,
    pub site: &'a str,
}

/// The members grouped by site, ready to answer "whom does X probe".
#[derive(Debug)]
pub struct Plan<'a> {
    sites: BTreeMap<&'a str, Vec<&'a str>>,
    /// Peers per other site; `None`: every member of every site.
    k: Option<usize>,
}

/// FNV-1a over both names, finished with splitmix64's mixer: stable across processes,
/// releases and machines (unlike std's hasher), so lists survive an aggregator restart.
pub fn score(prober: &str, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prober.bytes().chain([0xff]).chain(member.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl<'a> Plan<'a> {
    pub fn new(nodes: impl IntoIterator<Item = Node<'a>>, k: Option<usize>) -> Plan<'a> {
        let mut sites: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for n in nodes {
            sites.entry(n.site).or_default().push(n.name);
        }
        for v in sites.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        Plan { sites, k }
    }

    /// The peers of `me` (a member of `site`), sorted by name; never `me` itself.
    pub fn peers_of(&self, me: &str, site: &str) -> Vec<&'a str> {
        let mut out = Vec::new();
        for (s, members) in &self.sites {
            let others = members.iter().copied().filter(|m| *m != me);
            match self.k {
                _ if *s == site => out.extend(others),
                None => out.extend(others),
                Some(k) if members.len() <= k => out.extend(others),
                Some(k) => {
                    let mut ranked: Vec<(u64, &str)> = others.map(|m| (score(me, m), m)).collect();
                    // Highest score first; the name breaks (astronomically rare) ties.
                    ranked.sort_unstable_by(|a, b| b.cmp(a));
                    out.extend(ranked.into_iter().take(k).map(|(_, m)| m));
                }
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn mesh(sites: usize, per_site: usize) -> Vec<(String, String)> {
        (0..sites * per_site)
            .map(|i| (format!("agent-{i}"), format!("site-{}", i % sites)))
            .collect()
    }

    fn lists(m: &[(String, String)], k: Option<usize>) -> BTreeMap<String, BTreeSet<String>> {
        let plan = Plan::new(
            m.iter().map(|(n, s)| Node {
                name: n.as_str(),
                site: s.as_str(),
            }),
            k,
        );
        m.iter()
            .map(|(n, s)| {
                let p = plan.peers_of(n, s).into_iter().map(String::from).collect();
                (n.clone(), p)
            })
            .collect()
    }

    fn site_of<'a>(m: &'a [(String, String)], n: &str) -> &'a str {
        &m.iter().find(|(a, _)| a == n).expect("member").1
    }

    #[test]
    fn full_mesh_inside_a_site_and_k_per_other_site() {
        let m = mesh(5, 8); // 40 agents, 8 per site
        let l = lists(&m, Some(3));
        for (me, peers) in &l {
            let mine = site_of(&m, me);
            assert!(!peers.contains(me), "{me} probes itself");
            let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
            for p in peers {
                *per_site.entry(site_of(&m, p)).or_default() += 1;
            }
            for (s, n) in per_site {
                assert_eq!(n, if s == mine { 7 } else { 3 }, "{me} → {s}");
            }
        }
        // Load: n·(|S|-1 + k·(sites-1)) = 40·(7 + 12) instead of 40·39.
        let total: usize = l.values().map(BTreeSet::len).sum();
        assert_eq!(total, 40 * (7 + 3 * 4));
        // Without sampling: everyone.
        let full = lists(&m, None);
        assert!(full.values().all(|p| p.len() == 39));
    }

    #[test]
    fn every_site_pair_is_covered_in_both_directions() {
        // Uneven sites, some smaller than k.
        let mut m = mesh(6, 5);
        m.push(("lonely".into(), "site-x".into()));
        let l = lists(&m, Some(2));
        let sites: BTreeSet<&str> = m.iter().map(|(_, s)| s.as_str()).collect();
        let mut covered = BTreeSet::new();
        for (me, peers) in &l {
            for p in peers {
                covered.insert((site_of(&m, me), site_of(&m, p)));
            }
        }
        for a in &sites {
            for b in &sites {
                if a != b {
                    assert!(covered.contains(&(*a, *b)), "{a} → {b} not covered");
                }
            }
        }
        // The lone member of site-x is probed by everybody (its site has fewer than k).
        assert!(
            l.iter()
                .filter(|(n, _)| *n != "lonely")
                .all(|(_, p)| p.contains("lonely"))
        );
    }

    fn changes(
        a: &BTreeMap<String, BTreeSet<String>>,
        b: &BTreeMap<String, BTreeSet<String>>,
    ) -> usize {
        a.iter()
            .filter_map(|(n, pa)| b.get(n).map(|pb| pa.symmetric_difference(pb).count()))
            .sum()
    }

    #[test]
    fn a_join_or_a_leave_moves_each_list_by_at_most_one_peer() {
        let k = 3;
        let m = mesh(10, 20); // 200 agents
        let before = lists(&m, Some(k));
        let mut joined = m.clone();
        joined.push(("newcomer".into(), "site-4".into()));
        let after = lists(&joined, Some(k));
        for (n, pa) in &before {
            let pb = &after[n];
            let added: Vec<_> = pb.difference(pa).collect();
            let removed: Vec<_> = pa.difference(pb).collect();
            // Inside site-4: +newcomer. Elsewhere: newcomer may displace one.
            assert!(
                added.len() <= 1 && removed.len() <= 1,
                "{n}: +{added:?} -{removed:?}"
            );
            assert!(added.iter().all(|p| *p == "newcomer"));
        }
        // In all, only those who took the newcomer changed: its own site (20, one peer
        // more each) and the probers elsewhere that rank it in their top k (one swap each;
        // about 180·k/21 of them).
        let took = after.values().filter(|p| p.contains("newcomer")).count();
        assert!(
            took > 20 && took < 20 + 60,
            "{took} probers took the newcomer"
        );
        assert_eq!(changes(&before, &after), 20 + 2 * (took - 20));
        // A leave: lists that held the departed member swap it for one other at most.
        let mut left = m.clone();
        left.retain(|(n, _)| n != "agent-7");
        let after = lists(&left, Some(k));
        for (n, pb) in &after {
            let pa = &before[n];
            assert!(pa.difference(pb).all(|p| p == "agent-7"), "{n}");
            assert!(pb.difference(pa).count() <= 1, "{n}");
        }
    }

    #[test]
    fn the_choice_spreads_over_the_other_site() {
        // 100 probers in site-a pick 2 of 10 members in site-b: each member gets some.
        let mut m: Vec<(String, String)> = (0..100)
            .map(|i| (format!("a{i}"), "site-a".into()))
            .collect();
        m.extend((0..10).map(|i| (format!("b{i}"), "site-b".to_string())));
        let l = lists(&m, Some(2));
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        for (n, p) in &l {
            if n.starts_with('a') {
                for q in p.iter().filter(|q| q.starts_with('b')) {
                    *load.entry(q.as_str()).or_default() += 1;
                }
            }
        }
        assert_eq!(load.values().sum::<usize>(), 200);
        // Expected 20 each; binomial(200, 0.1) stays well inside 5..=40.
        assert!(
            load.len() == 10 && load.values().all(|&v| (5..=40).contains(&v)),
            "{load:?}"
        );
    }

    #[test]
    fn every_list_of_a_1000_agent_mesh_is_computed_quickly() {
        // A membership change recomputes every connected agent's list.
        let m = mesh(20, 50);
        let start = std::time::Instant::now();
        let l = lists(&m, Some(3));
        let took = start.elapsed();
        eprintln!("1000 agents, 20 sites, k = 3: every list in {took:?}");
        assert_eq!(
            l.values().map(BTreeSet::len).sum::<usize>(),
            1000 * (49 + 3 * 19)
        );
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    }

    const PINNED: u64 = 9_562_428_243_071_582_630;

    #[test]
    fn the_score_is_stable() {
        // Pinned: lists must not reshuffle when the aggregator is rebuilt or restarted.
        assert_eq!(score("a", "b"), score("a", "b"));
        assert_ne!(score("a", "b"), score("b", "a"));
        assert_ne!(score("ab", "c"), score("a", "bc"));
        assert_eq!(score("agent-1", "agent-2"), PINNED);
    }
}
