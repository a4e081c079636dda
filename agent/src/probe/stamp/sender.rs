//! STAMP Session-Sender prober: one UDP socket per address family shared by all STAMP
//! targets, one session (SSID) per target, kernel TX and RX stamps, the reflector's
//! residence time removed from the RTT, loss per direction and one-way delay (see
//! `session`). A socket error is counted and followed by a backoff: it never spins.
//!
//! The targets follow the probe plan (a reload, a peer list): a target that stays keeps
//! its session, a new one opens a session with a new SSID, a removed one's session goes.
//!
//! Per-target options: DSCP and TTL go per packet on the shared sockets; a target with a
//! `source`, an `interface` or `ecmp=N` gets sockets of its own (N of them, one source
//! port each, one session per port, taking turns: see `ecmp`), read by small forwarding
//! tasks; `size` pads the test packet (the reflector answers with the same size). A target
//! whose options change is a new target (new sessions, new sockets).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pathpulse_wire::ProbeKind;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::clock::{ClockState, ClockSync};
use super::ecmp::{Turns, open_own, queue, spawn_readers};
use super::packet::{NtpTimestamp, ReflectorPacket, SenderPacket, StampKey};
use super::reflector::DEFAULT_PORT;
use super::session::{Arrival, Outcome, SenderSession};
use super::socket::{StampSocket, UdpEvent, recv_opt};
use crate::backoff::Backoff;
use crate::probe::icmp_socket::Family;
use crate::probe::matcher::StrayReason;
use crate::reload::{ProbePlan, Selected};
use crate::resolve::Resolver;
use crate::schedule::Schedule;
use crate::shared::Shared;
use crate::target::TargetSpec;

/// How often the kernel is asked whether the clock is synchronized.
const CLOCK_REFRESH: Duration = Duration::from_secs(10);

pub struct StampProber {
    plan: watch::Receiver<ProbePlan>,
    /// (slot, target) of the plan's STAMP targets.
    targets: Selected,
    interval: Duration,
    timeout: Duration,
    shared: Arc<Shared>,
    resolver: Arc<Resolver>,
    v4: Option<StampSocket>,
    v6: Option<StampSocket>,
    /// Authenticated mode (RFC 8762 §4.4) when set.
    key: Option<StampKey>,
    /// Who says whether the clock is synchronized (the S bit).
    clock: ClockSync,
}

/// One target's sessions (one per source port), its own sockets if it has any, and
/// whose turn it is.
struct Flows {
    spec: TargetSpec,
    sessions: Vec<SenderSession>,
    /// Empty: the shared socket of the family (or, for a target that needs its own,
    /// the sockets could not be opened and its probes count as send errors).
    socks: Vec<Arc<StampSocket>>,
    /// Stops the readers of `socks`.
    stop: CancellationToken,
    turns: Turns,
}

impl Drop for Flows {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// (slot, port index) of a session.
type FlowKey = (usize, usize);

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
    /// Open one socket per address family (targets may come later, from a reload or a
    /// peer list). Fails only when neither family can be opened.
    pub fn open(
        mut plan: watch::Receiver<ProbePlan>,
        shared: Arc<Shared>,
        resolver: Arc<Resolver>,
        key: Option<StampKey>,
        clock: ClockSync,
    ) -> std::io::Result<StampProber> {
        let p = plan.borrow_and_update().clone();
        let (targets, interval, timeout) = (p.of_kind(ProbeKind::Stamp), p.interval, p.timeout);
        let open = |_: Family, any: SocketAddr| Some(StampSocket::bind(any));
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
        Ok(StampProber {
            plan,
            targets,
            interval,
            timeout,
            shared,
            resolver,
            v4,
            v6,
            key,
            clock,
        })
    }

