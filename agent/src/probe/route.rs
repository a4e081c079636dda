//! The route toward a target, pure: which address answers at each TTL, when the hop list
//! changed, and what role each hop plays (LAN, CPE, ISP, transit, target). No I/O except
//! [`default_gateways`], which reads the kernel's routing tables from `/proc`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pathpulse_wire::HopRole;

/// Responders by TTL (index 0 is TTL 1) and the TTL at which the target itself answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub hops: Vec<Option<IpAddr>>,
    pub reached: Option<u8>,
}

impl Route {
    /// Record that `addr` answered a probe sent with `ttl`; `is_target` when it was the
    /// target's own echo reply (or an unreachable from the target). Returns true when this
    /// changed the hop list (a different address at a TTL that had one: a route change).
    pub fn answer(&mut self, ttl: u8, addr: IpAddr, is_target: bool) -> bool {
        let i = usize::from(ttl.max(1)) - 1;
        if self.hops.len() <= i {
            self.hops.resize(i + 1, None);
        }
        let changed = self.hops[i].is_some_and(|old| old != addr);
        self.hops[i] = Some(addr);
        if is_target {
            if self.reached.is_none_or(|r| ttl < r) {
                self.reached = Some(ttl);
            }
            // Nothing lies beyond the target.
            self.hops.truncate(i + 1);
        }
        changed
    }

    /// TTLs to probe: up to the target once it answered, else up to `max_ttl`.
    pub fn probe_ttls(&self, max_ttl: u8) -> std::ops::RangeInclusive<u8> {
        1..=self.reached.unwrap_or(max_ttl).min(max_ttl)
    }

    /// The target answered at TTL 1: nothing in between, no hop view to keep.
    pub fn directly_connected(&self) -> bool {
        self.reached == Some(1)
    }
}

/// Addresses that are not routed on the internet: RFC 1918, CGNAT (RFC 6598), link-local,
/// loopback, ULA.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local() || is_cgnat(a),
        IpAddr::V6(a) => {
            a.is_loopback()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn is_cgnat(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 100 && (o[1] & 0xc0) == 64
}

/// A prefix `addr/len` (an ISP's address space, from the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let bits = u32::from(self.len.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                (u32::from(p) & mask) == (u32::from(a) & mask)
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let bits = u32::from(self.len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                (u128::from(p) & mask) == (u128::from(a) & mask)
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected ADDRESS/LENGTH"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{a:?}: not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = l
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{l:?}: prefix length must be 0..={max}"))?;
        Ok(Prefix { addr, len })
    }
}

/// The network a hop is in, for "same operator" guesses: the /16 of an IPv4 address, the
/// /32 of an IPv6 one.
fn operator_block(ip: IpAddr) -> Prefix {
    Prefix {
        addr: ip,
        len: if ip.is_ipv4() { 16 } else { 32 },
    }
}

/// Roles of the hops toward `target`, one per TTL:
///
/// - `target`: the target's own address;
/// - `cpe`: the default gateway when it is on the path; else, when the path starts with
///   private addresses, the last of them (a home router behind another);
/// - `lan`: private hops before the CPE;
/// - `isp`: with `isp_prefixes`, the hops inside them; without, the hops after the CPE
///   that are private (CGNAT) and the first public hop with the hops after it in the same
///   operator block (/16, /32 for IPv6);
/// - `transit`: everything after the ISP, before the target;
/// - a TTL nobody answered takes the role of the hop before it (`unknown` at the start).
pub fn classify(
    hops: &[Option<IpAddr>],
    target: IpAddr,
    gateways: &[IpAddr],
    isp_prefixes: &[Prefix],
) -> Vec<HopRole> {
    let cpe = hops
        .iter()
        .position(|h| h.is_some_and(|a| gateways.contains(&a) && a != target))
        .or_else(|| {
            // The leading run of private hops ends at the CPE.
            let mut last = None;
            for (i, h) in hops.iter().enumerate() {
                match h {
                    Some(a) if *a == target => break,
                    Some(a) if is_private(*a) => last = Some(i),
                    Some(_) => break,
                    None => {}
                }
            }
            last
        });
    let mut roles = Vec::with_capacity(hops.len());
    let mut isp_block: Option<Prefix> = None;
    let mut past_isp = false;
    for (i, h) in hops.iter().enumerate() {
        let prev = roles.last().copied().unwrap_or(HopRole::Unknown);
        let role = match h {
            None => prev,
            Some(a) if *a == target => HopRole::Target,
            Some(_) if cpe == Some(i) => HopRole::Cpe,
            Some(_) if cpe.is_some_and(|c| i < c) => HopRole::Lan,
            Some(_) if past_isp => HopRole::Transit,
            // The ISP's access network (CGNAT, a modem's private side) before any public hop.
            Some(a) if is_private(*a) && isp_block.is_none() => HopRole::Isp,
            Some(a) => {
                let inside = if isp_prefixes.is_empty() {
                    let block = *isp_block.get_or_insert_with(|| operator_block(*a));
                    block.contains(*a)
                } else {
                    isp_block.get_or_insert_with(|| operator_block(*a));
                    isp_prefixes.iter().any(|p| p.contains(*a))
                };
                if inside {
                    HopRole::Isp
                } else {
                    past_isp = true;
                    HopRole::Transit
                }
            }
        };
        roles.push(role);
    }
    roles
}

