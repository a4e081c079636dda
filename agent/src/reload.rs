//! Reloading the targets of a running agent (SIGHUP) without losing state.
//!
//! The probers follow a [`ProbePlan`] (targets with the slot each reports into, interval
//! and timeout) through a watch channel. A reload re-reads the configuration and
//! compares target lists ([`diff`], pure): a target that stays keeps its slot, so its
//! counters, jitter and in-flight probes carry on; a new one gets a new slot; a removed
//! one is retired (its last interval is still reported). Keys that cannot change while
//! running are named in a warning and keep their running value.
//!
//! Peer lists pushed by an aggregator (mesh membership) take the same road: the plan is
//! the configured targets followed by the peers' ([`Reloader::set_peers`]), and a reload
//! of either keeps the other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pathpulse_wire::ProbeKind;
use tokio::sync::watch;

use crate::config::{AgentConfig, fmt_dur};
use crate::resolve::Resolver;
use crate::shared::Shared;
use crate::stats::PathStats;
use crate::target::TargetSpec;

/// What the probers run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbePlan {
    /// (slot in [`Shared`], target). Shared: every prober holds the plan, and with 10,000
    /// targets each copy of the list would cost about 2 MB.
    pub targets: Arc<[(usize, TargetSpec)]>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Confirmation bursts of the ICMP prober.
    pub confirm: crate::probe::confirm::Confirmation,
}

impl ProbePlan {
    /// The targets one prober handles.
    pub fn of_kind(&self, k: ProbeKind) -> Selected {
        self.select(|t| t.probe == k)
    }

    /// The targets that pass `keep`, sharing the plan's list.
    pub fn select(&self, keep: impl Fn(&TargetSpec) -> bool) -> Selected {
        Selected {
            idx: (0..self.targets.len())
                .filter(|&i| keep(&self.targets[i].1))
                .collect(),
            all: self.targets.clone(),
        }
    }
}

/// Some of a plan's targets, (slot, target) by position, without copying them.
#[derive(Debug, Clone, Default)]
pub struct Selected {
    all: Arc<[(usize, TargetSpec)]>,
    /// Positions in `all`.
    idx: Vec<usize>,
}

impl Selected {
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&(usize, TargetSpec)> {
        self.idx.get(i).map(|&j| &self.all[j])
    }

    pub fn iter(&self) -> SelectedIter<'_> {
        SelectedIter {
            all: &self.all,
            idx: self.idx.iter(),
        }
    }

    /// Keep the targets that pass `keep`.
    pub fn filter(mut self, keep: impl Fn(&TargetSpec) -> bool) -> Self {
        let all = &self.all;
        self.idx.retain(|&j| keep(&all[j].1));
        self
    }
}

impl<'a> IntoIterator for &'a Selected {
    type Item = &'a (usize, TargetSpec);
    type IntoIter = SelectedIter<'a>;

    fn into_iter(self) -> SelectedIter<'a> {
        self.iter()
    }
}

/// The targets of a [`Selected`], in plan order.
#[derive(Debug, Clone)]
pub struct SelectedIter<'a> {
    all: &'a [(usize, TargetSpec)],
    idx: std::slice::Iter<'a, usize>,
}

impl<'a> Iterator for SelectedIter<'a> {
    type Item = &'a (usize, TargetSpec);

    fn next(&mut self) -> Option<Self::Item> {
        self.idx.next().map(|&j| &self.all[j])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.idx.size_hint()
    }
}

impl std::ops::Index<usize> for Selected {
    type Output = (usize, TargetSpec);

    fn index(&self, i: usize) -> &Self::Output {
        &self.all[self.idx[i]]
    }
}

/// How one target list becomes another; targets are the same when probe and `dst`
/// label are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetDiff {
    /// (slot, target) that stay, in the new order.
    pub kept: Vec<(usize, TargetSpec)>,
    pub added: Vec<TargetSpec>,
    /// (slot, target) that go.
    pub removed: Vec<(usize, TargetSpec)>,
}

fn same(a: &TargetSpec, b: &TargetSpec) -> bool {
    a.probe == b.probe && a.label == b.label
}

