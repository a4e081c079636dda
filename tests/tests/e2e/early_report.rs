//! Loss worth an alert reaches the aggregator before the end of a long report interval:
//! the agent sends its report early (at most one per quarter interval, at least 500 ms
//! apart) when 4 of the last 30 probes on a path were lost.

use std::time::{Duration, Instant};

use pathpulse_tests::lab::emu::Dir;
use pathpulse_tests::lab::impair::{Impairment, Loss};
use pathpulse_tests::lab::{ADDR_B, Link};
use pathpulse_tests::{bin, require_root};

use crate::setup::value;

const PORT: u16 = 9469;

#[test]
fn lab_loss_goes_out_in_an_early_report_not_at_the_end_of_the_interval() {
    if !require_root("lab_loss_goes_out_in_an_early_report_not_at_the_end_of_the_interval") {
        return;
    }
    let _serial = crate::lab::lab_lock();
    let link = Link::new(Impairment::default(), Impairment::default(), 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = format!("127.0.0.1:{PORT}");
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
            "--interval",
            "20ms",
            "--timeout",
            "200ms",
            "--report-interval",
            "30s",
            "--metrics-listen",
            &metrics,
        ],
        dir.path(),
    );
    agent.wait_log("agent running", Duration::from_secs(10));
    let started = Instant::now();
    let lost = || {
        value(
            &crate::stamp::metrics_in(&link.a, PORT),
            "pathpulse_probes_lost_total",
            &[("dst", ADDR_B)],
        )
    };
    // A clean path sends nothing early: no report yet after 8 s of the 30 s interval.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(lost(), None, "a report went out early without loss");
    link.emu.set(
        Dir::Ab,
        Impairment {
            loss: Loss::Bernoulli { p: 0.3 },
            ..Impairment::default()
        },
    );
    let onset = Instant::now();
    let seen =
        pathpulse_tests::wait_for_fast(Duration::from_secs(15), || lost().filter(|l| *l > 0.0));
    let (after_onset, after_start) = (onset.elapsed(), started.elapsed());
    eprintln!(
        "30% loss: {seen:?} lost probes reported {after_onset:?} after the onset, {after_start:?} into the 30 s report interval"
    );
    assert!(
        seen.is_some(),
        "no report with the loss within 15 s of its onset:\n{}",
        agent.log()
    );
    assert!(
        after_start < Duration::from_secs(25),
        "the loss came with the regular report ({after_start:?}), not early"
    );
}
