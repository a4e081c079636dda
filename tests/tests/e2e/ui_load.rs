//! The live page with a 200-agent full mesh held by the real aggregator: `pathpulse-loadgen
//! --mesh` connects 200 simulated agents (each its own certificate and QUIC connection),
//! each reporting the same 200 destinations, so the store holds 40,000 paths; the page gets
//! that mesh (about 1.3 MB) over its event stream every second. For 10 s Chromium's main
//! thread is watched with a `PerformanceObserver` on `longtask` and an animation-frame
//! counter: no task may take longer than [`LONGEST_TASK_MS`], and the matrix must keep
//! updating (the live timestamp advances, all 40,000 cells drawn). The figures are printed;
//! the screenshot is `target/ui-artifacts/mesh-40k.png`.

use std::time::Duration;

use pathpulse_tests::browser::Browser;
use pathpulse_tests::{Proc, bin, http_get, require_program, wait_for};
use serde_json::Value;

use crate::setup::Deployment;
use crate::ui::{artifacts, save};

const AGENTS: u64 = 200;
const PATHS: u64 = 200;
/// The longest main-thread task allowed while 40,000 cells update every second: a page
/// that blocks longer than this feels frozen (clicks and scrolling wait for it). Measured
/// 75 and 136 ms with the machine at load 4.5, up to 517 ms at 9-13 (other developers'
/// builds); in CI lab tests that do not take the machine lock may run beside this one, so
/// the bound leaves room for them while still failing a page that freezes for a second.
const LONGEST_TASK_MS: f64 = 400.0;
const WATCH_FOR: Duration = Duration::from_secs(10);

/// Installed before the page's scripts: every long task (≥ 50 ms, the browser's own
/// definition) and every animation frame, with their times.
const WATCH: &str = r#"(() => {
  const w = (window.__watch = { long: [], frames: [] });
  new PerformanceObserver((l) => { for (const e of l.getEntries()) w.long.push([e.startTime, e.duration]); })
    .observe({ type: "longtask", buffered: true });
  const frame = (t) => { w.frames.push(t); requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
})();"#;

