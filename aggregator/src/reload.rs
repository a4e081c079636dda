//! What SIGHUP (`systemctl reload`) and `POST /api/reload` do: read the configuration
//! again (the same file, flags and environment as at start), validate all of it, and apply
//! what can change while running without losing state:
//!
//! - `[alert]` rules: firing alerts of rules that keep their name fire on, judged by the
//!   rule as it is now; alerts of removed rules resolve (and are notified);
//! - `stale_after`, `path_budget`, `prune_after`: the store's settings, at once.
//!
//! Everything else (addresses, state directory, receivers, remote_write, mesh, HTTP
//! auth, limits) is named in a warning and applies at the next restart. A configuration
//! that does not validate changes nothing; its errors are logged, each with its key.

use std::sync::{Arc, Mutex, OnceLock};

use pathpulse_metrics::SharedStore;
use pathpulse_metrics::export::wall_clock_ms;
use serde::Serialize;

use crate::alert::Alerts;
use crate::config::{AggregatorConfig, RunArgs};

/// The outcome of one reload, as logged and as `POST /api/reload` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// False when the configuration did not validate (nothing changed).
    pub reloaded: bool,
    /// Keys whose new values are in force now.
    pub applied: Vec<&'static str>,
    /// Keys whose new values wait for a restart.
    pub restart_needed: Vec<&'static str>,
    /// Validation errors (`key: reason`).
    pub errors: Vec<String>,
    /// Alerts resolved because their rule was removed.
    pub resolved_alerts: usize,
}

/// Keys that differ between two configurations: (applied while running, restart needed).
pub fn diff(
    old: &AggregatorConfig,
    new: &AggregatorConfig,
) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut applied = Vec::new();
    let mut restart = Vec::new();
    let mut check = |key: &'static str, changed: bool, live: bool| {
        if changed {
            if live {
                applied.push(key);
            } else {
                restart.push(key);
            }
        }
    };
    check("alert.rules", old.alert.rules != new.alert.rules, true);
    check("stale_after", old.stale_after != new.stale_after, true);
    check("path_budget", old.path_budget != new.path_budget, true);
    check("prune_after", old.prune_after != new.prune_after, true);
    check("listen", old.listen != new.listen, false);
    check("http", old.http != new.http, false);
    check("state_dir", old.state_dir != new.state_dir, false);
    check("server_names", old.server_names != new.server_names, false);
    check(
        "max_connections",
        old.max_connections != new.max_connections,
        false,
    );
    check(
        "alert.receivers",
        old.alert.receivers != new.alert.receivers,
        false,
    );
    check(
        "alert.external_url",
        old.alert.external_url != new.alert.external_url,
        false,
    );
    check(
        "alert.resend_interval",
        old.alert.resend_interval != new.alert.resend_interval,
        false,
    );
    check("remote_write", old.remote_write != new.remote_write, false);
    check("mesh", old.mesh != new.mesh, false);
    check("http.auth", old.http_auth != new.http_auth, false);
    check(
        "http.metrics_auth",
        old.metrics_auth != new.metrics_auth,
        false,
    );
    check(
        "rate_limit",
        old.report_rate != new.report_rate || old.registration_rate != new.registration_rate,
        false,
    );
    // Whatever else a later version adds: never silently ignored.
    let mut known = old.clone();
    known.listen = new.listen;
    known.http = new.http;
    known.state_dir = new.state_dir.clone();
    known.server_names = new.server_names.clone();
    known.stale_after = new.stale_after;
    known.max_connections = new.max_connections;
    known.alert = new.alert.clone();
    known.remote_write = new.remote_write.clone();
    known.path_budget = new.path_budget;
    known.prune_after = new.prune_after;
    known.mesh = new.mesh.clone();
    known.http_auth = new.http_auth;
    known.metrics_auth = new.metrics_auth;
    known.report_rate = new.report_rate;
    known.registration_rate = new.registration_rate;
    if known != *new {
        restart.push("other keys");
    }
    (applied, restart)
}

