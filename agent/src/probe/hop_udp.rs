//! UDP hop probes, flow-stable (the Paris traceroute idea): every probe toward one target
//! leaves from the same source port to the same destination port, so the 5-tuple that
//! routers hash for ECMP never changes and all TTLs follow one path. Classic traceroute
//! varies the destination port per probe and can draw a "route" that mixes several paths.
//!
//! The routers' Time Exceeded and the target's Port Unreachable quote the IP header and the
//! first 8 bytes of UDP (ports, length, checksum). The TTL a probe left with is written
//! into its length (payload = [`BASE_PAYLOAD`] + TTL bytes), which every router quotes
//! unchanged; the checksum is not used because checksum offload (veth, many NICs) leaves a
//! partial value in the quoted copy on some paths. So at most one probe per (target, TTL)
//! is in flight, which the hop prober's once-per-interval probing gives anyway.
//!
//! Errors come back on the hop prober's RAW ICMP sockets (as
//! [`crate::probe::icmp_socket::Event::UdpError`]); this module only sends.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::probe::icmp_socket::{Family, register};

/// Destination port of UDP hop probes (traceroute's first port; nothing listens there).
pub const DEFAULT_PORT: u16 = 33434;
/// Payload bytes before the TTL-dependent tail: the hop magic and the agent's token.
pub const BASE_PAYLOAD: usize = 12;

/// Which packets the hop prober sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HopProbe {
    /// ICMP echo requests, checksum kept constant across probes (flow-stable).
    #[default]
    Icmp,
    /// UDP datagrams to port 33434 from one source port per agent (flow-stable).
    Udp,
}

impl std::fmt::Display for HopProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HopProbe::Icmp => "icmp",
            HopProbe::Udp => "udp",
        })
    }
}

/// The UDP length a probe sent with `ttl` has (header included): how a quoted error names
/// the TTL.
pub fn udp_len(ttl: u8) -> u16 {
    (8 + BASE_PAYLOAD + usize::from(ttl)) as u16
}

/// The TTL a quoted UDP length stands for, if it is one of ours.
pub fn ttl_of_len(len: u16) -> Option<u8> {
    let payload = usize::from(len).checked_sub(8 + BASE_PAYLOAD)?;
    u8::try_from(payload).ok().filter(|t| *t >= 1)
}

/// The payload of a probe sent with `ttl`: `head` (magic and token), then `ttl` bytes.
pub fn payload(head: &[u8; BASE_PAYLOAD], ttl: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(BASE_PAYLOAD + usize::from(ttl));
    p.extend_from_slice(head);
    p.resize(BASE_PAYLOAD + usize::from(ttl), 0);
    p
}

/// The UDP datagram quoted by an ICMP error: `(destination, source port, destination
/// port, UDP length)`. `message` is the whole ICMP message (type, code, checksum, 4 unused
/// bytes, then the quoted IP packet). `None` unless the quoted packet is UDP with its
/// header complete. Pure (fuzzed with the rest of the ICMP parser).
pub fn quoted_udp(family: Family, message: &[u8]) -> Option<(IpAddr, u16, u16, u16)> {
    let q = message.get(8..)?;
    let (dst, udp) = match family {
        Family::V4 => {
            if q.first()? >> 4 != 4 || *q.get(9)? != 17 {
                return None;
            }
            let ihl = usize::from(q[0] & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let d: [u8; 4] = q.get(16..20)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(d)), q.get(ihl..ihl + 8)?)
        }
        Family::V6 => {
            // Only a UDP header right after the fixed header: our probes carry no
            // extension headers.
            if q.first()? >> 4 != 6 || *q.get(6)? != 17 {
                return None;
            }
            let d: [u8; 16] = q.get(24..40)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(d)), q.get(40..48)?)
        }
    };
    let be = |i: usize| u16::from_be_bytes([udp[i], udp[i + 1]]);
    Some((dst, be(0), be(2), be(4)))
}

/// An unconnected UDP socket that sends hop probes (connected sockets would turn the
/// target's Port Unreachable into an error on the next send).
#[derive(Debug)]
pub struct UdpProbeSocket {
    fd: AsyncFd<Socket>,
    family: Family,
    port: u16,
}

