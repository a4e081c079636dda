//! The alert engine: keeps a short per-path history of reports, evaluates the rules as
//! each report arrives and on a periodic tick (agent stale, path down), and turns verdicts
//! into firing and resolved alerts. Pure: reports and `now` come in, alerts go out.
//!
//! The engine keeps its own history rather than reading the store's windows: those are
//! 5 s slots keyed by the agent's clock, too coarse to alert within seconds. Each report
//! here is one entry placed on the aggregator's clock: the agent's interval end plus the
//! estimated offset between the two clocks (the smallest seen, allowed to grow slowly),
//! so a replayed report lands where it belongs instead of looking fresh.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use pathpulse_metrics::store::PathKey;
use pathpulse_wire::{Confirm, ProbeKind, Report};
use serde::{Deserialize, Serialize};

use super::history::{Entry, GroupView, PathHistory, PathView};
use super::rules::{
    Level, PathInput, Rule, RuleKind, Tracker, Transition, Verdict, evaluate_agent,
    evaluate_group_loss, evaluate_path, stale_after,
};

/// History kept at least (the baseline's minute medians are taken from it).
const MIN_KEEP_MS: u64 = 70_000;
/// A path without any report for this long is forgotten, and its alerts resolve.
pub const FORGET_PATH_AFTER: Duration = Duration::from_secs(300);
/// How fast the estimated clock offset of an agent may grow (ms per ms): lets it follow
/// an agent clock stepped back within minutes, while a burst of replayed reports after an
/// outage still lands in the past.
const OFFSET_GROWTH: f64 = 0.05;

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Path(PathKey),
    Agent(Arc<str>),
    /// Every agent probing this target lost it (a roll-up of path-down alerts).
    Target {
        dst: Arc<str>,
        probe: ProbeKind,
    },
    /// The paths from one site to another: every one down (a roll-up of path-down
    /// alerts), or losing packets together (a loss roll-up).
    SitePair {
        src_site: Arc<str>,
        dst_site: Arc<str>,
    },
    /// The paths of the agents of one ISP, losing packets together (a loss roll-up).
    Isp {
        isp: Arc<str>,
    },
    /// Most paths of one agent, to two or more targets, losing packets together: the
    /// agent's own side (a loss roll-up).
    Source {
        src: Arc<str>,
    },
}

/// One alert instance: a rule (by alertname) on a subject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlertKey {
    pub alertname: Arc<str>,
    pub subject: Subject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

/// An alert as notified, persisted and shown by `GET /api/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id of the label set (FNV-1a 64, hex): the same on every aggregator.
    pub fingerprint: String,
    pub state: AlertState,
    pub alertname: String,
    /// Rule kind: loss, latency, jitter, mos, path_down, agent_stale.
    pub kind: String,
    pub severity: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// When the condition was first seen (ms since the epoch).
    pub starts_at_ms: u64,
    /// When it resolved; `None` while pending or firing.
    pub ends_at_ms: Option<u64>,
    /// The value compared, in the rule kind's unit (loss ratio, ms, MOS, seconds).
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    /// The window the value is over, seconds.
    pub window_seconds: f64,
}

fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fingerprint of a label set: hex FNV-1a over `name=value\n` in name order.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let text: String = labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    format!("{:016x}", fnv64(&text))
}

#[derive(Debug, Clone, Default)]
struct AgentInfo {
    last_report_ms: u64,
    interval_ms: u64,
    /// Estimated aggregator clock minus agent clock at a report's arrival, ms.
    offset_ms: Option<f64>,
    addrs: BTreeSet<IpAddr>,
    site: Option<Arc<str>>,
    isp: Option<Arc<str>>,
    /// Until when more of the agent's confirmation bursts are on their way (its last
    /// burst said others were under way), ms: its own-side roll-up may still form.
    bursts_due_until_ms: u64,
}

/// How long a path's raise waits at most for the agent's other confirmation bursts under
/// way (a burst of 60 probes 3 ms apart and its decision take about 250 ms).
const BURSTS_WAIT_MS: u64 = 500;

impl AgentInfo {
    fn silent(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.last_report_ms))
    }
}

/// The target of a path is a mesh agent: what says whether that agent may be stopping.
#[derive(Debug, Clone, Copy)]
struct AgentWatch {
    last_report_ms: u64,
    interval_ms: u64,
    stale_after_ms: u64,
    /// The agent counts as stopped now (its agent-down alert covers the path).
    stale: bool,
}

impl AgentWatch {
    /// Whether a path to this agent whose replies stopped (its reports since the last
    /// reply carry lost probes only) waits for the agent-down decision instead of raising
    /// a loss alert: the agent is stale, or it has not reported since the replies stopped
    /// and may turn stale yet (one tick of slack). An agent that reported after the
    /// replies stopped is alive: the loss is the path's. A path whose last report had a
    /// reply (partial loss) never waits.
    fn awaits(&self, view: &PathView<'_>, now_ms: u64) -> bool {
        let (silent, probed) = view.silence();
        if !probed {
            return false;
        }
        if self.stale {
            return true;
        }
        let stopped_ms = now_ms.saturating_sub(silent.as_millis() as u64);
        let alive_since = self.last_report_ms > stopped_ms + self.interval_ms;
        !alive_since && now_ms < stopped_ms + self.stale_after_ms + TICK_MS
    }
}

/// Whether a path loses more than a loss rule's raise ratio over the rule's shortest
/// window, or in its confirmation bursts (a point ratio, no confidence bound).
fn lossy(rule: &Rule, view: &dyn PathInput) -> bool {
    let first = rule.windows.first().copied().unwrap_or_default();
    let over =
        |(rx, lost): (u64, u64)| rx + lost > 0 && lost as f64 > rule.raise * (rx + lost) as f64;
    over(view.counts(first)) || over(view.confirm_counts(super::rules::CONFIRM_WINDOW))
}

/// A source roll-up's wait (see [`Engine::source_waits`]) is forgotten after this long
/// without the source raising again, ms.
const FORGET_SOURCE_WAIT_MS: u64 = 60_000;

/// The paths of `paths` from agent `src` (a range: keys order by source first).
fn agent_range<'a>(
    paths: &'a BTreeMap<PathKey, PathHistory>,
    src: &'a Arc<str>,
) -> impl Iterator<Item = &'a PathKey> {
    let from = PathKey {
        src: src.clone(),
        dst: Arc::from(""),
        probe: ProbeKind::Icmp,
    };
    paths
        .range(from..)
        .map(|(k, _)| k)
        .take_while(move |k| k.src == *src)
}

/// How many paths of `paths` are from agent `src`, up to 2.
fn agent_paths(paths: &BTreeMap<PathKey, PathHistory>, src: &Arc<str>) -> usize {
    agent_range(paths, src).take(2).count()
}

/// The periodic evaluation's period (`super::TICK`), ms.
const TICK_MS: u64 = 1_000;

#[derive(Debug, Clone, Default)]
struct Slot {
    tracker: Tracker,
    /// The alert while pending or firing (labels, last values).
    alert: Option<Alert>,
}

/// The engine's settings besides the rules.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Base URL of this aggregator's pages, for links in notifications.
    pub external_url: String,
}

