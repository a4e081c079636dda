//! STAMP end to end: the agent's reflector on a real UDP socket, and pathpulse's sender
//! against pathpulse's reflector, each in its own process.

use std::net::UdpSocket;
use std::time::Duration;

use pathpulse_tests::{Proc, bin, free_port, http_get, parse_metrics, select, wait_for};

/// A Session-Sender packet written out from RFC 8762 §4.2.1: sequence, NTP timestamp,
/// error estimate (S=0, scale 0, multiplier 1), SSID 0x0102 (RFC 8972), zeros to 44.
pub(crate) fn sender_packet(seq: u32) -> Vec<u8> {
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
    let mut refl = Proc::start(
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
    // Both reflector sockets bound before the first probe (else one probe is refused: "loss").
    refl.wait_log("agent running", Duration::from_secs(10));
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
    // The STAMP families pass promtool's checks.
    if pathpulse_tests::require_program("stamp promtool", "promtool") {
        let exposition = http_get(&surl).expect("scrape") + &http_get(&rurl).expect("scrape");
        assert!(exposition.contains("pathpulse_directional_loss_ratio"));
        for url in [&surl, &rurl] {
            if let Err(e) = pathpulse_tests::promtool_check(&http_get(url).expect("scrape")) {
                panic!("{e}");
            }
        }
    }
}

/// An agent on loopback serving its own /metrics on a free port, reporting every 200 ms:
/// the process and its /metrics URL.
pub(crate) fn loopback_agent(dir: &std::path::Path, name: &str, extra: &[&str]) -> (Proc, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "run",
        "--name",
        name,
        "--metrics-listen",
        &metrics,
        "--report-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let p = Proc::start(name, &bin("pathpulse-agent"), &args, dir);
    (p, format!("http://{metrics}/metrics"))
}

/// GET /metrics of an agent listening on 127.0.0.1:`port` inside `ns`.
pub(crate) fn metrics_in(
    ns: &pathpulse_tests::lab::netns::Netns,
    port: u16,
) -> Vec<pathpulse_tests::Sample> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let (_, text) = ns.run("bash", &["-c", &script]);
    parse_metrics(&text)
}

