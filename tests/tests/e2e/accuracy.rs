//! On loopback the agent's median RTT agrees with `ping`'s for the same target in the same
//! run. `ping` takes its receive time from the kernel but its send time in user space
//! before `sendmsg`, so its RTT includes the send syscall (on loopback the whole echo is
//! processed inside that syscall); pathpulse takes both from the kernel's software
//! timestamps at the device. So pathpulse must be no larger than ping, and the two may
//! differ only by the user-space send overhead (tolerance: 150 µs on the median).

use std::process::Command;
use std::time::Duration;

use pathpulse_tests::{
    Proc, bin, free_port, http_get, median, parse_metrics, require_program, require_root,
};

use crate::setup::value;

#[test]
fn median_rtt_agrees_with_ping_on_loopback() {
    let _serial = crate::lab::lab_lock();
    let test = "median_rtt_agrees_with_ping_on_loopback";
    if !require_root(test) || !require_program(test, "ping") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let target = "127.0.0.1";
    let agent = Proc::start(
        "agent",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "acc",
            "--target",
            target,
            "--interval",
            "50ms",
            "--report-interval",
            "1s",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ],
        dir.path(),
    );
    // Same path, same time: 200 pings at 50 ms (root may go below 200 ms).
    let out = Command::new("ping")
        .args(["-n", "-i", "0.05", "-c", "200", target])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let ping_ms: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        ping_ms.len() >= 190,
        "ping answered {} of 200:\n{text}",
        ping_ms.len()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let m = parse_metrics(
        &http_get(&format!("http://127.0.0.1:{port}/metrics")).expect("agent metrics"),
    );
    let ours = value(
        &m,
        "pathpulse_rtt_quantile_seconds",
        &[("dst", target), ("quantile", "0.5"), ("window", "1m")],
    )
    .unwrap_or_else(|| panic!("no p50 from the agent:\n{}", agent.log()));
    let theirs = median(&ping_ms) / 1000.0;
    let ratio = ours / theirs;
    eprintln!(
        "loopback median RTT: pathpulse {:.1} us, ping {:.1} us, ratio {ratio:.2}",
        ours * 1e6,
        theirs * 1e6
    );
    assert!(
        ours > 0.0 && ours <= theirs * 1.05,
        "pathpulse median {ours} s above ping's {theirs} s: user-space stamps?"
    );
    assert!(
        theirs - ours < 150e-6,
        "pathpulse median {ours} s vs ping {theirs} s: differ by more than the send overhead"
    );
}
