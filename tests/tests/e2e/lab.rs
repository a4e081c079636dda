//! Lab tests: real packets through the TUN link emulator between network namespaces,
//! pathpulse compared with the emulator's log (the truth) and with fping in the same run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pathpulse_tests::lab::impair::{Delay, Impairment, Loss};
use pathpulse_tests::lab::netns::Netns;
use pathpulse_tests::lab::{ADDR_B, Link};
use pathpulse_tests::{Proc, Sample, bin, parse_metrics, quantile, require_program, require_root};

use crate::setup::value;

const METRICS_PORT: u16 = 9469;

/// Lab tests measure timing through a userspace emulator on a 2-core machine: they run
/// alone (see `setup::exclusive`).
pub fn lab_lock() -> std::sync::RwLockWriteGuard<'static, ()> {
    crate::setup::exclusive()
}

/// GET /metrics of an agent listening inside `ns` (fetched from inside it with bash).
fn metrics_in(ns: &Netns) -> Vec<Sample> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let (_, text) = ns.run("bash", &["-c", &script]);
    parse_metrics(&text)
}

fn agent_in(ns: &Netns, dir: &std::path::Path, target: &str, interval: &str) -> Proc {
    ns.spawn(
        "agent",
        &bin("pathpulse-agent"),
        &[
            "run",
            // The log's echo packets are the agent's and fping's only: no hop discovery
            // (its TTL-limited probes carry an identifier of their own).
            "--no-hops",
            "--name",
            "lab",
            "--target",
            target,
            "--interval",
            interval,
            "--timeout",
            "1s",
            "--report-interval",
            "1s",
            "--metrics-listen",
            &format!("127.0.0.1:{METRICS_PORT}"),
        ],
        dir,
    )
}

