//! Engine scenarios: reports in, alerts out.

use super::*;
use pathpulse_wire::{AgentHealth, PathReport};

const T0: u64 = 1_700_000_000_000;

fn engine() -> Engine {
    Engine::new(
        Rule::defaults(),
        EngineConfig {
            external_url: "http://agg.example:9470".into(),
        },
    )
}

/// The default rules without the loss rule's source roll-up: for tests about path
/// alerts on an agent whose every path loses.
fn without_source(mut rules: Vec<Rule>) -> Vec<Rule> {
    for r in &mut rules {
        r.source_rollup_name.clear();
    }
    rules
}

fn engine_without_source() -> Engine {
    Engine::new(
        without_source(Rule::defaults()),
        EngineConfig {
            external_url: "http://agg.example:9470".into(),
        },
    )
}

/// One report of `agent` for the second ending at `end_ms`: per target (dst, received, lost).
fn report(agent: &str, end_ms: u64, paths: &[(&str, u32, u32)]) -> Report {
    Report {
        seq: end_ms / 1000,
        agent: agent.into(),
        interval_start_ms: end_ms - 1000,
        interval_ms: 1000,
        paths: paths
            .iter()
            .map(|&(dst, received, lost)| {
                let mut p = PathReport {
                    dst: dst.into(),
                    sent: received + lost,
                    received,
                    lost,
                    ..PathReport::default()
                };
                for _ in 0..received {
                    p.rtt.record(1_000);
                }
                p
            })
            .collect(),
        health: AgentHealth::default(),
    }
}

fn names(v: &[Alert]) -> Vec<(String, AlertState)> {
    v.iter().map(|a| (a.alertname.clone(), a.state)).collect()
}

#[test]
fn loss_fires_with_path_values_and_resolves() {
    let mut e = engine();
    let mut fired = None;
    let mut resolved = None;
    for s in 1..=120u64 {
        let now = T0 + s * 1000;
        let lost = if (30..60).contains(&s) { 3 } else { 0 };
        let mut out = e.on_report(&report("a", now, &[("192.0.2.1", 10 - lost, lost)]), now);
        out.extend(e.tick(now));
        for a in out.into_iter().filter(|a| a.alertname == "PathpulseLoss") {
            match a.state {
                AlertState::Firing if fired.is_none() => fired = Some((s, a)),
                AlertState::Resolved => resolved = Some((s, a)),
                st => panic!("unexpected {st:?} at {s}: {a:?}"),
            }
        }
    }
    let (s, a) = fired.expect("fired");
    assert!((30..=34).contains(&s), "fired at {s}");
    assert_eq!(a.alertname, "PathpulseLoss");
    assert_eq!(a.labels["src"], "a");
    assert_eq!(a.labels["dst"], "192.0.2.1");
    assert_eq!(a.labels["probe"], "icmp");
    assert_eq!(a.labels["severity"], "warning");
    assert!(a.value.is_some_and(|v| (0.2..0.4).contains(&v)), "{a:?}");
    assert!(a.annotations["summary"].contains("a → 192.0.2.1"), "{a:?}");
    assert_eq!(a.annotations["link"], "http://agg.example:9470/");
    let (s2, r) = resolved.expect("resolved");
    assert!((60..=110).contains(&s2), "resolved at {s2}");
    assert_eq!(r.fingerprint, a.fingerprint, "same alert");
    assert_eq!(r.starts_at_ms, a.starts_at_ms);
    assert_eq!(r.ends_at_ms, Some(T0 + s2 * 1000));
    assert!(e.active().is_empty());
}

#[test]
fn one_alert_for_an_agent_that_stops_not_one_per_path() {
    let mut e = engine();
    e.agent_address("b", "10.0.0.2".parse().expect("ip"));
    // a and c at one site, b at another: the paths to b are a site pair too, which
    // raises no loss roll-up either.
    for (agent, site) in [("a", "s1"), ("c", "s1"), ("b", "s2")] {
        e.agent_hello(agent, Some(site), Some("isp-x"));
    }
    let mut all = Vec::new();
    for s in 1..=60u64 {
        let now = T0 + s * 1000;
        // a and c probe b's address and an external target; b reports until 20 s, and
        // from then on nobody gets replies from b.
        let b_up = s < 20;
        let rx = if b_up { 10 } else { 0 };
        for agent in ["a", "c"] {
            all.extend(e.on_report(
                &report(
                    agent,
                    now,
                    &[("10.0.0.2", rx, 10 - rx), ("192.0.2.1", 10, 0)],
                ),
                now,
            ));
        }
        if b_up {
            all.extend(e.on_report(&report("b", now, &[("192.0.2.1", 10, 0)]), now));
        }
        all.extend(e.tick(now));
    }
    let firing: Vec<_> = all
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .collect();
    let kinds: Vec<&str> = firing.iter().map(|a| a.alertname.as_str()).collect();
    // Neither loss nor path-down alerts on the paths to b (100% loss from the first
    // report after b stopped): the one agent-down alert covers them.
    assert_eq!(kinds, ["PathpulseAgentDown"], "{firing:?}");
    assert_eq!(firing[0].labels["agent"], "b");
    assert!(
        e.active()
            .iter()
            .all(|a| a.alertname == "PathpulseAgentDown")
    );
}

/// The paths to an agent lose every probe while the agent keeps reporting (a cut, not a
/// stop): they are loss alerts as soon as the agent proves alive, and partial loss to
/// an agent is never held at all.
#[test]
fn total_loss_to_an_agent_that_keeps_reporting_is_loss() {
    // Every path of a loses: path alerts here, not a's source roll-up.
    let mut e = engine_without_source();
    e.agent_address("b", "10.0.0.2".parse().expect("ip"));
    e.agent_address("d", "10.0.0.4".parse().expect("ip"));
    let mut first = BTreeMap::new();
    for s in 1..=40u64 {
        let now = T0 + s * 1000;
        // From 20 s: every probe lost to agent b and to 192.0.2.7; 30% lost to agent d
        // and to 192.0.2.8. b and d keep reporting.
        let (all, part) = if s >= 20 { (0, 7) } else { (10, 10) };
        let mut out = e.on_report(
            &report(
                "a",
                now,
                &[
                    ("10.0.0.2", all, 10 - all),
                    ("192.0.2.7", all, 10 - all),
                    ("10.0.0.4", part, 10 - part),
                    ("192.0.2.8", part, 10 - part),
                ],
            ),
            now,
        );
        for agent in ["b", "d"] {
            out.extend(e.on_report(&report(agent, now, &[("192.0.2.1", 10, 0)]), now));
        }
        out.extend(e.tick(now));
        for a in out.into_iter().filter(|a| a.state == AlertState::Firing) {
            let dst = a.labels.get("dst").cloned().unwrap_or_default();
            first.entry((a.alertname.clone(), dst)).or_insert(s);
        }
    }
    let at = |name: &str, dst: &str| first.get(&(name.to_string(), dst.to_string())).copied();
    // Partial loss to an agent fires when it does toward any other target.
    let part = at("PathpulseLoss", "192.0.2.8").expect("partial loss fires");
    assert_eq!(at("PathpulseLoss", "10.0.0.4"), Some(part), "{first:?}");
    // Total loss to b waits for b's next report, which proves b alive: at most 2 s
    // later than total loss to a target that is no agent.
    let all = at("PathpulseLoss", "192.0.2.7").expect("total loss fires");
    let b = at("PathpulseLoss", "10.0.0.2").expect("loss alert toward b");
    assert!((all..=all + 2).contains(&b), "{first:?}");
    assert!(at("PathpulseAgentDown", "").is_none(), "{first:?}");
}

