//! Hop discovery and per-hop monitoring toward ICMP targets (an MTR-like view): TTL-limited
//! echo requests on a RAW socket of its own, answered by each router's Time Exceeded (or
//! Unreachable) and by the target's echo reply, matched through the quoted request
//! (identifier, sequence and destination: never by the router's address alone).
//!
//! Discovery widens the TTL range round by round (1, 2, 4, 8, 16, 30) and stops at the
//! target, so a directly connected target costs one probe and is then left alone until the
//! next rediscovery. Afterwards every hop up to the target is probed once per interval;
//! a router is probed at most once per interval whatever the number of targets behind it
//! (routers rate-limit ICMP errors: Linux answers about one per second per source), and
//! its answer (or silence) counts for every target whose route has it at that TTL.
//! A different address at a known TTL is a route change: counted and logged. Discovery
//! runs again every 5 minutes, after a route change, and when the target stops answering
//! (at most every 30 s).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pathpulse_wire::{HopRole, ProbeKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::probe::hop_udp::{self, HopProbe, UdpProbeSocket};
use crate::probe::icmp::recv_opt;
use crate::probe::icmp_socket::{Event, Family, IcmpSocket, SocketKind};
use crate::probe::route::{self, Prefix, Route};
use crate::reload::{ProbePlan, Selected};
use crate::resolve::Resolver;
use crate::shared::Shared;
use crate::stats::{HopStats, PathStats};
use crate::target::Host;

/// First bytes of a hop probe's payload: the main ICMP prober leaves these replies alone.
pub const HOP_MAGIC: [u8; 4] = *b"PPh1";
pub const DEFAULT_MAX_TTL: u8 = 30;
/// Discovery runs again this often (and after a route change).
pub const REDISCOVER: Duration = Duration::from_secs(300);
/// Discovery runs again when the target stops answering, at most this often.
pub const REDISCOVER_ON_LOSS: Duration = Duration::from_secs(30);
const PAYLOAD_SIZE: usize = 56;

pub struct HopProber {
    /// The probe plan (configured targets and mesh peers): its ICMP targets that
    /// [`hop_targets`] keeps get hop discovery, following every reload.
    pub plan: watch::Receiver<ProbePlan>,
    /// Probe interval per hop, and the most a router is probed (at least 1 s: routers'
    /// ICMP error rate limit; 100 ms with the test-only `--lab-fast-hops`).
    pub interval: Duration,
    pub timeout: Duration,
    pub max_ttl: u8,
    /// ICMP echo or UDP probes (both flow-stable).
    pub probe: HopProbe,
    pub isp_prefixes: Vec<Prefix>,
    pub shared: Arc<Shared>,
    pub resolver: Arc<Resolver>,
}

#[derive(Default)]
struct TargetState {
    addr: Option<IpAddr>,
    route: Route,
    /// TTL range of the discovery round in progress (None: discovery done).
    discover_up_to: Option<u8>,
    last_discovery: Option<Instant>,
}

struct InFlight {
    /// The target's slot in [`Shared`].
    target: usize,
    ttl: u8,
    addr: IpAddr,
    sent_mono: Instant,
    tx_ns: Option<i64>,
    /// Counted in the hop's statistics (the hop was known when the probe left).
    counted: bool,
    /// Other targets' slots whose route has the same router at this TTL: the probe counts
    /// for them too (the per-router cap sends one probe for all).
    sharers: Vec<usize>,
}

fn open_raw(f: Family) -> Option<IcmpSocket> {
    match IcmpSocket::open_kind(f, SocketKind::Raw) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(family = %f, error = %e.raw, "hop discovery off for this family: it needs a RAW ICMP socket (CAP_NET_RAW)");
            None
        }
    }
}

/// The ICMP targets of a plan that get hop discovery: all but loopback addresses (always
/// directly connected) and targets with `hops=off` (mesh peers inside the agent's own
/// site are given that option).
pub fn hop_targets(plan: &ProbePlan) -> Selected {
    plan.select(|t| {
        t.probe == ProbeKind::Icmp
            && t.options.hops != Some(false)
            && !matches!(t.host, Host::Ip(ip) if ip.is_loopback())
    })
}

