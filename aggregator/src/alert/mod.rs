//! Real-time alerts, decided inside the aggregator as reports arrive.
//!
//! - [`rules`]: rules, thresholds with hysteresis, and their pure evaluation;
//! - [`engine`]: per-path history, evaluation as reports arrive and on a tick, alerts out;
//! - [`deliver`]: webhooks (Alertmanager webhook format) and Alertmanager's v2 API;
//! - [`state`]: firing alerts persisted across restarts (redb);
//! - [`verdict`]: the localization verdict that explains an alert (its annotation);
//! - [`api`]: `GET /api/alerts`;
//! - [`config`]: the `[alert]` table and the `--webhook` / `--alertmanager` flags.
//!
//! This module is the shell around them: [`Alerts`] is what ingest and HTTP hold, and
//! [`start`] runs the tick, the dispatcher (persist, then queue to every receiver) and
//! one task per receiver.

pub mod api;
pub mod config;
pub mod deliver;
pub mod engine;
mod history;
pub mod rules;
pub mod state;
pub mod verdict;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pathpulse_metrics::SharedStore;
use pathpulse_metrics::export::{AlertSource, ReceiverCounts, wall_clock_ms};
use pathpulse_metrics::localize::{self, Thresholds};
use pathpulse_wire::{Confirm, Report};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::AlertConfig;
use deliver::{DeliveryContext, Receiver};
pub use engine::{Alert, AlertState, Engine, EngineConfig};
use state::AlertStateStore;

/// How often agent-stale and path-down rules are evaluated.
pub const TICK: Duration = Duration::from_secs(1);
/// Reports waiting for the alert engine's thread at most; beyond, a report is not
/// evaluated (counted in `pathpulse_alert_reports_skipped_total`), ingest never waits.
pub const REPORT_QUEUE: usize = 4096;

/// Localization verdicts are computed at most this often (they read every path).
const VERDICT_MAX_AGE_MS: u64 = 1_000;

/// What ingest hands the engine's thread, in the order it arrived.
enum Input {
    Report(Report),
    /// An agent's confirmation bursts (its name from the connection's certificate).
    Confirm(String, Confirm),
}

/// The alert engine as the rest of the aggregator sees it.
pub struct Alerts {
    engine: Mutex<Engine>,
    events: mpsc::UnboundedSender<Vec<Alert>>,
    pub receivers: Vec<Arc<Receiver>>,
    /// The store localization reads; `None` leaves alerts without a verdict.
    store: Option<SharedStore>,
    /// Last localization verdicts and when they were computed (ms).
    verdicts: Mutex<(u64, Vec<localize::Verdict>)>,
    /// Reports and confirmation bursts for the engine's thread (see [`Alerts::submit`]).
    reports: std::sync::mpsc::SyncSender<(Input, u64)>,
    /// Reports not evaluated because the engine's queue was full.
    pub skipped: std::sync::atomic::AtomicU64,
    /// Fingerprints of the firing alerts notified with their verdict.
    explained: Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("receivers", &self.receivers.len())
            .finish_non_exhaustive()
    }
}

impl Alerts {
    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add the localization verdict explaining each alert, where there is one, as its
    /// `verdict` annotation (fault localization judges the last minute of every path).
    fn annotate(&self, alerts: &mut [Alert]) {
        let Some(store) = &self.store else { return };
        if alerts.is_empty() {
            return;
        }
        let now = wall_clock_ms();
        let mut cache = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 + VERDICT_MAX_AGE_MS <= now {
            let obs = {
                let st = store.lock().unwrap_or_else(|e| e.into_inner());
                localize::observations(&st, now)
            };
            *cache = (now, localize::localize(&obs, &Thresholds::default()));
        }
        for a in alerts {
            match verdict::annotation(&cache.1, &a.labels) {
                Some(v) => a.annotations.insert("verdict".into(), v),
                None => a.annotations.remove("verdict"),
            };
        }
    }

    fn emit(&self, mut out: Vec<Alert>) {
        self.annotate(&mut out);
        verdict::notified(
            &out,
            &mut self.explained.lock().unwrap_or_else(|e| e.into_inner()),
        );
        if !out.is_empty() {
            for a in &out {
                tracing::info!(
                    alertname = %a.alertname,
                    state = ?a.state,
                    summary = %a.annotations.get("summary").map_or("", String::as_str),
                    "alert"
                );
            }
            // The dispatcher only stops at shutdown; what is sent after that is moot.
            let _ = self.events.send(out);
        }
    }

    /// Hand a report ingest just applied to the engine's own thread; never blocks (a full
    /// queue skips the report for alerting and counts it).
    pub fn submit(&self, r: Report, now_ms: u64) {
        self.hand_over(Input::Report(r), now_ms);
    }