/// Compare the running targets with a new list.
pub fn diff(old: &[(usize, TargetSpec)], new: &[TargetSpec]) -> TargetDiff {
    let mut d = TargetDiff::default();
    for t in new {
        match old.iter().find(|(_, o)| same(o, t)) {
            Some((slot, _)) => d.kept.push((*slot, t.clone())),
            None => d.added.push(t.clone()),
        }
    }
    d.removed = old
        .iter()
        .filter(|(_, o)| !new.iter().any(|t| same(o, t)))
        .cloned()
        .collect();
    d
}

/// Keys whose change needs a restart, with their running and new values differing.
pub fn restart_keys(running: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |k, changed: bool| {
        if changed {
            keys.push(k);
        }
    };
    check("name", running.name != new.name);
    check("aggregators", running.aggregators != new.aggregators);
    check(
        "metrics_listen",
        running.metrics_listen != new.metrics_listen,
    );
    check("state_dir", running.state_dir != new.state_dir);
    check(
        "spool_max_reports",
        running.spool.max_reports != new.spool.max_reports,
    );
    check(
        "spool_max_mib",
        running.spool.max_bytes != new.spool.max_bytes,
    );
    check("site", running.site != new.site);
    check("isp", running.isp != new.isp);
    check(
        "report_interval",
        running.report_interval != new.report_interval,
    );
    check("hops", running.hops != new.hops);
    check("isp_prefixes", running.isp_prefixes != new.isp_prefixes);
    check("hop_interval", running.hop_interval != new.hop_interval);
    check("hop_probe", running.hop_probe != new.hop_probe);
    check("stamp_listen", running.stamp_listen != new.stamp_listen);
    check("stamp_rate", running.stamp_rate != new.stamp_rate);
    check("stamp_key_file", running.stamp_key != new.stamp_key);
    check("advertise", running.advertise != new.advertise);
    check("clock_sync", running.clock_sync != new.clock_sync);
    check(
        "confirm_probes",
        running.confirm.probes != new.confirm.probes,
    );
    check(
        "confirm_spacing",
        running.confirm.spacing != new.confirm.spacing,
    );
    keys
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub kept: usize,
    /// Keys that changed in the file but keep their running value until a restart.
    pub need_restart: Vec<&'static str>,
}

/// The running agent's reloadable state.
#[derive(Debug)]
pub struct Reloader {
    running: Mutex<AgentConfig>,
    plan: watch::Sender<ProbePlan>,
    shared: Arc<Shared>,
    resolver: Arc<Resolver>,
    /// Targets from the aggregators' peer lists.
    peers: Mutex<Vec<TargetSpec>>,
    /// One re-plan at a time (a SIGHUP and a peer list may come together).
    replanning: tokio::sync::Mutex<()>,
}

/// The configured targets, then the peers' (a peer target that a configured one already
/// names, same probe and label, is left out).
pub fn merged(configured: &[TargetSpec], peers: &[TargetSpec]) -> Vec<TargetSpec> {
    let mut out = configured.to_vec();
    for p in peers {
        if !out.iter().any(|t| same(t, p)) {
            out.push(p.clone());
        }
    }
    out
}

fn describe(t: &TargetSpec) -> String {
    format!("{}:{}", t.probe.as_str(), t.label)
}

impl Reloader {
    pub fn new(
        running: AgentConfig,
        plan: watch::Sender<ProbePlan>,
        shared: Arc<Shared>,
        resolver: Arc<Resolver>,
    ) -> Self {
        Reloader {
            running: Mutex::new(running),
            plan,
            shared,
            resolver,
            peers: Mutex::new(Vec::new()),
            replanning: tokio::sync::Mutex::new(()),
        }
    }

    /// Probe these peer targets (the whole list, replacing the last one) alongside the
    /// configured targets. Returns the targets added and removed.
    pub async fn set_peers(&self, peers: Vec<TargetSpec>) -> (Vec<String>, Vec<String>) {
        let _one = self.replanning.lock().await;
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers.clone();
        let (configured, interval, timeout) = {
            let r = self.running.lock().unwrap_or_else(|e| e.into_inner());
            (r.targets.clone(), r.interval, r.timeout)
        };
        let d = self
            .replan(merged(&configured, &peers), interval, timeout)
            .await;
        (
            d.added.iter().map(describe).collect(),
            d.removed.iter().map(|(_, t)| describe(t)).collect(),
        )
    }

