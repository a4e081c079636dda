//! Nothing lost, nothing counted twice: the agent's on-disk spool across its own SIGKILL,
//! an aggregator SIGKILLed while three agents report (its counters survive the restart and
//! equal the agents' exactly once the spools are replayed), a corrupt spool file and a
//! full disk.
//!
//! "What an agent sent" is read from the agent's own `/metrics` (`--metrics-listen`),
//! which applies every report the moment it is made, before the uplink sees it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use pathpulse_tests::{Proc, Sample, free_port, http_get, parse_metrics, require_root, wait_for};

use crate::setup::{Deployment, value};

/// Probes per report at the test agents' 100 ms probe and 500 ms report intervals, with
/// one probe of slack for the scheduler's phase.
const ONE_INTERVAL: f64 = 6.0;

const COUNTERS: [&str; 4] = [
    "pathpulse_probes_sent_total",
    "pathpulse_probes_received_total",
    "pathpulse_probes_lost_total",
    "pathpulse_rtt_seconds_count",
];

/// A TCP target that stays up whatever happens to the aggregator: it accepts and closes.
fn tcp_target() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    format!("tcp:127.0.0.1:{port}")
}

fn scrape(port: u16) -> Vec<Sample> {
    http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .map(|t| parse_metrics(&t))
        .unwrap_or_default()
}

/// The agent's counters (summed over its paths) in `m`.
fn counts(m: &[Sample], src: &str) -> [f64; 4] {
    COUNTERS.map(|name| {
        pathpulse_tests::select(m, name, &[("src", src)])
            .iter()
            .map(|s| s.value)
            .sum()
    })
}

struct Agent {
    name: String,
    state: PathBuf,
    port: u16,
    proc: Proc,
}

fn start_agent(d: &Deployment, name: &str, state: &Path, target: &str) -> Agent {
    start_agent_with(d, name, state, target, &[])
}

fn start_agent_with(
    d: &Deployment,
    name: &str,
    state: &Path,
    target: &str,
    extra: &[&str],
) -> Agent {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--metrics-listen", listen.as_str()];
    args.extend_from_slice(extra);
    let proc = d.agent(name, state, &[target], &args);
    let a = Agent {
        name: name.into(),
        state: state.to_path_buf(),
        port,
        proc,
    };
    wait_for(Duration::from_secs(10), || {
        http_get(&format!("http://127.0.0.1:{port}/metrics")).ok()
    })
    .unwrap_or_else(|| panic!("{name}'s /metrics up; log:\n{}", a.proc.log()));
    a
}

fn restart_agent(d: &Deployment, a: &Agent, target: &str) -> Agent {
    start_agent(d, &a.name, &a.state, target)
}

/// Wait until, at one instant (the agent's counters unchanged around the aggregator's
/// scrape), `base` plus the aggregator's counters equal the agent's exactly. Fails at once
/// if the aggregator is ever ahead: a report counted twice.
fn wait_exact(d: &Deployment, a: &Agent, base: [f64; 4], timeout: Duration) -> Result<(), String> {
    let mut last = String::new();
    let found = wait_for(timeout, || {
        let l1 = counts(&scrape(a.port), &a.name);
        let agg = counts(&d.metrics(), &a.name);
        let l2 = counts(&scrape(a.port), &a.name);
        if l1 != l2 || l1[0] == 0.0 {
            return None;
        }
        let total: Vec<f64> = base.iter().zip(agg).map(|(b, x)| b + x).collect();
        last = format!(
            "{}: agent {l1:?}, aggregator {total:?} ({COUNTERS:?})",
            a.name
        );
        if total.iter().zip(l1).any(|(t, l)| *t > l) {
            return Some(Err(format!(
                "aggregator ahead of the agent, a report counted twice: {last}"
            )));
        }
        (total == l1).then_some(Ok(()))
    });
    found.unwrap_or_else(|| Err(format!("never equal within {timeout:?}: {last}")))
}

fn spooled(a: &Agent) -> f64 {
    pathpulse_tests::select(&scrape(a.port), "pathpulse_spool_reports", &[])
        .iter()
        .map(|s| s.value)
        .sum()
}

