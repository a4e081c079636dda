//! `--clock-sync`: who says the host clock is synchronized, so whether STAMP's S bit is set
//! and one-way delay exists. Two reflectors (`assume`, and the default `kernel`) and two
//! senders (likewise) on loopback, each sender probing both reflectors: `assume` always sets
//! the S bit, `kernel` as `adjtimex` says, and one-way delay appears exactly on the paths
//! where both ends set it (on a host whose kernel calls the clock unsynchronized, like the
//! build machine: only assume → assume).

use std::net::UdpSocket;
use std::time::Duration;

use pathpulse_tests::{Proc, free_port, http_get, parse_metrics, select, wait_for};

use crate::sites::clock_synchronized;
use crate::stamp::{loopback_agent, sender_packet};

/// A loopback agent with `--clock-sync MODE` (none: the default) and `extra` flags.
fn agent(dir: &std::path::Path, name: &str, clock: Option<&str>, extra: &[&str]) -> (Proc, String) {
    let mut args: Vec<&str> = clock.map(|c| vec!["--clock-sync", c]).unwrap_or_default();
    args.extend_from_slice(extra);
    loopback_agent(dir, name, &args)
}

#[test]
fn clock_sync_assume_sets_the_s_bit_and_one_way_delay_needs_it_at_both_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = clock_synchronized();
    eprintln!("this host's kernel calls its clock synchronized: {kernel}");
    // (name, --clock-sync, whether it sets the S bit)
    let modes = [("assume", Some("assume"), true), ("kernel", None, kernel)];
    let mut procs = Vec::new();
    let mut reflectors = Vec::new();
    for (mode, flag, s_bit) in modes {
        let addr = format!("127.0.0.1:{}", free_port());
        let (mut p, _) = agent(
            dir.path(),
            &format!("r-{mode}"),
            flag,
            &["--stamp-listen", &addr],
        );
        p.wait_log("agent running", Duration::from_secs(10));
        // The S bit of the reflector's own error estimate (bytes 12-13 of its reply).
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        sock.send_to(&sender_packet(1), &addr).expect("send");
        let mut buf = [0u8; 128];
        let (n, _) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("r-{mode} did not answer: {e}\n{}", p.log()));
        assert_eq!(n, 44);
        assert_eq!(buf[12] & 0x80 != 0, s_bit, "r-{mode}: S bit");
        reflectors.push((mode, addr, s_bit));
        procs.push(p);
    }
    let mut senders = Vec::new();
    for (mode, flag, s_bit) in modes {
        let targets: Vec<String> = reflectors
            .iter()
            .flat_map(|(_, a, _)| ["--target".to_string(), format!("stamp:{a}")])
            .collect();
        let mut extra: Vec<&str> = targets.iter().map(String::as_str).collect();
        extra.extend(["--interval", "20ms", "--timeout", "1s"]);
        let (p, url) = agent(dir.path(), &format!("s-{mode}"), flag, &extra);
        senders.push((mode, url, s_bit));
        procs.push(p);
    }
    let logs = |procs: &[Proc]| procs.iter().map(Proc::log).collect::<Vec<_>>().join("\n");
    for (smode, url, s_sync) in &senders {
        // Enough replies on both paths that several reports carried them.
        let m = wait_for(Duration::from_secs(30), || {
            let m = parse_metrics(&http_get(url).ok()?);
            reflectors
                .iter()
                .all(|(_, a, _)| {
                    select(&m, "pathpulse_rtt_seconds_count", &[("dst", a)])
                        .first()
                        .is_some_and(|s| s.value >= 200.0)
                })
                .then_some(m)
        })
        .unwrap_or_else(|| panic!("s-{smode}: no STAMP replies:\n{}", logs(&procs)));
        for (rmode, addr, r_sync) in &reflectors {
            let owd = select(&m, "pathpulse_one_way_delay_seconds", &[("dst", addr)]);
            let want = *s_sync && *r_sync;
            assert_eq!(
                !owd.is_empty(),
                want,
                "s-{smode} → r-{rmode}: one-way delay {owd:?}"
            );
            for direction in ["forward", "reverse"] {
                let d = select(
                    &m,
                    "pathpulse_one_way_delay_seconds",
                    &[("dst", addr), ("direction", direction)],
                );
                assert_eq!(!d.is_empty(), want, "s-{smode} → r-{rmode} {direction}");
                // One kernel clock at both ends: loopback delays, never negative.
                for s in d {
                    assert!(s.value >= 0.0 && s.value < 0.002, "{s:?}");
                }
            }
            eprintln!(
                "s-{smode} → r-{rmode}: one-way delay {}",
                if want { "present" } else { "absent" }
            );
        }
    }
}
