//! Scenario tables for the rules and the hysteresis tracker.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A path made of per-second reports: `(end ms, received, lost, rtt µs)`.
#[derive(Default)]
struct FakePath {
    reports: Vec<(u64, u64, u64, u64)>,
    now_ms: u64,
    baseline_us: Option<u64>,
    last_reply_ms: u64,
    /// RFC 3550 jitter the reports carried: (end ms, µs).
    jitters: Vec<(u64, f64)>,
}

impl PathInput for FakePath {
    fn window(&self, window: Duration) -> WindowStats {
        let from = self.now_ms.saturating_sub(window.as_millis() as u64);
        let mut s = WindowStats {
            window,
            ..WindowStats::default()
        };
        for &(t, rx, lost, rtt) in self.reports.iter().filter(|r| r.0 > from) {
            let _ = t;
            s.received += rx;
            s.lost += lost;
            for _ in 0..rx {
                s.rtt.record(rtt);
            }
        }
        let j: Vec<f64> = self
            .jitters
            .iter()
            .filter(|j| j.0 > from)
            .map(|j| j.1)
            .collect();
        s.jitter_us = (!j.is_empty()).then(|| j.iter().sum::<f64>() / j.len() as f64);
        s
    }
    fn baseline_p50_us(&self) -> Option<u64> {
        self.baseline_us
    }
    fn silence(&self) -> (Duration, bool) {
        (
            Duration::from_millis(self.now_ms - self.last_reply_ms),
            true,
        )
    }
}

fn loss_rule() -> Rule {
    Rule::default_for(RuleKind::Loss)
}

#[test]
fn z_matches_the_normal_table() {
    for (c, z) in [(0.95, 1.644_854), (0.975, 1.959_964), (0.99, 2.326_348)] {
        assert!((z_one_sided(c) - z).abs() < 1e-5, "{c}: {}", z_one_sided(c));
    }
}

/// (confidence-free) table: decided probes in the 3 s window → does the loss rule raise?
#[test]
fn loss_needs_evidence_not_just_a_ratio() {
    let cases: [(u64, u64, bool, Level, &str); 8] = [
        (
            2,
            1,
            false,
            Level::Hold,
            "1 lost of 3: too few probes to say anything",
        ),
        (
            8,
            2,
            false,
            Level::Hold,
            "2 of 10 (20%): lower bound still under 5%",
        ),
        (
            24,
            6,
            false,
            Level::Raise,
            "6 of 30 (20%) in 3 s at 10 probes/s",
        ),
        (88, 12, false, Level::Raise, "12% of 100"),
        (96, 4, false, Level::Hold, "4% of 100: not surely above 5%"),
        (0, 30, false, Level::Raise, "everything lost"),
        (
            99,
            1,
            true,
            Level::Clear,
            "firing, 1% is under the 2% clear threshold",
        ),
        (96, 4, true, Level::Hold, "firing, 4% is not yet clear"),
    ];
    for (rx, lost, firing, want, why) in cases {
        let p = FakePath {
            reports: vec![(10_000, rx, lost, 1000)],
            now_ms: 10_500,
            ..FakePath::default()
        };
        let t = if firing {
            Tracker::firing_since(0)
        } else {
            Tracker::default()
        };
        let v = evaluate_path(&loss_rule(), &p, &t, p.now_ms);
        assert_eq!(v.level, want, "{why}: {v:?}");
    }
}

/// Tracker tables: (level per second) → transitions at which seconds.
#[test]
fn tracker_hysteresis_table() {
    use Level::{Clear as C, Hold as H, Raise as R};
    type Case = (
        &'static str,
        u64,
        u64,
        &'static [Level],
        &'static [(usize, bool)],
    );
    let cases: [Case; 6] = [
        (
            "fires at once with raise_for 0",
            0,
            0,
            &[C, R, R, C],
            &[(1, true), (3, false)],
        ),
        (
            "pending must last raise_for",
            3,
            0,
            &[R, R, C, R, R, R, R],
            &[(6, true)],
        ),
        (
            "hold keeps firing",
            0,
            2,
            &[R, H, H, H, C, C, C],
            &[(0, true), (6, false)],
        ),
        (
            "clear must last clear_for, uninterrupted",
            0,
            2,
            &[R, C, C, H, C, C, C],
            &[(0, true), (6, false)],
        ),
        (
            "hold during pending resets it",
            2,
            0,
            &[R, R, H, R, R, R],
            &[(5, true)],
        ),
        ("nothing ever", 0, 0, &[C, H, C, H], &[]),
    ];
    for (why, raise_for, clear_for, levels, want) in cases {
        let mut t = Tracker::default();
        let mut got = Vec::new();
        for (i, l) in levels.iter().enumerate() {
            if let Some(tr) = t.step(
                *l,
                1_000_000 + i as u64 * 1000,
                Duration::from_secs(raise_for),
                Duration::from_secs(clear_for),
            ) {
                got.push((i, matches!(tr, Transition::Fired { .. })));
            }
        }
        assert_eq!(got, want, "{why}");
    }
}

