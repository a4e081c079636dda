//! The TCP-connect probe does not hold up other probes: in a namespace of its own, an agent
//! probes ICMP at 10/s beside TCP targets whose SYNs nftables drops (every connect runs
//! into its timeout) and beside a closed port (refused at once); ICMP keeps its rate, the
//! TCP paths report loss and never an RTT.

use std::time::{Duration, Instant};

use pathpulse_tests::lab::netns::Netns;
use pathpulse_tests::{
    Sample, bin, http_get, parse_metrics, require_program, require_root, wait_for,
};

use crate::setup::value;

/// Port whose SYNs are dropped (blackholed) and a port nothing listens on.
const BLACKHOLE: u16 = 7;
const CLOSED: u16 = 9;
const METRICS: u16 = 9469;

#[test]
fn tcp_timeouts_and_refusals_do_not_slow_icmp_beside_them() {
    let test = "tcp_timeouts_and_refusals_do_not_slow_icmp_beside_them";
    if !require_root(test) || !require_program(test, "nft") {
        return;
    }
    let _machine = crate::setup::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = Netns::new("tcpbh");
    for rule in [
        "add table inet bh".to_string(),
        "add chain inet bh out { type filter hook output priority 0 ; }".to_string(),
        format!("add rule inet bh out tcp dport {BLACKHOLE} counter drop"),
    ] {
        let args: Vec<&str> = rule.split(' ').collect();
        let (code, out) = ns.run("nft", &args);
        assert_eq!(code, 0, "nft {rule}: {out}");
    }
    let blackholed: Vec<String> = (1..=3)
        .map(|i| format!("127.0.0.{i}:{BLACKHOLE}"))
        .collect();
    let closed = format!("127.0.0.1:{CLOSED}");
    let metrics = format!("127.0.0.1:{METRICS}");
    let mut args = vec![
        "run",
        "--name",
        "tcp-bh",
        "--interval",
        "100ms",
        "--timeout",
        "1s",
        "--report-interval",
        "500ms",
        "--no-hops",
        "--metrics-listen",
        &metrics,
        "--target",
        "icmp:127.0.0.1",
    ];
    let specs: Vec<String> = blackholed
        .iter()
        .chain([&closed])
        .map(|d| format!("tcp:{d}"))
        .collect();
    for s in &specs {
        args.extend(["--target", s.as_str()]);
    }
    let mut a = ns.spawn("tcp-bh", &bin("pathpulse-agent"), &args, dir.path());
    let scrape = || -> Vec<Sample> {
        ns.enter(|| http_get(&format!("http://{metrics}/metrics")))
            .map(|t| parse_metrics(&t))
            .unwrap_or_default()
    };
    let count = |m: &[Sample], name: &str, d: &str, probe: &str| {
        value(m, name, &[("dst", d), ("probe", probe)]).unwrap_or(0.0)
    };
    // Every TCP path has lost probes to count (the blackholed ones after their 1 s timeout).
    let m = wait_for(Duration::from_secs(30), || {
        let m = scrape();
        blackholed
            .iter()
            .chain([&closed])
            .all(|d| count(&m, "pathpulse_probes_lost_total", d, "tcp") >= 10.0)
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("TCP paths not measured within 30 s\n{}", a.log()));
    assert_eq!(a.exited(), None, "agent exited:\n{}", a.log());
    for d in blackholed.iter().chain([&closed]) {
        for name in [
            "pathpulse_probes_received_total",
            "pathpulse_rtt_seconds_count",
        ] {
            assert_eq!(
                count(&m, name, d, "tcp"),
                0.0,
                "{name} {d}: a failure, not an RTT"
            );
        }
    }

    // ICMP in the same agent keeps its 10 probes per second meanwhile.
    let icmp = |m: &[Sample]| count(m, "pathpulse_probes_received_total", "127.0.0.1", "icmp");
    let blackholed_lost =
        |m: &[Sample]| count(m, "pathpulse_probes_lost_total", &blackholed[0], "tcp");
    let (t0, r0, l0) = (Instant::now(), icmp(&m), blackholed_lost(&m));
    std::thread::sleep(Duration::from_secs(4));
    let m = scrape();
    let secs = t0.elapsed().as_secs_f64();
    let rate = (icmp(&m) - r0) / secs;
    let tcp_rate = (blackholed_lost(&m) - l0) / secs;
    eprintln!("ICMP {rate:.1}/s, blackholed TCP lost {tcp_rate:.1}/s over {secs:.1} s");
    assert!(
        (7.0..=13.0).contains(&rate),
        "ICMP received {rate:.1}/s beside blackholed and refused TCP targets, 10/s configured"
    );
    // The blackholed connects keep their own schedule too (each times out, none waits).
    assert!(
        (7.0..=13.0).contains(&tcp_rate),
        "blackholed TCP lost {tcp_rate:.1}/s, 10/s configured"
    );
    // The SYNs really went into the blackhole.
    let (_, listing) = ns.run("nft", &["list", "chain", "inet", "bh", "out"]);
    let dropped: u64 = listing
        .split("packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped >= 30,
        "SYNs dropped by nftables: {dropped}\n{listing}"
    );
}