/// Loss on one direction of the lab link only: STAMP puts it on that direction (each
/// inside the 99% binomial interval, the other exactly 0), ICMP sees it as round-trip loss.
#[test]
fn lab_stamp_attributes_one_way_loss_to_its_direction_and_icmp_sees_it_combined() {
    use pathpulse_tests::lab::emu::Dir;
    use pathpulse_tests::lab::impair::{Impairment, Loss};
    use pathpulse_tests::lab::{ADDR_B, Link};

    let _serial = crate::lab::lab_lock();
    let test = "lab_stamp_attributes_one_way_loss_to_its_direction_and_icmp_sees_it_combined";
    if !pathpulse_tests::require_root(test) {
        return;
    }
    const P: f64 = 0.1;
    const PORT: u16 = 9469;
    for lossy in [Dir::Ab, Dir::Ba] {
        let lossy_imp = Impairment {
            loss: Loss::Bernoulli { p: P },
            ..Impairment::default()
        };
        let (ab, ba) = match lossy {
            Dir::Ab => (lossy_imp, Impairment::default()),
            Dir::Ba => (Impairment::default(), lossy_imp),
        };
        let link = Link::new(ab, ba, 41);
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = format!("{ADDR_B}:862");
        let metrics = format!("127.0.0.1:{PORT}");
        let mut refl = link.b.spawn(
            "reflector",
            &bin("pathpulse-agent"),
            &[
                "run",
                "--name",
                "b",
                "--stamp-listen",
                &listen,
                "--metrics-listen",
                &metrics,
            ],
            dir.path(),
        );
        refl.wait_log("agent running", Duration::from_secs(10));
        let stamp_target = format!("stamp:{ADDR_B}");
        let sender = link.a.spawn(
            "sender",
            &bin("pathpulse-agent"),
            &[
                "run",
                "--name",
                "a",
                "--target",
                &stamp_target,
                "--target",
                ADDR_B,
                "--interval",
                "10ms",
                "--timeout",
                "1s",
                "--report-interval",
                "1s",
                "--metrics-listen",
                &metrics,
            ],
            dir.path(),
        );
        // About 3,500 probes per prober, all inside the 1 min window.
        std::thread::sleep(Duration::from_secs(37));
        let m = metrics_in(&link.a, PORT);
        let get = |name: &str, labels: &[(&str, &str)]| {
            crate::setup::value(&m, name, labels)
                .unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{}", sender.log()))
        };
        let stamp = [("dst", ADDR_B), ("probe", "stamp"), ("window", "1m")];
        let ratio = |d: &str| {
            let mut l = stamp.to_vec();
            l.push(("direction", d));
            get("pathpulse_directional_loss_ratio", &l)
        };
        let (fwd, rev) = (ratio("forward"), ratio("reverse"));
        let recv = get(
            "pathpulse_probes_received_total",
            &[("dst", ADDR_B), ("probe", "stamp")],
        );
        let lost = get(
            "pathpulse_probes_lost_total",
            &[("dst", ADDR_B), ("probe", "stamp")],
        );
        let icmp = get(
            "pathpulse_loss_ratio",
            &[("dst", ADDR_B), ("probe", "icmp"), ("window", "1m")],
        );
        let n = recv + lost;
        assert!(n >= 3000.0, "only {n} STAMP probes decided");
        let half = 2.576 * (P * (1.0 - P) / n).sqrt();
        eprintln!(
            "{lossy:?} {P}: STAMP forward {fwd:.4} reverse {rev:.4} (n {n}, ±{half:.4}); ICMP {icmp:.4}"
        );
        let (want_fwd, want_rev) = match lossy {
            Dir::Ab => (P, 0.0),
            Dir::Ba => (0.0, P),
        };
        for (what, got, want) in [("forward", fwd, want_fwd), ("reverse", rev, want_rev)] {
            if want == 0.0 {
                assert_eq!(got, 0.0, "{lossy:?}: {what} loss where none was injected");
            } else {
                assert!(
                    (got - want).abs() <= half,
                    "{lossy:?}: {what} loss {got} outside {want} ± {half}"
                );
            }
        }
        assert!(
            (icmp - P).abs() <= half * 1.5,
            "{lossy:?}: ICMP round-trip loss {icmp} not about {P}"
        );
        // Exactly: once the loss stops and every probe is decided, STAMP's lost probes are
        // the UDP packets the emulator dropped (only STAMP sends UDP on this link).
        link.emu.set(lossy, Impairment::default());
        std::thread::sleep(Duration::from_secs(3));
        let m = metrics_in(&link.a, PORT);
        let lost = crate::setup::value(
            &m,
            "pathpulse_probes_lost_total",
            &[("dst", ADDR_B), ("probe", "stamp")],
        )
        .expect("lost");
        let udp_dropped = link
            .emu
            .log()
            .iter()
            .filter(|r| r.proto == 17 && r.dropped)
            .count() as f64;
        assert_eq!(
            lost, udp_dropped,
            "{lossy:?}: STAMP lost {lost}, emulator dropped {udp_dropped} UDP packets"
        );
    }
}

