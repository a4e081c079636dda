//! The agent assembled: probers, reporter, uplinks and the standalone `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pathpulse_metrics::export::{self, Role};
use pathpulse_metrics::{SharedStore, Store};
use pathpulse_wire::{Hello, ProbeKind, Report};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ConfigError, ConfigErrors};
use crate::probe::hops::{self, HopProber};
use crate::probe::icmp::IcmpProber;
use crate::probe::tcp::TcpProber;
use crate::reload::{ProbePlan, Reloader};
use crate::resolve::Resolver;
use crate::shared::{Ended, Shared};
use crate::spool::{self, SPOOL_DIR, Spool};
use crate::stats::PathStats;
use crate::systemd::{BEAT_EVERY, Liveness};
use crate::uplink::{self, Uplink, UplinkStatus};

/// Directory under the state directory that holds the agent's certificate and key and
/// the aggregator's CA certificate.
pub const IDENTITY_DIR: &str = "identity";
/// Shortest time between reports when loss makes them go early (see the reporter).
const EARLY_REPORT_GAP: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Exit 78: something the operator must fix in the configuration or environment.
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{0:#}")]
    Fatal(anyhow::Error),
}

fn config_err(key: &str, reason: impl Into<String>) -> RunError {
    RunError::Config(ConfigErrors(vec![ConfigError {
        key: key.into(),
        reason: reason.into(),
    }]))
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Handles a caller (the command line, the demo, tests) may keep to watch or steer a
/// running agent.
#[derive(Debug, Clone)]
pub struct AgentHandles {
    /// Each aggregator and its uplink's state.
    pub uplinks: Vec<(String, Arc<UplinkStatus>)>,
    /// Reload targets (SIGHUP).
    pub reloader: Arc<Reloader>,
    /// The main loops, for the systemd watchdog.
    pub liveness: Arc<Liveness>,
}

/// Run the agent until `shutdown` is cancelled.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    run_with(cfg, shutdown, |_| {}).await
}