/// Round-trip times (ms) from the emulator's log, per echo identifier and sequence: reply
/// departure (toward A) minus request arrival (from A).
fn truth_by_probe(link: &Link) -> BTreeMap<u16, BTreeMap<u16, f64>> {
    use pathpulse_tests::lab::emu::Dir;
    let mut req: HashMap<(u16, u16), u64> = HashMap::new();
    let mut out: BTreeMap<u16, BTreeMap<u16, f64>> = BTreeMap::new();
    for r in &link.emu.log() {
        match (r.dir, r.echo) {
            (Dir::Ab, Some((8, id, seq))) if !r.dropped => {
                req.insert((id, seq), r.arrive_ns);
            }
            (Dir::Ba, Some((0, id, seq))) if !r.dropped => {
                if let (Some(t0), Some(t1)) = (req.remove(&(id, seq)), r.depart_ns.first()) {
                    out.entry(id)
                        .or_default()
                        .insert(seq, (*t1 - t0) as f64 / 1e6);
                }
            }
            _ => {}
        }
    }
    out
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Per-sample RTTs (ms) by ICMP sequence from the agent's trace log (JSON lines).
fn agent_samples(log: &str) -> BTreeMap<u16, f64> {
    log.lines()
        .filter(|l| l.contains("rtt sample"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let f = &v["fields"];
            Some((
                u16::try_from(f["seq"].as_u64()?).ok()?,
                f["rtt_ns"].as_u64()? as f64 / 1e6,
            ))
        })
        .collect()
}

/// Absolute errors (ms) of measured samples against the truth of the same probe.
fn abs_errors(measured: &BTreeMap<u16, f64>, truth: &BTreeMap<u16, f64>) -> Vec<f64> {
    sorted(
        measured
            .iter()
            .filter_map(|(seq, m)| truth.get(seq).map(|t| (m - t).abs()))
            .collect(),
    )
}

#[test]
fn lab_delay_quantiles_match_the_emulator_log_and_fping() {
    let _serial = lab_lock();
    let test = "lab_delay_quantiles_match_the_emulator_log_and_fping";
    if !require_root(test) || !require_program(test, "fping") {
        return;
    }
    let delay = Impairment {
        delay: Delay::Uniform {
            mean_ms: 20.0,
            spread_ms: 5.0,
        },
        ..Impairment::default()
    };
    let link = Link::new(delay, delay, 20);
    let dir = tempfile::tempdir().expect("tempdir");
    // The agent as `agent_in` starts it, with a trace line per RTT sample (JSON) so each of
    // its samples can be held against the truth of the same probe. 47 ms, not fping's
    // 50 ms: with equal periods the two probers' packets would keep one phase for the whole
    // run, and whichever lands just behind the other in the emulator would always wait.
    let agent_bin = bin("pathpulse-agent");
    let metrics_listen = format!("127.0.0.1:{METRICS_PORT}");
    let agent = link.a.spawn(
        "agent",
        std::path::Path::new("/usr/bin/env"),
        &[
            "RUST_LOG=info,pathpulse_agent::probe::icmp=trace",
            agent_bin.to_str().expect("utf-8 path"),
            "run",
            "--no-hops",
            "--log-format",
            "json",
            "--name",
            "lab",
            "--target",
            ADDR_B,
            "--interval",
            "47ms",
            "--timeout",
            "1s",
            "--report-interval",
            "1s",
            "--metrics-listen",
            &metrics_listen,
        ],
        dir.path(),
    );
    // fping in the same namespace, same path, same time: 800 probes 50 ms apart. `-t 1000`
    // as the agent's timeout: in count mode fping otherwise caps its timeout at the period
    // (50 ms) and calls the slowest replies of this 40 ± 10 ms path lost.
    let (code, fping_out) = link.a.run(
        "fping",
        &["-C", "800", "-p", "50", "-t", "1000", "-q", ADDR_B],
    );
    assert!(code == 0 || code == 1, "fping failed: {fping_out}");
    std::thread::sleep(Duration::from_millis(1500));
    let m = metrics_in(&link.a);
    let clock = |c: &str| value(&m, "pathpulse_rtt_samples_total", &[("clock", c)]).unwrap_or(-1.0);
    let (kernel, mono) = (clock("kernel"), clock("monotonic"));
    eprintln!("RTT samples: {kernel} from kernel timestamps, {mono} from the monotonic clock");
    assert!(
        kernel > 700.0 && mono <= kernel / 100.0,
        "RTT must come from kernel timestamps: {kernel} kernel, {mono} monotonic"
    );
    // fping -C prints one value per sequence 0..799 ("-" for no reply).
    let fping_by_seq: BTreeMap<u16, f64> = fping_out
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .enumerate()
        .filter_map(|(i, v)| Some((u16::try_from(i).ok()?, v.parse().ok()?)))
        .collect();
    assert!(
        fping_by_seq.len() >= 780,
        "fping answered {} of 800:\n{fping_out}",
        fping_by_seq.len()
    );
    // Truth per prober: two identifiers in the log, fping's with exactly 800 requests.
    let truth = truth_by_probe(&link);
    assert_eq!(
        truth.len(),
        2,
        "two probers, two identifiers: {:?}",
        truth.keys()
    );
    let mut probers: Vec<&BTreeMap<u16, f64>> = truth.values().collect();
    probers.sort_by_key(|t| t.len().abs_diff(800));
    let (truth_fping, truth_agent) = (probers[0], probers[1]);

    let ours = agent_samples(&agent.log());
    assert!(
        ours.len() > 700,
        "{} traced samples in the agent's log",
        ours.len()
    );
    // 1. What the user sees: the exported quantiles of the 5 min window against the same
    //    quantiles of the log. Tolerance 0.3 ms (the issue's): an HDR quantile is the top of
    //    its 32 µs bucket at 32-64 ms, and near p99 one sample more or less above the line
    //    moves the quantile by the gap between neighbouring samples (about 0.1 ms here).
    //    Probes that the emulator itself delayed unseen (its reader thread woke late: a
    //    stall of the machine, more than 1 ms off the log, counted probe by probe above)
    //    each move a quantile by one rank at most: the bound widens by those ranks.
    let stalls = ours
        .iter()
        .filter(|(seq, v)| truth_agent.get(seq).is_some_and(|t| (*v - t).abs() > 1.0))
        .count();
    let (t_agent, t_fping) = (
        sorted(truth_agent.values().copied().collect()),
        sorted(truth_fping.values().copied().collect()),
    );
    let fping_sorted = sorted(fping_by_seq.values().copied().collect());
    for (qs, q) in [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99)] {
        let ours = value(
            &m,
            "pathpulse_rtt_quantile_seconds",
            &[("quantile", qs), ("window", "5m")],
        )
        .expect("quantile")
            * 1000.0;
        let truth = quantile(&t_agent, q);
        let (theirs, truth_f) = (quantile(&fping_sorted, q), quantile(&t_fping, q));
        eprintln!(
            "p{qs}: pathpulse {ours:.3} ms (truth {truth:.3}, error {:+.3}); fping {theirs:.3} ms (truth {truth_f:.3}, error {:+.3}); {stalls} emulator stalls",
            ours - truth,
            theirs - truth_f
        );
        let rank = ((q * t_agent.len() as f64).ceil() as usize).max(1) - 1;
        let lo = t_agent[rank.saturating_sub(stalls)] - 0.3;
        let hi = t_agent[(rank + stalls).min(t_agent.len() - 1)] + 0.3;
        assert!(
            (lo..=hi).contains(&ours),
            "p{qs}: pathpulse {ours} ms vs truth {truth} ms ({lo:.3} ..= {hi:.3} with {stalls} stalls)"
        );
    }

    // 2. "No further from the truth than fping", probe by probe: every sample of each prober
    //    against the logged RTT of the same probe, so the comparison is not blurred by which
    //    samples happen to sit near a quantile. Both error distributions include the
    //    emulator's own wake-up delay (a real-time thread, see `emu.rs`); fping's also its
    //    user-space send stamp and its printing in 0.1 ms steps, which is what its users get.
    let (e_ours, e_fping) = (
        abs_errors(&ours, truth_agent),
        abs_errors(&fping_by_seq, truth_fping),
    );
    assert!(e_ours.len() > 700 && e_fping.len() > 700);
    for (qs, q) in [("median", 0.5), ("p90", 0.9)] {
        let (a, b) = (quantile(&e_ours, q), quantile(&e_fping, q));
        eprintln!(
            "per-probe |error| {qs}: pathpulse {:.1} µs, fping {:.1} µs, ratio {:.2} ({} and {} probes)",
            a * 1000.0,
            b * 1000.0,
            a / b,
            e_ours.len(),
            e_fping.len()
        );
        assert!(
            a <= b,
            "per-probe |error| {qs}: pathpulse {a:.4} ms is further from the truth than fping {b:.4} ms"
        );
    }
}

