//! Alert rules: what is watched, the thresholds with hysteresis, and their evaluation.
//! Pure: statistics and `now` come in as arguments, verdicts go out.
//!
//! A rule turns a path's recent statistics (or an agent's report times) into a [`Level`]:
//! beyond the raise threshold, inside the clear threshold, or in between (hold). A
//! [`Tracker`] turns the levels seen over time into firing and resolved transitions, with
//! minimum durations on both sides, so a value near a threshold does not flap.

use std::collections::BTreeMap;
use std::time::Duration;

use pathpulse_agent::config::{ConfigError, parse_duration};
use pathpulse_metrics::stats::{loss_ratio, mos, wilson_interval};
use pathpulse_wire::SparseHist;
use serde::Deserialize;

/// What a rule watches. Units of `raise` / `clear` by kind: loss as a ratio (0.05 = 5%),
/// latency and jitter in milliseconds, MOS as a score (fires *below* `raise`), path down
/// and agent stale in seconds without a reply / report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Loss,
    Latency,
    Jitter,
    Mos,
    PathDown,
    AgentStale,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Loss => "loss",
            RuleKind::Latency => "latency",
            RuleKind::Jitter => "jitter",
            RuleKind::Mos => "mos",
            RuleKind::PathDown => "path_down",
            RuleKind::AgentStale => "agent_stale",
        }
    }

    /// Whether the rule is about one path (else about an agent).
    pub fn per_path(self) -> bool {
        self != RuleKind::AgentStale
    }

    /// Whether a *lower* value is worse (MOS).
    fn lower_is_worse(self) -> bool {
        self == RuleKind::Mos
    }
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The `alertname` label.
    pub name: String,
    pub kind: RuleKind,
    pub severity: String,
    /// Extra labels on every alert of this rule.
    pub labels: BTreeMap<String, String>,
    /// Raise threshold (see [`RuleKind`] for the unit).
    pub raise: f64,
    /// Clear threshold: the alert resolves only once the value is back inside it.
    pub clear: f64,
    /// Windows the raise condition is evaluated over; any one of them raises. Short
    /// windows catch heavy loss fast, long ones catch light loss surely.
    pub windows: Vec<Duration>,
    /// Window the clear condition is evaluated over.
    pub clear_window: Duration,
    /// The raise condition must hold this long before the alert fires.
    pub raise_for: Duration,
    /// The clear condition must hold this long before the alert resolves.
    pub clear_for: Duration,
    /// Latency: the RTT quantile compared.
    pub quantile: f64,
    /// Latency: thresholds are `baseline_factor × baseline p50 + raise/clear` ms when set,
    /// where the baseline is the path's own median RTT over the last hour.
    pub baseline_factor: Option<f64>,
    /// Loss: one-sided confidence of the Wilson lower bound that must exceed `raise`.
    pub confidence: f64,
    /// A window with fewer decided probes than this says nothing.
    pub min_probes: u64,
    /// Agent stale: reports missed (in the agent's own report intervals) before it is down.
    pub intervals: u32,
    /// Path down: alertname of the roll-up alert when every agent probing a target lost it.
    pub rollup_name: String,
    /// Path down: alertname of the roll-up alert when every path from one site to another
    /// is down (sites from the agents' hello). Loss: alertname of the roll-up alert when
    /// the paths from one site to another lose packets together. Empty: no roll-up.
    pub site_rollup_name: String,
    /// Loss: alertname of the roll-up alert when the paths of the agents of one ISP (the
    /// `isp` of their hello) lose packets together. Empty: no roll-up.
    pub isp_rollup_name: String,
    /// Loss: alertname of the roll-up alert when most paths of one agent, to two or more
    /// targets, lose packets together: the fault is on the agent's side (its LAN or its
    /// uplink), not at the far ends. Empty: no roll-up.
    pub source_rollup_name: String,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Rule {
    /// The built-in rule of a kind: what runs with no configuration at all.
    pub fn default_for(kind: RuleKind) -> Rule {
        let base = Rule {
            name: String::new(),
            kind,
            severity: "warning".into(),
            labels: BTreeMap::new(),
            raise: 0.0,
            clear: 0.0,
            windows: vec![secs(30)],
            clear_window: secs(30),
            raise_for: secs(10),
            clear_for: secs(30),
            quantile: 0.95,
            baseline_factor: None,
            confidence: 0.99,
            min_probes: 10,
            intervals: 3,
            rollup_name: "PathpulseTargetDown".into(),
            site_rollup_name: String::new(),
            isp_rollup_name: String::new(),
            source_rollup_name: String::new(),
        };
        match kind {
            RuleKind::Loss => Rule {
                name: "PathpulseLoss".into(),
                raise: 0.05,
                clear: 0.01,
                windows: vec![secs(3), secs(10), secs(60)],
                clear_window: secs(30),
                raise_for: Duration::ZERO,
                clear_for: secs(10),
                site_rollup_name: "PathpulseSitePairLoss".into(),
                isp_rollup_name: "PathpulseIspLoss".into(),
                source_rollup_name: "PathpulseSourceLoss".into(),
                ..base
            },
            RuleKind::Latency => Rule {
                name: "PathpulseLatencyHigh".into(),
                raise: 20.0,
                clear: 10.0,
                baseline_factor: Some(2.0),
                ..base
            },
            RuleKind::Jitter => Rule {
                name: "PathpulseJitterHigh".into(),
                raise: 30.0,
                clear: 20.0,
                ..base
            },
            RuleKind::Mos => Rule {
                name: "PathpulseMosLow".into(),
                raise: 3.5,
                clear: 3.8,
                ..base
            },
            RuleKind::PathDown => Rule {
                name: "PathpulsePathDown".into(),
                severity: "critical".into(),
                raise: 10.0,
                clear: 10.0,
                raise_for: Duration::ZERO,
                clear_for: Duration::ZERO,
                min_probes: 1,
                site_rollup_name: "PathpulseSitePairDown".into(),
                ..base
            },
            RuleKind::AgentStale => Rule {
                name: "PathpulseAgentDown".into(),
                severity: "critical".into(),
                raise: 5.0,
                clear: 5.0,
                raise_for: Duration::ZERO,
                clear_for: Duration::ZERO,
                ..base
            },
        }
    }

    /// The rules used when the configuration names none.
    pub fn defaults() -> Vec<Rule> {
        [
            RuleKind::Loss,
            RuleKind::Latency,
            RuleKind::Jitter,
            RuleKind::Mos,
            RuleKind::PathDown,
            RuleKind::AgentStale,
        ]
        .into_iter()
        .map(Rule::default_for)
        .collect()
    }

    /// Whether the rule has loss roll-ups (per site pair, per ISP).
    pub fn has_rollups(&self) -> bool {
        self.kind == RuleKind::Loss
            && !(self.site_rollup_name.is_empty()
                && self.isp_rollup_name.is_empty()
                && self.source_rollup_name.is_empty())
    }

    /// The longest window this rule reads.
    pub fn longest_window(&self) -> Duration {
        self.windows
            .iter()
            .copied()
            .chain([self.clear_window])
            .max()
            .unwrap_or_default()
    }
}

