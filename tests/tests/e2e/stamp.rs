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
