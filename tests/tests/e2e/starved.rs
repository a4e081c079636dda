//! An agent starved of CPU (a busy laptop, a VM whose host steals time) must not count its
//! own delay as packet loss: replies the kernel received before a probe's deadline are
//! answers, however late the agent gets to read them. The agent is stopped (SIGSTOP) while
//! a 100 ms link holds about ten probes in flight; when it runs again, their replies wait in
//! the socket queues and their deadlines have passed.

use std::time::Duration;

use nix::sys::signal::Signal;
use pathpulse_tests::lab::impair::{Delay, Impairment};
use pathpulse_tests::lab::{ADDR_B, Link};
use pathpulse_tests::{bin, require_root};

use crate::setup::value;

const PORT: u16 = 9469;

#[test]
fn lab_a_starved_agent_counts_queued_replies_as_replies_not_loss() {
    if !require_root("lab_a_starved_agent_counts_queued_replies_as_replies_not_loss") {
        return;
    }
    let _serial = crate::lab::lab_lock();
    let slow = Impairment {
        delay: Delay::Constant { ms: 100.0 },
        ..Impairment::default()
    };
    let link = Link::new(slow, Impairment::default(), 7);
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
    let stamp = format!("stamp:{ADDR_B}");
    let mut agent = link.a.spawn(
        "agent",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--no-hops",
            "--name",
            "a",
            "--target",
            ADDR_B,
            "--target",
            &stamp,
            "--interval",
            "10ms",
            "--timeout",
            "500ms",
            "--report-interval",
            "500ms",
            "--metrics-listen",
            &metrics,
        ],
        dir.path(),
    );
    agent.wait_log("agent running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    // Eight starvations of 1.2 s, each past the 500 ms timeout of ~10 probes per prober in
    // flight. Before the fix the prober's timer and its socket were both ready on waking
    // and the timer won about half the time: ~80 probes counted lost per prober.
    for _ in 0..8 {
        agent.signal(Signal::SIGSTOP);
        std::thread::sleep(Duration::from_millis(1200));
        agent.signal(Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let m = crate::stamp::metrics_in(&link.a, PORT);
    assert_eq!(agent.exited(), None, "agent exited:\n{}", agent.log());
    for probe in ["icmp", "stamp"] {
        let l = [("dst", ADDR_B), ("probe", probe)];
        let get = |name: &str| {
            value(&m, name, &l).unwrap_or_else(|| panic!("{name} {l:?} missing:\n{}", agent.log()))
        };
        let (sent, recv, lost, late) = (
            get("pathpulse_probes_sent_total"),
            get("pathpulse_probes_received_total"),
            get("pathpulse_probes_lost_total"),
            get("pathpulse_probes_late_total"),
        );
        eprintln!("{probe}: sent {sent}, received {recv}, lost {lost}, late {late}");
        assert!(recv >= 1000.0, "{probe}: {recv} replies");
        assert_eq!(
            lost, 0.0,
            "{probe}: the agent's own starvation counted as loss"
        );
        assert_eq!(late, 0.0, "{probe}: replies in the queue counted late");
        // The RTT comes from kernel timestamps: the 100 ms link, not the 1.2 s stop.
        let p99 = value(
            &m,
            "pathpulse_rtt_quantile_seconds",
            &[
                ("dst", ADDR_B),
                ("probe", probe),
                ("quantile", "0.99"),
                ("window", "1m"),
            ],
        )
        .expect("p99");
        assert!(
            (0.099..0.2).contains(&p99),
            "{probe}: p99 {p99} s over a 100 ms link"
        );
    }
}