/// One `[[alert.rules]]` table. Unset keys take the kind's default; a table naming a
/// built-in rule (`name = "PathpulseLoss"`) changes that rule instead of adding one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Option<String>,
    pub kind: Option<RuleKind>,
    pub enabled: Option<bool>,
    pub severity: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub raise: Option<f64>,
    pub clear: Option<f64>,
    pub window: Option<String>,
    pub windows: Option<Vec<String>>,
    pub clear_window: Option<String>,
    pub raise_for: Option<String>,
    pub clear_for: Option<String>,
    pub quantile: Option<f64>,
    pub baseline_factor: Option<f64>,
    pub confidence: Option<f64>,
    pub min_probes: Option<u64>,
    pub intervals: Option<u32>,
    pub rollup_name: Option<String>,
    pub site_rollup_name: Option<String>,
    pub isp_rollup_name: Option<String>,
    pub source_rollup_name: Option<String>,
}

/// Label names reserved for the subject of an alert.
pub const RESERVED_LABELS: [&str; 10] = [
    "alertname",
    "severity",
    "src",
    "dst",
    "probe",
    "agent",
    "src_site",
    "dst_site",
    "site",
    "isp",
];

fn label_name_ok(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Resolve the configured rules over the defaults: every error is collected, keyed
/// `alert.rules[i].key`.
pub fn resolve_rules(
    configs: &[RuleConfig],
    with_defaults: bool,
) -> Result<Vec<Rule>, Vec<ConfigError>> {
    let mut rules: Vec<Rule> = if with_defaults {
        Rule::defaults()
    } else {
        vec![]
    };
    let mut errs = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let key = |k: &str| format!("alert.rules[{i}].{k}");
        let mut err = |k: &str, reason: String| {
            errs.push(ConfigError {
                key: key(k),
                reason,
            })
        };
        let existing = c
            .name
            .as_ref()
            .and_then(|n| rules.iter().position(|r| &r.name == n));
        if c.enabled == Some(false) {
            match existing {
                Some(pos) => {
                    rules.remove(pos);
                }
                None => err("name", "`enabled = false` names no rule".into()),
            }
            continue;
        }
        let mut r = match (existing, c.kind) {
            (Some(pos), Some(k)) if rules[pos].kind != k => {
                err(
                    "kind",
                    format!(
                        "`{}` is a {} rule; give the new rule another name",
                        rules[pos].name,
                        rules[pos].kind.as_str()
                    ),
                );
                continue;
            }
            (Some(pos), _) => rules[pos].clone(),
            (None, Some(k)) => {
                let mut r = Rule::default_for(k);
                match &c.name {
                    Some(n) if k == RuleKind::Loss => {
                        // Roll-ups of its own, named after it.
                        r.site_rollup_name = format!("{n}SitePair");
                        r.isp_rollup_name = format!("{n}Isp");
                        r.source_rollup_name = format!("{n}Source");
                        r.name = n.clone();
                    }
                    Some(n) => r.name = n.clone(),
                    None => {
                        err("name", "a new rule needs a name (its alertname)".into());
                        continue;
                    }
                }
                r
            }
            (None, None) => {
                err(
                    "kind",
                    "missing: one of loss, latency, jitter, mos, path_down, agent_stale".into(),
                );
                continue;
            }
        };
        if !label_name_ok(&r.name) {
            err(
                "name",
                format!(
                    "`{}` is not a valid alertname ([A-Za-z_][A-Za-z0-9_]*)",
                    r.name
                ),
            );
        }
        let mut dur = |k: &str, v: &Option<String>, into: &mut Duration| {
            if let Some(s) = v {
                match parse_duration(s) {
                    Ok(d) => *into = d,
                    Err(e) => err(k, e),
                }
            }
        };
        dur("clear_window", &c.clear_window, &mut r.clear_window);
        dur("raise_for", &c.raise_for, &mut r.raise_for);
        dur("clear_for", &c.clear_for, &mut r.clear_for);
        let mut windows = c.windows.clone().unwrap_or_default();
        windows.extend(c.window.clone());
        if !windows.is_empty() {
            let mut ws = Vec::new();
            for w in &windows {
                match parse_duration(w) {
                    Ok(d) if !d.is_zero() => ws.push(d),
                    Ok(_) => err("windows", "a window must be longer than 0s".into()),
                    Err(e) => err("windows", e),
                }
            }
            ws.sort();
            if !ws.is_empty() {
                r.windows = ws;
            }
        }
        if let Some(s) = &c.severity {
            r.severity = s.clone();
        }
        if let Some(l) = &c.labels {
            for k in l.keys() {
                if !label_name_ok(k) || RESERVED_LABELS.contains(&k.as_str()) {
                    err(
                        "labels",
                        format!("`{k}` is not a label name this rule may set"),
                    );
                }
            }
            r.labels = l.clone();
        }
        r.raise = c.raise.unwrap_or(r.raise);
        r.clear = c.clear.unwrap_or(r.clear);
        r.quantile = c.quantile.unwrap_or(r.quantile);
        if c.baseline_factor.is_some() {
            r.baseline_factor = c.baseline_factor.filter(|f| *f > 0.0);
        }
        r.confidence = c.confidence.unwrap_or(r.confidence);
        r.min_probes = c.min_probes.unwrap_or(r.min_probes);
        r.intervals = c.intervals.unwrap_or(r.intervals);
        if let Some(n) = &c.rollup_name {
            r.rollup_name = n.clone();
        }
        if let Some(n) = &c.site_rollup_name {
            r.site_rollup_name = n.clone();
        }
        if let Some(n) = &c.isp_rollup_name {
            r.isp_rollup_name = n.clone();
        }
        if let Some(n) = &c.source_rollup_name {
            r.source_rollup_name = n.clone();
        }
        for (k, n) in [
            ("rollup_name", &r.rollup_name),
            ("site_rollup_name", &r.site_rollup_name),
            ("isp_rollup_name", &r.isp_rollup_name),
            ("source_rollup_name", &r.source_rollup_name),
        ] {
            if !n.is_empty() && !label_name_ok(n) {
                err(
                    k,
                    format!("`{n}` is not a valid alertname (or \"\" for none)"),
                );
            }
        }
        let worse_or_equal = if r.kind.lower_is_worse() {
            r.raise <= r.clear
        } else {
            r.raise >= r.clear
        };
        if !r.raise.is_finite() || !r.clear.is_finite() || !worse_or_equal {
            err(
                "clear",
                format!(
                    "raise {} and clear {}: the clear threshold must be on the healthy side of the raise threshold",
                    r.raise, r.clear
                ),
            );
        }
        if !(0.0..=1.0).contains(&r.quantile) {
            err("quantile", format!("{} is not in 0..1", r.quantile));
        }
        if !(0.5..1.0).contains(&r.confidence) {
            err("confidence", format!("{} is not in 0.5..1", r.confidence));
        }
        if r.kind == RuleKind::Loss && !(0.0..1.0).contains(&r.raise) {
            err("raise", format!("{} is not a loss ratio in 0..1", r.raise));
        }
        if r.intervals == 0 {
            err("intervals", "must be at least 1".into());
        }
        if r.windows.is_empty() {
            err("windows", "at least one window".into());
        }
        match existing {
            Some(pos) => rules[pos] = r,
            None => {
                if rules.iter().any(|o| o.name == r.name) {
                    err("name", format!("`{}` is defined twice", r.name));
                }
                rules.push(r);
            }
        }
    }
    if errs.is_empty() {
        Ok(rules)
    } else {
        Err(errs)
    }
}