/// Simulate `secs` seconds of one path at `pps` probes per second with Bernoulli loss
/// `p(t)`, one report per second, evaluating after each; returns transitions (second, fired).
fn simulate(
    rule: &Rule,
    pps: u64,
    secs: u64,
    seed: u64,
    p: impl Fn(u64) -> f64,
) -> Vec<(u64, bool)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut path = FakePath::default();
    let mut t = Tracker::default();
    let mut out = Vec::new();
    for s in 1..=secs {
        let now = s * 1000;
        let lost = (0..pps).filter(|_| rng.random_bool(p(s))).count() as u64;
        path.reports.push((now, pps - lost, lost, 1000));
        if path.reports.len() > 120 {
            path.reports.remove(0);
        }
        path.now_ms = now;
        let v = evaluate_path(rule, &path, &t, now);
        if let Some(tr) = t.step(v.level, now, rule.raise_for, rule.clear_for) {
            out.push((s, matches!(tr, Transition::Fired { .. })));
        }
    }
    out
}

#[test]
fn heavy_loss_fires_within_seconds_and_resolves_after_it_stops() {
    for seed in 0..20 {
        let tr = simulate(&loss_rule(), 10, 200, seed, |s| {
            if (60..120).contains(&s) { 0.2 } else { 0.0 }
        });
        assert_eq!(tr.len(), 2, "seed {seed}: {tr:?}");
        assert!(
            tr[0].1 && (60..=72).contains(&tr[0].0),
            "seed {seed}: fired {tr:?}"
        );
        assert!(
            !tr[1].1 && (130..=180).contains(&tr[1].0),
            "seed {seed}: resolved {tr:?}"
        );
    }
}

#[test]
fn background_loss_never_pages() {
    // 1% random loss at 10 probes/s and at 1 probe/s, ten minutes each, 20 seeds.
    for seed in 0..20 {
        for pps in [10, 1] {
            let tr = simulate(&loss_rule(), pps, 600, seed, |_| 0.01);
            assert!(tr.is_empty(), "seed {seed}, {pps}/s: {tr:?}");
        }
    }
}

#[test]
fn no_flapping_near_the_threshold() {
    // At or just under the raise threshold an alert may fire (a 3 s burst of 6 losses
    // in 30 probes is real evidence), but it resolves only when the loss is back near
    // background: at most one alert in ten minutes, and at 2% none.
    for seed in 0..20 {
        for p in [0.02, 0.03, 0.04, 0.05, 0.06] {
            let tr = simulate(&loss_rule(), 10, 600, seed, |_| p);
            let fired = tr.iter().filter(|t| t.1).count();
            assert!(
                fired <= usize::from(p > 0.025),
                "seed {seed}, loss {p}: {tr:?}"
            );
        }
    }
}

#[test]
fn latency_relative_to_the_baseline() {
    let rule = Rule::default_for(RuleKind::Latency);
    let path = |rtt_us: u64| FakePath {
        reports: (1..=30).map(|s| (s * 1000, 10, 0, rtt_us)).collect(),
        now_ms: 30_500,
        baseline_us: Some(10_000),
        ..FakePath::default()
    };
    // Baseline p50 10 ms: raise above 2 × 10 + 20 = 40 ms, clear below 2 × 10 + 10 = 30 ms.
    assert_eq!(
        evaluate_path(&rule, &path(45_000), &Tracker::default(), 0).level,
        Level::Raise
    );
    assert_eq!(
        evaluate_path(&rule, &path(35_000), &Tracker::default(), 0).level,
        Level::Hold
    );
    assert_eq!(
        evaluate_path(&rule, &path(12_000), &Tracker::firing_since(0), 0).level,
        Level::Clear
    );
    let young = FakePath {
        baseline_us: None,
        ..path(90_000)
    };
    assert_eq!(
        evaluate_path(&rule, &young, &Tracker::default(), 0).level,
        Level::Hold,
        "no baseline yet: no verdict"
    );
    let abs = Rule {
        baseline_factor: None,
        raise: 100.0,
        clear: 50.0,
        ..rule
    };
    assert_eq!(
        evaluate_path(&abs, &path(120_000), &Tracker::default(), 0).level,
        Level::Raise
    );
    assert_eq!(
        evaluate_path(&abs, &path(45_000), &Tracker::firing_since(0), 0).level,
        Level::Clear
    );
}

