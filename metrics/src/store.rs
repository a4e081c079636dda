//! The state behind the exposition: per-path counters, cumulative histogram and windows,
//! per-agent health. Reports are applied here; `export` reads it on every scrape.
//! Pure: time comes in as arguments.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use pathpulse_wire::{AgentHealth, HopRole, PathReport, ProbeKind, RefuseReason, Report, hist};

use crate::window::PathWindows;

/// Classic histogram bucket bounds for `pathpulse_rtt_seconds`, in microseconds:
/// 100 µs … 10 s, dense where LAN, metro and intercontinental RTTs fall.
pub const CLASSIC_BOUNDS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 300_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

/// One path: who measured what, how.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathKey {
    pub src: Arc<str>,
    pub dst: Arc<str>,
    pub probe: ProbeKind,
}

/// Monotonic counters of a path since the agent started, or (at the aggregator) since the
/// state directory was made: the aggregator restores them at start (see `durable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicate: u64,
    pub reordered: u64,
    pub send_errors: u64,
}

/// Schema of the native histogram of `pathpulse_rtt_seconds`: buckets grow by 2^(2^-3),
/// about 9% (the Go client's default factor 1.1 gives the same schema).
pub const NATIVE_SCHEMA: i32 = 3;

/// Native histogram bucket (schema [`NATIVE_SCHEMA`]) holding `us` microseconds: bucket
/// `i` covers (2^((i-1)/8), 2^(i/8)] seconds. `None` for 0 (the zero bucket).
pub fn native_index(us: u64) -> Option<i32> {
    if us == 0 {
        return None;
    }
    let scale = f64::from(1u32 << NATIVE_SCHEMA);
    let exact = (us as f64 / 1e6).log2() * scale;
    // Values on a boundary belong to the bucket below (upper bounds are inclusive); the
    // small tolerance absorbs log2's rounding at exact powers of two.
    Some((exact - 1e-9).ceil() as i32)
}

/// Cumulative RTT histogram in classic buckets, for `pathpulse_rtt_seconds`, and the same
/// samples in sparse native buckets (exposed when the scraper asks for protobuf).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cumulative {
    /// Non-cumulative counts per classic bucket; the last slot is `+Inf`.
    pub buckets: [u64; CLASSIC_BOUNDS_US.len() + 1],
    pub count: u64,
    pub sum_us: u64,
    /// Native buckets: index → count (positive values only: RTTs are never negative).
    pub native: NativeBuckets,
    pub native_zero: u64,
}

impl Cumulative {
    fn add(&mut self, p: &PathReport) {
        for &(idx, n) in p.rtt.buckets() {
            let v = hist::lowest_of(idx);
            let b = CLASSIC_BOUNDS_US.partition_point(|&bound| bound < v);
            self.buckets[b] += u64::from(n);
            self.count += u64::from(n);
            // The middle of the HDR bucket (its width is at most 1/1024 of the value).
            let mid = v + (hist::highest_of(idx) - v) / 2;
            match native_index(mid) {
                Some(i) => self.native.add(i, u64::from(n)),
                None => self.native_zero += u64::from(n),
            }
        }
        self.sum_us += p.rtt_sum_us;
    }
}

/// Native histogram buckets, index → count, as a sorted `Vec`: a path has a handful, and a
/// `BTreeMap` leaf took 144 bytes for them (1.4 MiB at 10,000 paths). Serialized as the
/// map it replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativeBuckets(Vec<(i32, u64)>);

impl NativeBuckets {
    pub fn add(&mut self, index: i32, n: u64) {
        match self.0.binary_search_by_key(&index, |b| b.0) {
            Ok(pos) => self.0[pos].1 += n,
            Err(pos) => self.0.insert(pos, (index, n)),
        }
    }

    pub fn get(&self, index: i32) -> Option<u64> {
        let pos = self.0.binary_search_by_key(&index, |b| b.0).ok()?;
        Some(self.0[pos].1)
    }