/// Default gateways of this network namespace, from `/proc/net/route` (IPv4) and
/// `/proc/net/ipv6_route` (IPv6). Unreadable tables give none.
pub fn default_gateways() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
        out.extend(parse_route_v4(&t));
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(parse_route_v6(&t));
    }
    out
}

/// `Iface Destination Gateway Flags ...`, hex in host (little-endian) byte order.
fn parse_route_v4(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dst, gw) = (f.get(1)?, f.get(2)?);
            if *dst != "00000000" {
                return None;
            }
            let g = u32::from_str_radix(gw, 16).ok()?;
            (g != 0).then(|| IpAddr::V4(Ipv4Addr::from(g.swap_bytes())))
        })
        .collect()
}

/// `dst dst_len src src_len next_hop metric refcnt use flags iface`, hex, network order.
fn parse_route_v6(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[0] != "0".repeat(32) || f[1] != "00" {
                return None;
            }
            let g = u128::from_str_radix(f[4], 16).ok()?;
            (g != 0).then(|| IpAddr::V6(Ipv6Addr::from(g)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use HopRole::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn hops(list: &[&str]) -> Vec<Option<IpAddr>> {
        list.iter().map(|s| (*s != "*").then(|| ip(s))).collect()
    }

    #[test]
    fn home_behind_cpe_then_isp_then_transit() {
        let h = hops(&[
            "192.168.1.1",
            "100.64.0.1",
            "203.0.113.9",
            "203.0.7.1",
            "198.51.100.2",
            "*",
            "192.0.2.2",
        ]);
        let roles = classify(&h, ip("192.0.2.2"), &[ip("192.168.1.1")], &[]);
        assert_eq!(roles, [Cpe, Isp, Isp, Isp, Transit, Transit, Target]);
    }

    #[test]
    fn double_nat_puts_the_first_router_on_the_lan_and_isp_prefixes_decide() {
        let h = hops(&[
            "10.0.0.1",
            "192.168.0.1",
            "203.0.113.1",
            "198.51.100.1",
            "192.0.2.9",
        ]);
        // No gateway match (say the table was unreadable): the last private hop is the CPE.
        let roles = classify(&h, ip("192.0.2.9"), &[], &[]);
        assert_eq!(roles, [Lan, Cpe, Isp, Transit, Target]);
        let isp: Prefix = "198.51.100.0/24".parse().expect("prefix");
        let isp2: Prefix = "203.0.113.0/24".parse().expect("prefix");
        // The gateway is the first router: the private hop after it is the ISP's access
        // network, and the configured prefixes make both public hops the ISP's.
        let roles = classify(&h, ip("192.0.2.9"), &[ip("10.0.0.1")], &[isp2, isp]);
        assert_eq!(roles, [Cpe, Isp, Isp, Isp, Target]);
        let roles = classify(&h, ip("192.0.2.9"), &[ip("10.0.0.1")], &[isp2]);
        assert_eq!(roles, [Cpe, Isp, Isp, Transit, Target]);
    }

    #[test]
    fn a_server_in_a_data_centre_has_no_cpe() {
        let h = hops(&["198.51.100.1", "198.51.7.1", "203.0.113.5", "192.0.2.1"]);
        let roles = classify(&h, ip("192.0.2.1"), &[], &[]);
        assert_eq!(roles, [Isp, Isp, Transit, Target]);
    }

    #[test]
    fn unanswered_ttls_inherit_and_a_leading_gap_is_unknown() {
        let h = hops(&["*", "192.168.1.1", "*", "192.0.2.1"]);
        let roles = classify(&h, ip("192.0.2.1"), &[ip("192.168.1.1")], &[]);
        assert_eq!(roles, [Unknown, Cpe, Cpe, Target]);
    }

    #[test]
    fn route_answers_track_changes_and_the_target() {
        let mut r = Route::default();
        assert!(!r.answer(2, ip("10.0.0.2"), false));
        assert!(!r.answer(1, ip("10.0.0.1"), false));
        assert!(
            !r.answer(1, ip("10.0.0.1"), false),
            "same address: no change"
        );
        assert!(
            r.answer(2, ip("10.9.9.9"), false),
            "another address at TTL 2"
        );
        assert!(!r.answer(4, ip("192.0.2.1"), true));
        assert_eq!(r.reached, Some(4));
        assert_eq!(r.probe_ttls(30), 1..=4);
        // The target answering earlier (a shorter route) cuts the list there.
        r.answer(3, ip("192.0.2.1"), true);
        assert_eq!(r.hops.len(), 3);
        assert_eq!(r.probe_ttls(30), 1..=3);
        assert!(!r.directly_connected());
    }

    #[test]
    fn prefixes_parse_and_match() {
        let p: Prefix = "203.0.113.0/24".parse().expect("prefix");
        assert!(p.contains(ip("203.0.113.77")));
        assert!(!p.contains(ip("203.0.114.1")));
        assert!(!p.contains(ip("2001:db8::1")));
        let p6: Prefix = "2001:db8::/32".parse().expect("prefix");
        assert!(p6.contains(ip("2001:db8:ffff::1")));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("10.0.0.0".parse::<Prefix>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Prefix>()
                .expect("all")
                .contains(ip("8.8.8.8"))
        );
    }

    #[test]
    fn gateways_from_proc_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_route_v4(v4), vec![ip("192.168.1.1")]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(parse_route_v6(v6), vec![ip("fe80::1")]);
    }
}