/// Statistics of a path over one window, as the engine hands them to a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    pub window: Duration,
    pub received: u64,
    pub lost: u64,
    /// Merged RTT histogram (µs) of the window.
    pub rtt: SparseHist,
    /// Mean of the RFC 3550 jitter the reports of the window carried, µs.
    pub jitter_us: Option<f64>,
}

/// Everything a per-path rule may look at.
pub trait PathInput {
    /// Statistics of the reports that ended within `window` before now.
    fn window(&self, window: Duration) -> WindowStats;
    /// Only the probe counts of [`PathInput::window`] (`received`, `lost`): what loss
    /// rules need, without merging histograms.
    fn counts(&self, window: Duration) -> (u64, u64) {
        let s = self.window(window);
        (s.received, s.lost)
    }
    /// Probe counts (`received`, `lost`) of the confirmation bursts that arrived within
    /// `window` before now (see [`CONFIRM_WINDOW`]); none by default.
    fn confirm_counts(&self, _window: Duration) -> (u64, u64) {
        (0, 0)
    }
    /// The path's baseline: median RTT over the last hour, µs (`None` while too young).
    fn baseline_p50_us(&self) -> Option<u64>;
    /// Time since the last reply (or since the path was first seen), and whether probes
    /// were sent in that time.
    fn silence(&self) -> (Duration, bool);
}

