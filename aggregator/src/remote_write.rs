//! Prometheus remote write 1.0 from the aggregator: every interval, the same series as
//! `/metrics` (classic histograms as `_bucket`/`_sum`/`_count`) as a protobuf
//! `WriteRequest`, snappy block-compressed, POSTed to any Prometheus-compatible store
//! (Mimir, Thanos Receive, VictoriaMetrics, Prometheus with its receiver on).
//!
//! Delivery: a bounded queue of batches; 5xx, 429 and network errors are retried with
//! jittered exponential backoff (the oldest batch first, so samples stay in order); any
//! other 4xx is a permanent refusal: the batch is dropped and counted, never retried.
//! When the queue is full the oldest batch goes, counted. Counters in
//! `pathpulse_remote_write_*`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pathpulse_agent::backoff::Backoff;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_protobuf::{self, prometheus_data_model as pm};
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// `prometheus.WriteRequest` (remote write 1.0; fields this sender uses).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Where and how often to write.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWriteConfig {
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Labels added to every series (e.g. `aggregator = "agg-1"`), like Prometheus's
    /// external labels.
    pub external_labels: Vec<(String, String)>,
    /// Batches kept while the receiver is unreachable.
    pub queue_limit: usize,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_QUEUE_LIMIT: usize = 240;

fn series(
    name: String,
    labels: &[Label],
    extra: &[(&str, String)],
    value: f64,
    ts: i64,
) -> TimeSeries {
    let mut l: Vec<Label> = labels.to_vec();
    l.extend(extra.iter().map(|(k, v)| Label {
        name: (*k).to_string(),
        value: v.clone(),
    }));
    l.push(Label {
        name: "__name__".into(),
        value: name,
    });
    // Remote write wants labels sorted by name.
    l.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries {
        labels: l,
        samples: vec![Sample {
            value,
            timestamp: ts,
        }],
    }
}

fn prom_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        v.to_string()
    }
}

/// The metric families of one exposition as remote-write series at `ts_ms`.
pub fn to_write_request(
    families: &[pm::MetricFamily],
    external: &[(String, String)],
    ts_ms: i64,
) -> WriteRequest {
    let mut out = Vec::new();
    for f in families {
        for m in &f.metric {
            let mut labels: Vec<Label> = m
                .label
                .iter()
                .map(|l| Label {
                    name: l.name.clone(),
                    value: l.value.clone(),
                })
                .collect();
            labels.extend(external.iter().map(|(k, v)| Label {
                name: k.clone(),
                value: v.clone(),
            }));
            if let Some(c) = &m.counter {
                out.push(series(f.name.clone(), &labels, &[], c.value, ts_ms));
            } else if let Some(g) = &m.gauge {
                out.push(series(f.name.clone(), &labels, &[], g.value, ts_ms));
            } else if let Some(u) = &m.untyped {
                out.push(series(f.name.clone(), &labels, &[], u.value, ts_ms));
            } else if let Some(s) = &m.summary {
                for q in &s.quantile {
                    let extra = [("quantile", prom_float(q.quantile))];
                    out.push(series(f.name.clone(), &labels, &extra, q.value, ts_ms));
                }
                let (sum, count) = (s.sample_sum, s.sample_count as f64);
                out.push(series(format!("{}_sum", f.name), &labels, &[], sum, ts_ms));
                out.push(series(
                    format!("{}_count", f.name),
                    &labels,
                    &[],
                    count,
                    ts_ms,
                ));
            } else if let Some(h) = &m.histogram {
                let bucket = format!("{}_bucket", f.name);
                let mut has_inf = false;
                for b in &h.bucket {
                    has_inf |= b.upper_bound.is_infinite();
                    let extra = [("le", prom_float(b.upper_bound))];
                    let v = b.cumulative_count as f64;
                    out.push(series(bucket.clone(), &labels, &extra, v, ts_ms));
                }
                let count = h.sample_count as f64;
                if !has_inf {
                    let extra = [("le", "+Inf".to_string())];
                    out.push(series(bucket.clone(), &labels, &extra, count, ts_ms));
                }
                out.push(series(
                    format!("{}_sum", f.name),
                    &labels,
                    &[],
                    h.sample_sum,
                    ts_ms,
                ));
                out.push(series(
                    format!("{}_count", f.name),
                    &labels,
                    &[],
                    count,
                    ts_ms,
                ));
            }
        }
    }
    WriteRequest { timeseries: out }
}

