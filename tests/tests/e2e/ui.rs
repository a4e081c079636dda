//! The live mesh page and its API: responses checked against a schema; the page loaded in
//! headless Chromium inside a network namespace with an aggregator and two agents, an
//! impairment injected with nftables, the right cell turning to the bad color; zero
//! requests leave 127.0.0.1; the engine's alerts in `/api/alerts` against their schema, a
//! stopped agent shown down; screenshots kept under `target/ui-artifacts/`. The page with
//! 40,000 cells from the aggregator is `ui_load.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pathpulse_tests::browser::{Browser, Page};
use pathpulse_tests::lab::netns::Netns;
use pathpulse_tests::{Proc, bin, http_get, require_program, require_root, run, wait_for};
use serde_json::{Value, json};

use crate::setup::Deployment;
use crate::ui_colors::{check_palette, check_theme};

// ---- a small schema language: "string" / "u64" / "number" / "bool" (a trailing `?` allows
// null), "enum:a|b", objects (every key required, no other key), `[item]` (a list of
// item), `{"tuple": [..]}` (a fixed-length array), `{"map": item}` (an object with any
// keys, every value an item).

fn check(v: &Value, schema: &Value, at: &str, errs: &mut Vec<String>) {
    match schema {
        Value::String(s) => {
            let (ty, nullable) = match s.strip_suffix('?') {
                Some(t) => (t, true),
                None => (s.as_str(), false),
            };
            if v.is_null() {
                if !nullable {
                    errs.push(format!("{at}: null where {ty} is required"));
                }
                return;
            }
            let ok = match ty {
                "string" => v.is_string(),
                "u64" => v.is_u64(),
                "number" => v.is_number(),
                "bool" => v.is_boolean(),
                e if e.starts_with("enum:") => v
                    .as_str()
                    .is_some_and(|x| e["enum:".len()..].split('|').any(|o| o == x)),
                other => panic!("bad schema type {other}"),
            };
            if !ok {
                errs.push(format!("{at}: {v} is not {ty}"));
            }
        }
        Value::Array(item) => match v.as_array() {
            Some(items) => {
                for (i, x) in items.iter().enumerate() {
                    check(x, &item[0], &format!("{at}[{i}]"), errs);
                }
            }
            None => errs.push(format!("{at}: not a list")),
        },
        Value::Object(o) if o.contains_key("map") => match v.as_object() {
            Some(obj) => {
                for (k, x) in obj {
                    check(x, &o["map"], &format!("{at}.{k}"), errs);
                }
            }
            None => errs.push(format!("{at}: not an object")),
        },
        Value::Object(o) if o.contains_key("tuple") => {
            let parts = o["tuple"].as_array().expect("tuple schema");
            match v.as_array() {
                Some(items) if items.len() == parts.len() => {
                    for (i, (x, s)) in items.iter().zip(parts).enumerate() {
                        check(x, s, &format!("{at}[{i}]"), errs);
                    }
                }
                _ => errs.push(format!("{at}: not an array of {}", parts.len())),
            }
        }
        Value::Object(o) => match v.as_object() {
            Some(obj) => {
                for (k, s) in o {
                    match obj.get(k) {
                        Some(x) => check(x, s, &format!("{at}.{k}"), errs),
                        None => errs.push(format!("{at}: `{k}` missing")),
                    }
                }
                for k in obj.keys().filter(|k| !o.contains_key(*k)) {
                    errs.push(format!("{at}: unknown field `{k}`"));
                }
            }
            None => errs.push(format!("{at}: not an object")),
        },
        other => panic!("bad schema {other}"),
    }
}

/// Parse `text` and check it against `schema`; panics with every violation.
fn validate(name: &str, text: &str, schema: &Value) -> Value {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {text:.300}"));
    let mut errs = Vec::new();
    check(&v, schema, name, &mut errs);
    assert!(
        errs.is_empty(),
        "{name} does not match its schema:\n{}\n{text:.2000}",
        errs.join("\n")
    );
    v
}

fn mesh_schema() -> Value {
    json!({
        "window": "enum:10s|1m|5m",
        "window_ms": "u64",
        "generated_ms": "u64",
        "sources": [{ "name": "string", "site": "string?", "isp": "string?", "up": "bool" }],
        "destinations": [{
            "name": "string", "probe": "enum:icmp|stamp|tcp|dns",
            "agent": "string?", "site": "string?", "isp": "string?"
        }],
        "cell_fields": ["string"],
        "cells": [{ "tuple": ["u64", "u64", "u64", "u64", "number?", "u64?", "u64?"] }],
    })
}

fn agents_schema() -> Value {
    json!({
        "generated_ms": "u64",
        "stale_after_ms": "u64",
        "agents": [{
            "name": "string", "site": "string?", "isp": "string?", "addr": "string?",
            "state": "enum:up|down", "last_report_ms": "u64?", "last_report_age_ms": "u64?",
            "reports": "u64", "paths": "u64", "scheduling_lag_us": "u64",
            "send_errors": "u64", "recv_errors": "u64", "stray_replies": "u64",
            "rtt_kernel_clock": "u64", "rtt_monotonic_clock": "u64"
        }],
    })
}