/// Where a value stands against a rule's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Beyond the raise threshold.
    Raise,
    /// Between the thresholds, or not enough data to say: keep the current state.
    Hold,
    /// Inside the clear threshold.
    Clear,
}

/// A rule's verdict on a path at one instant, with what it is based on.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub level: Level,
    /// The value compared (unit of the rule kind), `None` without data.
    pub value: Option<f64>,
    /// The threshold the value was compared with (raise or clear, per the level).
    pub threshold: Option<f64>,
    /// The window the value is over.
    pub window: Duration,
}

impl Verdict {
    fn hold(window: Duration) -> Verdict {
        Verdict {
            level: Level::Hold,
            value: None,
            threshold: None,
            window,
        }
    }
}

/// z of a one-sided confidence level (Acklam's rational approximation of the normal
/// quantile; |error| < 1.2e-9, far below what matters here).
pub fn z_one_sided(confidence: f64) -> f64 {
    let p = confidence.clamp(1e-9, 1.0 - 1e-9);
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

/// The value a rule compares for one window, `None` when the window says too little.
fn value_of(rule: &Rule, s: &WindowStats) -> Option<f64> {
    let decided = s.received + s.lost;
    if decided < rule.min_probes.max(1) {
        return None;
    }
    match rule.kind {
        RuleKind::Loss => loss_ratio(s.lost, s.received),
        RuleKind::Latency => s.rtt.quantile(rule.quantile).map(|v| ms(v as f64)),
        RuleKind::Jitter => s.jitter_us.map(ms),
        RuleKind::Mos => {
            let p50 = s.rtt.quantile(0.5)?;
            let loss = loss_ratio(s.lost, s.received)?;
            Some(mos(
                ms(p50 as f64) / 2.0,
                ms(s.jitter_us.unwrap_or(0.0)),
                loss,
            ))
        }
        RuleKind::PathDown | RuleKind::AgentStale => None,
    }
}

/// Evaluate a per-path rule (not [`RuleKind::AgentStale`], see [`evaluate_agent`]).
///
/// While the alert is not firing only the raise condition matters ([`Level::Raise`] or
/// [`Level::Hold`]); while it fires only the clear condition does ([`Level::Clear`] or
/// [`Level::Hold`]). So a long raise window still full of an old fault does not keep a
/// cleared alert firing, and a long clear window diluting a new fault does not delay it.
/// After an alert resolved, raising again needs new evidence: the raise windows reach
/// back no further than the resolution.
pub fn evaluate_path(
    rule: &Rule,
    input: &dyn PathInput,
    tracker: &Tracker,
    now_ms: u64,
) -> Verdict {
    let firing = tracker.is_firing();
    let first = rule.windows.first().copied().unwrap_or_default();
    let since_resolved = tracker
        .resolved_ms
        .map(|t| Duration::from_millis(now_ms.saturating_sub(t)));
    let raise_windows = || {
        rule.windows
            .iter()
            .map(move |&w| since_resolved.map_or(w, |r| w.min(r)))
    };
    match rule.kind {
        RuleKind::AgentStale => Verdict::hold(first),
        RuleKind::PathDown => {
            let (silent, probed) = input.silence();
            let v = silent.as_secs_f64();
            let (level, threshold) = if firing {
                (
                    if v < rule.clear {
                        Level::Clear
                    } else {
                        Level::Hold
                    },
                    rule.clear,
                )
            } else if v >= rule.raise && probed {
                (Level::Raise, rule.raise)
            } else {
                (Level::Hold, rule.raise)
            };
            Verdict {
                level,
                value: Some(v),
                threshold: Some(threshold),
                window: silent,
            }
        }
        _ if firing => {
            let Some((_, clear)) = thresholds(rule, input) else {
                return Verdict::hold(rule.clear_window);
            };
            let stats = if rule.kind == RuleKind::Loss {
                let (received, lost) = input.counts(rule.clear_window);
                WindowStats {
                    received,
                    lost,
                    ..WindowStats::default()
                }
            } else {
                input.window(rule.clear_window)
            };
            match value_of(rule, &stats) {
                Some(v) => Verdict {
                    level: if worse(rule, v, clear) {
                        Level::Hold
                    } else {
                        Level::Clear
                    },
                    value: Some(v),
                    threshold: Some(clear),
                    window: rule.clear_window,
                },
                None => Verdict::hold(rule.clear_window),
            }
        }
        RuleKind::Loss => {
            let z = z_one_sided(rule.confidence);
            let mut held = Verdict::hold(first);
            for w in raise_windows() {
                let Some(v) = loss_over(rule, input, w, rule.min_probes, z) else {
                    continue;
                };
                if v.level == Level::Raise {
                    return v;
                }
                if held.value.is_none() {
                    held = v;
                }
            }
            let w = since_resolved.map_or(CONFIRM_WINDOW, |r| CONFIRM_WINDOW.min(r));
            match confirmed_loss(rule, input, w, z) {
                Some(v) if v.level == Level::Raise => v,
                _ => held,
            }
        }
        RuleKind::Latency | RuleKind::Jitter | RuleKind::Mos => {
            let Some((raise, _)) = thresholds(rule, input) else {
                return Verdict::hold(first);
            };
            let mut held = Verdict::hold(first);
            for w in raise_windows() {
                let Some(v) = value_of(rule, &input.window(w)) else {
                    continue;
                };
                let verdict = Verdict {
                    level: Level::Raise,
                    value: Some(v),
                    threshold: Some(raise),
                    window: w,
                };
                if worse(rule, v, raise) {
                    return verdict;
                }
                if held.value.is_none() {
                    held = Verdict {
                        level: Level::Hold,
                        ..verdict
                    };
                }
            }
            held
        }
    }
}

/// A loss rule's raise condition over window `w`: Raise when the lower bound of the
/// Wilson interval at the rule's confidence is above `raise`, Hold otherwise; `None` with
/// fewer than `min_probes` decided probes in the window.
fn loss_over(
    rule: &Rule,
    input: &dyn PathInput,
    w: Duration,
    min_probes: u64,
    z: f64,
) -> Option<Verdict> {
    let (received, lost) = input.counts(w);
    let n = received + lost;
    if n < min_probes.max(1) {
        return None;
    }
    // The lower bound of a Wilson interval with this z is a one-sided bound at the rule's
    // confidence: the loss is surely above it.
    let raised = wilson_interval(lost, n, z).is_some_and(|(lo, _)| lo > rule.raise);
    Some(Verdict {
        level: if raised { Level::Raise } else { Level::Hold },
        value: loss_ratio(lost, received),
        threshold: Some(rule.raise),
        window: w,
    })
}

/// How far back a loss rule reads confirmation bursts (the agent's extra probes after a
/// lost one, `ClientMsg::Confirm`), by their arrival: they are evidence of the loss right
/// now, and are read on their own, never diluted by the regular probes of a window that
/// began before the onset.
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(2);
/// Burst probes a raise on confirmation needs at least. At the default 99% and 5% raise
/// ratio a burst of 60 raises with 7 lost: at 1% background loss one burst in 400,000
/// does, at 20% loss 97 in 100 (a burst whose first 30 probes were all answered stops
/// there, below this, and raises nothing).
pub const CONFIRM_MIN_PROBES: u64 = 40;

/// A loss rule's raise condition on the confirmation bursts within `w`, as
/// [`loss_over`] on the regular probes: `None` with fewer than [`CONFIRM_MIN_PROBES`].
fn confirmed_loss(rule: &Rule, input: &dyn PathInput, w: Duration, z: f64) -> Option<Verdict> {
    let (received, lost) = input.confirm_counts(w);
    let n = received + lost;
    if n < CONFIRM_MIN_PROBES.max(rule.min_probes) {
        return None;
    }
    let raised = wilson_interval(lost, n, z).is_some_and(|(lo, _)| lo > rule.raise);
    Some(Verdict {
        level: if raised { Level::Raise } else { Level::Hold },
        value: loss_ratio(lost, received),
        threshold: Some(rule.raise),
        window: w,
    })
}

/// The short windows a loss roll-up also reads, beyond its rule's windows: a group pools
/// the probes of its paths, so a second or two of them can hold enough evidence.
pub const GROUP_FAST_WINDOWS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];
/// The decided probes a fast window needs. At the default 99% and 5% raise ratio, 6
/// lost of 40 raise: at 1% background loss one chance in 350,000 per evaluation, 0.3% in
/// 10 minutes of evaluations every 500 ms (7 of 50 for five paths: 0.08%).
pub const GROUP_FAST_MIN_PROBES: u64 = 40;