    fn socket(&self, ip: &IpAddr) -> Option<&StampSocket> {
        match Family::of(ip) {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// Sessions for the current targets: kept ones stay, new ones (and ones whose options
    /// changed) get the next SSIDs and, if they need them, sockets of their own.
    fn sync_sessions(
        &self,
        flows: &mut HashMap<usize, Flows>,
        by_ssid: &mut HashMap<u16, FlowKey>,
        next_ssid: &mut u16,
        own_tx: &tokio::sync::mpsc::Sender<Vec<UdpEvent>>,
        shutdown: &CancellationToken,
    ) {
        let retention = (self.timeout * 4).max(Duration::from_secs(10));
        flows.retain(|slot, f| self.targets.iter().any(|(s, t)| s == slot && *t == f.spec));
        for (slot, t) in &self.targets {
            if flows.contains_key(slot) {
                continue;
            }
            let turns = Turns::new(usize::from(t.options.ecmp.unwrap_or(1)));
            let sessions = (0..turns.ports())
                .map(|_| {
                    *next_ssid = next_ssid.wrapping_add(1);
                    SenderSession::new(*next_ssid, retention)
                })
                .collect();
            let stop = shutdown.child_token();
            let socks = if t.options.needs_own_socket() {
                match open_own(t) {
                    Ok(socks) => {
                        let ports: Vec<u16> = socks
                            .iter()
                            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
                            .collect();
                        tracing::info!(target_label = %t.label, ?ports, "STAMP target sockets of its own");
                        spawn_readers(&socks, &stop, own_tx);
                        socks
                    }
                    Err(e) => {
                        tracing::warn!(target_label = %t.label, error = %e, "STAMP target's sockets cannot be opened; its probes count as send errors");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            flows.insert(
                *slot,
                Flows {
                    spec: t.clone(),
                    sessions,
                    socks,
                    stop,
                    turns,
                },
            );
        }
        *by_ssid = flows
            .iter()
            .flat_map(|(slot, f)| {
                f.sessions
                    .iter()
                    .enumerate()
                    .map(move |(k, s)| (s.ssid, (*slot, k)))
            })
            .collect();
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        // One session per target, told apart by SSID (random base, so a restarted agent
        // opens new sessions at the reflector even on the same port).
        let mut next_ssid: u16 = rand::random();
        let mut flows: HashMap<usize, Flows> = HashMap::new();
        let mut by_ssid: HashMap<u16, FlowKey> = HashMap::new();
        // What the targets' own sockets receive (the sender half stays here: never closed).
        let (own_tx, mut own_rx) = queue();
        self.sync_sessions(&mut flows, &mut by_ssid, &mut next_ssid, &own_tx, &shutdown);
        // (deadline, slot, port index, sequence)
        let mut deadlines: BinaryHeap<Reverse<(Instant, usize, usize, u32)>> = BinaryHeap::new();
        let new_schedule =
            |n: usize, iv: Duration| Schedule::new(vec![iv; n], Instant::now(), rand::random());
        let mut sched = new_schedule(self.targets.len(), self.interval);
        let mut plan_open = true;
        let mut clock_state = self.clock.query();
        let mut clock_read = Instant::now();
        tracing::info!(
            synchronized = clock_state.synchronized,
            clock_sync = %self.clock,
            "STAMP sender: host clock"
        );
        let (mut buf4, mut buf6) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let (mut ev4, mut ev6) = (Vec::new(), Vec::new());
        let mut recv_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_send_error: Option<std::io::ErrorKind> = None;
        loop {
            let next = [
                sched.next_due(),
                deadlines.peek().map(|Reverse((t, _, _, _))| *t),
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
                r = self.plan.changed(), if plan_open => {
                    match r {
                        Ok(()) => {
                            let p = self.plan.borrow_and_update().clone();
                            self.targets = p.of_kind(ProbeKind::Stamp);
                            self.interval = p.interval;
                            self.timeout = p.timeout;
                            self.sync_sessions(&mut flows, &mut by_ssid, &mut next_ssid, &own_tx, &shutdown);
                            sched = new_schedule(self.targets.len(), self.interval);
                        }
                        Err(_) => plan_open = false,
                    }
                    continue;
                }
                _ = sleep => None,
                r = recv_opt(self.v4.as_ref(), &mut buf4, &mut ev4) => Some(r),
                r = recv_opt(self.v6.as_ref(), &mut buf6, &mut ev6) => Some(r),
                Some(evs) = own_rx.recv() => {
                    ev4.extend(evs);
                    Some(Ok(()))
                }
            };
            match received {
                Some(Ok(())) => {
                    recv_backoff.reset();
                    for ev in ev4.drain(..).chain(ev6.drain(..)) {
                        self.on_event(&mut flows, &by_ssid, ev);
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
                clock_state = self.clock.query();
                clock_read = now;
            }
            for due in sched.pop_due(now) {
                self.shared.lag(due.lag.as_micros() as u64);
                let Some((slot, spec)) = self.targets.get(due.target) else {
                    continue;
                };
                let Some(f) = flows.get_mut(slot) else {
                    continue;
                };
                let k = f.turns.take_turn();
                let own = f.socks.get(k).cloned();
                let Some(session) = f.sessions.get_mut(k) else {
                    continue;
                };
                if let Some(seq) = self
                    .send(
                        session,
                        *slot,
                        spec,
                        own.as_deref(),
                        clock_state,
                        &mut last_send_error,
                    )
                    .await
                {
                    deadlines.push(Reverse((Instant::now() + self.timeout, *slot, k, seq)));
                }
            }
            let now = Instant::now();
            if deadlines.peek().is_some_and(|Reverse((at, ..))| *at <= now) {
                // Replies the kernel already holds are answers, however late this task
                // runs; expire only once the queues are empty (else the next turn reads on).
                let drained = [
                    (self.v4.as_ref(), &mut buf4, &mut ev4),
                    (self.v6.as_ref(), &mut buf6, &mut ev6),
                ]
                .into_iter()
                .all(|(sock, buf, out)| {
                    sock.is_none_or(|s| {
                        s.drain(buf, out, crate::probe::DRAIN_LIMIT).unwrap_or(true)
                    })
                });
                while let Ok(evs) = own_rx.try_recv() {
                    ev4.extend(evs);
                }
                for ev in ev4.drain(..).chain(ev6.drain(..)) {
                    self.on_event(&mut flows, &by_ssid, ev);
                }
                if !drained {
                    continue;
                }
            }
            while let Some(&Reverse((at, slot, k, seq))) = deadlines.peek() {
                if at > now {
                    break;
                }
                deadlines.pop();
                // A target removed meanwhile: its session and its path are gone.
                let Some(session) = flows.get_mut(&slot).and_then(|f| f.sessions.get_mut(k)) else {
                    continue;
                };
                if session.expire(seq, now) {
                    self.shared.lost(slot);
                }
                self.flush_directions(session, slot);
            }
        }
    }

    async fn send(
        &self,
        session: &mut SenderSession,
        path: usize,
        spec: &TargetSpec,
        own: Option<&StampSocket>,
        clock_state: ClockState,
        last_error: &mut Option<std::io::ErrorKind>,
    ) -> Option<u32> {
        let path = &path;
        let ip = self.resolver.target_addr(spec);
        let sock_for = |ip: &IpAddr| match own {
            Some(own) => Some(own),
            // Its own sockets could not be opened: not the shared one either.
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
        let sent = match own {
            Some(_) => sock.send_to(&pkt, dst).await,
            None => sock.send_to_with(&pkt, dst, &spec.options).await,
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

    fn flush_directions(&self, session: &mut SenderSession, slot: usize) {
        let d = session.take_directions();
        if d.attributed == 0 {
            return;
        }
        self.shared.path(slot, |p| {
            let dir = p.directional.get_or_insert_default();
            dir.attributed += d.attributed;
            dir.forward_lost += d.forward_lost;
            dir.reverse_lost += d.reverse_lost;
        });
    }

    fn on_event(
        &self,
        flows: &mut HashMap<usize, Flows>,
        by_ssid: &HashMap<u16, FlowKey>,
        ev: UdpEvent,
    ) {
        match ev {
            UdpEvent::TxStamp { tail, tx_ns } => {
                if let Some((ssid, seq)) = SenderPacket::peek(&tail, self.key.is_some())
                    && let Some(s) = by_ssid
                        .get(&ssid)
                        .and_then(|(slot, k)| flows.get_mut(slot)?.sessions.get_mut(*k))
                {
                    s.tx_stamp(seq, tx_ns);
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
                let Some((path, session)) = by_ssid.get(&r.ssid).and_then(|(slot, k)| {
                    Some((*slot, flows.get_mut(slot)?.sessions.get_mut(*k)?))
                }) else {
                    self.shared.stray(StrayReason::NotOurs);
                    return;
                };
                let a = Arrival {
                    src,
                    rx_mono,
                    rx_kernel: rx_ns,
                };
                match session.reply(&r, &a) {
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
                        self.flush_directions(session, path);
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