#[test]
fn a_target_lost_by_every_agent_is_one_alert() {
    let mut e = engine();
    let mut all = Vec::new();
    for s in 1..=40u64 {
        let now = T0 + s * 1000;
        let rx = if s < 10 { 10 } else { 0 };
        for agent in ["a", "c"] {
            all.extend(e.on_report(&report(agent, now, &[("192.0.2.9", rx, 10 - rx)]), now));
        }
        all.extend(e.tick(now));
    }
    let down: Vec<_> = all
        .iter()
        .filter(|a| a.kind == "path_down")
        .map(|a| (a.alertname.as_str(), a.labels.get("src").cloned()))
        .collect();
    assert_eq!(down, [("PathpulseTargetDown", None)], "{all:?}");
    // One source sees it again: the roll-up resolves once none is down.
    for s in 41..=45u64 {
        let now = T0 + s * 1000;
        for agent in ["a", "c"] {
            all.extend(e.on_report(&report(agent, now, &[("192.0.2.9", 10, 0)]), now));
        }
        all.extend(e.tick(now));
    }
    assert!(
        all.iter()
            .any(|a| a.alertname == "PathpulseTargetDown" && a.state == AlertState::Resolved)
    );
}

#[test]
fn restored_alerts_fire_on_silently_and_resolve() {
    let mut first = engine();
    let mut fired = Vec::new();
    for s in 1..=10u64 {
        let now = T0 + s * 1000;
        fired.extend(first.on_report(&report("a", now, &[("192.0.2.1", 5, 5)]), now));
    }
    fired.retain(|a| a.alertname == "PathpulseLoss");
    assert_eq!(
        names(&fired),
        [("PathpulseLoss".to_string(), AlertState::Firing)]
    );
    let saved: Vec<Alert> = first
        .firing()
        .into_iter()
        .filter(|a| a.alertname == "PathpulseLoss")
        .collect();

    // "Restart": a new engine takes the firing alerts back.
    let mut e = engine();
    e.restore(saved.clone(), T0 + 19_000);
    // The first tick after the restart, before any report, keeps them.
    assert!(e.tick(T0 + 19_500).is_empty());
    assert_eq!(e.firing(), saved);
    let mut out = Vec::new();
    for s in 20..=30u64 {
        let now = T0 + s * 1000;
        out.extend(e.on_report(&report("a", now, &[("192.0.2.1", 5, 5)]), now));
    }
    out.retain(|a| a.alertname == "PathpulseLoss");
    assert!(out.is_empty(), "no second firing notification: {out:?}");
    for s in 31..=100u64 {
        let now = T0 + s * 1000;
        out.extend(e.on_report(&report("a", now, &[("192.0.2.1", 10, 0)]), now));
    }
    out.retain(|a| a.alertname == "PathpulseLoss");
    assert_eq!(
        names(&out),
        [("PathpulseLoss".to_string(), AlertState::Resolved)]
    );
    assert_eq!(out[0].starts_at_ms, saved[0].starts_at_ms);
}

#[test]
fn replayed_reports_do_not_look_fresh() {
    let mut e = engine();
    for s in 1..=30u64 {
        let now = T0 + s * 1000;
        assert!(
            e.on_report(&report("a", now, &[("192.0.2.1", 10, 0)]), now)
                .is_empty()
        );
    }
    // After an outage the agent replays 20 lossy reports from long ago in one burst.
    let now = T0 + 200_000;
    let mut out = Vec::new();
    for s in 100..120u64 {
        out.extend(e.on_report(
            &report("a", T0 + s * 1000 - 90_000, &[("192.0.2.1", 5, 5)]),
            now,
        ));
    }
    assert!(
        out.iter().all(|a| a.alertname != "PathpulseLoss"),
        "{out:?}"
    );
}

#[test]
fn labels_and_fingerprints_are_the_same_on_every_aggregator() {
    let run = || {
        let mut e = engine();
        let mut out = Vec::new();
        for s in 1..=10u64 {
            let now = T0 + s * 1000 + 37; // a different arrival jitter changes nothing
            out.extend(e.on_report(&report("a", now - 37, &[("192.0.2.1", 5, 5)]), now));
        }
        out
    };
    let (a, b) = (run(), run());
    assert_eq!(a[0].labels, b[0].labels);
    assert_eq!(a[0].fingerprint, b[0].fingerprint);
    assert_eq!(fingerprint(&a[0].labels), a[0].fingerprint);
    assert_eq!(target_host("[2001:db8::1]:443"), "2001:db8::1");
    assert_eq!(target_host("example.net:443"), "example.net");
    assert_eq!(target_host("2001:db8::1"), "2001:db8::1");
}

#[test]
fn an_agent_that_only_connected_is_not_down() {
    let mut e = engine();
    e.agent_address("x", "10.0.0.9".parse().expect("ip"));
    assert!(e.tick(T0 + 60_000).is_empty());
}

#[test]
fn site_and_isp_from_the_hello_label_the_alerts() {
    let mut e = engine();
    e.agent_hello("a", Some("paris"), Some("isp-x"));
    e.agent_hello("b", Some("lyon"), None);
    e.agent_address("b", "10.0.0.2".parse().expect("ip"));
    let mut out = Vec::new();
    for s in 1..=10u64 {
        let now = T0 + s * 1000;
        out.extend(e.on_report(&report("a", now, &[("10.0.0.2", 5, 5)]), now));
        out.extend(e.on_report(&report("b", now, &[("192.0.2.1", 10, 0)]), now));
    }
    let a = out
        .iter()
        .find(|a| a.alertname == "PathpulseLoss")
        .expect("loss alert");
    assert_eq!(a.labels["src_site"], "paris");
    assert_eq!(a.labels["isp"], "isp-x");
    assert_eq!(a.labels["dst_site"], "lyon", "10.0.0.2 is agent b");
    let now = T0 + 30_000;
    let down = e.tick(now);
    let b = down
        .iter()
        .find(|a| a.alertname == "PathpulseAgentDown")
        .expect("a and b stopped");
    assert!(b.labels.contains_key("site"), "{b:?}");
}

