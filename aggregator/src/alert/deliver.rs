//! Delivery of alerts: generic webhooks in the Alertmanager webhook format, and pushes to
//! Alertmanager's v2 API. Each receiver has its own task, its own bounded queue (the
//! oldest notification goes when it is full, counted) and its own per-request timeout, so
//! a dead or slow receiver delays nobody else. Failed sends are retried with the agent's
//! jittered exponential backoff, a bounded number of times.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pathpulse_agent::backoff::Backoff;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::engine::{Alert, AlertState};

/// Notifications sent in one webhook message or Alertmanager post at most.
pub const MAX_BATCH: usize = 64;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_QUEUE: usize = 1000;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(30);
pub const RETRY_BASE: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    /// POST the Alertmanager webhook JSON (version 4) to the URL.
    Webhook,
    /// POST alerts to `URL/api/v2/alerts`; re-send firing ones every resend interval.
    Alertmanager,
}

impl ReceiverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverKind::Webhook => "webhook",
            ReceiverKind::Alertmanager => "alertmanager",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverConfig {
    /// Label value of the receiver in metrics and in the webhook `receiver` field.
    pub name: String,
    pub kind: ReceiverKind,
    pub url: String,
    pub timeout: Duration,
    pub queue: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl ReceiverConfig {
    /// A receiver with the default limits, named after its kind and URL authority.
    pub fn new(kind: ReceiverKind, url: &str) -> ReceiverConfig {
        let authority = url
            .split_once("://")
            .map_or(url, |(_, r)| r)
            .split('/')
            .next()
            .unwrap_or(url);
        ReceiverConfig {
            name: format!("{}:{authority}", kind.as_str()),
            kind,
            url: url.trim_end_matches('/').to_string(),
            timeout: DEFAULT_TIMEOUT,
            queue: DEFAULT_QUEUE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_base: RETRY_BASE,
            retry_max: RETRY_MAX,
        }
    }
}

/// Counters of one receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Notifications delivered (acknowledged with 2xx).
    pub sent: AtomicU64,
    /// Attempts that failed (and were retried or given up).
    pub failed_attempts: AtomicU64,
    /// Notifications given up: retries exhausted, refused with 4xx, or pushed out of a
    /// full queue.
    pub dropped: AtomicU64,
}

/// One receiver: its queue, its counters.
#[derive(Debug)]
pub struct Receiver {
    pub cfg: ReceiverConfig,
    queue: Mutex<VecDeque<Alert>>,
    notify: Notify,
    pub stats: ReceiverStats,
}

impl Receiver {
    pub fn new(cfg: ReceiverConfig) -> Receiver {
        Receiver {
            cfg,
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            stats: ReceiverStats::default(),
        }
    }

    /// Queue a notification; never blocks. A full queue drops its oldest entry.
    pub fn push(&self, a: Alert) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.cfg.queue.max(1) {
            q.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(receiver = %self.cfg.name, "alert queue full; dropped the oldest notification");
        }
        q.push_back(a);
        drop(q);
        self.notify.notify_one();
    }

    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn take_batch(&self) -> Vec<Alert> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(MAX_BATCH);
        q.drain(..n).collect()
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Alertmanager's "no end" timestamp in webhook payloads.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn common(maps: &[&BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let Some(first) = maps.first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| maps.iter().all(|m| m.get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The Alertmanager webhook message (version 4) for a batch of notifications.
pub fn webhook_payload(receiver: &str, external_url: &str, alerts: &[Alert]) -> Value {
    let status = if alerts.iter().any(|a| a.state == AlertState::Firing) {
        "firing"
    } else {
        "resolved"
    };
    let labels: Vec<&BTreeMap<String, String>> = alerts.iter().map(|a| &a.labels).collect();
    let annotations: Vec<&BTreeMap<String, String>> =
        alerts.iter().map(|a| &a.annotations).collect();
    let common_labels = common(&labels);
    let group_labels: BTreeMap<String, String> = common_labels
        .iter()
        .filter(|(k, _)| k.as_str() == "alertname")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let group_key = format!(
        "{{}}:{{{}}}",
        group_labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let generator = format!("{}/", external_url.trim_end_matches('/'));
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": common(&annotations),
        "externalURL": external_url,
        "alerts": alerts.iter().map(|a| json!({
            "status": if a.state == AlertState::Resolved { "resolved" } else { "firing" },
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.starts_at_ms),
            "endsAt": a.ends_at_ms.map_or_else(|| ZERO_TIME.to_string(), rfc3339),
            "generatorURL": generator,
            "fingerprint": a.fingerprint,
        })).collect::<Vec<_>>(),
    })
}

