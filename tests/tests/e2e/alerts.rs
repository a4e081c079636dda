//! Alerts end to end: the real agent and aggregator inside a fresh network namespace,
//! random loss injected with nftables on chosen loopback targets, a real webhook receiver
//! (axum, bound inside the namespace) and a real Alertmanager (Debian package).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pathpulse_tests::lab::netns::Netns;
use pathpulse_tests::webhook::WebhookReceiver;
use pathpulse_tests::{
    Proc, bin, http_get, median, parse_metrics, quantile, require_program, require_root, run,
    select, wait_for, wait_for_fast,
};
use serde_json::Value;

/// Probe every 100 ms (10/s), declare a probe lost after 500 ms, report every 500 ms.
pub const AGENT_TIMING: [&str; 6] = [
    "--interval",
    "100ms",
    "--timeout",
    "500ms",
    "--report-interval",
    "500ms",
];

/// The loss injected at each onset, percent: `PATHPULSE_LOSS_PERCENT` (20; the issue's
/// goal speaks of 20–30%).
fn loss_percent() -> u32 {
    std::env::var("PATHPULSE_LOSS_PERCENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|p| (1..=100).contains(p))
        .unwrap_or(20)
}

/// The default rules without the loss rule's source roll-up.
const NO_SOURCE_ROLLUP: &str = r#"
[alert]
[[alert.rules]]
name = "PathpulseLoss"
source_rollup_name = ""
"#;

/// A namespace with an nftables input chain for loss, and a directory for state and logs.
pub struct Lab {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let ns = Netns::new(tag);
        let (code, out) = ns.run("nft", &["add", "table", "inet", "imp"]);
        assert_eq!(code, 0, "nft: {out}");
        let (code, out) = ns.run(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                "imp",
                "in",
                "{ type filter hook input priority 0; }",
            ],
        );
        assert_eq!(code, 0, "nft: {out}");
        Lab {
            ns,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Drop `percent` % of the echo requests to `addr`, at random.
    pub fn loss(&self, addr: &str, percent: u32) {
        let rule = format!(
            "ip daddr {addr} icmp type echo-request numgen random mod 100 < {percent} drop"
        );
        let mut args = vec!["add", "rule", "inet", "imp", "in"];
        args.extend(rule.split(' '));
        let (code, out) = self.ns.run("nft", &args);
        assert_eq!(code, 0, "nft: {out}");
    }

    pub fn clear_loss(&self) {
        let (code, out) = self.ns.run("nft", &["flush", "chain", "inet", "imp", "in"]);
        assert_eq!(code, 0, "nft: {out}");
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// GET a URL from inside the namespace.
    pub fn get(&self, url: &str) -> Option<Value> {
        let text = self.ns.enter(|| http_get(url).ok())?;
        serde_json::from_str(&text).ok()
    }

    pub fn aggregator(
        &self,
        name: &str,
        state: &Path,
        quic: u16,
        http: u16,
        extra: &[&str],
    ) -> Proc {
        let (q, h) = (format!("127.0.0.1:{quic}"), format!("127.0.0.1:{http}"));
        let mut args = vec![
            "run",
            "--listen",
            &q,
            "--http",
            &h,
            "--state-dir",
            state.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let p = self
            .ns
            .spawn(name, &bin("pathpulse-aggregator"), &args, self.dir.path());
        let ready = format!("http://{h}/readyz");
        wait_for(Duration::from_secs(20), || {
            self.ns.enter(|| http_get(&ready).ok())
        })
        .unwrap_or_else(|| panic!("{name} ready"));
        p
    }

    pub fn agent(&self, name: &str, ca_state: &Path, quics: &[u16], targets: &[&str]) -> Proc {
        self.agent_with(name, ca_state, quics, targets, &[])
    }

    /// [`Lab::agent`] with more arguments of `pathpulse-agent run` (`--site`, `--isp`, ...).
    pub fn agent_with(
        &self,
        name: &str,
        ca_state: &Path,
        quics: &[u16],
        targets: &[&str],
        extra: &[&str],
    ) -> Proc {
        let state = self.path(name);
        let (code, text) = run(
            &bin("pathpulse-aggregator"),
            &[
                "cert",
                "issue",
                "--name",
                name,
                "--out",
                state.join("identity").to_str().expect("utf-8"),
                "--state-dir",
                ca_state.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(code, 0, "cert issue: {text}");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--name".into(),
            name.into(),
            "--state-dir".into(),
            state.to_str().expect("utf-8").into(),
        ];
        args.extend(AGENT_TIMING.iter().map(|s| s.to_string()));
        // No STAMP reflector on UDP 862 (several agents on one host).
        args.extend(["--stamp-listen".into(), "off".into()]);
        for q in quics {
            args.push("--aggregator".into());
            args.push(format!("127.0.0.1:{q}"));
        }
        for t in targets {
            args.push("--target".into());
            args.push((*t).into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ns
            .spawn(name, &bin("pathpulse-agent"), &refs, self.dir.path())
    }
}

pub fn is_loss(a: &Value, dst: &str, status: &str) -> bool {
    a["labels"]["alertname"] == "PathpulseLoss"
        && a["labels"]["dst"] == dst
        && a["status"] == status
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `pathpulse_alerts_firing{alertname}` as the aggregator's /metrics says now.
fn firing_metric(lab: &Lab, http: u16, alertname: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{http}/metrics");
    let text = lab.ns.enter(|| http_get(&url).ok())?;
    let m = parse_metrics(&text);
    let s = select(&m, "pathpulse_alerts_firing", &[("alertname", alertname)]);
    (s.len() == 1).then(|| s[0].value)
}

/// `pathpulse-aggregator demo --webhook URL` (no config file): every echo to 127.0.0.2
/// is dropped, and the receiver gets the demo's firing loss alert.
#[test]
fn demo_with_a_webhook_delivers_its_alerts() {
    let test = "demo_with_a_webhook_delivers_its_alerts";
    if !require_root(test) || !require_program(test, "nft") {
        return;
    }
    let _machine = crate::setup::shared();
    let lab = Lab::new("dw");
    let (code, out) = lab.ns.run(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "imp",
            "in",
            "ip",
            "daddr",
            "127.0.0.2",
            "icmp",
            "type",
            "echo-request",
            "drop",
        ],
    );
    assert_eq!(code, 0, "nft: {out}");
    let hook = WebhookReceiver::serve(
        lab.ns
            .enter(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
    );
    let url = hook.url();
    let demo = lab.ns.spawn(
        "demo",
        &bin("pathpulse-aggregator"),
        &[
            "demo",
            "--no-gateway",
            "--http",
            "127.0.0.1:9470",
            "--webhook",
            &url,
        ],
        lab.dir.path(),
    );
    let (_, a) = hook
        .wait_alert(Duration::from_secs(30), |a| {
            is_loss(a, "127.0.0.2", "firing") && a["labels"]["src"] == "demo-a"
        })
        .unwrap_or_else(|| {
            panic!(
                "no firing loss alert from the demo within 30 s: {:?}\n{}",
                hook.alerts(),
                demo.log()
            )
        });
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("demo-a → 127.0.0.2")),
        "{a}"
    );
    assert!(
        demo.log().contains(&format!("alerts go to {url}")),
        "{}",
        demo.log()
    );
    assert!(
        !hook
            .alerts()
            .iter()
            .any(|(_, a)| a["labels"]["dst"] == "127.0.0.3"),
        "only the dropped path alerts"
    );
}

/// Time from switching 20% loss on (several paths at once) to the webhook's receipt of
/// the firing alert; an aggregator restart while alerts fire neither re-fires nor
/// forgets them; each alert resolves after the loss stops; a clean path never alerts.
#[test]
fn loss_alert_reaches_a_webhook_in_seconds_survives_a_restart_and_resolves() {
    let test = "loss_alert_reaches_a_webhook_in_seconds_survives_a_restart_and_resolves";
    if !require_root(test) || !require_program(test, "nft") {
        return;
    }
    let _machine = crate::setup::exclusive();
    let lab = Lab::new("al");
    let hook = WebhookReceiver::serve(
        lab.ns
            .enter(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
    );
    let state = lab.path("agg");
    let (quic, http) = (4470, 9470); // a fresh namespace: every port is free
    let webhook = hook.url();
    // Four of the agent's five paths lose: by default that is one source roll-up (the
    // next test); this one is about path alerts, so the roll-up is off.
    let config = lab.path("aggregator.toml");
    std::fs::write(&config, NO_SOURCE_ROLLUP).expect("write aggregator.toml");
    let agg_args = [
        "--config",
        config.to_str().expect("utf-8"),
        "--webhook",
        webhook.as_str(),
    ];
    let mut agg = lab.aggregator("aggregator", &state, quic, http, &agg_args);
    let lossy = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let clean = "127.0.0.9";
    let mut targets = lossy.to_vec();
    targets.push(clean);
    let _agent = lab.agent("al-agent", &state, &[quic], &targets);
    let api = format!("http://127.0.0.1:{http}/api/alerts");
    // Ten seconds of clean data first.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        lab.get(&api).expect("api")["firing"],
        0,
        "nothing fires on clean paths"
    );

    let trials = std::env::var("PATHPULSE_ALERT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2u32);
    let mut to_alert = Vec::new();
    let mut to_resolve = Vec::new();
    for trial in 0..trials {
        let t0 = Instant::now();
        for a in lossy {
            lab.loss(a, loss_percent());
        }
        for a in lossy {
            let (at, _) = wait_for_fast(Duration::from_secs(40), || {
                hook.alerts()
                    .into_iter()
                    .find(|(at, x)| *at > t0 && is_loss(x, a, "firing"))
            })
            .unwrap_or_else(|| {
                let got: Vec<Value> = hook.alerts().into_iter().map(|x| x.1).collect();
                panic!("trial {trial}: no firing loss alert for {a} within 40 s; got {got:?}")
            });
            to_alert.push(secs(at - t0));
        }

        if trial == 0 {
            // The metric counts them.
            assert_eq!(firing_metric(&lab, http, "PathpulseLoss"), Some(4.0));
            assert_eq!(firing_metric(&lab, http, "PathpulsePathDown"), Some(0.0));
            // Restart while four alerts fire: they are there at once, and not sent again.
            let before: Vec<Value> = lab.get(&api).expect("api")["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            agg.stop();
            agg = lab.aggregator("aggregator", &state, quic, http, &agg_args);
            let after = lab.get(&api).expect("api after restart");
            for a in lossy {
                let fp = |v: &[Value]| {
                    v.iter()
                        .find(|x| x["alertname"] == "PathpulseLoss" && x["labels"]["dst"] == a)
                        .map(|x| (x["fingerprint"].clone(), x["starts_at_ms"].clone()))
                };
                let after_list = after["alerts"].as_array().cloned().unwrap_or_default();
                assert!(fp(&before).is_some(), "{a} firing before the restart");
                assert_eq!(
                    fp(&before),
                    fp(&after_list),
                    "{a}: the same alert, same start, right after the restart: {after}"
                );
            }
            std::thread::sleep(Duration::from_secs(5));
            // Once the last minute shows it, fault localization explains the loss (here:
            // a lone agent losing to most of its targets reads as its own uplink), and the
            // alert says so (the page reads `startsAt` as Alertmanager spells it).
            let shown = wait_for(Duration::from_secs(40), || {
                let v = lab.get(&api)?;
                v["alerts"].as_array()?.iter().find_map(|x| {
                    (x["alertname"] == "PathpulseLoss" && x["labels"]["dst"] == "127.0.0.2")
                        .then(|| x.clone())
                        .filter(|x| x["annotations"]["verdict"].is_string())
                })
            })
            .unwrap_or_else(|| panic!("no verdict on the alert: {:?}", lab.get(&api)));
            println!("verdict: {}", shown["annotations"]["verdict"]);
            assert!(
                shown["annotations"]["verdict"].as_str().is_some_and(|v| {
                    v.starts_with("target 127.0.0.2") || v.starts_with("site_uplink al-agent")
                }),
                "{shown}"
            );
            assert!(shown["startsAt"].as_str().is_some_and(|s| s.ends_with('Z')));
            // The webhook is told too: the firing alert again, with its verdict.
            let verdict = shown["annotations"]["verdict"].clone();
            hook.wait_alert(Duration::from_secs(5), |x| {
                is_loss(x, "127.0.0.2", "firing") && x["annotations"]["verdict"] == verdict
            })
            .unwrap_or_else(|| panic!("the webhook never got the verdict: {:?}", hook.alerts()));
        }

        lab.clear_loss();
        let t1 = Instant::now();
        for a in lossy {
            let (at, _) = wait_for(Duration::from_secs(150), || {
                hook.alerts()
                    .into_iter()
                    .find(|(at, x)| *at > t1 && is_loss(x, a, "resolved"))
            })
            .unwrap_or_else(|| panic!("trial {trial}: {a} not resolved within 150 s"));
            to_resolve.push(secs(at - t1));
        }
        // The next trial starts from quiet paths.
        std::thread::sleep(Duration::from_secs(3));
    }

    assert_eq!(firing_metric(&lab, http, "PathpulseLoss"), Some(0.0));
    let alerts = hook.alerts();
    for a in lossy {
        let firing: Vec<&Value> = alerts
            .iter()
            .filter(|(_, x)| is_loss(x, a, "firing"))
            .map(|x| &x.1)
            .collect();
        let episodes: std::collections::BTreeSet<&str> = firing
            .iter()
            .filter_map(|x| x["startsAt"].as_str())
            .collect();
        // Each firing alert is notified once, and once more if its verdict showed later.
        for ep in &episodes {
            let n: Vec<&&Value> = firing.iter().filter(|x| x["startsAt"] == *ep).collect();
            assert!(
                n.len() == 1
                    || (n.len() == 2
                        && n[0]["annotations"]["verdict"].is_null()
                        && n[1]["annotations"]["verdict"].is_string()),
                "{a}: {n:?}"
            );
        }
        let resolved = alerts
            .iter()
            .filter(|(_, x)| is_loss(x, a, "resolved"))
            .count();
        assert_eq!(
            (episodes.len(), resolved),
            (trials as usize, trials as usize),
            "{a}: one firing alert and one resolved notification per trial (none again after the restart, no flapping)"
        );
    }
    assert!(
        !alerts.iter().any(
            |(_, x)| x["labels"]["dst"] == clean && x["labels"]["alertname"] == "PathpulseLoss"
        ),
        "the clean path never alerted"
    );
    let body = &hook.received()[0].body;
    assert_eq!(body["version"], "4", "Alertmanager webhook format");
    let first = &body["alerts"][0];
    assert!(
        first["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("al-agent →"))
    );
    assert!(
        first["annotations"]["link"]
            .as_str()
            .is_some_and(|s| s.ends_with(":9470/"))
    );
    assert!(
        first["annotations"]["window"].is_string() && first["annotations"]["value"].is_string()
    );

    to_alert.sort_by(f64::total_cmp);
    println!(
        "time to alert, {}% loss, 10 probes/s, 500 ms timeout and reports, {} samples: median {:.2} s, p95 {:.2} s, max {:.2} s; all {:?}",
        loss_percent(),
        to_alert.len(),
        median(&to_alert),
        quantile(&to_alert, 0.95),
        to_alert.last().copied().unwrap_or(f64::NAN),
        to_alert
    );
    println!(
        "time to resolve after the loss stopped: median {:.1} s, max {:.1} s",
        median(&to_resolve),
        to_resolve.iter().copied().fold(0.0, f64::max)
    );
    assert!(
        to_alert.iter().all(|t| *t < 15.0),
        "every alert within 15 s: {to_alert:?}"
    );
}

/// A lone agent probes five loopback targets (10 probes/s, 500 ms timeout and reports,
/// default rules); 20% random loss starts on four of them at once, as on the agent's own
/// uplink. The first loss alert at the webhook is the agent's one `PathpulseSourceLoss`
/// (its paths pooled: 40 lossy probes a second); the time from `nft add rule` to its
/// receipt is printed (`PATHPULSE_SOURCE_TRIALS` onsets, 3 by default). It resolves after
/// the loss stops; the clean path never alerts.
#[test]
fn loss_on_most_of_an_agents_paths_is_one_source_alert_in_seconds() {
    let test = "loss_on_most_of_an_agents_paths_is_one_source_alert_in_seconds";
    if !require_root(test) || !require_program(test, "nft") {
        return;
    }
    let _machine = crate::setup::exclusive();
    let lab = Lab::new("as");
    let hook = WebhookReceiver::serve(
        lab.ns
            .enter(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
    );
    let state = lab.path("agg");
    let (quic, http) = (4470, 9470);
    let webhook = hook.url();
    let _agg = lab.aggregator(
        "aggregator",
        &state,
        quic,
        http,
        &["--webhook", webhook.as_str()],
    );
    let lossy = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let clean = "127.0.0.9";
    let mut targets = lossy.to_vec();
    targets.push(clean);
    let _agent = lab.agent("as-agent", &state, &[quic], &targets);
    std::thread::sleep(Duration::from_secs(10));
    let is_source = |a: &Value, status: &str| {
        a["labels"]["alertname"] == "PathpulseSourceLoss"
            && a["labels"]["src"] == "as-agent"
            && a["status"] == status
    };
    let trials = std::env::var("PATHPULSE_SOURCE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3u32);
    let (mut to_alert, mut first_is_source) = (Vec::new(), 0);
    for trial in 0..trials {
        let t0 = Instant::now();
        for a in lossy {
            lab.loss(a, loss_percent());
        }
        let loss_kind = |a: &Value| {
            a["labels"]["alertname"] == "PathpulseSourceLoss"
                || a["labels"]["alertname"] == "PathpulseLoss"
        };
        let (at, first) = wait_for_fast(Duration::from_secs(40), || {
            hook.alerts()
                .into_iter()
                .find(|(at, x)| *at > t0 && loss_kind(x) && x["status"] == "firing")
        })
        .unwrap_or_else(|| {
            panic!(
                "trial {trial}: no loss alert within 40 s: {:?}",
                hook.alerts()
            )
        });
        to_alert.push(secs(at - t0));
        if is_source(&first, "firing") {
            first_is_source += 1;
        } else {
            println!("trial {trial}: a path alert came first (the onset race): {first}");
        }
        // The source roll-up fires (if a path's own alert came first, soon after it).
        let (_, fired) = wait_for_fast(Duration::from_secs(20), || {
            hook.alerts()
                .into_iter()
                .find(|(at, x)| *at > t0 && is_source(x, "firing"))
        })
        .unwrap_or_else(|| panic!("trial {trial}: no source roll-up: {:?}", hook.alerts()));
        assert!(fired["labels"]["dst"].is_null(), "{fired}");
        assert!(
            fired["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains("agent as-agent")),
            "{fired}"
        );
        lab.clear_loss();
        let t1 = Instant::now();
        wait_for(Duration::from_secs(150), || {
            hook.alerts()
                .into_iter()
                .find(|(at, x)| *at > t1 && is_source(x, "resolved"))
        })
        .unwrap_or_else(|| panic!("trial {trial}: not resolved within 150 s"));
        std::thread::sleep(Duration::from_secs(3));
    }
    let alerts = hook.alerts();
    assert!(
        !alerts.iter().any(|(_, x)| x["labels"]["dst"] == clean),
        "the clean path never alerted"
    );
    let path_alerts = alerts
        .iter()
        .filter(|(_, x)| x["labels"]["alertname"] == "PathpulseLoss" && x["status"] == "firing")
        .count();
    to_alert.sort_by(f64::total_cmp);
    println!(
        "time to the first loss alert, {}% loss on 4 of 5 paths, 10 probes/s, 500 ms timeout and reports, {} onsets: median {:.2} s, p95 {:.2} s, max {:.2} s; all {:?}; the source roll-up first in {first_is_source}; path alerts {path_alerts}",
        loss_percent(),
        to_alert.len(),
        median(&to_alert),
        quantile(&to_alert, 0.95),
        to_alert.last().copied().unwrap_or(f64::NAN),
        to_alert
    );
    assert!(
        2 * first_is_source > trials,
        "the source roll-up came first in {first_is_source} of {trials}"
    );
    assert!(
        to_alert.iter().all(|t| *t < 10.0),
        "every alert within 10 s: {to_alert:?}"
    );
}

/// Two aggregators (HA pair, one CA) get the same agent's reports and both push to one
/// real Alertmanager: it shows one alert, and drops it once both resolved it.
#[test]
fn two_aggregators_make_one_alert_in_a_real_alertmanager() {
    let test = "two_aggregators_make_one_alert_in_a_real_alertmanager";
    if !require_root(test)
        || !require_program(test, "nft")
        || !require_program(test, "prometheus-alertmanager")
    {
        return;
    }
    let _machine = crate::setup::shared();
    let lab = Lab::new("am");
    let am_port = 9093;
    let am_cfg = lab.path("alertmanager.yml");
    std::fs::write(
        &am_cfg,
        "route:\n  receiver: blackhole\n  group_wait: 0s\nreceivers:\n  - name: blackhole\n",
    )
    .expect("write alertmanager.yml");
    let am_data = lab.path("am-data");
    let _am = lab.ns.spawn(
        "alertmanager",
        Path::new("/usr/bin/prometheus-alertmanager"),
        &[
            &format!("--config.file={}", am_cfg.display()),
            &format!("--storage.path={}", am_data.display()),
            &format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=",
        ],
        lab.dir.path(),
    );
    let am_alerts = format!("http://127.0.0.1:{am_port}/api/v2/alerts");
    wait_for(Duration::from_secs(30), || lab.get(&am_alerts)).expect("Alertmanager up");

    // One CA for both: the second aggregator's state directory gets a copy.
    let (s1, s2) = (lab.path("agg1"), lab.path("agg2"));
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "cert",
            "issue",
            "--name",
            "bootstrap",
            "--out",
            lab.path("bootstrap").to_str().expect("utf-8"),
            "--state-dir",
            s1.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    std::fs::create_dir_all(s2.join("ca")).expect("mkdir");
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(s1.join("ca").join(f), s2.join("ca").join(f)).expect("copy CA");
    }
    let am_url = format!("http://127.0.0.1:{am_port}");
    let args = ["--alertmanager", am_url.as_str()];
    let _a1 = lab.aggregator("aggregator-1", &s1, 4471, 9471, &args);
    let _a2 = lab.aggregator("aggregator-2", &s2, 4472, 9472, &args);
    let _agent = lab.agent("ha-agent", &s1, &[4471, 4472], &["127.0.0.2", "127.0.0.9"]);
    std::thread::sleep(Duration::from_secs(8));

    let t0 = Instant::now();
    lab.loss("127.0.0.2", 30);
    let loss_in_am = |v: &Value| -> Vec<Value> {
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == "PathpulseLoss")
            .collect()
    };
    let shown = wait_for(Duration::from_secs(40), || {
        let l = loss_in_am(&lab.get(&am_alerts)?);
        (!l.is_empty()).then_some(l)
    })
    .expect("Alertmanager shows the loss alert");
    println!(
        "Alertmanager shows the alert {:.2} s after 30% loss started",
        secs(t0.elapsed())
    );
    // Both aggregators fire it (same labels, same fingerprint) and Alertmanager keeps one.
    let fp = |port: u16| {
        wait_for(Duration::from_secs(20), || {
            let v = lab.get(&format!("http://127.0.0.1:{port}/api/alerts"))?;
            v["alerts"]
                .as_array()?
                .iter()
                .find(|a| a["alertname"] == "PathpulseLoss" && a["state"] == "firing")
                .map(|a| (a["fingerprint"].clone(), a["labels"].clone()))
        })
        .unwrap_or_else(|| panic!("aggregator on {port} fires the loss alert"))
    };
    let (f1, f2) = (fp(9471), fp(9472));
    assert_eq!(f1, f2, "identical labels on both aggregators");
    std::thread::sleep(Duration::from_secs(3)); // both have pushed by now
    let now = loss_in_am(&lab.get(&am_alerts).expect("am"));
    assert_eq!(
        now.len(),
        1,
        "one alert in Alertmanager: {now:?} (first seen {shown:?})"
    );
    let a = &now[0];
    assert_eq!(a["labels"]["dst"], "127.0.0.2");
    assert_eq!(a["labels"]["src"], "ha-agent");
    assert_eq!(a["labels"]["probe"], "icmp");
    assert_eq!(a["status"]["state"], "active");
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("loss"))
    );
    assert!(
        a["generatorURL"]
            .as_str()
            .is_some_and(|s| s.starts_with("http://127.0.0.1:947"))
    );

    lab.clear_loss();
    let t1 = Instant::now();
    wait_for(Duration::from_secs(150), || {
        loss_in_am(&lab.get(&am_alerts)?).is_empty().then_some(())
    })
    .expect("Alertmanager drops the alert once resolved");
    println!(
        "Alertmanager shows it resolved {:.1} s after the loss stopped",
        secs(t1.elapsed())
    );
}