#[test]
fn a_cut_between_two_sites_is_one_alert() {
    // p1, p2 in paris and b1 in berlin probe l1, l2 in lyon. The paris → lyon link goes
    // down: four paths lose their replies, berlin still reaches lyon (so no target is
    // down from every agent): one site-pair alert.
    let mut e = engine();
    for (a, site, ip) in [
        ("p1", "paris", "10.1.0.1"),
        ("p2", "paris", "10.1.0.2"),
        ("b1", "berlin", "10.2.0.1"),
        ("l1", "lyon", "10.3.0.1"),
        ("l2", "lyon", "10.3.0.2"),
    ] {
        e.agent_hello(a, Some(site), None);
        e.agent_address(a, ip.parse().expect("ip"));
    }
    let mut all = Vec::new();
    for s in 1..=40u64 {
        let now = T0 + s * 1000;
        let rx = if s < 10 { 10 } else { 0 };
        for a in ["p1", "p2"] {
            all.extend(e.on_report(
                &report(
                    a,
                    now,
                    &[("10.3.0.1", rx, 10 - rx), ("10.3.0.2", rx, 10 - rx)],
                ),
                now,
            ));
        }
        all.extend(e.on_report(
            &report("b1", now, &[("10.3.0.1", 10, 0), ("10.3.0.2", 10, 0)]),
            now,
        ));
        for a in ["l1", "l2"] {
            all.extend(e.on_report(&report(a, now, &[("10.2.0.1", 10, 0)]), now));
        }
        all.extend(e.tick(now));
    }
    let down: Vec<_> = all
        .iter()
        .filter(|a| a.kind == "path_down")
        .map(|a| (a.alertname.as_str(), a.labels.clone()))
        .collect();
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].0, "PathpulseSitePairDown");
    assert_eq!(down[0].1["src_site"], "paris");
    assert_eq!(down[0].1["dst_site"], "lyon");
    assert!(!down[0].1.contains_key("src"));
}

#[test]
#[ignore = "timing figure: cargo test --release -p pathpulse-aggregator -- --ignored --nocapture engine_cost"]
fn engine_cost_at_100k_paths() {
    // 1,000 agents × 100 paths, 5 probes per report with RTTs anywhere in 1..40 ms (the
    // loadgen's shape), one report per agent per second for 40 s, then one more round.
    let mut e = engine();
    let dsts: Vec<String> = (0..100).map(|i| format!("10.9.0.{i}")).collect();
    let mk = |agent: &str, end: u64, seed: u64| {
        let mut r = report(agent, end, &[]);
        for (i, d) in dsts.iter().enumerate() {
            let mut p = PathReport {
                dst: d.clone(),
                sent: 5,
                received: 5,
                ..PathReport::default()
            };
            let base = 1_000 + (seed * 7919 + i as u64 * 104_729) % 39_000;
            for k in 0..5u64 {
                p.rtt.record(base + k * 97 % 500);
            }
            r.paths.push(p);
        }
        r
    };
    let agents: Vec<String> = (0..1000).map(|i| format!("ag{i}")).collect();
    for s in 1..=40u64 {
        let now = T0 + s * 1000;
        for a in &agents {
            e.on_report(&mk(a, now, s), now);
        }
        let t = std::time::Instant::now();
        e.tick(now);
        if s == 40 {
            println!("alert engine: tick over 100k paths {:?}", t.elapsed());
        }
    }
    let t = std::time::Instant::now();
    let now = T0 + 41_000;
    for a in &agents {
        e.on_report(&mk(a, now, 41), now);
    }
    println!(
        "alert engine: {:.2} µs per path-report (default rules, windows full)",
        t.elapsed().as_secs_f64() / 100_000.0 * 1e6
    );
}

#[test]
#[ignore = "timing figure: cargo test --release -p pathpulse-aggregator -- --ignored --nocapture engine_cost"]
fn engine_cost_during_an_isp_outage() {
    // 1,000 agents of 10 ISPs × 100 outside targets: ISP groups of 10,000 paths. After
    // 40 clean seconds every path of ISP 0 loses 20% for 10 s: its roll-up is evaluated
    // on each of its agents' reports.
    let mut e = engine();
    let agents: Vec<String> = (0..1000).map(|i| format!("ag{i}")).collect();
    for (i, a) in agents.iter().enumerate() {
        let isp = format!("isp-{}", i % 10);
        e.agent_hello(a, Some(&format!("site-{}", i % 50)), Some(&isp));
    }
    let dsts: Vec<String> = (0..100).map(|i| format!("10.9.0.{i}")).collect();
    let mk = |agent: &str, end: u64, lossy: bool| {
        let mut r = report(agent, end, &[]);
        for d in &dsts {
            let rx = if lossy { 8 } else { 10 };
            let mut p = PathReport {
                dst: d.clone(),
                sent: 10,
                received: rx,
                lost: 10 - rx,
                ..PathReport::default()
            };
            for k in 0..u64::from(rx) {
                p.rtt.record(1_000 + k * 97);
            }
            r.paths.push(p);
        }
        r
    };
    let mut fired = Vec::new();
    let mut spent = std::time::Duration::ZERO;
    for s in 1..=50u64 {
        let now = T0 + s * 1000;
        let t = std::time::Instant::now();
        for (i, a) in agents.iter().enumerate() {
            fired.extend(e.on_report(&mk(a, now, s > 40 && i % 10 == 0), now));
        }
        fired.extend(e.tick(now));
        if s > 40 {
            spent += t.elapsed();
        }
    }
    let names: std::collections::BTreeSet<&str> =
        fired.iter().map(|a| a.alertname.as_str()).collect();
    println!(
        "alert engine, ISP outage (10,000 of 100,000 paths at 20%): {:.2} µs per path-report over its 10 s; alerts {names:?}",
        spent.as_secs_f64() / 1_000_000.0 * 1e6
    );
    assert_eq!(names, ["PathpulseIspLoss"].into(), "{fired:?}");
}

