//! SIGHUP reloads a standalone agent's targets from its file: a target that stays keeps
//! its counters, a new one appears, a removed one leaves `/metrics`; a broken file is
//! refused, logged, and the running targets go on.

use std::time::Duration;

use nix::sys::signal::Signal;
use pathpulse_tests::{Proc, Sample, bin, free_port, http_get, parse_metrics, wait_for};

use crate::setup::{shared, value};

fn config(targets: &[&str], listen: &str) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "name = \"r1\"\ntargets = [{}]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nreport_interval = \"500ms\"\nmetrics_listen = \"{listen}\"\n",
        list.join(", ")
    )
}

fn sent(m: &[Sample], dst: &str, probe: &str) -> Option<f64> {
    value(
        m,
        "pathpulse_probes_sent_total",
        &[("dst", dst), ("probe", probe)],
    )
}

/// Probes sent plus probes that could not be sent (ICMP without root).
fn attempts(m: &[Sample], dst: &str, probe: &str) -> Option<f64> {
    let l = [("dst", dst), ("probe", probe)];
    Some(sent(m, dst, probe)? + value(m, "pathpulse_send_errors_total", &l)?)
}

fn has_path(m: &[Sample], dst: &str) -> bool {
    m.iter()
        .any(|s| s.labels.get("dst").is_some_and(|d| d == dst))
}

#[test]
fn sighup_reloads_targets_keeping_state() {
    let _machine = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}/metrics");
    // Kept: the agent's own /metrics port (TCP) and 127.0.0.1 (ICMP: answered as root,
    // send errors otherwise; its counters count either way). Removed and added: one each.
    let kept_tcp = listen.clone();
    let removed = format!("127.0.0.1:{}", free_port());
    let added = format!("127.0.0.1:{}", free_port());
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        config(
            &[
                &format!("tcp:{kept_tcp}"),
                "127.0.0.1",
                &format!("tcp:{removed}"),
            ],
            &listen,
        ),
    )
    .expect("write config");
    let mut agent = Proc::start(
        "agent",
        &bin("pathpulse-agent"),
        &["run", "--config", file.to_str().expect("utf-8")],
        dir.path(),
    );
    let metrics = || http_get(&url).ok().map(|t| parse_metrics(&t));
    let before = wait_for(Duration::from_secs(20), || {
        let m = metrics()?;
        (sent(&m, &kept_tcp, "tcp")? >= 20.0
            && sent(&m, &removed, "tcp")? > 0.0
            && attempts(&m, "127.0.0.1", "icmp")? > 0.0)
            .then_some(m)
    })
    .expect("first targets measured");
    let kept_before = sent(&before, &kept_tcp, "tcp").expect("kept tcp");
    let icmp_before = attempts(&before, "127.0.0.1", "icmp").expect("kept icmp");

    // Reload: one target removed, one added, two kept.
    std::fs::write(
        &file,
        config(
            &[
                &format!("tcp:{added}"),
                "127.0.0.1",
                &format!("tcp:{kept_tcp}"),
            ],
            &listen,
        ),
    )
    .expect("rewrite config");
    agent.signal(Signal::SIGHUP);
    let after = wait_for(Duration::from_secs(15), || {
        let m = metrics()?;
        (sent(&m, &added, "tcp")? > 0.0 && !has_path(&m, &removed)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "after SIGHUP: {added} not measured or {removed} still exported:\n{}",
            http_get(&url).unwrap_or_default()
        )
    });
    let kept_after = sent(&after, &kept_tcp, "tcp").expect("kept tcp after reload");
    let icmp_after = attempts(&after, "127.0.0.1", "icmp").expect("kept icmp after reload");
    assert!(
        kept_after >= kept_before && icmp_after >= icmp_before,
        "counters of kept targets reset: tcp {kept_before} -> {kept_after}, icmp {icmp_before} -> {icmp_after}"
    );
    let log = agent.log();
    assert!(
        log.contains("targets reloaded")
            && log.contains(&format!("added=[\"tcp:{added}\"]"))
            && log.contains(&format!("removed=[\"tcp:{removed}\"]"))
            && log.contains("kept=2"),
        "reload not logged as it happened:\n{log}"
    );

    // A broken file: refused, logged with the key, the running targets go on.
    std::fs::write(
        &file,
        format!("{}intervall = \"1s\"\n", config(&["tcp:nonsense"], &listen)),
    )
    .expect("break config");
    agent.signal(Signal::SIGHUP);
    let refused = wait_for(Duration::from_secs(10), || {
        agent.log().contains("reload refused").then_some(())
    });
    assert!(
        refused.is_some(),
        "broken file not refused:\n{}",
        agent.log()
    );
    assert!(agent.log().contains("intervall"), "{}", agent.log());
    assert_eq!(agent.exited(), None, "the agent must keep running");
    let still = wait_for(Duration::from_secs(10), || {
        let m = metrics()?;
        (sent(&m, &added, "tcp")? > sent(&after, &added, "tcp")? + 5.0
            && sent(&m, &kept_tcp, "tcp")? > kept_after
            && !has_path(&m, "nonsense"))
        .then_some(())
    });
    assert!(
        still.is_some(),
        "after a refused reload the running targets must go on:\n{}",
        http_get(&url).unwrap_or_default()
    );
    assert_eq!(agent.stop(), Some(0));
}