/// The body of `POST /api/v2/alerts`: firing alerts end `valid_for` from now unless re-sent
/// (so they resolve by themselves if every aggregator stops), resolved ones end when they
/// resolved.
pub fn alertmanager_payload(
    external_url: &str,
    alerts: &[Alert],
    now_ms: u64,
    valid_for: Duration,
) -> Value {
    let generator = format!("{}/", external_url.trim_end_matches('/'));
    Value::Array(
        alerts
            .iter()
            .map(|a| {
                let ends = match a.state {
                    AlertState::Resolved => a.ends_at_ms.unwrap_or(now_ms),
                    _ => now_ms + valid_for.as_millis() as u64,
                };
                json!({
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": rfc3339(a.starts_at_ms),
                    "endsAt": rfc3339(ends),
                    "generatorURL": generator,
                })
            })
            .collect(),
    )
}

/// What one failed attempt means.
enum Failure {
    /// Worth another try (connection, timeout, 5xx, 408, 429).
    Retry(String),
    /// Refused for good (other 4xx).
    Refused(String),
}

async fn post(
    client: &reqwest::Client,
    cfg: &ReceiverConfig,
    url: &str,
    body: &Value,
) -> Result<(), Failure> {
    let bytes = serde_json::to_vec(body).map_err(|e| Failure::Refused(e.to_string()))?;
    let resp = client
        .post(url)
        .timeout(cfg.timeout)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .map_err(|e| Failure::Retry(error_chain(&e)))?;
    let st = resp.status();
    if st.is_success() {
        Ok(())
    } else if st.is_server_error() || st.as_u16() == 408 || st.as_u16() == 429 {
        Err(Failure::Retry(format!("HTTP {st}")))
    } else {
        Err(Failure::Refused(format!("HTTP {st}")))
    }
}

/// An error and its causes, `: `-separated (reqwest's own text hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Send `body` with retries; returns whether it was delivered.
async fn send_with_retry(
    client: &reqwest::Client,
    rx: &Receiver,
    url: &str,
    body: &Value,
    shutdown: &CancellationToken,
) -> bool {
    let cfg = &rx.cfg;
    let mut backoff = Backoff::new(cfg.retry_base, cfg.retry_max);
    for attempt in 1..=cfg.max_attempts.max(1) {
        let why = match post(client, cfg, url, body).await {
            Ok(()) => return true,
            Err(Failure::Refused(why)) => {
                rx.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(receiver = %cfg.name, error = %why, "receiver refused the alert notification; not retrying");
                return false;
            }
            Err(Failure::Retry(why)) => why,
        };
        rx.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        if attempt == cfg.max_attempts.max(1) {
            tracing::warn!(receiver = %cfg.name, attempts = attempt, error = %why, "alert notification given up");
            return false;
        }
        let delay = backoff.next_delay();
        tracing::info!(receiver = %cfg.name, attempt, error = %why, retry_in = ?delay, "alert notification failed; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    false
}

/// Everything a receiver task needs besides its queue.
#[derive(Clone)]
pub struct DeliveryContext {
    pub client: reqwest::Client,
    pub external_url: String,
    /// Alertmanager: how often firing alerts are sent again.
    pub resend_interval: Duration,
    /// The alerts firing now (read for Alertmanager re-sends).
    pub firing: Arc<dyn Fn() -> Vec<Alert> + Send + Sync>,
}

/// An HTTP client for receivers (rustls with the ring provider, the system's roots).
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(crate::http::client(|b| b.connect_timeout(DEFAULT_TIMEOUT))?)
}

/// Run one receiver until shutdown.
pub async fn run_receiver(rx: Arc<Receiver>, ctx: DeliveryContext, shutdown: CancellationToken) {
    let url = match rx.cfg.kind {
        ReceiverKind::Webhook => rx.cfg.url.clone(),
        ReceiverKind::Alertmanager => format!("{}/api/v2/alerts", rx.cfg.url),
    };
    let mut resend = tokio::time::interval(ctx.resend_interval.max(Duration::from_secs(1)));
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = rx.take_batch();
        let mut resending = false;
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = rx.notify.notified() => continue,
                _ = resend.tick(), if rx.cfg.kind == ReceiverKind::Alertmanager => {
                    batch = (ctx.firing)();
                    resending = true;
                    if batch.is_empty() {
                        continue;
                    }
                }
            }
        }
        let body = match rx.cfg.kind {
            ReceiverKind::Webhook => webhook_payload(&rx.cfg.name, &ctx.external_url, &batch),
            ReceiverKind::Alertmanager => {
                alertmanager_payload(&ctx.external_url, &batch, now_ms(), ctx.resend_interval * 4)
            }
        };
        let n = batch.len() as u64;
        if send_with_retry(&ctx.client, &rx, &url, &body, &shutdown).await {
            if !resending {
                rx.stats.sent.fetch_add(n, Ordering::Relaxed);
            }
            tracing::debug!(receiver = %rx.cfg.name, alerts = n, resending, "alert notification delivered");
        } else if !resending {
            rx.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}