/// A reload keeps what it can: a firing alert whose rule stays fires on (no second
/// notification) and resolves by the rule as reloaded; the alert of a removed rule
/// resolves at once; a new rule starts from the history already kept.
#[test]
fn reloaded_rules_keep_firing_alerts_and_resolve_removed_ones() {
    // Both paths of a lose: path alerts here, not a's source roll-up.
    let mut e = engine_without_source();
    let mut now = T0;
    // 30% loss on two paths until both PathpulseLoss alerts fire.
    let mut fired = 0;
    for s in 1..=10u64 {
        now = T0 + s * 1000;
        let r = report("a", now, &[("192.0.2.1", 7, 3), ("192.0.2.2", 7, 3)]);
        fired += e
            .on_report(&r, now)
            .iter()
            .filter(|a| a.state == AlertState::Firing)
            .count();
    }
    assert_eq!(fired, 2, "{:?}", names(&e.active()));

    // The same rules, the loss rule's clear threshold raised to 40%: nothing is notified
    // by the reload itself, both alerts still fire.
    let mut rules = without_source(Rule::defaults());
    for r in rules.iter_mut().filter(|r| r.name == "PathpulseLoss") {
        r.clear = 0.4;
    }
    assert!(e.set_rules(rules.clone(), now).is_empty());
    assert_eq!(e.firing().len(), 2);
    // Under the new clear threshold the same 30% loss resolves them (after clear_for).
    let mut resolved = Vec::new();
    for s in 11..=40u64 {
        now = T0 + s * 1000;
        let r = report("a", now, &[("192.0.2.1", 7, 3), ("192.0.2.2", 7, 3)]);
        resolved.extend(
            e.on_report(&r, now)
                .into_iter()
                .filter(|a| a.state == AlertState::Resolved),
        );
        if resolved.len() == 2 {
            break;
        }
    }
    assert_eq!(
        resolved.len(),
        2,
        "resolved by the reloaded clear threshold"
    );

    // Heavier loss fires again under the new rules; then the loss rule is removed: its
    // alerts resolve at once, marked as such.
    let mut e = engine();
    for s in 1..=10u64 {
        now = T0 + s * 1000;
        e.on_report(&report("a", now, &[("192.0.2.1", 5, 5)]), now);
    }
    assert_eq!(
        names(&e.firing()),
        [("PathpulseLoss".into(), AlertState::Firing)]
    );
    let without: Vec<Rule> = Rule::defaults()
        .into_iter()
        .filter(|r| r.name != "PathpulseLoss")
        .collect();
    let out = e.set_rules(without, now);
    assert_eq!(
        names(&out),
        [("PathpulseLoss".into(), AlertState::Resolved)]
    );
    assert_eq!(out[0].ends_at_ms, Some(now));
    assert!(out[0].annotations["summary"].contains("rule removed"));
    assert!(e.firing().is_empty());
    // The other rules still work on the kept history: the path goes silent → path down.
    let mut down = false;
    for s in 11..=40u64 {
        now = T0 + s * 1000;
        let out = e.on_report(&report("a", now, &[("192.0.2.1", 0, 10)]), now);
        down |= out
            .iter()
            .chain(e.tick(now).iter())
            .any(|a| a.alertname == "PathpulsePathDown" && a.state == AlertState::Firing);
    }
    assert!(down, "path down still fires after the reload");
}

/// A firing alert as shown (`GET /api/alerts`, the page, re-sends) keeps the threshold it
/// fired on; the clear threshold it is now judged by is `clear_threshold`.
#[test]
fn a_firing_alert_shows_the_threshold_it_fired_on() {
    let mut e = engine();
    for s in 1..=20u64 {
        let now = T0 + s * 1000;
        e.on_report(&report("a", now, &[("192.0.2.1", 6, 4)]), now);
    }
    let firing = e.firing();
    let a = firing
        .iter()
        .find(|a| a.alertname == "PathpulseLoss")
        .unwrap_or_else(|| panic!("{:?}", names(&e.active())));
    assert_eq!(a.threshold, Some(0.05), "{a:?}");
    assert_eq!(a.annotations["threshold"], "5.0%");
    assert_eq!(a.annotations["clear_threshold"], "1.0%");
    assert!(
        a.value.is_some_and(|v| v > 0.3),
        "the value is current: {a:?}"
    );
}

/// Agents (name, site, isp, address) said hello and connected.
fn mesh(e: &mut Engine, agents: &[(&str, &str, Option<&str>, &str)]) {
    for &(a, site, isp, ip) in agents {
        e.agent_hello(a, Some(site), isp);
        e.agent_address(a, ip.parse().expect("ip"));
    }
}

/// Runs `secs` seconds from `from`: every second each agent reports its paths as `paths`
/// says (per agent and second: (dst, received, lost)), then the tick; returns every
/// alert out.
fn run(
    e: &mut Engine,
    secs: std::ops::RangeInclusive<u64>,
    agents: &[&str],
    paths: impl Fn(&str, u64) -> Vec<(&'static str, u32, u32)>,
) -> Vec<Alert> {
    let mut all = Vec::new();
    for s in secs {
        let now = T0 + s * 1000;
        for a in agents {
            all.extend(e.on_report(&report(a, now, &paths(a, s)), now));
        }
        all.extend(e.tick(now));
    }
    all
}

fn loss_alerts(all: &[Alert], state: AlertState) -> Vec<(String, BTreeMap<String, String>)> {
    all.iter()
        .filter(|a| a.kind == "loss" && a.state == state)
        .map(|a| (a.alertname.clone(), a.labels.clone()))
        .collect()
}

/// p1, p2 in paris and b1 in berlin probe l1, l2 in lyon. From 10 s the paris → lyon
/// link loses 20%: four paths lose packets, berlin → lyon is clean. One site-pair loss
/// alert, none per path; it resolves after the loss stops.
#[test]
fn loss_on_a_site_pair_is_one_alert_not_one_per_path() {
    let mut e = engine();
    mesh(
        &mut e,
        &[
            ("p1", "paris", None, "10.1.0.1"),
            ("p2", "paris", None, "10.1.0.2"),
            ("b1", "berlin", None, "10.2.0.1"),
            ("l1", "lyon", None, "10.3.0.1"),
            ("l2", "lyon", None, "10.3.0.2"),
        ],
    );
    let paths = |a: &str, s: u64| -> Vec<(&'static str, u32, u32)> {
        let cut = a.starts_with('p') && (10..60).contains(&s);
        let rx = if cut { 8 } else { 10 };
        match a {
            "l1" | "l2" => vec![("10.2.0.1", 10, 0)],
            _ => vec![("10.3.0.1", rx, 10 - rx), ("10.3.0.2", rx, 10 - rx)],
        }
    };
    let agents = ["p1", "p2", "b1", "l1", "l2"];
    let all = run(&mut e, 1..=59, &agents, paths);
    let fired = loss_alerts(&all, AlertState::Firing);
    assert_eq!(fired.len(), 1, "{fired:?}");
    let (name, labels) = &fired[0];
    assert_eq!(name, "PathpulseSitePairLoss");
    assert_eq!(labels["src_site"], "paris");
    assert_eq!(labels["dst_site"], "lyon");
    assert!(!labels.contains_key("src") && !labels.contains_key("isp"));
    let a = all
        .iter()
        .find(|a| a.alertname == "PathpulseSitePairLoss")
        .expect("fired");
    // The summed counts of the window it fired on (which began before the loss did).
    assert!(a.value.is_some_and(|v| (0.05..=0.2).contains(&v)), "{a:?}");
    assert!(
        a.annotations["summary"].contains("paths from site paris to site lyon"),
        "{a:?}"
    );
    // Summed, the evidence is there sooner than on any single path.
    let alone = {
        let mut e = engine_without_source();
        let all = run(&mut e, 1..=59, &["p1"], paths);
        all.iter()
            .filter(|a| a.kind == "loss" && a.state == AlertState::Firing)
            .map(|a| a.starts_at_ms)
            .min()
            .expect("a path alone fires")
    };
    assert!(a.starts_at_ms < alone, "{} vs {alone}", a.starts_at_ms);
    let all = run(&mut e, 60..=120, &agents, paths);
    assert_eq!(
        loss_alerts(&all, AlertState::Resolved)
            .iter()
            .map(|a| a.0.as_str())
            .collect::<Vec<_>>(),
        ["PathpulseSitePairLoss"]
    );
    assert!(loss_alerts(&all, AlertState::Firing).is_empty(), "{all:?}");
    assert!(e.active().is_empty(), "{:?}", e.active());
}

/// a1 and a2 (two sites, ISP x) and c1 (ISP y) probe outside targets. From 10 s ISP x
/// loses 20% of every packet: one ISP loss alert, none per path.
#[test]
fn loss_across_an_isp_is_one_alert_not_one_per_path() {
    let mut e = engine();
    mesh(
        &mut e,
        &[
            ("a1", "s1", Some("isp-x"), "10.1.0.1"),
            ("a2", "s2", Some("isp-x"), "10.2.0.1"),
            ("c1", "s3", Some("isp-y"), "10.3.0.1"),
        ],
    );
    let paths = |a: &str, s: u64| -> Vec<(&'static str, u32, u32)> {
        let rx = if a.starts_with('a') && s >= 10 { 8 } else { 10 };
        vec![
            ("192.0.2.1", rx, 10 - rx),
            ("192.0.2.2", rx, 10 - rx),
            ("192.0.2.3", rx, 10 - rx),
        ]
    };
    let all = run(&mut e, 1..=60, &["a1", "a2", "c1"], paths);
    let fired = loss_alerts(&all, AlertState::Firing);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, "PathpulseIspLoss");
    assert_eq!(
        fired[0].1.keys().map(String::as_str).collect::<Vec<_>>(),
        ["alertname", "isp", "severity"]
    );
    assert_eq!(fired[0].1["isp"], "isp-x");
    // Persisted and restored, it is the same subject again.
    let saved = e.firing();
    let mut again = engine();
    again.restore(saved.clone(), T0 + 61_000);
    assert_eq!(again.firing(), saved);
}

