//! A webhook receiver for alert tests: a real HTTP server (axum) that records every POST
//! body with its arrival time, and answers with a status the test chooses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;

/// One received POST: when, and its JSON body.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub body: serde_json::Value,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookReceiver {
    /// Serve on `listener` (bound by the caller, e.g. inside a network namespace).
    pub fn serve(listener: std::net::TcpListener) -> WebhookReceiver {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let (s, st) = (seen.clone(), status.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let app = Router::new().fallback(post(move |body: String| {
                    let (s, st) = (s.clone(), st.clone());
                    async move {
                        let at = Instant::now();
                        let code = st.load(Ordering::Relaxed);
                        if code == 200 {
                            let body = serde_json::from_str(&body)
                                .unwrap_or(serde_json::Value::String(body));
                            s.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Received { at, body });
                        }
                        StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
                    }
                }));
                let l = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        WebhookReceiver {
            addr,
            seen,
            status,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// On 127.0.0.1, a free port.
    pub fn start() -> WebhookReceiver {
        WebhookReceiver::serve(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answer every POST from now on with this status (200 records the body).
    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::Relaxed);
    }

    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every alert of every message received, with the message's arrival time.
    pub fn alerts(&self) -> Vec<(Instant, serde_json::Value)> {
        self.received()
            .into_iter()
            .flat_map(|r| {
                r.body["alerts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |a| (r.at, a))
            })
            .collect()
    }

    /// Wait until an alert matching `f` arrives; its arrival time.
    pub fn wait_alert(
        &self,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<(Instant, serde_json::Value)> {
        crate::wait_for_fast(timeout, || self.alerts().into_iter().find(|(_, a)| f(a)))
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
