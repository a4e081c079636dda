//! `systemctl reload pathpulse-aggregator` (SIGHUP) and `POST /api/reload` with the real
//! binary: changed alert rules are in force at once (`GET /api/alerts` lists them), keys
//! that need a restart are named, a broken file changes nothing and says why, and the
//! process (its PID, its state) stays.

use std::time::Duration;

use nix::sys::signal::Signal;
use pathpulse_tests::{bin, http_get, run, wait_for};

use crate::setup::Deployment;

fn rules(d: &Deployment) -> Vec<(String, f64)> {
    let doc: serde_json::Value =
        serde_json::from_str(&http_get(&d.url("/api/alerts")).expect("/api/alerts")).expect("json");
    doc["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("name").to_string(),
                r["raise"].as_f64().expect("raise"),
            )
        })
        .collect()
}

fn raise_of(d: &Deployment, name: &str) -> Option<f64> {
    rules(d)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r)
}

#[test]
fn sighup_and_api_reload_apply_alert_rules_and_name_restart_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("aggregator.toml");
    let write = |text: &str| std::fs::write(&cfg, text).expect("write config");
    write("[alert]\n[[alert.rules]]\nname = \"PathpulseLoss\"\nraise = 0.05\n");
    let d = Deployment::start_with(&["--config", cfg.to_str().expect("utf-8")]);
    let agg = d.aggregator.as_ref().expect("aggregator");
    assert_eq!(raise_of(&d, "PathpulseLoss"), Some(0.05));
    let pid = agg.pid();

    // SIGHUP: a changed threshold, a removed rule (jitter off), a restart-only key.
    write(
        "prune_after = \"5m\"\nmax_connections = 77\n[alert]\n[[alert.rules]]\nname = \"PathpulseLoss\"\nraise = 0.1\n[[alert.rules]]\nname = \"PathpulseJitterHigh\"\nenabled = false\n",
    );
    agg.signal(Signal::SIGHUP);
    let applied = wait_for(Duration::from_secs(10), || {
        (raise_of(&d, "PathpulseLoss") == Some(0.1)).then_some(())
    });
    assert!(
        applied.is_some(),
        "new threshold not in force:\n{}",
        agg.log()
    );
    assert_eq!(raise_of(&d, "PathpulseJitterHigh"), None, "rule removed");
    let log = agg.log();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(
        log.contains("max_connections") && log.contains("next restart"),
        "restart-only key named:\n{log}"
    );
    assert_eq!(agg.pid(), pid, "same process");

    // A broken file: refused with the key, the running rules stay.
    write("[alert]\n[[alert.rules]]\nname = \"PathpulseLoss\"\nraise = -3\n");
    agg.signal(Signal::SIGHUP);
    let refused = wait_for(Duration::from_secs(10), || {
        agg.log().contains("reload refused").then_some(())
    });
    assert!(refused.is_some(), "{}", agg.log());
    assert_eq!(
        raise_of(&d, "PathpulseLoss"),
        Some(0.1),
        "running rules kept"
    );

    // POST /api/reload (a write: an admin token) answers the outcome.
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "token",
            "create",
            "--role",
            "admin",
            "--state-dir",
            d.state().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "token create: {text}");
    let admin = text
        .lines()
        .find(|l| l.starts_with("ppapi_"))
        .unwrap_or_else(|| panic!("no admin token in {text}"))
        .trim()
        .to_string();
    write("[alert]\n[[alert.rules]]\nname = \"PathpulseLoss\"\nraise = 0.2\n");
    let out = ureq::post(d.url("/api/reload"))
        .header("Authorization", format!("Bearer {admin}"))
        .send_empty()
        .expect("POST /api/reload")
        .body_mut()
        .read_to_string()
        .expect("body");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["reloaded"], true, "{out}");
    assert!(
        v["applied"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k == "alert.rules")),
        "{out}"
    );
    assert_eq!(raise_of(&d, "PathpulseLoss"), Some(0.2));
    assert!(
        raise_of(&d, "PathpulseJitterHigh").is_some(),
        "back with the defaults"
    );
}
