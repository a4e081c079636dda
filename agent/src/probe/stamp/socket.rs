//! UDP sockets for STAMP (and the DNS probe) with kernel timestamps (the same `SO_TIMESTAMPING` set-up as the
//! ICMP sockets, see `icmp_socket`): RX stamps arrive with each datagram, TX stamps on the
//! error queue with a copy of the sent packet, whose last 44 bytes are the STAMP packet
//! (matched by SSID and sequence). The received TTL / hop limit comes with each datagram
//! (`IP_RECVTTL`, `IPV6_RECVHOPLIMIT`), for the reflector's "sender TTL" field.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, TimestampingFlag, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::packet::AUTH_PACKET_LEN;

/// Receive on `sock` when there is one; never return otherwise (a `select!` branch for an
/// address family without a socket).
pub(crate) async fn recv_opt(
    sock: Option<&StampSocket>,
    buf: &mut [u8],
    out: &mut Vec<UdpEvent>,
) -> std::io::Result<()> {
    match sock {
        Some(s) => s.recv_batch(buf, out).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
use super::packet::PACKET_LEN;
use crate::options::TargetOptions;
use crate::probe::icmp_socket::{register, timespec_ns};

/// Events handled per readiness before yielding to other tasks.
const MAX_BATCH: usize = 256;
/// TTL / hop limit of outgoing STAMP packets (so the far end sees the hop count).
pub const SEND_TTL: u32 = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpEvent {
    Datagram {
        src: SocketAddr,
        data: Vec<u8>,
        rx_ns: Option<i64>,
        rx_mono: Instant,
        ttl: Option<u8>,
    },
    /// Kernel TX stamp of a packet we sent; `tail` is its last 112 bytes (or fewer), which
    /// end with the STAMP packet.
    TxStamp { tail: Vec<u8>, tx_ns: i64 },
}

#[derive(Debug)]
pub struct StampSocket {
    fd: AsyncFd<Socket>,
    /// An IPv6 socket: IPv4 destinations are sent to as v4-mapped addresses.
    v6: bool,
}

/// Non-blocking, kernel timestamps, the received TTL with each datagram, and
/// [`SEND_TTL`] on what is sent.
fn setup(sock: &Socket, v6: bool) -> io::Result<()> {
    sock.set_nonblocking(true)?;
    let flags = TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE
        | TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE
        | TimestampingFlag::SOF_TIMESTAMPING_TX_SOFTWARE;
    setsockopt(sock, sockopt::Timestamping, &flags)?;
    if v6 {
        setsockopt(sock, sockopt::Ipv6RecvHopLimit, &true)?;
        sock.set_unicast_hops_v6(SEND_TTL)?;
    } else {
        setsockopt(sock, sockopt::Ipv4RecvTtl, &true)?;
        sock.set_ttl_v4(SEND_TTL)?;
    }
    Ok(())
}

fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        a => a,
    }
}

impl StampSocket {
    /// A non-blocking, timestamping UDP socket bound to `bind` (port 0: any).
    pub fn bind(bind: SocketAddr) -> io::Result<StampSocket> {
        Self::bind_with(bind, &TargetOptions::default())
    }

    /// As [`StampSocket::bind`], with a target's options (DSCP, TTL, interface) set on the
    /// socket; a `source` option is the caller's `bind` address.
    pub fn bind_with(bind: SocketAddr, opts: &TargetOptions) -> io::Result<StampSocket> {
        let domain = if bind.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if bind.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        setup(&sock, bind.is_ipv6())?;
        crate::probe::sockopt::apply(&sock, bind.is_ipv6(), opts)?;
        sock.bind(&bind.into())?;
        Ok(StampSocket {
            fd: register(sock)?,
            v6: bind.is_ipv6(),
        })
    }

    /// A UDP socket bound by someone else (systemd socket activation), set up as
    /// [`StampSocket::bind`] sets up its own. An IPv6 socket may be dual-stack: replies to
    /// IPv4 peers then go to their v4-mapped address.
    pub fn adopt(sock: Socket) -> io::Result<StampSocket> {
        if sock.r#type()? != Type::DGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a datagram socket",
            ));
        }
        let local = sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
        setup(&sock, local.is_ipv6())?;
        if local.is_ipv6() && !sock.only_v6()? {
            // IPv4 datagrams on a dual-stack socket carry their TTL this way.
            setsockopt(&sock, sockopt::Ipv4RecvTtl, &true)?;
        }
        Ok(StampSocket {
            fd: register(sock)?,
            v6: local.is_ipv6(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd
            .get_ref()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
    }

    /// Send one datagram; returns the monotonic time right after the syscall.
    pub async fn send_to(&self, packet: &[u8], dst: SocketAddr) -> io::Result<Instant> {
        let dst = match dst {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            d => d,
        };
        let addr = SockAddr::from(dst);
        self.fd
            .async_io(Interest::WRITABLE, |s| s.send_to(packet, &addr))
            .await?;
        Ok(Instant::now())
    }

    /// As [`StampSocket::send_to`] with a target's options as control messages (a socket
    /// shared by targets with different options).
    pub async fn send_to_with(
        &self,
        packet: &[u8],
        dst: SocketAddr,
        opts: &TargetOptions,
    ) -> io::Result<Instant> {
        if !crate::probe::sockopt::per_packet(opts) {
            return self.send_to(packet, dst).await;
        }
        self.fd
            .async_io(Interest::WRITABLE, |s| {
                crate::probe::sockopt::send_with(s, packet, dst, opts)
            })
            .await?;
        Ok(Instant::now())
    }

    /// Wait for readiness and read every datagram and TX stamp waiting (up to a batch).
    pub async fn recv_batch(&self, buf: &mut [u8], out: &mut Vec<UdpEvent>) -> io::Result<()> {
        loop {
            let mut guard = self.fd.ready(Interest::READABLE | Interest::ERROR).await?;
            let fd = guard.get_inner().as_raw_fd();
            if read_waiting(fd, buf, out, MAX_BATCH)? {
                guard.clear_ready();
            }
            if !out.is_empty() {
                return Ok(());
            }
        }
    }

    /// Read, without waiting, what the kernel holds now (up to `limit` datagrams per
    /// queue); true when both queues were emptied. Called before probes are declared
    /// lost, so that a starved process does not count its own delay as loss.
    pub fn drain(&self, buf: &mut [u8], out: &mut Vec<UdpEvent>, limit: usize) -> io::Result<bool> {
        read_waiting(self.fd.as_raw_fd(), buf, out, limit)
    }
}

fn read_waiting(
    fd: i32,
    buf: &mut [u8],
    out: &mut Vec<UdpEvent>,
    limit: usize,
) -> io::Result<bool> {
    let mut drained = true;
    for errqueue in [true, false] {
        let mut n = 0;
        loop {
            if n >= limit {
                drained = false;
                break;
            }
            match recv_one(fd, buf, errqueue) {
                Ok(Some(ev)) => out.push(ev),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors (port unreachable) queued on the socket: not ours to
                // count as a receive failure; the probe simply goes unanswered.
                Err(e) if errqueue || e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::debug!(error = %e, "STAMP socket error-queue read");
                    break;
                }
                Err(e) => return Err(e),
            }
            n += 1;
        }
    }
    Ok(drained)
}