/// `GET /api/alerts` (the alert engine's document, README "Alerts").
fn alerts_schema() -> Value {
    let kind = "enum:loss|latency|jitter|mos|path_down|agent_stale";
    json!({
        "firing": "u64",
        "pending": "u64",
        "alerts": [{
            "fingerprint": "string", "state": "enum:pending|firing", "alertname": "string",
            "kind": kind, "severity": "string",
            "labels": { "map": "string" }, "annotations": { "map": "string" },
            "starts_at_ms": "u64", "startsAt": "string", "ends_at_ms": "u64?",
            "value": "number?", "threshold": "number?", "window_seconds": "number"
        }],
        "rules": [{
            "name": "string", "kind": kind, "severity": "string", "raise": "number",
            "clear": "number", "windows_seconds": ["number"], "clear_window_seconds": "number",
            "raise_for_seconds": "number", "clear_for_seconds": "number"
        }],
        "receivers": [{
            "name": "string", "kind": "enum:webhook|alertmanager", "url": "string",
            "sent": "u64", "failed_attempts": "u64", "dropped": "u64", "queued": "u64"
        }],
    })
}

/// `/api/alerts` checked against its schema and for what the schema cannot say: the
/// counts match the list, every alert's labels carry its name and severity, its
/// fingerprint is 16 hex digits, `startsAt` is `starts_at_ms` in RFC 3339.
pub fn validate_alerts(text: &str) -> Value {
    let v = validate("alerts", text, &alerts_schema());
    let alerts = v["alerts"].as_array().expect("alerts");
    for state in ["firing", "pending"] {
        let n = alerts.iter().filter(|a| a["state"] == state).count();
        assert_eq!(
            v[state], n,
            "`{state}` counts the {state} alerts: {text:.2000}"
        );
    }
    for a in alerts {
        assert_eq!(a["labels"]["alertname"], a["alertname"], "{a}");
        assert_eq!(a["labels"]["severity"], a["severity"], "{a}");
        let fp = a["fingerprint"].as_str().unwrap_or_default();
        assert!(
            fp.len() == 16 && fp.chars().all(|c| c.is_ascii_hexdigit()),
            "fingerprint {fp:?}"
        );
        let starts = a["startsAt"].as_str().unwrap_or_default();
        let t = humantime::parse_rfc3339(starts)
            .unwrap_or_else(|e| panic!("startsAt {starts:?}: {e}"))
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch");
        assert_eq!(
            t.as_millis() as u64,
            a["starts_at_ms"].as_u64().unwrap_or(0),
            "{a}"
        );
        assert_eq!(
            a["ends_at_ms"],
            Value::Null,
            "active alerts have not ended: {a}"
        );
    }
    assert!(
        v["rules"].as_array().is_some_and(|r| !r.is_empty()),
        "the rules in force are listed: {text:.2000}"
    );
    v
}

/// The alert of `alertname` whose labels include `labels`, from an `/api/alerts` document.
pub fn find_alert<'a>(
    doc: &'a Value,
    alertname: &str,
    labels: &[(&str, &str)],
) -> Option<&'a Value> {
    doc["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["alertname"] == alertname && labels.iter().all(|(k, v)| a["labels"][*k] == *v))
}

/// The agents table as the user reads it: per row its `data-state` and its cells' text.
fn agent_rows(b: &mut Browser, page: &Page) -> Vec<(String, Vec<String>)> {
    serde_json::from_value(b.eval(
        page,
        "[...document.querySelectorAll('#agents tbody tr')].map((tr) => [tr.dataset.state, [...tr.cells].map((c) => c.textContent)])",
    ))
    .unwrap_or_default()
}

/// Seconds in a "N s ago" cell.
fn seconds_ago(s: &str) -> Option<u64> {
    s.strip_suffix(" s ago")?.parse().ok()
}

fn path_schema() -> Value {
    json!({
        "src": "string", "dst": "string", "probe": "enum:icmp|stamp|tcp|dns",
        "generated_ms": "u64", "jitter_us": "number?",
        "sent": "u64", "received": "u64", "lost": "u64",
        "windows": [{
            "window": "enum:10s|1m|5m", "received": "u64", "lost": "u64",
            "loss": "number?", "loss_upper": "number?", "min_us": "u64?", "p50_us": "u64?",
            "p90_us": "u64?", "p99_us": "u64?", "mos": "number?",
            "forward_loss": "number?", "reverse_loss": "number?"
        }],
        "hops": [{
            "ttl": "u64", "addr": "string", "role": "enum:lan|cpe|isp|transit|target|unknown",
            "sent": "u64", "lost": "u64", "loss": "number?", "p50_us": "u64?",
            "ratelimited": "bool?"
        }],
        "history": [{
            "t_ms": "u64", "step_ms": "u64", "received": "u64", "lost": "u64",
            "loss": "number?",
            "rtt_us": "rtt?",
            "jitter_us": "u64?"
        }],
    })
}