pub struct Engine {
    rules: Vec<Rule>,
    /// The rules' alertnames, shared by their alert keys.
    names: Vec<Arc<str>>,
    cfg: EngineConfig,
    keep_ms: u64,
    paths: BTreeMap<PathKey, PathHistory>,
    agents: BTreeMap<Arc<str>, AgentInfo>,
    /// The agents that connected from each address (the union of their `addrs`).
    owners: BTreeMap<IpAddr, BTreeSet<Arc<str>>>,
    slots: BTreeMap<AlertKey, Slot>,
    /// When firing alerts were restored (ms); 0 if never.
    restored_ms: u64,
    /// Roll-up groups of two or more paths (ISP, site pair) and their paths; `None` when
    /// paths or agents changed since it was built.
    groups: Option<BTreeMap<Subject, Vec<PathKey>>>,
    /// Loss alerts of paths that raise but wait for their group's roll-up to decide, and
    /// since when (ms).
    waits: BTreeMap<AlertKey, u64>,
}

fn fmt_value(kind: RuleKind, v: f64) -> String {
    match kind {
        RuleKind::Loss => format!("{:.1}%", v * 100.0),
        RuleKind::Latency | RuleKind::Jitter => format!("{v:.1} ms"),
        RuleKind::Mos => format!("{v:.2}"),
        RuleKind::PathDown | RuleKind::AgentStale => format!("{v:.0} s"),
    }
}

fn fmt_secs(d: f64) -> String {
    if d >= 1.0 {
        format!("{d:.0}s")
    } else {
        format!("{:.0}ms", d * 1000.0)
    }
}

/// The host part of a target as written (`host`, `host:port`, `[v6]:port`).
fn target_host(dst: &str) -> &str {
    if let Some(rest) = dst.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match dst.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
        _ => dst,
    }
}

/// A firing alert resolved at `now_ms` for a reason of the engine's own (not its clear
/// condition), said in its summary.
fn resolved_now(mut a: Alert, now_ms: u64, why: &str) -> Alert {
    a.state = AlertState::Resolved;
    a.ends_at_ms = Some(now_ms);
    let summary = a.annotations.get("summary").cloned().unwrap_or_default();
    a.annotations
        .insert("summary".into(), format!("{summary} ({why})"));
    a
}

/// History kept per path: the longest window any rule reads, and 10 s more.
fn keep_ms_for(rules: &[Rule]) -> u64 {
    rules
        .iter()
        .map(|r| r.longest_window().as_millis() as u64)
        .max()
        .unwrap_or(0)
        .saturating_add(10_000)
        .max(MIN_KEEP_MS)
}

impl Engine {
    /// Replace the rules (a configuration reload) without losing state: the paths'
    /// history stays; an alert whose rule keeps its name keeps its phase (a firing alert
    /// fires on, from now judged by the rule as it is now, and resolves by its clear
    /// condition); the alerts of rules that are gone resolve now and are returned, to be
    /// notified and recorded like any other resolution.
    pub fn set_rules(&mut self, rules: Vec<Rule>, now_ms: u64) -> Vec<Alert> {
        let kept: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        let gone: Vec<AlertKey> = self
            .slots
            .keys()
            .filter(|k| !kept.contains(&*k.alertname))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for k in gone {
            if let Some(mut slot) = self.slots.remove(&k)
                && slot.tracker.is_firing()
                && let Some(a) = slot.alert.take()
            {
                out.push(resolved_now(
                    a,
                    now_ms,
                    "rule removed from the configuration",
                ));
            }
        }
        self.keep_ms = keep_ms_for(&rules);
        self.names = rules.iter().map(|r| Arc::from(r.name.as_str())).collect();
        self.rules = rules;
        out
    }

    pub fn new(rules: Vec<Rule>, cfg: EngineConfig) -> Engine {
        let keep_ms = keep_ms_for(&rules);
        Engine {
            names: rules.iter().map(|r| Arc::from(r.name.as_str())).collect(),
            rules,
            cfg,
            keep_ms,
            paths: BTreeMap::new(),
            agents: BTreeMap::new(),
            owners: BTreeMap::new(),
            slots: BTreeMap::new(),
            restored_ms: 0,
            groups: None,
            waits: BTreeMap::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Take back alerts that were firing before a restart: they fire on without a new
    /// notification and resolve when their condition clears (or when their path sends
    /// no data for [`FORGET_PATH_AFTER`] from now).
    pub fn restore(&mut self, alerts: Vec<Alert>, now_ms: u64) {
        self.restored_ms = now_ms;
        for a in alerts {
            let Some(subject) = subject_of(&a.labels) else {
                continue;
            };
            if let Subject::Path(p) = &subject {
                self.paths
                    .entry(p.clone())
                    .or_insert_with(|| PathHistory::new(now_ms, now_ms));
            }
            let key = AlertKey {
                alertname: Arc::from(a.alertname.as_str()),
                subject,
            };
            self.slots.insert(
                key,
                Slot {
                    tracker: Tracker::firing_since(a.starts_at_ms),
                    alert: Some(a),
                },
            );
        }
    }

    /// An agent's site and ISP (from its hello), added as labels to its alerts:
    /// `src_site` and `isp` on its paths, `dst_site` on paths to it, `site` and `isp` on
    /// its agent alert.
    pub fn agent_hello(&mut self, agent: &str, site: Option<&str>, isp: Option<&str>) {
        let a = self.agent_mut(agent);
        a.site = site.map(Arc::from);
        a.isp = isp.map(Arc::from);
        self.groups = None;
    }

    /// The agent a target is (by name or by an address it connected from), if exactly one.
    fn agent_of(&self, dst: &str) -> Option<&AgentInfo> {
        let host = target_host(dst);
        if let Some(a) = self.agents.get(host) {
            return Some(a);
        }
        let ip = host.parse::<IpAddr>().ok()?;
        match self.owners.get(&ip) {
            Some(o) if o.len() == 1 => o.first().and_then(|n| self.agents.get(n)),
            _ => None,
        }
    }

    /// An agent connected from `addr` (lets "agent X down" cover paths to X's address).
    pub fn agent_address(&mut self, agent: &str, addr: IpAddr) {
        if self.agent_mut(agent).addrs.insert(addr) {
            let name = self
                .agents
                .get_key_value(agent)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(agent));
            self.owners.entry(addr).or_default().insert(name);
            self.groups = None;
        }
    }

    fn agent_mut(&mut self, agent: &str) -> &mut AgentInfo {
        if !self.agents.contains_key(agent) {
            self.agents.insert(Arc::from(agent), AgentInfo::default());
        }
        self.agents.get_mut(agent).expect("inserted above")
    }

    /// Apply a report that ingest accepted; returns the alerts that fired or resolved.
    pub fn on_report(&mut self, r: &Report, now_ms: u64) -> Vec<Alert> {
        let agent = self.agent_mut(&r.agent);
        let end_agent = r.interval_start_ms + u64::from(r.interval_ms);
        let observed = now_ms as f64 - end_agent as f64;
        let offset = match agent.offset_ms {
            Some(prev) => {
                let grown =
                    prev + OFFSET_GROWTH * now_ms.saturating_sub(agent.last_report_ms) as f64;
                grown.min(observed)
            }
            None => observed,
        };
        agent.offset_ms = Some(offset);
        agent.last_report_ms = now_ms;
        agent.interval_ms = u64::from(r.interval_ms);
        let end_ms = (end_agent as f64 + offset).clamp(0.0, now_ms as f64) as u64;
        let interval_ms = agent.interval_ms;
        let src: Arc<str> = self
            .agents
            .get_key_value(r.agent.as_str())
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(r.agent.as_str()));

        let mut out = Vec::new();
        let mut verdicts: Vec<(usize, AlertKey, Verdict)> = Vec::new();
        let mut rolled: Vec<(usize, AlertKey, Verdict)> = Vec::new();
        let mut touched: Vec<(usize, PathKey)> = Vec::new();
        for p in &r.paths {
            let key = PathKey {
                src: src.clone(),
                dst: Arc::from(p.dst.as_str()),
                probe: p.probe(),
            };
            let (key, h) = match self.paths.get_key_value(&key) {
                Some((k, _)) => {
                    let k = k.clone();
                    let h = self.paths.get_mut(&k).expect("just found");
                    (k, h)
                }
                None => {
                    self.groups = None;
                    (
                        key.clone(),
                        self.paths
                            .entry(key)
                            .or_insert_with(|| PathHistory::new(now_ms, 0)),
                    )
                }
            };
            h.add(
                Entry::new(end_ms, (p.received, p.lost), &p.rtt, p.jitter_us),
                p.sent,
                self.keep_ms,
                now_ms,
            );
            // Every rule reads the same view (window statistics computed once), then the
            // trackers step.
            let view = PathView::new(h, now_ms, interval_ms);
            for (i, rule) in self.rules.iter().enumerate() {
                if !rule.kind.per_path() || rule.kind == RuleKind::PathDown {
                    continue;
                }
                let akey = AlertKey {
                    alertname: self.names[i].clone(),
                    subject: Subject::Path(key.clone()),
                };
                let tracker = self.slots.get(&akey).map(|s| s.tracker).unwrap_or_default();
                let v = evaluate_path(rule, &view, &tracker, now_ms);
                if rule.has_rollups() && v.level != Level::Raise && lossy(rule, &view) {
                    // Not enough evidence on this path alone; its groups' summed counts
                    // may have it.
                    touched.push((i, key.clone()));
                }
                verdicts.push((i, akey, v));
            }
            if verdicts.iter().any(|(_, _, v)| v.level == Level::Raise)
                && self.awaits_agent(&key, now_ms)
            {
                // No reply at all from an agent that may be stopping: the agent-down alert
                // will say it once, instead of one loss (or MOS) alert per path to it.
                for (_, _, v) in verdicts.iter_mut() {
                    if v.level == Level::Raise {
                        v.level = Level::Hold;
                    }
                }
            }
            let mos_raise = |i: usize, v: &Verdict| {
                v.level == Level::Raise && self.rules[i].kind == RuleKind::Mos
            };
            if verdicts.iter().any(|(i, _, v)| mos_raise(*i, v)) && self.in_active_rollup(&key) {
                // The group's loss brings the path's MOS down: the loss roll-up alerts
                // the incident once, instead of one MOS alert per path of the group.
                for (i, _, v) in verdicts.iter_mut() {
                    if mos_raise(*i, v) {
                        v.level = Level::Hold;
                    }
                }
            }
            for (i, akey, v) in verdicts.drain(..) {
                if self.rules[i].has_rollups() {
                    if v.level == Level::Raise {
                        // Decided below, once every path of the report is in.
                        rolled.push((i, akey, v));
                        continue;
                    }
                    self.waits.remove(&akey);
                }
                out.extend(self.step(i, akey, v, now_ms));
            }
        }
        out.extend(self.settle_paths(&rolled, &touched, now_ms));
        out
    }

