//! Hop discovery on the ISP chain of LAB.md (home → cpe → isp → transit → anchor), with
//! real routers (namespaces) answering TTL-limited probes: the agent finds every hop with
//! its role, places loss injected between the ISP and transit at the transit hop and
//! beyond (not before), and tells a router that rate-limits its ICMP answers from path loss.

use std::time::Duration;

use pathpulse_tests::lab::impair::{Impairment, Loss};
use pathpulse_tests::lab::topo::Topo;
use pathpulse_tests::{Proc, Sample, bin, parse_metrics, require_root, wait_for};

use crate::setup::value;

const PORT: u16 = 9469;

fn metrics(topo: &Topo) -> Vec<Sample> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{PORT} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    parse_metrics(&topo.ns("home").run("bash", &["-c", &script]).1)
}

/// An agent in `home` probing the anchor every 250 ms (hops once a second), own /metrics.
fn agent_at_home(chain: &Topo, dir: &std::path::Path, isp: &str) -> Proc {
    let anchor = chain.addr("anchor", "transit");
    chain.ns("home").spawn(
        "agent",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "home",
            "--isp",
            isp,
            "--target",
            &anchor,
            "--interval",
            "250ms",
            "--timeout",
            "1s",
            "--report-interval",
            "1s",
            "--metrics-listen",
            &format!("127.0.0.1:{PORT}"),
        ],
        dir,
    )
}

/// Current localization verdicts: (scope, suspect).
fn verdicts(m: &[Sample]) -> Vec<(String, String)> {
    pathpulse_tests::select(m, "pathpulse_fault_verdict", &[])
        .into_iter()
        .map(|s| (s.labels["scope"].clone(), s.labels["suspect"].clone()))
        .collect()
}

fn hop<'a>(m: &'a [Sample], name: &str, ttl: &str, extra: &[(&str, &str)]) -> Option<&'a Sample> {
    let mut want = vec![("hop", ttl)];
    want.extend_from_slice(extra);
    pathpulse_tests::select(m, name, &want).into_iter().next()
}

#[test]
fn lab_hops_have_roles_and_loss_is_placed_at_the_right_hop() {
    let _serial = crate::lab::lab_lock();
    if !require_root("lab_hops_have_roles_and_loss_is_placed_at_the_right_hop") {
        return;
    }
    // 40% loss from the ISP edge toward transit (and so toward the anchor); nothing back.
    let lossy = Impairment {
        loss: Loss::Bernoulli { p: 0.4 },
        ..Impairment::default()
    };
    let chain = Topo::isp_chain(&[("isp", lossy, Impairment::default())], 11);
    // Routers answer every TTL-expired probe, except the CPE, which rate-limits its ICMP
    // errors to one per 2.5 s per destination (after a burst of 6; Linux's default is 1 s).
    for r in ["isp", "transit"] {
        chain
            .ns(r)
            .run("sysctl", &["-qw", "net.ipv4.icmp_ratelimit=0"]);
    }
    chain
        .ns("cpe")
        .run("sysctl", &["-qw", "net.ipv4.icmp_ratelimit=2500"]);
    let anchor = chain.addr("anchor", "transit");
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_at_home(&chain, dir.path(), "isp-x");
    // All four hops known with their roles.
    let expect = [
        ("1", chain.addr("cpe", "home"), "cpe"),
        ("2", chain.addr("isp", "cpe"), "isp"),
        ("3", chain.addr("transit", "isp"), "transit"),
        ("4", anchor.clone(), "target"),
    ];
    let found = wait_for(Duration::from_secs(20), || {
        let m = metrics(&chain);
        expect
            .iter()
            .all(|(ttl, addr, role)| {
                hop(
                    &m,
                    "pathpulse_hop_probes_sent_total",
                    ttl,
                    &[("hop_addr", addr), ("role", role)],
                )
                .is_some()
            })
            .then_some(())
    });
    assert!(
        found.is_some(),
        "hops not found as {expect:?}:\n{}\n{}",
        metrics(&chain)
            .iter()
            .filter(|s| s.name.starts_with("pathpulse_hop_probes_sent"))
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join("\n"),
        agent.log()
    );
    // A minute of probes: about 60 per hop.
    std::thread::sleep(Duration::from_secs(45));
    let m = metrics(&chain);
    let loss = |ttl: &str| {
        hop(&m, "pathpulse_hop_loss_ratio", ttl, &[("window", "1m")])
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no loss for hop {ttl}"))
    };
    let limited = |ttl: &str| {
        hop(&m, "pathpulse_hop_icmp_ratelimited", ttl, &[])
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no rate-limit verdict for hop {ttl}"))
    };
    let sent = |ttl: &str| {
        hop(&m, "pathpulse_hop_probes_sent_total", ttl, &[])
            .map(|s| s.value)
            .unwrap_or(0.0)
    };
    let path_loss = value(&m, "pathpulse_loss_ratio", &[("window", "1m")]).expect("path loss");
    eprintln!(
        "hop loss (1m): cpe {:.2}, isp {:.2}, transit {:.2}, target {:.2}; path {path_loss:.3}; probes sent {} {} {} {}; rate-limited {} {} {} {}",
        loss("1"),
        loss("2"),
        loss("3"),
        loss("4"),
        sent("1"),
        sent("2"),
        sent("3"),
        sent("4"),
        limited("1"),
        limited("2"),
        limited("3"),
        limited("4"),
    );
    // ~45 probes per hop at 40% loss: the 99.9% binomial range is about 0.18..0.62.
    assert_eq!(
        loss("2"),
        0.0,
        "nothing is lost before the ISP edge's far side"
    );
    for ttl in ["3", "4"] {
        assert!(
            (0.15..=0.65).contains(&loss(ttl)),
            "hop {ttl}: {}",
            loss(ttl)
        );
    }
    // ~230 path probes: 0.40 ± 0.09 at 99.9%.
    assert!((0.31..=0.49).contains(&path_loss), "path loss {path_loss}");
    // The CPE answers about 0.4 of its probes (its rate limit), yet nothing is lost there:
    // the later hops do not lose more than the ISP edge. A rate-limiting router, not loss.
    assert!(
        loss("1") >= 0.3,
        "the CPE's rate limit shows as loss: {}",
        loss("1")
    );
    assert_eq!(limited("1"), 1.0, "the CPE is rate-limiting");
    for ttl in ["2", "3", "4"] {
        assert_eq!(limited(ttl), 0.0, "hop {ttl} is not rate-limiting");
    }
    assert_eq!(
        value(&m, "pathpulse_path_changes_total", &[]),
        Some(0.0),
        "a stable route has no changes"
    );
    // Where: from the transit router on (the CPE's rate limit is not loss).
    let transit = chain.addr("transit", "isp");
    assert_eq!(
        verdicts(&m),
        vec![("transit".to_string(), transit)],
        "localization"
    );
}