/// What a receiver's answer means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// 5xx, 429, timeout, connection refused: keep the batch, back off, retry.
    Retry,
    /// Any other 4xx: the receiver will never take it; drop it.
    Refused,
}

pub fn classify(status: Option<u16>) -> Outcome {
    match status {
        Some(s) if (200..300).contains(&s) => Outcome::Delivered,
        Some(429) | None => Outcome::Retry,
        Some(s) if s >= 500 => Outcome::Retry,
        Some(_) => Outcome::Refused,
    }
}

/// Counters of the remote writer, exported beside the store's metrics.
#[derive(Debug, Default)]
pub struct RemoteWriteStats {
    pub batches_sent: AtomicU64,
    pub samples_sent: AtomicU64,
    pub retries: AtomicU64,
    pub refused: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub queued: AtomicU64,
}

#[derive(Debug)]
pub struct StatsCollector(pub Arc<RemoteWriteStats>);

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        for (name, help, v) in [
            (
                "pathpulse_remote_write_samples",
                "Samples delivered to the remote-write receiver.",
                &s.samples_sent,
            ),
            (
                "pathpulse_remote_write_retries",
                "Remote-write attempts that failed with 5xx, 429 or a network error and are retried.",
                &s.retries,
            ),
        ] {
            enc.encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&v.load(Ordering::Relaxed), None)?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_remote_write_dropped_batches",
            "Remote-write batches given up, by reason: refused (a 4xx other than 429) or queue_full (the receiver was away too long).",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in [
            ("refused", &s.refused),
            ("queue_full", &s.dropped_queue_full),
        ] {
            m.encode_family(&[("reason", reason)])?
                .encode_counter::<NoLabelSet, _, u64>(&v.load(Ordering::Relaxed), None)?;
        }
        enc.encode_descriptor(
            "pathpulse_remote_write_queued_batches",
            "Remote-write batches waiting for the receiver.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(s.queued.load(Ordering::Relaxed) as i64))?;
        Ok(())
    }
}

pub struct RemoteWriter {
    pub cfg: RemoteWriteConfig,
    pub registry: Arc<Registry>,
    pub stats: Arc<RemoteWriteStats>,
}

struct Batch {
    body: Vec<u8>,
    samples: u64,
}