    /// Make `targets` the plan: kept targets keep their slot, removed ones are retired,
    /// new ones get a slot (and their names resolved before the probers see them).
    async fn replan(
        &self,
        targets: Vec<TargetSpec>,
        interval: Duration,
        timeout: Duration,
    ) -> TargetDiff {
        let old_plan = self.plan.borrow().clone();
        let d = diff(&old_plan.targets, &targets);
        for (slot, _) in &d.removed {
            self.shared.retire(*slot);
        }
        let mut planned = d.kept.clone();
        for t in &d.added {
            let slot = self.shared.add(PathStats::new(t.label.clone(), t.probe));
            planned.push((slot, t.clone()));
        }
        // Names first, so new targets resolve before their first probe.
        self.resolver
            .set_hosts(planned.iter().map(|(_, t)| t.host.clone()));
        self.resolver.refresh().await;
        if interval != old_plan.interval || timeout != old_plan.timeout {
            tracing::info!(
                interval = %fmt_dur(interval),
                timeout = %fmt_dur(timeout),
                "probe timing reloaded"
            );
        }
        self.plan.send_replace(ProbePlan {
            targets: planned.into(),
            interval,
            timeout,
            confirm: old_plan.confirm,
        });
        d
    }

    pub fn subscribe(&self) -> watch::Receiver<ProbePlan> {
        self.plan.subscribe()
    }