/// Loss on one path of a group (or on the paths of one agent of an ISP) is the path's
/// own: per-path alerts, no roll-up, as fast as without any group.
#[test]
fn loss_on_one_path_of_a_group_is_the_paths_alert() {
    let agents = [
        ("p1", "paris", Some("isp-x"), "10.1.0.1"),
        ("p2", "paris", Some("isp-x"), "10.1.0.2"),
        ("l1", "lyon", None, "10.3.0.1"),
        ("l2", "lyon", None, "10.3.0.2"),
    ];
    // p1 → l1 loses 30% from 10 s; p2's paths are clean.
    let paths = |a: &str, s: u64| -> Vec<(&'static str, u32, u32)> {
        let rx = if a == "p1" && s >= 10 { 7 } else { 10 };
        match a {
            "p1" | "p2" => vec![("10.3.0.1", rx, 10 - rx), ("10.3.0.2", 10, 0)],
            _ => vec![("10.1.0.1", 10, 0)],
        }
    };
    let names = ["p1", "p2", "l1", "l2"];
    let mut grouped = engine();
    mesh(&mut grouped, &agents);
    let with = run(&mut grouped, 1..=40, &names, paths);
    let mut plain = engine();
    let without = run(&mut plain, 1..=40, &names, paths);
    let fired = loss_alerts(&with, AlertState::Firing);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, "PathpulseLoss");
    assert_eq!(fired[0].1["dst"], "10.3.0.1");
    let start = |v: &[Alert]| {
        v.iter()
            .find(|a| a.alertname == "PathpulseLoss")
            .map(|a| a.starts_at_ms)
    };
    assert_eq!(start(&with), start(&without));

    // All of p1's paths lose (p1's own uplink): its two paths to lyon are one agent
    // pair each, but one source agent; the source roll-up waits for p2's report (at most
    // one interval), sees no broad loss on the site pair, and fires: one alert on p1's
    // side, no path alert.
    let paths = |a: &str, s: u64| -> Vec<(&'static str, u32, u32)> {
        let rx = if a == "p1" && s >= 10 { 7 } else { 10 };
        match a {
            "p1" | "p2" => vec![("10.3.0.1", rx, 10 - rx), ("10.3.0.2", rx, 10 - rx)],
            _ => vec![("10.1.0.1", 10, 0)],
        }
    };
    let mut grouped = engine();
    mesh(&mut grouped, &agents);
    let with = run(&mut grouped, 1..=40, &names, paths);
    let without = run(&mut engine(), 1..=40, &names, paths);
    let fired = loss_alerts(&with, AlertState::Firing);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, "PathpulseSourceLoss");
    assert_eq!(fired[0].1["src"], "p1");
    assert_eq!(fired[0].1["src_site"], "paris");
    assert!(!fired[0].1.contains_key("dst"), "{fired:?}");
    let source_start = |v: &[Alert]| {
        v.iter()
            .find(|a| a.alertname == "PathpulseSourceLoss")
            .map(|a| a.starts_at_ms)
    };
    let (w, wo) = (
        source_start(&with).expect("fired"),
        source_start(&without).expect("fired"),
    );
    assert!((wo..=wo + 2_000).contains(&w), "{w} vs {wo}");
}

/// A site cut seen by p1 one report before p2: p1's paths raise on their own first, and
/// wait for p2's report instead of firing; with it the site pair rolls up, covering them.
#[test]
fn paths_that_raise_first_wait_for_the_rest_of_their_group() {
    let mut e = engine();
    mesh(
        &mut e,
        &[
            ("p1", "paris", None, "10.1.0.1"),
            ("p2", "paris", None, "10.1.0.2"),
            ("l1", "lyon", None, "10.3.0.1"),
            ("l2", "lyon", None, "10.3.0.2"),
        ],
    );
    let paths = |a: &str, s: u64| -> Vec<(&'static str, u32, u32)> {
        let from = if a == "p1" { 10 } else { 11 };
        let rx = if s >= from { 5 } else { 10 };
        match a {
            "l1" | "l2" => vec![("10.1.0.1", 10, 0)],
            _ => vec![("10.3.0.1", rx, 10 - rx), ("10.3.0.2", rx, 10 - rx)],
        }
    };
    let all = run(&mut e, 1..=30, &["p1", "p2", "l1", "l2"], paths);
    let fired = loss_alerts(&all, AlertState::Firing);
    assert_eq!(
        fired.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["PathpulseSitePairLoss"],
        "{fired:?}"
    );
    // Alone, p1's paths would have fired by then.
    let alone = run(&mut engine(), 1..=30, &["p1", "p2", "l1", "l2"], paths);
    let first = |v: &[Alert]| {
        v.iter()
            .filter(|a| a.kind == "loss")
            .map(|a| a.starts_at_ms)
            .min()
    };
    assert!(first(&alone) <= first(&all), "{alone:?}");
}

/// p1 and p2 (paris) probe l1 (lyon): the site pair paris → lyon is two paths of two
/// agent pairs. 30% loss on both from 10 s to 30 s, then clean.
fn paris_lyon_cut(a: &str, s: u64) -> Vec<(&'static str, u32, u32)> {
    let rx = if a.starts_with('p') && (10..30).contains(&s) {
        7
    } else {
        10
    };
    match a {
        "l1" => vec![("10.1.0.1", 10, 0)],
        _ => vec![("10.3.0.1", rx, 10 - rx)],
    }
}