    /// Decide the paths' raises that wait for their groups, and the groups of the paths
    /// that lose without raising (`touched`), rule by rule.
    fn settle_paths(
        &mut self,
        rolled: &[(usize, AlertKey, Verdict)],
        touched: &[(usize, PathKey)],
        now_ms: u64,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        for i in 0..self.rules.len() {
            let cands: Vec<(AlertKey, Verdict)> = rolled
                .iter()
                .filter(|c| c.0 == i)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
            let touched: Vec<PathKey> = touched
                .iter()
                .filter(|t| t.0 == i)
                .map(|t| t.1.clone())
                .collect();
            if !cands.is_empty() || !touched.is_empty() {
                out.extend(self.settle_rollups(i, cands, &touched, false, now_ms));
            }
        }
        out
    }

    /// Apply confirmation bursts of `agent` that ingest accepted: each is evidence for its
    /// path's loss rules at once (read over [`super::rules::CONFIRM_WINDOW`]), and for its
    /// groups'. Bursts of a path no report has named yet are ignored.
    pub fn on_confirm(&mut self, agent: &str, c: &Confirm, now_ms: u64) -> Vec<Alert> {
        let Some((src, info)) = self.agents.get_key_value(agent) else {
            return Vec::new();
        };
        let (src, interval_ms) = (src.clone(), info.interval_ms);
        let under_way = c.paths.iter().any(|p| p.others_under_way > 0);
        self.agent_mut(agent).bursts_due_until_ms = if under_way {
            now_ms + BURSTS_WAIT_MS
        } else {
            0
        };
        let mut verdicts: Vec<(usize, AlertKey, Verdict)> = Vec::new();
        let mut touched: Vec<(usize, PathKey)> = Vec::new();
        for p in &c.paths {
            let key = PathKey {
                src: src.clone(),
                dst: Arc::from(p.dst.as_str()),
                probe: p.probe,
            };
            let Some(h) = self.paths.get_mut(&key) else {
                continue;
            };
            h.add_confirm(p.received, p.lost, now_ms);
            let Some((key, h)) = self.paths.get_key_value(&key) else {
                continue;
            };
            let view = PathView::new(h, now_ms, interval_ms);
            for (i, rule) in self.rules.iter().enumerate() {
                if rule.kind != RuleKind::Loss {
                    continue;
                }
                let akey = AlertKey {
                    alertname: self.names[i].clone(),
                    subject: Subject::Path(key.clone()),
                };
                let tracker = self.slots.get(&akey).map(|s| s.tracker).unwrap_or_default();
                let v = evaluate_path(rule, &view, &tracker, now_ms);
                if v.level == Level::Raise && !self.awaits_agent(key, now_ms) {
                    verdicts.push((i, akey, v));
                } else if rule.has_rollups() && lossy(rule, &view) {
                    touched.push((i, key.clone()));
                }
            }
        }
        // Paths of this agent that wait for its other bursts: decided again now.
        let waiting: Vec<AlertKey> = self
            .waits
            .keys()
            .filter(|k| matches!(&k.subject, Subject::Path(p) if p.src == src))
            .filter(|k| !verdicts.iter().any(|(_, v, _)| v == *k))
            .cloned()
            .collect();
        for akey in waiting {
            let Subject::Path(p) = &akey.subject else {
                continue;
            };
            let Some(i) = self.names.iter().position(|n| *n == akey.alertname) else {
                continue;
            };
            let tracker = self.slots.get(&akey).map(|s| s.tracker).unwrap_or_default();
            let Some(view) = self.view_of(p, now_ms) else {
                continue;
            };
            let v = evaluate_path(&self.rules[i], &view, &tracker, now_ms);
            if v.level == Level::Raise {
                drop(view);
                verdicts.push((i, akey, v));
            }
        }
        let mut out = Vec::new();
        let mut rolled = Vec::new();
        for (i, akey, v) in verdicts {
            if self.rules[i].has_rollups() {
                rolled.push((i, akey, v));
            } else {
                out.extend(self.step(i, akey, v, now_ms));
            }
        }
        out.extend(self.settle_paths(&rolled, &touched, now_ms));
        out
    }