/// A loss rule on a group's pooled counts (a roll-up): the rule's own verdict, and while
/// it does not raise and the alert is not firing, the fast windows
/// ([`GROUP_FAST_WINDOWS`], with at least [`GROUP_FAST_MIN_PROBES`] probes, none from
/// before the group's last resolution). With four paths at 10 probes/s each, 20% loss
/// raises in about a second of probes where one path alone needs two to six.
pub fn evaluate_group_loss(
    rule: &Rule,
    input: &dyn PathInput,
    tracker: &Tracker,
    now_ms: u64,
) -> Verdict {
    let v = evaluate_path(rule, input, tracker, now_ms);
    if rule.kind != RuleKind::Loss || v.level == Level::Raise || tracker.is_firing() {
        return v;
    }
    let since_resolved = tracker
        .resolved_ms
        .map(|t| Duration::from_millis(now_ms.saturating_sub(t)));
    let min = rule.min_probes.max(GROUP_FAST_MIN_PROBES);
    let z = z_one_sided(rule.confidence);
    GROUP_FAST_WINDOWS
        .iter()
        .map(|&w| since_resolved.map_or(w, |r| w.min(r)))
        .filter_map(|w| loss_over(rule, input, w, min, z))
        .find(|fast| fast.level == Level::Raise)
        .unwrap_or(v)
}