    /// (index, count) in index order.
    pub fn iter(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.0.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(i32, u64)> for NativeBuckets {
    fn from_iter<I: IntoIterator<Item = (i32, u64)>>(it: I) -> Self {
        let mut b = NativeBuckets::default();
        for (i, n) in it {
            b.add(i, n);
        }
        b
    }
}

impl Serialize for NativeBuckets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for NativeBuckets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<i32, u64>::deserialize(d)?;
        Ok(NativeBuckets(map.into_iter().collect()))
    }
}

#[derive(Debug, Clone, Default)]
pub struct PathState {
    pub counters: Counters,
    pub cumulative: Cumulative,
    pub windows: PathWindows,
    pub jitter_us: Option<f64>,
    pub in_flight: u64,
    /// When a report last carried this path (wall clock, ms): paths an agent stopped
    /// reporting (a removed target, a departed peer) are pruned after a grace period.
    pub last_report_ms: u64,
    /// Hops toward this target by TTL (ICMP paths with hop discovery).
    pub hops: BTreeMap<u8, HopState>,
    pub route_changes: u64,
}

/// One hop toward a target: who answers at this TTL, its role, its probes.
#[derive(Debug, Clone)]
pub struct HopState {
    pub addr: Arc<str>,
    pub role: HopRole,
    pub counters: Counters,
    pub windows: PathWindows,
}

#[derive(Debug, Clone, Default)]
pub struct AgentState {
    /// Wall-clock time the last report was applied, ms since the epoch.
    pub last_report_ms: Option<u64>,
    pub reports: u64,
    pub health: HealthTotals,
    pub last_scheduling_lag_us: u32,
    /// The agent's spool for this aggregator at its last report (gauge).
    pub spool_reports: u64,
    /// Reports the agent dropped for this aggregator (spool bound, full queue), summed over
    /// its sessions.
    pub spool_dropped: u64,
    /// Confirmation bursts the agent sent (`ClientMsg::Confirm`), and their probes
    /// answered and lost: the extra probes it spent on fast alerts, kept out of the
    /// paths' counters.
    pub confirm_bursts: u64,
    pub confirm_received: u64,
    pub confirm_lost: u64,
    /// Labels from the agent's hello (`--site`, `--isp`).
    pub site: Option<String>,
    pub isp: Option<String>,
    /// Address the agent connected from (the aggregator's view: NAT shows the NAT).
    pub addr: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTotals {
    pub stray_not_ours: u64,
    pub stray_wrong_source: u64,
    pub stray_unknown_probe: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub rtt_kernel_clock: u64,
    pub rtt_monotonic_clock: u64,
    /// STAMP reflector: packets reflected, and dropped per reason (labels of
    /// `ReflectorCounts::dropped`).
    pub stamp_reflected: u64,
    pub stamp_dropped: [u64; 6],
}

impl HealthTotals {
    fn add(&mut self, h: &AgentHealth) {
        self.stray_not_ours += u64::from(h.stray_not_ours);
        self.stray_wrong_source += u64::from(h.stray_wrong_source);
        self.stray_unknown_probe += u64::from(h.stray_unknown_probe);
        self.send_errors += u64::from(h.send_errors);
        self.recv_errors += u64::from(h.recv_errors);
        self.rtt_kernel_clock += u64::from(h.rtt_kernel_clock);
        self.rtt_monotonic_clock += u64::from(h.rtt_monotonic_clock);
        self.stamp_reflected += u64::from(h.reflector.reflected);
        for (t, (_, n)) in self.stamp_dropped.iter_mut().zip(h.reflector.dropped()) {
            *t += u64::from(n);
        }
    }
}

/// Refusals counted in `pathpulse_ingest_refused_total` beside the wire's
/// [`RefuseReason`]s: the peer is not told (the connection is refused or closed).
pub const CONNECTION_LIMIT: &str = "connection_limit";
/// A connection that sent no hello within the deadline after its handshake.
pub const SILENT: &str = "silent";
pub const LOCAL_REFUSALS: [&str; 2] = [CONNECTION_LIMIT, SILENT];

/// Bounds of `pathpulse_ingest_latency_seconds`, in microseconds.
pub const INGEST_LATENCY_BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// A classic latency histogram (non-cumulative counts per bucket of
/// [`INGEST_LATENCY_BOUNDS_US`], the last one `+Inf`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHist {
    pub buckets: [u64; INGEST_LATENCY_BOUNDS_US.len() + 1],
    pub count: u64,
    pub sum_us: u64,
}