/// As [`run`], handing out [`AgentHandles`] once everything is started (sockets bound,
/// probers running).
pub async fn run_with(
    mut cfg: AgentConfig,
    shutdown: CancellationToken,
    started: impl FnOnce(AgentHandles),
) -> Result<(), RunError> {
    // The target list lives in two places only: the running configuration (the
    // reloader's) and the plan every prober shares. `cfg` keeps none.
    let targets = std::mem::take(&mut cfg.targets);
    let n_targets = targets.len();
    let stamp_running = targets.iter().any(|t| t.probe == ProbeKind::Stamp);
    let has_tcp = targets
        .iter()
        .any(|t| matches!(t.probe, ProbeKind::Tcp | ProbeKind::Dns));
    let paths = targets
        .iter()
        .map(|t| PathStats::new(t.label.clone(), t.probe))
        .collect();
    let shared = Arc::new(Shared::new(paths));
    let resolver = Resolver::new(targets.iter().map(|t| t.host.clone()));
    resolver.refresh().await;
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(resolver.clone().run(shutdown.clone()));
    let (plan_tx, _) = watch::channel(ProbePlan {
        targets: targets.iter().cloned().enumerate().collect(),
        interval: cfg.interval,
        timeout: cfg.timeout,
        // Bursts are evidence for the aggregators' alerts: a standalone agent sends none.
        confirm: if cfg.aggregators.is_empty() {
            crate::probe::confirm::Confirmation {
                probes: 0,
                ..cfg.confirm
            }
        } else {
            cfg.confirm
        },
    });
    let reloader = Arc::new(Reloader::new(
        AgentConfig {
            targets,
            ..cfg.clone()
        },
        plan_tx,
        shared.clone(),
        resolver.clone(),
    ));
    let liveness = Liveness::new();

    // The STAMP reflector: sockets from systemd, or bound now, so a busy or forbidden port
    // given by hand is found at start (the mesh default only warns, see `listen`).
    let reflector = crate::probe::stamp::listen::open(&cfg.stamp_listen)
        .map_err(|e| config_err("stamp_listen", e.to_string()))?;
    let reflector_sockets = reflector.wanted.then_some(reflector.sockets.len());
    let stamp_port = reflector.port();
    for socket in reflector.sockets {
        let limits = crate::probe::stamp::reflector::Limits {
            rate: cfg.stamp_rate,
            key: cfg.stamp_key.clone(),
            ..Default::default()
        };
        tasks.spawn(
            crate::probe::stamp::reflector::ReflectorTask {
                socket,
                limits,
                shared: shared.clone(),
                clock: cfg.clock_sync,
            }
            .run(shutdown.clone()),
        );
    }

    // Identity first: a missing certificate is a configuration problem, found at start.
    let mut uplink_txs = Vec::new();
    let mut uplinks = Vec::new();
    if !cfg.aggregators.is_empty() {
        let dir = cfg.state_dir.join(IDENTITY_DIR);
        let client = uplink::client_config(&dir).map_err(|e| {
            config_err(
                "state_dir",
                format!(
                    "{e:#}; enroll with a token from `pathpulse-aggregator token create`: `pathpulse-agent enroll --aggregator HOST:PORT --token TOKEN --name {} --state-dir {}`, or issue an identity with `pathpulse-aggregator cert issue --name {} --out {}`",
                    cfg.name,
                    cfg.state_dir.display(),
                    cfg.name,
                    dir.display()
                ),
            )
        })?;
        // A new session for every start; reports spooled by an earlier process keep theirs.
        let session: u64 = rand::random();
        // Mesh: peer lists from the aggregators join the plan next to the targets.
        let board =
            crate::peers::PeerBoard::new(cfg.name.clone(), cfg.site.clone(), reloader.clone());
        let join = pathpulse_wire::Join {
            advertise: cfg.advertise.clone(),
            stamp_port,
        };
        for a in &cfg.aggregators {
            let (tx, rx) = mpsc::channel(64);
            let status = Arc::new(UplinkStatus::default());
            let path = cfg.state_dir.join(SPOOL_DIR).join(spool::file_name(a));
            let mut spool = Spool::open(path, cfg.spool, status.spool.clone())
                .map_err(|e| config_err("state_dir", e.to_string()))?;
            spool.retain_agent(&cfg.name);
            uplinks.push((a.clone(), status.clone()));
            let up = Uplink {
                aggregator: a.clone(),
                hello: Hello {
                    agent: cfg.name.clone(),
                    session,
                    software: env!("CARGO_PKG_VERSION").into(),
                    site: cfg.site.clone(),
                    isp: cfg.isp.clone(),
                },
                client: client.clone(),
                identity_dir: Some(dir.clone()),
                reports: rx,
                spool,
                status: status.clone(),
                mesh: Some((join.clone(), board.clone())),
                confirms: Some(shared.confirms()),
            };
            uplink_txs.push((a.clone(), tx, status));
            tasks.spawn(up.run(shutdown.clone()));
        }
    }

    // Standalone /metrics.
    let store: Option<SharedStore> = match cfg.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                config_err("metrics_listen", format!("cannot listen on {addr}: {e}"))
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| RunError::Fatal(e.into()))?;
            // A standalone agent is up as long as it runs.
            let store = Arc::new(Mutex::new(Store::new(u64::MAX)));
            // The agent's own labels, for localization verdicts in its own /metrics.
            store.lock().unwrap_or_else(|e| e.into_inner()).hello(
                &cfg.name,
                cfg.site.clone(),
                cfg.isp.clone(),
                None,
            );
            let mut reg = export::registry(store.clone(), Role::Agent, export::wall_clock_ms);
            reg.register_collector(Box::new(UplinkCollector(uplinks.clone())));
            reg.register_collector(Box::new(ReflectorCollector(reflector_sockets)));
            let refused = pathpulse_metrics::http_limit::Refused::default();
            reg.register(
                "pathpulse_http_refused",
                "HTTP connections of /metrics refused or closed, by reason (connection or address limit, idle)",
                refused.clone(),
            );
            let listener = pathpulse_metrics::http_limit::LimitedListener::new(
                listener,
                pathpulse_metrics::http_limit::HttpLimits::default(),
                refused,
            );
            let reg = Arc::new(reg);
            let app = pathpulse_metrics::http::metrics_router(reg)
                .route("/healthz", axum::routing::get(|| async { "ok\n" }));
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let serve = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
            tracing::info!(addr = %bound, "serving /metrics");
            Some(store)
        }
    };

    // Probers. ICMP, TCP, STAMP, DNS and hop discovery follow the plan, which a reload or
    // a peer list replaces.
    // With aggregators, peers running a reflector may come with a peer list.
    if stamp_running || !cfg.aggregators.is_empty() {
        match crate::probe::stamp::sender::StampProber::open(
            reloader.subscribe(),
            shared.clone(),
            resolver.clone(),
            cfg.stamp_key.clone(),
            cfg.clock_sync,
        ) {
            Ok(p) => {
                tasks.spawn(p.run(shutdown.clone()));
            }
            Err(e) if stamp_running => {
                return Err(RunError::Fatal(anyhow::anyhow!(
                    "cannot open a UDP socket for STAMP: {e}"
                )));
            }
            Err(e) => tracing::error!(error = %e, "STAMP toward peers disabled"),
        }
    }
    // Hop discovery: loopback targets and same-site peers are left out (`hops::hop_targets`);
    // with nothing to discover it waits for the plan without opening its RAW sockets.
    if cfg.hops {
        tasks.spawn(
            HopProber {
                plan: reloader.subscribe(),
                interval: cfg.hop_interval,
                timeout: cfg.timeout,
                max_ttl: hops::DEFAULT_MAX_TTL,
                probe: cfg.hop_probe,
                isp_prefixes: cfg.isp_prefixes.clone(),
                shared: shared.clone(),
                resolver: resolver.clone(),
            }
            .run(shutdown.clone()),
        );
    }
    let (icmp, failed) = IcmpProber::open(
        reloader.subscribe(),
        shared.clone(),
        resolver.clone(),
        liveness.register("icmp prober"),
    );
    if let Some(e) = failed {
        if !has_tcp && !stamp_running {
            return Err(RunError::Fatal(anyhow::anyhow!(
                "cannot probe with ICMP: {e}"
            )));
        }
        tracing::error!(error = %e, "ICMP probes disabled; their paths count send errors");
    }
    tasks.spawn(icmp.run(shutdown.clone()));
    tasks.spawn(
        crate::probe::dns::prober::DnsProber {
            plan: reloader.subscribe(),
            shared: shared.clone(),
            resolver: resolver.clone(),
            beat: liveness.register("dns prober"),
        }
        .run(shutdown.clone()),
    );
    tasks.spawn(
        TcpProber {
            plan: reloader.subscribe(),
            shared: shared.clone(),
            resolver,
            beat: liveness.register("tcp prober"),
        }
        .run(shutdown.clone()),
    );
    let reporter = liveness.register("reporter");
    started(AgentHandles {
        uplinks,
        reloader: reloader.clone(),
        liveness,
    });
    tracing::info!(agent = %cfg.name, targets = n_targets, aggregators = cfg.aggregators.len(), "agent running");

    // Reporter: one report per interval to the local store and every uplink.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.report_interval,
        cfg.report_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = tokio::time::interval(BEAT_EVERY);
    let (mut start_wall, mut start_mono) = (wall_ms(), Instant::now());
    // Loss worth an alert goes out early, at most one report per `early_gap`: with the
    // default 5 s interval the aggregator would otherwise learn of it 2.5 s later on
    // average.
    let early_gap = (cfg.report_interval / 4).max(EARLY_REPORT_GAP);
    let mut early_at: Option<Instant> = None;
    let mut report = Report {
        seq: 0,
        agent: cfg.name.clone(),
        interval_start_ms: 0,
        interval_ms: 0,
        paths: Vec::new(),
        health: Default::default(),
    };
    loop {
        reporter.beat();
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
            _ = beat.tick() => continue,
            _ = shared.lossy(), if early_at.is_none() => {
                let at = start_mono + early_gap;
                if at < start_mono + cfg.report_interval {
                    early_at = Some(at);
                }
                continue;
            }
            _ = tokio::time::sleep_until(early_at.unwrap_or(start_mono).into()), if early_at.is_some() => {
                if !shared.lossy_now() {
                    early_at = None;
                    continue;
                }
                tick.reset();
                false
            }
        };
        early_at = None;
        let now_mono = Instant::now();
        report.interval_start_ms = start_wall;
        report.interval_ms = now_mono
            .saturating_duration_since(start_mono)
            .as_millis()
            .min(u128::from(u32::MAX)) as u32;
        // Lengths come from the monotonic clock; the wall clock only labels the interval,
        // so a clock step cannot make an interval negative or huge.
        start_wall = wall_ms();
        start_mono = now_mono;
        let retired = match &store {
            // Standalone: the store alone takes the report, in parts of `REPORT_PART`
            // paths, so the whole report (2 MB at 10,000 paths) is never held. Each path's
            // interval is still taken whole; where it ends differs between parts by the
            // time the earlier ones took (about a millisecond at 10,000 paths).
            Some(store) if uplink_txs.is_empty() => {
                let begun = shared.begin_parts();
                let now = wall_ms();
                let src = lock(store).apply_agent(&cfg.name, &begun.health, now);
                let mut from = Some(0);
                while let Some(f) = from {
                    let (n, next) = shared.take_part(f, REPORT_PART, &mut report.paths);
                    lock(store).apply_paths(
                        &src,
                        report.interval_start_ms,
                        &report.paths[..n],
                        now,
                    );
                    from = next;
                }
                shared.end_parts(begun)
            }
            _ => {
                // The report is refilled in place: its buffers carry over between intervals.
                let Ended { health, retired } = shared.take_into(&mut report.paths);
                report.health = health;
                if let Some(store) = &store {
                    lock(store).apply(&report, wall_ms());
                }
                retired
            }
        };
        // A target removed by a reload leaves the local exposition with its last report.
        if let Some(store) = &store {
            let mut store = lock(store);
            for (dst, probe) in retired {
                store.remove_path(&cfg.name, &dst, probe);
            }
        }
        for (agg, tx, status) in &uplink_txs {
            if tx.try_send(report.clone()).is_err() {
                status.queue_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(aggregator = %agg, "uplink queue full; report dropped");
            }
        }
        if stopping {
            break;
        }
    }
    drop(uplink_txs);
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(3), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 3 s");
    }
    Ok(())
}

