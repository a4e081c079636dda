//! ICMP echo prober: one socket per address family shared by all targets, one receive
//! loop, kernel timestamps, exact matching (see `matcher`). A socket error is counted,
//! logged once per kind, and followed by a backoff: it never spins a core.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::probe::hops::HOP_MAGIC;
use crate::probe::icmp_socket::{Event, Family, IcmpSocket, OpenError, SocketKind};
use crate::probe::matcher::{Matcher, Outcome, ReplyMeta, encode_payload};
use crate::resolve::Resolver;
use crate::schedule::Schedule;
use crate::shared::Shared;
use crate::target::{Host, TargetSpec};

/// Bytes of ICMP payload (as `ping`'s default of 56).
pub const PAYLOAD_SIZE: usize = 56;

pub struct IcmpProber {
    targets: Vec<(usize, TargetSpec)>,
    interval: Duration,
    timeout: Duration,
    shared: Arc<Shared>,
    resolver: Arc<Resolver>,
    v4: Option<IcmpSocket>,
    v6: Option<IcmpSocket>,
}

/// Wait for events on a socket that may be absent (then never ready).
async fn recv_opt(
    sock: Option<&IcmpSocket>,
    buf: &mut [u8],
    out: &mut Vec<Event>,
) -> std::io::Result<()> {
    match sock {
        Some(s) => s.recv_batch(buf, out).await,
        None => std::future::pending().await,
    }
}

