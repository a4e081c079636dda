//! Target addresses: IP targets as they are, names re-resolved periodically. A failure is
//! counted on the path (`send_errors`) and logged on change, never fatal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::probe::icmp_socket::Family;
use crate::target::{Host, TargetSpec};

/// A name's current addresses, first of each family.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Addrs {
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
}

impl Addrs {
    /// IPv4 preferred when both exist.
    fn any(&self) -> Option<IpAddr> {
        self.v4.or(self.v6)
    }
}

pub const REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Resolver {
    names: Mutex<HashMap<String, Addrs>>,
}

impl Resolver {
    pub fn new(hosts: impl IntoIterator<Item = Host>) -> Arc<Self> {
        let r = Resolver::default();
        {
            let mut m = r.names.lock().unwrap_or_else(|e| e.into_inner());
            for h in hosts {
                if let Host::Name(n) = h {
                    m.insert(n, Addrs::default());
                }
            }
        }
        Arc::new(r)
    }

    /// Track exactly these hosts' names from now on (a reload): names that stay keep
    /// their address, new ones are unresolved until the next [`Resolver::refresh`].
    pub fn set_hosts(&self, hosts: impl IntoIterator<Item = Host>) {
        let want: std::collections::HashSet<String> = hosts
            .into_iter()
            .filter_map(|h| match h {
                Host::Name(n) => Some(n),
                Host::Ip(_) => None,
            })
            .collect();
        let mut m = self.names.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|n, _| want.contains(n));
        for n in want {
            m.entry(n).or_default();
        }
    }

    /// Current address of a host, `None` while a name does not resolve.
    pub fn addr(&self, h: &Host) -> Option<IpAddr> {
        self.addr_in(h, None)
    }

    /// Current address of a host in one family (`None`: any, IPv4 preferred).
    pub fn addr_in(&self, h: &Host, family: Option<Family>) -> Option<IpAddr> {
        match h {
            Host::Ip(ip) => Some(*ip),
            Host::Name(n) => {
                let a = self
                    .names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(n)
                    .copied()
                    .unwrap_or_default();
                match family {
                    None => a.any(),
                    Some(Family::V4) => a.v4,
                    Some(Family::V6) => a.v6,
                }
            }
        }
    }

    /// The address a target is probed at now (its `family` option respected).
    pub fn target_addr(&self, t: &TargetSpec) -> Option<IpAddr> {
        self.addr_in(&t.host, t.options.family())
    }

    /// Resolve every name once (first address; IPv4 preferred when both exist).
    pub async fn refresh(&self) {
        let names: Vec<String> = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for n in names {
            let res = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((n.as_str(), 0)),
            )
            .await;
            let addrs = match res {
                Ok(Ok(it)) => {
                    let all: Vec<IpAddr> = it.map(|s| s.ip()).collect();
                    Addrs {
                        v4: all.iter().find(|a| a.is_ipv4()).copied(),
                        v6: all.iter().find(|a| a.is_ipv6()).copied(),
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(name = %n, error = %e, "resolution failed");
                    Addrs::default()
                }
                Err(_) => Addrs::default(),
            };
            let addr = addrs.any();
            let mut m = self.names.lock().unwrap_or_else(|e| e.into_inner());
            let prev = m.insert(n.clone(), addrs).unwrap_or_default().any();
            if prev != addr {
                match addr {
                    Some(a) => tracing::info!(name = %n, addr = %a, "target resolved"),
                    None => {
                        tracing::warn!(name = %n, "target does not resolve; its probes count as send errors")
                    }
                }
            }
        }
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => self.refresh().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_are_kept_per_family_and_ipv4_is_preferred() {
        let r = Resolver::new([Host::Name("localhost".into())]);
        r.refresh().await;
        let h = Host::Name("localhost".into());
        let (v4, v6) = (
            r.addr_in(&h, Some(Family::V4)),
            r.addr_in(&h, Some(Family::V6)),
        );
        assert!(v4.is_none_or(|a| a.is_ipv4()), "{v4:?}");
        assert!(v6.is_none_or(|a| a.is_ipv6()), "{v6:?}");
        assert!(v4.is_some() || v6.is_some(), "localhost resolves");
        assert_eq!(r.addr(&h), v4.or(v6));
        // An address is what it is, whatever the family asked.
        let ip = Host::Ip("192.0.2.1".parse().expect("ip"));
        assert_eq!(
            r.addr_in(&ip, Some(Family::V6)),
            Some("192.0.2.1".parse().expect("ip"))
        );
    }
}