    /// The configuration the agent runs with now.
    pub fn running(&self) -> AgentConfig {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Apply a new (already validated) configuration: targets, interval and timeout take
    /// effect now; other changed keys are reported and wait for a restart.
    pub async fn apply(&self, new: AgentConfig) -> ReloadSummary {
        let _one = self.replanning.lock().await;
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let d = self
            .replan(merged(&new.targets, &peers), new.interval, new.timeout)
            .await;
        let summary = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let s = ReloadSummary {
                added: d.added.iter().map(describe).collect(),
                removed: d.removed.iter().map(|(_, t)| describe(t)).collect(),
                kept: d.kept.len(),
                need_restart: restart_keys(&running, &new),
            };
            running.targets = new.targets;
            running.interval = new.interval;
            running.timeout = new.timeout;
            s
        };
        tracing::info!(
            added = ?summary.added,
            removed = ?summary.removed,
            kept = summary.kept,
            "targets reloaded"
        );
        if !summary.need_restart.is_empty() {
            tracing::warn!(
                keys = ?summary.need_restart,
                "these keys changed but take effect only at the next restart"
            );
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TargetSpec {
        TargetSpec::parse(s).expect("spec")
    }

    #[test]
    fn targets_that_stay_keep_their_slot() {
        let old = vec![
            (0, t("127.0.0.2")),
            (1, t("tcp:127.0.0.1:80")),
            (2, t("::1")),
        ];
        let d = diff(&old, &[t("::1"), t("127.0.0.3"), t("icmp:127.0.0.2")]);
        assert_eq!(d.kept, [(2, t("::1")), (0, t("127.0.0.2"))]);
        assert_eq!(d.added, [t("127.0.0.3")]);
        assert_eq!(d.removed, [(1, t("tcp:127.0.0.1:80"))]);
        // Same host, other probe kind: a different path.
        let d = diff(&old[..1], &[t("tcp:127.0.0.2:22")]);
        assert_eq!((d.kept.len(), d.added.len(), d.removed.len()), (0, 1, 1));
    }

    fn cfg(targets: &[&str]) -> AgentConfig {
        AgentConfig {
            name: "a1".into(),
            targets: targets.iter().map(|s| t(s)).collect(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            report_interval: Duration::from_secs(5),
            aggregators: vec![],
            metrics_listen: Some("127.0.0.1:9469".parse().expect("addr")),
            state_dir: "/var/lib/pathpulse".into(),
            site: None,
            isp: None,
            hops: true,
            isp_prefixes: vec![],
            hop_interval: crate::config::DEFAULT_HOP_INTERVAL,
            hop_probe: Default::default(),
            stamp_listen: crate::config::StampListen::Off,
            stamp_rate: crate::probe::stamp::reflector::DEFAULT_RATE,
            stamp_key: None,
            advertise: vec![],
            spool: Default::default(),
            clock_sync: Default::default(),
            confirm: Default::default(),
        }
    }

    #[tokio::test]
    async fn apply_adds_retires_and_names_keys_that_need_a_restart() {
        let start = cfg(&["127.0.0.2", "127.0.0.3"]);
        let shared = Arc::new(Shared::new(
            start
                .targets
                .iter()
                .map(|t| PathStats::new(t.label.clone(), t.probe))
                .collect(),
        ));
        let plan = ProbePlan {
            targets: start.targets.iter().cloned().enumerate().collect(),
            interval: start.interval,
            timeout: start.timeout,
            confirm: Default::default(),
        };
        let (tx, mut rx) = watch::channel(plan);
        let r = Reloader::new(start.clone(), tx, shared.clone(), Resolver::new([]));
        shared.path(0, |p| p.on_sent());
        let mut new = cfg(&["127.0.0.2", "127.0.0.4"]);
        new.interval = Duration::from_millis(500);
        new.site = Some("hq".into());
        let s = r.apply(new).await;
        assert_eq!(s.added, ["icmp:127.0.0.4"]);
        assert_eq!(s.removed, ["icmp:127.0.0.3"]);
        assert_eq!((s.kept, s.need_restart.as_slice()), (1, &["site"][..]));
        assert!(rx.has_changed().expect("open"));
        let plan = rx.borrow_and_update().clone();
        assert_eq!(plan.interval, Duration::from_millis(500));
        assert_eq!(
            plan.targets
                .iter()
                .map(|(i, t)| (*i, t.label.as_str()))
                .collect::<Vec<_>>(),
            [(0, "127.0.0.2"), (2, "127.0.0.4")]
        );
        let taken = shared.take();
        assert_eq!(taken.paths[0].sent, 1, "the kept path kept its counts");
        assert_eq!(taken.retired.len(), 1);
        let running = r.running();
        assert_eq!(running.site, None, "site waits for a restart");
        assert_eq!(running.targets.len(), 2);
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;
    use crate::target::Host;

    fn peer(name: &str, ip: &str) -> TargetSpec {
        TargetSpec {
            probe: ProbeKind::Icmp,
            host: Host::Ip(ip.parse().expect("ip")),
            port: None,
            label: name.into(),
            dns_name: None,
            options: Default::default(),
        }
    }

    #[tokio::test]
    async fn peers_join_the_plan_and_survive_a_reload() {
        let mut start = tests_cfg();
        start.targets = vec![TargetSpec::parse("127.0.0.2").expect("spec")];
        let shared = Arc::new(Shared::new(vec![PathStats::new(
            "127.0.0.2".into(),
            ProbeKind::Icmp,
        )]));
        let plan = ProbePlan {
            targets: start.targets.iter().cloned().enumerate().collect(),
            interval: start.interval,
            timeout: start.timeout,
            confirm: Default::default(),
        };
        let (tx, rx) = watch::channel(plan);
        let r = Reloader::new(start.clone(), tx, shared.clone(), Resolver::new([]));
        let labels = || -> Vec<String> {
            rx.borrow()
                .targets
                .iter()
                .map(|(_, t)| t.label.clone())
                .collect()
        };
        let (added, removed) = r
            .set_peers(vec![peer("b", "10.0.0.2"), peer("c", "10.0.0.3")])
            .await;
        assert_eq!((added.len(), removed.len()), (2, 0));
        assert_eq!(labels(), ["127.0.0.2", "b", "c"]);
        // A SIGHUP with another target list keeps the peers.
        let mut new = start.clone();
        new.targets = vec![TargetSpec::parse("127.0.0.9").expect("spec")];
        r.apply(new).await;
        assert_eq!(labels(), ["b", "c", "127.0.0.9"]);
        // A peer that left is retired; one whose address changed keeps its slot.
        let slot_b = rx.borrow().targets[0].0;
        let (added, removed) = r.set_peers(vec![peer("b", "10.0.0.22")]).await;
        assert_eq!((added, removed), (vec![], vec!["icmp:c".to_string()]));
        let p = rx.borrow().clone();
        let b = p.targets.iter().find(|(_, t)| t.label == "b").expect("b");
        assert_eq!((b.0, b.1.host.to_string()), (slot_b, "10.0.0.22".into()));
        assert_eq!(r.running().targets.len(), 1, "peers are not configuration");
    }

    fn tests_cfg() -> AgentConfig {
        AgentConfig::resolve(&crate::config::RunArgs {
            targets: vec!["127.0.0.2".into()],
            metrics_listen: Some("127.0.0.1:0".into()),
            name: Some("a1".into()),
            ..Default::default()
        })
        .expect("valid")
    }
}