/// Reordering and duplicates both ways across the lab link: every reply copy is either the
/// reply or a duplicate (counted exactly against the emulator's log), reordering is seen,
/// nothing is lost, and no loss is invented in either direction.
#[test]
fn lab_stamp_across_a_reordering_duplicating_link_counts_exactly() {
    use pathpulse_tests::lab::emu::Dir;
    use pathpulse_tests::lab::impair::{Delay, Impairment};
    use pathpulse_tests::lab::{ADDR_B, Link};

    let _serial = crate::lab::lab_lock();
    if !pathpulse_tests::require_root(
        "lab_stamp_across_a_reordering_duplicating_link_counts_exactly",
    ) {
        return;
    }
    const PORT: u16 = 9469;
    let imp = |dup: f64| Impairment {
        delay: Delay::Uniform {
            mean_ms: 10.0,
            spread_ms: 3.0,
        },
        reorder: 0.05,
        reorder_gap_ms: 25.0,
        duplicate: dup,
        ..Impairment::default()
    };
    let link = Link::new(imp(0.03), imp(0.05), 17);
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = format!("127.0.0.1:{PORT}");
    let listen = format!("{ADDR_B}:862");
    let mut refl = link.b.spawn(
        "reflector",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "b",
            "--stamp-listen",
            &listen,
            "--metrics-listen",
            &metrics,
        ],
        dir.path(),
    );
    refl.wait_log("agent running", Duration::from_secs(10));
    let target = format!("stamp:{ADDR_B}");
    let sender = link.a.spawn(
        "sender",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "a",
            "--target",
            &target,
            "--interval",
            "20ms",
            "--timeout",
            "1s",
            "--report-interval",
            "1s",
            "--metrics-listen",
            &metrics,
        ],
        dir.path(),
    );
    std::thread::sleep(Duration::from_secs(25));
    // Cut the link (drop everything) so the counters settle, then read them.
    let cut = Impairment {
        loss: pathpulse_tests::lab::impair::Loss::Bernoulli { p: 1.0 },
        ..Impairment::default()
    };
    link.emu.set(Dir::Ab, cut);
    std::thread::sleep(Duration::from_secs(3));
    let m = metrics_in(&link.a, PORT);
    let l = [("dst", ADDR_B), ("probe", "stamp")];
    let get = |name: &str| {
        crate::setup::value(&m, name, &l)
            .unwrap_or_else(|| panic!("{name} missing:\n{}", sender.log()))
    };
    // Replies that reached A before the cut: every departure toward A of a UDP packet.
    let log = link.emu.log();
    let copies: usize = log
        .iter()
        .filter(|r| r.dir == Dir::Ba && r.proto == 17)
        .map(|r| r.depart_ns.len())
        .sum();
    // Requests that reached B (at least one copy departed toward it): the emulator decides
    // at arrival, so reading the log's length before the cut raced with requests arriving
    // meanwhile; departures made are exact whenever the cut came.
    let requests = log
        .iter()
        .filter(|r| r.dir == Dir::Ab && r.proto == 17 && !r.depart_ns.is_empty())
        .count() as f64;
    let (sent, recv, lost, dup) = (
        get("pathpulse_probes_sent_total"),
        get("pathpulse_probes_received_total"),
        get("pathpulse_probes_lost_total"),
        get("pathpulse_probes_duplicate_total"),
    );
    let reordered = get("pathpulse_probes_reordered_total");
    eprintln!(
        "sent {sent} received {recv} lost {lost} duplicates {dup} reordered {reordered}; emulator: {requests} requests delivered, {copies} reply copies"
    );
    assert_eq!(
        recv, requests,
        "every request that reached the reflector was answered"
    );
    assert_eq!(
        recv + dup,
        copies as f64,
        "each reply copy is the reply or a duplicate"
    );
    assert_eq!(get("pathpulse_probes_late_total"), 0.0);
    assert!(
        dup > 20.0 && reordered > 20.0,
        "the impairment did something"
    );
    assert_eq!(sent, recv + lost + get("pathpulse_probes_in_flight"));
    for d in ["forward", "reverse"] {
        let r = crate::setup::value(
            &m,
            "pathpulse_directional_loss_ratio",
            &[("dst", ADDR_B), ("direction", d), ("window", "1m")],
        );
        // Probes cut at the end wait for a reply that never comes: not attributed.
        assert_eq!(r, Some(0.0), "{d} loss invented");
    }
    let p50 = crate::setup::value(
        &m,
        "pathpulse_rtt_quantile_seconds",
        &[("dst", ADDR_B), ("quantile", "0.5"), ("window", "1m")],
    )
    .expect("p50");
    assert!((0.015..0.025).contains(&p50), "p50 {p50} s for 2 × 10 ms");
}