impl LatencyHist {
    pub fn observe(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let b = INGEST_LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[b] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

/// Everything the exposition shows.
#[derive(Debug, Default)]
pub struct Store {
    /// Boxed: a `BTreeMap` leaf holds 11 entries and is about 60% full, so 336 bytes of state
    /// inline cost about 560 a path (6.4 MiB at 10,000 paths, heaptrack), boxed 384.
    pub paths: BTreeMap<PathKey, Box<PathState>>,
    pub agents: BTreeMap<Arc<str>, AgentState>,
    pub refused: BTreeMap<&'static str, u64>,
    /// Aggregator: time from a report's frame read off its stream to the report applied to
    /// this store, and to its acknowledgement sent (after the durable commit).
    pub ingest_applied: LatencyHist,
    pub ingest_acked: LatencyHist,
    /// Certificates issued by enrollment.
    pub enrolled: u64,
    /// Certificates renewed by their agents.
    pub renewed: u64,
    /// An agent is up while its last report is younger than this.
    pub stale_after_ms: u64,
    /// Paths not reported for this long are pruned (their series go instead of freezing).
    /// `None`: never.
    pub prune_after_ms: Option<u64>,
    /// Cardinality budget: at most this many paths get per-path series (the roll-ups by
    /// site pair and ISP always cover every path). `None`: no limit.
    pub path_budget: Option<usize>,
    /// Per agent, its most recently used sessions, least recent first.
    pub(crate) applied: BTreeMap<Arc<str>, Vec<SessionState>>,
    /// What changed since the last `take_changes` (only when `track_changes` was called:
    /// the aggregator persists it; the agent's own store keeps nothing).
    pub(crate) journal: Option<crate::durable::Journal>,
}

/// What is remembered of one session of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionState {
    session: u64,
    /// Last applied sequence: a report at or below it is a duplicate.
    last_seq: u64,
    /// Largest `spool_dropped` the session reported.
    dropped: u32,
}

/// Sessions remembered per agent for de-duplication (every agent start opens a new one;
/// a replay after a restart uses the earlier one). Least recently used goes first.
pub const SESSIONS_PER_AGENT: usize = 16;

/// What `apply_once` did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    New,
    /// Already applied earlier (a replay after reconnect): acknowledged, not counted again.
    Duplicate,
}

/// Destinations to sites (see [`Store::site_of_dst`]): a scrape or a localization pass
/// asks for every path, and finding each destination among all agents (formatting their
/// addresses) was most of the work with 100,000 paths from 1,000 agents.
pub struct DstSites<'a> {
    store: &'a Store,
    /// Each address with the first agent (by name) that connected from it, and its site.
    by_addr: HashMap<IpAddr, (&'a str, Option<&'a str>)>,
}

impl<'a> DstSites<'a> {
    pub fn site_of(&self, dst: &str) -> Option<&'a str> {
        let by_name = self
            .store
            .agents
            .get_key_value(dst)
            .map(|(n, a)| (&**n, a.site.as_deref()));
        // An address matches as it is written (its `Display` form).
        let by_addr = dst
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| ip.to_string() == dst)
            .and_then(|ip| self.by_addr.get(&ip).copied());
        // The first agent by name that matches either way.
        match (by_name, by_addr) {
            (Some(n), Some(a)) if a.0 < n.0 => a.1,
            (n, a) => n.or(a).and_then(|x| x.1),
        }
    }
}

impl Store {
    pub fn new(stale_after_ms: u64) -> Self {
        Store {
            stale_after_ms,
            ..Store::default()
        }
    }

    /// The site of a destination that is an agent (by name or by the address it
    /// connected from; the first such agent by name).
    pub fn site_of_dst(&self, dst: &str) -> Option<&str> {
        self.dst_sites().site_of(dst)
    }

