//! Benchmark (ignored by default; `scripts/bench.sh` runs it as root): time to alert of
//! pathpulse against blackbox_exporter + Prometheus + Alertmanager (Debian packages)
//! probing the same loopback target in the same namespace, the peer once tuned as fast
//! as it sanely goes (1 s scrape and evaluation, `for: 0s`, no group wait) and once with
//! common defaults (15 s, `for: 1m`, 30 s group wait); then the false alarms of each
//! during 1% random background loss.
//!
//! Durations (seconds) from the environment: `PATHPULSE_BENCH_TRIALS` (5),
//! `PATHPULSE_BENCH_DEFAULTS_WAIT` (400), `PATHPULSE_BENCH_BACKGROUND` (600).

use std::path::Path;
use std::time::{Duration, Instant};

use pathpulse_tests::webhook::WebhookReceiver;
use pathpulse_tests::{median, require_program, require_root, wait_for, wait_for_fast};
use serde_json::Value;

use crate::alerts::{Lab, is_loss};

const TARGET: &str = "127.0.0.2";

fn env_secs(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn firing(v: &Value) -> bool {
    v["status"] == "firing"
}

/// First firing alert at `hook` after `t0`, within `timeout`.
fn first_firing(
    hook: &WebhookReceiver,
    t0: Instant,
    timeout: Duration,
    pathpulse: bool,
) -> Option<f64> {
    wait_for_fast(timeout, || {
        hook.alerts()
            .into_iter()
            .find(|(at, a)| {
                *at > t0
                    && if pathpulse {
                        is_loss(a, TARGET, "firing")
                    } else {
                        firing(a)
                    }
            })
            .map(|(at, _)| (at - t0).as_secs_f64())
    })
}

fn count_firing(hook: &WebhookReceiver, after: Instant, pathpulse: bool) -> usize {
    hook.alerts()
        .iter()
        .filter(|(at, a)| {
            *at > after
                && if pathpulse {
                    a["labels"]["alertname"] == "PathpulseLoss" && firing(a)
                } else {
                    firing(a)
                }
        })
        .count()
}

#[test]
#[ignore = "benchmark: minutes long; scripts/bench.sh runs it"]
fn alert_benchmark_against_blackbox_exporter() {
    let test = "alert_benchmark_against_blackbox_exporter";
    if !require_root(test)
        || !require_program(test, "nft")
        || !require_program(test, "prometheus")
        || !require_program(test, "prometheus-alertmanager")
        || !require_program(test, "prometheus-blackbox-exporter")
    {
        return;
    }
    let _machine = crate::setup::exclusive();
    let lab = Lab::new("bb");
    let bind = || {
        WebhookReceiver::serve(
            lab.ns
                .enter(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
        )
    };
    let (hook_pp, hook_tuned, hook_default) = (bind(), bind(), bind());

    // pathpulse: 10 probes/s, 500 ms timeout and reports.
    let state = lab.path("agg");
    let webhook = hook_pp.url();
    let _agg = lab.aggregator("aggregator", &state, 4470, 9470, &["--webhook", &webhook]);
    let _agent = lab.agent("bench", &state, &[4470], &[TARGET]);

    // The peer: one blackbox exporter, one Prometheus with a tuned and a default job, one
    // Alertmanager routing each to its own webhook.
    let bb_cfg = lab.path("blackbox.yml");
    std::fs::write(
        &bb_cfg,
        "modules:\n  icmp:\n    prober: icmp\n    timeout: 1s\n",
    )
    .expect("write");
    let _bb = lab.ns.spawn(
        "blackbox",
        Path::new("/usr/bin/prometheus-blackbox-exporter"),
        &[
            &format!("--config.file={}", bb_cfg.display()),
            "--web.listen-address=127.0.0.1:9115",
        ],
        lab.dir.path(),
    );
    let rules = lab.path("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n\
         - name: tuned\n  interval: 1s\n  rules:\n\
         \x20 - alert: ProbeFailed\n    expr: probe_success{job=\"tuned\"} == 0\n    for: 0s\n    labels: {stack: tuned}\n\
         - name: default\n  interval: 15s\n  rules:\n\
         \x20 - alert: ProbeFailed\n    expr: probe_success{job=\"default\"} == 0\n    for: 1m\n    labels: {stack: default}\n",
    )
    .expect("write rules");
    let job = |name: &str, every: &str| {
        format!(
            "  - job_name: {name}\n    scrape_interval: {every}\n    scrape_timeout: 1s\n    metrics_path: /probe\n    params: {{module: [icmp]}}\n    static_configs: [{{targets: ['{TARGET}']}}]\n    relabel_configs:\n      - {{source_labels: [__address__], target_label: __param_target}}\n      - {{target_label: __address__, replacement: '127.0.0.1:9115'}}\n"
        )
    };
    let prom_cfg = lab.path("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  evaluation_interval: 1s\nrule_files: ['{}']\nalerting:\n  alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:9093']}}]}}]\nscrape_configs:\n{}{}",
            rules.display(),
            job("tuned", "1s"),
            job("default", "15s")
        ),
    )
    .expect("write prometheus.yml");
    let _prom = lab.ns.spawn(
        "prometheus",
        Path::new("/usr/bin/prometheus"),
        &[
            &format!("--config.file={}", prom_cfg.display()),
            &format!("--storage.tsdb.path={}", lab.path("tsdb").display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
        lab.dir.path(),
    );
    let am_cfg = lab.path("alertmanager.yml");
    std::fs::write(
        &am_cfg,
        format!(
            "route:\n  receiver: blackhole\n  routes:\n\
             \x20 - matchers: ['stack=\"tuned\"']\n    receiver: tuned\n    group_wait: 0s\n    group_interval: 1s\n    repeat_interval: 1h\n\
             \x20 - matchers: ['stack=\"default\"']\n    receiver: default\n    group_wait: 30s\n    group_interval: 5m\n    repeat_interval: 4h\n\
             receivers:\n  - name: blackhole\n\
             \x20 - name: tuned\n    webhook_configs: [{{url: '{}'}}]\n\
             \x20 - name: default\n    webhook_configs: [{{url: '{}'}}]\n",
            hook_tuned.url(),
            hook_default.url()
        ),
    )
    .expect("write alertmanager.yml");
    let _am = lab.ns.spawn(
        "alertmanager",
        Path::new("/usr/bin/prometheus-alertmanager"),
        &[
            &format!("--config.file={}", am_cfg.display()),
            &format!("--storage.path={}", lab.path("am-data").display()),
            "--web.listen-address=127.0.0.1:9093",
            "--cluster.listen-address=",
        ],
        lab.dir.path(),
    );
    // Warm up: Prometheus has probe results for both jobs.
    wait_for(Duration::from_secs(60), || {
        let v = lab.get("http://127.0.0.1:9090/api/v1/query?query=probe_success")?;
        (v["data"]["result"].as_array()?.len() == 2).then_some(())
    })
    .expect("Prometheus scrapes the blackbox exporter for both jobs");
    std::thread::sleep(Duration::from_secs(10));

    // 1. Time to alert, 20% loss, pathpulse and the tuned peer from the same onsets.
    let trials = env_secs("PATHPULSE_BENCH_TRIALS", 5);
    let (mut pp, mut tuned) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        let t0 = Instant::now();
        lab.loss(TARGET, 20);
        let p = first_firing(&hook_pp, t0, Duration::from_secs(60), true);
        let t = first_firing(&hook_tuned, t0, Duration::from_secs(60), false);
        println!("trial {trial}: pathpulse {p:?} s, tuned peer {t:?} s");
        if t.is_none() {
            let q = lab.get("http://127.0.0.1:9090/api/v1/query?query=ALERTS");
            let am = lab.get("http://127.0.0.1:9093/api/v2/alerts");
            println!(
                "  tuned peer silent: Prometheus ALERTS {q:?}; Alertmanager {am:?}; webhook got {:?}",
                hook_tuned.received().len()
            );
        }
        pp.push(p.unwrap_or(f64::NAN));
        tuned.push(t.unwrap_or(f64::NAN));
        lab.clear_loss();
        let t1 = Instant::now();
        wait_for(Duration::from_secs(150), || {
            hook_pp
                .alerts()
                .into_iter()
                .find(|(at, a)| *at > t1 && is_loss(a, TARGET, "resolved"))
        })
        .expect("pathpulse resolves");
        std::thread::sleep(Duration::from_secs(5));
    }

    // 2. Common defaults: how long until they alert at all (20% loss held).
    let hold = env_secs("PATHPULSE_BENCH_DEFAULTS_WAIT", 400);
    let t0 = Instant::now();
    lab.loss(TARGET, 20);
    let d = first_firing(&hook_default, t0, Duration::from_secs(hold), false);
    lab.clear_loss();
    println!(
        "common defaults (15 s, for: 1m, group_wait 30s): {}",
        d.map_or(
            format!("no alert within {hold} s of 20% loss"),
            |s| format!("alerted after {s:.1} s")
        )
    );
    // Let every alert resolve (and the peer's 1 min window empty) before the background
    // phase.
    wait_for(Duration::from_secs(150), || {
        let v = lab.get("http://127.0.0.1:9470/api/alerts")?;
        (v["firing"] == 0).then_some(())
    })
    .expect("pathpulse alerts resolve");
    std::thread::sleep(Duration::from_secs(70));

    // 3. False alarms during 1% random background loss.
    let bg = env_secs("PATHPULSE_BENCH_BACKGROUND", 600);
    let t2 = Instant::now();
    lab.loss(TARGET, 1);
    std::thread::sleep(Duration::from_secs(bg));
    lab.clear_loss();
    let fa = (
        count_firing(&hook_pp, t2, true),
        count_firing(&hook_tuned, t2, false),
        count_firing(&hook_default, t2, false),
    );

    let (mp, mt) = (median(&pp), median(&tuned));
    println!("== time to alert, 20% random loss onset -> webhook, {trials} trials");
    println!(
        "pathpulse (10 probes/s, 500 ms timeout, 500 ms reports): median {mp:.2} s, all {pp:?}"
    );
    println!(
        "blackbox_exporter + Prometheus + Alertmanager tuned (1 s, probe_success == 0, for 0s, group_wait 0s): median {mt:.2} s, all {tuned:?}"
    );
    println!("ratio pathpulse / tuned peer: {:.2}", mp / mt);
    println!(
        "== firing notifications during {bg} s of 1% background loss: pathpulse {}, tuned peer {}, defaults {}",
        fa.0, fa.1, fa.2
    );
    assert!(
        pp.iter().all(|x| x.is_finite()),
        "pathpulse alerted in every trial"
    );
}
