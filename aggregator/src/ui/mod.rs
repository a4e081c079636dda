//! The live mesh page at `/` and the read-only JSON API behind it:
//!
//! - [`api`]: `/api/mesh`, `/api/path/{src}/{dst}`, `/api/agents` (built from the store);
//! - [`history`]: the last hour of every path for the smoke graph (bounded rings);
//! - this module: routes, the server-sent events stream (`/api/events`), the sampler task
//!   and the embedded assets (no CDN, no build step: the page is plain HTML, CSS and JS).

pub mod api;
pub mod history;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pathpulse_metrics::SharedStore;
use pathpulse_metrics::export::wall_clock_ms;
use pathpulse_metrics::store::PathKey;
use pathpulse_wire::ProbeKind;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use history::History;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

/// The page may load from this server only (a CDN reference would be refused too).
const CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// How often the event stream sends the mesh and the agents.
pub const EVENT_EVERY: Duration = Duration::from_secs(1);
/// A computed mesh is reused by every client for this long.
const MESH_CACHE_MS: u64 = 900;

struct Ui {
    store: SharedStore,
    history: Mutex<History>,
    /// Serialized mesh per window, with the time it was made.
    mesh_cache: Mutex<HashMap<&'static str, (u64, Arc<String>)>>,
    /// Held while a mesh is computed: clients that find the cache stale meanwhile wait
    /// for that one and take it, rather than each computing their own.
    mesh_computing: Mutex<()>,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ui {
    fn cached_mesh(&self, window: &str) -> Option<Arc<String>> {
        match lock(&self.mesh_cache).get(window) {
            Some((t, json)) if wall_clock_ms().saturating_sub(*t) < MESH_CACHE_MS => {
                Some(json.clone())
            }
            _ => None,
        }
    }

    /// The mesh of `window`, serialized: from the cache, or computed on a blocking thread
    /// a chunk of paths per hold of the store's lock (100,000 paths' window views held the
    /// lock and an async worker for about a second, every second with a page open).
    async fn mesh_json(self: &Arc<Self>, window: (&'static str, u64)) -> Arc<String> {
        if let Some(json) = self.cached_mesh(window.0) {
            return json;
        }
        let ui = self.clone();
        let made = tokio::task::spawn_blocking(move || {
            let _one = lock(&ui.mesh_computing);
            if let Some(json) = ui.cached_mesh(window.0) {
                return json;
            }
            let now = wall_clock_ms();
            let mesh = api::mesh_chunked(&ui.store, window, now);
            let json = Arc::new(serde_json::to_string(&mesh).unwrap_or_default());
            // Fresh from when it was finished: a mesh that takes longer to compute than the
            // cache lasts would otherwise be computed again and again while a page is open.
            lock(&ui.mesh_cache).insert(window.0, (wall_clock_ms(), json.clone()));
            json
        })
        .await;
        made.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "computing the mesh failed");
            Arc::new("{}".to_string())
        })
    }

    fn agents_json(&self) -> String {
        let agents = api::agents(&lock(&self.store), wall_clock_ms());
        serde_json::to_string(&agents).unwrap_or_default()
    }

    /// Sample the history whenever a period is due; runs until shutdown.
    async fn sample(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // One lock at a time: the path handler takes the store's, then the history's.
            let due = lock(&self.history).due(wall_clock_ms());
            if due.fine.is_none() && due.coarse.is_none() {
                continue;
            }
            // Off the async workers, a chunk of paths per hold of the store's lock: read
            // whole, 100,000 paths held the lock and a worker for about a second.
            let store = self.store.clone();
            let Ok(samples) =
                tokio::task::spawn_blocking(move || history::read_chunked(&store, due)).await
            else {
                continue;
            };
            let mut h = lock(&self.history);
            h.record(due, samples);
            tracing::debug!(
                paths = h.paths.len(),
                bytes = h.heap_bytes(),
                "path history sampled"
            );
        }
    }
}