/// Authenticated mode (HMAC-SHA-256): a sender with the reflector's key is answered with
/// signed replies; one with another key is refused and counted, never answered.
#[test]
fn stamp_authenticated_mode_answers_only_the_shared_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("stamp.key");
    let wrong = dir.path().join("wrong.key");
    std::fs::write(
        &key,
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n",
    )
    .expect("key");
    std::fs::write(
        &wrong,
        "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n",
    )
    .expect("key");
    let (key, wrong) = (key.to_str().expect("utf-8"), wrong.to_str().expect("utf-8"));
    let addr = format!("127.0.0.1:{}", free_port());
    let target = format!("stamp:{addr}");
    let start = |name: &str, extra: &[&str]| loopback_agent(dir.path(), name, extra);
    let (mut refl, refl_url) = start("refl", &["--stamp-listen", &addr, "--stamp-key-file", key]);
    refl.wait_log("agent running", Duration::from_secs(10));
    let (good, good_url) = start(
        "good",
        &[
            "--target",
            &target,
            "--interval",
            "20ms",
            "--timeout",
            "500ms",
            "--stamp-key-file",
            key,
        ],
    );
    let (_bad, bad_url) = start(
        "bad",
        &[
            "--target",
            &target,
            "--interval",
            "20ms",
            "--timeout",
            "500ms",
            "--stamp-key-file",
            wrong,
        ],
    );
    let l = [("dst", addr.as_str()), ("probe", "stamp")];
    let recv = wait_for(Duration::from_secs(20), || {
        get(&scrape(&good_url), "pathpulse_probes_received_total", &l).filter(|v| *v >= 50.0)
    })
    .unwrap_or_else(|| panic!("no authenticated replies:\n{}", good.log()));
    let m = scrape(&good_url);
    assert_eq!(get(&m, "pathpulse_probes_lost_total", &l), Some(0.0));
    let failed = wait_for(Duration::from_secs(10), || {
        get(
            &scrape(&refl_url),
            "pathpulse_stamp_reflector_dropped_total",
            &[("agent", "refl"), ("reason", "auth_failed")],
        )
        .filter(|v| *v >= 20.0)
    });
    assert!(
        failed.is_some(),
        "wrong-key packets not counted as auth_failed"
    );
    let b = scrape(&bad_url);
    assert_eq!(
        get(&b, "pathpulse_probes_received_total", &l),
        Some(0.0),
        "wrong key answered"
    );
    assert!(get(&b, "pathpulse_probes_lost_total", &l).is_some_and(|v| v >= 10.0));
    eprintln!("authenticated: {recv} replies; wrong key: {failed:?} refused");
}

