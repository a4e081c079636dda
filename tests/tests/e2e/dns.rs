//! DNS probe end to end: the agent against a real resolver (Debian's dnsmasq) on loopback,
//! against a server that never answers, and against a responder that sends forged and
//! stray replies before the real one; ICMP in the same agent keeps its rate meanwhile.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use pathpulse_tests::{Proc, bin, free_port, http_get, parse_metrics, wait_for};

use crate::setup::value;

/// dnsmasq on 127.0.0.1:`port`, authoritative for nothing and forwarding nowhere:
/// `example.test` answers 192.0.2.7, `nx.test` is NXDOMAIN, everything else REFUSED.
fn dnsmasq(port: u16, logdir: &Path) -> Proc {
    Proc::start(
        "dnsmasq",
        Path::new("dnsmasq"),
        &[
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={port}"),
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
            "--address=/example.test/192.0.2.7",
            "--address=/nx.test/",
        ],
        logdir,
    )
}

fn agent(name: &str, targets: &[&str], metrics: &str, logdir: &Path) -> Proc {
    let mut args = vec![
        "run",
        "--name",
        name,
        "--interval",
        "100ms",
        "--timeout",
        "500ms",
        "--report-interval",
        "500ms",
        "--no-hops",
        "--metrics-listen",
        metrics,
    ];
    for t in targets {
        args.extend(["--target", t]);
    }
    Proc::start(name, &bin("pathpulse-agent"), &args, logdir)
}