impl HopProber {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut targets = hop_targets(&self.plan.borrow_and_update());
        // The RAW sockets are opened once there is something to discover (they wake for
        // every ICMP reply on the host).
        while targets.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.plan.changed() => match r {
                    Ok(()) => targets = hop_targets(&self.plan.borrow_and_update()),
                    Err(_) => return,
                },
            }
        }
        let (v4, v6) = (open_raw(Family::V4), open_raw(Family::V6));
        if v4.is_none() && v6.is_none() {
            return;
        }
        let (udp4, udp6) = match self.probe {
            HopProbe::Icmp => (None, None),
            HopProbe::Udp => (
                v4.as_ref().and_then(|_| open_udp(Family::V4)),
                v6.as_ref().and_then(|_| open_udp(Family::V6)),
            ),
        };
        let mut plan_open = true;
        let mut read_before_expiring = false;
        // UDP probes in flight by (target address, TTL): the quoted length names the TTL.
        let mut udp_keys: HashMap<(IpAddr, u8), u16> = HashMap::new();
        let gateways = route::default_gateways();
        let ident: u16 = rand::random();
        let token: u64 = rand::random();
        // By slot: a reload keeps the routes of the targets that stay.
        let mut states: HashMap<usize, TargetState> = HashMap::new();
        let mut inflight: HashMap<u16, InFlight> = HashMap::new();
        let mut deadlines: BinaryHeap<Reverse<(Instant, u16)>> = BinaryHeap::new();
        let mut router_last: HashMap<IpAddr, Instant> = HashMap::new();
        let mut seq: u16 = 0;
        let mut udp_head = [0u8; hop_udp::BASE_PAYLOAD];
        udp_head[..4].copy_from_slice(&HOP_MAGIC);
        udp_head[4..].copy_from_slice(&token.to_be_bytes());
        let (mut buf4, mut buf6) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let (mut ev4, mut ev6) = (Vec::new(), Vec::new());
        // One target per tick, round robin: the targets spread over the interval.
        let mut tick_every = self.interval / targets.len().max(1) as u32;
        let mut next_tick = Instant::now();
        let mut turn = 0usize;
        loop {
            let wake = deadlines
                .peek()
                .map(|Reverse((t, _))| *t)
                .map_or(next_tick, |d| d.min(next_tick));
            let got = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.plan.changed(), if plan_open => {
                    match r {
                        Ok(()) => {
                            targets = hop_targets(&self.plan.borrow_and_update());
                            states.retain(|slot, _| targets.iter().any(|(s, _)| s == slot));
                            tick_every = self.interval / targets.len().max(1) as u32;
                            tracing::debug!(targets = targets.len(), "hop discovery follows the plan");
                        }
                        Err(_) => plan_open = false,
                    }
                    Ok(())
                }
                _ = tokio::time::sleep_until(wake.into()) => Ok(()),
                r = recv_opt(v4.as_ref(), &mut buf4, &mut ev4) => r,
                r = recv_opt(v6.as_ref(), &mut buf6, &mut ev6) => r,
            };
            if let Err(e) = got {
                tracing::debug!(error = %e, "hop socket receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for ev in ev4.drain(..).chain(ev6.drain(..)) {
                let answer = match ev {
                    Event::TxStamp {
                        ident: i,
                        seq: s,
                        tx_ns,
                    } if i == ident => {
                        if let Some(p) = inflight.get_mut(&s) {
                            p.tx_ns.get_or_insert(tx_ns);
                        }
                        None
                    }
                    Event::Reply {
                        src,
                        ident: i,
                        seq: s,
                        payload,
                        rx_ns,
                        rx_mono,
                    } if i == ident && payload.starts_with(&HOP_MAGIC) => inflight
                        .get(&s)
                        .filter(|p| p.addr == src)
                        .map(|_| (s, src, true, rx_ns, rx_mono)),
                    Event::Error {
                        from,
                        dst,
                        ident: i,
                        seq: s,
                        unreachable,
                        rx_ns,
                        rx_mono,
                    } if i == ident => inflight
                        .get(&s)
                        .filter(|p| p.addr == dst)
                        .map(|p| (s, from, unreachable || from == p.addr, rx_ns, rx_mono)),
                    Event::UdpError {
                        from,
                        dst,
                        sport,
                        dport,
                        len,
                        unreachable,
                        rx_ns,
                        rx_mono,
                    } if dport == hop_udp::DEFAULT_PORT
                        && [udp4.as_ref(), udp6.as_ref()]
                            .into_iter()
                            .flatten()
                            .any(|u| u.port() == sport && u.family() == Family::of(&dst)) =>
                    {
                        hop_udp::ttl_of_len(len)
                            .and_then(|ttl| udp_keys.get(&(dst, ttl)).copied())
                            .filter(|s| inflight.get(s).is_some_and(|p| p.addr == dst))
                            .map(|s| (s, from, unreachable || from == dst, rx_ns, rx_mono))
                    }
                    _ => None,
                };
                let Some((s, from, end, rx_ns, rx_mono)) = answer else {
                    continue;
                };
                let Some(p) = inflight.remove(&s) else {
                    continue;
                };
                forget_udp(&mut udp_keys, &p, s);
                let rtt = match (p.tx_ns, rx_ns) {
                    (Some(tx), Some(rx)) if rx >= tx => Duration::from_nanos((rx - tx) as u64),
                    _ => rx_mono.saturating_duration_since(p.sent_mono),
                };
                // A target removed by a reload meanwhile: nothing to record.
                let Some(st) = states.get_mut(&p.target) else {
                    continue;
                };
                let changed = st.route.answer(p.ttl, from, end);
                let path = &p.target;
                if changed {
                    let label = targets
                        .iter()
                        .find(|(s, _)| s == path)
                        .map_or("", |(_, t)| t.label.as_str());
                    tracing::info!(target_name = %label, ttl = p.ttl, now = %from, "route changed");
                    st.discover_up_to = Some(1);
                }
                let roles = route::classify(&st.route.hops, p.addr, &gateways, &self.isp_prefixes);
                let us = rtt.as_micros().min(u128::from(u64::MAX)) as u64;
                self.shared.path(*path, |ps| {
                    sync_hops(ps, &st.route, &roles);
                    if changed {
                        ps.route_changes += 1;
                    }
                    if p.counted {
                        hop_stats(ps, p.ttl, |h| h.on_reply(us, false));
                    }
                });
                // The same router answered for the targets that share it at this TTL.
                if p.counted {
                    for s in &p.sharers {
                        let same = states.get(s).is_some_and(|o| {
                            o.route.hops.get(usize::from(p.ttl) - 1) == Some(&Some(from))
                        });
                        if same {
                            self.shared
                                .path(*s, |ps| hop_stats(ps, p.ttl, |h| h.on_reply(us, false)));
                        }
                    }
                }
            }
            // Timeouts: lost at that hop. First the answers the kernel already holds (a
            // starved process must not count its own delay as loss): if there are any,
            // they are matched in the next turn, before anything expires.
            let now = Instant::now();
            if !read_before_expiring && deadlines.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                for (sock, buf, out) in [
                    (v4.as_ref(), &mut buf4, &mut ev4),
                    (v6.as_ref(), &mut buf6, &mut ev6),
                ] {
                    if let Some(s) = sock {
                        let _ = s.drain(buf, out, crate::probe::DRAIN_LIMIT);
                    }
                }
                if !ev4.is_empty() || !ev6.is_empty() {
                    // Once per expiry: a stream of foreign ICMP must not postpone it.
                    read_before_expiring = true;
                    continue;
                }
            }
            read_before_expiring = false;
            while let Some(Reverse((t, s))) = deadlines.peek().copied() {
                if t > now {
                    break;
                }
                deadlines.pop();
                let p = inflight.remove(&s);
                if let Some(p) = &p {
                    forget_udp(&mut udp_keys, p, s);
                }
                let Some(p) = p.filter(|p| p.counted) else {
                    continue;
                };
                lost(&self.shared, &p, |s| states.contains_key(s));
                // The target stopped answering: the route may have changed. Look again,
                // at most every REDISCOVER_ON_LOSS.
                if let Some(st) = states.get_mut(&p.target)
                    && st.route.reached == Some(p.ttl)
                    && st
                        .last_discovery
                        .is_none_or(|l| now.duration_since(l) >= REDISCOVER_ON_LOSS)
                {
                    let label = targets
                        .iter()
                        .find(|(s, _)| *s == p.target)
                        .map_or("", |(_, t)| t.label.as_str());
                    tracing::debug!(target_name = %label, "the target stopped answering: hop discovery again");
                    st.discover_up_to = Some(1);
                    st.last_discovery = Some(now);
                }
            }
            if now < next_tick {
                continue;
            }
            next_tick = now + tick_every.max(Duration::from_millis(1));
            if targets.is_empty() {
                next_tick = now + self.interval;
                continue;
            }
            let t = turn % targets.len();
            turn = turn.wrapping_add(1);
            let (path, spec) = &targets[t];
            let Some(addr) = self.resolver.target_addr(spec).filter(|a| !a.is_loopback()) else {
                continue;
            };
            let sock = match Family::of(&addr) {
                Family::V4 => v4.as_ref(),
                Family::V6 => v6.as_ref(),
            };
            let Some(sock) = sock else { continue };
            let udp = match Family::of(&addr) {
                Family::V4 => udp4.as_ref(),
                Family::V6 => udp6.as_ref(),
            };
            if self.probe == HopProbe::Udp && udp.is_none() {
                continue;
            }
            let st = states.entry(*path).or_default();
            let known = st.route.hops.len();
            if st.addr != Some(addr) {
                // New target or a new address for its name: start over.
                *st = TargetState {
                    addr: Some(addr),
                    ..TargetState::default()
                };
                self.shared.path(*path, |ps| ps.hops.clear());
            }
            if st
                .last_discovery
                .is_none_or(|l| now.duration_since(l) >= REDISCOVER)
            {
                st.discover_up_to = Some(1);
                st.last_discovery = Some(now);
            }
            let ttls = match (st.discover_up_to, st.route.reached) {
                (Some(k), _) => {
                    // Widen until the target answers; then probe up to it.
                    let next = k.saturating_mul(2).min(self.max_ttl);
                    st.discover_up_to = (k < self.max_ttl
                        && st.route.reached.is_none_or(|r| r > k))
                    .then_some(next);
                    1..=k.min(st.route.reached.unwrap_or(self.max_ttl))
                }
                (None, Some(_)) if st.route.directly_connected() => continue,
                (None, Some(_)) => st.route.probe_ttls(self.max_ttl),
                // The target never answered (it drops ICMP): the known hops and one more.
                (None, None) => 1..=(known as u8).saturating_add(1).min(self.max_ttl),
            };
            let hops = st.route.hops.clone();
            for ttl in ttls {
                let i = usize::from(ttl) - 1;
                let mut sharers = Vec::new();
                if let Some(Some(router)) = hops.get(i) {
                    if *router != addr
                        && router_last
                            .get(router)
                            .is_some_and(|l| now.duration_since(*l) < self.interval.mul_f64(0.9))
                    {
                        continue;
                    }
                    router_last.insert(*router, now);
                    if *router != addr {
                        sharers.extend(
                            states
                                .iter()
                                .filter(|(s, o)| {
                                    *s != path && o.route.hops.get(i) == Some(&Some(*router))
                                })
                                .map(|(s, _)| *s),
                        );
                    }
                }
                seq = seq.wrapping_add(1);
                // 65,536 probes in flight: the oldest is forgotten, counted lost.
                if let Some(old) = inflight.remove(&seq) {
                    forget_udp(&mut udp_keys, &old, seq);
                    if old.counted {
                        lost(&self.shared, &old, |s| states.contains_key(s));
                    }
                }
                let counted = usize::from(ttl) <= known;
                let sent = match udp {
                    Some(u) => {
                        // A probe still in flight at this TTL is answered by no one now:
                        // its quoted length would name the new one.
                        if let Some(old) = udp_keys.insert((addr, ttl), seq)
                            && let Some(o) = inflight.remove(&old).filter(|o| o.counted)
                        {
                            lost(&self.shared, &o, |s| states.contains_key(s));
                        }
                        u.send(
                            addr,
                            hop_udp::DEFAULT_PORT,
                            ttl,
                            &hop_udp::payload(&udp_head, ttl),
                        )
                        .await
                    }
                    None => {
                        let pkt = sock.echo_request(ident, seq, &echo_payload(token, seq));
                        match sock.set_ttl(ttl) {
                            Ok(()) => sock.send_to(&pkt, addr).await,
                            Err(e) => Err(e),
                        }
                    }
                };
                match sent {
                    Ok(sent_mono) => {
                        if counted {
                            for s in std::iter::once(path).chain(&sharers) {
                                self.shared
                                    .path(*s, |ps| hop_stats(ps, ttl, PathStats::on_sent));
                            }
                        }
                        inflight.insert(
                            seq,
                            InFlight {
                                target: *path,
                                ttl,
                                addr,
                                sent_mono,
                                tx_ns: None,
                                counted,
                                sharers,
                            },
                        );
                        deadlines.push(Reverse((sent_mono + self.timeout, seq)));
                    }
                    Err(e) => {
                        tracing::debug!(target_addr = %addr, ttl, error = %e, "hop probe not sent")
                    }
                }
            }
        }
    }
}

