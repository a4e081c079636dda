//! The aggregator assembled: PKI, QUIC ingest, store and HTTP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pathpulse_agent::RunError;
use pathpulse_agent::config::{ConfigError, ConfigErrors};
use pathpulse_agent::systemd::{self, BEAT_EVERY, Liveness};
use pathpulse_metrics::export::{self, Role};
use pathpulse_metrics::{SharedStore, Store};
use pathpulse_wire::frame::DEFAULT_MAX_FRAME;
use pathpulse_wire::tls;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::AggregatorConfig;
use crate::ingest::{self, Ingest};
use crate::pki;

fn config_err(key: &str, reason: String) -> RunError {
    RunError::Config(ConfigErrors(vec![ConfigError {
        key: key.into(),
        reason,
    }]))
}

/// Addresses actually bound (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub quic: SocketAddr,
    pub http: SocketAddr,
}

/// A started aggregator.
pub struct Running {
    pub bound: Bound,
    pub store: SharedStore,
    pub alerts: Arc<crate::alert::Alerts>,
    /// The main loops (ingest, store upkeep), for the systemd watchdog.
    pub liveness: Arc<Liveness>,
    pub done: tokio::task::JoinHandle<()>,
}

/// Bind everything and start serving; returns once the sockets are bound.
pub async fn start(
    cfg: &AggregatorConfig,
    shutdown: CancellationToken,
) -> Result<Running, RunError> {
    let fatal = |e: anyhow::Error| RunError::Fatal(e);
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
        config_err(
            "state_dir",
            format!("cannot create {}: {e}", cfg.state_dir.display()),
        )
    })?;
    let ca = pki::load_ca(&cfg.state_dir).map_err(|e| config_err("state_dir", format!("{e:#}")))?;
    let state = Arc::new(
        crate::state::StateDb::open(&cfg.state_dir)
            .map_err(|e| config_err("state_dir", format!("{e:#}")))?,
    );
    let server = pki::server_identity(&ca, &cfg.server_names).map_err(fatal)?;
    let tls_cfg = tls::server_config(
        ca.cert_pem(),
        server.identity().map_err(|e| fatal(e.into()))?,
    )
    .map_err(|e| fatal(e.into()))?;
    let quic_cfg = ingest::server_config(tls_cfg).map_err(fatal)?;
    let listen_err = |e: std::io::Error| {
        config_err(
            "listen",
            format!("cannot listen on {} (udp): {e}", cfg.listen),
        )
    };
    let (socket, granted) = ingest::udp_socket(cfg.listen).map_err(listen_err)?;
    if granted < ingest::UDP_RECV_BUFFER {
        tracing::warn!(
            granted,
            wanted = ingest::UDP_RECV_BUFFER,
            "the ingest's UDP receive buffer is smaller than asked (net.core.rmem_max); with many agents the kernel drops their packets (RcvbufErrors in /proc/net/snmp): raise it with `sysctl -w net.core.rmem_max=8388608`, or run with CAP_NET_ADMIN"
        );
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| fatal(anyhow::anyhow!("no async runtime for the QUIC endpoint")))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quic_cfg),
        socket,
        runtime,
    )
    .map_err(listen_err)?;
    let quic = endpoint.local_addr().map_err(|e| fatal(e.into()))?;
    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .map_err(|e| config_err("http", format!("cannot listen on {}: {e}", cfg.http)))?;
    let http = listener.local_addr().map_err(|e| fatal(e.into()))?;

    let mut store = Store::new(cfg.stale_after.as_millis() as u64);
    store.path_budget = cfg.path_budget;
    store.prune_after_ms = cfg.prune_after.map(|d| d.as_millis() as u64);
    let store: SharedStore = Arc::new(Mutex::new(store));
    let counters = crate::durable::CountersDb::open(&cfg.state_dir)
        .map_err(|e| config_err("state_dir", format!("{e:#}")))?;
    let (durability, commit_task) = crate::durable::start(counters, &store, shutdown.clone())
        .map_err(|e| config_err("state_dir", format!("{e:#}")))?;
    let (alerts, alert_task) = crate::alert::start(
        &cfg.alert,
        &cfg.state_dir,
        external_url(cfg, http),
        Some(store.clone()),
        shutdown.clone(),
    )
    .map_err(|e| config_err("state_dir", e.to_string()))?;
    let mut registry = export::registry(store.clone(), Role::Aggregator, export::wall_clock_ms);
    export::register_alerts(&mut registry, alerts.clone());
    registry.register_collector(Box::new(crate::heap::HeapCollector));
    let rw_stats = Arc::new(crate::remote_write::RemoteWriteStats::default());
    if cfg.remote_write.is_some() {
        registry.register_collector(Box::new(crate::remote_write::StatsCollector(
            rw_stats.clone(),
        )));
    }
    let http_auth = Arc::new(crate::auth::HttpAuth::new(
        cfg.http_auth,
        cfg.metrics_auth,
        state.clone(),
    ));
    registry.register(
        "pathpulse_http_refused",
        "HTTP requests refused, by reason (missing, unknown, expired or revoked token: 401; role too low: 403)",
        http_auth.refused.clone(),
    );
    let registry = Arc::new(registry);
    if let Some(rw) = cfg.remote_write.clone() {
        tracing::info!(url = %rw.url, every = ?rw.interval, "remote write on");
        tokio::spawn(
            crate::remote_write::RemoteWriter {
                cfg: rw,
                registry: registry.clone(),
                stats: rw_stats,
            }
            .run(shutdown.clone()),
        );
    }
    let ready = Arc::new(AtomicBool::new(false));
    let mesh = crate::mesh::Mesh::new(cfg.mesh.clone(), store.clone());
    if cfg.mesh.enabled {
        tracing::info!(peers_per_site = ?cfg.mesh.peers_per_site, leave_after = ?cfg.mesh.leave_after, "mesh membership on: agents get peer lists");
        tokio::spawn(mesh.clone().run(shutdown.clone()));
    }
    use crate::auth::{Need, guard};
    let admin = Arc::new(crate::admin::Admin {
        state: state.clone(),
        ca_pem: ca.cert_pem().to_string(),
    });
    let app = crate::http::router(registry, ready.clone(), &http_auth)
        .merge(guard(mesh.clone().routes(), &http_auth, Need::Read))
        .merge(guard(
            crate::ui::router(store.clone(), shutdown.clone()),
            &http_auth,
            Need::Read,
        ))
        .merge(guard(
            crate::alert::api::routes(alerts.clone()),
            &http_auth,
            Need::Read,
        ))
        .merge(guard(crate::admin::routes(admin), &http_auth, Need::Admin));
    tracing::info!(
        api = cfg.http_auth.as_str(),
        metrics = cfg.metrics_auth.as_str(),
        "HTTP access (writes always need an admin token)"
    );
    let liveness = Liveness::new();
    let ingest = Ingest {
        beat: liveness.register("ingest"),
        endpoint,
        store: store.clone(),
        max_frame: DEFAULT_MAX_FRAME,
        connections: Arc::new(Semaphore::new(cfg.max_connections)),
        name: cfg
            .server_names
            .first()
            .cloned()
            .unwrap_or_else(|| "pathpulse-aggregator".into()),
        auth: Arc::new(ingest::Auth { ca, state }),
        alerts: Some(alerts.clone()),
        mesh: cfg.mesh.enabled.then_some(mesh),
        durability,
        limits: Arc::new(crate::limits::Limits::new(
            cfg.report_rate,
            cfg.registration_rate,
        )),
    };
    let listener = pathpulse_metrics::http_limit::LimitedListener::new(
        listener,
        pathpulse_metrics::http_limit::HttpLimits::default(),
        http_auth.refused.clone(),
    );
    let (stop_http, stop_expire) = (shutdown.clone(), shutdown.clone());
    let expire_store = store.clone();
    let upkeep = liveness.register("store upkeep");
    let done = tokio::spawn(async move {
        let ingest_task = tokio::spawn(ingest.run(shutdown));
        let http_task = tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop_http.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        let expire_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            let mut beat = tokio::time::interval(BEAT_EVERY);
            loop {
                tokio::select! {
                    _ = stop_expire.cancelled() => return,
                    _ = tick.tick() => expire_store.lock().unwrap_or_else(|e| e.into_inner()).expire(export::wall_clock_ms()),
                    // Alive means: the store's lock can be had (ingest and scrapes need it).
                    _ = beat.tick() => drop(expire_store.lock().unwrap_or_else(|e| e.into_inner())),
                }
                upkeep.beat();
            }
        });
        let _ = tokio::join!(ingest_task, http_task, expire_task, alert_task);
        // After ingest: the last reports it applied are written before the process ends.
        let _ = commit_task.await;
    });
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%quic, %http, state_dir = %cfg.state_dir.display(), "aggregator running");
    Ok(Running {
        bound: Bound { quic, http },
        store,
        alerts,
        liveness,
        done,
    })
}

