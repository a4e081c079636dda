//! ICMP echo prober: one socket per address family shared by all targets, one receive
//! loop, kernel timestamps, exact matching (see `matcher`). A socket error is counted,
//! logged once per kind, and followed by a backoff: it never spins a core. The matcher
//! keys probes by the path's slot, so a reload (a new [`ProbePlan`]) keeps in-flight
//! probes of targets that stay.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pathpulse_wire::ProbeKind;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::probe::confirm::Bursts;
use crate::probe::hops::HOP_MAGIC;
use crate::probe::icmp_socket::{Event, Family, IcmpSocket, OpenError, SocketKind};
use crate::probe::matcher::{Matcher, Outcome, ReplyMeta, encode_payload, mark_confirm};
use crate::reload::{ProbePlan, Selected};
use crate::resolve::Resolver;
use crate::schedule::Schedule;
use crate::shared::Shared;
use crate::systemd::{BEAT_EVERY, Beat};
use crate::target::Host;

/// Bytes of ICMP payload (as `ping`'s default of 56).
pub const PAYLOAD_SIZE: usize = 56;

pub struct IcmpProber {
    /// (slot in `Shared`, target): the ICMP targets of the current plan.
    targets: Selected,
    interval: Duration,
    timeout: Duration,
    /// Confirmation bursts (see `probe::confirm`), keyed by the path's slot.
    bursts: Bursts,
    /// Index in `targets` by slot, for the bursts.
    by_slot: HashMap<usize, usize>,
    shared: Arc<Shared>,
    resolver: Arc<Resolver>,
    v4: Option<IcmpSocket>,
    v6: Option<IcmpSocket>,
    plan: watch::Receiver<ProbePlan>,
    beat: Arc<Beat>,
}

/// RTT samples of one receive batch by the clock they came from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ClockCounts {
    kernel: u32,
    monotonic: u32,
}

/// Wait for events on a socket that may be absent (then never ready).
pub(crate) async fn recv_opt(
    sock: Option<&IcmpSocket>,
    buf: &mut [u8],
    out: &mut Vec<Event>,
) -> std::io::Result<()> {
    match sock {
        Some(s) => s.recv_batch(buf, out).await,
        None => std::future::pending().await,
    }
}

/// What woke the loop.
enum Wake {
    Stop,
    Timer,
    Received(std::io::Result<()>),
    Plan(Option<ProbePlan>),
}

fn wants(targets: &Selected, f: Family) -> bool {
    targets.iter().any(|(_, t)| match &t.host {
        Host::Ip(ip) => Family::of(ip) == f,
        Host::Name(_) => true,
    })
}

fn by_slot(targets: &Selected) -> HashMap<usize, usize> {
    targets
        .iter()
        .enumerate()
        .map(|(t, (slot, _))| (*slot, t))
        .collect()
}

fn describe(s: &IcmpSocket) -> String {
    let bpf = if s.filtered() { " with BPF filter" } else { "" };
    format!("{} {:?}{bpf}", s.family(), s.kind())
}

impl IcmpProber {
    /// Open the sockets the plan's ICMP targets need; with no ICMP targets it opens
    /// nothing. The error is there when no needed family could be opened: the prober
    /// still runs (its targets count send errors; a reload tries to open again).
    pub fn open(
        plan: watch::Receiver<ProbePlan>,
        shared: Arc<Shared>,
        resolver: Arc<Resolver>,
        beat: Arc<Beat>,
    ) -> (IcmpProber, Option<OpenError>) {
        let p = plan.borrow().clone();
        let targets = p.of_kind(ProbeKind::Icmp);
        let mut prober = IcmpProber {
            by_slot: by_slot(&targets),
            targets,
            interval: p.interval,
            timeout: p.timeout,
            bursts: Bursts::new(p.confirm),
            shared,
            resolver,
            v4: None,
            v6: None,
            plan,
            beat,
        };
        let mut errors = prober.open_missing();
        let failed = (prober.v4.is_none() && prober.v6.is_none() && !errors.is_empty())
            .then(|| errors.swap_remove(0));
        (prober, failed)
    }