#[test]
fn lab_loss_is_inside_the_binomial_interval() {
    let _serial = lab_lock();
    if !require_root("lab_loss_is_inside_the_binomial_interval") {
        return;
    }
    let link = Link::new(Impairment::default(), Impairment::default(), 7);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_in(&link.a, dir.path(), ADDR_B, "10ms");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !metrics_in(&link.a).is_empty(),
        "no metrics from the agent:\n{}",
        agent.log()
    );
    // 20% loss on the request direction from now on.
    link.emu.set(
        pathpulse_tests::lab::emu::Dir::Ab,
        Impairment {
            loss: Loss::Bernoulli { p: 0.2 },
            ..Impairment::default()
        },
    );
    let before = metrics_in(&link.a);
    let sent0 = value(&before, "pathpulse_probes_sent_total", &[]).unwrap_or(0.0);
    let lost0 = value(&before, "pathpulse_probes_lost_total", &[]).unwrap_or(0.0);
    let recv0 = value(&before, "pathpulse_probes_received_total", &[]).unwrap_or(0.0);
    // 5,200 probes at 10 ms.
    std::thread::sleep(Duration::from_secs(52));
    link.emu
        .set(pathpulse_tests::lab::emu::Dir::Ab, Impairment::default());
    std::thread::sleep(Duration::from_secs(3));
    let after = metrics_in(&link.a);
    let sent = value(&after, "pathpulse_probes_sent_total", &[]).expect("sent") - sent0;
    let lost = value(&after, "pathpulse_probes_lost_total", &[]).expect("lost") - lost0;
    let recv = value(&after, "pathpulse_probes_received_total", &[]).expect("received") - recv0;
    let n = lost + recv;
    assert!(n >= 5000.0, "only {n} probes decided");
    let p = lost / n;
    // 99% binomial interval around the injected 20% for n probes (normal approximation,
    // n p (1-p) >> 10): the 2 s at the edges without loss widen it slightly downward.
    let half = 2.576 * (0.2 * 0.8 / n).sqrt();
    eprintln!("loss: {lost} of {n} = {p:.4} (injected 0.2, 99% interval ±{half:.4}); sent {sent}");
    assert!(
        (p - 0.2).abs() <= half + 0.01,
        "reported loss {p} outside 0.2 ± {half}"
    );
    // Over the interval: sent + in flight before - in flight after = decided.
    let (if0, if1) = (
        value(&before, "pathpulse_probes_in_flight", &[]).unwrap_or(0.0),
        value(&after, "pathpulse_probes_in_flight", &[]).expect("in flight"),
    );
    assert_eq!(
        sent + if0 - if1,
        n,
        "sent {sent}, in flight {if0} -> {if1}, decided {n}"
    );
    // Exactly: every request the emulator dropped is a probe the agent calls lost, and no
    // other (only requests were impaired; everything before was decided long ago).
    let dropped = link
        .emu
        .log()
        .iter()
        .filter(|r| {
            r.dir == pathpulse_tests::lab::emu::Dir::Ab
                && r.dropped
                && r.echo.is_some_and(|e| e.0 == 8)
        })
        .count() as f64;
    let lost_total = value(&after, "pathpulse_probes_lost_total", &[]).expect("lost");
    assert_eq!(
        lost_total, dropped,
        "agent's lost total vs requests the emulator dropped"
    );
}

