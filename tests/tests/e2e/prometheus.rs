//! A real Prometheus (Debian package) scrapes the aggregator; PromQL finds the RTT
//! histogram of every path; `promtool check metrics` accepts the exposition.

use std::path::Path;
use std::time::Duration;

use pathpulse_tests::{Proc, free_port, http_get, promtool_check, require_program, wait_for};

use crate::setup::Deployment;

/// A real Prometheus scraping `127.0.0.1:{port}` every second (job `pathpulse`), its
/// data in `dir`; returns the process and its HTTP port.
pub fn start(dir: &Path, port: u16) -> (Proc, u16) {
    let prom_port = free_port();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pathpulse\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let tsdb = dir.join("tsdb");
    let prom = Proc::start(
        "prometheus",
        Path::new("prometheus"),
        &[
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", tsdb.display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        dir,
    );
    (prom, prom_port)
}

/// Percent-encode a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_every_path_and_promtool_is_clean() {
    let test = "prometheus_scrapes_every_path_and_promtool_is_clean";
    if !require_program(test, "prometheus") || !require_program(test, "promtool") {
        return;
    }
    let d = Deployment::start();
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let target2 = format!("tcp:127.0.0.1:{}", d.quic); // UDP only there: refused, lost
    let (sa, sb) = (d.issue("p-a", &d.state()), d.issue("p-b", &d.state()));
    let _a = d.agent(
        "p-a",
        &sa,
        &[&target, &target2],
        &["--site", "site-a", "--isp", "isp-a"],
    );
    let _b = d.agent("p-b", &sb, &[&target], &["--site", "site-b"]);

    let (_prom, prom_port) = start(d.dir.path(), d.http);
    let count = "count by (src, dst, probe) (pathpulse_rtt_seconds_bucket)";
    let url = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query={}",
        urlencode(count)
    );
    let want = [
        ("p-a", format!("127.0.0.1:{}", d.http)),
        ("p-a", format!("127.0.0.1:{}", d.quic)),
        ("p-b", format!("127.0.0.1:{}", d.http)),
    ];
    let found = wait_for(Duration::from_secs(60), || {
        let body: serde_json::Value = serde_json::from_str(&http_get(&url).ok()?).ok()?;
        let result = body["data"]["result"].as_array()?.clone();
        let have: Vec<(String, String)> = result
            .iter()
            .map(|r| {
                (
                    r["metric"]["src"].as_str().unwrap_or("").to_string(),
                    r["metric"]["dst"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        want.iter()
            .all(|(s, t)| have.iter().any(|(hs, ht)| hs == s && ht == t))
            .then_some(result)
    });
    let result = found.unwrap_or_else(|| panic!("Prometheus did not return pathpulse_rtt_seconds_bucket for every path; last answer: {:?}", http_get(&url)));
    for r in &result {
        let buckets: f64 = r["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert_eq!(buckets, 18.0, "17 classic bounds + Inf per path: {r}");
    }
    // Without native histograms, path-detail's histogram panel answers from the classic
    // buckets (the dashboards test runs its native branch).
    let dst = format!("127.0.0.1:{}", d.http);
    for q in crate::dashboards::histogram_panel("p-a", &dst, "tcp") {
        let answer = wait_for(Duration::from_secs(20), || {
            query(prom_port, &q).filter(|r| !r.is_empty())
        });
        assert!(
            answer.is_some(),
            "no series for {q}: {:?}",
            query(prom_port, &q)
        );
    }

    let exposition = http_get(&d.url("/metrics")).expect("scrape");
    // Per-path series with the source's site and ISP (promtool checks them below).
    let m = pathpulse_tests::parse_metrics(&exposition);
    for (src, site, isp) in [("p-a", "site-a", Some("isp-a")), ("p-b", "site-b", None)] {
        let rows = pathpulse_tests::select(&m, "pathpulse_rtt_seconds_bucket", &[("src", src)]);
        assert!(
            !rows.is_empty()
                && rows.iter().all(
                    |r| r.labels.get("src_site").map(String::as_str) == Some(site)
                        && r.labels.get("isp").map(String::as_str) == isp
                ),
            "{src}: {:?}",
            rows.first().map(|r| &r.labels)
        );
    }
    if let Err(e) = promtool_check(&exposition) {
        panic!("{e}");
    }
}

fn query(port: u16, q: &str) -> Option<Vec<serde_json::Value>> {
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/query?query={}",
        urlencode(q)
    );
    let body: serde_json::Value = serde_json::from_str(&http_get(&url).ok()?).ok()?;
    body["data"]["result"].as_array().cloned()
}

/// Prometheus with native histograms on scrapes the protobuf exposition: the RTT histogram
/// arrives as a native histogram, and `histogram_quantile` over it agrees with the exact
/// quantile gauge within the width of one native bucket (schema 3: a factor of 2^(1/8),
/// 9%), plus 5% for the two windows not covering exactly the same seconds.
#[test]
fn prometheus_native_histograms_agree_with_the_exact_quantiles() {
    let test = "prometheus_native_histograms_agree_with_the_exact_quantiles";
    if !require_program(test, "prometheus") {
        return;
    }
    // In two full CI runs, next to the report-flooding rate-limit test, the native p90 came
    // out at 0.53 of the exact one, steadily over 10 s. The likely cause was the test
    // comparing different data: it waited 30 s, so the aggregator's 1 min window still held
    // the agent's first (loaded) seconds, which Prometheus's `increase` never sees (they are
    // in its first sample). It now waits a full minute of scrapes. Not reproduced on demand
    // (five concurrent runs agreed either way), so it also still runs alone.
    let d = Deployment::start_alone();
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let sa = d.issue("n-a", &d.state());
    let _a = d.agent("n-a", &sa, &[&target], &[]);
    let prom_port = free_port();
    let cfg = d.dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pathpulse\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            d.http
        ),
    )
    .expect("write prometheus.yml");
    let tsdb = d.dir.path().join("tsdb-native");
    let prom = Proc::start(
        "prometheus",
        std::path::Path::new("prometheus"),
        &[
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", tsdb.display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--enable-feature=native-histograms",
        ],
        d.dir.path(),
    );
    // The raw series is a native histogram (the API shows `histogram`, not `value`).
    let native = wait_for(Duration::from_secs(60), || {
        let r = query(prom_port, "pathpulse_rtt_seconds")?;
        r.iter().find(|s| s["histogram"].is_array()).cloned()
    });
    assert!(
        native.is_some(),
        "no native histogram in Prometheus: {:?}\n{}",
        query(prom_port, "pathpulse_rtt_seconds"),
        prom.log()
    );
    // A minute of scrapes, so the aggregator's 1 min window holds no probe from before
    // Prometheus's first sample (`increase` counts only what came after it).
    std::thread::sleep(Duration::from_secs(65));
    // Both sides from the same Prometheus evaluation (the exact quantile gauge as scraped
    // with the histogram), so they cover the same minute. The two windows still end a few
    // hundred ms apart, and a loaded machine's TCP RTT tail moves within seconds: up to
    // five evaluations 2 s apart, the first inside the bound passes (a wrong histogram is
    // off in every one).
    let bound = 2f64.powf(1.0 / 8.0) * 1.05;
    for (qs, q) in [("0.5", 0.5), ("0.9", 0.9)] {
        let promql = format!(
            "histogram_quantile({q}, sum by (src, dst, probe) (increase(pathpulse_rtt_seconds[1m])))"
        );
        let exact = format!("pathpulse_rtt_quantile_seconds{{quantile=\"{qs}\",window=\"1m\"}}");
        let mut seen = Vec::new();
        for _ in 0..5 {
            let value = |promql: &str| -> Option<f64> {
                query(prom_port, promql)
                    .and_then(|r| r.first().cloned())
                    .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
            };
            let theirs = value(&promql).unwrap_or_else(|| panic!("no answer to {promql}"));
            let ours = value(&exact).unwrap_or_else(|| panic!("no answer to {exact}"));
            let ratio = theirs / ours;
            eprintln!(
                "p{qs}: native histogram_quantile {:.1} µs, exact {:.1} µs, ratio {ratio:.3}",
                theirs * 1e6,
                ours * 1e6
            );
            seen.push(ratio);
            if (1.0 / bound..=bound).contains(&ratio) {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let ratio = *seen.last().expect("one evaluation");
        assert!(
            (1.0 / bound..=bound).contains(&ratio),
            "p{qs}: native / exact ratios {seen:?}, bound {bound:.3}"
        );
    }
}