impl IcmpProber {
    /// Open the sockets the targets need. Fails only when no needed family can be opened.
    pub fn open(
        targets: Vec<(usize, TargetSpec)>,
        interval: Duration,
        timeout: Duration,
        shared: Arc<Shared>,
        resolver: Arc<Resolver>,
    ) -> Result<IcmpProber, OpenError> {
        let wants = |f: Family| {
            targets.iter().any(|(_, t)| match &t.host {
                Host::Ip(ip) => Family::of(ip) == f,
                Host::Name(_) => true,
            })
        };
        let open = |f: Family| -> Option<Result<IcmpSocket, OpenError>> {
            wants(f).then(|| IcmpSocket::open(f))
        };
        let (v4, v6) = (open(Family::V4), open(Family::V6));
        let (mut opened, mut errors) = (Vec::new(), Vec::new());
        let mut keep = |r: Option<Result<IcmpSocket, OpenError>>| match r {
            Some(Ok(s)) => {
                let bpf = if s.filtered() { " with BPF filter" } else { "" };
                opened.push(format!("{} {:?}{bpf}", s.family(), s.kind()));
                Some(s)
            }
            Some(Err(e)) => {
                errors.push(e);
                None
            }
            None => None,
        };
        let (v4, v6) = (keep(v4), keep(v6));
        if v4.is_none() && v6.is_none() && !errors.is_empty() {
            return Err(errors.swap_remove(0));
        }
        for e in &errors {
            tracing::warn!(error = %e, "ICMP probes of this family disabled; they count as send errors");
        }
        tracing::info!(sockets = ?opened, "ICMP sockets open");
        Ok(IcmpProber {
            targets,
            interval,
            timeout,
            shared,
            resolver,
            v4,
            v6,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let token: u64 = rand::random();
        let ident: u16 = rand::random();
        let retention = (self.timeout * 4).max(Duration::from_secs(10));
        let mut matcher = Matcher::new(token, ident, retention);
        let mut sched = Schedule::new(
            vec![self.interval; self.targets.len()],
            Instant::now(),
            rand::random(),
        );
        let (mut buf4, mut buf6) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let (mut events4, mut events6) = (Vec::new(), Vec::new());
        let mut recv_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_send_error: Option<std::io::ErrorKind> = None;
        loop {
            let next = [sched.next_due(), matcher.next_deadline()]
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
                r = recv_opt(self.v4.as_ref(), &mut buf4, &mut events4) => Some(r),
                r = recv_opt(self.v6.as_ref(), &mut buf6, &mut events6) => Some(r),
            };
            match received {
                Some(Ok(())) => {
                    recv_backoff.reset();
                    for ev in events4.drain(..).chain(events6.drain(..)) {
                        self.on_event(&mut matcher, ev);
                    }
                }
                Some(Err(e)) => {
                    self.shared.health(|h| h.recv_errors += 1);
                    let wait = recv_backoff.next_delay();
                    tracing::warn!(error = %e, backoff = ?wait, "ICMP receive failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => {}
            }
            let now = Instant::now();
            for due in sched.pop_due(now) {
                self.shared.lag(due.lag.as_micros() as u64);
                self.send(&mut matcher, due.target, &mut last_send_error)
                    .await;
            }
            for t in matcher.expire(Instant::now()) {
                self.shared.path(self.targets[t].0, |p| p.on_lost());
            }
        }
    }

    fn socket(&self, ip: &IpAddr) -> Option<&IcmpSocket> {
        match Family::of(ip) {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    async fn send(
        &self,
        matcher: &mut Matcher,
        t: usize,
        last_error: &mut Option<std::io::ErrorKind>,
    ) {
        let (path, spec) = &self.targets[t];
        let Some(ip) = self.resolver.addr(&spec.host) else {
            self.shared.path(*path, |p| p.on_send_error());
            return;
        };
        let Some(sock) = self.socket(&ip) else {
            self.shared.path(*path, |p| p.on_send_error());
            return;
        };
        let id = matcher.allocate();
        let payload = encode_payload(matcher.token(), id, PAYLOAD_SIZE);
        let pkt = sock.echo_request(matcher.ident(), id as u16, &payload);
        match sock.send_to(&pkt, ip).await {
            Ok(sent) => {
                matcher.sent(id, t, ip, sent, self.timeout);
                self.shared.path(*path, |p| p.on_sent());
                *last_error = None;
            }
            Err(e) => {
                self.shared.path(*path, |p| p.on_send_error());
                self.shared.health(|h| h.send_errors += 1);
                if *last_error != Some(e.kind()) {
                    tracing::warn!(target_addr = %ip, error = %e, "ICMP send failed (logged once until it changes)");
                    *last_error = Some(e.kind());
                }
            }
        }
    }

    fn on_event(&self, matcher: &mut Matcher, ev: Event) {
        match ev {
            Event::TxStamp { seq, tx_ns, .. } => matcher.tx_stamp(seq, tx_ns),
            // ICMP errors answer the hop prober's TTL-limited probes (its own socket).
            Event::Error { .. } => {}
            // Replies to the hop prober's probes (its own socket counts them).
            Event::Reply { payload, .. } if payload.starts_with(&HOP_MAGIC) => {}
            Event::Reply {
                src,
                ident,
                seq,
                payload,
                rx_ns,
                rx_mono,
            } => {
                let kernel_owns_ident = self
                    .socket(&src)
                    .is_some_and(|s| s.kind() == SocketKind::Dgram);
                let meta = ReplyMeta {
                    src,
                    ident: (!kernel_owns_ident).then_some(ident),
                    seq,
                    payload: &payload,
                    rx_mono,
                    rx_kernel: rx_ns,
                };
                match matcher.reply(&meta) {
                    Outcome::Reply {
                        target,
                        rtt,
                        reordered,
                        kernel_timestamps,
                    } => {
                        self.shared.health(|h| {
                            if kernel_timestamps {
                                h.rtt_kernel_clock += 1;
                            } else {
                                h.rtt_monotonic_clock += 1;
                            }
                        });
                        let us = rtt.as_micros().min(u128::from(u64::MAX)) as u64;
                        // Per-sample trace for accuracy investigations (off unless asked
                        // for with RUST_LOG=pathpulse_agent::probe::icmp=trace).
                        tracing::trace!(%src, seq, rtt_ns = rtt.as_nanos() as u64, kernel_timestamps, "rtt sample");
                        self.shared
                            .path(self.targets[target].0, |p| p.on_reply(us, reordered));
                    }
                    Outcome::Duplicate { target } => self
                        .shared
                        .path(self.targets[target].0, |p| p.on_duplicate()),
                    Outcome::Late { target } => {
                        self.shared.path(self.targets[target].0, |p| p.on_late())
                    }
                    Outcome::Stray(r) => self.shared.stray(r),
                }
            }
        }
    }
}
