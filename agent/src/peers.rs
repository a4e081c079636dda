//! Peer lists pushed by the aggregators (mesh membership) become probe targets: ICMP to
//! every peer, and STAMP to every peer that runs a reflector. A peer's paths are labelled
//! with its agent name (`dst`), so the aggregator knows the destination's site and ISP
//! from its own membership. With several aggregators the lists are merged by name; the
//! last list of an aggregator stays in force while it is unreachable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pathpulse_wire::{Peer, ProbeKind};

use crate::reload::Reloader;
use crate::target::{Host, TargetSpec};

/// The targets toward a peer list: per peer, ICMP to its first address, and STAMP there
/// too when it runs a reflector. The `dst` label is the peer's name. Peers in this agent's
/// own site (`my_site`; agents without a site share the unnamed one, as in the
/// aggregator's policy) get no hop discovery: the LAN between them has no ISP to find.
pub fn peer_targets(peers: &[Peer], my_site: Option<&str>) -> Vec<TargetSpec> {
    let mut out = Vec::new();
    for p in peers {
        let Some(ip) = p.addrs.first() else { continue };
        let same_site = p.site.as_deref() == my_site;
        out.push(TargetSpec {
            probe: ProbeKind::Icmp,
            host: Host::Ip(*ip),
            port: None,
            label: p.name.clone(),
            dns_name: None,
            options: crate::options::TargetOptions {
                hops: same_site.then_some(false),
                ..Default::default()
            },
        });
        if let Some(port) = p.stamp_port {
            out.push(TargetSpec {
                probe: ProbeKind::Stamp,
                host: Host::Ip(*ip),
                port: Some(port),
                label: p.name.clone(),
                dns_name: None,
                options: Default::default(),
            });
        }
    }
    out
}

/// Every aggregator's last peer list, applied to the probers through the [`Reloader`].
#[derive(Debug)]
pub struct PeerBoard {
    lists: Mutex<BTreeMap<String, Vec<Peer>>>,
    reloader: Arc<Reloader>,
    /// This agent's own name (never probed as a peer, should a list name it).
    me: String,
    /// This agent's site: peers in it get no hop discovery.
    site: Option<String>,
}

impl PeerBoard {
    pub fn new(me: String, site: Option<String>, reloader: Arc<Reloader>) -> Arc<PeerBoard> {
        Arc::new(PeerBoard {
            lists: Mutex::new(BTreeMap::new()),
            reloader,
            me,
            site,
        })
    }

    /// `aggregator` sent a new peer list (epoch `epoch`): probe the union of all lists.
    pub async fn update(&self, aggregator: &str, epoch: u64, peers: Vec<Peer>) {
        let n = peers.len();
        let merged: Vec<Peer> = {
            let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
            lists.insert(aggregator.to_string(), peers);
            let mut by_name: BTreeMap<&str, &Peer> = BTreeMap::new();
            for p in lists.values().flatten() {
                if p.name != self.me {
                    by_name.entry(p.name.as_str()).or_insert(p);
                }
            }
            by_name.into_values().cloned().collect()
        };
        let (added, removed) = self
            .reloader
            .set_peers(peer_targets(&merged, self.site.as_deref()))
            .await;
        tracing::info!(
            %aggregator,
            epoch,
            peers = n,
            merged = merged.len(),
            ?added,
            ?removed,
            "peer list applied"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, ip: &str, stamp: Option<u16>) -> Peer {
        Peer {
            name: name.into(),
            site: Some("hq".into()),
            isp: None,
            addrs: vec![ip.parse().expect("ip")],
            stamp_port: stamp,
        }
    }

    #[test]
    fn peers_become_icmp_and_stamp_targets_named_after_the_peer() {
        let t = peer_targets(
            &[
                peer("b", "10.0.0.2", None),
                peer("c", "fd00::3", Some(8620)),
            ],
            Some("hq"),
        );
        let got: Vec<_> = t
            .iter()
            .map(|t| (t.probe, t.label.as_str(), t.host.to_string(), t.port))
            .collect();
        assert_eq!(
            got,
            [
                (ProbeKind::Icmp, "b", "10.0.0.2".to_string(), None),
                (ProbeKind::Icmp, "c", "fd00::3".to_string(), None),
                (ProbeKind::Stamp, "c", "fd00::3".to_string(), Some(8620)),
            ]
        );
    }

    /// Hop discovery toward peers in other sites (their path crosses ISPs), not toward
    /// peers in this agent's own site; agents without a site share the unnamed one.
    #[test]
    fn only_peers_in_other_sites_get_hop_discovery() {
        let mut far = peer("far", "192.0.2.9", None);
        far.site = Some("branch".into());
        let mut unnamed = peer("u", "192.0.2.10", None);
        unnamed.site = None;
        let peers = [peer("near", "10.0.0.2", None), far, unnamed];
        let hops = |site: Option<&str>| -> Vec<(String, Option<bool>)> {
            peer_targets(&peers, site)
                .into_iter()
                .map(|t| (t.label, t.options.hops))
                .collect()
        };
        assert_eq!(
            hops(Some("hq")),
            [
                ("near".into(), Some(false)),
                ("far".into(), None),
                ("u".into(), None)
            ]
        );
        assert_eq!(
            hops(None),
            [
                ("near".into(), None),
                ("far".into(), None),
                ("u".into(), Some(false))
            ]
        );
        // And the hop prober leaves `hops=off` targets (and loopback ones) alone.
        let mut targets: Vec<(usize, TargetSpec)> = peer_targets(&peers, Some("hq"))
            .into_iter()
            .enumerate()
            .collect();
        targets.push((
            9,
            TargetSpec {
                host: Host::Ip("127.0.0.5".parse().expect("ip")),
                ..targets[1].1.clone()
            },
        ));
        let plan = crate::reload::ProbePlan {
            targets: targets.into(),
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            confirm: Default::default(),
        };
        let kept = crate::probe::hops::hop_targets(&plan);
        let labels: Vec<&str> = kept.iter().map(|(_, t)| t.label.as_str()).collect();
        assert_eq!(labels, ["far", "u"]);
    }
}
