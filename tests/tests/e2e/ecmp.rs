//! ECMP spreading in the lab: two equal-cost routes between namespaces, the sender's kernel
//! hashing on ports (`fib_multipath_hash_policy=1`), and every STAMP packet arriving over
//! the second path dropped. A target probed from one source port sees all or nothing of
//! that loss; one with `ecmp=16` sees the share of its ports that hash onto the bad path:
//! partial loss at a multiple of 1/16.

use std::time::Duration;

use pathpulse_tests::lab::netns::{Netns, ip, unique};
use pathpulse_tests::{bin, free_port, http_get, parse_metrics, wait_for};

use crate::setup::value;

const PORTS: f64 = 16.0;

#[test]
fn ecmp_spreading_shows_one_bad_path_as_partial_loss() {
    let test = "ecmp_spreading_shows_one_bad_path_as_partial_loss";
    if !pathpulse_tests::require_root(test) || !pathpulse_tests::require_program(test, "nft") {
        return;
    }
    let _machine = crate::setup::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (Netns::new("ea"), Netns::new("eb"));
    let (p1, q1, p2, q2) = (unique("p1"), unique("q1"), unique("p2"), unique("q2"));
    for (x, y) in [(&p1, &q1), (&p2, &q2)] {
        ip(&["link", "add", x, "type", "veth", "peer", "name", y]);
        ip(&["link", "set", x, "netns", &a.name]);
        ip(&["link", "set", y, "netns", &b.name]);
    }
    for (ns, dev, addr) in [
        (&a, &p1, "10.81.1.1/24"),
        (&b, &q1, "10.81.1.2/24"),
        (&a, &p2, "10.81.2.1/24"),
        (&b, &q2, "10.81.2.2/24"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    a.ip(&["addr", "add", "10.98.0.1/32", "dev", "lo"]);
    b.ip(&["addr", "add", "10.99.0.2/32", "dev", "lo"]);
    // Two equal-cost next hops toward the reflector, chosen by a hash over addresses and
    // ports; one way back.
    let (code, out) = a.run("sysctl", &["-w", "net.ipv4.fib_multipath_hash_policy=1"]);
    assert_eq!(code, 0, "sysctl: {out}");
    a.ip(&[
        "route",
        "add",
        "10.99.0.2/32",
        "src",
        "10.98.0.1",
        "nexthop",
        "via",
        "10.81.1.2",
        "dev",
        &p1,
        "nexthop",
        "via",
        "10.81.2.2",
        "dev",
        &p2,
    ]);
    b.ip(&[
        "route",
        "add",
        "10.98.0.1/32",
        "via",
        "10.81.1.1",
        "dev",
        &q1,
    ]);
    // Packets from 10.98.0.1 arrive over q2 although the way back is q1.
    for key in ["all", "default", q2.as_str()] {
        let (code, out) = b.run(
            "sysctl",
            &["-w", &format!("net.ipv4.conf.{key}.rp_filter=0")],
        );
        assert_eq!(code, 0, "sysctl: {out}");
    }
    // The bad path: every STAMP packet that comes in over q2 is dropped.
    let nft = format!(
        "add table inet bad; add chain inet bad in {{ type filter hook input priority 0; policy accept; }}; \
         add rule inet bad in iifname \"{q2}\" udp dport 862 counter drop"
    );
    let (code, out) = b.run("nft", &[&nft]);
    assert_eq!(code, 0, "nft: {out}");

    let reflector_metrics = format!("127.0.0.1:{}", free_port());
    let mut reflector = b.spawn(
        "reflector",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "refl",
            "--stamp-listen",
            "10.99.0.2:862",
            "--stamp-rate",
            "1000",
            "--metrics-listen",
            &reflector_metrics,
        ],
        dir.path(),
    );
    reflector.wait_log("agent running", Duration::from_secs(10));
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut sender = a.spawn(
        "sender",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "send",
            "--interval",
            "25ms",
            "--timeout",
            "200ms",
            "--report-interval",
            "500ms",
            "--no-hops",
            "--metrics-listen",
            &metrics,
            "--target",
            "stamp:10.99.0.2,ecmp=16,label=spread",
            "--target",
            "stamp:10.99.0.2,label=single",
        ],
        dir.path(),
    );
    let url = format!("http://{metrics}/metrics");
    let get = |m: &[pathpulse_tests::Sample], name: &str, dst: &str| {
        value(m, name, &[("dst", dst)]).unwrap_or(0.0)
    };
    // Scraped from inside A, where the agent's /metrics listens.
    let scrape = || a.enter(|| http_get(&url).ok()).map(|t| parse_metrics(&t));
    let m = wait_for(Duration::from_secs(60), || {
        let m = scrape()?;
        let decided = |d| {
            get(&m, "pathpulse_probes_received_total", d)
                + get(&m, "pathpulse_probes_lost_total", d)
        };
        (decided("spread") >= 960.0 && decided("single") >= 480.0).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "STAMP paths not measured within 60 s\nsender:\n{}",
            sender.log()
        )
    });
    assert_eq!(sender.exited(), None, "sender exited:\n{}", sender.log());
    let loss = |d| {
        let (r, l) = (
            get(&m, "pathpulse_probes_received_total", d),
            get(&m, "pathpulse_probes_lost_total", d),
        );
        l / (r + l)
    };
    let (spread, single) = (loss("spread"), loss("single"));
    eprintln!(
        "ECMP: loss with 16 source ports {spread:.4} ({:.2}/16), with one port {single:.4}",
        spread * PORTS
    );
    assert!(
        !(0.05..=0.95).contains(&single),
        "one source port takes one path: all or nothing, got {single}"
    );
    // Round robin over 16 ports, each on one path: k/16 lost for the k ports hashed onto the
    // bad path (all 16 on one path has probability 2/65536). Lost probes are decided a
    // timeout (8 probes) after the answered ones: the tolerance covers that lag.
    let k = (spread * PORTS).round();
    assert!(
        (1.0..=15.0).contains(&k) && (spread * PORTS - k).abs() < 0.3,
        "16 ports: loss {spread} is not a partial multiple of 1/16"
    );
}