/// Base URL for links in alerts: configured, or this host and the HTTP port.
fn external_url(cfg: &AggregatorConfig, http: SocketAddr) -> String {
    if let Some(u) = &cfg.alert.external_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = if http.ip().is_unspecified() {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    } else if http.is_ipv6() {
        format!("[{}]", http.ip())
    } else {
        http.ip().to_string()
    };
    format!("http://{host}:{}", http.port())
}

/// Run until `shutdown` is cancelled, telling systemd (when it started us) that the
/// sockets are bound (`READY=1`) and that the loops live (watchdog).
pub async fn run(
    args: crate::config::RunArgs,
    cfg: AggregatorConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let running = start(&cfg, shutdown.clone()).await?;
    crate::reload::install(crate::reload::Reloader::new(
        args,
        cfg.clone(),
        running.store.clone(),
        running.alerts.clone(),
    ));
    systemd::ready(&format!(
        "agents on {} (QUIC), /metrics on {}",
        running.bound.quic, running.bound.http
    ));
    tokio::spawn(systemd::watchdog(
        running.liveness.clone(),
        shutdown.clone(),
    ));
    let mut done = running.done;
    tokio::select! {
        _ = shutdown.cancelled() => {
            systemd::stopping();
            let _ = done.await;
        }
        _ = &mut done => {}
    }
    Ok(())
}