/// `v` is on the bad side of threshold `t`.
fn worse(rule: &Rule, v: f64, t: f64) -> bool {
    if rule.kind.lower_is_worse() {
        v < t
    } else {
        v > t
    }
}

/// The (raise, clear) thresholds now: fixed, or over the path's baseline.
fn thresholds(rule: &Rule, input: &dyn PathInput) -> Option<(f64, f64)> {
    match (rule.kind, rule.baseline_factor) {
        (RuleKind::Latency, Some(f)) => {
            let base = f * ms(input.baseline_p50_us()? as f64);
            Some((base + rule.raise, base + rule.clear))
        }
        _ => Some((rule.raise, rule.clear)),
    }
}

/// The threshold, in seconds, after which an agent reporting every `interval` is stale.
pub fn stale_after(rule: &Rule, interval: Duration) -> Duration {
    let by_intervals = interval.mul_f64(f64::from(rule.intervals));
    by_intervals.max(Duration::from_secs_f64(rule.raise.max(0.0)))
}

/// Evaluate [`RuleKind::AgentStale`]: `silent` since the agent's last report, which came
/// every `interval`.
pub fn evaluate_agent(rule: &Rule, silent: Duration, interval: Duration) -> Verdict {
    let after = stale_after(rule, interval);
    let level = if silent >= after {
        Level::Raise
    } else {
        Level::Clear
    };
    Verdict {
        level,
        value: Some(silent.as_secs_f64()),
        threshold: Some(after.as_secs_f64()),
        window: silent,
    }
}

