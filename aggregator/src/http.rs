//! HTTP: `/metrics` (OpenMetrics), `/healthz` (the process runs), `/readyz` (ingest is up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// An HTTP client for receivers and remote_write: rustls with the ring provider and the
/// system's CA certificates. A host without any (no `ca-certificates` package: minimal
/// images) still gets a client, with an empty root store and a warning: plain-HTTP
/// receivers work, HTTPS ones fail with an unknown-issuer error in their counters. Before,
/// the aggregator refused to start there.
pub fn client(
    configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> reqwest::Result<reqwest::Client> {
    // reqwest is built without a rustls provider of its own (quinn uses ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match configure(reqwest::Client::builder()).build() {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no usable CA certificates on this host (install ca-certificates): HTTPS receivers and remote_write will fail, plain HTTP works"
            );
            configure(reqwest::Client::builder())
                .tls_certs_only(std::iter::empty())
                .build()
        }
    }
}

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
