//! STAMP end to end: the agent's reflector on a real UDP socket, and pathpulse's sender
//! against pathpulse's reflector, each in its own process.

use std::net::UdpSocket;
use std::time::Duration;

use pathpulse_tests::{Proc, bin, free_port, http_get, parse_metrics, select, wait_for};

/// A Session-Sender packet written out from RFC 8762 §4.2.1: sequence, NTP timestamp,
/// error estimate (S=0, scale 0, multiplier 1), SSID 0x0102 (RFC 8972), zeros to 44.
fn sender_packet(seq: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(44);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xE9, 0x4F, 0x0E, 0x80, 0, 0, 0, 0]);
    p.extend_from_slice(&[0x00, 0x01, 0x01, 0x02]);
    p.resize(44, 0);
    p
}

fn counter(metrics_url: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let m = parse_metrics(&http_get(metrics_url).ok()?);
    select(&m, name, labels).first().map(|s| s.value)
}

#[test]
fn stamp_reflector_answers_stamp_and_drops_garbage_truncated_oversize_unanswered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (udp, http) = (free_port(), free_port());
    let stamp_addr = format!("127.0.0.1:{udp}");
    let metrics = format!("127.0.0.1:{http}");
    let mut agent = Proc::start(
        "reflector",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "refl",
            "--stamp-listen",
            &stamp_addr,
            "--metrics-listen",
            &metrics,
            "--report-interval",
            "200ms",
        ],
        dir.path(),
    );
    let url = format!("http://{metrics}/metrics");
    wait_for(Duration::from_secs(10), || http_get(&url).ok()).expect("agent serves /metrics");
    assert_eq!(agent.exited(), None, "agent exited:\n{}", agent.log());

    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 4096];

    // A valid packet is answered: 44 bytes, our sequence and SSID echoed, reflector seq 0.
    sock.send_to(&sender_packet(77), &stamp_addr).expect("send");
    let (n, _) = sock.recv_from(&mut buf).expect("a reply to a valid packet");
    assert_eq!(n, 44);
    assert_eq!(&buf[0..4], &[0, 0, 0, 0], "first reflector sequence");
    assert_eq!(&buf[14..16], &[0x01, 0x02], "SSID");
    assert_eq!(&buf[24..28], &77u32.to_be_bytes(), "sender sequence");
    assert_eq!(&buf[28..36], &sender_packet(77)[4..12], "sender timestamp");
    assert_eq!(buf[40], 64, "sender TTL as received (Linux default 64)");

    // Garbage of every kind: never answered.
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", b"hello".to_vec()),
        ("truncated", vec![]),
        ("truncated", sender_packet(1)[..43].to_vec()),
        ("oversize", vec![0xAB; 2000]),
        ("oversize", vec![0x00; 9000]),
        ("malformed", vec![0u8; 44]),
        ("malformed", {
            let mut p = sender_packet(3);
            p[13] = 0; // multiplier 0: corrupt (RFC 4656)
            p
        }),
    ];
    for (_, d) in &bad {
        sock.send_to(d, &stamp_addr).expect("send");
    }
    if let Ok((n, from)) = sock.recv_from(&mut buf) {
        panic!("reflector answered bad input: {n} bytes from {from}");
    }
    // A padded request (TWAMP-Light style) is answered with exactly its size, never more.
    let mut padded = sender_packet(78);
    padded.resize(200, 0x5a);
    sock.send_to(&padded, &stamp_addr).expect("send");
    let (n, _) = sock.recv_from(&mut buf).expect("reply to padded");
    assert_eq!(n, 200);
    assert_eq!(&buf[0..4], &[0, 0, 0, 1], "second reflector sequence");

    for (reason, want) in [("truncated", 3.0), ("oversize", 2.0), ("malformed", 2.0)] {
        let got = wait_for(Duration::from_secs(5), || {
            counter(
                &url,
                "pathpulse_stamp_reflector_dropped_total",
                &[("agent", "refl"), ("reason", reason)],
            )
            .filter(|v| *v >= want)
        });
        assert_eq!(got, Some(want), "dropped {reason}:\n{}", agent.log());
    }
    let reflected = wait_for(Duration::from_secs(5), || {
        counter(
            &url,
            "pathpulse_stamp_reflector_reflected_total",
            &[("agent", "refl")],
        )
        .filter(|v| *v >= 2.0)
    });
    assert_eq!(reflected, Some(2.0));
    assert_eq!(
        agent.exited(),
        None,
        "agent died on garbage:\n{}",
        agent.log()
    );
}

/// The value of `name` with these labels in a fresh scrape of `url`.
fn scrape(url: &str) -> Vec<pathpulse_tests::Sample> {
    parse_metrics(&http_get(url).unwrap_or_default())
}