/// The reloader of this process's aggregator (`pathpulse-aggregator run`); none in the
/// demo or in an aggregator embedded in tests.
static RELOADER: OnceLock<Arc<Reloader>> = OnceLock::new();

/// Make `r` the one SIGHUP and `POST /api/reload` use.
pub fn install(r: Arc<Reloader>) {
    let _ = RELOADER.set(r);
}

/// Reload now, if this process has a reloader (`None`: the demo, nothing to reload).
pub fn reload_now(from: &str) -> Option<Outcome> {
    RELOADER.get().map(|r| r.reload(from))
}

/// What the demo answers: its configuration is built in.
pub const NOTHING_TO_RELOAD: &str = "nothing to reload: the demo's configuration is built in (`pathpulse-aggregator run --config FILE` reloads)";

/// Holds the running configuration and what a reload acts on.
pub struct Reloader {
    args: RunArgs,
    running: Mutex<AggregatorConfig>,
    store: SharedStore,
    alerts: Arc<Alerts>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    pub fn new(
        args: RunArgs,
        running: AggregatorConfig,
        store: SharedStore,
        alerts: Arc<Alerts>,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            args,
            running: Mutex::new(running),
            store,
            alerts,
        })
    }

    /// Read the configuration again and apply what can change now; `from` says who asked
    /// (for the log).
    pub fn reload(&self, from: &str) -> Outcome {
        let new = match AggregatorConfig::resolve(&self.args) {
            Ok(c) => c,
            Err(errs) => {
                let errors: Vec<String> = errs
                    .0
                    .iter()
                    .map(|e| format!("{}: {}", e.key, e.reason))
                    .collect();
                for e in &errors {
                    tracing::error!(%from, error = %e, "reload refused: the configuration does not validate; nothing changed");
                }
                return Outcome {
                    reloaded: false,
                    applied: vec![],
                    restart_needed: vec![],
                    errors,
                    resolved_alerts: 0,
                };
            }
        };
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let (applied, restart_needed) = diff(&running, &new);
        let mut resolved_alerts = 0;
        if applied.contains(&"alert.rules") {
            let (before, now, resolved) = self
                .alerts
                .reload_rules(new.alert.rules.clone(), wall_clock_ms());
            tracing::info!(before, now, resolved, "alert rules reloaded");
            resolved_alerts = resolved;
            running.alert.rules = new.alert.rules.clone();
        }
        {
            let mut st = self.store.lock().unwrap_or_else(|e| e.into_inner());
            st.stale_after_ms = new.stale_after.as_millis() as u64;
            st.path_budget = new.path_budget;
            st.prune_after_ms = new.prune_after.map(|d| d.as_millis() as u64);
        }
        running.stale_after = new.stale_after;
        running.path_budget = new.path_budget;
        running.prune_after = new.prune_after;
        if !restart_needed.is_empty() {
            tracing::warn!(%from, keys = ?restart_needed, "reload: these keys changed and apply at the next restart");
        }
        tracing::info!(%from, ?applied, "configuration reloaded");
        Outcome {
            reloaded: true,
            applied,
            restart_needed,
            errors: vec![],
            resolved_alerts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> AggregatorConfig {
        AggregatorConfig::resolve(&RunArgs::default()).expect("defaults validate")
    }

    #[test]
    fn diff_splits_live_keys_from_restart_keys() {
        let old = base();
        assert_eq!(diff(&old, &old.clone()), (vec![], vec![]));
        let mut new = old.clone();
        new.alert.rules.retain(|r| r.name != "PathpulseLoss");
        new.prune_after = None;
        new.listen = "127.0.0.1:1".parse().expect("addr");
        new.mesh.enabled = !old.mesh.enabled;
        let (applied, restart) = diff(&old, &new);
        assert_eq!(applied, ["alert.rules", "prune_after"]);
        assert_eq!(restart, ["listen", "mesh"]);
    }
}