impl RemoteWriter {
    fn snapshot(&self) -> Option<Batch> {
        let families = match prometheus_protobuf::encode(&self.registry) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = ?e, "remote write: encoding the metrics failed");
                return None;
            }
        };
        let now = pathpulse_metrics::export::wall_clock_ms() as i64;
        let req = to_write_request(&families, &self.cfg.external_labels, now);
        let samples = req.timeseries.len() as u64;
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .map_err(|e| tracing::warn!(error = %e, "remote write: snappy failed"))
            .ok()?;
        Some(Batch { body, samples })
    }

    async fn post(&self, client: &reqwest::Client, b: &Batch) -> Option<u16> {
        let r = client
            .post(&self.cfg.url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header(
                "User-Agent",
                concat!("pathpulse/", env!("CARGO_PKG_VERSION")),
            )
            .body(b.body.clone())
            .send()
            .await;
        match r {
            Ok(resp) => Some(resp.status().as_u16()),
            Err(e) => {
                tracing::debug!(error = %e, "remote write: request failed");
                None
            }
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let timeout = self.cfg.timeout;
        let client = match crate::http::client(|b| b.timeout(timeout)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "remote write disabled: no HTTP client");
                return;
            }
        };
        let mut queue: VecDeque<Batch> = VecDeque::new();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut last_status: Option<Option<u16>> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Some(b) = self.snapshot() {
                        if queue.len() >= self.cfg.queue_limit.max(1) {
                            queue.pop_front();
                            self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                        queue.push_back(b);
                    }
                    if retry_at.is_some() {
                        self.stats.queued.store(queue.len() as u64, Ordering::Relaxed);
                        continue;
                    }
                }
                _ = retry => { retry_at = None; }
            }
            // Send in order until the queue is empty or the receiver asks to wait.
            while let Some(b) = queue.front() {
                let status = self.post(&client, b).await;
                match classify(status) {
                    Outcome::Delivered => {
                        self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .samples_sent
                            .fetch_add(b.samples, Ordering::Relaxed);
                        queue.pop_front();
                        backoff.reset();
                        if last_status.take().is_some() {
                            tracing::info!(url = %self.cfg.url, "remote write delivering again");
                        }
                    }
                    Outcome::Refused => {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        queue.pop_front();
                        if last_status != Some(status) {
                            tracing::warn!(url = %self.cfg.url, status = ?status, "remote write refused a batch (not retried)");
                            last_status = Some(status);
                        }
                    }
                    Outcome::Retry => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        let wait = backoff.next_delay();
                        if last_status != Some(status) {
                            tracing::warn!(url = %self.cfg.url, status = ?status, retry_in = ?wait, "remote write failed; retrying");
                            last_status = Some(status);
                        }
                        retry_at = Some(tokio::time::Instant::now() + wait);
                        break;
                    }
                }
            }
            self.stats
                .queued
                .store(queue.len() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;

    #[test]
    fn statuses_decide_retry_or_drop() {
        assert_eq!(classify(Some(204)), Outcome::Delivered);
        assert_eq!(classify(Some(500)), Outcome::Retry);
        assert_eq!(classify(Some(503)), Outcome::Retry);
        assert_eq!(classify(Some(429)), Outcome::Retry);
        assert_eq!(classify(None), Outcome::Retry);
        assert_eq!(classify(Some(400)), Outcome::Refused);
        assert_eq!(classify(Some(404)), Outcome::Refused);
    }

    #[test]
    fn families_become_sorted_series_with_histogram_buckets() {
        let mut reg = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(7);
        reg.register("probes_sent", "sent", c);
        let h = Histogram::new([0.001, 0.01]);
        h.observe(0.005);
        h.observe(0.5);
        reg.register("rtt_seconds", "rtt", h);
        let fams = prometheus_protobuf::encode(&reg).expect("encode");
        let ext = vec![("aggregator".to_string(), "agg-1".to_string())];
        let req = to_write_request(&fams, &ext, 1_700_000_000_000);
        let find = |name: &str, le: Option<&str>| {
            req.timeseries
                .iter()
                .find(|t| {
                    t.labels
                        .iter()
                        .any(|l| l.name == "__name__" && l.value == name)
                        && le.is_none_or(|le| {
                            t.labels.iter().any(|l| l.name == "le" && l.value == le)
                        })
                })
                .map(|t| t.samples[0].value)
        };
        assert_eq!(find("probes_sent_total", None), Some(7.0));
        assert_eq!(find("rtt_seconds_bucket", Some("0.001")), Some(0.0));
        assert_eq!(find("rtt_seconds_bucket", Some("0.01")), Some(1.0));
        assert_eq!(find("rtt_seconds_bucket", Some("+Inf")), Some(2.0));
        assert_eq!(find("rtt_seconds_count", None), Some(2.0));
        assert_eq!(find("rtt_seconds_sum", None), Some(0.505));
        for t in &req.timeseries {
            let names: Vec<&str> = t.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "labels sorted");
            assert!(
                names.contains(&"aggregator"),
                "external label on every series"
            );
            assert_eq!(t.samples[0].timestamp, 1_700_000_000_000);
        }
        // It survives the wire: protobuf then snappy, and back.
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .expect("snappy");
        let back = WriteRequest::decode(
            snap::raw::Decoder::new()
                .decompress_vec(&body)
                .expect("unsnappy")
                .as_slice(),
        )
        .expect("decode");
        assert_eq!(back, req);
    }
}