/// When a roll-up resolves, the paths it held do not raise their own loss alerts on the
/// episode still in their long raise windows (60 s): after the roll-up resolved, as after
/// a path's own alert resolved, raising needs evidence from after the resolution.
#[test]
fn paths_held_by_a_roll_up_stay_quiet_when_it_resolves() {
    let mut e = engine();
    mesh(
        &mut e,
        &[
            ("p1", "paris", None, "10.1.0.1"),
            ("p2", "paris", None, "10.1.0.2"),
            ("l1", "lyon", None, "10.3.0.1"),
        ],
    );
    let agents = ["p1", "p2", "l1"];
    let all = run(&mut e, 1..=120, &agents, paris_lyon_cut);
    let fired = loss_alerts(&all, AlertState::Firing);
    assert_eq!(
        fired.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["PathpulseSitePairLoss"],
        "{fired:?}"
    );
    assert_eq!(
        loss_alerts(&all, AlertState::Resolved)
            .iter()
            .map(|a| a.0.as_str())
            .collect::<Vec<_>>(),
        ["PathpulseSitePairLoss"]
    );
    assert!(e.active().is_empty(), "{:?}", e.active());
    // New loss after the resolution raises again (the roll-up: both paths lose).
    let again = run(&mut e, 121..=140, &agents, |a, s| {
        paris_lyon_cut(a, s - 111)
    });
    assert_eq!(
        loss_alerts(&again, AlertState::Firing)
            .iter()
            .map(|f| f.0.as_str())
            .collect::<Vec<_>>(),
        ["PathpulseSitePairLoss"]
    );
}

/// While a loss roll-up covers a path, the path's MOS (which the group's loss brings down)
/// is not alerted per path: one incident, one alert. The same loss on a path of no group
/// does raise its MOS alert (so the rule would fire here).
#[test]
fn a_loss_roll_up_holds_the_mos_alerts_of_its_paths() {
    let long_cut = |a: &str, s: u64| -> Vec<(&'static str, u32, u32)> {
        let rx = if a != "l1" && (10..70).contains(&s) {
            7
        } else {
            10
        };
        match a {
            "l1" => vec![("10.1.0.1", 10, 0)],
            "x1" => vec![("10.9.0.1", rx, 10 - rx)],
            _ => vec![("10.3.0.1", rx, 10 - rx)],
        }
    };
    let mut e = engine();
    mesh(
        &mut e,
        &[
            ("p1", "paris", None, "10.1.0.1"),
            ("p2", "paris", None, "10.1.0.2"),
            ("l1", "lyon", None, "10.3.0.1"),
            ("x1", "oslo", None, "10.4.0.1"),
        ],
    );
    let all = run(&mut e, 1..=150, &["p1", "p2", "l1", "x1"], long_cut);
    let fired = |kind: &str| -> Vec<(String, Option<String>)> {
        all.iter()
            .filter(|a| a.kind == kind && a.state == AlertState::Firing)
            .map(|a| (a.alertname.clone(), a.labels.get("src").cloned()))
            .collect()
    };
    let mut loss: Vec<_> = fired("loss");
    loss.sort();
    assert_eq!(
        loss,
        [
            ("PathpulseLoss".to_string(), Some("x1".to_string())),
            ("PathpulseSitePairLoss".to_string(), None),
        ]
    );
    assert_eq!(
        fired("mos"),
        [("PathpulseMosLow".to_string(), Some("x1".to_string()))],
        "only the path of no group"
    );
}

/// One 500 ms report of `agent` ending at `end_ms`: per target (dst, loss probability),
/// 5 probes each (10 probes/s), each lost at random with that probability.
fn half_second_report(
    rng: &mut rand::rngs::StdRng,
    agent: &str,
    end_ms: u64,
    paths: &[(&str, f64)],
) -> Report {
    use rand::Rng;
    let counts: Vec<(&str, u32, u32)> = paths
        .iter()
        .map(|&(dst, p)| {
            let lost = (0..5).filter(|_| rng.random::<f64>() < p).count() as u32;
            (dst, 5 - lost, lost)
        })
        .collect();
    let mut r = report(agent, end_ms, &counts);
    r.seq = end_ms / 500;
    r.interval_start_ms = end_ms - 500;
    r.interval_ms = 500;
    r
}

/// Seconds from a loss onset at 30 s to the first loss-kind alert out of `e`, for a lone
/// agent probing `FIVE` targets: 1% background loss, then `onset` loss on the first four
/// (within 60 s); also whether anything of the loss kind fired before the onset or on
/// the clean fifth path.
const FIVE: [&str; 5] = [
    "192.0.2.1",
    "192.0.2.2",
    "192.0.2.3",
    "192.0.2.4",
    "192.0.2.9",
];

fn onset_delay(e: &mut Engine, seed: u64, onset: f64) -> (Option<f64>, Vec<Alert>) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut wrong = Vec::new();
    for i in 1..=180u64 {
        let now = T0 + i * 500;
        let lossy = i > 60;
        let paths: Vec<(&str, f64)> = FIVE
            .iter()
            .enumerate()
            .map(|(k, d)| (*d, if lossy && k < 4 { onset } else { 0.01 }))
            .collect();
        let mut out = e.on_report(&half_second_report(&mut rng, "a", now, &paths), now);
        if i % 2 == 0 {
            out.extend(e.tick(now));
        }
        for a in out
            .into_iter()
            .filter(|a| a.kind == "loss" && a.state == AlertState::Firing)
        {
            if !lossy || a.labels.get("dst").is_some_and(|d| d == FIVE[4]) {
                wrong.push(a);
            } else {
                return (Some((i - 60) as f64 * 0.5), wrong);
            }
        }
    }
    (None, wrong)
}