#[test]
fn dns_probe_times_a_real_resolver_counts_failures_and_silence_as_loss_without_slowing_icmp() {
    if !pathpulse_tests::require_root("dns_probe_times_a_real_resolver")
        || !pathpulse_tests::require_program("dns_probe_times_a_real_resolver", "dnsmasq")
    {
        return;
    }
    let _machine = crate::setup::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _dnsmasq = dnsmasq(port, dir.path());
    // A "resolver" that takes queries and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let good = format!("dns:127.0.0.1:{port}/example.test");
    let nx = format!("dns:127.0.0.1:{port}/nx.test");
    let refused = format!("dns:127.0.0.1:{port}/elsewhere.example");
    let dead = format!("dns:127.0.0.1:{silent_port}/example.test");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut a = agent(
        "dns-a",
        &[&good, &nx, &refused, &dead, "icmp:127.0.0.1"],
        &metrics,
        dir.path(),
    );
    let url = format!("http://{metrics}/metrics");
    let dst = |spec: &str| spec.trim_start_matches("dns:").to_string();
    let (good_dst, nx_dst, refused_dst, dead_dst) =
        (dst(&good), dst(&nx), dst(&refused), dst(&dead));
    let count = |m: &[pathpulse_tests::Sample], name: &str, d: &str, probe: &str| {
        value(m, name, &[("dst", d), ("probe", probe)]).unwrap_or(0.0)
    };
    let m = wait_for(Duration::from_secs(30), || {
        let m = parse_metrics(&http_get(&url).ok()?);
        (count(&m, "pathpulse_probes_received_total", &good_dst, "dns") >= 20.0
            && count(&m, "pathpulse_probes_lost_total", &dead_dst, "dns") >= 10.0)
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("DNS paths not measured within 30 s\nagent:\n{}", a.log()));
    assert_eq!(a.exited(), None, "agent exited:\n{}", a.log());

    // A real resolver: RTT recorded, nothing lost, latency of a loopback exchange.
    let sent = count(&m, "pathpulse_probes_sent_total", &good_dst, "dns");
    let lost = count(&m, "pathpulse_probes_lost_total", &good_dst, "dns");
    assert!(
        lost <= 1.0,
        "lost {lost} of {sent} queries to dnsmasq on loopback"
    );
    let p50 = value(
        &m,
        "pathpulse_rtt_quantile_seconds",
        &[("dst", &good_dst), ("quantile", "0.5"), ("window", "1m")],
    )
    .expect("DNS RTT quantile");
    assert!(
        p50 > 0.0 && p50 < 0.05,
        "median DNS RTT {p50} s on loopback"
    );
    // NXDOMAIN is an answer (documented); REFUSED is a failure: lost, never an RTT.
    assert!(count(&m, "pathpulse_probes_received_total", &nx_dst, "dns") >= 10.0);
    assert_eq!(
        count(&m, "pathpulse_probes_received_total", &refused_dst, "dns"),
        0.0
    );
    assert!(count(&m, "pathpulse_probes_lost_total", &refused_dst, "dns") >= 10.0);
    // Silence: loss, not an error or a hang.
    assert_eq!(
        count(&m, "pathpulse_probes_received_total", &dead_dst, "dns"),
        0.0
    );
    assert_eq!(
        count(&m, "pathpulse_send_errors_total", &dead_dst, "dns"),
        0.0
    );

    // ICMP beside a silent DNS server keeps its 10 probes per second.
    let icmp = |m: &[pathpulse_tests::Sample]| {
        count(m, "pathpulse_probes_received_total", "127.0.0.1", "icmp")
    };
    let (t0, r0) = (Instant::now(), icmp(&m));
    std::thread::sleep(Duration::from_secs(4));
    let m = parse_metrics(&http_get(&url).expect("metrics"));
    let rate = (icmp(&m) - r0) / t0.elapsed().as_secs_f64();
    assert!(
        (7.0..=13.0).contains(&rate),
        "ICMP received {rate:.1}/s beside a silent DNS server, 10/s configured"
    );
    drop(silent);
}

/// Flip the QR bit of a query: a NOERROR response with the question and no answers.
fn response_to(query: &[u8]) -> Vec<u8> {
    let mut r = query.to_vec();
    r[2] |= 0x80;
    r
}

#[test]
fn forged_and_stray_dns_replies_are_counted_and_never_recorded() {
    let _machine = crate::setup::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    // Before each real answer: the same answer from another port (wrong source), one with
    // the question altered (a forgery), and garbage.
    let responder = std::thread::spawn(move || {
        server
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let mut answered = 0u32;
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let q = &buf[..n];
            let good = response_to(q);
            let _ = other.send_to(&good, from);
            let mut forged = good.clone();
            if let Some(i) = forged.windows(7).position(|w| w == b"example") {
                forged[i] = b'x';
            }
            let _ = server.send_to(&forged, from);
            let _ = server.send_to(b"\x00garbage", from);
            let _ = server.send_to(&good, from);
            answered += 1;
        }
        answered
    });
    let target = format!("dns:127.0.0.1:{port}/example.test");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut a = agent("dns-f", &[&target], &metrics, dir.path());
    let url = format!("http://{metrics}/metrics");
    let d = format!("127.0.0.1:{port}/example.test");
    let m = wait_for(Duration::from_secs(30), || {
        let m = parse_metrics(&http_get(&url).ok()?);
        (value(&m, "pathpulse_probes_received_total", &[("dst", &d)])? >= 20.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("no answers counted\nagent:\n{}", a.log()));
    let received = value(&m, "pathpulse_probes_received_total", &[("dst", &d)]).unwrap_or(0.0);
    for reason in ["wrong_source", "unknown_probe", "not_ours"] {
        let n = value(&m, "pathpulse_stray_replies_total", &[("reason", reason)]).unwrap_or(0.0);
        assert!(
            n >= received - 2.0,
            "{reason}: {n} strays counted for {received} answers"
        );
    }
    let lost = value(&m, "pathpulse_probes_lost_total", &[("dst", &d)]).unwrap_or(0.0);
    assert!(
        lost <= 1.0,
        "the real answer after the forgeries was lost {lost} times"
    );
    // The only RTTs here are DNS ones: from kernel TX and RX timestamps.
    let kernel = value(&m, "pathpulse_rtt_samples_total", &[("clock", "kernel")]).unwrap_or(0.0);
    assert!(
        kernel >= received - 2.0,
        "{kernel} kernel-clock samples of {received}"
    );
    let _ = a.stop();
    assert!(responder.join().expect("responder") >= 20);
}