fn get(m: &[pathpulse_tests::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    select(m, name, labels).first().map(|s| s.value)
}

#[test]
fn stamp_sender_against_reflector_on_loopback_with_exact_accounting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (udp, m_refl, m_send) = (free_port(), free_port(), free_port());
    let (v4, v6) = (format!("127.0.0.1:{udp}"), format!("[::1]:{udp}"));
    let listen = format!("{v4},{v6}");
    let refl_metrics = format!("127.0.0.1:{m_refl}");
    let send_metrics = format!("127.0.0.1:{m_send}");
    let _refl = Proc::start(
        "reflector",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "refl",
            "--stamp-listen",
            &listen,
            "--metrics-listen",
            &refl_metrics,
            "--report-interval",
            "200ms",
        ],
        dir.path(),
    );
    let (t4, t6) = (format!("stamp:{v4}"), format!("stamp:{v6}"));
    let sender = Proc::start(
        "sender",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "send",
            "--target",
            &t4,
            "--target",
            &t6,
            "--interval",
            "20ms",
            "--timeout",
            "1s",
            "--metrics-listen",
            &send_metrics,
            "--report-interval",
            "500ms",
        ],
        dir.path(),
    );
    let (rurl, surl) = (
        format!("http://{refl_metrics}/metrics"),
        format!("http://{send_metrics}/metrics"),
    );
    let dsts = [v4.as_str(), v6.as_str()];
    let m = wait_for(Duration::from_secs(30), || {
        let m = scrape(&surl);
        dsts.iter()
            .all(|d| {
                get(
                    &m,
                    "pathpulse_rtt_seconds_count",
                    &[("dst", d), ("probe", "stamp")],
                )
                .is_some_and(|c| c >= 150.0)
            })
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("no STAMP samples:\n{}", sender.log()));
    let mut received_total = 0.0;
    for d in dsts {
        let l = [("src", "send"), ("dst", d), ("probe", "stamp")];
        let v = |n: &str| get(&m, n, &l).unwrap_or_else(|| panic!("{n} missing for {d}"));
        let (sent, recv, lost, inflight) = (
            v("pathpulse_probes_sent_total"),
            v("pathpulse_probes_received_total"),
            v("pathpulse_probes_lost_total"),
            v("pathpulse_probes_in_flight"),
        );
        assert_eq!(sent, recv + lost + inflight, "{d}: accounting");
        assert_eq!(v("pathpulse_rtt_seconds_count"), recv, "{d}");
        assert_eq!(lost, 0.0, "{d}: loss on loopback");
        assert_eq!(v("pathpulse_probes_duplicate_total"), 0.0, "{d}");
        assert_eq!(v("pathpulse_probes_late_total"), 0.0, "{d}");
        received_total += recv;
        let q = |dir: &str| {
            get(
                &m,
                "pathpulse_directional_loss_ratio",
                &[("dst", d), ("direction", dir), ("window", "1m")],
            )
        };
        assert_eq!(q("forward"), Some(0.0), "{d}: forward loss");
        assert_eq!(q("reverse"), Some(0.0), "{d}: reverse loss");
        let p50 = get(
            &m,
            "pathpulse_rtt_quantile_seconds",
            &[("dst", d), ("quantile", "0.5"), ("window", "1m")],
        )
        .expect("p50");
        assert!(p50 > 0.0 && p50 < 0.002, "{d}: loopback STAMP p50 {p50} s");
        eprintln!("{d}: {recv} replies, p50 {:.1} µs", p50 * 1e6);
        // One-way delay only when this host's clock says synchronized; then it is sane.
        for s in select(&m, "pathpulse_one_way_delay_seconds", &[("dst", d)]) {
            assert!(s.value >= 0.0 && s.value < 0.002, "{d}: OWD {s:?}");
        }
    }
    let kernel = get(
        &m,
        "pathpulse_rtt_samples_total",
        &[("agent", "send"), ("clock", "kernel")],
    )
    .expect("clock counter");
    assert!(
        kernel >= received_total * 0.95,
        "{kernel} of {received_total} RTT samples from kernel stamps"
    );
    // The reflector answered at least every reply the sender counted, and never refused.
    let reflected = wait_for(Duration::from_secs(5), || {
        get(
            &scrape(&rurl),
            "pathpulse_stamp_reflector_reflected_total",
            &[("agent", "refl")],
        )
        .filter(|r| *r >= received_total)
    });
    assert!(
        reflected.is_some(),
        "reflector counted fewer than {received_total}"
    );
    let r = scrape(&rurl);
    for s in select(&r, "pathpulse_stamp_reflector_dropped_total", &[]) {
        assert_eq!(s.value, 0.0, "reflector dropped {s:?}");
    }
}
