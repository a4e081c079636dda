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
/// too when it runs a reflector. The `dst` label is the peer's name.
pub fn peer_targets(peers: &[Peer]) -> Vec<TargetSpec> {
    let mut out = Vec::new();
    for p in peers {
        let Some(ip) = p.addrs.first() else { continue };
        out.push(TargetSpec {
            probe: ProbeKind::Icmp,
            host: Host::Ip(*ip),
            port: None,
            label: p.name.clone(),
            dns_name: None,
            options: Default::default(),
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
}

impl PeerBoard {
    pub fn new(me: String, reloader: Arc<Reloader>) -> Arc<PeerBoard> {
        Arc::new(PeerBoard {
            lists: Mutex::new(BTreeMap::new()),
            reloader,
            me,
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
        let (added, removed) = self.reloader.set_peers(peer_targets(&merged)).await;
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
        let t = peer_targets(&[
            peer("b", "10.0.0.2", None),
            peer("c", "fd00::3", Some(8620)),
        ]);
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
}