    /// Open the families the targets need and that are not open yet; returns the errors
    /// (logged: those targets count send errors).
    fn open_missing(&mut self) -> Vec<OpenError> {
        let (mut opened, mut errors) = (Vec::new(), Vec::new());
        for f in [Family::V4, Family::V6] {
            let slot = match f {
                Family::V4 => &mut self.v4,
                Family::V6 => &mut self.v6,
            };
            if slot.is_some() || !wants(&self.targets, f) {
                continue;
            }
            match IcmpSocket::open(f) {
                Ok(s) => {
                    opened.push(describe(&s));
                    *slot = Some(s);
                }
                Err(e) => errors.push(e),
            }
        }
        if !opened.is_empty() {
            tracing::info!(sockets = ?opened, "ICMP sockets open");
        }
        if self.v4.is_some() || self.v6.is_some() {
            for e in &errors {
                tracing::warn!(error = %e, "ICMP probes of this family disabled; they count as send errors");
            }
        }
        errors
    }

    /// Follow a new plan: sockets for new families, a schedule over the new targets.
    fn replan(&mut self, p: ProbePlan) -> Schedule {
        self.targets = p.of_kind(ProbeKind::Icmp);
        self.by_slot = by_slot(&self.targets);
        self.interval = p.interval;
        self.timeout = p.timeout;
        if p.confirm != self.bursts.config() {
            self.bursts.reset(p.confirm);
        }
        // A slot is one path for good; its position in the list may change.
        let by_slot = &self.by_slot;
        self.bursts.retarget(|slot| by_slot.get(&slot).copied());
        for e in self.open_missing() {
            if self.v4.is_none() && self.v6.is_none() {
                tracing::warn!(error = %e, "ICMP probes disabled; their paths count send errors");
            }
        }
        self.schedule()
    }