/// Routes of the page and its API; starts the history sampler (ends with `shutdown`,
/// which also ends the event streams so the server can drain).
pub fn router(store: SharedStore, shutdown: CancellationToken) -> Router {
    let ui = Arc::new(Ui {
        store,
        history: Mutex::new(History::default()),
        mesh_cache: Mutex::new(HashMap::new()),
        mesh_computing: Mutex::new(()),
        shutdown,
    });
    tokio::spawn(ui.clone().sample());
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(|| asset(APP_JS, "text/javascript")))
        .route("/assets/app.css", get(|| asset(APP_CSS, "text/css")))
        .route("/api/mesh", get(mesh))
        .route("/api/agents", get(agents))
        .route("/api/path/{src}/{dst}", get(path))
        .route("/api/events", get(events))
        .with_state(ui)
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn json(body: impl Into<String>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into(),
    )
        .into_response()
}

fn bad_request(why: String) -> Response {
    (StatusCode::BAD_REQUEST, why + "\n").into_response()
}

#[derive(Debug, Deserialize)]
struct WindowQuery {
    window: Option<String>,
}

fn window_of(q: &WindowQuery) -> Result<(&'static str, u64), String> {
    let name = q.window.as_deref().unwrap_or(api::DEFAULT_WINDOW);
    api::window_ms(name)
        .ok_or_else(|| format!("window `{name}` is not one of 10s, 1m, 5m (the exported windows)"))
}

async fn mesh(State(ui): State<Arc<Ui>>, Query(q): Query<WindowQuery>) -> Response {
    match window_of(&q) {
        Ok(w) => json(ui.mesh_json(w).await.as_str()),
        Err(why) => bad_request(why),
    }
}

async fn agents(State(ui): State<Arc<Ui>>) -> Response {
    json(ui.agents_json())
}

#[derive(Debug, Deserialize)]
struct ProbeQuery {
    probe: Option<String>,
}

fn probe_kind(s: &str) -> Option<ProbeKind> {
    [
        ProbeKind::Icmp,
        ProbeKind::Stamp,
        ProbeKind::Tcp,
        ProbeKind::Dns,
    ]
    .into_iter()
    .find(|p| p.as_str() == s)
}

async fn path(
    State(ui): State<Arc<Ui>>,
    Path((src, dst)): Path<(String, String)>,
    Query(q): Query<ProbeQuery>,
) -> Response {
    let probe_name = q.probe.as_deref().unwrap_or("icmp");
    let Some(probe) = probe_kind(probe_name) else {
        return bad_request(format!(
            "probe `{probe_name}` is not one of icmp, stamp, tcp, dns"
        ));
    };
    let key = PathKey {
        src: src.into(),
        dst: dst.into(),
        probe,
    };
    let view = {
        let store = lock(&ui.store);
        let history = lock(&ui.history);
        api::path(&store, &history, &key, wall_clock_ms())
    };
    match view {
        Some(v) => json(serde_json::to_string(&v).unwrap_or_default()),
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "no path {} -> {} ({})\n",
                key.src,
                key.dst,
                key.probe.as_str()
            ),
        )
            .into_response(),
    }
}

/// `mesh` and `agents` events every [`EVENT_EVERY`], the first at once.
async fn events(State(ui): State<Arc<Ui>>, Query(q): Query<WindowQuery>) -> Response {
    let window = match window_of(&q) {
        Ok(w) => w,
        Err(why) => return bad_request(why),
    };
    let tick = tokio::time::interval(EVENT_EVERY);
    let stream = futures_util::stream::unfold(
        (ui, tick, Vec::<Event>::new()),
        move |(ui, mut tick, mut pending)| async move {
            if pending.is_empty() {
                tokio::select! {
                    _ = ui.shutdown.cancelled() => return None,
                    _ = tick.tick() => {}
                }
                pending.push(Event::default().event("agents").data(ui.agents_json()));
                pending.push(
                    Event::default()
                        .event("mesh")
                        .data(ui.mesh_json(window).await.as_str()),
                );
            }
            let ev = pending.pop()?;
            Some((Ok::<_, std::convert::Infallible>(ev), (ui, tick, pending)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