#[test]
fn aggregator_killed_while_three_agents_report_keeps_its_counters_exactly() {
    let mut d = Deployment::start();
    let target = tcp_target();
    let agents: Vec<Agent> = ["dl-a", "dl-b", "dl-c"]
        .iter()
        .map(|n| {
            let state = d.issue(n, &d.state());
            start_agent(&d, n, &state, &target)
        })
        .collect();
    wait_for(Duration::from_secs(20), || {
        let m = d.metrics();
        agents
            .iter()
            .all(|a| counts(&m, &a.name)[0] >= 10.0)
            .then_some(())
    })
    .expect("all three reporting");
    // Killed while the agents report: what it had acknowledged is on disk, what it had not
    // the agents still hold.
    let m = d.metrics();
    let before: Vec<[f64; 4]> = agents.iter().map(|a| counts(&m, &a.name)).collect();
    d.aggregator.as_mut().expect("aggregator").kill9();
    // 60 s down, as the issue asks: every agent keeps probing and spools its reports.
    std::thread::sleep(Duration::from_secs(60));
    for a in &agents {
        assert!(
            spooled(a) >= 100.0,
            "{} spooled its reports during the outage",
            a.name
        );
    }
    d.start_aggregator();
    // Its first answer already holds every counter it showed before it died.
    let m = wait_for(Duration::from_secs(10), || {
        let m = d.metrics();
        (!m.is_empty()).then_some(m)
    })
    .expect("restarted aggregator answers");
    for (a, was) in agents.iter().zip(&before) {
        let now = counts(&m, &a.name);
        assert!(
            now.iter().zip(was).all(|(n, w)| n >= w),
            "{}: counters went backwards across the restart: {was:?} -> {now:?} ({COUNTERS:?})",
            a.name
        );
    }
    // And once the spools are replayed, the aggregator's counters are the agents', exactly.
    for a in &agents {
        if let Err(e) = wait_exact(&d, a, [0.0; 4], Duration::from_secs(60)) {
            panic!("{e}\nagent log:\n{}", a.proc.log());
        }
    }
}

#[test]
fn agent_sigkilled_and_restarted_loses_at_most_one_interval() {
    let mut d = Deployment::start();
    let target = tcp_target();
    let state = d.issue("dl-k", &d.state());
    let a = start_agent(&d, "dl-k", &state, &target);
    wait_for(Duration::from_secs(20), || {
        (counts(&d.metrics(), "dl-k")[0] >= 10.0).then_some(())
    })
    .expect("reporting");
    // The aggregator's total before it goes, taken while the agent is frozen.
    a.proc.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    let base = counts(&d.metrics(), "dl-k")[0];
    d.aggregator.as_mut().expect("aggregator").kill9();
    a.proc.signal(Signal::SIGCONT);
    // Three seconds of reports only the spool holds; then the agent dies without warning.
    std::thread::sleep(Duration::from_secs(3));
    let mut a = a;
    let sent_before_kill = counts(&scrape(a.port), "dl-k")[0];
    a.proc.kill9();
    d.start_aggregator();
    let b = restart_agent(&d, &a, &target);
    // The aggregator keeps its counters across its restart: its count = what the agent
    // sent before the kill + what the restarted agent sent, give or take the interval the
    // kill cut short.
    let mut last = (0.0, 0.0);
    let ok = wait_for(Duration::from_secs(30), || {
        let now = counts(&scrape(b.port), "dl-k")[0];
        let agg = counts(&d.metrics(), "dl-k")[0];
        let expect = sent_before_kill + now;
        last = (agg, expect);
        (now >= 40.0 && spooled(&b) <= 1.0 && (agg - expect).abs() <= ONE_INTERVAL).then_some(())
    });
    assert!(
        ok.is_some(),
        "aggregator {} vs expected {} (spooled outage {} probes); restarted agent log:\n{}",
        last.0,
        last.1,
        sent_before_kill - base,
        b.proc.log()
    );
    assert!(
        sent_before_kill - base >= 25.0,
        "the outage left reports in the spool"
    );
    assert!(
        b.proc.log().contains("replayed"),
        "the restart replayed the spool:\n{}",
        b.proc.log()
    );
}

