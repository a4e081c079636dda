//! The `/metrics` route, shared by the agent (standalone mode) and the aggregator.

use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::export::{OPENMETRICS_CONTENT_TYPE, encode_text};

/// A router serving `GET /metrics` from `registry`.
pub fn metrics_router<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    Router::new().route(
        "/metrics",
        get(move || {
            let reg = registry.clone();
            async move {
                (
                    [(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                    encode_text(&reg),
                )
                    .into_response()
            }
        }),
    )
}