#[test]
fn mos_fires_below_and_path_down_after_silence() {
    let rule = Rule::default_for(RuleKind::Mos);
    let p = |rtt_us: u64, lost: u64| FakePath {
        reports: (1..=30)
            .map(|s| (s * 1000, 10 - lost, lost, rtt_us))
            .collect(),
        now_ms: 30_500,
        ..FakePath::default()
    };
    assert_eq!(
        evaluate_path(&rule, &p(20_000, 0), &Tracker::firing_since(0), 0).level,
        Level::Clear
    );
    assert_eq!(
        evaluate_path(&rule, &p(20_000, 2), &Tracker::default(), 0).level,
        Level::Raise,
        "20% loss"
    );
    assert_eq!(
        evaluate_path(&rule, &p(900_000, 0), &Tracker::default(), 0).level,
        Level::Raise,
        "900 ms RTT"
    );

    let down = Rule::default_for(RuleKind::PathDown);
    let silent = |ms: u64| FakePath {
        now_ms: 100_000,
        last_reply_ms: 100_000 - ms,
        ..FakePath::default()
    };
    assert_eq!(
        evaluate_path(&down, &silent(9_000), &Tracker::firing_since(0), 0).level,
        Level::Clear
    );
    assert_eq!(
        evaluate_path(&down, &silent(10_000), &Tracker::default(), 0).level,
        Level::Raise
    );

    let stale = Rule::default_for(RuleKind::AgentStale);
    let s = Duration::from_secs;
    assert_eq!(evaluate_agent(&stale, s(14), s(5)).level, Level::Clear);
    assert_eq!(
        evaluate_agent(&stale, s(15), s(5)).level,
        Level::Raise,
        "3 intervals"
    );
    assert_eq!(
        evaluate_agent(&stale, s(4), s(1)).level,
        Level::Clear,
        "5 s floor"
    );
    assert_eq!(evaluate_agent(&stale, s(5), s(1)).level, Level::Raise);
}

#[test]
fn configured_rules_change_add_and_remove_defaults() {
    let cfg: Vec<RuleConfig> = toml::from_str::<BTreeMap<String, Vec<RuleConfig>>>(
        r#"
        [[rules]]
        name = "PathpulseLoss"
        raise = 0.1
        clear = 0.05
        windows = ["5s"]
        labels = { team = "net" }

        [[rules]]
        name = "PathpulseJitterHigh"
        enabled = false

        [[rules]]
        name = "WanSlow"
        kind = "latency"
        baseline_factor = 0
        raise = 150
        clear = 100
        severity = "critical"
        "#,
    )
    .expect("toml")
    .remove("rules")
    .expect("rules");
    let rules = resolve_rules(&cfg, true).expect("valid");
    let loss = rules
        .iter()
        .find(|r| r.name == "PathpulseLoss")
        .expect("loss");
    assert_eq!((loss.raise, loss.clear), (0.1, 0.05));
    assert_eq!(loss.windows, vec![Duration::from_secs(5)]);
    assert_eq!(loss.labels.get("team").map(String::as_str), Some("net"));
    assert!(!rules.iter().any(|r| r.name == "PathpulseJitterHigh"));
    let wan = rules.iter().find(|r| r.name == "WanSlow").expect("added");
    assert_eq!(wan.baseline_factor, None);
    assert_eq!(wan.severity, "critical");
    assert_eq!(rules.len(), Rule::defaults().len());
}

