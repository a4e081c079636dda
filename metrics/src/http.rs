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
    OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE,
};
use crate::protobuf::encode_protobuf;
use crate::stream::{pieces_body, text_body};

/// A router serving `GET /metrics` from `registry`: protobuf when the scraper asks for it
/// (Prometheus with native histograms), else OpenMetrics when it asks for it (Prometheus
/// does), the classic text format otherwise (curl, promtool). The text is streamed in
/// chunks as it is encoded (`stream.rs`), never held whole; the protobuf is encoded a chunk
/// of paths at a time and held only as bytes (`protobuf.rs`).
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
                // Prometheus with native histograms on asks for protobuf first. Encoded off
                // the runtime's workers, then sent in the pieces it was encoded in.
                if accept.contains("application/vnd.google.protobuf")
                    && accept.contains("io.prometheus.client.MetricFamily")
                {
                    let r = reg.clone();
                    match tokio::task::spawn_blocking(move || encode_protobuf(&r)).await {
                        Ok(Ok(pieces)) => {
                            let body = Body::new(pieces_body(pieces));
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use pathpulse_wire::{AgentHealth, PathReport, Report};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::export::{Role, SharedStore, registry};
    use crate::store::Store;

    /// A scraper asking for protobuf gets what prometheus-client's `encode_to_vec` writes,
    /// though it was encoded a chunk of paths at a time and sent in pieces.
    #[tokio::test]
    async fn a_protobuf_scrape_gets_the_delimited_families() {
        let store: SharedStore = Arc::new(Mutex::new(Store::new(15_000)));
        let paths = (0..450)
            .map(|i| {
                let mut p = PathReport {
                    dst: format!("10.0.{}.{}", i / 250, 1 + i % 250),
                    sent: 3,
                    ..Default::default()
                };
                for k in 0..3 {
                    p.rtt.record(1_000 + 13 * (i + k));
                    p.received += 1;
                }
                p
            })
            .collect();
        let r = Report {
            seq: 1,
            agent: "a1".into(),
            interval_start_ms: 1_000_000,
            interval_ms: 5000,
            paths,
            health: AgentHealth::default(),
        };
        store.lock().expect("lock").apply(&r, 1_005_000);
        let reg = Arc::new(registry(store, Role::Agent, || 1_010_000));
        let want = prometheus_client::encoding::prometheus_protobuf::encode_to_vec(&reg)
            .expect("whole exposition");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = metrics_router::<()>(reg);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // HTTP/1.0: the body ends with the connection, no chunked framing to undo.
        conn.write_all(
            format!("GET /metrics HTTP/1.0\r\nAccept: {PROTOBUF_CONTENT_TYPE}\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.expect("response");
        let at = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of the head");
        let head = String::from_utf8_lossy(&got[..at]).to_lowercase();
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert!(
            head.contains(&format!(
                "content-type: {}",
                PROTOBUF_CONTENT_TYPE.to_lowercase()
            )),
            "{head}"
        );
        assert!(want.len() > 200_000, "{} bytes", want.len());
        assert!(
            got[at + 4..] == want[..],
            "the body differs from encode_to_vec"
        );
    }
}