/// The life of one alert: ok → pending → firing → resolving → ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Ok,
    /// Raise condition seen since this time (ms), not yet for `raise_for`.
    Pending { since_ms: u64 },
    /// Firing since `since_ms`.
    Firing { since_ms: u64 },
    /// Firing since `since_ms`; the clear condition holds since `clear_ms`.
    Resolving { since_ms: u64, clear_ms: u64 },
}

/// What a step of a [`Tracker`] changed for the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The alert starts firing; `starts_ms` is when its condition was first seen.
    Fired { starts_ms: u64 },
    /// The alert stops firing.
    Resolved { starts_ms: u64 },
}

/// Hysteresis over a stream of levels for one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tracker {
    pub phase: Phase,
    /// When the alert last resolved (ms).
    pub resolved_ms: Option<u64>,
}

impl Tracker {
    pub fn firing_since(since_ms: u64) -> Tracker {
        Tracker {
            phase: Phase::Firing { since_ms },
            resolved_ms: None,
        }
    }

    pub fn is_firing(&self) -> bool {
        matches!(self.phase, Phase::Firing { .. } | Phase::Resolving { .. })
    }

    /// Feed one level seen at `now_ms`.
    pub fn step(
        &mut self,
        level: Level,
        now_ms: u64,
        raise_for: Duration,
        clear_for: Duration,
    ) -> Option<Transition> {
        let (raise_for, clear_for) = (raise_for.as_millis() as u64, clear_for.as_millis() as u64);
        let (next, out) = match (self.phase, level) {
            (Phase::Ok, Level::Raise) if raise_for == 0 => (
                Phase::Firing { since_ms: now_ms },
                Some(Transition::Fired { starts_ms: now_ms }),
            ),
            (Phase::Ok, Level::Raise) => (Phase::Pending { since_ms: now_ms }, None),
            (Phase::Ok, _) => (Phase::Ok, None),
            (Phase::Pending { since_ms }, Level::Raise) => {
                if now_ms.saturating_sub(since_ms) >= raise_for {
                    (
                        Phase::Firing { since_ms },
                        Some(Transition::Fired {
                            starts_ms: since_ms,
                        }),
                    )
                } else {
                    (Phase::Pending { since_ms }, None)
                }
            }
            // Pending needs the raise condition without a break.
            (Phase::Pending { .. }, _) => (Phase::Ok, None),
            (Phase::Firing { since_ms }, Level::Clear) if clear_for == 0 => (
                Phase::Ok,
                Some(Transition::Resolved {
                    starts_ms: since_ms,
                }),
            ),
            (Phase::Firing { since_ms }, Level::Clear) => (
                Phase::Resolving {
                    since_ms,
                    clear_ms: now_ms,
                },
                None,
            ),
            (Phase::Firing { since_ms }, _) => (Phase::Firing { since_ms }, None),
            (Phase::Resolving { since_ms, clear_ms }, Level::Clear) => {
                if now_ms.saturating_sub(clear_ms) >= clear_for {
                    (
                        Phase::Ok,
                        Some(Transition::Resolved {
                            starts_ms: since_ms,
                        }),
                    )
                } else {
                    (Phase::Resolving { since_ms, clear_ms }, None)
                }
            }
            // Resolving needs the clear condition without a break.
            (Phase::Resolving { since_ms, .. }, _) => (Phase::Firing { since_ms }, None),
        };
        self.phase = next;
        if matches!(out, Some(Transition::Resolved { .. })) {
            self.resolved_ms = Some(now_ms);
        }
        out
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
