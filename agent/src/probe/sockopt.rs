//! Per-target options on the wire: DSCP, TTL / hop limit, source address and interface.
//!
//! Two ways, one per kind of socket:
//! - a socket of the target's own (TCP connects, DNS, STAMP with `source`, `interface` or
//!   `ecmp`) gets them as socket options ([`apply`]): `IP_TOS` / `IPV6_TCLASS`, `IP_TTL` /
//!   `IPV6_UNICAST_HOPS`, `SO_BINDTODEVICE` and `bind`;
//! - a socket shared by many targets (ICMP, plain STAMP) gets them per packet as control
//!   messages on `sendmsg` ([`send_with`]): `IP_TOS`, `IP_TTL`, `IP_PKTINFO` (source
//!   address and outgoing interface) and their IPv6 counterparts.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
use socket2::Socket;

use crate::options::TargetOptions;

/// Apply the options to a socket of the target's own (before `bind` / `connect`); the
/// source address is bound by the caller (it needs the port too).
pub fn apply(sock: &Socket, v6: bool, o: &TargetOptions) -> io::Result<()> {
    if let Some(tos) = o.tos() {
        if v6 {
            sock.set_tclass_v6(u32::from(tos))?;
        } else {
            sock.set_tos_v4(u32::from(tos))?;
        }
    }
    if let Some(ttl) = o.ttl {
        if v6 {
            sock.set_unicast_hops_v6(u32::from(ttl))?;
        } else {
            sock.set_ttl_v4(u32::from(ttl))?;
        }
    }
    if let Some(dev) = &o.interface {
        sock.bind_device(Some(dev.as_bytes())).map_err(|e| {
            io::Error::new(e.kind(), format!("interface {dev} (SO_BINDTODEVICE): {e}"))
        })?;
    }
    Ok(())
}

/// True when [`send_with`] has something to add to a plain `send_to`.
pub fn per_packet(o: &TargetOptions) -> bool {
    o.dscp.is_some() || o.ttl.is_some() || o.source.is_some() || o.interface.is_some()
}

fn ifindex(o: &TargetOptions) -> io::Result<u32> {
    match &o.interface {
        None => Ok(0),
        Some(dev) => nix::net::if_::if_nametoindex(dev.as_str()).map_err(|e| {
            io::Error::new(io::Error::from(e).kind(), format!("interface {dev}: {e}"))
        }),
    }
}

/// Send one datagram on a shared socket with the target's options as control messages.
/// Non-blocking; `WouldBlock` is returned as is (the caller waits for writability).
pub fn send_with(
    sock: &Socket,
    data: &[u8],
    dst: SocketAddr,
    o: &TargetOptions,
) -> io::Result<usize> {
    let addr = SockaddrStorage::from(dst);
    let iov = [io::IoSlice::new(data)];
    let index = ifindex(o)?;
    let tos = o.tos();
    let ttl = o.ttl.map(i32::from);
    match dst.ip() {
        IpAddr::V4(_) => {
            let tos_byte = tos.unwrap_or(0);
            let ttl_int = ttl.unwrap_or(0);
            let pktinfo = nix::libc::in_pktinfo {
                ipi_ifindex: index as i32,
                ipi_spec_dst: nix::libc::in_addr {
                    s_addr: match o.source {
                        Some(IpAddr::V4(s)) => u32::from(s).to_be(),
                        _ => 0,
                    },
                },
                ipi_addr: nix::libc::in_addr { s_addr: 0 },
            };
            let mut cmsgs = Vec::with_capacity(3);
            if tos.is_some() {
                cmsgs.push(ControlMessage::Ipv4Tos(&tos_byte));
            }
            if ttl.is_some() {
                cmsgs.push(ControlMessage::Ipv4Ttl(&ttl_int));
            }
            if o.source.is_some() || index != 0 {
                cmsgs.push(ControlMessage::Ipv4PacketInfo(&pktinfo));
            }
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &cmsgs,
                MsgFlags::MSG_DONTWAIT,
                Some(&addr),
            )
            .map_err(io::Error::from)
        }
        IpAddr::V6(_) => {
            let tclass = tos.map(i32::from).unwrap_or(0);
            let hops = ttl.unwrap_or(0);
            let pktinfo = nix::libc::in6_pktinfo {
                ipi6_addr: nix::libc::in6_addr {
                    s6_addr: match o.source {
                        Some(IpAddr::V6(s)) => s.octets(),
                        _ => [0; 16],
                    },
                },
                ipi6_ifindex: index,
            };
            let mut cmsgs = Vec::with_capacity(3);
            if tos.is_some() {
                cmsgs.push(ControlMessage::Ipv6TClass(&tclass));
            }
            if ttl.is_some() {
                cmsgs.push(ControlMessage::Ipv6HopLimit(&hops));
            }
            if o.source.is_some() || index != 0 {
                cmsgs.push(ControlMessage::Ipv6PacketInfo(&pktinfo));
            }
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &cmsgs,
                MsgFlags::MSG_DONTWAIT,
                Some(&addr),
            )
            .map_err(io::Error::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn opts(text: &str) -> TargetOptions {
        crate::options::parse_flag(text).expect("valid").options
    }

    /// The options reach the receiver: TTL seen with `IP_RECVTTL`, TOS with `IP_RECVTOS`.
    #[test]
    fn per_packet_ttl_and_dscp_reach_the_receiver() {
        use nix::sys::socket::{ControlMessageOwned, recvmsg, setsockopt, sockopt};
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        setsockopt(&rx, sockopt::Ipv4RecvTtl, &true).expect("recvttl");
        setsockopt(&rx, sockopt::IpRecvTos, &true).expect("recvtos");
        let tx = Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
        let o = opts("stamp:127.0.0.1,dscp=46,ttl=7,source=127.0.0.1,interface=lo");
        send_with(&tx, b"hello", rx.local_addr().expect("addr"), &o).expect("send");
        let mut buf = [0u8; 64];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(i32, u8);
        let msg = recvmsg::<SockaddrStorage>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("recv");
        let (mut ttl, mut tos) = (None, None);
        for c in msg.cmsgs().expect("cmsgs") {
            match c {
                ControlMessageOwned::Ipv4Ttl(t) => ttl = Some(t),
                ControlMessageOwned::Ipv4Tos(t) => tos = Some(t),
                _ => {}
            }
        }
        assert_eq!((ttl, tos), (Some(7), Some(46 << 2)));
    }
}