fn open_udp(f: Family) -> Option<UdpProbeSocket> {
    UdpProbeSocket::open(f)
        .inspect_err(
            |e| tracing::warn!(family = %f, error = %e, "UDP hop probes off for this family"),
        )
        .ok()
}

/// The UDP probe `p` (sent as `seq`) is answered or gone: its (target, TTL) slot is free.
fn forget_udp(keys: &mut HashMap<(IpAddr, u8), u16>, p: &InFlight, seq: u16) {
    if keys.get(&(p.addr, p.ttl)) == Some(&seq) {
        keys.remove(&(p.addr, p.ttl));
    }
}

/// The payload of an ICMP hop probe: magic, token, then `!seq`, which keeps the ICMP
/// checksum the same for every sequence number (one's complement: seq + !seq = 0xffff).
/// Load balancers that hash the first bytes of the ICMP header (type, code, checksum)
/// then keep every probe toward a target on one path: flow-stable, as Paris traceroute.
fn echo_payload(token: u64, seq: u16) -> Vec<u8> {
    let mut payload = Vec::with_capacity(PAYLOAD_SIZE);
    payload.extend_from_slice(&HOP_MAGIC);
    payload.extend_from_slice(&token.to_be_bytes());
    payload.extend_from_slice(&(!seq).to_be_bytes());
    payload.resize(PAYLOAD_SIZE, 0);
    payload
}

