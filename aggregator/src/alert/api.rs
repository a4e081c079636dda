//! `GET /api/alerts`: the pending and firing alerts, the rules and the receivers, as JSON
//! (shape documented in README.md, "Alerts").

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use serde_json::json;

use super::deliver::rfc3339;
use super::{AlertState, Alerts};

/// The document `GET /api/alerts` answers.
pub fn document(alerts: &Alerts) -> serde_json::Value {
    let active = alerts.active();
    let count = |s: AlertState| active.iter().filter(|a| a.state == s).count();
    json!({
        "firing": count(AlertState::Firing),
        "pending": count(AlertState::Pending),
        "alerts": active.iter().map(|a| {
            let mut v = serde_json::to_value(a).unwrap_or_default();
            // The Alertmanager spellings too, for pages written against its API.
            v["startsAt"] = json!(rfc3339(a.starts_at_ms));
            v
        }).collect::<Vec<_>>(),
        "rules": alerts.rules().iter().map(|r| json!({
            "name": r.name,
            "kind": r.kind.as_str(),
            "severity": r.severity,
            "raise": r.raise,
            "clear": r.clear,
            "windows_seconds": r.windows.iter().map(|w| w.as_secs_f64()).collect::<Vec<_>>(),
            "clear_window_seconds": r.clear_window.as_secs_f64(),
            "raise_for_seconds": r.raise_for.as_secs_f64(),
            "clear_for_seconds": r.clear_for.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "receivers": alerts.receivers.iter().map(|r| json!({
            "name": r.cfg.name,
            "kind": r.cfg.kind.as_str(),
            "url": r.cfg.url,
            "sent": r.stats.sent.load(Ordering::Relaxed),
            "failed_attempts": r.stats.failed_attempts.load(Ordering::Relaxed),
            "dropped": r.stats.dropped.load(Ordering::Relaxed),
            "queued": r.queued(),
        })).collect::<Vec<_>>(),
    })
}

/// The alert routes, merged into the aggregator's router.
pub fn routes(alerts: Arc<Alerts>) -> Router {
    Router::new().route(
        "/api/alerts",
        get(move || {
            let body = document(&alerts).to_string();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}