/// A lone agent probes five targets at 10 probes/s with 500 ms reports; 20% random loss
/// starts on four of them (its own LAN or uplink). Over 60 seeded onsets its one
/// `PathpulseSourceLoss` fires (times counted from the onset in report time: no probe
/// timeout here), at the median sooner than the first of the four path alerts does with
/// the source roll-up switched off: the group pools 50 probes a second, and reads 1 and
/// 2 s windows. Nothing fires before the onset (30 s of 1% background loss each time) or on
/// the clean path; and 10 minutes of 1% background loss on all five raise nothing.
#[test]
fn an_agents_paths_losing_together_are_one_source_alert_sooner_than_any_path_alone() {
    let (mut pooled, mut alone, mut first_is_source) = (Vec::new(), Vec::new(), 0);
    for seed in 0..60 {
        let mut e = engine();
        let (d, wrong) = onset_delay(&mut e, seed, 0.2);
        assert!(wrong.is_empty(), "seed {seed}: {wrong:?}");
        pooled.push(d.expect("a loss alert fires within 60 s"));
        // The first alert is the source roll-up, or (the onset race, when a path's own
        // evidence is there a report before the group's) a path alert.
        let fired = e.firing();
        assert_eq!(fired.len(), 1, "seed {seed}: {fired:?}");
        if fired[0].alertname == "PathpulseSourceLoss" {
            first_is_source += 1;
            assert_eq!(fired[0].labels["src"], "a");
            assert!(fired[0].annotations["summary"].contains("agent a"));
        }
        let mut e = engine_without_source();
        let (d, wrong) = onset_delay(&mut e, seed, 0.2);
        assert!(wrong.is_empty(), "seed {seed}: {wrong:?}");
        alone.push(d.expect("a path alert fires within 60 s"));
    }
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p).ceil() as usize).max(1) - 1]
    };
    let (pm, p95) = (q(&mut pooled, 0.5), q(&mut pooled, 0.95));
    let (am, a95) = (q(&mut alone, 0.5), q(&mut alone, 0.95));
    println!(
        "20% loss on 4 of 5 paths, 10 probes/s, 500 ms reports, 60 onsets: source roll-up median {pm} s, p95 {p95} s; first path alert alone median {am} s, p95 {a95} s"
    );
    println!("the first alert was the source roll-up in {first_is_source} of 60 onsets");
    // Pooled, the median is a report sooner; the tail is no longer (the first of four
    // paths racing alone is fast too: the roll-up's gain is one alert that says where).
    assert!(pm < am && p95 <= a95, "{pooled:?} vs {alone:?}");
    assert!(p95 <= 2.5, "{pooled:?}");
    assert!(first_is_source >= 50, "{first_is_source} of 60");

    // 10 minutes of 1% background loss on all five paths, five seeds: the source
    // roll-up never fires. (The path rule alone may: about 1% a path in 10 minutes with
    // reports every 500 ms, 5 of 30 lost in 3 s; one of these 25 path-runs does.)
    use rand::SeedableRng;
    let mut path_alarms = 0;
    for seed in 100..105 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut e = engine();
        for i in 1..=1200u64 {
            let now = T0 + i * 500;
            let paths: Vec<(&str, f64)> = FIVE.iter().map(|d| (*d, 0.01)).collect();
            let mut out = e.on_report(&half_second_report(&mut rng, "a", now, &paths), now);
            out.extend(e.tick(now));
            for a in out.iter().filter(|a| a.kind == "loss") {
                assert_eq!(a.alertname, "PathpulseLoss", "seed {seed} at {i}: {a:?}");
                path_alarms += usize::from(a.state == AlertState::Firing);
            }
        }
    }
    println!("1% background, 5 × 5 paths × 10 minutes: {path_alarms} path alarms");
    assert!(path_alarms <= 2, "{path_alarms}");
}

/// The end-to-end site-pair scenario: a full mesh of e1, e2 (site east) and w1 (west);
/// from 10 s the paths toward w1 lose 30% (the site pair east → west) and so does
/// e2 → e1 (the control). e2's two paths both lose, but one is the site pair's: its
/// source group is what is left (e2 → e1 alone), no roll-up; the control is its own
/// path alert, the site pair one roll-up.
#[test]
fn a_source_group_leaves_out_the_paths_a_wider_roll_up_covers() {
    let mut e = engine();
    mesh(
        &mut e,
        &[
            ("e1", "east", None, "10.1.0.1"),
            ("e2", "east", None, "10.1.0.2"),
            ("w1", "west", None, "10.2.0.1"),
        ],
    );
    let paths = |a: &str, s: u64| -> Vec<(&'static str, u32, u32)> {
        let on = (10..40).contains(&s);
        let p = |lossy: bool| if on && lossy { (7, 3) } else { (10, 0) };
        let row = |dst: &'static str, lossy: bool| (dst, p(lossy).0, p(lossy).1);
        match a {
            "e1" => vec![row("10.1.0.2", false), row("10.2.0.1", true)],
            "e2" => vec![row("10.1.0.1", true), row("10.2.0.1", true)],
            _ => vec![row("10.1.0.1", false), row("10.1.0.2", false)],
        }
    };
    let all = run(&mut e, 1..=39, &["e1", "e2", "w1"], paths);
    let fired = loss_alerts(&all, AlertState::Firing);
    let names: Vec<&str> = fired.iter().map(|f| f.0.as_str()).collect();
    assert!(names.contains(&"PathpulseSitePairLoss"), "{fired:?}");
    assert!(!names.contains(&"PathpulseSourceLoss"), "{fired:?}");
    assert!(
        fired
            .iter()
            .any(|f| f.0 == "PathpulseLoss" && f.1["src"] == "e2" && f.1["dst"] == "10.1.0.1"),
        "the control's own alert: {fired:?}"
    );
}

/// A confirmation message of one burst toward `dst`.
fn confirm(dst: &str, received: u32, lost: u32) -> Confirm {
    Confirm {
        paths: vec![pathpulse_wire::ConfirmPath {
            dst: dst.into(),
            probe: ProbeKind::Icmp,
            sent: received + lost,
            received,
            lost,
            others_under_way: 0,
        }],
    }
}

/// A burst as the agent sends it (`pathpulse_agent::probe::confirm`): 60 probes, each
/// lost with probability `p`, stopped after 30 all answered; (received, lost).
fn burst(rng: &mut rand::rngs::StdRng, p: f64) -> (u32, u32) {
    use pathpulse_agent::probe::confirm::{CLEAN_STOP, DEFAULT_PROBES};
    use rand::Rng;
    let (mut received, mut lost) = (0, 0);
    for _ in 0..DEFAULT_PROBES {
        if rng.random::<f64>() < p {
            lost += 1;
        } else {
            received += 1;
        }
        if lost == 0 && received >= CLEAN_STOP {
            break;
        }
    }
    (received, lost)
}

/// A confirmation burst is evidence at once: 12 lost of 60 raise the path's loss alert
/// the moment it arrives, where the path's regular probes (clean until then) say
/// nothing yet; 3 of 60 (5%) do not, nor does a clean stopped burst; bursts of another
/// agent, of a path never reported, or older than the 2 s window count for nothing.
#[test]
fn a_confirmation_burst_raises_a_paths_loss_at_once() {
    const X: &str = "192.0.2.1";
    let mut e = engine();
    let mut now = T0;
    for i in 1..=60u64 {
        now = T0 + i * 500;
        e.on_report(&report("a", now, &[(X, 5, 0)]), now);
    }
    assert!(e.on_confirm("b", &confirm(X, 48, 12), now).is_empty());
    assert!(
        e.on_confirm("a", &confirm("198.51.100.7", 48, 12), now)
            .is_empty()
    );
    assert!(e.on_confirm("a", &confirm(X, 57, 3), now).is_empty());
    assert!(e.on_confirm("a", &confirm(X, 30, 0), now + 100).is_empty());
    // 6 of 60 now, 3 of 60 more than 2 s ago: only this one counts (7 would do).
    let later = now + 2_100;
    e.on_report(&report("a", later, &[(X, 5, 0)]), later);
    let out = e.on_confirm("a", &confirm(X, 54, 6), later);
    assert!(out.is_empty(), "6 of 60 is below the bound: {out:?}");
    let out = e.on_confirm("a", &confirm(X, 47, 13), later + 300);
    assert_eq!(
        names(&out),
        [("PathpulseLoss".to_string(), AlertState::Firing)]
    );
    let a = &out[0];
    assert_eq!(a.labels["dst"], X);
    // The value is the bursts' loss over the window (19 of 120), not the clean regular
    // probes'.
    assert!(a.value.is_some_and(|v| (0.155..0.16).contains(&v)), "{a:?}");
}