    /// Feed a verdict to an alert's tracker; returns the alert if it fired or resolved.
    fn step(&mut self, rule: usize, key: AlertKey, v: Verdict, now_ms: u64) -> Option<Alert> {
        // Quiet and untracked: nothing to do (the common case, kept cheap).
        if v.level != Level::Raise && !self.slots.contains_key(&key) {
            return None;
        }
        let r = &self.rules[rule];
        let (raise_for, clear_for) = (r.raise_for, r.clear_for);
        let slot = self.slots.entry(key.clone()).or_default();
        let t = slot.tracker.step(v.level, now_ms, raise_for, clear_for);
        let active = slot.tracker.phase != super::rules::Phase::Ok;
        if !active && t.is_none() {
            // Nothing to show or say: the common case, kept cheap.
            if slot.tracker.resolved_ms.is_none() {
                self.slots.remove(&key);
            }
            return None;
        }
        let starts_ms = match slot.tracker.phase {
            super::rules::Phase::Pending { since_ms }
            | super::rules::Phase::Firing { since_ms }
            | super::rules::Phase::Resolving { since_ms, .. } => since_ms,
            super::rules::Phase::Ok => match t {
                Some(Transition::Resolved { starts_ms }) => starts_ms,
                _ => now_ms,
            },
        };
        let state = if slot.tracker.is_firing() {
            AlertState::Firing
        } else if active {
            AlertState::Pending
        } else {
            AlertState::Resolved
        };
        let keep_labels = slot.alert.as_ref().map(|a| a.labels.clone());
        // While an alert fires only its clear condition is evaluated; what it shows keeps
        // the threshold it fired on (the clear one is `clear_threshold`).
        let raised_on = slot
            .alert
            .as_ref()
            .filter(|_| state == AlertState::Firing && t.is_none())
            .map(|a| (a.threshold, a.annotations.get("threshold").cloned()));
        let mut alert = self.describe(rule, &key, &v, state, starts_ms, now_ms, keep_labels);
        if let Some((threshold, text)) = raised_on {
            if let Some(clear) = alert.annotations.remove("threshold") {
                alert.annotations.insert("clear_threshold".into(), clear);
            }
            if let Some(text) = text {
                alert.annotations.insert("threshold".into(), text);
            }
            alert.threshold = threshold;
        }
        let slot = self.slots.get_mut(&key).expect("inserted above");
        if active {
            slot.alert = Some(alert.clone());
        } else {
            slot.alert = None;
        }
        if !active && slot.tracker.resolved_ms.is_none() {
            self.slots.remove(&key);
        }
        t.map(|_| alert)
    }

    #[allow(clippy::too_many_arguments)]
    fn describe(
        &self,
        rule: usize,
        key: &AlertKey,
        v: &Verdict,
        state: AlertState,
        starts_ms: u64,
        now_ms: u64,
        labels: Option<BTreeMap<String, String>>,
    ) -> Alert {
        let r = &self.rules[rule];
        let labels = labels.unwrap_or_else(|| {
            let mut l = r.labels.clone();
            l.insert("alertname".into(), key.alertname.to_string());
            l.insert("severity".into(), r.severity.clone());
            match &key.subject {
                Subject::Path(p) => {
                    l.insert("src".into(), p.src.to_string());
                    l.insert("dst".into(), p.dst.to_string());
                    l.insert("probe".into(), p.probe.as_str().into());
                    if let Some(a) = self.agents.get(&p.src) {
                        if let Some(s) = &a.site {
                            l.insert("src_site".into(), s.to_string());
                        }
                        if let Some(i) = &a.isp {
                            l.insert("isp".into(), i.to_string());
                        }
                    }
                    if let Some(s) = self.agent_of(&p.dst).and_then(|a| a.site.as_ref()) {
                        l.insert("dst_site".into(), s.to_string());
                    }
                }
                Subject::Agent(a) => {
                    l.insert("agent".into(), a.to_string());
                    if let Some(info) = self.agents.get(a) {
                        if let Some(s) = &info.site {
                            l.insert("site".into(), s.to_string());
                        }
                        if let Some(i) = &info.isp {
                            l.insert("isp".into(), i.to_string());
                        }
                    }
                }
                Subject::Target { dst, probe } => {
                    l.insert("dst".into(), dst.to_string());
                    l.insert("probe".into(), probe.as_str().into());
                }
                Subject::SitePair { src_site, dst_site } => {
                    l.insert("src_site".into(), src_site.to_string());
                    l.insert("dst_site".into(), dst_site.to_string());
                }
                Subject::Isp { isp } => {
                    l.insert("isp".into(), isp.to_string());
                }
                Subject::Source { src } => {
                    l.insert("src".into(), src.to_string());
                    if let Some(a) = self.agents.get(src) {
                        if let Some(s) = &a.site {
                            l.insert("src_site".into(), s.to_string());
                        }
                        if let Some(i) = &a.isp {
                            l.insert("isp".into(), i.to_string());
                        }
                    }
                }
            }
            l
        });
        let what = match &key.subject {
            Subject::Path(p) => format!("{} → {} ({})", p.src, p.dst, p.probe.as_str()),
            Subject::Agent(a) => format!("agent {a}"),
            Subject::Target { dst, probe } => {
                format!("{dst} ({}) from every agent probing it", probe.as_str())
            }
            Subject::SitePair { src_site, dst_site } if r.kind == RuleKind::PathDown => {
                format!("every path from site {src_site} to site {dst_site}")
            }
            Subject::SitePair { src_site, dst_site } => {
                format!("the paths from site {src_site} to site {dst_site}")
            }
            Subject::Isp { isp } => format!("the paths of ISP {isp}'s agents"),
            Subject::Source { src } => {
                format!("the paths of agent {src} (its own side: its LAN or uplink)")
            }
        };
        let value = v.value.map(|x| fmt_value(r.kind, x));
        let threshold = v.threshold.map(|x| fmt_value(r.kind, x));
        let window = fmt_secs(v.window.as_secs_f64());
        let summary = match r.kind {
            RuleKind::Loss => format!(
                "loss {} over {window} on {what}",
                value.as_deref().unwrap_or("?")
            ),
            RuleKind::Latency => format!(
                "RTT p{} {} over {window} on {what}",
                r.quantile * 100.0,
                value.as_deref().unwrap_or("?")
            ),
            RuleKind::Jitter => format!(
                "jitter {} over {window} on {what}",
                value.as_deref().unwrap_or("?")
            ),
            RuleKind::Mos => format!(
                "MOS {} over {window} on {what}",
                value.as_deref().unwrap_or("?")
            ),
            RuleKind::PathDown => format!("no reply for {window} on {what}"),
            RuleKind::AgentStale => format!("no report for {window} from {what}"),
        };
        let mut ann = BTreeMap::new();
        ann.insert("summary".into(), summary);
        if let Some(x) = value {
            ann.insert("value".into(), x);
        }
        if let Some(x) = threshold {
            ann.insert("threshold".into(), x);
        }
        ann.insert("window".into(), window);
        ann.insert(
            "link".into(),
            format!("{}/", self.cfg.external_url.trim_end_matches('/')),
        );
        Alert {
            fingerprint: fingerprint(&labels),
            state,
            alertname: key.alertname.to_string(),
            kind: r.kind.as_str().into(),
            severity: r.severity.clone(),
            labels,
            annotations: ann,
            starts_at_ms: starts_ms,
            ends_at_ms: (state == AlertState::Resolved).then_some(now_ms),
            value: v.value,
            threshold: v.threshold,
            window_seconds: v.window.as_secs_f64(),
        }
    }