    fn schedule(&self) -> Schedule {
        Schedule::new(
            vec![self.interval; self.targets.len()],
            Instant::now(),
            rand::random(),
        )
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let token: u64 = rand::random();
        let ident: u16 = rand::random();
        // From the timeout at start: a reload to a longer timeout only makes very late
        // replies (after 4 old timeouts) count as stray rather than late.
        let retention = (self.timeout * 4).max(Duration::from_secs(10));
        let mut matcher = Matcher::new(token, ident, retention);
        // Every target is probed every `interval`: a later probe answered tells loss early.
        matcher.set_spacing(Some(self.interval));
        matcher.set_suspicion(self.bursts.config().probes > 0);
        let mut sched = self.schedule();
        let (mut buf4, mut buf6) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let (mut events4, mut events6) = (Vec::new(), Vec::new());
        let mut recv_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_send_error: Option<std::io::ErrorKind> = None;
        let mut plan_open = true;
        let mut burst_due = Vec::new();
        loop {
            self.beat.beat();
            let next = [
                sched.next_due(),
                matcher.next_deadline(),
                self.bursts.next_due(),
            ]
            .into_iter()
            .flatten()
            .min();
            let beat_at = Instant::now() + BEAT_EVERY;
            let sleep = tokio::time::sleep_until(next.unwrap_or(beat_at).min(beat_at).into());
            let wake = tokio::select! {
                _ = shutdown.cancelled() => Wake::Stop,
                _ = sleep => Wake::Timer,
                r = recv_opt(self.v4.as_ref(), &mut buf4, &mut events4) => Wake::Received(r),
                r = recv_opt(self.v6.as_ref(), &mut buf6, &mut events6) => Wake::Received(r),
                r = self.plan.changed(), if plan_open => {
                    Wake::Plan(r.ok().map(|()| self.plan.borrow_and_update().clone()))
                }
            };
            match wake {
                Wake::Stop => return,
                Wake::Timer => {}
                Wake::Plan(Some(p)) => {
                    sched = self.replan(p);
                    matcher.set_spacing(Some(self.interval));
                    matcher.set_suspicion(self.bursts.config().probes > 0);
                }
                Wake::Plan(None) => plan_open = false,
                Wake::Received(Ok(())) => {
                    recv_backoff.reset();
                    self.on_events(&mut matcher, &mut events4, &mut events6);
                }
                Wake::Received(Err(e)) => {
                    self.shared.health(|h| h.recv_errors += 1);
                    let wait = recv_backoff.next_delay();
                    tracing::warn!(error = %e, backoff = ?wait, "ICMP receive failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            let now = Instant::now();
            for due in sched.pop_due(now) {
                self.shared.lag(due.lag.as_micros() as u64);
                self.send(&mut matcher, due.target, false, &mut last_send_error)
                    .await;
            }
            if !self.bursts.is_empty() {
                self.bursts.due(Instant::now(), &mut burst_due);
            }
            for (slot, t) in burst_due.drain(..) {
                let ok = self.send(&mut matcher, t, true, &mut last_send_error).await;
                if let Some(o) = self.bursts.sent(slot, ok) {
                    self.shared.confirmed(slot, o, self.bursts.len());
                }
            }
            let now = Instant::now();
            // A suspicion only starts a burst: no socket drain first (a false one costs a
            // burst that stops clean), so its wake-up costs no system call.
            if matcher.next_suspect().is_some_and(|d| d <= now) {
                for slot in matcher.suspected(now) {
                    self.start_burst(slot, now);
                }
            }
            if matcher.next_expiry().is_some_and(|d| d <= now) {
                // Replies the kernel already holds are answers, however late this task
                // runs (a starved process must not count its own delay as loss). Expire
                // only once the queues are empty; otherwise the next turn reads on.
                let drained = [
                    (self.v4.as_ref(), &mut buf4, &mut events4),
                    (self.v6.as_ref(), &mut buf6, &mut events6),
                ]
                .into_iter()
                .all(|(sock, buf, out)| {
                    sock.is_none_or(|s| {
                        s.drain(buf, out, crate::probe::DRAIN_LIMIT).unwrap_or(true)
                    })
                });
                self.on_events(&mut matcher, &mut events4, &mut events6);
                if drained {
                    for (slot, confirm) in matcher.expire(now) {
                        if confirm {
                            if let Some(o) = self.bursts.decided(slot, false) {
                                self.shared.confirmed(slot, o, self.bursts.len());
                            }
                            continue;
                        }
                        self.shared.lost(slot);
                        self.start_burst(slot, now);
                    }
                }
            }
        }
    }

    /// A regular probe of path `slot` is suspected or decided lost: a confirmation burst,
    /// unless the target has them off (`confirm=off`, anchors) or the path's own recent
    /// probes already show the loss plainly.
    fn start_burst(&mut self, slot: usize, now: Instant) {
        let Some(&t) = self.by_slot.get(&slot) else {
            return;
        };
        let wanted = self.targets[t].1.options.confirm != Some(false);
        if wanted && self.bursts.config().probes > 0 && !self.shared.visibly_lossy(slot) {
            self.bursts.start(slot, t, now);
        }
    }

    /// Match a batch of received events; RTT samples by clock are counted per batch (one
    /// health lock, not one per reply).
    fn on_events(&mut self, matcher: &mut Matcher, v4: &mut Vec<Event>, v6: &mut Vec<Event>) {
        let mut clocks = ClockCounts::default();
        for ev in v4.drain(..).chain(v6.drain(..)) {
            self.on_event(matcher, ev, &mut clocks);
        }
        if clocks != ClockCounts::default() {
            self.shared.health(|h| {
                h.rtt_kernel_clock += clocks.kernel;
                h.rtt_monotonic_clock += clocks.monotonic;
            });
        }
    }

    fn socket(&self, ip: &IpAddr) -> Option<&IcmpSocket> {
        match Family::of(ip) {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// Send probe `t` of the targets, a regular one or a confirmation probe (counted in
    /// no path counter: see `probe::confirm`); returns whether it left the socket.
    async fn send(
        &self,
        matcher: &mut Matcher,
        t: usize,
        confirm: bool,
        last_error: &mut Option<std::io::ErrorKind>,
    ) -> bool {
        let (slot, spec) = &self.targets[t];
        let unsent = || {
            if !confirm {
                self.shared.path(*slot, |p| p.on_send_error());
            }
            false
        };
        let Some(ip) = self.resolver.target_addr(spec) else {
            return unsent();
        };
        let Some(sock) = self.socket(&ip) else {
            return unsent();
        };
        let id = matcher.allocate();
        // `size` is the IP packet: IP and ICMP headers, then the payload.
        let size = spec.options.size.map_or(PAYLOAD_SIZE, |s| {
            usize::from(s).saturating_sub(crate::options::header_len(&ip))
        });
        let mut payload = encode_payload(matcher.token(), id, size);
        if confirm {
            mark_confirm(&mut payload);
        }
        let pkt = sock.echo_request(matcher.ident(), id as u16, &payload);
        match sock.send_to_with(&pkt, ip, &spec.options).await {
            Ok(sent) if confirm => {
                let spacing = self.bursts.config().spacing;
                matcher.sent_confirm(id, *slot, ip, sent, self.timeout, spacing);
                *last_error = None;
                true
            }
            Ok(sent) => {
                matcher.sent(id, *slot, ip, sent, self.timeout);
                self.shared.path(*slot, |p| p.on_sent());
                *last_error = None;
                true
            }
            Err(e) => {
                unsent();
                self.shared.health(|h| h.send_errors += 1);
                if *last_error != Some(e.kind()) {
                    tracing::warn!(target_addr = %ip, error = %e, "ICMP send failed (logged once until it changes)");
                    *last_error = Some(e.kind());
                }
                false
            }
        }
    }

    fn on_event(&mut self, matcher: &mut Matcher, ev: Event, clocks: &mut ClockCounts) {
        match ev {
            Event::TxStamp { seq, tx_ns, .. } => matcher.tx_stamp(seq, tx_ns),
            // ICMP errors answer the hop prober's TTL-limited probes (its own socket).
            Event::Error { .. } | Event::UdpError { .. } => {}
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
                        confirm: true,
                        ..
                    } => {
                        if let Some(o) = self.bursts.decided(target, true) {
                            self.shared.confirmed(target, o, self.bursts.len());
                        }
                    }
                    Outcome::Reply {
                        target,
                        rtt,
                        reordered,
                        kernel_timestamps,
                        confirm: false,
                    } => {
                        if kernel_timestamps {
                            clocks.kernel += 1;
                        } else {
                            clocks.monotonic += 1;
                        }
                        let us = rtt.as_micros().min(u128::from(u64::MAX)) as u64;
                        // Per-sample trace for accuracy investigations (off unless asked
                        // for with RUST_LOG=pathpulse_agent::probe::icmp=trace).
                        tracing::trace!(%src, seq, rtt_ns = rtt.as_nanos() as u64, kernel_timestamps, "rtt sample");
                        self.shared.path(target, |p| p.on_reply(us, reordered));
                    }
                    // A confirmation probe's second or late reply changes nothing.
                    Outcome::Duplicate { confirm: true, .. }
                    | Outcome::Late { confirm: true, .. } => {}
                    Outcome::Duplicate { target, .. } => {
                        self.shared.path(target, |p| p.on_duplicate())
                    }
                    Outcome::Late { target, .. } => self.shared.path(target, |p| p.on_late()),
                    Outcome::Stray(r) => self.shared.stray(r),
                }
            }
        }
    }
}
