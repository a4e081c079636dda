//! The live page in headless Chromium against the real alert engine, hop discovery and
//! STAMP, in the two-site lab (`sites.rs`): loss switched on at ISP A's edge shows as a
//! firing alert with its localization verdict in the alerts panel, the path view lists the
//! hops with their roles and per-hop loss and splits STAMP loss by direction, and the alert
//! leaves the panel once the loss stops. The matrix is driven with the keyboard only (real
//! key events): Tab into it, arrows, Enter opens a path, Escape closes it. Screenshots go to
//! `target/ui-artifacts/lab-*.png`.

use std::time::{Duration, Instant};

use pathpulse_tests::browser::{Browser, Page};
use pathpulse_tests::{require_program, require_root, wait_for};
use serde_json::{Value, json};

use crate::sites::{HTTP, Sites};
use crate::ui::{artifacts, cell, save};

fn eval_strings(b: &mut Browser, page: &Page, expr: &str) -> Vec<String> {
    serde_json::from_value(b.eval(page, expr)).unwrap_or_default()
}

/// The alerts panel's entries as the user reads them.
fn alert_items(b: &mut Browser, page: &Page) -> Vec<String> {
    eval_strings(
        b,
        page,
        "[...document.querySelectorAll('#alerts li')].map((li) => li.innerText)",
    )
}

/// Rows of a table of the path view (`path-hops`, `path-stats`), header row included.
fn table(b: &mut Browser, page: &Page, id: &str) -> Vec<Vec<String>> {
    serde_json::from_value(b.eval(
        page,
        &format!(
            "[...document.querySelectorAll('#{id} tr')].map((tr) => [...tr.cells].map((c) => c.textContent))"
        ),
    ))
    .unwrap_or_default()
}

/// "12.5%" → 0.125.
fn percent(s: &str) -> Option<f64> {
    s.trim()
        .strip_suffix('%')?
        .parse::<f64>()
        .ok()
        .map(|v| v / 100.0)
}

/// Press `key` and return the matrix's keyboard state (`pathpulse.focused()`).
fn press(b: &mut Browser, page: &Page, key: &str) -> Value {
    b.key(page, key);
    b.eval(page, "window.pathpulse.focused()")
}

/// Move the matrix focus with the arrow keys to the cell `want` (`s:SRC|d:PROBE:DST`):
/// down the rows, then right along the columns; every press must move it.
fn focus_cell(b: &mut Browser, page: &Page, want: &str) -> Value {
    let (row, _) = want.split_once('|').expect("focus key");
    let mut f = b.eval(page, "window.pathpulse.focused()");
    for key in ["ArrowDown", "ArrowRight"] {
        for _ in 0..8 {
            let now = f["focus"].as_str().unwrap_or_default().to_string();
            let done = match key {
                "ArrowDown" => now.starts_with(&format!("{row}|")),
                _ => now == want,
            };
            if done {
                break;
            }
            f = press(b, page, key);
            assert_ne!(f["focus"], json!(now), "{key} moved nothing: {f}");
        }
    }
    assert_eq!(f["focus"], want, "{f}");
    f
}