/// Loss between the CPE and the ISP edge is the ISP's; loss between the home and its CPE
/// is the LAN's. Two chains side by side (each in its own namespaces), one agent in each.
#[test]
fn lab_loss_at_the_isp_edge_blames_the_isp_and_at_the_cpe_the_lan() {
    let _serial = crate::lab::lab_lock();
    if !require_root("lab_loss_at_the_isp_edge_blames_the_isp_and_at_the_cpe_the_lan") {
        return;
    }
    let lossy = Impairment {
        loss: Loss::Bernoulli { p: 0.3 },
        ..Impairment::default()
    };
    let clean = Impairment::default();
    let isp_chain = Topo::isp_chain(&[("cpe", lossy, clean)], 12);
    let lan_chain = Topo::isp_chain(&[("home", lossy, clean)], 13);
    for chain in [&isp_chain, &lan_chain] {
        for r in ["cpe", "isp", "transit"] {
            chain
                .ns(r)
                .run("sysctl", &["-qw", "net.ipv4.icmp_ratelimit=0"]);
        }
    }
    let (d1, d2) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a1 = agent_at_home(&isp_chain, d1.path(), "isp-x");
    let a2 = agent_at_home(&lan_chain, d2.path(), "isp-x");
    std::thread::sleep(Duration::from_secs(40));
    let (m1, m2) = (metrics(&isp_chain), metrics(&lan_chain));
    let hop_loss = |m: &[Sample]| {
        pathpulse_tests::select(m, "pathpulse_hop_loss_ratio", &[("window", "1m")])
            .iter()
            .map(|s| format!("{}={:.2}", s.labels["role"], s.value))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "verdicts: cpe-isp loss {:?} (hops {}); home-cpe loss {:?} (hops {})",
        verdicts(&m1),
        hop_loss(&m1),
        verdicts(&m2),
        hop_loss(&m2)
    );
    assert_eq!(
        verdicts(&m1),
        vec![("isp".to_string(), "isp-x".to_string())],
        "loss from the ISP edge on:\n{}",
        a1.log()
    );
    assert_eq!(
        verdicts(&m2),
        vec![("lan".to_string(), "home".to_string())],
        "loss from the CPE on:\n{}",
        a2.log()
    );
}