#[test]
fn agent_restarted_while_its_reports_are_in_flight_counts_each_once() {
    // The aggregator is frozen, not dead: reports the killed agent sent reach it after it
    // thaws, and the restarted agent replays the same reports from its spool.
    let d = Deployment::start();
    let target = tcp_target();
    let state = d.issue("dl-f", &d.state());
    let mut a = start_agent(&d, "dl-f", &state, &target);
    wait_for(Duration::from_secs(20), || {
        (counts(&d.metrics(), "dl-f")[0] >= 10.0).then_some(())
    })
    .expect("reporting");
    let agg = d.aggregator.as_ref().expect("aggregator");
    agg.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(2));
    let sent_before_kill = counts(&scrape(a.port), "dl-f")[0];
    a.proc.kill9();
    agg.signal(Signal::SIGCONT);
    let b = restart_agent(&d, &a, &target);
    let mut last = (0.0, 0.0);
    let ok = wait_for(Duration::from_secs(30), || {
        let now = counts(&scrape(b.port), "dl-f")[0];
        let agg = counts(&d.metrics(), "dl-f")[0];
        last = (agg, sent_before_kill + now);
        (now >= 40.0 && spooled(&b) <= 1.0 && (agg - last.1).abs() <= ONE_INTERVAL).then_some(())
    });
    assert!(
        ok.is_some(),
        "aggregator {} vs agent {} (before and after the kill); restarted agent log:\n{}",
        last.0,
        last.1,
        b.proc.log()
    );
}

#[test]
fn corrupt_spool_file_is_moved_aside_and_the_agent_goes_on() {
    let d = Deployment::start();
    let target = tcp_target();
    let state = d.issue("dl-c", &d.state());
    let mut a = start_agent(&d, "dl-c", &state, &target);
    wait_for(Duration::from_secs(20), || {
        (counts(&d.metrics(), "dl-c")[0] >= 5.0).then_some(())
    })
    .expect("reporting");
    a.proc.stop();
    let spool_dir = state.join("spool");
    let file = std::fs::read_dir(&spool_dir)
        .expect("spool dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "redb"))
        .expect("a spool file");
    let len = std::fs::metadata(&file).expect("meta").len() as usize;
    std::fs::write(&file, vec![0x5au8; len]).expect("garbage");
    let before = counts(&d.metrics(), "dl-c")[0];
    let b = restart_agent(&d, &a, &target);
    wait_for(Duration::from_secs(20), || {
        (counts(&d.metrics(), "dl-c")[0] >= before + 10.0).then_some(())
    })
    .unwrap_or_else(|| panic!("reports after the corrupt spool; log:\n{}", b.proc.log()));
    let m = scrape(b.port);
    assert_eq!(
        value(&m, "pathpulse_spool_errors_total", &[("kind", "corrupt")]),
        Some(1.0),
        "counted"
    );
    assert_eq!(value(&m, "pathpulse_spool_on_disk", &[]), Some(1.0));
    assert!(
        b.proc.log().contains("corrupt"),
        "logged:\n{}",
        b.proc.log()
    );
    let mut aside = file.into_os_string();
    aside.push(".corrupt");
    assert!(PathBuf::from(aside).exists(), "moved aside");
}

/// A small tmpfs mounted over a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn full_disk_keeps_reports_in_memory_and_nothing_is_lost() {
    if !require_root("full_disk_keeps_reports_in_memory_and_nothing_is_lost") {
        return;
    }
    let d = Deployment::start();
    let target = tcp_target();
    let state = d.issue("dl-full", &d.state());
    let _fs = Tmpfs::mount(&state.join("spool"), "1m");
    let a = start_agent(&d, "dl-full", &state, &target);
    wait_for(Duration::from_secs(20), || {
        (counts(&d.metrics(), "dl-full")[0] >= 5.0).then_some(())
    })
    .expect("reporting");
    // The aggregator stops answering and the disk fills up: the spool must grow and can't.
    let agg = d.aggregator.as_ref().expect("aggregator");
    agg.signal(Signal::SIGSTOP);
    let filler = state.join("spool").join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    let m = wait_for(Duration::from_secs(30), || {
        let m = scrape(a.port);
        (value(&m, "pathpulse_spool_on_disk", &[]) == Some(0.0)).then_some(m)
    })
    .unwrap_or_else(|| panic!("write error never seen; log:\n{}", a.proc.log()));
    assert!(value(&m, "pathpulse_spool_errors_total", &[("kind", "write")]).unwrap_or(0.0) >= 1.0);
    // Probing goes on.
    let sent = counts(&m, "dl-full")[0];
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        counts(&scrape(a.port), "dl-full")[0] >= sent + 10.0,
        "still probing"
    );
    // Room again; the spool is written from memory, then the aggregator returns.
    std::fs::remove_file(&filler).expect("rm filler");
    wait_for(Duration::from_secs(20), || {
        (value(&scrape(a.port), "pathpulse_spool_on_disk", &[]) == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("spool never recovered; log:\n{}", a.proc.log()));
    agg.signal(Signal::SIGCONT);
    if let Err(e) = wait_exact(&d, &a, [0.0; 4], Duration::from_secs(60)) {
        panic!("{e}\nagent log:\n{}", a.proc.log());
    }
    assert!(a.proc.log().contains("spool write failed"), "logged");
}

#[test]
fn a_second_agent_on_the_same_state_directory_refuses_to_start() {
    let d = Deployment::start();
    let target = tcp_target();
    let state = d.issue("dl-two", &d.state());
    let a = start_agent(&d, "dl-two", &state, &target);
    let (code, text) = pathpulse_tests::run(
        &pathpulse_tests::bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "dl-two",
            "--stamp-listen",
            "off",
            "--aggregator",
            &format!("127.0.0.1:{}", d.quic),
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--target",
            &target,
        ],
    );
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains("state_dir") && text.contains("in use by another process"),
        "{text}"
    );
    drop(a);
}

