//! STAMP Session-Sender prober: one UDP socket per address family shared by all STAMP
//! targets, one session (SSID) per target, kernel TX and RX stamps, the reflector's
//! residence time removed from the RTT, loss per direction and one-way delay (see
//! `session`). A socket error is counted and followed by a backoff: it never spins.
//!
//! Per-target options: DSCP and TTL go per packet on the shared sockets; a target with a
//! `source`, an `interface` or `ecmp=N` gets sockets of its own (N of them, one source
//! port each, one session per port: see `ecmp`), read by small forwarding tasks; `size`
//! pads the test packet (the reflector answers with the same size).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::clock::{self, ClockState};
use super::ecmp::{Spread, open_own, spawn_readers};
use super::packet::{NtpTimestamp, ReflectorPacket, SenderPacket, StampKey};
use super::reflector::DEFAULT_PORT;
use super::session::{Arrival, Outcome, SenderSession};
use super::socket::{StampSocket, UdpEvent};
use crate::backoff::Backoff;
use crate::probe::icmp_socket::Family;
use crate::probe::matcher::StrayReason;
use crate::resolve::Resolver;
use crate::schedule::Schedule;
use crate::shared::Shared;
use crate::target::{Host, TargetSpec};

/// How often the kernel is asked whether the clock is synchronized.
const CLOCK_REFRESH: Duration = Duration::from_secs(10);

pub struct StampProber {
    targets: Vec<(usize, TargetSpec)>,
    interval: Duration,
    timeout: Duration,
    shared: Arc<Shared>,
    resolver: Arc<Resolver>,
    v4: Option<StampSocket>,
    v6: Option<StampSocket>,
    /// Authenticated mode (RFC 8762 §4.4) when set.
    key: Option<StampKey>,
    /// Flows (target, source port) and whose turn it is.
    spread: Spread,
    /// Per flow: its own socket, or `None` for the shared socket of its family.
    own: Vec<Option<Arc<StampSocket>>>,
}

async fn recv_opt(
    sock: Option<&StampSocket>,
    buf: &mut [u8],
    out: &mut Vec<UdpEvent>,
) -> std::io::Result<()> {
    match sock {
        Some(s) => s.recv_batch(buf, out).await,
        None => std::future::pending().await,
    }
}

fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