/// `path_schema` with `rtt?` spelled out (7 quantiles or null), checked per point.
fn validate_path(text: &str) -> Value {
    let mut schema = path_schema();
    schema["history"][0]["rtt_us"] = json!("number?"); // placeholder, checked below
    let mut v: Value = serde_json::from_str(text).expect("path JSON");
    let mut errs = Vec::new();
    for (i, p) in v["history"]
        .as_array_mut()
        .map(|a| a.iter_mut())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let q = p["rtt_us"].take();
        if !q.is_null() {
            check(
                &q,
                &json!({ "tuple": ["u64", "u64", "u64", "u64", "u64", "u64", "u64"] }),
                &format!("path.history[{i}].rtt_us"),
                &mut errs,
            );
            let q: Vec<u64> = q
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            if !q.windows(2).all(|w| w[0] <= w[1]) {
                errs.push(format!("path.history[{i}].rtt_us not ascending: {q:?}"));
            }
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    validate("path", &v.to_string(), &schema);
    serde_json::from_str(text).expect("path JSON")
}

/// The meaning checks a schema cannot express.
fn check_mesh_semantics(m: &Value) {
    let (ns, nd) = (
        m["sources"].as_array().map_or(0, Vec::len) as u64,
        m["destinations"].as_array().map_or(0, Vec::len) as u64,
    );
    assert_eq!(
        m["cell_fields"],
        json!(["src", "dst", "received", "lost", "loss", "p50_us", "p99_us"])
    );
    for c in m["cells"].as_array().expect("cells") {
        let f = |i: usize| c[i].as_u64().unwrap_or(0);
        assert!(f(0) < ns && f(1) < nd, "cell indexes out of range: {c}");
        if let Some(loss) = c[4].as_f64() {
            let want = f(3) as f64 / (f(2) + f(3)) as f64;
            assert!(
                (loss - want).abs() < 1e-9,
                "loss {loss} != lost/decided: {c}"
            );
        } else {
            assert_eq!(f(2) + f(3), 0, "no loss ratio but probes decided: {c}");
        }
        if let (Some(p50), Some(p99)) = (c[5].as_u64(), c[6].as_u64()) {
            assert!(p50 <= p99, "{c}");
        }
    }
}

#[test]
fn ui_api_responses_match_their_schema() {
    // TCP probes need no privilege: this runs for every user.
    let d = Deployment::start();
    let sa = d.issue("agent-ui", &d.state());
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let dst = format!("127.0.0.1:{}", d.http);
    let _a = d.agent(
        "agent-ui",
        &sa,
        &[&target],
        &["--site", "lab", "--isp", "isp-1"],
    );
    let mesh = wait_for(Duration::from_secs(30), || {
        let text = http_get(&d.url("/api/mesh?window=10s")).ok()?;
        let m = validate("mesh", &text, &mesh_schema());
        (m["cells"].as_array()?.first()?[2].as_u64()? >= 5).then_some(m)
    })
    .expect("a mesh with a measured cell within 30 s");
    check_mesh_semantics(&mesh);
    assert_eq!(mesh["window"], "10s");
    assert_eq!(
        mesh["sources"][0],
        json!({ "name": "agent-ui", "site": "lab", "isp": "isp-1", "up": true })
    );
    assert_eq!(mesh["destinations"][0]["name"], dst.as_str());
    assert_eq!(mesh["destinations"][0]["probe"], "tcp");
    let default = validate(
        "mesh",
        &http_get(&d.url("/api/mesh")).expect("mesh"),
        &mesh_schema(),
    );
    assert_eq!(default["window"], "1m", "default window");

    let agents = validate(
        "agents",
        &http_get(&d.url("/api/agents")).expect("agents"),
        &agents_schema(),
    );
    let a = &agents["agents"][0];
    assert_eq!(
        (a["name"].as_str(), a["state"].as_str()),
        (Some("agent-ui"), Some("up"))
    );
    assert_eq!(a["addr"], "127.0.0.1");
    assert_eq!(a["paths"], 1);

    let p = validate_path(
        &http_get(&d.url(&format!("/api/path/agent-ui/{dst}?probe=tcp"))).expect("path"),
    );
    assert_eq!(p["windows"].as_array().map(Vec::len), Some(3));
    assert!(p["received"].as_u64().is_some_and(|r| r >= 5), "{p}");

    // Refusals: unknown path, window, probe.
    for (url, code) in [
        ("/api/path/agent-ui/192.0.2.1", "404"),
        ("/api/mesh?window=2h", "400"),
        (&format!("/api/path/agent-ui/{dst}?probe=udp"), "400"),
    ] {
        let e = http_get(&d.url(url)).expect_err(url);
        assert!(e.contains(code), "{url}: {e}");
    }

    // The event stream: first `mesh` event at once, in the same schema.
    let events = read_sse(d.http, "/api/events?window=10s", 2);
    let (_, data) = events
        .iter()
        .find(|(e, _)| e == "mesh")
        .expect("a mesh event");
    check_mesh_semantics(&validate("event mesh", data, &mesh_schema()));
    let (_, data) = events
        .iter()
        .find(|(e, _)| e == "agents")
        .expect("an agents event");
    validate("event agents", data, &agents_schema());

    // The page and its assets are served from the binary, with no absolute URL.
    let page = http_get(&d.url("/")).expect("page");
    assert!(page.contains("<canvas id=\"matrix\""), "{page:.300}");
    for asset in ["/assets/app.js", "/assets/app.css"] {
        assert!(page.contains(asset));
        assert!(
            http_get(&d.url(asset)).is_ok_and(|t| t.len() > 1000),
            "{asset}"
        );
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no absolute URL in the page"
    );

    // An open event stream does not hold the aggregator up at shutdown.
    let mut d = d;
    let stream = std::net::TcpStream::connect(("127.0.0.1", d.http)).expect("connect");
    {
        use std::io::Write;
        let mut s = &stream;
        write!(s, "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    }
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let code = d.aggregator.take().and_then(|mut p| p.stop());
    assert_eq!(code, Some(0), "SIGTERM with an event stream open");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    drop(stream);
}

/// Read `n` server-sent events from `path`: (event, data).
fn read_sse(port: u16, path: &str, n: usize) -> Vec<(String, String)> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    let mut line = String::new();
    let mut in_body = false;
    while out.len() < n {
        line.clear();
        if r.read_line(&mut line).expect("read event stream") == 0 {
            break;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if !in_body {
            if l.is_empty() {
                in_body = true;
            } else if l.starts_with("HTTP/") {
                assert!(l.contains(" 200"), "{l}");
            } else if let Some(ct) = l.to_ascii_lowercase().strip_prefix("content-type:") {
                assert!(ct.contains("text/event-stream"), "{l}");
            }
            continue;
        }
        // Chunked transfer: chunk-size lines are hex digits only; skip them.
        if !l.is_empty() && l.chars().all(|c| c.is_ascii_hexdigit()) && !l.contains(':') {
            continue;
        }
        if let Some(e) = l.strip_prefix("event:") {
            event = e.trim().to_string();
        } else if let Some(d) = l.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else if l.is_empty() && !data.is_empty() {
            out.push((std::mem::take(&mut event), std::mem::take(&mut data)));
        }
    }
    out
}

// ---- the page in Chromium, in a namespace with an impairment

const HTTP: &str = "127.0.0.1:9470";
const QUIC: &str = "127.0.0.1:4470";

pub fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/e2e-… → target/ui-artifacts
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf();
    let dir = target.join("ui-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// GET `path` from the aggregator inside `ns` (with bash's /dev/tcp): (status line, body).
fn get_in(ns: &Netns, path: &str) -> Option<(String, String)> {
    let (port_host, port) = HTTP.split_once(':').expect("addr");
    let script = format!(
        "exec 3<>/dev/tcp/{port_host}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let (code, text) = ns.run("bash", &["-c", &script]);
    if code != 0 {
        return None;
    }
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

struct Lab {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Lab {
    fn state(&self) -> PathBuf {
        self.dir.path().join("aggregator")
    }

    fn aggregator(&self) -> Proc {
        let state = self.state();
        let p = self.ns.spawn(
            "aggregator",
            &bin("pathpulse-aggregator"),
            &[
                "run",
                "--listen",
                QUIC,
                "--http",
                HTTP,
                "--state-dir",
                state.to_str().expect("utf-8"),
                "--stale-after",
                "5s",
            ],
            self.dir.path(),
        );
        wait_for(Duration::from_secs(20), || {
            get_in(&self.ns, "/readyz").filter(|(s, _)| s.contains(" 200"))
        })
        .expect("aggregator ready in the namespace");
        p
    }

    fn agent(&self, name: &str, site: &str, isp: &str, targets: &[&str]) -> Proc {
        let state = self.dir.path().join(name);
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
                self.state().to_str().expect("utf-8"),
            ],
        );
        assert_eq!(code, 0, "cert issue: {text}");
        let mut args: Vec<String> = [
            "run",
            "--name",
            name,
            "--stamp-listen",
            "off",
            "--aggregator",
            QUIC,
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--interval",
            "100ms",
            "--timeout",
            "1s",
            "--report-interval",
            "500ms",
            "--site",
            site,
            "--isp",
            isp,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for t in targets {
            args.extend(["--target".to_string(), t.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ns
            .spawn(name, &bin("pathpulse-agent"), &refs, self.dir.path())
    }

    /// Drop ICMP echo requests to `dst` where they arrive (the namespace's own nftables;
    /// on the way out the sender would see EPERM, a send error rather than a loss).
    fn drop_echo_to(&self, dst: &str) {
        let rules = self.dir.path().join("impair.nft");
        std::fs::write(
            &rules,
            format!(
                "table inet ppui {{\n  chain in {{\n    type filter hook input priority 0; policy accept;\n    ip daddr {dst} icmp type echo-request drop\n  }}\n}}\n"
            ),
        )
        .expect("write rules");
        let (code, text) = self.ns.run("nft", &["-f", rules.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "nft: {text}");
    }
}

/// The cell of src → dst as drawn: geometry, class and the canvas pixel at its sample point.
pub fn cell(b: &mut Browser, page: &Page, src: &str, dst: &str) -> Value {
    b.eval(
        page,
        &format!(
            r##"(() => {{
                const c = window.pathpulse.cell({src:?}, {dst:?});
                if (!c) return null;
                const cv = document.getElementById("matrix");
                const d = window.devicePixelRatio || 1;
                const px = cv.getContext("2d").getImageData(Math.round(c.sx * d), Math.round(c.sy * d), 1, 1).data;
                c.pixel = "#" + [px[0], px[1], px[2]].map((x) => x.toString(16).padStart(2, "0")).join("");
                return c;
            }})()"##
        ),
    )
}

pub fn save(dir: &Path, name: &str, png: &[u8]) -> PathBuf {
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let p = dir.join(name);
    std::fs::write(&p, png).expect("write screenshot");
    eprintln!("screenshot: {} ({} bytes)", p.display(), png.len());
    p
}

#[test]
fn mesh_page_in_chromium_shows_every_path_live_and_an_impaired_one_in_the_bad_color() {
    let test = "mesh_page_in_chromium_shows_every_path_live_and_an_impaired_one_in_the_bad_color";
    if !require_root(test) || !require_program(test, "chromium") || !require_program(test, "nft") {
        return;
    }
    let _machine = crate::setup::shared();
    let lab = Lab {
        ns: Netns::new("ui"),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let _aggregator = lab.aggregator();
    let _a = lab.agent(
        "mesh-a",
        "lab-1",
        "isp-a",
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
    );
    let agent_b = lab.agent(
        "mesh-b",
        "lab-2",
        "isp-b",
        &["127.0.0.2", "127.0.0.3", "127.0.0.5"],
    );
    let paths = [
        ("mesh-a", "127.0.0.2"),
        ("mesh-a", "127.0.0.3"),
        ("mesh-a", "127.0.0.4"),
        ("mesh-b", "127.0.0.2"),
        ("mesh-b", "127.0.0.3"),
        ("mesh-b", "127.0.0.5"),
    ];
    let mut b = Browser::start(Some(&lab.ns), lab.dir.path());
    let page = b.page(1400, 900);
    b.color_scheme(&page, "light");
    b.navigate(&page, &format!("http://{HTTP}/?window=10s&metric=loss"));

    // Live data: every path has a cell with data, and updates keep coming.
    let summary = wait_for(Duration::from_secs(30), || {
        let s = b.eval(
            &page,
            "window.pathpulse ? window.pathpulse.summary() : null",
        );
        (s["cellsWithData"] == 6 && s["updates"].as_u64() >= Some(3)).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the page did not show 6 live paths within 30 s: {}\nerrors: {:?}\n{}",
            b.eval(
                &page,
                "JSON.stringify(window.pathpulse && window.pathpulse.summary())"
            ),
            b.page_errors(&page),
            b.log()
        )
    });
    assert_eq!(
        (
            &summary["sources"],
            &summary["destinations"],
            &summary["paths"],
            &summary["cellsDrawn"]
        ),
        (&json!(2), &json!(4), &json!(6), &json!(6)),
        "{summary}"
    );
    let palette: Vec<String> =
        serde_json::from_value(b.eval(&page, "window.pathpulse.palette")).expect("palette");
    let bad = palette.last().expect("palette").clone();
    for (src, dst) in paths {
        let c = cell(&mut b, &page, src, dst);
        assert_eq!(c["present"], true, "{src} -> {dst}: {c}");
        assert_ne!(
            c["pixel"],
            bad.as_str(),
            "{src} -> {dst} bad before any impairment: {c}"
        );
        assert_eq!(c["pixel"], c["color"], "{src} -> {dst}: drawn color: {c}");
    }
    assert!(
        cell(&mut b, &page, "mesh-b", "127.0.0.4")["present"] == false,
        "no cell where no path is"
    );
    let updates_before = summary["updates"].as_u64().unwrap_or(0);

    // The agents table: every agent with its health, site / ISP, paths, last report.
    let rows = wait_for(Duration::from_secs(10), || {
        let r = agent_rows(&mut b, &page);
        (r.len() == 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("two agents in the table: {:?}", agent_rows(&mut b, &page)));
    for ((state, cells), (name, site)) in rows
        .iter()
        .zip([("mesh-a", "lab-1 / isp-a"), ("mesh-b", "lab-2 / isp-b")])
    {
        assert_eq!(state, "up", "{rows:?}");
        assert_eq!(cells[..3], ["● up", name, site], "{rows:?}");
        assert!(
            seconds_ago(&cells[3]).is_some_and(|s| s <= 3),
            "reported within 3 s: {rows:?}"
        );
        assert_eq!(cells[4..], ["3", "0"], "3 paths, no socket error: {rows:?}");
    }

    // The API as the page sees it, against the schema.
    let text = |b: &mut Browser, url: &str| -> String {
        serde_json::from_value(b.eval(&page, &format!("fetch({url:?}).then(r => r.text())")))
            .expect("text")
    };
    let mesh = validate(
        "mesh",
        &text(&mut b, "/api/mesh?window=10s"),
        &mesh_schema(),
    );
    check_mesh_semantics(&mesh);
    let agents = validate("agents", &text(&mut b, "/api/agents"), &agents_schema());
    assert!(
        agents["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["state"] == "up")),
        "{agents}"
    );
    validate_path(&text(&mut b, "/api/path/mesh-a/127.0.0.4?probe=icmp"));
    // The real alert engine: nothing fires on clean paths.
    let doc = validate_alerts(&text(&mut b, "/api/alerts"));
    assert_eq!(
        (&doc["firing"], &doc["pending"]),
        (&json!(0), &json!(0)),
        "{doc}"
    );
    assert_eq!(
        b.eval(&page, "document.getElementById('alerts').textContent"),
        "No alerts"
    );

    // Impair one path: echo requests to 127.0.0.4 (probed by mesh-a only) are dropped.
    lab.drop_echo_to("127.0.0.4");
    let t0 = Instant::now();
    let turned = wait_for(Duration::from_secs(20), || {
        let c = cell(&mut b, &page, "mesh-a", "127.0.0.4");
        (c["pixel"] == bad.as_str() && c["cls"] == json!(palette.len() - 1)).then_some(c)
    });
    let took = t0.elapsed();
    let c = turned.unwrap_or_else(|| {
        panic!(
            "mesh-a -> 127.0.0.4 did not turn {bad} within 20 s: {}",
            cell(&mut b, &page, "mesh-a", "127.0.0.4")
        )
    });
    eprintln!(
        "impaired cell turned bad after {:.1} s: {c}",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let worst = b.eval(
        &page,
        "(() => { const w = document.querySelector('#worst li'); return w ? [w.dataset.src, w.dataset.dst, w.textContent] : null; })()",
    );
    assert_eq!(
        (&worst[0], &worst[1]),
        (&json!("mesh-a"), &json!("127.0.0.4")),
        "the impaired path heads the worst list: {worst}"
    );
    for (src, dst) in paths.iter().filter(|p| **p != ("mesh-a", "127.0.0.4")) {
        let c = cell(&mut b, &page, src, dst);
        assert_ne!(
            c["pixel"],
            bad.as_str(),
            "{src} -> {dst} turned bad too: {c}"
        );
    }
    let s = b.eval(&page, "window.pathpulse.summary()");
    assert!(
        s["updates"].as_u64() > Some(updates_before),
        "live updates, no reload: {s}"
    );

    // The engine's loss alert for that path, against the schema, and on the page.
    let loss = [("src", "mesh-a"), ("dst", "127.0.0.4"), ("probe", "icmp")];
    let doc = wait_for(Duration::from_secs(30), || {
        let doc = validate_alerts(&text(&mut b, "/api/alerts"));
        find_alert(&doc, "PathpulseLoss", &loss)
            .is_some_and(|a| a["state"] == "firing")
            .then_some(doc)
    })
    .unwrap_or_else(|| {
        panic!(
            "no firing PathpulseLoss for mesh-a -> 127.0.0.4 within 30 s: {}",
            text(&mut b, "/api/alerts")
        )
    });
    let a = find_alert(&doc, "PathpulseLoss", &loss).expect("alert");
    eprintln!("the engine's alert: {a}");
    assert_eq!(a["kind"], "loss", "{a}");
    assert!(a["value"].as_f64() > a["threshold"].as_f64(), "{a}");
    let loss_alerts: Vec<&Value> = doc["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["kind"] == "loss")
        .collect();
    assert_eq!(loss_alerts.len(), 1, "only the impaired path loses: {doc}");
    let shown = wait_for(Duration::from_secs(15), || {
        let t = b.eval(&page, "document.getElementById('alerts').innerText");
        let t = t.as_str().unwrap_or_default().to_string();
        (t.contains("PathpulseLoss") && t.contains("mesh-a → 127.0.0.4")).then_some(t)
    })
    .expect("the alerts panel shows the engine's loss alert");
    assert!(shown.starts_with("firing"), "{shown}");

    // The alerts panel renders what the alert engine answers, in its format
    // `[{labels, annotations, state, startsAt}]` (answered here by the browser itself).
    let alerts = json!([
        {
            "labels": { "alertname": "PathLoss", "severity": "critical", "src": "mesh-a",
                        "dst": "127.0.0.4", "probe": "icmp" },
            "annotations": { "summary": "mesh-a → 127.0.0.4 loses 100%",
                             "verdict": "destination side: the target drops echo requests" },
            "state": "firing",
            "startsAt": "2026-11-25T10:00:00Z"
        },
        {
            "labels": { "alertname": "AgentDown", "severity": "warning", "agent": "mesh-c" },
            "annotations": {},
            "state": "pending",
            "startsAt": "2026-11-25T10:05:00Z"
        }
    ])
    .to_string();
    b.intercept(&page, "*/api/alerts*");
    let shown = wait_for(Duration::from_secs(15), || {
        b.fulfill_paused(&page, 200, &alerts);
        let ul = b.eval(
            &page,
            "(() => { const u = document.getElementById('alerts'); return [u.dataset.count, u.innerText]; })()",
        );
        // (The engine's own two alerts are not these: wait for the answered ones.)
        (ul[0] == "2" && ul[1].as_str().is_some_and(|t| t.contains("agent=mesh-c")))
            .then(|| ul[1].clone())
    })
    .expect("the alerts panel shows the two answered alerts");
    // Its next poll stays held (unanswered) until the end, so the screenshots show them.
    let shown = shown.as_str().unwrap_or_default().to_string();
    for want in [
        "firing",
        "PathLoss",
        "critical",
        "mesh-a → 127.0.0.4",
        "verdict: destination side: the target drops echo requests",
        "pending",
        "AgentDown",
        "agent=mesh-c",
    ] {
        assert!(
            shown.contains(want),
            "alerts panel lacks {want:?}:\n{shown}"
        );
    }
    assert!(
        shown.find("PathLoss") < shown.find("AgentDown"),
        "firing first:\n{shown}"
    );

    // The path view of the impaired path, then the screenshots.
    b.eval(
        &page,
        r#"(() => {
            const c = window.pathpulse.cell("mesh-a", "127.0.0.4");
            const r = document.getElementById("matrix").getBoundingClientRect();
            document.getElementById("matrix").dispatchEvent(new MouseEvent("click",
                { clientX: r.left + c.x + 2, clientY: r.top + c.y + 2, bubbles: true }));
            return true;
        })()"#,
    );
    wait_for(Duration::from_secs(10), || {
        let t = b.eval(&page, "document.getElementById('path-stats').textContent");
        t.as_str().filter(|t| t.contains("10s")).map(|_| ())
    })
    .expect("the path view opened");
    let title = b.eval(&page, "document.getElementById('path-title').textContent");
    assert_eq!(title, "mesh-a → 127.0.0.4");
    // The hour of history gets its first 10 s point with the loss in it (periods are
    // sampled 6 s after they end; with no reply at all its RTT quantiles are null); the
    // path view draws it when it refreshes.
    let history = wait_for(Duration::from_secs(40), || {
        let p = validate_path(&text(&mut b, "/api/path/mesh-a/127.0.0.4?probe=icmp"));
        p["history"]
            .as_array()?
            .iter()
            .any(|x| x["lost"].as_u64() > Some(0))
            .then_some(p)
    })
    .expect("a history point with the losses within 40 s");
    eprintln!("history: {}", history["history"]);
    // The path view refreshes every 10 s: wait until it has drawn the lossy point (not
    // only an earlier clean one), so the screenshots show the loss.
    wait_for(Duration::from_secs(25), || {
        let n = b.eval(
            &page,
            "[document.getElementById('smoke').dataset.points, document.getElementById('lossjitter').dataset.lossPoints].map(Number)",
        );
        (n[0].as_u64() > Some(0) && n[1].as_u64() > Some(0)).then_some(())
    })
    .expect("the smoke graph drew the history, the loss line its lossy point");
    // Both themes: every text readable (contrast), the cell colors apart for color-blind
    // eyes; screenshots mesh-light.png, mesh-dark.png, mesh[-dark]-deuteranopia.png.
    let dir = artifacts();
    check_theme(&mut b, &page, &dir, "mesh", "light");
    check_palette(&mut b, &page, &dir, "mesh");
    check_theme(&mut b, &page, &dir, "mesh", "dark");
    check_palette(&mut b, &page, &dir, "mesh-dark");

    // Color by p99 instead: the impaired path's few replies are fast (or, once the window
    // holds none, it has no RTT), so it is not bad by RTT; the others have an RTT class.
    b.eval(
        &page,
        r#"(() => { const m = document.getElementById("metric"); m.value = "p99";
                  m.dispatchEvent(new Event("change")); return true; })()"#,
    );
    let c = cell(&mut b, &page, "mesh-a", "127.0.0.4");
    assert_eq!(b.eval(&page, "window.pathpulse.summary().metric"), "p99");
    assert!(
        c["cls"].as_i64().is_some_and(|k| (-1..5).contains(&k)) && c["pixel"] != bad.as_str(),
        "{c}"
    );
    let c = cell(&mut b, &page, "mesh-b", "127.0.0.5");
    assert!(
        c["cls"].as_i64().is_some_and(|k| (0..5).contains(&k)),
        "{c}"
    );
    assert_eq!(c["pixel"], c["color"], "{c}");
    // Collapse the site of mesh-a: its row becomes one aggregate line, its cell is gone.
    b.eval(
        &page,
        r#"(() => { const c = window.pathpulse.cell("mesh-a", "127.0.0.2");
                  const r = document.getElementById("matrix").getBoundingClientRect();
                  document.getElementById("matrix").dispatchEvent(new MouseEvent("click",
                      { clientX: r.left + 10, clientY: r.top + c.y - 9, bubbles: true }));
                  return true; })()"#,
    );
    assert!(
        cell(&mut b, &page, "mesh-a", "127.0.0.2").is_null(),
        "mesh-a collapsed into lab-1"
    );
    assert!(cell(&mut b, &page, "mesh-b", "127.0.0.2")["present"] == true);
    // With the keyboard: the collapsed site is the first line; Enter there expands it.
    b.eval(&page, "document.getElementById('matrix').focus()");
    b.key(&page, "Home");
    let f = b.eval(&page, "window.pathpulse.focused()");
    assert_eq!(f["focus"], "g:lab-1|d:icmp:127.0.0.2", "{f}");
    assert!(
        f["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("group lab-1 → 127.0.0.2: worst p99 RTT")),
        "{f}"
    );
    b.key(&page, "Enter");
    assert_eq!(
        cell(&mut b, &page, "mesh-a", "127.0.0.2")["present"],
        true,
        "Enter expanded lab-1"
    );

    // Let the page's held poll through with the engine's own answer, then stop holding.
    // (Asked from outside the page: the page's own fetch would be held too.)
    let (_, real) = get_in(&lab.ns, "/api/alerts").expect("/api/alerts");
    b.fulfill_paused(&page, 200, &real);
    b.stop_intercepting(&page);

    // Agent mesh-b stops: the table shows it down once its last report is older than
    // --stale-after (5 s), down rows first; the engine raises its agent-down alert, which
    // the panel shows.
    drop(agent_b);
    let t0 = Instant::now();
    let rows = wait_for(Duration::from_secs(30), || {
        let r = agent_rows(&mut b, &page);
        (r.first()?.0 == "down").then_some(r)
    })
    .unwrap_or_else(|| panic!("mesh-b not shown down: {:?}", agent_rows(&mut b, &page)));
    eprintln!(
        "mesh-b shown down {:.1} s after it stopped: {rows:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0].1[..3],
        ["○ down", "mesh-b", "lab-2 / isp-b"],
        "{rows:?}"
    );
    assert!(
        seconds_ago(&rows[0].1[3]).is_some_and(|s| s >= 5),
        "its last report is older than --stale-after: {rows:?}"
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1[1].as_str()),
        ("up", "mesh-a"),
        "{rows:?}"
    );
    assert_eq!(
        b.eval(
            &page,
            "document.querySelector('#agents tr[data-agent=\"mesh-b\"] td').className"
        ),
        "state-down"
    );
    let down = [("agent", "mesh-b")];
    let doc = wait_for(Duration::from_secs(30), || {
        let doc = validate_alerts(&text(&mut b, "/api/alerts"));
        find_alert(&doc, "PathpulseAgentDown", &down)
            .is_some_and(|a| a["state"] == "firing")
            .then_some(doc)
    })
    .unwrap_or_else(|| {
        panic!(
            "no firing PathpulseAgentDown for mesh-b within 30 s: {}",
            text(&mut b, "/api/alerts")
        )
    });
    assert_eq!(
        find_alert(&doc, "PathpulseAgentDown", &down).expect("alert")["kind"],
        "agent_stale"
    );
    wait_for(Duration::from_secs(15), || {
        let t = b.eval(&page, "document.getElementById('alerts').innerText");
        let t = t.as_str().unwrap_or_default();
        (t.contains("PathpulseAgentDown") && t.contains("agent=mesh-b")).then_some(())
    })
    .expect("the alerts panel shows mesh-b down");
    let mesh = validate(
        "mesh",
        &text(&mut b, "/api/mesh?window=10s"),
        &mesh_schema(),
    );
    assert!(
        mesh["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x["name"] == "mesh-b" && x["up"] == false)),
        "the matrix marks mesh-b's row down: {}",
        mesh["sources"]
    );
    save(&dir, "mesh-agent-down.png", &b.screenshot(&page));

    // Nothing but the aggregator was asked for anything.
    let reqs = b.requests(&page);
    let origin = format!("http://{HTTP}/");
    let foreign: Vec<&String> = reqs
        .iter()
        .filter(|u| !u.starts_with(&origin) && !u.starts_with("data:") && *u != "about:blank")
        .collect();
    assert!(
        foreign.is_empty(),
        "requests outside the aggregator: {foreign:?}"
    );
    for want in [
        "/assets/app.js",
        "/assets/app.css",
        "/api/events?window=10s",
    ] {
        assert!(
            reqs.iter().any(|u| u.ends_with(want)),
            "{want} not requested: {reqs:?}"
        );
    }
    let errors = b.page_errors(&page);
    assert!(errors.is_empty(), "page errors: {errors:?}");
}