    /// Hand confirmation bursts of `agent` to the engine's thread, as [`Alerts::submit`].
    pub fn on_confirm(&self, agent: &str, c: &Confirm, now_ms: u64) {
        self.hand_over(Input::Confirm(agent.to_string(), c.clone()), now_ms);
    }

    fn hand_over(&self, input: Input, now_ms: u64) {
        if self.reports.try_send((input, now_ms)).is_err() {
            let n = self.skipped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    skipped = n + 1,
                    "alert engine behind: reports skipped for alerting"
                );
            }
        }
    }

    /// Take new rules (SIGHUP, `POST /api/reload`): see [`Engine::set_rules`]. Alerts of
    /// removed rules resolve and are notified. Returns (rules before, rules now, alerts
    /// resolved).
    pub fn reload_rules(&self, rules: Vec<rules::Rule>, now_ms: u64) -> (usize, usize, usize) {
        let (before, now, out) = {
            let mut e = self.engine();
            let before = e.rules().len();
            let now = rules.len();
            (before, now, e.set_rules(rules, now_ms))
        };
        let resolved = out.len();
        self.emit(out);
        (before, now, resolved)
    }

    /// Evaluate the rules on a report ingest just applied (on the caller's thread).
    pub fn on_report(&self, r: &Report, now_ms: u64) {
        let out = self.engine().on_report(r, now_ms);
        self.emit(out);
    }

    /// An agent connected from this address.
    pub fn agent_address(&self, agent: &str, addr: IpAddr) {
        self.engine().agent_address(agent, addr);
    }

    /// An agent said hello: its site and ISP label its alerts.
    pub fn agent_hello(&self, agent: &str, site: Option<&str>, isp: Option<&str>) {
        self.engine().agent_hello(agent, site, isp);
    }

    /// Periodic evaluation (agent stale, path down), and firing alerts notified again
    /// once their localization verdict is known (it judges the last minute, so it
    /// usually comes a few seconds after the alert fired).
    pub fn tick(&self, now_ms: u64) {
        let out = self.engine().tick(now_ms);
        self.emit(out);
        let mut firing = self.engine().firing();
        {
            let explained = self.explained.lock().unwrap_or_else(|e| e.into_inner());
            if firing.iter().all(|a| explained.contains(&a.fingerprint)) {
                return;
            }
        }
        self.annotate(&mut firing);
        let again = verdict::newly_explained(
            &firing,
            &mut self.explained.lock().unwrap_or_else(|e| e.into_inner()),
        );
        if !again.is_empty() {
            for a in &again {
                tracing::info!(
                    alertname = %a.alertname,
                    verdict = %a.annotations.get("verdict").map_or("", String::as_str),
                    "alert explained: notified again"
                );
            }
            let _ = self.events.send(again);
        }
    }

    /// Pending and firing alerts.
    pub fn active(&self) -> Vec<Alert> {
        let mut v = self.engine().active();
        self.annotate(&mut v);
        v
    }

    pub fn firing(&self) -> Vec<Alert> {
        let mut v = self.engine().firing();
        self.annotate(&mut v);
        v
    }

    pub fn rules(&self) -> Vec<rules::Rule> {
        self.engine().rules().to_vec()
    }
}

impl AlertSource for Alerts {
    fn firing(&self) -> Vec<(String, String, u64)> {
        let engine = self.engine();
        let firing = engine.firing();
        // (Counting needs no verdicts.)
        let mut out: Vec<(String, String, u64)> = Vec::new();
        let mut add = |name: &str, sev: &str, n: u64| match out
            .iter_mut()
            .find(|(a, s, _)| a == name && s == sev)
        {
            Some(e) => e.2 += n,
            None => out.push((name.to_string(), sev.to_string(), n)),
        };
        for r in engine.rules() {
            add(&r.name, &r.severity, 0);
            if r.kind == rules::RuleKind::PathDown {
                add(&r.rollup_name, &r.severity, 0);
            }
            for n in [
                &r.site_rollup_name,
                &r.isp_rollup_name,
                &r.source_rollup_name,
            ] {
                if !n.is_empty() && (r.kind == rules::RuleKind::PathDown || r.has_rollups()) {
                    add(n, &r.severity, 0);
                }
            }
        }
        for a in &firing {
            add(&a.alertname, &a.severity, 1);
        }
        out
    }