/// Per echo sequence (one prober in the namespace): reply copies that reached A in
/// arrival order, with the request's arrival time.
struct Truth {
    /// (departure toward A, seq, rtt ms) of every reply copy, by departure.
    copies: Vec<(u64, u16, f64)>,
    requests: std::collections::BTreeMap<u16, u64>,
}

fn truth(link: &Link) -> Truth {
    use pathpulse_tests::lab::emu::Dir;
    let log = link.emu.log();
    let mut requests = std::collections::BTreeMap::new();
    for r in &log {
        if let (Dir::Ab, Some((8, _, seq))) = (r.dir, r.echo) {
            requests.entry(seq).or_insert(r.arrive_ns);
        }
    }
    let mut copies = Vec::new();
    for r in &log {
        if let (Dir::Ba, Some((0, _, seq))) = (r.dir, r.echo)
            && let Some(t0) = requests.get(&seq)
        {
            for d in &r.depart_ns {
                copies.push((*d, seq, (*d - t0) as f64 / 1e6));
            }
        }
    }
    copies.sort_by_key(|c| c.0);
    Truth { copies, requests }
}

#[test]
fn lab_duplicates_reordering_loss_and_jitter_match_the_log_exactly() {
    let _serial = lab_lock();
    if !require_root("lab_duplicates_reordering_loss_and_jitter_match_the_log_exactly") {
        return;
    }
    let jittery = Delay::Uniform {
        mean_ms: 10.0,
        spread_ms: 3.0,
    };
    let ab = Impairment {
        delay: jittery,
        reorder: 0.05,
        reorder_gap_ms: 25.0,
        duplicate: 0.03,
        loss: Loss::Bernoulli { p: 0.02 },
        ..Impairment::default()
    };
    let ba = Impairment {
        delay: jittery,
        duplicate: 0.05,
        ..Impairment::default()
    };
    let link = Link::new(ab, ba, 11);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_in(&link.a, dir.path(), ADDR_B, "20ms");
    std::thread::sleep(Duration::from_secs(30));
    // Cut the link: no reply arrives any more, so the agent's jitter and counters freeze at
    // the same point as the log's, and everything in flight times out (1 s).
    let cut = Impairment {
        loss: Loss::Bernoulli { p: 1.0 },
        ..Impairment::default()
    };
    let cut_ns = link.emu.now_ns();
    link.emu.set(pathpulse_tests::lab::emu::Dir::Ab, cut);
    link.emu.set(pathpulse_tests::lab::emu::Dir::Ba, cut);
    std::thread::sleep(Duration::from_secs(4));
    let m = metrics_in(&link.a);
    let t = truth(&link);
    let get = |name: &str| {
        value(&m, name, &[]).unwrap_or_else(|| panic!("{name} missing:\n{}", agent.log()))
    };

    // Duplicates: every copy after the first of a reply.
    let mut seen = std::collections::HashSet::new();
    let (mut dups, mut reordered, mut max_seq) = (0u64, 0u64, None::<u16>);
    let mut j = 0.0f64;
    let mut last_rtt: Option<f64> = None;
    for (_, seq, rtt) in &t.copies {
        if !seen.insert(*seq) {
            dups += 1;
            continue;
        }
        if max_seq.is_some_and(|m| *seq < m) {
            reordered += 1;
        }
        max_seq = Some(max_seq.map_or(*seq, |m| m.max(*seq)));
        if let Some(prev) = last_rtt {
            j += ((rtt - prev).abs() - j) / 16.0;
        }
        last_rtt = Some(*rtt);
    }
    // Probes that reached the emulator before the cut and got no reply; everything after the
    // cut is lost or still in flight at the agent's last report.
    let before: Vec<u16> = t
        .requests
        .iter()
        .filter(|(_, at)| **at < cut_ns)
        .map(|(s, _)| *s)
        .collect();
    let lost = before.iter().filter(|s| !seen.contains(s)).count() as f64;
    eprintln!(
        "truth: {} requests, {} answered, {lost} lost, {dups} duplicates, {reordered} reordered, jitter {j:.3} ms",
        t.requests.len(),
        seen.len()
    );
    assert!(
        t.requests.len() > 1200 && t.requests.len() < 65_000,
        "{} probes",
        t.requests.len()
    );
    assert!(dups > 20 && reordered > 20, "the impairment did something");
    assert_eq!(
        get("pathpulse_probes_duplicate_total"),
        dups as f64,
        "duplicates"
    );
    assert_eq!(
        get("pathpulse_probes_reordered_total"),
        reordered as f64,
        "reordered"
    );
    assert_eq!(
        get("pathpulse_probes_received_total"),
        seen.len() as f64,
        "received"
    );
    let (sent, in_flight) = (
        get("pathpulse_probes_sent_total"),
        get("pathpulse_probes_in_flight"),
    );
    let lost_after_cut = sent - before.len() as f64 - in_flight;
    assert_eq!(
        get("pathpulse_probes_lost_total") - lost_after_cut,
        lost,
        "lost before the cut"
    );
    let ours = get("pathpulse_jitter_seconds") * 1000.0;
    eprintln!("jitter: pathpulse {ours:.3} ms, log {j:.3} ms");
    assert!(
        (ours - j).abs() <= 0.05 * j,
        "RFC 3550 jitter {ours} ms vs {j} ms from the log (5%)"
    );
}

