//! Fault localization, pure: from the loss every agent sees on every path (and, where
//! there is one, the per-hop view toward a target), say *where* a problem is: the LAN of an
//! agent, a site's uplink, an ISP, a transit router, or the target itself.
//!
//! The reasoning, in order (each bad path is explained once):
//!
//! 1. A **site** (or a lone agent without a site) whose paths to other sites are nearly all
//!    bad, and whose paths from other sites too, is cut off. If several such sites share
//!    an ISP while sites on other ISPs are fine, the **ISP** is blamed; for one site, its
//!    hops decide between its **LAN** (loss from the CPE on), its **ISP** (from an ISP hop
//!    on) and, without hop data, its **uplink**.
//! 2. A **target** that nearly every observer loses packets to, while those observers
//!    reach other destinations, is blamed itself.
//! 3. Agents of one **ISP** in two or more sites losing to destinations that agents of
//!    other ISPs reach: the ISP.
//! 4. A single path with a hop view: the first hop from which the loss continues to the
//!    target (a router that only rate-limits its ICMP answers is skipped) names the place.
//!
//! A path is bad when it lost at least `bad_loss` of at least `min_probes` probes, so one
//! lost probe of three blames nobody.

use std::collections::{BTreeMap, BTreeSet};

use pathpulse_wire::HopRole;

use crate::stats::{Z95, icmp_ratelimited, wilson_interval};
use crate::store::{HopState, PathState, Store};
use crate::window::{WINDOWS, WindowView};

/// The window localization (and the rate-limit verdict) judges by.
pub const WINDOW_MS: u64 = 60_000;

/// One hop of a path with its windowed views and the rate-limit verdict.
pub struct HopView<'a> {
    pub ttl: u8,
    pub state: &'a HopState,
    pub views: [(&'static str, WindowView); 3],
    /// Its 1 min loss does not continue at the later hops or the target.
    pub ratelimited: Option<bool>,
}

/// The hops of a path, each with its views and whether it only rate-limits ICMP.
pub fn hop_views(st: &PathState, now_ms: u64) -> Vec<HopView<'_>> {
    let one_min = WINDOWS
        .iter()
        .position(|(_, ms)| *ms == WINDOW_MS)
        .unwrap_or(0);
    let mut out: Vec<HopView> = st
        .hops
        .iter()
        .map(|(ttl, h)| HopView {
            ttl: *ttl,
            state: h,
            views: WINDOWS.map(|(w, ms)| (w, h.windows.view(ms, now_ms))),
            ratelimited: None,
        })
        .collect();
    // Walk back from the target: the (lost, probes) of the least lossy later hop or path.
    let v = st.windows.view(WINDOW_MS, now_ms);
    let ratio = |(l, n): (u64, u64)| l as f64 / n.max(1) as f64;
    let mut best: Option<(u64, u64)> = Some((v.lost, v.lost + v.received)).filter(|c| c.1 > 0);
    for h in out.iter_mut().rev() {
        let v = &h.views[one_min].1;
        let own = (v.lost, v.lost + v.received);
        if own.1 == 0 {
            continue;
        }
        h.ratelimited = Some(icmp_ratelimited(own, best));
        if best.is_none_or(|b| ratio(own) < ratio(b)) {
            best = Some(own);
        }
    }
    out
}

