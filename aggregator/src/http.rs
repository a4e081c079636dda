//! HTTP: `/metrics` (OpenMetrics), `/healthz` (the process runs), `/readyz` (ingest is up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;

pub fn router(registry: Arc<Registry>, ready: Arc<AtomicBool>) -> Router {
    pathpulse_metrics::http::metrics_router(registry)
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