/// A counted probe went unanswered: lost at its hop for its target and for the targets
/// that share that router there (those still probed, as `live` says).
fn lost(shared: &Shared, p: &InFlight, live: impl Fn(&usize) -> bool) {
    for s in std::iter::once(&p.target)
        .chain(&p.sharers)
        .filter(|s| live(s))
    {
        shared.path(*s, |ps| hop_stats(ps, p.ttl, PathStats::on_lost));
    }
}

/// Run `f` on the statistics of hop `ttl` of a path, if it has that hop.
fn hop_stats(ps: &mut PathStats, ttl: u8, f: impl FnOnce(&mut PathStats)) {
    if let Some(h) = ps.hops.iter_mut().find(|h| h.ttl == ttl) {
        f(&mut h.stats);
    }
}

/// Make the path's hop list follow the route: one entry per TTL up to the last known hop
/// (none at all for a directly connected target), addresses and roles updated, the
/// statistics of each TTL kept.
fn sync_hops(ps: &mut PathStats, route: &Route, roles: &[HopRole]) {
    if route.directly_connected() {
        ps.hops.clear();
        return;
    }
    ps.hops.truncate(route.hops.len());
    for (i, addr) in route.hops.iter().enumerate() {
        let ttl = (i + 1) as u8;
        let role = roles.get(i).copied().unwrap_or(HopRole::Unknown);
        match ps.hops.get_mut(i) {
            Some(h) => {
                h.addr = *addr;
                h.role = role;
            }
            None => ps.hops.push(HopStats {
                ttl,
                addr: *addr,
                role,
                stats: PathStats::new(String::new(), ProbeKind::Icmp),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ICMP checksum of a hop probe does not depend on its sequence number, so a load
    /// balancer hashing type, code and checksum keeps every probe on one path; without the
    /// compensating word it would change with every probe.
    #[test]
    fn echo_probes_keep_one_checksum_whatever_the_sequence() {
        let message = |seq: u16, payload: &[u8]| {
            let mut m = vec![8, 0, 0, 0, 0x12, 0x34];
            m.extend_from_slice(&seq.to_be_bytes());
            m.extend_from_slice(payload);
            pnet_packet::util::checksum(&m, 1)
        };
        let token = 0x0123_4567_89ab_cdef;
        let sums: Vec<u16> = [0u16, 1, 2, 0x7fff, 0xfffe, 0xffff]
            .iter()
            .map(|&s| message(s, &echo_payload(token, s)))
            .collect();
        assert!(sums.iter().all(|s| *s == sums[0]), "{sums:x?}");
        // The plain payload (what classic traceroute sends) does change it.
        let plain = echo_payload(token, 0);
        assert_ne!(message(1, &plain), message(2, &plain));
        assert!(echo_payload(token, 9).starts_with(&HOP_MAGIC));
        assert_eq!(echo_payload(token, 9).len(), PAYLOAD_SIZE);
    }
}