fn recv_one(fd: i32, buf: &mut [u8], errqueue: bool) -> io::Result<Option<UdpEvent>> {
    let mut cmsg = nix::cmsg_space!(
        [nix::libc::timespec; 3],
        nix::libc::sock_extended_err,
        nix::libc::sockaddr_in6,
        nix::libc::c_int
    );
    let mut stamp = None;
    let mut ttl = None;
    let mut is_tx_stamp = false;
    let (bytes, truncated, address) = {
        let mut iov = [io::IoSliceMut::new(&mut buf[..])];
        let mut flags = MsgFlags::MSG_DONTWAIT;
        if errqueue {
            flags |= MsgFlags::MSG_ERRQUEUE;
        }
        let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), flags)
            .map_err(io::Error::from)?;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmTimestampsns(ts) => stamp = timespec_ns(&ts.system),
                    ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
                        ttl = u8::try_from(t).ok()
                    }
                    ControlMessageOwned::Ipv4RecvErr(e, _)
                    | ControlMessageOwned::Ipv6RecvErr(e, _) => {
                        is_tx_stamp = e.ee_origin == nix::libc::SO_EE_ORIGIN_TIMESTAMPING;
                    }
                    _ => {}
                }
            }
        }
        (
            msg.bytes,
            msg.flags.contains(MsgFlags::MSG_TRUNC),
            msg.address,
        )
    };
    let rx_mono = Instant::now();
    let len = bytes.min(buf.len());
    let src = address.and_then(|a: SockaddrStorage| {
        a.as_sockaddr_in()
            .map(|s| SocketAddr::from((s.ip(), s.port())))
            .or_else(|| {
                a.as_sockaddr_in6()
                    .map(|s| SocketAddr::from((s.ip(), s.port())))
            })
    });
    if errqueue {
        return Ok(match stamp {
            // Any length: STAMP matches the tail by SSID and sequence, DNS by the query.
            Some(tx_ns) if is_tx_stamp && len > 0 => Some(UdpEvent::TxStamp {
                tail: buf[len.saturating_sub(AUTH_PACKET_LEN)..len].to_vec(),
                tx_ns,
            }),
            _ => None,
        });
    }
    let Some(src) = src else { return Ok(None) };
    let mut data = buf[..len].to_vec();
    if truncated {
        // Longer than the buffer: keep one byte more than fits, so size checks see it.
        data.push(0);
    }
    Ok(Some(UdpEvent::Datagram {
        src: canonical(src),
        data,
        rx_ns: stamp,
        rx_mono,
        ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn udp_datagrams_carry_kernel_stamps_and_ttl() {
        let a = StampSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind a");
        let b = StampSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind b");
        let to = b.local_addr().expect("addr");
        let mut pkt = [0u8; PACKET_LEN];
        // Warm-up: software RX stamping is switched on host-wide lazily.
        a.send_to(&pkt, to).await.expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        pkt[0] = 0x42;
        a.send_to(&pkt, to).await.expect("send");
        let (mut got_rx, mut got_tx) = (None, None);
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(2);
        while (got_rx.is_none() || got_tx.is_none()) && Instant::now() < deadline {
            let mut evs = Vec::new();
            let ra =
                tokio::time::timeout(Duration::from_millis(100), a.recv_batch(&mut buf, &mut evs))
                    .await;
            let _ = ra;
            let rb =
                tokio::time::timeout(Duration::from_millis(100), b.recv_batch(&mut buf, &mut evs))
                    .await;
            let _ = rb;
            for ev in evs {
                match ev {
                    UdpEvent::Datagram {
                        data, rx_ns, ttl, ..
                    } if data[0] == 0x42 => {
                        assert_eq!(ttl, Some(SEND_TTL as u8));
                        got_rx = rx_ns;
                    }
                    UdpEvent::TxStamp { tail, tx_ns } if tail[tail.len() - PACKET_LEN] == 0x42 => {
                        got_tx = Some(tx_ns)
                    }
                    _ => {}
                }
            }
        }
        let (tx, rx) = (got_tx.expect("TX stamp"), got_rx.expect("RX stamp"));
        assert!(rx >= tx && rx - tx < 100_000_000, "tx {tx} rx {rx}");
    }
}
