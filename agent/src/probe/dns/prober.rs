//! DNS prober: query time and failures against resolvers (`dns:SERVER[:PORT]/NAME`).
//!
//! Each DNS target runs as its own task with its own UDP socket (kernel TX and RX
//! timestamps, the target's options applied), so a server that never answers only ever
//! costs its own target lost queries: no other probe waits for it. A supervisor follows
//! the plan (reloads): targets that stay keep their task and their in-flight queries,
//! removed ones are stopped, new ones started; interval and timeout changes reach the
//! running tasks through a watch channel.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pathpulse_wire::ProbeKind;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::query::{Outcome, Queries, fqdn};
use crate::probe::stamp::socket::{StampSocket, UdpEvent, recv_opt};
use crate::reload::ProbePlan;
use crate::resolve::Resolver;
use crate::schedule::Schedule;
use crate::shared::Shared;
use crate::systemd::{BEAT_EVERY, Beat};
use crate::target::{DNS_PORT, TargetSpec};

/// Largest DNS reply read (EDNS0 payloads are at most 4096 in practice; longer ones are
/// truncated by the read, fail to parse and count as stray).
const MAX_REPLY: usize = 4096;

type Timing = (Duration, Duration);

pub struct DnsProber {
    pub plan: watch::Receiver<ProbePlan>,
    pub shared: Arc<Shared>,
    pub resolver: Arc<Resolver>,
    pub beat: Arc<Beat>,
}

impl DnsProber {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut plan = self.plan.borrow_and_update().clone();
        let (timing, _) = watch::channel::<Timing>((plan.interval, plan.timeout));
        let mut running: HashMap<usize, (TargetSpec, CancellationToken)> = HashMap::new();
        let mut plan_open = true;
        loop {
            // Follow the plan: stop what went or changed, start what is new.
            let want = plan.of_kind(ProbeKind::Dns);
            running.retain(|slot, (spec, stop)| {
                let keep = want.iter().any(|(s, t)| s == slot && t == spec);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for (slot, spec) in want.iter() {
                let slot = *slot;
                if running.contains_key(&slot) {
                    continue;
                }
                let stop = shutdown.child_token();
                let task = DnsTarget {
                    slot,
                    spec: spec.clone(),
                    shared: self.shared.clone(),
                    resolver: self.resolver.clone(),
                    timing: timing.subscribe(),
                };
                tokio::spawn(task.run(stop.clone()));
                running.insert(slot, (spec.clone(), stop));
            }
            timing.send_if_modified(|t| {
                let new = (plan.interval, plan.timeout);
                std::mem::replace(t, new) != new
            });
            self.beat.beat();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(BEAT_EVERY) => {}
                r = self.plan.changed(), if plan_open => match r {
                    Ok(()) => plan = self.plan.borrow_and_update().clone(),
                    Err(_) => plan_open = false,
                },
            }
        }
    }
}

struct DnsTarget {
    slot: usize,
    spec: TargetSpec,
    shared: Arc<Shared>,
    resolver: Arc<Resolver>,
    timing: watch::Receiver<Timing>,
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

impl DnsTarget {
    async fn run(mut self, stop: CancellationToken) {
        let name = match fqdn(self.spec.dns_name.as_deref().unwrap_or_default()) {
            Ok(n) => n,
            Err(e) => {
                // The SPEC parser checked the name; this is a belt for the braces.
                tracing::error!(target_label = %self.spec.label, error = %e, "DNS target not probed");
                return;
            }
        };
        let (mut interval, mut timeout) = *self.timing.borrow_and_update();
        let retention = (timeout * 4).max(Duration::from_secs(10));
        let mut queries = Queries::new(name, retention);
        let mut sched = Schedule::new(vec![interval], Instant::now(), rand::random());
        let mut sock: Option<StampSocket> = None;
        let mut buf = vec![0u8; MAX_REPLY];
        let mut events = Vec::new();
        let mut last_error: Option<String> = None;
        loop {
            if self.timing.has_changed().unwrap_or(false) {
                let (i, t) = *self.timing.borrow_and_update();
                if i != interval {
                    sched = Schedule::new(vec![i], Instant::now(), rand::random());
                }
                (interval, timeout) = (i, t);
            }
            let next = [sched.next_due(), queries.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next.into()) => None,
                r = recv_opt(sock.as_ref(), &mut buf, &mut events) => Some(r),
            };
            match received {
                Some(Ok(())) => {
                    for ev in events.drain(..) {
                        self.on_event(&mut queries, ev);
                    }
                }
                Some(Err(e)) => {
                    // Reopened at the next send; the queries in flight on it are decided
                    // by their deadlines.
                    self.shared.health(|h| h.recv_errors += 1);
                    tracing::warn!(target_label = %self.spec.label, error = %e, "DNS receive failed; socket reopened");
                    sock = None;
                }
                None => {}
            }
            let now = Instant::now();
            for due in sched.pop_due(now) {
                self.shared.lag(due.lag.as_micros() as u64);
                self.send(&mut queries, &mut sock, timeout, &mut last_error)
                    .await;
            }
            let now = Instant::now();
            if queries.next_deadline().is_some_and(|d| d <= now) {
                // Answers the kernel already holds count, however late this task runs.
                let drained = sock.as_ref().is_none_or(|s| {
                    s.drain(&mut buf, &mut events, crate::probe::DRAIN_LIMIT)
                        .unwrap_or(true)
                });
                for ev in events.drain(..) {
                    self.on_event(&mut queries, ev);
                }
                if !drained {
                    continue;
                }
            }
            let lost = queries.expire(now);
            for _ in 0..lost {
                self.shared.lost(self.slot);
            }
        }
    }

