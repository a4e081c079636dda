//! Aggregator plus two agents on loopback with real certificates: every path has samples
//! and the probe accounting adds up exactly (sent = received + lost + in flight).

use std::time::Duration;

use pathpulse_tests::{Sample, require_root, wait_for};

use crate::setup::{Deployment, value};

/// Every (src, dst) has at least `n` RTT samples; returns the scrape.
fn all_paths_sampled(d: &Deployment, paths: &[(&str, &str)], n: f64) -> Option<Vec<Sample>> {
    let m = d.metrics();
    paths
        .iter()
        .all(|(src, dst)| {
            value(
                &m,
                "pathpulse_rtt_seconds_count",
                &[("src", src), ("dst", dst)],
            )
            .is_some_and(|c| c >= n)
        })
        .then_some(m)
}

fn assert_accounting(m: &[Sample], paths: &[(&str, &str)]) {
    for (src, dst) in paths {
        let l = [("src", *src), ("dst", *dst)];
        let get = |name: &str| {
            value(m, name, &l).unwrap_or_else(|| panic!("{name} missing for {src} -> {dst}"))
        };
        let (sent, recv, lost, inflight) = (
            get("pathpulse_probes_sent_total"),
            get("pathpulse_probes_received_total"),
            get("pathpulse_probes_lost_total"),
            get("pathpulse_probes_in_flight"),
        );
        assert_eq!(
            sent,
            recv + lost + inflight,
            "{src} -> {dst}: sent {sent} != received {recv} + lost {lost} + in flight {inflight}"
        );
        assert_eq!(
            get("pathpulse_rtt_seconds_count"),
            recv,
            "{src} -> {dst}: one RTT sample per reply"
        );
        assert!(
            lost <= sent * 0.01,
            "{src} -> {dst}: {lost} of {sent} lost on loopback"
        );
        let p50 = value(
            m,
            "pathpulse_rtt_quantile_seconds",
            &[
                ("src", src),
                ("dst", dst),
                ("quantile", "0.5"),
                ("window", "1m"),
            ],
        )
        .unwrap_or_else(|| panic!("no 1m p50 for {src} -> {dst}"));
        assert!(
            p50 > 0.0 && p50 < 0.05,
            "{src} -> {dst}: loopback p50 {p50} s"
        );
    }
}

#[test]
fn two_agents_report_icmp_paths_over_quic_with_exact_accounting() {
    if !require_root("two_agents_report_icmp_paths_over_quic_with_exact_accounting") {
        return;
    }
    let d = Deployment::start();
    let (sa, sb) = (
        d.issue("agent-a", &d.state()),
        d.issue("agent-b", &d.state()),
    );
    let _a = d.agent("agent-a", &sa, &["127.0.0.10", "127.0.0.11"], &[]);
    let _b = d.agent("agent-b", &sb, &["127.0.0.12", "::1"], &[]);
    let paths = [
        ("agent-a", "127.0.0.10"),
        ("agent-a", "127.0.0.11"),
        ("agent-b", "127.0.0.12"),
        ("agent-b", "::1"),
    ];
    let m = wait_for(Duration::from_secs(30), || {
        all_paths_sampled(&d, &paths, 20.0)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every path got 20 samples within 30 s:\n{}",
            pathpulse_tests::http_get(&d.url("/metrics")).unwrap_or_default()
        )
    });
    assert_accounting(&m, &paths);
    for a in ["agent-a", "agent-b"] {
        assert_eq!(
            value(&m, "pathpulse_agent_up", &[("agent", a)]),
            Some(1.0),
            "{a} up"
        );
    }
}

#[test]
fn tcp_probes_work_without_privileges_and_add_up() {
    // TCP connect probes need no privilege: this runs for every user.
    let d = Deployment::start();
    let sa = d.issue("agent-t", &d.state());
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let closed = format!("tcp:127.0.0.1:{}", pathpulse_tests::free_port());
    let _a = d.agent("agent-t", &sa, &[&target, &closed], &[]);
    let dst_open = format!("127.0.0.1:{}", d.http);
    let dst_closed = closed.trim_start_matches("tcp:").to_string();
    let m = wait_for(Duration::from_secs(30), || {
        let m = d.metrics();
        let ok = value(
            &m,
            "pathpulse_rtt_seconds_count",
            &[("dst", &dst_open), ("probe", "tcp")],
        )
        .is_some_and(|c| c >= 10.0)
            && value(&m, "pathpulse_probes_lost_total", &[("dst", &dst_closed)])
                .is_some_and(|c| c >= 10.0);
        ok.then_some(m)
    })
    .expect("tcp paths measured within 30 s");
    assert_accounting(&m, &[("agent-t", &dst_open)]);
    let recv_closed = value(
        &m,
        "pathpulse_probes_received_total",
        &[("dst", &dst_closed)],
    );
    assert_eq!(recv_closed, Some(0.0), "a closed port never answers");
}

#[test]
fn agent_reconnects_after_an_aggregator_outage_and_replays_what_was_not_acknowledged() {
    let mut d = Deployment::start();
    let sa = d.issue("agent-r", &d.state());
    // A target that stays up while the aggregator is down: a listener accepting and closing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let target = format!("tcp:127.0.0.1:{port}");
    let dst = format!("127.0.0.1:{port}");
    let agent = d.agent("agent-r", &sa, &[&target], &[]);
    wait_for(Duration::from_secs(20), || {
        value(
            &d.metrics(),
            "pathpulse_probes_sent_total",
            &[("src", "agent-r")],
        )
        .filter(|s| *s >= 10.0)
    })
    .expect("agent reporting");
    // Stop the aggregator for 4 s: the agent keeps probing and keeps its reports.
    let _ = d.aggregator.take().map(|mut p| p.stop());
    std::thread::sleep(Duration::from_secs(4));
    d.start_aggregator();
    // The restarted aggregator restores its counters; the agent reconnects (backoff) and replays the
    // reports of the outage, so the new aggregator sees at least the outage's probes
    // (4 s at 10 probes/s), with exact accounting.
    let m = wait_for(Duration::from_secs(30), || {
        let m = d.metrics();
        value(&m, "pathpulse_probes_sent_total", &[("src", "agent-r")])
            .filter(|s| *s >= 35.0)
            .map(|_| m)
    })
    .unwrap_or_else(|| panic!("no replay after the outage; agent log:\n{}", agent.log()));
    assert_accounting(&m, &[("agent-r", &dst)]);
    assert!(
        agent.log().contains("uplink down"),
        "the outage was logged:\n{}",
        agent.log()
    );
}