#[test]
fn with_two_aggregators_losing_one_changes_nothing_for_the_other() {
    let first = Deployment::start();
    let mut second = Deployment::start_sharing_ca(&first);
    let target = tcp_target();
    let state = first.issue("dl-ha", &first.state());
    let also = format!("127.0.0.1:{}", second.quic);
    let a = start_agent_with(&first, "dl-ha", &state, &target, &["--aggregator", &also]);
    wait_for(Duration::from_secs(20), || {
        (counts(&first.metrics(), "dl-ha")[0] >= 10.0
            && counts(&second.metrics(), "dl-ha")[0] >= 10.0)
            .then_some(())
    })
    .expect("both aggregators receive the reports");
    // The second one dies (agent frozen meanwhile so its last counters are final).
    a.proc.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    let before = counts(&second.metrics(), "dl-ha");
    second.aggregator.as_mut().expect("aggregator").kill9();
    a.proc.signal(Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(5));
    // The first one is exact all along.
    if let Err(e) = wait_exact(&first, &a, [0.0; 4], Duration::from_secs(10)) {
        panic!(
            "first aggregator while the second is down: {e}\nagent log:\n{}",
            a.proc.log()
        );
    }
    second.start_aggregator();
    // The second kept its counters across its restart and catches up from the spool.
    let back = counts(
        &wait_for(Duration::from_secs(10), || {
            let m = second.metrics();
            (!m.is_empty()).then_some(m)
        })
        .expect("second answers"),
        "dl-ha",
    );
    assert!(
        back.iter().zip(before).all(|(b, w)| *b >= w),
        "second went backwards: {before:?} -> {back:?}"
    );
    for (d, which) in [(&first, "first"), (&second, "second")] {
        if let Err(e) = wait_exact(d, &a, [0.0; 4], Duration::from_secs(60)) {
            panic!(
                "{which} aggregator after the outage: {e}\nagent log:\n{}",
                a.proc.log()
            );
        }
    }
}

#[test]
fn spool_bound_drops_the_oldest_and_both_ends_count_them() {
    let mut d = Deployment::start();
    let target = tcp_target();
    let state = d.issue("dl-bound", &d.state());
    let a = start_agent_with(
        &d,
        "dl-bound",
        &state,
        &target,
        &["--spool-max-reports", "4"],
    );
    wait_for(Duration::from_secs(20), || {
        (counts(&d.metrics(), "dl-bound")[0] >= 5.0).then_some(())
    })
    .expect("reporting");
    // 5 s down at 2 reports/s with room for 4: about 6 reports dropped, oldest first.
    d.aggregator.as_mut().expect("aggregator").kill9();
    std::thread::sleep(Duration::from_secs(5));
    let m = scrape(a.port);
    let dropped = value(&m, "pathpulse_spool_dropped_total", &[]).unwrap_or(0.0);
    assert!(dropped >= 3.0, "dropped {dropped}");
    assert_eq!(value(&m, "pathpulse_spool_reports", &[]), Some(4.0));
    d.start_aggregator();
    // The aggregator learns the count from the reports, and holds only what was kept:
    // at most the 4 spooled reports of the outage plus what came after.
    let ok = wait_for(Duration::from_secs(30), || {
        let agent = value(&scrape(a.port), "pathpulse_spool_dropped_total", &[])?;
        let agg = value(
            &d.metrics(),
            "pathpulse_spool_dropped_total",
            &[("agent", "dl-bound")],
        )?;
        (agg == agent && agent >= dropped).then_some(())
    });
    assert!(
        ok.is_some(),
        "aggregator's count never matched; log:\n{}",
        a.proc.log()
    );
    assert!(
        a.proc.log().contains("spool full"),
        "logged:\n{}",
        a.proc.log()
    );
}