    /// [`Store::site_of_dst`] for many destinations, the agents' addresses indexed once.
    pub fn dst_sites(&self) -> DstSites<'_> {
        let mut by_addr = HashMap::new();
        for (name, a) in &self.agents {
            if let Some(ip) = a.addr {
                by_addr.entry(ip).or_insert((&**name, a.site.as_deref()));
            }
        }
        DstSites {
            store: self,
            by_addr,
        }
    }

    /// Record an agent's hello: its labels and the address it connected from.
    pub fn hello(
        &mut self,
        agent: &str,
        site: Option<String>,
        isp: Option<String>,
        addr: Option<IpAddr>,
    ) {
        let key = match self.agents.get_key_value(agent) {
            Some((k, _)) => k.clone(),
            None => Arc::from(agent),
        };
        let a = self.agents.entry(key).or_default();
        a.site = site;
        a.isp = isp;
        a.addr = addr;
    }

    /// Apply one report (already authenticated and validated).
    pub fn apply(&mut self, r: &Report, now_ms: u64) {
        let src = self.apply_agent(&r.agent, &r.health, now_ms);
        self.apply_paths(&src, r.interval_start_ms, &r.paths, now_ms);
    }

    /// The agent's part of [`Store::apply`]: one report counted, its health added.
    /// Returns the agent's name as the key its paths use.
    pub fn apply_agent(&mut self, agent: &str, health: &AgentHealth, now_ms: u64) -> Arc<str> {
        let src: Arc<str> = match self.agents.get_key_value(agent) {
            Some((k, _)) => k.clone(),
            None => Arc::from(agent),
        };
        if let Some(j) = &mut self.journal {
            j.agents.insert(src.clone());
        }
        let agent = self.agents.entry(src.clone()).or_default();
        agent.last_report_ms = Some(now_ms);
        agent.reports += 1;
        agent.health.add(health);
        agent.last_scheduling_lag_us = health.max_scheduling_lag_us;
        agent.spool_reports = u64::from(health.spool_reports);
        src
    }

    /// The paths' part of [`Store::apply`], for some or all of a report's paths (a
    /// standalone agent applies its report in parts; see the agent's `run`).
    pub fn apply_paths(
        &mut self,
        src: &Arc<str>,
        interval_start_ms: u64,
        paths: &[PathReport],
        now_ms: u64,
    ) {
        for p in paths {
            let key = PathKey {
                src: src.clone(),
                dst: Arc::from(p.dst.as_str()),
                probe: p.probe(),
            };
            if let Some(j) = &mut self.journal {
                j.removed.remove(&key);
                j.paths.insert(key.clone());
            }
            let st = self.paths.entry(key).or_default();
            let c = &mut st.counters;
            c.sent += u64::from(p.sent);
            c.received += u64::from(p.received);
            c.lost += u64::from(p.lost);
            c.late += u64::from(p.late);
            c.duplicate += u64::from(p.duplicate);
            c.reordered += u64::from(p.reordered);
            c.send_errors += u64::from(p.send_errors);
            st.cumulative.add(p);
            st.windows.add(interval_start_ms, p, now_ms);
            if let Some(j) = p.jitter_us {
                st.jitter_us = Some(f64::from(j));
            }
            st.in_flight = u64::from(p.in_flight);
            st.last_report_ms = st.last_report_ms.max(now_ms);
            st.route_changes += u64::from(p.route_changes);
            // The hop list is the agent's current one: TTLs it no longer reports go.
            st.hops
                .retain(|ttl, _| p.hops.iter().any(|h| h.ttl == *ttl));
            for h in &p.hops {
                let hs = st.hops.entry(h.ttl).or_insert_with(|| HopState {
                    addr: Arc::from(""),
                    role: HopRole::Unknown,
                    counters: Counters::default(),
                    windows: PathWindows::default(),
                });
                if let Some(a) = h.addr.as_ref().filter(|a| **a != *hs.addr) {
                    hs.addr = Arc::from(a.as_str());
                }
                hs.role = h.role.unwrap_or(HopRole::Unknown);
                hs.counters.sent += u64::from(h.stats.sent);
                hs.counters.received += u64::from(h.stats.received);
                hs.counters.lost += u64::from(h.stats.lost);
                hs.windows.add(interval_start_ms, &h.stats, now_ms);
            }
        }
    }

    /// Apply a report unless its `(agent, session, seq)` was applied before. Sequences
    /// of a session increase by one; a gap (reports the agent dropped) is accepted.
    pub fn apply_once(&mut self, r: &Report, session: u64, now_ms: u64) -> Applied {
        let sessions = self.applied.entry(Arc::from(r.agent.as_str())).or_default();
        let mut st = match sessions.iter().position(|s| s.session == session) {
            Some(i) if r.seq <= sessions[i].last_seq => return Applied::Duplicate,
            Some(i) => sessions.remove(i),
            None => {
                if sessions.len() >= SESSIONS_PER_AGENT {
                    sessions.remove(0);
                }
                SessionState {
                    session,
                    last_seq: 0,
                    dropped: 0,
                }
            }
        };
        st.last_seq = r.seq;
        let more_dropped = r.health.spool_dropped.saturating_sub(st.dropped);
        st.dropped = st.dropped.max(r.health.spool_dropped);
        sessions.push(st);
        self.apply(r, now_ms);
        if let Some(a) = self.agents.get_mut(r.agent.as_str()) {
            a.spool_dropped += u64::from(more_dropped);
        }
        if let Some(j) = &mut self.journal {
            j.applied += 1;
        }
        Applied::New
    }

    /// Count a refused connection, frame or report.
    /// Count the confirmation bursts of an agent that said hello (ignored otherwise).
    pub fn confirmed(&mut self, agent: &str, c: &pathpulse_wire::Confirm) {
        if let Some(a) = self.agents.get_mut(agent) {
            for p in &c.paths {
                a.confirm_bursts += 1;
                a.confirm_received += u64::from(p.received);
                a.confirm_lost += u64::from(p.lost);
            }
        }
    }

    pub fn refuse(&mut self, reason: RefuseReason) {
        *self.refused.entry(reason.as_str()).or_default() += 1;
    }

    /// Count a connection the aggregator turned away for a reason it never tells the peer
    /// ([`LOCAL_REFUSALS`]).
    pub fn refuse_local(&mut self, reason: &'static str) {
        *self.refused.entry(reason).or_default() += 1;
    }

    pub fn agent_up(&self, a: &AgentState, now_ms: u64) -> bool {
        a.last_report_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= self.stale_after_ms)
    }

    /// Forget a path and its series (its target was removed from the agent's config).
    pub fn remove_path(&mut self, src: &str, dst: &str, probe: ProbeKind) -> bool {
        let key = PathKey {
            src: Arc::from(src),
            dst: Arc::from(dst),
            probe,
        };
        let gone = self.paths.remove(&key).is_some();
        if let Some(j) = &mut self.journal {
            j.forget(key);
        }
        gone
    }

    /// Forget every path from or toward `agent` (a member that left the mesh): their
    /// series go at once instead of waiting for `prune_after_ms`. Returns how many.
    pub fn remove_paths_of(&mut self, agent: &str) -> usize {
        let before = self.paths.len();
        self.paths
            .retain(|k, _| &*k.src != agent && &*k.dst != agent);
        before - self.paths.len()
    }

    /// Drop window slots nobody can see any more (call periodically).
    pub fn expire(&mut self, now_ms: u64) {
        if let Some(grace) = self.prune_after_ms {
            let journal = &mut self.journal;
            self.paths.retain(|k, st| {
                let keep = now_ms.saturating_sub(st.last_report_ms) <= grace;
                if !keep && let Some(j) = journal {
                    j.forget(k.clone());
                }
                keep
            });
        }
        for st in self.paths.values_mut() {
            st.windows.expire(now_ms);
            for h in st.hops.values_mut() {
                h.windows.expire(now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The indexed lookup agrees with finding the first agent by name that matches.
    #[test]
    fn dst_sites_equal_the_first_matching_agent() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let names = ["a", "b", "10.0.0.1", "10.0.0.2", "::1", "z", "10.0.0.3"];
        let addrs = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1", "::ffff:10.0.0.1"];
        for _ in 0..200 {
            let mut st = Store::default();
            for n in names {
                if rng.random_bool(0.7) {
                    let addr = rng
                        .random_bool(0.8)
                        .then(|| addrs[rng.random_range(0..addrs.len())].parse().expect("ip"));
                    let site = rng.random_bool(0.8).then(|| format!("site-{n}"));
                    st.hello(n, site, None, addr);
                }
            }
            let sites = st.dst_sites();
            for dst in names
                .iter()
                .chain(&addrs)
                .chain(&["0:0::1", "10.0.0.9", "x"])
            {
                let want = st
                    .agents
                    .iter()
                    .find(|(n, a)| &***n == *dst || a.addr.is_some_and(|ip| ip.to_string() == *dst))
                    .and_then(|(_, a)| a.site.as_deref());
                assert_eq!(sites.site_of(dst), want, "{dst}");
            }
        }
    }

    fn report(seq: u64, rtts: &[u64], lost: u32, in_flight: u32) -> Report {
        let mut p = PathReport {
            dst: "127.0.0.2".into(),
            lost,
            in_flight,
            ..Default::default()
        };
        for &v in rtts {
            p.rtt.record(v);
            p.rtt_sum_us += v;
            p.received += 1;
        }
        p.sent = p.received + lost + in_flight;
        Report {
            seq,
            agent: "a".into(),
            interval_start_ms: 1_000_000,
            interval_ms: 5000,
            paths: vec![p],
            health: AgentHealth::default(),
        }
    }

    #[test]
    fn paths_no_longer_reported_are_pruned_after_the_grace_period() {
        let mut s = Store::new(15_000);
        s.prune_after_ms = Some(600_000);
        s.apply(&report(1, &[100], 0, 0), 1_000_000);
        s.expire(1_500_000);
        assert_eq!(s.paths.len(), 1, "inside the grace period");
        s.expire(1_600_001);
        assert!(s.paths.is_empty(), "pruned after 10 min without a report");
        let mut keep = Store::new(15_000);
        keep.apply(&report(1, &[100], 0, 0), 1_000_000);
        keep.expire(u64::MAX);
        assert_eq!(keep.paths.len(), 1, "no grace period: kept");
    }

    #[test]
    fn native_buckets_follow_the_schema() {
        // Bucket i covers (2^((i-1)/8), 2^(i/8)] s: 1 s is the top of bucket 0.
        assert_eq!(native_index(1_000_000), Some(0));
        assert_eq!(native_index(1_000_001), Some(1));
        assert_eq!(native_index(500_000), Some(-8));
        assert_eq!(native_index(0), None);
        // 10 ms: log2(0.01) * 8 = -53.15 → bucket -53, bounds 2^(-54/8)..2^(-53/8).
        let i = native_index(10_000).expect("index");
        let (lo, hi) = (
            2f64.powf(f64::from(i - 1) / 8.0),
            2f64.powf(f64::from(i) / 8.0),
        );
        assert!(lo < 0.01 && 0.01 <= hi, "{lo} < 0.01 <= {hi}");
        let mut s = Store::new(15_000);
        s.apply(&report(1, &[10_000, 10_050, 0], 0, 0), 1_005_000);
        let c = &s.paths.values().next().expect("path").cumulative;
        assert_eq!(
            c.native.iter().map(|(_, n)| n).sum::<u64>() + c.native_zero,
            c.count
        );
        assert_eq!(c.native_zero, 1);
        assert_eq!(c.native.get(i), Some(2));
    }

    #[test]
    fn native_buckets_are_stored_as_the_map_they_replace() {
        let map: BTreeMap<i32, u64> = [(-60, 1), (-53, 7), (2, 3)].into();
        let mut b = NativeBuckets::default();
        for (i, n) in [(2, 1), (-53, 7), (-60, 1), (2, 2)] {
            b.add(i, n);
        }
        assert_eq!(b.iter().collect::<Vec<_>>(), [(-60, 1), (-53, 7), (2, 3)]);
        // Counters files written before keep loading, and the other way round.
        let bytes = postcard::to_stdvec(&map).expect("encode");
        assert_eq!(postcard::to_stdvec(&b).expect("encode"), bytes);
        let back: NativeBuckets = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, b);
    }

    #[test]
    fn counters_and_classic_buckets_add_up() {
        let mut s = Store::new(15_000);
        s.apply(&report(1, &[50, 300, 4_000], 1, 0), 1_005_000);
        s.apply(&report(2, &[20_000_000], 0, 0), 1_010_000);
        let st = s.paths.values().next().expect("one path");
        assert_eq!(st.counters.sent, 5);
        assert_eq!(st.counters.received, 4);
        assert_eq!(st.counters.lost, 1);
        assert_eq!(st.cumulative.count, 4);
        assert_eq!(st.cumulative.buckets[0], 1, "50 µs <= 100 µs");
        assert_eq!(st.cumulative.buckets[2], 1, "300 µs in (250, 500]");
        assert_eq!(st.cumulative.buckets[5], 1, "4 ms in (2.5, 5] ms");
        assert_eq!(
            st.cumulative.buckets[CLASSIC_BOUNDS_US.len()],
            1,
            "20 s in +Inf"
        );
        assert_eq!(st.cumulative.sum_us, 20_004_350);
    }

    #[test]
    fn replays_are_applied_once_per_session() {
        let mut s = Store::new(15_000);
        assert_eq!(
            s.apply_once(&report(1, &[1], 0, 0), 77, 1_000_000),
            Applied::New
        );
        assert_eq!(
            s.apply_once(&report(2, &[1], 0, 0), 77, 1_000_000),
            Applied::New
        );
        assert_eq!(
            s.apply_once(&report(1, &[1], 0, 0), 77, 1_000_000),
            Applied::Duplicate
        );
        assert_eq!(
            s.apply_once(&report(2, &[1], 0, 0), 77, 1_000_000),
            Applied::Duplicate
        );
        // A restarted agent (new session) starts again at 1.
        assert_eq!(
            s.apply_once(&report(1, &[1], 0, 0), 78, 1_000_000),
            Applied::New
        );
        assert_eq!(s.paths.values().next().expect("path").counters.received, 3);
    }

    #[test]
    fn sessions_are_remembered_by_last_use_and_spool_drops_add_up() {
        let mut s = Store::new(15_000);
        let mut r = report(1, &[1], 0, 0);
        r.health.spool_dropped = 3;
        assert_eq!(s.apply_once(&r, 1, 1_000_000), Applied::New);
        // Many newer sessions, while session 1 keeps being used (a long replay).
        for session in 2..(SESSIONS_PER_AGENT as u64 + 5) {
            assert_eq!(
                s.apply_once(&report(1, &[1], 0, 0), session, 1_000_000),
                Applied::New
            );
            r.seq += 1;
            r.health.spool_dropped = 5;
            assert_eq!(s.apply_once(&r, 1, 1_000_000), Applied::New);
        }
        assert_eq!(s.apply_once(&r, 1, 1_000_000), Applied::Duplicate);
        let a = s.agents.values().next().expect("agent");
        assert_eq!(a.spool_dropped, 5, "cumulative per session, counted once");
        // A late report of the session with a smaller count changes nothing.
        r.seq += 1;
        r.health.spool_dropped = 4;
        s.apply_once(&r, 1, 1_000_000);
        assert_eq!(s.agents.values().next().expect("agent").spool_dropped, 5);
    }

    #[test]
    fn agent_goes_down_when_reports_stop() {
        let mut s = Store::new(15_000);
        s.apply(&report(1, &[1], 0, 0), 1_000_000);
        let a = s.agents.values().next().expect("agent");
        assert!(s.agent_up(a, 1_014_000));
        assert!(!s.agent_up(a, 1_016_000));
    }
}
