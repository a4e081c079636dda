//! ECMP spreading, pure: a STAMP target with `ecmp=N` sends from N source ports, one
//! STAMP session (SSID, sequence space) per port, taking turns probe by probe. Routers
//! hashing on the 5-tuple (`fib_multipath_hash_policy=1` on Linux, the default on most
//! routers) then put the sessions on different equal-cost paths, so a single bad path
//! shows as partial loss (about the share of ports it carries) instead of all or nothing.
//!
//! The sender keeps one session per (target, source port) and takes turns ([`Turns`]).
//! Targets with `ecmp`,
//! `source` or `interface` get sockets of their own ([`open_own`]), read by small tasks
//! that forward into one queue ([`spawn_readers`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::socket::{StampSocket, UdpEvent};
use crate::backoff::Backoff;
use crate::probe::icmp_socket::Family;
use crate::target::{Host, TargetSpec};

/// Whose turn it is among one target's source ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turns {
    ports: usize,
    next: usize,
}

impl Turns {
    /// `ports` source ports (0 is taken as 1).
    pub fn new(ports: usize) -> Turns {
        Turns {
            ports: ports.max(1),
            next: 0,
        }
    }

    pub fn ports(&self) -> usize {
        self.ports
    }

    /// The port the next probe goes out from; round robin, so over any N consecutive
    /// probes each of the N ports carries exactly one.
    pub fn take_turn(&mut self) -> usize {
        let k = self.next;
        self.next = (k + 1) % self.ports;
        k
    }
}

/// Bounded queue of event batches from the targets' own sockets.
const OWN_QUEUE: usize = 64;

/// Family a target's own sockets are opened for: of its address, its `family` option or
/// its `source`; IPv4 otherwise.
fn own_family(t: &TargetSpec) -> Family {
    match &t.host {
        Host::Ip(ip) => Family::of(ip),
        Host::Name(_) => t
            .options
            .family()
            .or(t.options.source.map(|s| Family::of(&s)))
            .unwrap_or(Family::V4),
    }
}

/// A target's own sockets: one per ECMP port, bound to its source (port 0: the kernel
/// picks distinct ports).
pub fn open_own(t: &TargetSpec) -> std::io::Result<Vec<Arc<StampSocket>>> {
    let any: IpAddr = match own_family(t) {
        Family::V4 => std::net::Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let bind = SocketAddr::new(t.options.source.unwrap_or(any), 0);
    (0..t.options.ecmp.unwrap_or(1).max(1))
        .map(|_| StampSocket::bind_with(bind, &t.options).map(Arc::new))
        .collect()
}

/// The queue the targets' own sockets' readers forward into.
pub fn queue() -> (
    tokio::sync::mpsc::Sender<Vec<UdpEvent>>,
    tokio::sync::mpsc::Receiver<Vec<UdpEvent>>,
) {
    tokio::sync::mpsc::channel(OWN_QUEUE)
}

/// Forward what a target's own sockets receive into the queue until `stop`.
pub fn spawn_readers(
    socks: &[Arc<StampSocket>],
    stop: &CancellationToken,
    tx: &tokio::sync::mpsc::Sender<Vec<UdpEvent>>,
) {
    for sock in socks {
        let (sock, tx, stop) = (sock.clone(), tx.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                let mut evs = Vec::new();
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = sock.recv_batch(&mut buf, &mut evs) => r,
                };
                match r {
                    Ok(()) => {
                        backoff.reset();
                        if tx.send(evs).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(error = %e, backoff = ?wait, "STAMP receive failed");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_carries_an_equal_share_in_turn() {
        let mut t = Turns::new(4);
        let picks: Vec<usize> = (0..8).map(|_| t.take_turn()).collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
        let mut one = Turns::new(0);
        assert_eq!((one.ports(), one.take_turn(), one.take_turn()), (1, 0, 0));
    }

    /// With N ports of which k hash onto a path that loses everything, the target's
    /// loss is k/N: the expected partial loss the lab test looks for.
    #[test]
    fn one_dead_path_shows_as_its_share_of_ports() {
        let mut t = Turns::new(8);
        let dead = [false, true, false, false, true, false, false, false];
        let lost = (0..800).filter(|_| dead[t.take_turn()]).count();
        assert_eq!(lost, 200);
    }

    #[tokio::test]
    async fn own_sockets_get_one_distinct_source_port_each_on_the_source_address() {
        let t =
            crate::options::parse_flag("stamp:127.0.0.1,ecmp=4,source=127.0.0.1").expect("spec");
        let socks = open_own(&t).expect("open");
        let addrs: Vec<SocketAddr> = socks
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        let mut ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 4, "{addrs:?}");
        assert!(
            addrs.iter().all(|a| a.ip() == IpAddr::from([127, 0, 0, 1])),
            "{addrs:?}"
        );
        let plain = crate::options::parse_flag("stamp:::1,interface=lo").expect("spec");
        let socks = open_own(&plain).expect("open v6");
        assert_eq!(socks.len(), 1);
        assert!(socks[0].local_addr().expect("addr").is_ipv6());
    }
}