impl UdpProbeSocket {
    pub fn open(family: Family) -> io::Result<UdpProbeSocket> {
        let (domain, any) = match family {
            Family::V4 => (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Family::V6 => (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if family == Family::V6 {
            sock.set_only_v6(true)?;
        }
        sock.set_nonblocking(true)?;
        // Nothing is read from it: a small receive buffer bounds what strays can cost.
        sock.set_recv_buffer_size(4096)?;
        sock.bind(&SockAddr::from(SocketAddr::new(any, 0)))?;
        let port = sock
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("UDP socket without a port"))?;
        Ok(UdpProbeSocket {
            fd: register(sock)?,
            family,
            port,
        })
    }

    /// The source port every probe of this socket leaves from.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// Send one probe with `ttl`; returns the monotonic time right after the syscall.
    pub async fn send(
        &self,
        dst: IpAddr,
        port: u16,
        ttl: u8,
        payload: &[u8],
    ) -> io::Result<Instant> {
        let s = self.fd.get_ref();
        match self.family {
            Family::V4 => s.set_ttl_v4(u32::from(ttl))?,
            Family::V6 => s.set_unicast_hops_v6(u32::from(ttl))?,
        }
        let addr = SockAddr::from(SocketAddr::new(dst, port));
        self.fd
            .async_io(Interest::WRITABLE, |s| s.send_to(payload, &addr))
            .await?;
        Ok(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

    fn v4_error(ty: u8, dst: [u8; 4], ports: (u16, u16), len: u16) -> Vec<u8> {
        let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 0];
        let mut ip = vec![0x45, 0, 0, 48, 0, 0, 0x40, 0, 1, 17, 0, 0, 10, 0, 0, 1];
        ip.extend_from_slice(&dst);
        m.extend_from_slice(&ip);
        m.extend_from_slice(&ports.0.to_be_bytes());
        m.extend_from_slice(&ports.1.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&[0xab, 0xcd]);
        m
    }

    #[test]
    fn ttl_round_trips_through_the_udp_length() {
        for ttl in 1..=255u8 {
            assert_eq!(ttl_of_len(udp_len(ttl)), Some(ttl));
            assert_eq!(usize::from(udp_len(ttl)), 8 + payload(&[7; 12], ttl).len());
        }
        assert_eq!(ttl_of_len(8 + BASE_PAYLOAD as u16), None);
        assert_eq!(ttl_of_len(3), None);
        assert_eq!(ttl_of_len(u16::MAX), None);
    }

    #[test]
    fn quoted_udp_is_read_from_v4_and_v6_errors() {
        let m = v4_error(11, [192, 0, 2, 9], (40000, DEFAULT_PORT), udp_len(3));
        assert_eq!(
            quoted_udp(Family::V4, &m),
            Some((
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
                40000,
                DEFAULT_PORT,
                udp_len(3)
            ))
        );
        // IPv4 options: the UDP header starts after IHL words.
        let mut opt = m.clone();
        opt[8] = 0x46;
        opt.splice(28..28, [1, 1, 1, 0]);
        assert_eq!(quoted_udp(Family::V4, &opt).map(|q| q.1), Some(40000));
        // Not UDP, truncated, bad IHL: nothing.
        let mut icmp = m.clone();
        icmp[8 + 9] = 1;
        assert_eq!(quoted_udp(Family::V4, &icmp), None);
        assert_eq!(quoted_udp(Family::V4, &m[..m.len() - 1]), None);
        let mut ihl = m.clone();
        ihl[8] = 0x41;
        assert_eq!(quoted_udp(Family::V4, &ihl), None);
        assert_eq!(quoted_udp(Family::V4, &[]), None);

        let mut v6 = vec![3, 0, 0, 0, 0, 0, 0, 0, 0x60, 0, 0, 0, 0, 20, 17, 1];
        v6.extend_from_slice(&[0xfd; 16]);
        v6.extend_from_slice(&DOC6.octets());
        v6.extend_from_slice(&[0x9c, 0x40, 0x82, 0x9a, 0, 21, 0, 0]);
        assert_eq!(
            quoted_udp(Family::V6, &v6),
            Some((IpAddr::V6(DOC6), 40000, DEFAULT_PORT, 21))
        );
        assert_eq!(quoted_udp(Family::V6, &v6[..v6.len() - 2]), None);
        assert_eq!(quoted_udp(Family::V4, &v6), None);
    }
}