#[test]
fn lab_an_impairment_change_shows_in_the_10s_window_within_one_window() {
    if !require_root("lab_an_impairment_change_shows_in_the_10s_window_within_one_window") {
        return;
    }
    let _serial = lab_lock();
    let link = Link::new(Impairment::default(), Impairment::default(), 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let _agent = agent_in(&link.a, dir.path(), ADDR_B, "100ms");
    std::thread::sleep(Duration::from_secs(4));
    let loss10 = |m: &[Sample]| value(m, "pathpulse_loss_ratio", &[("window", "10s")]);
    assert_eq!(loss10(&metrics_in(&link.a)), Some(0.0), "clean link first");
    // 50% loss from now on; the 10 s window must show at least half of it within 10 s.
    link.emu.set(
        pathpulse_tests::lab::emu::Dir::Ab,
        Impairment {
            loss: Loss::Bernoulli { p: 0.5 },
            ..Impairment::default()
        },
    );
    let t0 = std::time::Instant::now();
    let seen = pathpulse_tests::wait_for(Duration::from_secs(10), || {
        loss10(&metrics_in(&link.a)).filter(|l| *l >= 0.25)
    });
    let took = t0.elapsed();
    eprintln!("loss change visible in the 10 s window after {took:?}: {seen:?}");
    assert!(
        seen.is_some(),
        "50% loss not visible in the 10 s window within 10 s"
    );
    // And it leaves again: once the link is clean, the 10 s window forgets within ~15 s
    // (10 s window + 5 s slot).
    link.emu
        .set(pathpulse_tests::lab::emu::Dir::Ab, Impairment::default());
    let clean = pathpulse_tests::wait_for(Duration::from_secs(18), || {
        loss10(&metrics_in(&link.a)).filter(|l| *l == 0.0)
    });
    assert!(
        clean.is_some(),
        "loss still in the 10 s window 18 s after the link healed"
    );
}

#[test]
fn lab_loss_rates_1_5_20_percent_and_bursts_are_measured_right() {
    if !require_root("lab_loss_rates_1_5_20_percent_and_bursts_are_measured_right") {
        return;
    }
    let _serial = lab_lock();
    // Four links at once, each with its own agent probing every 10 ms for 55 s (>= 5,000
    // probes): Bernoulli 1%, 5%, 20% on requests, and Gilbert-Elliott bursts (mean burst
    // 5 probes, 4.8% stationary loss).
    let ge = Loss::GilbertElliott {
        p: 0.01,
        r: 0.2,
        loss_good: 0.0,
        loss_bad: 1.0,
    };
    let cases = [
        (Loss::Bernoulli { p: 0.01 }, Some(0.01)),
        (Loss::Bernoulli { p: 0.05 }, Some(0.05)),
        (Loss::Bernoulli { p: 0.2 }, Some(0.2)),
        (ge, None),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runs = Vec::new();
    for (i, (loss, _)) in cases.iter().enumerate() {
        let link = Link::new(
            Impairment {
                loss: *loss,
                ..Impairment::default()
            },
            Impairment::default(),
            100 + i as u64,
        );
        let agent = agent_in(&link.a, dir.path(), ADDR_B, "10ms");
        runs.push((link, agent));
    }
    std::thread::sleep(Duration::from_secs(55));
    // Truth from the emulator's log: requests dropped. Read before and after the agent's
    // counters, with the agent's decision delay (1 s timeout + 1 s report) and a margin in
    // between, the drops the agent has decided are bracketed however loaded the machine.
    let dropped = |link: &Link| {
        link.emu
            .log()
            .iter()
            .filter(|r| {
                r.dir == pathpulse_tests::lab::emu::Dir::Ab
                    && r.dropped
                    && r.echo.is_some_and(|e| e.0 == 8)
            })
            .count() as f64
    };
    let before: Vec<f64> = runs.iter().map(|(link, _)| dropped(link)).collect();
    std::thread::sleep(Duration::from_secs(3));
    for (((link, agent), (_, injected)), dropped_before) in runs.iter().zip(cases).zip(before) {
        let m = metrics_in(&link.a);
        let get = |name: &str, w: &[(&str, &str)]| {
            value(&m, name, w).unwrap_or_else(|| panic!("{name} missing:\n{}", agent.log()))
        };
        let (lost, recv) = (
            get("pathpulse_probes_lost_total", &[]),
            get("pathpulse_probes_received_total", &[]),
        );
        let n = lost + recv;
        assert!(n >= 5000.0, "{n} probes decided");
        let dropped_after = dropped(link);
        let p = lost / n;
        let upper = get("pathpulse_loss_ratio_upper", &[("window", "5m")]);
        let window = get("pathpulse_loss_ratio", &[("window", "5m")]);
        eprintln!(
            "loss {injected:?}: measured {p:.4} over {n} probes (5m window {window:.4}, upper {upper:.4}); emulator dropped {dropped_before} then {dropped_after}, agent lost {lost}"
        );
        // Every loss the agent reports is a drop the emulator made, and every drop made
        // 3 s before the agent's counters were read is among its losses.
        assert!(
            (dropped_before..=dropped_after).contains(&lost),
            "agent lost {lost}, emulator dropped {dropped_before} 3 s before and {dropped_after} after"
        );
        if let Some(rate) = injected {
            let half = 2.576 * (rate * (1.0 - rate) / n).sqrt();
            assert!(
                (p - rate).abs() <= half,
                "measured {p} outside the 99% interval {rate} ± {half}"
            );
            let truth = dropped_after / (n + (dropped_after - lost));
            assert!(
                truth <= upper,
                "the true loss {truth} is above the reported upper bound {upper}"
            );
        }
    }
}