    /// Agents whose reports stopped, per the first agent-stale rule (or the default).
    fn stale_agents(&self, now_ms: u64) -> BTreeSet<Arc<str>> {
        let rule = self.stale_rule();
        self.agents
            .iter()
            .filter(|(_, a)| a.last_report_ms > 0)
            .filter(|(_, a)| {
                evaluate_agent(
                    &rule,
                    a.silent(now_ms),
                    Duration::from_millis(a.interval_ms),
                )
                .level
                    == Level::Raise
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// What decides whether a path to `dst` without replies waits for "agent down": set
    /// when `dst` is (the address of) a mesh agent.
    fn agent_watch(&self, dst: &str, now_ms: u64) -> Option<AgentWatch> {
        let a = self.agent_of(dst)?;
        if a.last_report_ms == 0 {
            return None;
        }
        let rule = self.stale_rule();
        let interval = Duration::from_millis(a.interval_ms);
        Some(AgentWatch {
            last_report_ms: a.last_report_ms,
            interval_ms: a.interval_ms,
            stale_after_ms: stale_after(&rule, interval).as_millis() as u64,
            stale: evaluate_agent(&rule, a.silent(now_ms), interval).level == Level::Raise,
        })
    }

    /// The first agent-stale rule (or the default): when an agent counts as stopped.
    fn stale_rule(&self) -> std::borrow::Cow<'_, Rule> {
        match self.rules.iter().find(|r| r.kind == RuleKind::AgentStale) {
            Some(r) => std::borrow::Cow::Borrowed(r),
            None => std::borrow::Cow::Owned(Rule::default_for(RuleKind::AgentStale)),
        }
    }

    /// Whether `dst` is (the address of) an agent that stopped reporting: its paths are
    /// covered by the one "agent down" alert.
    fn dst_is_stale_agent(&self, dst: &str, stale: &BTreeSet<Arc<str>>) -> bool {
        let host = target_host(dst);
        if stale.contains(host) {
            return true;
        }
        let Ok(ip) = host.parse::<IpAddr>() else {
            return false;
        };
        self.owners
            .get(&ip)
            .is_some_and(|o| !o.is_empty() && o.iter().all(|n| stale.contains(n)))
    }

    /// Periodic evaluation: agents that stopped reporting, paths without replies (rolled
    /// up per target), and forgetting paths nobody reports any more.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Alert> {
        let mut out = Vec::new();
        let stale = self.stale_agents(now_ms);
        for i in 0..self.rules.len() {
            match self.rules[i].kind {
                RuleKind::AgentStale => {
                    let verdicts: Vec<(Arc<str>, Verdict)> = self
                        .agents
                        .iter()
                        .filter(|(_, a)| a.last_report_ms > 0)
                        .map(|(n, a)| {
                            (
                                n.clone(),
                                evaluate_agent(
                                    &self.rules[i],
                                    a.silent(now_ms),
                                    Duration::from_millis(a.interval_ms),
                                ),
                            )
                        })
                        .collect();
                    for (n, v) in verdicts {
                        let key = AlertKey {
                            alertname: self.names[i].clone(),
                            subject: Subject::Agent(n),
                        };
                        out.extend(self.step(i, key, v, now_ms));
                    }
                }
                RuleKind::PathDown => out.extend(self.tick_path_down(i, &stale, now_ms)),
                _ if self.rules[i].has_rollups() => out.extend(self.tick_rollups(i, now_ms)),
                _ => {}
            }
        }
        // Forget paths nobody reports; their alerts resolve.
        let forget: Vec<PathKey> = self
            .paths
            .iter()
            .filter(|(_, h)| h.last_data_ms + FORGET_PATH_AFTER.as_millis() as u64 <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &forget {
            self.paths.remove(k);
            self.groups = None;
        }
        let paths = &self.paths;
        self.waits.retain(|k, since| match &k.subject {
            Subject::Path(p) => paths.contains_key(p),
            Subject::Source { src } => {
                *since + FORGET_SOURCE_WAIT_MS > now_ms && agent_paths(paths, src) > 0
            }
            _ => false,
        });
        let orphans: Vec<AlertKey> = self
            .slots
            .keys()
            .filter(|k| match &k.subject {
                Subject::Path(p) => !self.paths.contains_key(p),
                Subject::Target { dst, probe } => {
                    self.restored_ms + FORGET_PATH_AFTER.as_millis() as u64 <= now_ms
                        && !self
                            .paths
                            .keys()
                            .any(|p| &p.dst == dst && p.probe == *probe)
                }
                Subject::Agent(_) => false,
                Subject::SitePair { .. } | Subject::Isp { .. } => {
                    self.restored_ms + FORGET_PATH_AFTER.as_millis() as u64 <= now_ms
                        && self.paths.is_empty()
                }
                Subject::Source { src } => {
                    self.restored_ms + FORGET_PATH_AFTER.as_millis() as u64 <= now_ms
                        && self.agent_paths(src) == 0
                }
            })
            .cloned()
            .collect();
        for k in orphans {
            if let Some(mut slot) = self.slots.remove(&k)
                && slot.tracker.is_firing()
                && let Some(a) = slot.alert.take()
            {
                out.push(resolved_now(a, now_ms, "no data any more"));
            }
        }
        out
    }

    fn tick_path_down(
        &mut self,
        rule: usize,
        stale: &BTreeSet<Arc<str>>,
        now_ms: u64,
    ) -> Vec<Alert> {
        let r = &self.rules[rule];
        let name: Arc<str> = self.names[rule].clone();
        let mut verdicts: Vec<(PathKey, Verdict)> = Vec::new();
        for (k, h) in &self.paths {
            let akey = AlertKey {
                alertname: name.clone(),
                subject: Subject::Path(k.clone()),
            };
            let tracker = self.slots.get(&akey).map(|s| s.tracker).unwrap_or_default();
            let interval_ms = self.agents.get(&k.src).map_or(0, |a| a.interval_ms);
            let mut v = evaluate_path(r, &PathView::new(h, now_ms, interval_ms), &tracker, now_ms);
            // The source stopped reporting, or the target is an agent that did: the
            // agent-down alert says it once.
            if v.level == Level::Raise
                && (stale.contains(&k.src) || self.dst_is_stale_agent(&k.dst, stale))
            {
                v.level = Level::Hold;
            }
            verdicts.push((k.clone(), v));
        }
        // Roll up: per target, when every (reporting) agent probing it lost it; then per
        // site pair, when every remaining path from one site to the other is down. At
        // least two paths each: one alert instead of one per path.
        let mut covered = vec![false; verdicts.len()];
        let mut out = Vec::new();
        let target_rollup: Arc<str> = Arc::from(self.rules[rule].rollup_name.as_str());
        let site_rollup: Arc<str> = Arc::from(self.rules[rule].site_rollup_name.as_str());
        self.roll_up(
            rule,
            target_rollup,
            &verdicts,
            &mut covered,
            stale,
            |_, k| {
                Some(Subject::Target {
                    dst: k.dst.clone(),
                    probe: k.probe,
                })
            },
            now_ms,
            &mut out,
        );
        self.roll_up(
            rule,
            site_rollup,
            &verdicts,
            &mut covered,
            stale,
            |e, k| {
                let src_site = e.agents.get(&k.src)?.site.clone()?;
                let dst_site = e.agent_of(&k.dst)?.site.clone()?;
                Some(Subject::SitePair { src_site, dst_site })
            },
            now_ms,
            &mut out,
        );
        for ((k, mut v), covered) in verdicts.into_iter().zip(covered) {
            if v.level == Level::Raise && covered {
                v.level = Level::Hold;
            }
            let key = AlertKey {
                alertname: name.clone(),
                subject: Subject::Path(k),
            };
            if v.level == Level::Hold && !self.slots.contains_key(&key) {
                continue;
            }
            out.extend(self.step(rule, key, v, now_ms));
        }
        out
    }

    /// One roll-up level of path-down verdicts: paths grouped by `group_of` (skipping
    /// covered ones and stale sources); a group of two or more paths that all raise is
    /// one alert on the group's subject, and its paths become covered. A group alert
    /// already firing resolves once none of its paths is down.
    #[allow(clippy::too_many_arguments)]
    fn roll_up(
        &mut self,
        rule: usize,
        alertname: Arc<str>,
        verdicts: &[(PathKey, Verdict)],
        covered: &mut [bool],
        stale: &BTreeSet<Arc<str>>,
        group_of: impl Fn(&Engine, &PathKey) -> Option<Subject>,
        now_ms: u64,
        out: &mut Vec<Alert>,
    ) {
        // A group neither down nor firing is skipped below: with no path down outside the
        // covered ones and no alert of this name firing, there is nothing to do (the usual
        // case, and grouping every path is not cheap).
        let any_down = verdicts
            .iter()
            .zip(covered.iter())
            .any(|((k, v), c)| !c && v.level == Level::Raise && !stale.contains(&k.src));
        let any_firing = self
            .slots
            .iter()
            .any(|(k, s)| k.alertname == alertname && s.tracker.is_firing());
        if !any_down && !any_firing {
            return;
        }
        let mut groups: BTreeMap<Subject, (usize, usize, Option<Verdict>, Vec<usize>)> =
            BTreeMap::new();
        for (i, (k, v)) in verdicts.iter().enumerate() {
            if covered[i] || stale.contains(&k.src) {
                continue;
            }
            let Some(g) = group_of(self, k) else {
                continue;
            };
            let e = groups.entry(g).or_insert((0, 0, None, Vec::new()));
            e.0 += 1;
            e.3.push(i);
            if v.level == Level::Raise {
                e.1 += 1;
                e.2.get_or_insert_with(|| v.clone());
            }
        }
        for (subject, (n, down, v, members)) in groups {
            let rolled = n >= 2 && n == down;
            let key = AlertKey {
                alertname: alertname.clone(),
                subject,
            };
            let firing = self.slots.get(&key).is_some_and(|s| s.tracker.is_firing());
            if rolled {
                for i in members {
                    covered[i] = true;
                }
            } else if !firing {
                continue;
            }
            let v = match (rolled, v) {
                (true, Some(v)) => v,
                _ => Verdict {
                    level: if down == 0 { Level::Clear } else { Level::Hold },
                    value: None,
                    threshold: None,
                    window: Duration::ZERO,
                },
            };
            out.extend(self.step(rule, key, v, now_ms));
        }
    }

    /// The roll-up groups a path belongs to: its source's ISP, its site pair (the target
    /// is an agent's name or address, both agents declare a site), and its source agent.
    /// Source groups are not kept in the engine's groups (they are the agent's range of
    /// `paths`: see [`Engine::members_of`]).
    fn groups_of(&self, k: &PathKey) -> [Option<Subject>; 3] {
        let src = self.agents.get(&k.src);
        let isp = src
            .and_then(|a| a.isp.clone())
            .map(|isp| Subject::Isp { isp });
        let pair = src.and_then(|a| a.site.clone()).and_then(|src_site| {
            let dst_site = self.agent_of(&k.dst)?.site.clone()?;
            Some(Subject::SitePair { src_site, dst_site })
        });
        let source = Subject::Source { src: k.src.clone() };
        [isp, pair, Some(source)]
    }

    /// The paths of a roll-up group: kept in `groups` (ISP, site pair), or an agent's paths
    /// (source); empty for a group of fewer than two paths.
    fn members_of<'g>(
        &self,
        groups: &'g BTreeMap<Subject, Vec<PathKey>>,
        s: &Subject,
    ) -> Cow<'g, [PathKey]> {
        match s {
            Subject::Source { src } => {
                let m: Vec<PathKey> = agent_range(&self.paths, src).cloned().collect();
                Cow::Owned(if m.len() >= 2 { m } else { Vec::new() })
            }
            _ => Cow::Borrowed(groups.get(s).map_or(&[][..], Vec::as_slice)),
        }
    }