/// Paths per part when a standalone agent hands its report to its store in parts.
const REPORT_PART: usize = 256;

fn lock(store: &SharedStore) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the STAMP reflector runs, on the agent's standalone `/metrics`: its sockets,
/// when one is wanted (0: it could not bind, peers get no STAMP path to this agent).
#[derive(Debug)]
struct ReflectorCollector(Option<usize>);

impl prometheus_client::collector::Collector for ReflectorCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        if let Some(n) = self.0 {
            enc.encode_descriptor(
                "pathpulse_stamp_reflector_sockets",
                "UDP sockets the STAMP reflector listens on; 0 when it could not bind its port (no STAMP paths toward this agent).",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?
            .encode_gauge(&(n as i64))?;
        }
        Ok(())
    }
}

/// The agent's own delivery metrics, per aggregator, on its standalone `/metrics`.
#[derive(Debug)]
struct UplinkCollector(Vec<(String, Arc<UplinkStatus>)>);

impl prometheus_client::collector::Collector for UplinkCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::NoLabelSet;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        type Get = fn(&UplinkStatus) -> u64;
        let gauges: [(&str, &str, Get); 6] = [
            (
                "pathpulse_agent_peers",
                "Peers in the last peer list from the aggregator (mesh membership).",
                |s| s.peers.load(Ordering::Relaxed),
            ),
            (
                "pathpulse_agent_peer_epoch",
                "Membership epoch of the last peer list from the aggregator.",
                |s| s.peer_epoch.load(Ordering::Relaxed),
            ),
            (
                "pathpulse_uplink_connected",
                "1 while the uplink to the aggregator is connected.",
                |s| u64::from(s.connected.load(Ordering::Relaxed)),
            ),
            (
                "pathpulse_spool_reports",
                "Reports kept for the aggregator until it acknowledges them.",
                |s| s.spool.reports.load(Ordering::Relaxed),
            ),
            (
                "pathpulse_spool_bytes",
                "Encoded size of the reports kept for the aggregator.",
                |s| s.spool.bytes.load(Ordering::Relaxed),
            ),
            (
                "pathpulse_spool_on_disk",
                "1 while the spool is written to disk; 0 while reports are kept in memory only (disk error).",
                |s| u64::from(s.spool.on_disk.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, get) in gauges {
            let mut m = enc.encode_descriptor(name, help, None, Gauge)?;
            for (a, s) in &self.0 {
                m.encode_family(&[("aggregator", a.as_str())])?
                    .encode_gauge(&(get(s) as i64))?;
            }
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_reports_acknowledged",
            "Reports the aggregator acknowledged.",
            None,
            Counter,
        )?;
        for (a, s) in &self.0 {
            m.encode_family(&[("aggregator", a.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&load(&s.acked), None)?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_spool_dropped",
            "Reports dropped before the aggregator acknowledged them, oldest first (spool bound reached, or the uplink's queue full).",
            None,
            Counter,
        )?;
        for (a, s) in &self.0 {
            let v = load(&s.spool.dropped) + load(&s.queue_dropped);
            m.encode_family(&[("aggregator", a.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_spool_errors",
            "Spool problems: failed writes (disk full, I/O) and corrupt files moved aside.",
            None,
            Counter,
        )?;
        for (a, s) in &self.0 {
            for (kind, v) in [
                ("write", load(&s.spool.write_errors)),
                ("corrupt", load(&s.spool.corrupt)),
            ] {
                m.encode_family(&[("aggregator", a.as_str()), ("kind", kind)])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        Ok(())
    }
}
