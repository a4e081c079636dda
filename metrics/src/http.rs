//! The `/metrics` route, shared by the agent (standalone mode) and the aggregator.

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use axum::body::Body;

use crate::export::{
    OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE, encode_protobuf,
};
use crate::stream::text_body;

/// A router serving `GET /metrics` from `registry`: OpenMetrics when the scraper asks for
/// it (Prometheus does), the classic text format otherwise (curl, promtool). The text is
/// streamed in chunks as it is encoded (`stream.rs`), never held whole.
pub fn metrics_router<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let reg = registry.clone();
            async move {
                let accept = headers
                    .get(ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                // Prometheus with native histograms on asks for protobuf first. Built whole
                // (prometheus-client builds every family first), off the runtime's workers.
                if accept.contains("application/vnd.google.protobuf")
                    && accept.contains("io.prometheus.client.MetricFamily")
                {
                    let r = reg.clone();
                    match tokio::task::spawn_blocking(move || encode_protobuf(&r)).await {
                        Ok(Ok(body)) => {
                            return ([(CONTENT_TYPE, PROTOBUF_CONTENT_TYPE)], body).into_response();
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "protobuf exposition failed; answering in text"),
                        Err(e) => tracing::warn!(error = %e, "protobuf exposition failed; answering in text"),
                    }
                }
                let classic = !accept.contains("application/openmetrics-text");
                let content_type = if classic {
                    PROMETHEUS_TEXT_CONTENT_TYPE
                } else {
                    OPENMETRICS_CONTENT_TYPE
                };
                let body = Body::new(text_body(reg, classic));
                ([(CONTENT_TYPE, content_type)], body).into_response()
            }
        }),
    )
}