#[test]
fn lab_page_shows_real_alerts_with_verdicts_hops_and_directional_stamp_loss() {
    let test = "lab_page_shows_real_alerts_with_verdicts_hops_and_directional_stamp_loss";
    let _serial = crate::lab::lab_lock();
    if !require_root(test) || !require_program(test, "chromium") {
        return;
    }
    let lab = Sites::start(41);
    let anchor = lab.anchor_addr();
    let mut b = Browser::start(Some(lab.anchor()), lab.dir.path());
    let page = b.page(1400, 1000);
    b.color_scheme(&page, "light");
    b.navigate(&page, &format!("http://{HTTP}/?window=10s&metric=loss"));
    // Four live paths: each home agent to the anchor by ICMP and by STAMP.
    wait_for(Duration::from_secs(45), || {
        let s = b.eval(
            &page,
            "window.pathpulse ? window.pathpulse.summary() : null",
        );
        (s["cellsWithData"] == 4 && s["paths"] == 4).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "4 live paths on the page within 45 s: {}\n{}",
            b.eval(
                &page,
                "JSON.stringify(window.pathpulse && window.pathpulse.summary())"
            ),
            lab.logs()
        )
    });
    let mesh = lab.json("/api/mesh").expect("mesh");
    let stamp_dst = mesh["destinations"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["probe"] == "stamp"))
        .and_then(|d| d["name"].as_str())
        .expect("a STAMP destination")
        .to_string();
    // The real engine answers, and nothing fires on 15 s of clean paths, all in the best
    // color class.
    assert_eq!(
        b.eval(&page, "fetch('/api/alerts').then((r) => r.status)"),
        200
    );
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(alert_items(&mut b, &page), ["No alerts"]);
    assert_eq!(lab.json("/api/alerts").expect("alerts")["firing"], 0);
    for src in ["home-a", "home-b"] {
        let c = cell(&mut b, &page, src, &anchor);
        assert_eq!(
            (&c["cls"], &c["pixel"]),
            (&json!(0), &c["color"]),
            "{src}: {c}"
        );
    }

    // Keyboard only: Tab from the last header control lands on the matrix.
    b.eval(&page, "document.getElementById('group').focus()");
    let f = press(&mut b, &page, "Tab");
    assert_eq!(f["active"], true, "Tab reaches the matrix: {f}");
    assert!(
        f["text"]
            .as_str()
            .is_some_and(|t| t.contains(" → ") && t.contains("row 1 of")),
        "the focused cell is described: {f}"
    );
    let icmp = format!("s:home-a|d:icmp:{anchor}");
    let f = focus_cell(&mut b, &page, &icmp);
    let text = f["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with(&format!("home-a → {anchor} (anchor): loss ")),
        "{f}"
    );
    // The focused cell is ringed on the canvas (the foreground color just left of it).
    let c = cell(&mut b, &page, "home-a", &anchor);
    let ring = b.eval(
        &page,
        &format!(
            r##"(() => {{ const cv = document.getElementById("matrix"), d = window.devicePixelRatio || 1;
                const px = cv.getContext("2d").getImageData(Math.round(({x} - 1) * d), Math.round(({y} + {h} / 2) * d), 1, 1).data;
                const fg = getComputedStyle(document.documentElement).getPropertyValue("--fg").trim();
                return ["#" + [px[0], px[1], px[2]].map((v) => v.toString(16).padStart(2, "0")).join(""), fg]; }})()"##,
            x = c["x"], y = c["y"], h = c["h"]
        ),
    );
    assert_eq!(ring[0], ring[1], "focus ring around the cell: {ring}");
    // End / Home: the row's last and first column.
    let f = press(&mut b, &page, "End");
    assert_eq!(f["focus"], format!("s:home-a|d:stamp:{stamp_dst}"), "{f}");
    let f = press(&mut b, &page, "Home");
    assert_eq!(f["focus"], icmp.as_str(), "{f}");
    assert_eq!(
        b.eval(
            &page,
            "document.getElementById('matrix').getAttribute('aria-describedby')"
        ),
        "matrix-focus"
    );
    let f = press(&mut b, &page, "Enter");
    assert_eq!(
        f["path"],
        json!({ "src": "home-a", "dst": anchor, "probe": "icmp" }),
        "{f}"
    );
    assert_eq!(
        b.eval(&page, "document.getElementById('path-title').textContent"),
        format!("home-a → {anchor}")
    );
    let f = press(&mut b, &page, "Escape");
    assert_eq!(f["path"], Value::Null, "Escape closes the path view: {f}");
    assert_eq!(f["active"], true, "focus back on the matrix: {f}");
    assert_eq!(
        b.eval(&page, "document.getElementById('path-section').hidden"),
        true
    );

    // 30% loss at ISP A's edge, one way: the engine's alert, with the verdict, on the page.
    lab.set_loss(0.3);
    let t0 = Instant::now();
    let firing = wait_for(Duration::from_secs(60), || {
        alert_items(&mut b, &page).into_iter().find(|li| {
            li.contains("PathpulseLoss")
                && li.contains(&format!("home-a → {anchor}"))
                && li.contains("probe=icmp")
                && li.contains("verdict: isp isp-a")
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no firing loss alert with its verdict on the page within 60 s: {:?}\napi: {:?}",
            alert_items(&mut b, &page),
            lab.json("/api/alerts")
        )
    });
    eprintln!(
        "alert with verdict shown {:.1} s after the loss started:\n{firing}",
        t0.elapsed().as_secs_f64()
    );
    assert!(firing.starts_with("firing"), "{firing}");
    let items = alert_items(&mut b, &page);
    assert!(
        !items.iter().any(|li| li.contains("home-b")),
        "site B is clean: {items:?}"
    );
    // The page shows what the engine says.
    let api = lab.json("/api/alerts").expect("alerts");
    let verdict = api["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|x| {
                x["alertname"] == "PathpulseLoss"
                    && x["labels"]["src"] == "home-a"
                    && x["labels"]["probe"] == "icmp"
            })
        })
        .and_then(|x| x["annotations"]["verdict"].as_str())
        .unwrap_or_else(|| panic!("the engine's alert has a verdict: {api}"))
        .to_string();
    assert!(
        firing.contains(&verdict),
        "page {firing:?} vs engine {verdict:?}"
    );

    // The ICMP path view (keyboard again): the hop list with roles and per-hop loss.
    b.eval(&page, "document.getElementById('matrix').focus()");
    focus_cell(&mut b, &page, &icmp);
    press(&mut b, &page, "Enter");
    let want_roles = ["cpe", "isp", "transit", "target"];
    let hops = wait_for(Duration::from_secs(60), || {
        let rows = table(&mut b, &page, "path-hops");
        let roles: Vec<&str> = rows
            .iter()
            .skip(1)
            .filter_map(|r| r.get(2).map(String::as_str))
            .collect();
        // Every hop from ISP A's edge on loses (the 1 min window fills with the loss).
        let lossy = rows.len() == 5
            && rows[2..]
                .iter()
                .all(|r| r.get(4).and_then(|s| percent(s)).is_some_and(|l| l >= 0.1));
        (roles == want_roles && lossy).then_some(rows)
    })
    .unwrap_or_else(|| panic!("hop list: {:?}", table(&mut b, &page, "path-hops")));
    eprintln!("hops on the page: {hops:?}");
    assert_eq!(
        hops[0][..5],
        ["hop", "address", "role", "p50", "loss (1 min)"]
    );
    assert_eq!(hops[1][1], lab.topo.addr("cpe-a", "home-a"));
    assert_eq!(hops[4][1], anchor);
    assert_eq!(
        percent(&hops[1][4]),
        Some(0.0),
        "nothing lost before ISP A: {hops:?}"
    );
    for row in &hops[2..] {
        let l = percent(&row[4]).unwrap_or(-1.0);
        assert!(
            (0.1..=0.55).contains(&l),
            "30% lost from ISP A on: {hops:?}"
        );
    }
    assert!(
        !table(&mut b, &page, "path-stats")[0].contains(&"fwd / rev loss".to_string()),
        "no directional loss column on an ICMP path"
    );
    let dir = artifacts();
    save(&dir, "lab-path-hops.png", &b.screenshot(&page));

    // The STAMP path view: loss split by direction, all of it forward.
    let f = press(&mut b, &page, "ArrowRight");
    assert_eq!(f["focus"], format!("s:home-a|d:stamp:{stamp_dst}"), "{f}");
    press(&mut b, &page, "Enter");
    let (fwd, rev) = wait_for(Duration::from_secs(30), || {
        let rows = table(&mut b, &page, "path-stats");
        let head = rows.first()?;
        let col = head.iter().position(|h| h == "fwd / rev loss")?;
        let r = rows
            .iter()
            .find(|r| r.first().map(String::as_str) == Some("10s"))?;
        let (f, rv) = r.get(col)?.split_once(" / ")?;
        let (f, rv) = (percent(f)?, percent(rv)?);
        (f >= 0.1).then_some((f, rv))
    })
    .unwrap_or_else(|| panic!("directional loss: {:?}", table(&mut b, &page, "path-stats")));
    eprintln!(
        "STAMP on the page (10 s, all of it after the loss began): forward {fwd:.3}, reverse {rev:.3}"
    );
    assert!((0.1..=0.55).contains(&fwd), "forward loss {fwd}");
    assert_eq!(rev, 0.0, "nothing lost on the way back");
    assert_eq!(
        b.eval(&page, "document.getElementById('path-hops').hidden"),
        true,
        "no hop list on a STAMP path"
    );
    save(&dir, "lab-path-stamp.png", &b.screenshot(&page));
    b.color_scheme(&page, "dark");
    std::thread::sleep(Duration::from_millis(1500));
    save(&dir, "lab-path-stamp-dark.png", &b.screenshot(&page));
    b.color_scheme(&page, "light");

    // The loss stops: the engine resolves the alert and the panel empties.
    lab.set_loss(0.0);
    let t1 = Instant::now();
    wait_for(Duration::from_secs(120), || {
        (alert_items(&mut b, &page) == ["No alerts"]).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "alerts still shown 120 s after the loss stopped: {:?}",
            alert_items(&mut b, &page)
        )
    });
    eprintln!(
        "alerts panel empty {:.1} s after the loss stopped",
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(lab.json("/api/alerts").expect("alerts")["firing"], 0);
    let errors = b.page_errors(&page);
    assert!(errors.is_empty(), "page errors: {errors:?}");
}