impl StampProber {
    /// Open the sockets the targets need. Fails only when no needed family can be opened.
    pub fn open(
        targets: Vec<(usize, TargetSpec)>,
        interval: Duration,
        timeout: Duration,
        shared: Arc<Shared>,
        resolver: Arc<Resolver>,
        key: Option<StampKey>,
    ) -> std::io::Result<StampProber> {
        let wants = |f: Family| {
            targets.iter().any(|(_, t)| {
                !t.options.needs_own_socket()
                    && match &t.host {
                        Host::Ip(ip) => Family::of(ip) == f,
                        Host::Name(_) => true,
                    }
            })
        };
        let open = |f: Family, any: SocketAddr| wants(f).then(|| StampSocket::bind(any));
        let v4 = open(Family::V4, SocketAddr::from(([0u8; 4], 0)));
        let v6 = open(Family::V6, SocketAddr::from(([0u16; 8], 0)));
        let mut first_err = None;
        let mut keep = |r: Option<std::io::Result<StampSocket>>, f: Family| match r {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                tracing::warn!(family = %f, error = %e, "STAMP probes of this family disabled; they count as send errors");
                first_err.get_or_insert(e);
                None
            }
            None => None,
        };
        let (v4, v6) = (keep(v4, Family::V4), keep(v6, Family::V6));
        if let (None, None, Some(e)) = (&v4, &v6, first_err) {
            return Err(e);
        }
        let spread = Spread::new(
            &targets
                .iter()
                .map(|(_, t)| usize::from(t.options.ecmp.unwrap_or(1)))
                .collect::<Vec<_>>(),
        );
        let mut own = vec![None; spread.flows()];
        for (i, (_, t)) in targets.iter().enumerate() {
            if !t.options.needs_own_socket() {
                continue;
            }
            match open_own(t) {
                Ok(socks) => {
                    let ports: Vec<u16> = socks
                        .iter()
                        .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
                        .collect();
                    tracing::info!(target_label = %t.label, ?ports, "STAMP target sockets of its own");
                    for (flow, sock) in spread.flows_of(i).zip(socks) {
                        own[flow] = Some(sock);
                    }
                }
                // Its probes count as send errors (no socket for its flows).
                Err(e) => {
                    tracing::warn!(target_label = %t.label, error = %e, "STAMP target's sockets cannot be opened")
                }
            }
        }
        Ok(StampProber {
            targets,
            interval,
            timeout,
            shared,
            resolver,
            v4,
            v6,
            key,
            spread,
            own,
        })
    }

    fn socket(&self, ip: &IpAddr) -> Option<&StampSocket> {
        match Family::of(ip) {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let retention = (self.timeout * 4).max(Duration::from_secs(10));
        // One session per target, told apart by SSID (random base, so a restarted agent
        // opens new sessions at the reflector even on the same port).
        let base: u16 = rand::random();
        let mut sessions: Vec<SenderSession> = (0..self.spread.flows())
            .map(|i| SenderSession::new(base.wrapping_add(i as u16), retention))
            .collect();
        let by_ssid: HashMap<u16, usize> = sessions
            .iter()
            .enumerate()
            .map(|(i, s)| (s.ssid, i))
            .collect();
        // (deadline, flow, sequence)
        let mut deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>> = BinaryHeap::new();
        let mut own_events = spawn_readers(self.own.iter().flatten(), &shutdown);
        let mut own_open = self.own.iter().any(Option::is_some);
        let mut sched = Schedule::new(
            vec![self.interval; self.targets.len()],
            Instant::now(),
            rand::random(),
        );
        let mut clock_state = clock::query();
        let mut clock_read = Instant::now();
        tracing::info!(
            synchronized = clock_state.synchronized,
            "STAMP sender: host clock"
        );
        let (mut buf4, mut buf6) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let (mut ev4, mut ev6) = (Vec::new(), Vec::new());
        let mut recv_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_send_error: Option<std::io::ErrorKind> = None;
        loop {
            let next = [
                sched.next_due(),
                deadlines.peek().map(|Reverse((t, _, _))| *t),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = tokio::time::sleep_until(
                next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
                    .into(),
            );
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sleep => None,
                r = recv_opt(self.v4.as_ref(), &mut buf4, &mut ev4) => Some(r),
                r = recv_opt(self.v6.as_ref(), &mut buf6, &mut ev6) => Some(r),
                batch = own_events.recv(), if own_open => match batch {
                    Some(evs) => {
                        ev4.extend(evs);
                        Some(Ok(()))
                    }
                    None => {
                        own_open = false;
                        None
                    }
                },
            };
            match received {
                Some(Ok(())) => {
                    recv_backoff.reset();
                    for ev in ev4.drain(..).chain(ev6.drain(..)) {
                        self.on_event(&mut sessions, &by_ssid, ev);
                    }
                }
                Some(Err(e)) => {
                    self.shared.health(|h| h.recv_errors += 1);
                    let wait = recv_backoff.next_delay();
                    tracing::warn!(error = %e, backoff = ?wait, "STAMP receive failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => {}
            }
            let now = Instant::now();
            if now.saturating_duration_since(clock_read) > CLOCK_REFRESH {
                clock_state = clock::query();
                clock_read = now;
            }
            for due in sched.pop_due(now) {
                self.shared.lag(due.lag.as_micros() as u64);
                let flow = self.spread.next(due.target);
                if let Some(seq) = self
                    .send(&mut sessions[flow], flow, clock_state, &mut last_send_error)
                    .await
                {
                    deadlines.push(Reverse((Instant::now() + self.timeout, flow, seq)));
                }
            }
            let now = Instant::now();
            while let Some(&Reverse((at, flow, seq))) = deadlines.peek() {
                if at > now {
                    break;
                }
                deadlines.pop();
                if sessions[flow].expire(seq, now) {
                    self.shared.path(self.path_of(flow), |p| p.on_lost());
                }
                self.flush_directions(&mut sessions[flow], flow);
            }
        }
    }

    /// The `Shared` slot a flow reports into.
    fn path_of(&self, flow: usize) -> usize {
        self.targets[self.spread.target_of(flow)].0
    }

    async fn send(
        &self,
        session: &mut SenderSession,
        flow: usize,
        clock_state: ClockState,
        last_error: &mut Option<std::io::ErrorKind>,
    ) -> Option<u32> {
        let (path, spec) = &self.targets[self.spread.target_of(flow)];
        let ip = self.resolver.target_addr(spec);
        let sock_for = |ip: &IpAddr| match &self.own[flow] {
            Some(own) => Some(own.as_ref()),
            None if spec.options.needs_own_socket() => None,
            None => self.socket(ip),
        };
        let Some((ip, sock)) = ip.and_then(|ip| Some((ip, sock_for(&ip)?))) else {
            self.shared.path(*path, |p| p.on_send_error());
            return None;
        };
        let dst = SocketAddr::new(ip, spec.port.unwrap_or(DEFAULT_PORT));
        let tx_wall = wall_ns();
        let p = SenderPacket {
            seq: session.next_seq(),
            timestamp: NtpTimestamp::from_unix_ns(tx_wall),
            error: clock_state.error_estimate(),
            ssid: session.ssid,
        };
        let mut pkt = match &self.key {
            None => p.encode().to_vec(),
            Some(k) => p.encode_auth(k).to_vec(),
        };
        if let Some(size) = spec.options.size {
            // `size` is the IP packet; padding is zeros (RFC 8762 leaves it to the sender).
            let want = usize::from(size).saturating_sub(crate::options::header_len(&ip));
            pkt.resize(pkt.len().max(want), 0);
        }
        let sent = if self.own[flow].is_some() {
            sock.send_to(&pkt, dst).await
        } else {
            sock.send_to_with(&pkt, dst, &spec.options).await
        };
        match sent {
            Ok(sent) => {
                let seq = session.sent(dst, sent, tx_wall);
                self.shared.path(*path, |p| p.on_sent());
                *last_error = None;
                Some(seq)
            }
            Err(e) => {
                self.shared.path(*path, |p| p.on_send_error());
                self.shared.health(|h| h.send_errors += 1);
                if *last_error != Some(e.kind()) {
                    tracing::warn!(target_addr = %dst, error = %e, "STAMP send failed (logged once until it changes)");
                    *last_error = Some(e.kind());
                }
                None
            }
        }
    }

    fn flush_directions(&self, session: &mut SenderSession, flow: usize) {
        let d = session.take_directions();
        if d.attributed == 0 {
            return;
        }
        self.shared.path(self.path_of(flow), |p| {
            let dir = p.directional.get_or_insert_default();
            dir.attributed += d.attributed;
            dir.forward_lost += d.forward_lost;
            dir.reverse_lost += d.reverse_lost;
        });
    }

    fn on_event(
        &self,
        sessions: &mut [SenderSession],
        by_ssid: &HashMap<u16, usize>,
        ev: UdpEvent,
    ) {
        match ev {
            UdpEvent::TxStamp { tail, tx_ns } => {
                if let Some((ssid, seq)) = SenderPacket::peek(&tail, self.key.is_some())
                    && let Some(&t) = by_ssid.get(&ssid)
                {
                    sessions[t].tx_stamp(seq, tx_ns);
                }
            }
            UdpEvent::Datagram {
                src,
                data,
                rx_ns,
                rx_mono,
                ..
            } => {
                let decoded = match &self.key {
                    None => ReflectorPacket::decode(&data),
                    Some(k) => ReflectorPacket::decode_auth(&data, k),
                };
                let Ok(r) = decoded else {
                    self.shared.stray(StrayReason::NotOurs);
                    return;
                };
                let Some(&t) = by_ssid.get(&r.ssid) else {
                    self.shared.stray(StrayReason::NotOurs);
                    return;
                };
                let a = Arrival {
                    src,
                    rx_mono,
                    rx_kernel: rx_ns,
                };
                let path = self.path_of(t);
                match sessions[t].reply(&r, &a) {
                    Outcome::Reply {
                        rtt,
                        reordered,
                        kernel_timestamps,
                        owd,
                    } => {
                        self.shared.health(|h| {
                            if kernel_timestamps {
                                h.rtt_kernel_clock += 1;
                            } else {
                                h.rtt_monotonic_clock += 1;
                            }
                        });
                        tracing::trace!(%src, seq = r.sender_seq, rtt_ns = rtt.as_nanos() as u64, kernel_timestamps, "stamp rtt sample");
                        self.shared.path(path, |p| {
                            p.on_reply(us(rtt), reordered);
                            if let Some((fwd, rev)) = owd {
                                let dir = p.directional.get_or_insert_default();
                                dir.owd_forward.record(us(fwd));
                                dir.owd_reverse.record(us(rev));
                            }
                        });
                        self.flush_directions(&mut sessions[t], t);
                    }
                    Outcome::Duplicate => self.shared.path(path, |p| p.on_duplicate()),
                    Outcome::Late => self.shared.path(path, |p| p.on_late()),
                    Outcome::WrongSource => self.shared.stray(StrayReason::WrongSource),
                    Outcome::Unknown => self.shared.stray(StrayReason::UnknownProbe),
                }
            }
        }
    }
}