#[test]
fn page_keeps_up_with_a_200_agent_full_mesh_from_the_aggregator() {
    let test = "page_keeps_up_with_a_200_agent_full_mesh_from_the_aggregator";
    if !require_program(test, "chromium") {
        return;
    }
    // A measurement: nothing else runs meanwhile.
    let d = Deployment::start_alone();
    let state = d.state();
    let quic = format!("127.0.0.1:{}", d.quic);
    let (agents, paths) = (AGENTS.to_string(), PATHS.to_string());
    let _load = Proc::start(
        "loadgen",
        &bin("pathpulse-loadgen"),
        &[
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--aggregator",
            &quic,
            "--agents",
            &agents,
            "--paths",
            &paths,
            "--interval-ms",
            "5000",
            "--warmup-s",
            "0",
            "--duration-s",
            "300",
            "--mesh",
            // A new base RTT in every report: the spread that raises MOS alerts by the
            // hundred, so the alert panel is part of the load (as when the bound was set).
            "--wide-rtt",
        ],
        d.dir.path(),
    );
    let cells = AGENTS * PATHS;
    // Counted from /api/agents (small; building the 1.3 MB mesh takes a debug build seconds).
    let mut last = Value::Null;
    wait_for(Duration::from_secs(90), || {
        last = serde_json::from_str(&http_get(&d.url("/api/agents")).ok()?).ok()?;
        let held: u64 = last["agents"]
            .as_array()?
            .iter()
            .filter_map(|a| a["paths"].as_u64())
            .sum();
        (held == cells).then_some(())
    })
    .unwrap_or_else(|| panic!("the aggregator did not hold {cells} paths within 90 s: {last}"));

    let mut b = Browser::start(None, d.dir.path());
    let page = b.page(1400, 900);
    b.color_scheme(&page, "light");
    b.on_new_document(&page, WATCH);
    b.navigate(&page, &d.url("/?window=1m&metric=loss"));
    // The page's summary without its 200 agents, and how old its mesh is.
    let summary = "window.pathpulse ? (({ agents, ...s }) => Object.assign(s, { lagMs: Date.now() - s.generated }))(window.pathpulse.summary()) : null";
    wait_for(Duration::from_secs(60), || {
        let s = b.eval(&page, summary);
        (s["cellsDrawn"] == cells && s["updates"].as_u64() >= Some(3)).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the page did not draw {cells} cells within 60 s: {}\nerrors: {:?}",
            b.eval(&page, summary),
            b.page_errors(&page)
        )
    });

    // Watch the main thread for 10 s of live updates.
    let t0 = b.eval(&page, "performance.now()").as_f64().expect("time");
    let before = b.eval(&page, summary);
    std::thread::sleep(WATCH_FOR);
    let after = b.eval(&page, summary);
    let seen = b.eval(
        &page,
        &format!(
            r#"(() => {{
                const w = window.__watch, t0 = {t0}, t1 = performance.now();
                const long = w.long.filter(([s]) => s >= t0).map(([, d]) => d);
                const f = w.frames.filter((t) => t >= t0);
                let gap = 0;
                for (let i = 1; i < f.length; i++) gap = Math.max(gap, f[i] - f[i - 1]);
                return {{ ms: t1 - t0, long, frames: f.length, maxFrameGap: gap }};
            }})()"#
        ),
    );
    let long: Vec<f64> = serde_json::from_value(seen["long"].clone()).expect("long tasks");
    let longest = long.iter().copied().fold(0.0, f64::max);
    let updates = after["updates"].as_u64().unwrap_or(0) - before["updates"].as_u64().unwrap_or(0);
    let advanced =
        after["generated"].as_u64().unwrap_or(0) - before["generated"].as_u64().unwrap_or(0);
    let perf = &after["perf"];
    let n = perf["n"].as_f64().unwrap_or(1.0);
    eprintln!(
        "{cells} cells live for {:.1} s: {updates} updates, generated_ms advanced {advanced} ms, \
         the page's mesh {} ms old at the end (mesh event {} bytes; over the {n} updates so far \
         JSON.parse mean {:.0} ms, max {:.0} ms; parse + draw mean {:.0} ms, max {:.0} ms); \
         {} long tasks (≥ 50 ms) totalling {:.0} ms, longest {longest:.0} ms: {long:?}; \
         {} animation frames, longest gap {:.0} ms; load average {}",
        seen["ms"].as_f64().unwrap_or(0.0) / 1000.0,
        after["lagMs"],
        perf["bytes"],
        perf["parseMs"].as_f64().unwrap_or(0.0) / n,
        perf["maxParseMs"].as_f64().unwrap_or(0.0),
        perf["totalMs"].as_f64().unwrap_or(0.0) / n,
        perf["maxMs"].as_f64().unwrap_or(0.0),
        long.len(),
        long.iter().sum::<f64>(),
        seen["frames"],
        seen["maxFrameGap"].as_f64().unwrap_or(0.0),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
    );
    // Kept whatever the verdict, before the assertions.
    save(&artifacts(), "mesh-40k.png", &b.screenshot(&page));
    assert_eq!(
        (
            &after["sources"],
            &after["destinations"],
            &after["paths"],
            &after["cellsDrawn"]
        ),
        (
            &Value::from(AGENTS),
            &Value::from(PATHS),
            &Value::from(cells),
            &Value::from(cells)
        ),
        "{after}"
    );
    assert!(
        after["cellsWithData"] == cells,
        "every cell has data: {after}"
    );
    // The stream sends a mesh a second when the aggregator builds one that fast (a debug
    // build on a loaded machine takes up to 2 s for 40,000 paths): the page must apply
    // what comes and stay current.
    assert!(
        updates >= 4 && advanced >= 4_000,
        "the matrix kept updating: {updates} updates, {advanced} ms; {before} -> {after}"
    );
    assert!(
        after["lagMs"].as_u64() < Some(5_000),
        "the page shows a recent mesh: {after}"
    );
    assert_ne!(before["live"], after["live"], "the live timestamp advances");
    assert!(
        longest < LONGEST_TASK_MS,
        "a main-thread task took {longest:.0} ms (bound {LONGEST_TASK_MS} ms): {long:?}"
    );
    assert!(
        seen["frames"].as_u64() > Some(0),
        "animation frames ran: {seen}"
    );
    let errors = b.page_errors(&page);
    assert!(errors.is_empty(), "page errors: {errors:?}");
}
