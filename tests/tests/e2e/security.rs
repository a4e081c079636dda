//! Who gets in: an agent whose certificate comes from another CA is refused and counted;
//! an agent claiming another name than its certificate's is refused and counted.

use std::time::Duration;

use pathpulse_tests::{bin, run, wait_for};

use crate::setup::{Deployment, value};

#[test]
fn agent_with_a_foreign_ca_is_refused_and_counted() {
    let d = Deployment::start();
    let other_ca = d.dir.path().join("rogue-aggregator");
    let rogue = d.issue("rogue", &other_ca);
    let good = d.issue("good", &d.state());
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let _r = d.agent("rogue", &rogue, &[&target], &[]);
    let _g = d.agent("good", &good, &[&target], &[]);
    // Wait for the refusal to be counted (the handshake is refused after the client thinks
    // it connected, so only the server's count and the closed connection show it).
    let m = wait_for(Duration::from_secs(20), || {
        let m = d.metrics();
        let refused = value(
            &m,
            "pathpulse_ingest_refused_total",
            &[("reason", "certificate")],
        )
        .unwrap_or(0.0);
        let good_in = value(&m, "pathpulse_agent_up", &[("agent", "good")]).is_some();
        (refused >= 1.0 && good_in).then_some(m)
    })
    .expect("refusal counted and the good agent accepted");
    assert!(
        value(&m, "pathpulse_agent_up", &[("agent", "rogue")]).is_none(),
        "rogue agent must not appear"
    );
    assert!(
        pathpulse_tests::select(&m, "pathpulse_probes_sent_total", &[("src", "rogue")]).is_empty()
    );
    // A clear error on both sides: the aggregator names the refused certificate, the agent
    // says its uplink is down and why.
    let agg_log = d.aggregator.as_ref().expect("aggregator").log();
    assert!(
        agg_log.contains("handshake refused") && agg_log.contains("certificate"),
        "aggregator log:\n{agg_log}"
    );
    let rogue_log = wait_for(Duration::from_secs(10), || {
        let l = _r.log();
        l.contains("uplink down").then_some(l)
    })
    .unwrap_or_else(|| panic!("rogue agent log:\n{}", _r.log()));
    assert!(
        rogue_log.contains("certificate") || rogue_log.contains("UnknownIssuer"),
        "the rogue agent's error names the certificate:\n{rogue_log}"
    );
}

/// An agent whose certificate has expired is refused at the handshake, counted, and says
/// why in its own log.
#[test]
fn agent_with_an_expired_certificate_is_refused_and_counted() {
    let d = Deployment::start();
    let agent_state = d.dir.path().join("stale");
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "cert",
            "issue",
            "--name",
            "stale",
            "--out",
            agent_state.join("identity").to_str().expect("utf-8"),
            "--valid-for",
            "1s",
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    std::thread::sleep(Duration::from_secs(2));
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let a = d.agent("stale", &agent_state, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        (value(
            &d.metrics(),
            "pathpulse_ingest_refused_total",
            &[("reason", "certificate")],
        )
        .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "expired certificate refused and counted; agent log:\n{}",
            a.log()
        )
    });
    assert!(value(&d.metrics(), "pathpulse_agent_up", &[("agent", "stale")]).is_none());
    let agg_log = d.aggregator.as_ref().expect("aggregator").log();
    assert!(
        agg_log.contains("handshake refused") && agg_log.to_lowercase().contains("expired"),
        "the aggregator names the expiry:\n{agg_log}"
    );
    let log = wait_for(Duration::from_secs(10), || {
        let l = a.log();
        l.contains("uplink down").then_some(l)
    })
    .unwrap_or_else(|| panic!("agent log:\n{}", a.log()));
    let down = log
        .lines()
        .find(|l| l.contains("uplink down"))
        .unwrap_or("");
    println!("the agent's error: {down}");
    assert!(
        down.to_lowercase().contains("expired") || down.contains("certificate"),
        "the agent's error says why:\n{log}"
    );
}

#[test]
fn agent_reporting_under_another_name_is_refused() {
    let d = Deployment::start();
    let state = d.issue("honest", &d.state());
    let target = format!("tcp:127.0.0.1:{}", d.http);
    // Certificate says `honest`, the agent calls itself `impostor`.
    let _a = d.agent("impostor", &state, &[&target], &[]);
    let m = wait_for(Duration::from_secs(20), || {
        let m = d.metrics();
        (value(
            &m,
            "pathpulse_ingest_refused_total",
            &[("reason", "wrong_identity")],
        )
        .unwrap_or(0.0)
            >= 1.0)
            .then_some(m)
    })
    .expect("wrong identity refused and counted");
    assert!(
        pathpulse_tests::select(&m, "pathpulse_probes_sent_total", &[("src", "impostor")])
            .is_empty()
    );
    assert!(
        pathpulse_tests::select(&m, "pathpulse_probes_sent_total", &[("src", "honest")]).is_empty()
    );
}

#[test]
fn agent_without_identity_exits_78_naming_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "x",
            "--aggregator",
            "127.0.0.1:9",
            "--target",
            "tcp:127.0.0.1:9",
            "--state-dir",
            dir.path().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains("state_dir") && text.contains("cert issue"),
        "{text}"
    );
}
