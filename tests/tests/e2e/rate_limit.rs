//! Per-agent rate limits with the real aggregator: a sender far over its report rate and
//! one reconnecting far too often are refused with `rate_limited` and counted, while a
//! real agent at its normal rate on the same aggregator is never limited and is counted
//! exactly.

use std::time::Duration;

use pathpulse_tests::{bin, http_get, parse_metrics, run, wait_for};

use crate::setup::{Deployment, value};

const LIMITS: &str = "[rate_limit]\nreports_per_second = 4\nreport_burst = 8\nregistrations_per_minute = 6\nregistration_burst = 3\n";

fn loadgen(d: &Deployment, extra: &[&str]) -> String {
    let state = d.state();
    let agg = format!("127.0.0.1:{}", d.quic);
    let mut args = vec![
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--aggregator",
        &agg,
        "--agents",
        "1",
        "--paths",
        "1",
        "--warmup-s",
        "0",
        "--duration-s",
        "3",
    ];
    args.extend_from_slice(extra);
    let (code, text) = run(&bin("pathpulse-loadgen"), &args);
    assert_eq!(code, 0, "{text}");
    text
}

fn number_after(text: &str, key: &str) -> u64 {
    text.split(key)
        .nth(1)
        .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{key}` in: {text}"))
}

fn rate_limited(d: &Deployment) -> f64 {
    value(
        &d.metrics(),
        "pathpulse_ingest_refused_total",
        &[("reason", "rate_limited")],
    )
    .unwrap_or(-1.0)
}

#[test]
fn senders_over_their_rate_are_refused_and_counted_and_a_normal_agent_never_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("limits.toml");
    std::fs::write(&cfg, LIMITS).expect("write");
    let d = Deployment::start_with(&["--config", cfg.to_str().expect("utf-8")]);
    assert_eq!(
        rate_limited(&d),
        0.0,
        "the reason is exported from the start"
    );
    // A real agent at 2 reports/s, under the limit of 4/s.
    let port = pathpulse_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let state = d.issue("rl-good", &d.state());
    let agent = d.agent(
        "rl-good",
        &state,
        &["tcp:127.0.0.1:9"],
        &["--metrics-listen", &listen],
    );
    wait_for(Duration::from_secs(20), || {
        (value(
            &d.metrics(),
            "pathpulse_probes_sent_total",
            &[("src", "rl-good")],
        )? >= 10.0)
            .then_some(())
    })
    .expect("the normal agent reports");

    // 100 reports/s on one connection: past the burst of 8, refused.
    let out = loadgen(&d, &["--interval-ms", "10"]);
    assert!(number_after(&out, "refused:") >= 1, "{out}");
    let after_reports = rate_limited(&d);
    assert!(after_reports >= 1.0, "counted: {after_reports}");

    // Reconnecting every 50 ms: past the 3 registrations at once, refused.
    let out = loadgen(&d, &["--churn-ms", "50", "--interval-ms", "1000"]);
    let (conns, refused) = (
        number_after(&out, "connections:"),
        number_after(&out, "refused:"),
    );
    assert!(conns >= 10 && refused >= conns - 5, "{out}");
    assert!(rate_limited(&d) >= after_reports + 5.0);

    // The normal agent: never limited, counted exactly (its own count at one instant).
    std::thread::sleep(Duration::from_secs(2));
    let exact = wait_for(Duration::from_secs(20), || {
        let own = |m: &[pathpulse_tests::Sample]| {
            value(m, "pathpulse_probes_sent_total", &[("src", "rl-good")])
        };
        let scrape = || parse_metrics(&http_get(&format!("http://{listen}/metrics")).ok()?).into();
        let a1: Option<Vec<_>> = scrape();
        let agg = own(&d.metrics());
        let a2: Option<Vec<_>> = scrape();
        let (a1, a2) = (own(&a1?)?, own(&a2?)?);
        (a1 == a2 && agg == Some(a1)).then_some(a1)
    });
    assert!(
        exact.is_some(),
        "the normal agent's counts never matched; log:\n{}",
        agent.log()
    );
    assert!(!agent.log().contains("rate_limited"), "{}", agent.log());
}

#[test]
fn a_replay_over_the_report_limit_is_slowed_down_not_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("limits.toml");
    std::fs::write(
        &cfg,
        "[rate_limit]\nreports_per_second = 10\nreport_burst = 4\n",
    )
    .expect("write");
    let mut d = Deployment::start_with(&["--config", cfg.to_str().expect("utf-8")]);
    let port = pathpulse_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let state = d.issue("rl-replay", &d.state());
    let agent = d.agent(
        "rl-replay",
        &state,
        &["tcp:127.0.0.1:9"],
        &["--metrics-listen", &listen],
    );
    let sent = |m: &[pathpulse_tests::Sample]| {
        value(m, "pathpulse_probes_sent_total", &[("src", "rl-replay")])
    };
    wait_for(Duration::from_secs(20), || {
        (sent(&d.metrics())? >= 5.0).then_some(())
    })
    .expect("reporting");
    // Down for a while at 2 reports/s: many more reports spooled than the burst of 4.
    d.aggregator.as_mut().expect("aggregator").kill9();
    std::thread::sleep(Duration::from_secs(6));
    d.start_aggregator();
    let own = || {
        sent(&parse_metrics(
            &http_get(&format!("http://{listen}/metrics")).ok()?,
        ))
    };
    let exact = wait_for(Duration::from_secs(60), || {
        let (a1, agg, a2) = (own()?, sent(&d.metrics())?, own()?);
        (a1 == a2 && agg == a1).then_some(())
    });
    assert!(exact.is_some(), "never exact; log:\n{}", agent.log());
    assert!(rate_limited(&d) >= 1.0, "the replay hit the limit");
    assert!(
        agent.log().contains("rate_limited") && !agent.log().contains("removed from the spool"),
        "refused reports were kept:\n{}",
        agent.log()
    );
}