    /// Whether a loss roll-up of one of the path's groups is pending or firing.
    fn in_active_rollup(&self, p: &PathKey) -> bool {
        self.groups_of(p).into_iter().flatten().any(|g| {
            self.rules.iter().any(|r| {
                let name = match g {
                    Subject::Isp { .. } => &r.isp_rollup_name,
                    Subject::SitePair { .. } => &r.site_rollup_name,
                    Subject::Source { .. } => &r.source_rollup_name,
                    _ => return false,
                };
                if name.is_empty() {
                    return false;
                }
                let key = AlertKey {
                    alertname: Arc::from(name.as_str()),
                    subject: g.clone(),
                };
                self.slots
                    .get(&key)
                    .is_some_and(|s| s.tracker.phase != super::rules::Phase::Ok)
            })
        })
    }

    /// The roll-up groups of two or more paths, built again after paths or agents changed.
    fn take_groups(&mut self) -> BTreeMap<Subject, Vec<PathKey>> {
        if let Some(g) = self.groups.take() {
            return g;
        }
        let mut g: BTreeMap<Subject, Vec<PathKey>> = BTreeMap::new();
        for k in self.paths.keys() {
            for s in self.groups_of(k).into_iter().flatten() {
                if matches!(s, Subject::Source { .. }) {
                    continue;
                }
                g.entry(s).or_default().push(k.clone());
            }
        }
        g.retain(|_, m| m.len() >= 2);
        g
    }

    /// How many paths an agent has (up to 2: all that matters for a source group).
    fn agent_paths(&self, src: &Arc<str>) -> usize {
        agent_paths(&self.paths, src)
    }