    fn skipped_reports(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn receivers(&self) -> Vec<ReceiverCounts> {
        self.receivers
            .iter()
            .map(|r| ReceiverCounts {
                receiver: r.cfg.name.clone(),
                sent: r.stats.sent.load(Ordering::Relaxed),
                failed_attempts: r.stats.failed_attempts.load(Ordering::Relaxed),
                dropped: r.stats.dropped.load(Ordering::Relaxed),
                queued: r.queued() as u64,
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("alert engine: {0:#}")]
    Client(anyhow::Error),
}

/// Start the alert engine: restore firing alerts from `state_dir`, then run the tick,
/// the dispatcher and the receivers until `shutdown`. `store` feeds the localization
/// verdicts in the alerts' annotations.
pub fn start(
    cfg: &AlertConfig,
    state_dir: &Path,
    external_url: String,
    store: Option<SharedStore>,
    shutdown: CancellationToken,
) -> Result<(Arc<Alerts>, tokio::task::JoinHandle<()>), StartError> {
    let state = Arc::new(AlertStateStore::open(state_dir)?);
    let restored = state.load()?;
    let mut engine = Engine::new(
        cfg.rules.clone(),
        EngineConfig {
            external_url: external_url.clone(),
        },
    );
    if !restored.is_empty() {
        tracing::info!(
            alerts = restored.len(),
            "firing alerts restored from the state directory"
        );
    }
    // Restored alerts notified with their verdict need not be notified again.
    let mut explained = std::collections::BTreeSet::new();
    verdict::notified(&restored, &mut explained);
    engine.restore(restored, wall_clock_ms());
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Alert>>();
    let (report_tx, report_rx) = std::sync::mpsc::sync_channel::<(Input, u64)>(REPORT_QUEUE);
    let receivers: Vec<Arc<Receiver>> = cfg
        .receivers
        .iter()
        .map(|c| Arc::new(Receiver::new(c.clone())))
        .collect();
    let alerts = Arc::new(Alerts {
        engine: Mutex::new(engine),
        events: tx,
        receivers: receivers.clone(),
        store,
        verdicts: Mutex::new((0, Vec::new())),
        reports: report_tx,
        skipped: std::sync::atomic::AtomicU64::new(0),
        explained: Mutex::new(explained),
    });
    let client = deliver::client().map_err(StartError::Client)?;
    let firing_of = alerts.clone();
    let ctx = DeliveryContext {
        client,
        external_url,
        resend_interval: cfg.resend_interval,
        firing: Arc::new(move || firing_of.firing()),
    };
    let tasks = tokio_util::task::TaskTracker::new();
    for r in &receivers {
        tracing::info!(receiver = %r.cfg.name, url = %r.cfg.url, "alert receiver");
        tasks.spawn(deliver::run_receiver(
            r.clone(),
            ctx.clone(),
            shutdown.clone(),
        ));
    }
    // The engine evaluates on its own thread: reports as they come, the tick every second.
    // Its work (a few µs per path-report) never holds up ingest's async tasks.
    let (engine_of, stop) = (alerts.clone(), shutdown.clone());
    let engine_thread = std::thread::Builder::new()
        .name("alert-engine".into())
        .spawn(move || {
            let mut next_tick = std::time::Instant::now();
            while !stop.is_cancelled() {
                let wait = next_tick.saturating_duration_since(std::time::Instant::now());
                match report_rx.recv_timeout(wait.min(TICK)) {
                    Ok((Input::Report(r), now)) => engine_of.on_report(&r, now),
                    Ok((Input::Confirm(agent, c), now)) => {
                        let out = engine_of.engine().on_confirm(&agent, &c, now);
                        engine_of.emit(out);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                if std::time::Instant::now() >= next_tick {
                    engine_of.tick(wall_clock_ms());
                    next_tick += TICK;
                    if next_tick < std::time::Instant::now() {
                        next_tick = std::time::Instant::now() + TICK;
                    }
                }
            }
        })
        .map_err(|e| StartError::Client(e.into()))?;
    tasks.spawn(async move {
        let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    });
    let stop = shutdown.clone();
    tasks.spawn(async move {
        loop {
            let batch = tokio::select! {
                _ = stop.cancelled() => None,
                b = rx.recv() => b,
            };
            let Some(mut batch) = batch else { break };
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
            }
            // Persist first: a notification sent but not recorded would fire again
            // after a restart.
            let (st, b) = (state.clone(), batch.clone());
            match tokio::task::spawn_blocking(move || st.apply(&b)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot record alert state"),
                Err(e) => tracing::error!(error = %e, "alert state task failed"),
            }
            for a in batch {
                for r in &receivers {
                    r.push(a.clone());
                }
            }
        }
        // Record what fired or resolved during shutdown.
        let mut rest = Vec::new();
        while let Ok(more) = rx.try_recv() {
            rest.extend(more);
        }
        if let Err(e) = state.apply(&rest) {
            tracing::error!(error = %e, "cannot record alert state");
        }
    });
    tasks.close();
    let done = tokio::spawn(async move { tasks.wait().await });
    Ok((alerts, done))
}
