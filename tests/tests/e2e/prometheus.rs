//! A real Prometheus (Debian package) scrapes the aggregator; PromQL finds the RTT
//! histogram of every path; `promtool check metrics` accepts the exposition.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use pathpulse_tests::{Proc, free_port, http_get, require_program, wait_for};

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
    let _a = d.agent("p-a", &sa, &[&target, &target2], &[]);
    let _b = d.agent("p-b", &sb, &[&target], &[]);

    let (_prom, prom_port) = start(d.dir.path(), d.http);
    let query = "count by (src, dst, probe) (pathpulse_rtt_seconds_bucket)";
    let url = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query={}",
        urlencode(query)
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

    let exposition = http_get(&d.url("/metrics")).expect("scrape");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics complained:\n{text}\n--- exposition ---\n{exposition}"
    );
}