    /// A path's view now.
    fn view_of<'a>(&'a self, k: &PathKey, now_ms: u64) -> Option<PathView<'a>> {
        let interval_ms = self.agents.get(&k.src).map_or(0, |a| a.interval_ms);
        Some(PathView::new(self.paths.get(k)?, now_ms, interval_ms))
    }

    /// Whether a path waits for its target agent's agent-down decision (see
    /// [`AgentWatch::awaits`]).
    fn awaits_agent(&self, k: &PathKey, now_ms: u64) -> bool {
        match (self.agent_watch(&k.dst, now_ms), self.view_of(k, now_ms)) {
            (Some(w), Some(view)) => w.awaits(&view, now_ms),
            _ => false,
        }
    }

    /// Loss roll-ups of rule `rule`, decided when paths raise (`cands`, verdicts at the
    /// Raise level) and on the tick. First every roll-up concerned is evaluated (those of
    /// the candidates' groups and those active), ISP groups before site pairs; then each
    /// candidate steps: held while a roll-up covering it is active or while its group may
    /// still roll up (another of its paths loses packets and some agent of the group has
    /// not reported since the candidate first raised, for at most the longest report
    /// interval of those agents and a tick), raised otherwise. An active roll-up is
    /// evaluated (for its clear condition) only on the tick (`tick`): on reports it just
    /// covers its paths, so a wide outage does not sum its group on every report.
    fn settle_rollups(
        &mut self,
        rule: usize,
        cands: Vec<(AlertKey, Verdict)>,
        touched: &[PathKey],
        tick: bool,
        now_ms: u64,
    ) -> Vec<Alert> {
        let groups = self.take_groups();
        let r = &self.rules[rule];
        let name_of = |s: &Subject| {
            match s {
                Subject::Isp { .. } => Some(r.isp_rollup_name.as_str()),
                Subject::SitePair { .. } => Some(r.site_rollup_name.as_str()),
                Subject::Source { .. } => Some(r.source_rollup_name.as_str()),
                _ => None,
            }
            .filter(|n| !n.is_empty())
        };
        let mut todo: BTreeSet<Subject> = BTreeSet::new();
        let paths = cands
            .iter()
            .filter_map(|(k, _)| match &k.subject {
                Subject::Path(p) => Some(p),
                _ => None,
            })
            .chain(touched);
        for p in paths {
            todo.extend(self.groups_of(p).into_iter().flatten().filter(|g| match g {
                Subject::Source { src } => self.agent_paths(src) >= 2,
                _ => groups.contains_key(g),
            }));
        }
        todo.extend(
            self.slots
                .iter()
                .filter(|(k, s)| {
                    s.tracker.phase != super::rules::Phase::Ok
                        && name_of(&k.subject) == Some(&*k.alertname)
                })
                .map(|(k, _)| k.subject.clone()),
        );
        let mut todo: Vec<(AlertKey, Cow<'_, [PathKey]>)> = todo
            .into_iter()
            .filter_map(|s| {
                let alertname = Arc::from(name_of(&s)?);
                let members = self.members_of(&groups, &s);
                Some((
                    AlertKey {
                        alertname,
                        subject: s,
                    },
                    members,
                ))
            })
            .collect();
        // The widest explanation first: an agent's own side only when neither its ISP
        // nor a site pair explains its paths' loss.
        todo.sort_by_key(|(k, _)| match k.subject {
            Subject::Isp { .. } => 0,
            Subject::SitePair { .. } => 1,
            _ => 2,
        });
        let mut out = Vec::new();
        // The active roll-ups: a path of one of them is covered.
        let mut covering: BTreeSet<Subject> = BTreeSet::new();
        let active = |e: &Engine, key: &AlertKey| {
            e.slots
                .get(key)
                .is_some_and(|s| s.tracker.phase != super::rules::Phase::Ok)
        };
        for (key, members) in todo {
            if !active(self, &key) && self.under_active_isp(&key.subject, &covering) {
                // Every path of this agent is covered by its ISP's roll-up: nothing to
                // decide (and summing its paths on each of its reports during a wide
                // outage cost a third more per report in `engine_cost_during_an_isp_outage`).
                continue;
            }
            if tick || !active(self, &key) {
                let mut v = self.rollup_verdict(rule, &key, &members, &covering, now_ms);
                if matches!(key.subject, Subject::Source { .. }) {
                    self.source_waits(rule, &key, &members, &groups, &mut v, now_ms);
                }
                let stepped = self.step(rule, key.clone(), v, now_ms);
                if stepped
                    .as_ref()
                    .is_some_and(|a| a.state == AlertState::Resolved)
                {
                    self.end_held_episode(rule, &members, now_ms);
                }
                out.extend(stepped);
            }
            if active(self, &key) {
                covering.insert(key.subject.clone());
            }
        }
        for (akey, mut v) in cands {
            let Subject::Path(p) = &akey.subject else {
                continue;
            };
            let start = self.waits.get(&akey).copied().unwrap_or(now_ms);
            let undecided = || {
                self.bursts_due(rule, p, start, now_ms)
                    || self
                        .groups_of(p)
                        .into_iter()
                        .flatten()
                        .filter_map(|g| groups.get(&g))
                        .any(|m| self.may_roll_up(rule, p, m, start, now_ms))
            };
            if self.covered(p, &covering) {
                v.level = Level::Hold;
                self.waits.remove(&akey);
            } else if undecided() {
                v.level = Level::Hold;
                self.waits.insert(akey.clone(), start);
            } else {
                self.waits.remove(&akey);
            }
            out.extend(self.step(rule, akey, v, now_ms));
        }
        self.groups = Some(groups);
        out
    }

    /// A roll-up resolved: the loss its paths showed was its episode, alerted and now over.
    /// Each member path that lost probes within the rule's raise windows and whose own
    /// alert is not active (it was held) gets the resolution time as if its own alert had
    /// resolved, so raising it again needs evidence from after now; otherwise the long
    /// raise window, still full of the episode, would raise the path's own alert right
    /// after its roll-up resolved. A path alert firing on its own is left alone.
    fn end_held_episode(&mut self, rule: usize, members: &[PathKey], now_ms: u64) {
        let longest = self.rules[rule]
            .windows
            .iter()
            .copied()
            .max()
            .unwrap_or_default();
        let lost: Vec<PathKey> = members
            .iter()
            .filter(|k| {
                self.view_of(k, now_ms)
                    .is_some_and(|v| v.counts(longest).1 > 0)
            })
            .cloned()
            .collect();
        for p in lost {
            let key = AlertKey {
                alertname: self.names[rule].clone(),
                subject: Subject::Path(p),
            };
            let slot = self.slots.entry(key).or_default();
            if slot.tracker.phase == super::rules::Phase::Ok {
                slot.tracker.resolved_ms = Some(now_ms);
            }
        }
    }

    /// A source roll-up that raises waits, as a path does, while a wider group of its
    /// paths (ISP, site pair) may still roll up: another agent of that group loses
    /// packets and has not reported since the source first raised (for at most that
    /// group's longest report interval and a tick). Then the wider group, evaluated first,
    /// covers the paths, or the source fires.
    fn source_waits(
        &mut self,
        rule: usize,
        key: &AlertKey,
        members: &[PathKey],
        groups: &BTreeMap<Subject, Vec<PathKey>>,
        v: &mut Verdict,
        now_ms: u64,
    ) {
        if v.level != Level::Raise {
            self.waits.remove(key);
            return;
        }
        let start = self.waits.get(key).copied().unwrap_or(now_ms);
        // One member per wider group is enough: they all share the source agent.
        let mut wider: BTreeMap<Subject, &PathKey> = BTreeMap::new();
        for p in members {
            for g in self.groups_of(p).into_iter().flatten() {
                if groups.contains_key(&g) {
                    wider.entry(g).or_insert(p);
                }
            }
        }
        let undecided = wider
            .iter()
            .any(|(g, p)| self.may_roll_up(rule, p, &groups[g], start, now_ms));
        if undecided {
            v.level = Level::Hold;
            self.waits.insert(key.clone(), start);
        } else {
            self.waits.remove(key);
        }
    }

    /// Whether `s` is a source group whose agent's ISP group is in `covering` (which
    /// then covers every path of the agent).
    fn under_active_isp(&self, s: &Subject, covering: &BTreeSet<Subject>) -> bool {
        let Subject::Source { src } = s else {
            return false;
        };
        self.agents
            .get(src)
            .and_then(|a| a.isp.clone())
            .is_some_and(|isp| covering.contains(&Subject::Isp { isp }))
    }

    /// Whether a path is in one of the `covering` groups.
    fn covered(&self, p: &PathKey, covering: &BTreeSet<Subject>) -> bool {
        !covering.is_empty()
            && self
                .groups_of(p)
                .iter()
                .flatten()
                .any(|g| covering.contains(g))
    }

    /// A loss roll-up's verdict: the rule on the summed counts of its paths (those not
    /// waiting for an agent-down decision), raising only when the loss is broad: more
    /// than half of the paths with probes in the window lose more than the raise ratio,
    /// on at least two agent pairs (site pair) or from at least two agents (ISP), and
    /// (site pair) not all of them covered by an ISP roll-up already.
    fn rollup_verdict(
        &self,
        rule: usize,
        key: &AlertKey,
        members: &[PathKey],
        covering: &BTreeSet<Subject>,
        now_ms: u64,
    ) -> Verdict {
        let r = &self.rules[rule];
        // A source group is what is left of the agent's paths once the wider roll-ups
        // have covered theirs: an agent whose paths to another site lose with that site
        // pair, and one path elsewhere with a loss of its own, is that site pair and that
        // path, not its own side.
        let source = matches!(key.subject, Subject::Source { .. });
        let (keys, views): (Vec<&PathKey>, Vec<PathView<'_>>) = members
            .iter()
            .filter(|k| !self.awaits_agent(k, now_ms))
            .filter(|k| !source || !self.covered(k, covering))
            .filter_map(|k| Some((k, self.view_of(k, now_ms)?)))
            .unzip();
        let group = GroupView { members: views };
        let tracker = self.slots.get(key).map(|s| s.tracker).unwrap_or_default();
        let mut v = evaluate_group_loss(r, &group, &tracker, now_ms);
        if v.level == Level::Raise {
            let (mut with_data, mut lossy) = (0, Vec::new());
            let over = |(rx, lost): (u64, u64)| lost as f64 > r.raise * (rx + lost) as f64;
            for (k, view) in keys.iter().zip(&group.members) {
                let counts = view.counts(v.window);
                if counts.0 + counts.1 > 0 {
                    with_data += 1;
                    // A path's confirmation bursts count as its own probes do.
                    let bursts = view.confirm_counts(super::rules::CONFIRM_WINDOW);
                    if over(counts) || (bursts.0 + bursts.1 > 0 && over(bursts)) {
                        lossy.push(*k);
                    }
                }
            }
            let distinct: BTreeSet<(&str, &str)> = lossy
                .iter()
                .map(|k| match key.subject {
                    Subject::Isp { .. } => (&*k.src, ""),
                    _ => (&*k.src, target_host(&k.dst)),
                })
                .collect();
            let broad = distinct.len() >= 2
                && 2 * lossy.len() > with_data
                && !lossy.iter().all(|k| self.covered(k, covering));
            if !broad {
                v.level = Level::Hold;
            }
        }
        v
    }

    /// Whether path `p`'s own agent may still roll up (the rule has a source roll-up and
    /// the agent other paths): its last confirmation burst said more of its bursts were
    /// under way, for at most [`BURSTS_WAIT_MS`] after `start_ms`. They say whether its
    /// other paths lose too, i.e. whether this is its own side.
    fn bursts_due(&self, rule: usize, p: &PathKey, start_ms: u64, now_ms: u64) -> bool {
        !self.rules[rule].source_rollup_name.is_empty()
            && now_ms < start_ms + BURSTS_WAIT_MS
            && self
                .agents
                .get(&p.src)
                .is_some_and(|a| now_ms < a.bursts_due_until_ms)
            && self.agent_paths(&p.src) >= 2
    }

    /// Whether the group `members` of path `p` may still roll up: another of its paths
    /// loses more than the raise ratio over the rule's shortest window, and an agent of
    /// the group has not reported since `start_ms`, for at most the longest report
    /// interval of those agents (and a tick).
    fn may_roll_up(
        &self,
        rule: usize,
        p: &PathKey,
        members: &[PathKey],
        start_ms: u64,
        now_ms: u64,
    ) -> bool {
        let r = &self.rules[rule];
        let others_lossy = members
            .iter()
            .filter(|m| *m != p)
            .any(|m| self.view_of(m, now_ms).is_some_and(|v| lossy(r, &v)));
        if !others_lossy {
            return false;
        }
        let (mut pending, mut wait_ms) = (false, 0);
        for m in members.iter().filter(|m| m.src != p.src) {
            if let Some(a) = self.agents.get(&m.src) {
                pending |= a.last_report_ms <= start_ms;
                wait_ms = wait_ms.max(a.interval_ms);
            }
        }
        pending && now_ms < start_ms + wait_ms + TICK_MS
    }

    /// The tick of a rule with roll-ups: waiting paths whose group did not roll up in
    /// time fire; active roll-ups clear.
    fn tick_rollups(&mut self, rule: usize, now_ms: u64) -> Vec<Alert> {
        let name = self.names[rule].clone();
        let waiting: Vec<AlertKey> = self
            .waits
            .keys()
            .filter(|k| k.alertname == name)
            .cloned()
            .collect();
        let r = &self.rules[rule];
        let active = self.slots.iter().any(|(k, s)| {
            s.tracker.phase != super::rules::Phase::Ok
                && ((matches!(k.subject, Subject::Isp { .. })
                    && *k.alertname == *r.isp_rollup_name)
                    || (matches!(k.subject, Subject::SitePair { .. })
                        && *k.alertname == *r.site_rollup_name)
                    || (matches!(k.subject, Subject::Source { .. })
                        && *k.alertname == *r.source_rollup_name))
        });
        if waiting.is_empty() && !active {
            return Vec::new();
        }
        let mut cands = Vec::new();
        for akey in waiting {
            let v = match &akey.subject {
                Subject::Path(p) => self.view_of(p, now_ms).map(|view| {
                    let tracker = self.slots.get(&akey).map(|s| s.tracker).unwrap_or_default();
                    evaluate_path(r, &view, &tracker, now_ms)
                }),
                _ => None,
            };
            match v {
                Some(v) if v.level == Level::Raise => cands.push((akey, v)),
                _ => {
                    self.waits.remove(&akey);
                }
            }
        }
        self.settle_rollups(rule, cands, &[], true, now_ms)
    }

    /// Alerts pending or firing now, firing first, then by name and labels.
    pub fn active(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .slots
            .values()
            .filter_map(|s| s.alert.clone())
            .collect();
        v.sort_by(|a, b| {
            (a.state != AlertState::Firing, &a.alertname, &a.labels).cmp(&(
                b.state != AlertState::Firing,
                &b.alertname,
                &b.labels,
            ))
        });
        v
    }

    /// Firing alerts only.
    pub fn firing(&self) -> Vec<Alert> {
        self.active()
            .into_iter()
            .filter(|a| a.state == AlertState::Firing)
            .collect()
    }
}

/// The subject an alert's labels name (used when restoring persisted alerts).
fn subject_of(l: &BTreeMap<String, String>) -> Option<Subject> {
    let probe = |s: &str| match s {
        "icmp" => Some(ProbeKind::Icmp),
        "tcp" => Some(ProbeKind::Tcp),
        "stamp" => Some(ProbeKind::Stamp),
        "dns" => Some(ProbeKind::Dns),
        _ => None,
    };
    match (l.get("src"), l.get("dst"), l.get("probe"), l.get("agent")) {
        (Some(s), Some(d), Some(p), _) => Some(Subject::Path(PathKey {
            src: Arc::from(s.as_str()),
            dst: Arc::from(d.as_str()),
            probe: probe(p)?,
        })),
        (Some(s), None, None, None) => Some(Subject::Source {
            src: Arc::from(s.as_str()),
        }),
        (None, Some(d), Some(p), _) => Some(Subject::Target {
            dst: Arc::from(d.as_str()),
            probe: probe(p)?,
        }),
        (_, _, _, Some(a)) => Some(Subject::Agent(Arc::from(a.as_str()))),
        _ => match (l.get("src_site"), l.get("dst_site"), l.get("isp")) {
            (Some(s), Some(d), _) => Some(Subject::SitePair {
                src_site: Arc::from(s.as_str()),
                dst_site: Arc::from(d.as_str()),
            }),
            (None, None, Some(i)) => Some(Subject::Isp {
                isp: Arc::from(i.as_str()),
            }),
            _ => None,
        },
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