    fn fail(&self, last_error: &mut Option<String>, what: String) {
        self.shared.path(self.slot, |p| p.on_send_error());
        self.shared.health(|h| h.send_errors += 1);
        if last_error.as_deref() != Some(what.as_str()) {
            tracing::warn!(target_label = %self.spec.label, error = %what, "DNS query not sent (logged once until it changes)");
            *last_error = Some(what);
        }
    }

    async fn send(
        &self,
        queries: &mut Queries,
        sock: &mut Option<StampSocket>,
        timeout: Duration,
        last_error: &mut Option<String>,
    ) {
        let Some(ip) = self.resolver.target_addr(&self.spec) else {
            // Counted on the path only: the resolver logs names that do not resolve.
            self.shared.path(self.slot, |p| p.on_send_error());
            return;
        };
        let dst = SocketAddr::new(ip, self.spec.port.unwrap_or(DNS_PORT));
        if sock
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .is_none_or(|a| a.is_ipv4() != ip.is_ipv4())
        {
            let any = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let bind = SocketAddr::new(self.spec.options.source.unwrap_or(any), 0);
            match StampSocket::bind_with(bind, &self.spec.options) {
                Ok(s) => *sock = Some(s),
                Err(e) => {
                    *sock = None;
                    return self.fail(
                        last_error,
                        format!("cannot open a UDP socket on {bind}: {e}"),
                    );
                }
            }
        }
        let Some(s) = sock.as_ref() else { return };
        let (id, query) = queries.next_query();
        match s.send_to(&query, dst).await {
            Ok(sent) => {
                queries.sent(id, query, dst, sent, timeout);
                self.shared.path(self.slot, |p| p.on_sent());
                *last_error = None;
            }
            Err(e) => self.fail(last_error, format!("send to {dst}: {e}")),
        }
    }

    fn on_event(&self, queries: &mut Queries, ev: UdpEvent) {
        match ev {
            UdpEvent::TxStamp { tail, tx_ns } => queries.tx_stamp(&tail, tx_ns),
            UdpEvent::Datagram {
                src,
                data,
                rx_ns,
                rx_mono,
                ..
            } => match queries.reply(src, &data, rx_mono, rx_ns) {
                Outcome::Answer {
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
                    tracing::trace!(%src, rtt_ns = rtt.as_nanos() as u64, kernel_timestamps, "dns rtt sample");
                    self.shared
                        .path(self.slot, |p| p.on_reply(us(rtt), reordered));
                }
                Outcome::Failed { rcode } => {
                    tracing::debug!(target_label = %self.spec.label, %rcode, "DNS query failed");
                    self.shared.lost(self.slot);
                }
                Outcome::Late => self.shared.path(self.slot, |p| p.on_late()),
                Outcome::Duplicate => self.shared.path(self.slot, |p| p.on_duplicate()),
                Outcome::Stray(r) => self.shared.stray(r),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::PathStats;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A responder on loopback answering every query (QR bit set, question echoed).
    fn responder() -> (SocketAddr, Arc<AtomicU32>) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let seen = Arc::new(AtomicU32::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                count.fetch_add(1, Ordering::Relaxed);
                buf[2] |= 0x80;
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_reload_stops_removed_targets_and_keeps_kept_ones_counting() {
        let (addr, seen) = responder();
        let t = TargetSpec::parse(&format!("dns:{addr}/example.test")).expect("spec");
        let shared = Arc::new(Shared::new(vec![PathStats::new(
            t.label.clone(),
            ProbeKind::Dns,
        )]));
        let plan = ProbePlan {
            targets: vec![(0, t.clone())].into(),
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            confirm: Default::default(),
        };
        let (tx, rx) = watch::channel(plan.clone());
        let stop = CancellationToken::new();
        let prober = DnsProber {
            plan: rx,
            shared: shared.clone(),
            resolver: Resolver::new([]),
            beat: crate::systemd::Liveness::new().register("dns"),
        };
        let task = tokio::spawn(prober.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        // A new timeout only: the target keeps its task and counts on.
        tx.send_replace(ProbePlan {
            timeout: Duration::from_millis(300),
            ..plan.clone()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = shared.take();
        assert!(
            r.paths[0].received >= 15,
            "answers: {}",
            r.paths[0].received
        );
        assert_eq!((r.paths[0].lost, r.paths[0].send_errors), (0, 0));
        // Removed: no more queries leave.
        tx.send_replace(ProbePlan {
            targets: Vec::new().into(),
            ..plan
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = seen.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            seen.load(Ordering::Relaxed),
            before,
            "queries after removal"
        );
        stop.cancel();
        task.await.expect("prober ends at shutdown");
    }
}