/// What every path of the store shows over the last minute, with the agents' site and ISP
/// labels (a destination that is an agent, by name or address, gets its site).
pub fn observations(store: &Store, now_ms: u64) -> Vec<PathObs> {
    let sites = store.dst_sites();
    store
        .paths
        .iter()
        .map(|(k, st)| {
            let agent = store.agents.get(&*k.src);
            let (received, lost) = st.windows.counts(WINDOW_MS, now_ms);
            let one_min = WINDOWS
                .iter()
                .position(|(_, ms)| *ms == WINDOW_MS)
                .unwrap_or(0);
            PathObs {
                src: k.src.to_string(),
                src_site: agent.and_then(|a| a.site.clone()),
                src_isp: agent.and_then(|a| a.isp.clone()),
                dst: k.dst.to_string(),
                dst_site: sites.site_of(&k.dst).map(str::to_string),
                lost,
                received,
                hops: hop_views(st, now_ms)
                    .into_iter()
                    .map(|h| HopObs {
                        addr: h.state.addr.to_string(),
                        role: h.state.role,
                        lost: h.views[one_min].1.lost,
                        received: h.views[one_min].1.received,
                        ratelimited: h.ratelimited == Some(true),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Loss of one hop toward a target (TTL order in [`PathObs::hops`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HopObs {
    pub addr: String,
    pub role: HopRole,
    pub lost: u64,
    pub received: u64,
    /// The router rate-limits its ICMP answers (its loss is not the path's).
    pub ratelimited: bool,
}

/// What one agent saw on one path over the window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PathObs {
    pub src: String,
    pub src_site: Option<String>,
    pub src_isp: Option<String>,
    pub dst: String,
    /// The destination's site when it is another agent (a mesh path).
    pub dst_site: Option<String>,
    pub lost: u64,
    pub received: u64,
    pub hops: Vec<HopObs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Lan,
    SiteUplink,
    Isp,
    Transit,
    Target,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Lan => "lan",
            Scope::SiteUplink => "site_uplink",
            Scope::Isp => "isp",
            Scope::Transit => "transit",
            Scope::Target => "target",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Confidence {
    Low,
    Medium,
    High,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub scope: Scope,
    /// The site, ISP, agent (LAN), router address (transit) or target blamed.
    pub suspect: String,
    pub confidence: Confidence,
    /// Bad paths this verdict explains.
    pub paths: usize,
    /// One sentence an operator can check.
    pub evidence: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub bad_loss: f64,
    pub min_probes: u64,
    /// Share of a group's paths that must be bad for the group to be blamed.
    pub quorum: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            bad_loss: 0.05,
            min_probes: 20,
            quorum: 0.8,
        }
    }
}

fn loss(lost: u64, received: u64) -> Option<f64> {
    let n = lost + received;
    (n > 0).then(|| lost as f64 / n as f64)
}

impl PathObs {
    fn measured(&self, t: &Thresholds) -> bool {
        self.lost + self.received >= t.min_probes
    }

    fn bad(&self, t: &Thresholds) -> bool {
        self.measured(t) && loss(self.lost, self.received).is_some_and(|l| l >= t.bad_loss)
    }

    /// The observer's site, or the agent itself when it has none.
    fn site(&self) -> &str {
        self.src_site.as_deref().unwrap_or(&self.src)
    }

    /// The first hop from which the loss continues to the target.
    fn first_lossy_hop(&self, t: &Thresholds) -> Option<usize> {
        let answers = |h: &HopObs| !h.ratelimited && h.lost + h.received > 0;
        let hop_loss = |h: &HopObs| loss(h.lost, h.received).unwrap_or(0.0);
        // Lossy: losing at least half the bad-path threshold, and significantly more than
        // nothing (a hop probed once a second has few samples: one lost probe of 30 is
        // not evidence).
        let lossy = |h: &HopObs| {
            answers(h)
                && hop_loss(h) >= t.bad_loss / 2.0
                && wilson_interval(h.lost, h.lost + h.received, Z95)
                    .is_some_and(|(lo, _)| lo >= 0.01)
        };
        // The first lossy hop whose loss every later answering hop shares, at least a
        // quarter of it (a hop that loses alone only drops ICMP, whatever it claims).
        (0..self.hops.len()).find(|&k| {
            let lk = hop_loss(&self.hops[k]);
            lossy(&self.hops[k])
                && self.hops[k + 1..]
                    .iter()
                    .filter(|h| answers(h))
                    .all(|h| hop_loss(h) > 0.0 && hop_loss(h) >= lk / 4.0)
        })
    }
}

/// Blame from hop evidence of `paths` (one observer or one site): the role where the loss
/// starts on most of them.
fn hop_blame(paths: &[&PathObs], t: &Thresholds) -> Option<(HopRole, String)> {
    let mut votes: BTreeMap<(HopRole, String), usize> = BTreeMap::new();
    for p in paths {
        if let Some(k) = p.first_lossy_hop(t) {
            let h = &p.hops[k];
            *votes.entry((h.role, h.addr.clone())).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k)
}

pub fn localize(paths: &[PathObs], t: &Thresholds) -> Vec<Verdict> {
    let mut explained = vec![false; paths.len()];
    let mut out = Vec::new();
    let bad: Vec<bool> = paths.iter().map(|p| p.bad(t)).collect();
    if !bad.iter().any(|b| *b) {
        return out;
    }

    // 1. Sites cut off: most paths leaving them (and entering them, if observed) are bad.
    let sites: BTreeSet<&str> = paths.iter().map(PathObs::site).collect();
    let mut cut_off: Vec<(&str, Vec<usize>)> = Vec::new();
    for s in &sites {
        let out_paths: Vec<usize> = (0..paths.len())
            .filter(|&i| {
                paths[i].site() == *s
                    && paths[i].measured(t)
                    && paths[i].dst_site.as_deref() != Some(s)
            })
            .collect();
        let in_paths: Vec<usize> = (0..paths.len())
            .filter(|&i| {
                paths[i].dst_site.as_deref() == Some(s)
                    && paths[i].site() != *s
                    && paths[i].measured(t)
            })
            .collect();
        let share = |v: &[usize]| v.iter().filter(|&&i| bad[i]).count() as f64 / v.len() as f64;
        if out_paths.len() >= 2
            && share(&out_paths) >= t.quorum
            && (in_paths.is_empty() || share(&in_paths) >= t.quorum)
        {
            let all: Vec<usize> = out_paths.into_iter().chain(in_paths).collect();
            cut_off.push((s, all));
        }
    }
    // Several cut-off sites on one ISP while some site on another ISP is fine: the ISP.
    let isp_of = |site: &str| {
        paths
            .iter()
            .find(|p| p.site() == site)
            .and_then(|p| p.src_isp.clone())
    };
    let healthy_isps: BTreeSet<String> = sites
        .iter()
        .filter(|s| !cut_off.iter().any(|(c, _)| c == *s))
        .filter_map(|s| isp_of(s))
        .collect();
    let mut by_isp: BTreeMap<String, Vec<&(&str, Vec<usize>)>> = BTreeMap::new();
    for c in &cut_off {
        if let Some(isp) = isp_of(c.0) {
            by_isp.entry(isp).or_default().push(c);
        }
    }
    for (isp, group) in &by_isp {
        if group.len() >= 2 && !healthy_isps.contains(isp) {
            let idx: BTreeSet<usize> = group.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            let n = idx.iter().filter(|&&i| bad[i] && !explained[i]).count();
            for &i in &idx {
                explained[i] = true;
            }
            out.push(Verdict {
                scope: Scope::Isp,
                suspect: isp.clone(),
                confidence: if healthy_isps.is_empty() {
                    Confidence::Medium
                } else {
                    Confidence::High
                },
                paths: n,
                evidence: format!(
                    "{} sites on {isp} ({}) are cut off while sites on other ISPs are not",
                    group.len(),
                    group.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    for (site, idx) in &cut_off {
        if idx.iter().all(|&i| explained[i]) {
            continue;
        }
        let own: Vec<&PathObs> = idx
            .iter()
            .map(|&i| &paths[i])
            .filter(|p| p.site() == *site)
            .collect();
        let n = idx.iter().filter(|&&i| bad[i] && !explained[i]).count();
        for &i in idx {
            explained[i] = true;
        }
        let (scope, suspect, evidence) = match hop_blame(&own, t) {
            Some((HopRole::Lan | HopRole::Cpe, addr)) => (
                Scope::Lan,
                site.to_string(),
                format!("loss starts at {addr} on the LAN side of {site}"),
            ),
            Some((HopRole::Isp, addr)) => (
                Scope::Isp,
                isp_of(site).unwrap_or_else(|| addr.clone()),
                format!("loss starts at the ISP hop {addr} of {site}"),
            ),
            _ => (
                Scope::SiteUplink,
                site.to_string(),
                format!("{n} paths to and from {site} lose packets; other sites reach each other"),
            ),
        };
        out.push(Verdict {
            scope,
            suspect,
            confidence: if sites.len() >= 3 {
                Confidence::High
            } else {
                Confidence::Medium
            },
            paths: n,
            evidence,
        });
    }

    // 2. Targets that (nearly) every observer loses, observers that reach something else.
    let healthy_observer: BTreeSet<&str> = paths
        .iter()
        .filter(|p| p.measured(t) && !p.bad(t))
        .map(|p| p.src.as_str())
        .collect();
    let dsts: BTreeSet<&str> = paths.iter().map(|p| p.dst.as_str()).collect();
    for d in dsts {
        let idx: Vec<usize> = (0..paths.len())
            .filter(|&i| paths[i].dst == d && paths[i].measured(t) && !explained[i])
            .collect();
        let bad_idx: Vec<usize> = idx.iter().copied().filter(|&i| bad[i]).collect();
        if bad_idx.len() < 2 || (bad_idx.len() as f64) < t.quorum * idx.len() as f64 {
            continue;
        }
        if !bad_idx
            .iter()
            .all(|&i| healthy_observer.contains(paths[i].src.as_str()))
        {
            continue;
        }
        let vantage: BTreeSet<&str> = bad_idx.iter().map(|&i| paths[i].site()).collect();
        for &i in &bad_idx {
            explained[i] = true;
        }
        out.push(Verdict {
            scope: Scope::Target,
            suspect: d.to_string(),
            confidence: if vantage.len() >= 2 {
                Confidence::High
            } else {
                Confidence::Medium
            },
            paths: bad_idx.len(),
            evidence: format!(
                "{} of {} observers lose packets to {d} and reach other destinations",
                bad_idx.len(),
                idx.len()
            ),
        });
    }

    // 3. One ISP's agents in several sites lose where other ISPs' agents do not.
    let mut isp_bad: BTreeMap<&str, (BTreeSet<&str>, Vec<usize>)> = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        if let Some(isp) = p.src_isp.as_deref().filter(|_| bad[i] && !explained[i]) {
            let e = isp_bad.entry(isp).or_default();
            e.0.insert(p.site());
            e.1.push(i);
        }
    }
    for (isp, (sites_hit, idx)) in isp_bad {
        let others_fine = idx.iter().all(|&i| {
            paths.iter().any(|o| {
                o.dst == paths[i].dst
                    && o.src_isp.as_deref().is_some_and(|x| x != isp)
                    && o.measured(t)
                    && !o.bad(t)
            })
        });
        if sites_hit.len() >= 2 && others_fine {
            for &i in &idx {
                explained[i] = true;
            }
            out.push(Verdict {
                scope: Scope::Isp,
                suspect: isp.to_string(),
                confidence: Confidence::High,
                paths: idx.len(),
                evidence: format!(
                    "agents on {isp} in {} sites lose packets that agents on other ISPs do not",
                    sites_hit.len()
                ),
            });
        }
    }

    // 4. Single paths with a hop view.
    let mut by_place: BTreeMap<(Scope, String), (usize, String)> = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        if !bad[i] || explained[i] {
            continue;
        }
        let Some(k) = p.first_lossy_hop(t) else {
            continue;
        };
        let h = &p.hops[k];
        let (scope, suspect) = match h.role {
            HopRole::Lan | HopRole::Cpe => (Scope::Lan, p.src.clone()),
            HopRole::Isp => (
                Scope::Isp,
                p.src_isp.clone().unwrap_or_else(|| h.addr.clone()),
            ),
            HopRole::Transit | HopRole::Unknown => (Scope::Transit, h.addr.clone()),
            HopRole::Target => (Scope::Target, p.dst.clone()),
        };
        explained[i] = true;
        let e = by_place.entry((scope, suspect)).or_insert_with(|| {
            (
                0,
                format!(
                    "{} sees loss from hop {} ({}, {}) to {}",
                    p.src,
                    k + 1,
                    h.addr,
                    h.role.as_str(),
                    p.dst
                ),
            )
        });
        e.0 += 1;
    }
    for ((scope, suspect), (n, evidence)) in by_place {
        out.push(Verdict {
            scope,
            suspect,
            confidence: Confidence::Medium,
            paths: n,
            evidence,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use HopRole::*;

    const T: Thresholds = Thresholds {
        bad_loss: 0.05,
        min_probes: 20,
        quorum: 0.8,
    };

    /// A path `src@site/isp -> dst` with `lost` of 100 probes lost.
    fn path(
        src: &str,
        site: &str,
        isp: &str,
        dst: &str,
        dst_site: Option<&str>,
        lost: u64,
    ) -> PathObs {
        PathObs {
            src: src.into(),
            src_site: Some(site.into()),
            src_isp: Some(isp.into()),
            dst: dst.into(),
            dst_site: dst_site.map(Into::into),
            lost,
            received: 100 - lost,
            hops: vec![],
        }
    }

    /// Full mesh of agents (name, site, isp) plus paths from each to `anchors`; `loss`
    /// decides each path's lost count.
    fn mesh(
        agents: &[(&str, &str, &str)],
        anchors: &[&str],
        loss: impl Fn(&str, &str) -> u64,
    ) -> Vec<PathObs> {
        let mut v = Vec::new();
        for (a, s, i) in agents {
            for (b, bs, _) in agents {
                if a != b {
                    v.push(path(a, s, i, b, Some(bs), loss(a, b)));
                }
            }
            for d in anchors {
                v.push(path(a, s, i, d, None, loss(a, d)));
            }
        }
        v
    }

    const AGENTS: [(&str, &str, &str); 5] = [
        ("a1", "site-a", "isp-x"),
        ("a2", "site-a", "isp-x"),
        ("b1", "site-b", "isp-x"),
        ("c1", "site-c", "isp-y"),
        ("c2", "site-c", "isp-y"),
    ];

    fn one(v: &[Verdict]) -> &Verdict {
        assert_eq!(v.len(), 1, "{v:#?}");
        &v[0]
    }

    #[test]
    fn nothing_bad_blames_nobody_and_one_of_three_is_not_evidence() {
        assert!(localize(&mesh(&AGENTS, &["9.9.9.9"], |_, _| 1), &T).is_empty());
        let mut p = path("a1", "site-a", "isp-x", "9.9.9.9", None, 0);
        (p.lost, p.received) = (1, 2);
        assert!(localize(&[p], &T).is_empty());
    }

    #[test]
    fn a_site_that_loses_everything_to_and_from_others_is_its_uplink() {
        let site_a = |x: &str| x.starts_with('a');
        let paths = mesh(&AGENTS, &["9.9.9.9", "8.8.8.8"], |s, d| {
            if site_a(s) != site_a(d) || (site_a(s) && d.contains('.')) {
                30
            } else {
                0
            }
        });
        let v = one(&localize(&paths, &T)).clone();
        assert_eq!((v.scope, v.suspect.as_str()), (Scope::SiteUplink, "site-a"));
        assert_eq!(v.confidence, Confidence::High);
        // a1, a2 to 3 agents and 2 anchors, and 3 agents to a1, a2.
        assert_eq!(v.paths, 2 * 5 + 3 * 2);
    }

    #[test]
    fn a_target_everyone_loses_is_the_target() {
        let paths = mesh(&AGENTS, &["9.9.9.9", "8.8.8.8"], |_, d| {
            if d == "9.9.9.9" { 60 } else { 0 }
        });
        let v = one(&localize(&paths, &T)).clone();
        assert_eq!(
            (v.scope, v.suspect.as_str(), v.paths),
            (Scope::Target, "9.9.9.9", 5)
        );
        assert_eq!(v.confidence, Confidence::High, "observers in three sites");
    }

    #[test]
    fn two_sites_cut_off_on_one_isp_blame_the_isp() {
        // site-a and site-b are on isp-x; site-c on isp-y is fine.
        let on_x = |x: &str| x.starts_with('a') || x.starts_with('b');
        let paths = mesh(&AGENTS, &["9.9.9.9", "8.8.8.8"], |s, d| {
            let cross = on_x(s) != on_x(d) && !d.contains('.');
            if (on_x(s) && d.contains('.')) || cross {
                40
            } else {
                0
            }
        });
        let v = localize(&paths, &T);
        assert!(
            v.iter().any(|v| v.scope == Scope::Isp
                && v.suspect == "isp-x"
                && v.confidence == Confidence::High),
            "{v:#?}"
        );
        assert!(!v.iter().any(|v| v.scope == Scope::Target), "{v:#?}");
    }

    fn chain_path(hop_loss: [u64; 4], ratelimited_cpe: bool) -> PathObs {
        let roles = [Cpe, Isp, Transit, Target];
        let addrs = ["192.168.1.1", "203.0.113.2", "198.51.100.2", "192.0.2.2"];
        PathObs {
            hops: (0..4)
                .map(|i| HopObs {
                    addr: addrs[i].into(),
                    role: roles[i],
                    lost: hop_loss[i],
                    received: 60 - hop_loss[i],
                    ratelimited: i == 0 && ratelimited_cpe,
                })
                .collect(),
            ..path(
                "home",
                "home",
                "isp-x",
                "192.0.2.2",
                None,
                hop_loss[3] * 100 / 60,
            )
        }
    }

    #[test]
    fn the_hop_where_loss_starts_names_the_place() {
        let v = localize(&[chain_path([0, 0, 24, 24], false)], &T);
        assert_eq!(
            (one(&v).scope, one(&v).suspect.as_str()),
            (Scope::Transit, "198.51.100.2")
        );
        let v = localize(&[chain_path([0, 20, 21, 19], false)], &T);
        assert_eq!(
            (one(&v).scope, one(&v).suspect.as_str()),
            (Scope::Isp, "isp-x")
        );
        let v = localize(&[chain_path([18, 20, 21, 19], false)], &T);
        assert_eq!(
            (one(&v).scope, one(&v).suspect.as_str()),
            (Scope::Lan, "home")
        );
        // A CPE that only rate-limits its ICMP answers is not where the loss starts.
        let v = localize(&[chain_path([30, 0, 20, 20], true)], &T);
        assert_eq!(one(&v).scope, Scope::Transit);
        // Few samples: 8 of 60 at the ISP hop is evidence; 1 of 60 at the CPE is not.
        let v = localize(&[chain_path([0, 8, 12, 18], false)], &T);
        assert_eq!(one(&v).scope, Scope::Isp, "{v:#?}");
        let v = localize(&[chain_path([1, 0, 15, 15], false)], &T);
        assert_eq!(one(&v).scope, Scope::Transit, "{v:#?}");
        // Loss at a hop that does not continue (without the rate-limit flag): not blamed.
        let v = localize(&[chain_path([30, 0, 0, 12], false)], &T);
        assert_eq!(one(&v).scope, Scope::Target, "{v:#?}");
    }
}