/// Socket activation, as `pathpulse-agent.socket` does it: `systemd-socket-activate` binds
/// UDP 862 (v4 and v6) in a namespace and starts the agent as `nobody` (no capability at
/// all) on the first datagram; the agent reflects on the sockets it was passed.
#[test]
fn stamp_reflector_takes_port_862_from_systemd_socket_activation() {
    let test = "stamp_reflector_takes_port_862_from_systemd_socket_activation";
    if !pathpulse_tests::require_root(test)
        || !pathpulse_tests::require_program(test, "systemd-socket-activate")
        || !pathpulse_tests::require_program(test, "setpriv")
    {
        return;
    }
    let _machine = crate::setup::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = pathpulse_tests::lab::netns::Netns::new("act");
    let agent_bin = bin("pathpulse-agent");
    let mut agent = ns.spawn(
        "activated",
        std::path::Path::new("/usr/bin/systemd-socket-activate"),
        &[
            "--datagram",
            "-l",
            "127.0.0.1:862",
            "-l",
            "[::1]:862",
            "/usr/bin/setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            agent_bin.to_str().expect("utf-8"),
            "run",
            "--name",
            "act",
            "--target",
            "tcp:127.0.0.1:1",
            "--metrics-listen",
            "127.0.0.1:9469",
            "--report-interval",
            "200ms",
        ],
        dir.path(),
    );
    // The first datagram starts the agent; it answers that one and the next ones.
    let replies = ns.enter(|| {
        let mut got = Vec::new();
        for (bind, to) in [("127.0.0.1:0", "127.0.0.1:862"), ("[::1]:0", "[::1]:862")] {
            let sock = UdpSocket::bind(bind).expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            let mut buf = [0u8; 128];
            let reply = (0..40u32).find_map(|seq| {
                sock.send_to(&sender_packet(seq), to).expect("send");
                let (n, _) = sock.recv_from(&mut buf).ok()?;
                Some(buf[..n].to_vec())
            });
            got.push((to, reply));
        }
        got
    });
    for (to, reply) in &replies {
        let r = reply
            .as_ref()
            .unwrap_or_else(|| panic!("no STAMP reply from {to}:\n{}", agent.log()));
        assert_eq!(r.len(), 44, "{to}");
        assert_eq!(&r[14..16], &[0x01, 0x02], "{to}: SSID");
    }
    let m = ns.enter(|| {
        wait_for(Duration::from_secs(10), || {
            let m = parse_metrics(&http_get("http://127.0.0.1:9469/metrics").ok()?);
            // Reflected packets show in /metrics with the agent's next report.
            (select(&m, "pathpulse_stamp_reflector_reflected_total", &[])
                .first()?
                .value
                >= 2.0)
                .then_some(m)
        })
    });
    let m = m.unwrap_or_else(|| panic!("agent /metrics:\n{}", agent.log()));
    let first = |name: &str| select(&m, name, &[]).first().map(|s| s.value);
    assert_eq!(
        first("pathpulse_stamp_reflector_sockets"),
        Some(2.0),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert_eq!(
        log.matches("socket from systemd").count(),
        2,
        "both sockets taken from systemd:\n{log}"
    );
    assert!(!log.contains("STAMP reflector not running"), "{log}");
    assert_eq!(agent.exited(), None, "{log}");
}

/// A mesh member whose UDP 862 is taken (or forbidden): it keeps running and probing, says
/// so once with the fix, shows 0 reflector sockets, and advertises no STAMP port, so its
/// peers do not probe a reflector that is not there.
#[test]
fn a_mesh_member_without_port_862_runs_on_without_reflector_and_advertises_none() {
    let cfg = tempfile::tempdir().expect("tempdir");
    let mesh = cfg.path().join("aggregator.toml");
    std::fs::write(&mesh, "[mesh]\nenabled = true\n").expect("config");
    let d = crate::setup::Deployment::start_with(&["--config", mesh.to_str().expect("utf-8")]);
    let state = d.issue("no862", &d.state());
    // Held by someone else (as root; without root the agent may not bind it either).
    let _held = UdpSocket::bind("[::]:862").ok();
    let http = free_port();
    let metrics = format!("127.0.0.1:{http}");
    let mut agent = Proc::start(
        "no862",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "no862",
            "--aggregator",
            &format!("127.0.0.1:{}", d.quic),
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--target",
            "tcp:127.0.0.1:1",
            "--interval",
            "200ms",
            "--report-interval",
            "500ms",
            "--metrics-listen",
            &metrics,
        ],
        d.dir.path(),
    );
    let member = wait_for(Duration::from_secs(20), || {
        let v: serde_json::Value =
            serde_json::from_str(&http_get(&d.url("/api/members")).ok()?).ok()?;
        v["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "no862" && m["joined"] == true)
            .cloned()
    })
    .unwrap_or_else(|| panic!("no862 never joined:\n{}", agent.log()));
    assert!(
        member["stamp_port"].is_null(),
        "no STAMP port advertised: {member}"
    );
    let url = format!("http://{metrics}/metrics");
    let sockets = wait_for(Duration::from_secs(10), || {
        counter(&url, "pathpulse_stamp_reflector_sockets", &[])
    });
    assert_eq!(sockets, Some(0.0), "{}", agent.log());
    // Still probing and reporting.
    assert!(
        wait_for(Duration::from_secs(10), || {
            crate::setup::value(
                &d.metrics(),
                "pathpulse_probes_sent_total",
                &[("src", "no862")],
            )
            .filter(|v| *v > 0.0)
        })
        .is_some(),
        "{}",
        agent.log()
    );
    assert_eq!(agent.exited(), None, "{}", agent.log());
    let log = agent.log();
    assert_eq!(
        log.matches("STAMP reflector not running").count(),
        1,
        "one warning:\n{log}"
    );
    assert!(
        log.contains("pathpulse-agent.socket"),
        "names the fix:\n{log}"
    );
}