/// One path alone at 10 probes/s in 100 ms steps: a probe is decided 200 ms after it
/// was sent (the early decision takes about 150), reports every 500 ms, and a lost
/// probe's burst (bucket and all) arrives 400 ms after it was sent (suspected after
/// about 10 ms on a LAN, 60 probes 3 ms apart, the last decided about 55 ms later:
/// about 250 ms in all, so this is an upper bound). Over 60 seeded onsets of 20% loss the path
/// alert fires within 2 s in at least 57 (p95); 10 minutes of 1% background loss with
/// its bursts, five seeds, raise nothing.
#[test]
fn confirmation_bursts_bring_one_paths_alert_under_two_seconds() {
    use pathpulse_agent::probe::confirm::{BUCKET, REFILL};
    use rand::{Rng, SeedableRng};
    use std::collections::VecDeque;
    const X: &str = "192.0.2.1";
    // Seconds from the onset (after step `onset_at`) to the first alert, and the number
    // of alerts before it.
    let run = |seed: u64, onset_at: u64, p: f64, steps: u64| -> (Option<f64>, usize) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut e = engine();
        let (mut tokens, mut refilled) = (BUCKET, T0);
        let mut decisions: VecDeque<(u64, bool)> = VecDeque::new();
        let mut bursts: VecDeque<(u64, (u32, u32))> = VecDeque::new();
        let (mut rx, mut lost, mut early) = (0, 0, 0);
        for i in 1..=steps {
            let now = T0 + i * 100;
            let loss = if i > onset_at { p } else { 0.01 };
            let l = rng.random::<f64>() < loss;
            decisions.push_back((i + 2, l));
            while decisions.front().is_some_and(|d| d.0 <= i) {
                if let Some((_, l)) = decisions.pop_front() {
                    (rx, lost) = if l { (rx, lost + 1) } else { (rx + 1, lost) };
                }
            }
            if l {
                // Suspected 10 ms after it was sent; its burst is in 400 ms after the send.
                tokens = (tokens + (now - refilled) as f64 / REFILL.as_millis() as f64).min(BUCKET);
                refilled = now;
                if tokens >= 1.0 && bursts.is_empty() {
                    tokens -= 1.0;
                    bursts.push_back((i + 4, burst(&mut rng, loss)));
                }
            }
            let mut out = Vec::new();
            if i % 5 == 0 {
                let mut r = report("a", now, &[(X, rx, lost)]);
                (r.seq, r.interval_start_ms, r.interval_ms) = (i, now - 500, 500);
                out.extend(e.on_report(&r, now));
                (rx, lost) = (0, 0);
            }
            while bursts.front().is_some_and(|b| b.0 <= i) {
                if let Some((_, (brx, bl))) = bursts.pop_front() {
                    out.extend(e.on_confirm("a", &confirm(X, brx, bl), now));
                }
            }
            if i % 10 == 0 {
                out.extend(e.tick(now));
            }
            if out.iter().any(|a| a.state == AlertState::Firing) {
                if i > onset_at {
                    return (Some((i - onset_at) as f64 / 10.0), early);
                }
                early += 1;
            }
        }
        (None, early)
    };
    let mut times = Vec::new();
    for seed in 0..200 {
        let (t, early) = run(seed, 300, 0.2, 600);
        assert_eq!(early, 0, "seed {seed}: an alert before the onset");
        times.push(t.unwrap_or(f64::INFINITY));
    }
    times.sort_by(f64::total_cmp);
    let within = times.iter().filter(|&&t| t <= 2.0).count();
    println!(
        "one path, 20% loss with confirmation bursts, 200 onsets: median {} s, p95 {} s; {within} within 2 s",
        times[99], times[189]
    );
    assert!(within >= 190, "{times:?}");
    for seed in 100..105 {
        let (t, early) = run(seed, u64::MAX, 0.0, 6000);
        assert_eq!((t, early), (None, 0), "seed {seed}: 1% background raised");
    }
}

/// A confirmation message of one burst toward `dst` that says `others` of the agent's
/// bursts are still under way.
fn confirm_with(dst: &str, received: u32, lost: u32, others: u32) -> Confirm {
    let mut c = confirm(dst, received, lost);
    c.paths[0].others_under_way = others;
    c
}

/// Bursts say where, not only when: a lossy burst of one of an agent's five paths while
/// two more of its bursts are under way waits for them, and when three of the five lose
/// in their bursts the agent's own side is one alert (`PathpulseSourceLoss`), no path
/// alert. A lossy burst with nothing else under way is the path's alert at once; one that
/// waited fires as soon as the burst it waited for comes back clean.
#[test]
fn bursts_under_way_are_waited_for_so_an_agents_side_is_one_alert() {
    let warm = |e: &mut Engine| {
        let mut now = T0;
        for i in 1..=60u64 {
            now = T0 + i * 500;
            let paths: Vec<(&str, u32, u32)> = FIVE.iter().map(|d| (*d, 5, 0)).collect();
            let mut r = report("a", now, &paths);
            (r.seq, r.interval_start_ms, r.interval_ms) = (i, now - 500, 500);
            e.on_report(&r, now);
        }
        now
    };
    let mut e = engine();
    let now = warm(&mut e);
    assert!(
        e.on_confirm("a", &confirm_with(FIVE[0], 48, 12, 2), now + 10)
            .is_empty()
    );
    assert!(
        e.on_confirm("a", &confirm_with(FIVE[1], 47, 13, 1), now + 60)
            .is_empty()
    );
    let out = e.on_confirm("a", &confirm_with(FIVE[2], 46, 14, 0), now + 120);
    assert_eq!(
        names(&out),
        [("PathpulseSourceLoss".to_string(), AlertState::Firing)],
        "{out:?}"
    );
    assert_eq!(out[0].labels["src"], "a");
    assert!(
        e.firing()
            .iter()
            .all(|a| a.alertname == "PathpulseSourceLoss")
    );

    let mut e = engine();
    let now = warm(&mut e);
    let out = e.on_confirm("a", &confirm_with(FIVE[0], 48, 12, 0), now + 10);
    assert_eq!(
        names(&out),
        [("PathpulseLoss".to_string(), AlertState::Firing)],
        "nothing else under way: the path's alert at once"
    );

    let mut e = engine();
    let now = warm(&mut e);
    assert!(
        e.on_confirm("a", &confirm_with(FIVE[0], 48, 12, 1), now + 10)
            .is_empty()
    );
    let out = e.on_confirm("a", &confirm_with(FIVE[3], 30, 0, 0), now + 300);
    assert_eq!(
        names(&out),
        [("PathpulseLoss".to_string(), AlertState::Firing)],
        "the burst waited for was clean"
    );
    assert_eq!(out[0].labels["dst"], FIVE[0]);
}