#[test]
fn bad_rules_are_all_reported() {
    let cfg = vec![
        RuleConfig {
            name: Some("X".into()),
            ..RuleConfig::default()
        },
        RuleConfig {
            name: Some("PathpulseLoss".into()),
            raise: Some(0.01),
            clear: Some(0.02),
            windows: Some(vec!["soon".into()]),
            labels: Some(BTreeMap::from([("src".to_string(), "x".to_string())])),
            ..RuleConfig::default()
        },
        RuleConfig {
            name: Some("PathpulseMosLow".into()),
            kind: Some(RuleKind::Loss),
            ..RuleConfig::default()
        },
    ];
    let errs = resolve_rules(&cfg, true).expect_err("invalid");
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "alert.rules[0].kind",
            "alert.rules[1].windows",
            "alert.rules[1].labels",
            "alert.rules[1].clear",
            "alert.rules[2].kind"
        ],
        "{errs:?}"
    );
}

#[test]
fn loss_rollups_are_named_per_rule_and_can_be_switched_off() {
    let d = Rule::default_for(RuleKind::Loss);
    assert_eq!(
        (
            d.site_rollup_name.as_str(),
            d.isp_rollup_name.as_str(),
            d.source_rollup_name.as_str()
        ),
        (
            "PathpulseSitePairLoss",
            "PathpulseIspLoss",
            "PathpulseSourceLoss"
        )
    );
    assert!(d.has_rollups());
    assert!(!Rule::default_for(RuleKind::Latency).has_rollups());
    let cfg = vec![
        RuleConfig {
            name: Some("WanLoss".into()),
            kind: Some(RuleKind::Loss),
            ..RuleConfig::default()
        },
        RuleConfig {
            name: Some("PathpulseLoss".into()),
            site_rollup_name: Some(String::new()),
            isp_rollup_name: Some(String::new()),
            source_rollup_name: Some(String::new()),
            ..RuleConfig::default()
        },
    ];
    let rules = resolve_rules(&cfg, true).expect("valid");
    let wan = rules.iter().find(|r| r.name == "WanLoss").expect("added");
    assert_eq!(
        (
            wan.site_rollup_name.as_str(),
            wan.isp_rollup_name.as_str(),
            wan.source_rollup_name.as_str()
        ),
        ("WanLossSitePair", "WanLossIsp", "WanLossSource"),
        "its own roll-ups, not the built-in rule's"
    );
    let loss = rules
        .iter()
        .find(|r| r.name == "PathpulseLoss")
        .expect("loss");
    assert!(!loss.has_rollups(), "all three switched off");
    let bad = vec![RuleConfig {
        name: Some("PathpulseLoss".into()),
        isp_rollup_name: Some("isp loss".into()),
        ..RuleConfig::default()
    }];
    let errs = resolve_rules(&bad, true).expect_err("invalid");
    assert_eq!(errs[0].key, "alert.rules[0].isp_rollup_name", "{errs:?}");
}

/// Jitter: the mean RFC 3550 jitter over 30 s against 30 ms, held 10 s; clear under
/// 20 ms, held 30 s. A 10 s burst does not fire; 40 s of 45 ms does, and resolves.
#[test]
fn jitter_fires_above_its_threshold_and_clears_below_the_other() {
    let rule = Rule::default_for(RuleKind::Jitter);
    let (mut path, mut t, mut tr) = (FakePath::default(), Tracker::default(), Vec::new());
    let mut raised_value = None;
    for s in 1..=200u64 {
        let now = s * 1000;
        let high = (20..30).contains(&s) || (60..100).contains(&s);
        path.reports.push((now, 10, 0, 20_000));
        path.jitters
            .push((now, if high { 45_000.0 } else { 5_000.0 }));
        path.now_ms = now;
        let v = evaluate_path(&rule, &path, &t, now);
        if v.level == Level::Raise {
            raised_value.get_or_insert(v.value);
        }
        if let Some(x) = t.step(v.level, now, rule.raise_for, rule.clear_for) {
            tr.push((s, matches!(x, Transition::Fired { .. })));
        }
    }
    // Mean over 30 s passes 30 ms after 19 s of 45 ms (s = 79), fires 10 s later; it
    // falls under 20 ms after 19 s of 5 ms again (s = 119) and resolves 30 s later.
    assert_eq!(tr.len(), 2, "{tr:?}");
    assert!(tr[0].1 && (87..=91).contains(&tr[0].0), "{tr:?}");
    assert!(!tr[1].1 && (147..=151).contains(&tr[1].0), "{tr:?}");
    let v = raised_value.flatten().expect("a value in ms");
    assert!((30.0..32.0).contains(&v), "{v}");
}
