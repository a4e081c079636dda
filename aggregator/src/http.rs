//! HTTP: `/metrics` (OpenMetrics), `/healthz` (the process runs), `/readyz` (ingest is up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// `/metrics` behind the guard for `metrics_auth`; the health endpoints always open.
pub fn router(
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    auth: &Arc<crate::auth::HttpAuth>,
) -> Router {
    crate::auth::guard(
        pathpulse_metrics::http::metrics_router(registry),
        auth,
        crate::auth::Need::Metrics,
    )
    .route("/healthz", get(|| async { "ok\n" }))
    .route(
        "/readyz",
        get(move || {
            let ready = ready.load(Ordering::Relaxed);
            async move {
                if ready {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }
        }),
    )
}
