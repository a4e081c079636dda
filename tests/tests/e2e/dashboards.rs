//! The Grafana dashboards in `dashboards/` against a real Prometheus scraping the
//! aggregator of the two-site lab (`sites.rs`: hop discovery, STAMP, 30% loss at one ISP's
//! edge, so hop, ISP, verdict and directional series exist): every PromQL expression of
//! every panel, and every variable query, returns at least one series once the template
//! variables are substituted as Grafana would (multi-value "All" becomes the variable's
//! `allValue`; a single-value variable takes one of the values its own query returns).
//! Every `pathpulse_*` name the dashboards use is in the exposition. Prometheus runs as the
//! issue prescribes, with `--enable-feature=native-histograms` (so the RTT histogram is
//! ingested as a native histogram only: Prometheus 2.42 drops its classic buckets) and
//! `--web.enable-remote-write-receiver`. The lab's agents run with `--clock-sync assume`
//! (the namespaces share one kernel clock), so the one-way-delay queries are checked on
//! every host, whatever its kernel says about the clock.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use pathpulse_tests::lab::netns::Netns;
use pathpulse_tests::{
    http_get, parse_metrics, promtool_check, require_program, require_root, wait_for,
};
use serde_json::Value;

use crate::prometheus::urlencode;
use crate::sites::{HTTP, Sites};
use crate::systemd::repo;

/// A Prometheus HTTP API inside a namespace.
struct Prom<'a> {
    ns: &'a Netns,
    port: u16,
}

/// Substitutes for Grafana's built-in variables (1 s scrape interval).
const BUILTINS: [(&str, &str); 3] = [
    ("$__rate_interval", "10s"),
    ("$__interval", "5s"),
    ("$__range", "1m"),
];

struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = repo().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dashboards/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "dashboards: {files:?}");
    files
        .into_iter()
        .map(|p| Dashboard {
            file: p.file_name().expect("name").to_string_lossy().into_owned(),
            json: serde_json::from_str(&std::fs::read_to_string(&p).expect("read"))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, expr) of every query.
fn exprs(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect()
}

fn variables(d: &Value) -> Vec<&Value> {
    d["templating"]["list"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default()
}

fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr.to_string();
    // Longest names first, so `$src` does not eat the start of `$srcsite`.
    let mut vars: Vec<&(String, String)> = vars.iter().collect();
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in vars {
        e = e.replace(&format!("${{{name}}}"), value);
        e = e.replace(&format!("${name}"), value);
    }
    for (b, v) in BUILTINS {
        e = e.replace(b, v);
    }
    e
}

fn prom(p: &Prom, path: &str) -> Option<Value> {
    let url = format!("http://127.0.0.1:{}{path}", p.port);
    let body = p.ns.enter(|| http_get(&url)).ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    (v["status"] == "success").then_some(v)
}

/// Series an instant query returns (`None`: the query failed).
fn series(port: &Prom, expr: &str) -> Option<usize> {
    let v = prom(port, &format!("/api/v1/query?query={}", urlencode(expr)))?;
    v["data"]["result"].as_array().map(Vec::len)
}

/// Grafana's `label_values(SELECTOR, LABEL)` through the label values API.
fn label_values(port: &Prom, query: &str) -> Vec<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query `{query}` is not label_values(...)"));
    let (selector, label) = match inner.rsplit_once(',') {
        Some((s, l)) => (s.trim(), l.trim()),
        None => ("", inner.trim()),
    };
    let mut path = format!("/api/v1/label/{label}/values");
    if !selector.is_empty() {
        path.push_str(&format!("?match%5B%5D={}", urlencode(selector)));
    }
    prom(port, &path)
        .and_then(|v| {
            v["data"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Try every assignment of the dashboard's variables (in their order, each single-value
/// variable over the values its query returns now); `Ok` with the assignment under
/// which every query returns a series, else `Err` with the queries that returned none
/// under the last assignment tried.
fn check(
    port: &Prom,
    d: &Dashboard,
    vars: &[&Value],
    assigned: &mut Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Vec<String>> {
    let Some((v, rest)) = vars.split_first() else {
        let empty: Vec<String> = exprs(&d.json)
            .into_iter()
            .filter_map(|(title, e)| {
                let q = substitute(&e, assigned);
                match series(port, &q) {
                    Some(n) if n > 0 => None,
                    Some(_) => Some(format!("{}: `{title}`: no series for {q}", d.file)),
                    None => Some(format!("{}: `{title}`: query failed: {q}", d.file)),
                }
            })
            .collect();
        return if empty.is_empty() {
            Ok(assigned.clone())
        } else {
            Err(empty)
        };
    };
    let name = v["name"].as_str().expect("variable name").to_string();
    let candidates: Vec<String> = match v["type"].as_str() {
        Some("datasource") => return check(port, d, rest, assigned),
        Some("custom") => vec![
            v["current"]["value"]
                .as_str()
                .expect("custom variable's current value")
                .to_string(),
        ],
        Some("query") => {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("variable query");
            let values = label_values(port, &substitute(q, assigned));
            if values.is_empty() {
                return Err(vec![format!(
                    "{}: variable `{name}`: `{}` returns no value",
                    d.file,
                    substitute(q, assigned)
                )]);
            }
            if v["includeAll"].as_bool() == Some(true) {
                vec![v["allValue"].as_str().unwrap_or(".*").to_string()]
            } else {
                values
            }
        }
        other => panic!("{}: variable `{name}` of type {other:?}", d.file),
    };
    let mut last = Err(vec![]);
    for c in candidates {
        assigned.push((name.clone(), c));
        last = check(port, d, rest, assigned);
        assigned.pop();
        if last.is_ok() {
            break;
        }
    }
    last
}

/// The queries of path-detail's histogram panel for one path, variables substituted: with a
/// native-histogram branch and a classic fallback (see README, "Grafana dashboards").
pub(crate) fn histogram_panel(src: &str, dst: &str, probe: &str) -> Vec<String> {
    let board = dashboards()
        .into_iter()
        .find(|d| d.file == "pathpulse-path-detail.json")
        .expect("path detail");
    let vars =
        [("src", src), ("dst", dst), ("probe", probe)].map(|(n, v)| (n.to_string(), v.to_string()));
    let found: Vec<String> = exprs(&board.json)
        .into_iter()
        .filter(|(title, _)| title == "RTT from the Prometheus histogram")
        .map(|(_, e)| substitute(&e, &vars))
        .collect();
    assert_eq!(found.len(), 3, "p50, p99, mean");
    found
}

#[test]
fn dashboards_are_current_schema_with_a_datasource_variable() {
    for d in dashboards() {
        let j = &d.json;
        assert!(
            j["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
            "{}: schemaVersion",
            d.file
        );
        assert!(
            j["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{}",
            d.file
        );
        let ds: Vec<&Value> = variables(j)
            .into_iter()
            .filter(|v| v["type"] == "datasource")
            .collect();
        assert!(
            ds.len() == 1 && ds[0]["name"] == "datasource" && ds[0]["query"] == "prometheus",
            "{}: one datasource variable `datasource` of type prometheus",
            d.file
        );
        for v in variables(j) {
            if v["type"] == "query" {
                assert_eq!(v["datasource"]["uid"], "${datasource}", "{}", d.file);
            }
        }
        // Layout: every panel inside Grafana's 24 columns, none overlapping another.
        let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
        for p in panels(j) {
            let g = &p["gridPos"];
            let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or(u64::MAX));
            let title = p["title"].as_str().unwrap_or("").to_string();
            assert!(
                b.iter().all(|v| *v < 1000) && b[2] > 0 && b[3] > 0 && b[0] + b[2] <= 24,
                "{}: `{title}` gridPos {g}",
                d.file
            );
            for (other, o) in &boxes {
                let apart = b[0] + b[2] <= o[0]
                    || o[0] + o[2] <= b[0]
                    || b[1] + b[3] <= o[1]
                    || o[1] + o[3] <= b[1];
                assert!(apart, "{}: `{title}` overlaps `{other}`", d.file);
            }
            boxes.push((title, b));
        }
        let mut ids = BTreeSet::new();
        for p in panels(j) {
            let title = p["title"].as_str().unwrap_or("");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{}: duplicate id",
                d.file
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{}: {title}",
                d.file
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{}: {title}", d.file);
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{}: {title}",
                    d.file
                );
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{}: {title}",
                    d.file
                );
            }
        }
    }
}

/// Metric families (`# TYPE` lines) in an exposition.
fn families(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("# TYPE ")).count()
}

/// A real Prometheus inside `ns`, scraping the aggregator at [`HTTP`] every second, with
/// native histograms and the remote-write receiver on.
fn prometheus_in(lab: &Sites) -> pathpulse_tests::Proc {
    let dir = lab.dir.path();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pathpulse\n    static_configs:\n      - targets: ['{HTTP}']\n"
        ),
    )
    .expect("write prometheus.yml");
    lab.anchor().spawn(
        "prometheus",
        std::path::Path::new("prometheus"),
        &[
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            "--web.listen-address=127.0.0.1:9090",
            "--enable-feature=native-histograms",
            "--web.enable-remote-write-receiver",
        ],
        dir,
    )
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let test = "every_dashboard_query_returns_data_from_a_real_prometheus";
    let _serial = crate::lab::lab_lock();
    if !require_root(test)
        || !require_program(test, "prometheus")
        || !require_program(test, "promtool")
    {
        return;
    }
    let lab = Sites::start(43);
    // Loss at ISP A's edge (one way): hop loss, a verdict, alerts, forward STAMP loss.
    lab.set_loss(0.3);
    let prometheus = prometheus_in(&lab);
    let port = Prom {
        ns: lab.anchor(),
        port: 9090,
    };

    // Every metric name used is in the exposition (a misspelt name would otherwise hide
    // behind `or vector(0)`).
    let boards = dashboards();
    let names: BTreeSet<String> = boards
        .iter()
        .flat_map(|b| {
            let vars: Vec<String> = variables(&b.json)
                .into_iter()
                .filter_map(|v| v["definition"].as_str().map(String::from))
                .collect();
            exprs(&b.json)
                .into_iter()
                .map(|(_, e)| e)
                .chain(vars)
                .collect::<Vec<_>>()
        })
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("pathpulse_"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    let need = [
        "pathpulse_fault_verdict",
        "pathpulse_directional_loss_ratio",
        "pathpulse_hop_loss_ratio",
        "pathpulse_one_way_delay_seconds",
    ];
    let exposition = wait_for(Duration::from_secs(60), || {
        let m = parse_metrics(&lab.get("/metrics")?.1);
        need.iter()
            .all(|n| m.iter().any(|s| s.name == *n))
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("no {need:?} within 60 s:\n{}", lab.logs()));
    let exported: BTreeSet<&str> = exposition.iter().map(|s| s.name.as_str()).collect();
    // promtool accepts the aggregator's exposition with every family a lab run has (hops,
    // site pairs, ISPs, verdicts, STAMP) and an agent's own (standalone) exposition.
    let text = lab.get("/metrics").expect("aggregator /metrics").1;
    promtool_check(&text).unwrap_or_else(|e| panic!("aggregator: {e}"));
    let agent = wait_for(Duration::from_secs(30), || {
        let text = lab.agent_metrics("home-a")?;
        let m = parse_metrics(&text);
        need.iter()
            .filter(|n| **n != "pathpulse_fault_verdict")
            .all(|n| m.iter().any(|s| s.name == *n))
            .then_some(text)
    })
    .unwrap_or_else(|| {
        panic!(
            "home-a's /metrics lacks some of {need:?}:\n{:?}",
            lab.agent_metrics("home-a")
        )
    });
    promtool_check(&agent).unwrap_or_else(|e| panic!("agent home-a: {e}"));
    eprintln!(
        "promtool check metrics: clean for the aggregator ({} families) and home-a ({} families)",
        families(&text),
        families(&agent)
    );
    for n in &names {
        // A histogram's own name (native series) is in the text exposition as `_bucket`.
        assert!(
            exported.contains(n.as_str()) || exported.contains(format!("{n}_bucket").as_str()),
            "dashboards use `{n}`, which the aggregator does not export"
        );
    }
    // Native histograms on: the RTT histogram is native in Prometheus, and its classic
    // buckets are not there (what the dashboards must cope with).
    let native = wait_for(Duration::from_secs(30), || {
        let v = prom(
            &port,
            &format!("/api/v1/query?query={}", urlencode("pathpulse_rtt_seconds")),
        )?;
        let r = v["data"]["result"].as_array()?.clone();
        r.iter().any(|s| s.get("histogram").is_some()).then_some(r)
    });
    assert!(
        native.is_some(),
        "no native pathpulse_rtt_seconds in Prometheus:\n{}",
        prometheus.log()
    );
    assert_eq!(
        series(&port, "pathpulse_rtt_seconds_bucket"),
        Some(0),
        "Prometheus 2.42 with native histograms keeps no classic buckets of a native histogram"
    );

    let mut last: Vec<String> = Vec::new();
    let ok = wait_for(Duration::from_secs(90), || {
        last.clear();
        let mut used = Vec::new();
        for b in &boards {
            match check(&port, b, &variables(&b.json), &mut Vec::new()) {
                Ok(vars) => used.push((b.file.clone(), vars)),
                Err(e) => last.extend(e),
            }
        }
        last.is_empty().then_some(used)
    });
    match ok {
        Some(used) => {
            for (file, vars) in used {
                eprintln!("{file}: every query returns data with {vars:?}");
            }
        }
        None => panic!(
            "dashboard queries without data after 90 s:\n{}",
            last.join("\n")
        ),
    }
}
