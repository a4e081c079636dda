//! `pathpulse-aggregator demo`: metrics within 5 s, as root (ICMP and TCP) and as a user
//! without privileges (ICMP refused with the fix named, TCP probes still measured).

use std::time::{Duration, Instant};

use pathpulse_tests::{
    Proc, bin, free_port, http_get, parse_metrics, require_program, require_root, select, wait_for,
};

fn start_demo(name: &str, wrapper: &[&str], dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let demo = bin("pathpulse-aggregator");
    let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
    args.push(demo.to_str().expect("utf-8").into());
    args.extend(
        [
            "demo",
            "--no-gateway",
            "--http",
            &format!("127.0.0.1:{port}"),
        ]
        .map(String::from),
    );
    let (program, rest) = args.split_first().expect("program");
    let refs: Vec<&str> = rest.iter().map(String::as_str).collect();
    (
        Proc::start(name, std::path::Path::new(program), &refs, dir),
        port,
    )
}

#[test]
fn demo_shows_every_local_path_within_5_seconds() {
    if !require_root("demo_shows_every_local_path_within_5_seconds") {
        return;
    }
    let _machine = crate::setup::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let (demo, port) = start_demo("demo", &[], dir.path());
    let url = format!("http://127.0.0.1:{port}/metrics");
    let want = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"];
    let m = wait_for(Duration::from_secs(5), || {
        let m = parse_metrics(&http_get(&url).ok()?);
        want.iter()
            .all(|d| {
                select(
                    &m,
                    "pathpulse_rtt_seconds_count",
                    &[("dst", d), ("probe", "icmp")],
                )
                .iter()
                .any(|s| s.value > 0.0)
            })
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("demo paths not all measured within 5 s:\n{}", demo.log()));
    eprintln!(
        "demo: every ICMP path measured {:?} after start",
        started.elapsed()
    );
    assert_eq!(
        select(&m, "pathpulse_agent_up", &[]).len(),
        2,
        "two demo agents"
    );
    assert!(
        demo.log()
            .contains(&format!("http://127.0.0.1:{port}/metrics")),
        "URL printed:\n{}",
        demo.log()
    );
}

#[test]
fn demo_without_privileges_says_why_icmp_is_off_and_still_measures_tcp() {
    let test = "demo_without_privileges_says_why_icmp_is_off_and_still_measures_tcp";
    if !require_root(test) || !require_program(test, "setpriv") {
        return;
    }
    let _machine = crate::setup::shared();
    // Run as `nobody`, without capabilities; ping_group_range "1 0" refuses DGRAM ICMP too.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let (demo, port) = start_demo(
        "demo-unprivileged",
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
        dir.path(),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let m = wait_for(Duration::from_secs(10), || {
        let m = parse_metrics(&http_get(&url).ok()?);
        (select(&m, "pathpulse_rtt_seconds_count", &[("probe", "tcp")])
            .iter()
            .filter(|s| s.value > 0.0)
            .count()
            == 2)
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("unprivileged demo measured no TCP paths:\n{}", demo.log()));
    let log = demo.log();
    if std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
        .is_ok_and(|r| r.trim() == "1\t0" || r.trim() == "1 0")
    {
        assert!(
            log.contains("CAP_NET_RAW") && log.contains("ping_group_range"),
            "the fix is not named:\n{log}"
        );
        let icmp_samples: f64 = select(&m, "pathpulse_rtt_seconds_count", &[("probe", "icmp")])
            .iter()
            .map(|s| s.value)
            .sum();
        assert_eq!(icmp_samples, 0.0, "ICMP measured without privileges?");
    }
}
