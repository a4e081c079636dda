//! The one place that names every exported metric and label set. A `Collector` reads the
//! [`Store`] on each scrape; the agent (standalone mode) and the aggregator serve the
//! same exposition.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, NativeHistogram, NativeHistogramBuckets, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use pathpulse_wire::RefuseReason;

use crate::localize::{HopView, Thresholds, hop_views, localize, observations};
use crate::protobuf::Scrape;
use crate::stats::{Z95, loss_ratio, min_detectable_loss, mos, wilson_interval};
use crate::store::{
    CLASSIC_BOUNDS_US, DstSites, HealthTotals, HopState, INGEST_LATENCY_BOUNDS_US, LOCAL_REFUSALS,
    NATIVE_SCHEMA, PathKey, PathState, Store,
};
use crate::window::{PathWindows, WINDOWS, WindowView};

/// Quantiles exported as exact gauges from the merged HDR windows.
pub const QUANTILES: [(&str, f64); 4] =
    [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99), ("0.999", 0.999)];

/// Content type of the text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Clock used at scrape time (wall clock, ms since the epoch); injectable for tests.
pub type Clock = fn() -> u64;

pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Shared handle to the store, as used by ingest, HTTP and export.
pub type SharedStore = Arc<Mutex<Store>>;

/// Taken by the tests that sample how much of a scrape holds the store lock, and by the
/// tests that keep a core busy for seconds, so that none runs beside another: on two cores
/// they preempt the sampled scrape, and a holder preempted under the lock looks like a long
/// hold.
#[cfg(test)]
pub(crate) static LOCK_SAMPLING: Mutex<()> = Mutex::new(());

#[derive(Debug)]
struct StoreCollector {
    store: SharedStore,
    clock: Clock,
    /// Paths left out of scrapes by the cardinality budget, summed over scrapes.
    dropped: std::sync::atomic::AtomicU64,
}

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// Labels of a path's series: `src`, `dst`, `probe`, then `src_site`, `dst_site` and `isp`
/// (the source agent's) where known; an unknown or empty one is left out.
fn path_labels<'a>(k: &'a PathKey, store: &'a Store, sites: &DstSites<'a>) -> Labels<'a> {
    let agent = store.agents.get(&*k.src);
    let labels = [
        ("src_site", agent.and_then(|a| known(a.site.as_deref()))),
        ("dst_site", known(sites.site_of(&k.dst))),
        ("isp", agent.and_then(|a| known(a.isp.as_deref()))),
    ];
    let mut l = Vec::with_capacity(6);
    l.extend([
        ("src", Cow::Borrowed(&*k.src)),
        ("dst", Cow::Borrowed(&*k.dst)),
        ("probe", Cow::Borrowed(k.probe.as_str())),
    ]);
    l.extend(
        labels
            .into_iter()
            .filter_map(|(name, v)| Some((name, Cow::Borrowed(v?)))),
    );
    l
}

/// A site or ISP label as declared, when it says something (an empty one is unknown).
fn known(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// A path's labels and more (`window`, `quantile`...), in one allocation.
fn with<'a>(l: &Labels<'a>, extra: &[(&'static str, &'a str)]) -> Labels<'a> {
    let mut out = Vec::with_capacity(l.len() + extra.len());
    out.extend(l.iter().cloned());
    out.extend(extra.iter().map(|(k, v)| (*k, Cow::Borrowed(*v))));
    out
}

/// Microseconds to seconds by division, so `1000 µs` prints as `0.001` exactly.
fn secs(us: f64) -> f64 {
    us / 1e6
}

/// Counter families over paths: (name without `_total`, help, accessor).
type CounterOf = fn(&PathState) -> u64;
const PATH_COUNTERS: [(&str, &str, CounterOf); 7] = [
    ("pathpulse_probes_sent", "Probes sent.", |s| s.counters.sent),
    (
        "pathpulse_probes_received",
        "Probes answered within their timeout.",
        |s| s.counters.received,
    ),
    (
        "pathpulse_probes_lost",
        "Probes without a reply within their timeout.",
        |s| s.counters.lost,
    ),
    (
        "pathpulse_probes_late",
        "Replies that arrived after their probe was declared lost.",
        |s| s.counters.late,
    ),
    (
        "pathpulse_probes_duplicate",
        "Duplicate replies (not counted as received).",
        |s| s.counters.duplicate,
    ),
    (
        "pathpulse_probes_reordered",
        "Replies that arrived after a reply to a later probe.",
        |s| s.counters.reordered,
    ),
    (
        "pathpulse_send_errors",
        "Probes that could not be sent (socket error, unresolved name).",
        |s| s.counters.send_errors,
    ),
];

/// A path's windowed views, computed once per scrape.
type PathViews = [(&'static str, WindowView); 3];

/// A gauge family with `quantile` and `window` labels: `us(view, q)` in microseconds.
fn window_quantiles(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    views: &[PathViews],
    labels: &[Labels],
    us: impl Fn(&WindowView, f64) -> Option<u64>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (vs, pl) in views.iter().zip(labels) {
        for (w, v) in vs {
            for (qs, q) in QUANTILES {
                if let Some(us) = us(v, q) {
                    let l = with(pl, &[("quantile", qs), ("window", w)]);
                    m.encode_family(&l)?.encode_gauge(&secs(us as f64))?;
                }
            }
        }
    }
    Ok(())
}

/// A gauge family with a `window` label.
fn window_gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    views: &[PathViews],
    labels: &[Labels],
    value: impl Fn(&WindowView) -> Option<f64>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (vs, pl) in views.iter().zip(labels) {
        for (w, v) in vs {
            if let Some(x) = value(v) {
                m.encode_family(&with(pl, &[("window", w)]))?
                    .encode_gauge(&x)?;
            }
        }
    }
    Ok(())
}

/// STAMP paths: loss per direction and one-way delay per direction, per window.
fn directional(
    enc: &mut DescriptorEncoder,
    views: &[PathViews],
    labels: &[Labels],
) -> Result<(), std::fmt::Error> {
    use pathpulse_wire::stamp::Directional;
    let mut m = enc.encode_descriptor(
        "pathpulse_directional_loss_ratio",
        "STAMP: forward = lost before the reflector / attributed probes; reverse = reflected and lost on the way back / probes that reached the reflector.",
        None,
        MetricType::Gauge,
    )?;
    for (vs, pl) in views.iter().zip(labels) {
        for (w, v) in vs {
            let Some(d) = v.dir.as_deref() else { continue };
            let ratios = [
                (
                    "forward",
                    Directional::forward_ratio(d.attributed, d.forward_lost),
                ),
                (
                    "reverse",
                    Directional::reverse_ratio(d.attributed, d.forward_lost, d.reverse_lost),
                ),
            ];
            for (dir, r) in ratios {
                if let Some(r) = r {
                    m.encode_family(&with(pl, &[("direction", dir), ("window", w)]))?
                        .encode_gauge(&r)?;
                }
            }
        }
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_one_way_delay_seconds",
        "STAMP: one-way delay quantile per direction over the window; only samples for which both ends said their clocks were synchronized.",
        None,
        MetricType::Gauge,
    )?;
    for (vs, pl) in views.iter().zip(labels) {
        for (w, v) in vs {
            let Some(d) = v.dir.as_deref() else { continue };
            for (dir, h) in [("forward", &d.owd_forward), ("reverse", &d.owd_reverse)] {
                for (qs, q) in QUANTILES {
                    if let Some(us) = h.quantile(q) {
                        let l = with(pl, &[("direction", dir), ("quantile", qs), ("window", w)]);
                        m.encode_family(&l)?.encode_gauge(&secs(us as f64))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// What one encoding of the store's families holds. Every family's descriptor is encoded
/// whatever the part, so that the protobuf exposition, encoded a chunk of paths at a time
/// (`protobuf.rs`), finds the same families in each encoding.
struct Part<'p, 's> {
    /// Budgeted paths whose series are encoded, with their labels and window views.
    paths: &'p [(&'s PathKey, &'s PathState)],
    labels: &'p [Labels<'s>],
    views: &'p [PathViews],
    /// The families over the whole store, or `None` to encode them empty.
    whole: Option<Whole<'p>>,
}

/// What the families over the whole store read: the budget's counts, the localization,
/// the roll-ups and the agents.
struct Whole<'p> {
    store: &'p Store,
    /// Paths without per-path series at this scrape, and summed over scrapes.
    over: usize,
    dropped: u64,
    /// Finished ([`Rollups::finish`]).
    rollups: &'p Rollups,
}

/// Encode the store's families: `part`'s paths' series and, when asked, the families over
/// the whole store.
fn encode_store(
    enc: &mut DescriptorEncoder,
    part: Part<'_, '_>,
    now: u64,
) -> Result<(), std::fmt::Error> {
    let Part {
        paths,
        labels,
        views,
        whole,
    } = part;
    let mut m = enc.encode_descriptor(
        "pathpulse_paths_over_budget",
        "Paths without per-path series at this scrape because of the cardinality budget (their site-pair and ISP roll-ups still count them).",
        None,
        MetricType::Gauge,
    )?;
    if let Some(w) = &whole {
        m.encode_gauge(&(w.over as i64))?;
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_series_dropped",
        "Paths left out of scrapes by the cardinality budget, summed over scrapes.",
        None,
        MetricType::Counter,
    )?;
    if let Some(w) = &whole {
        m.encode_counter::<NoLabelSet, _, u64>(&w.dropped, None)?;
    }

    for (name, help, get) in PATH_COUNTERS {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (&(_, st), l) in paths.iter().zip(labels) {
            m.encode_family(l)?
                .encode_counter::<NoLabelSet, _, u64>(&get(st), None)?;
        }
    }

    let mut m = enc.encode_descriptor(
        "pathpulse_probes_in_flight",
        "Probes sent and not yet answered or timed out, at the last report.",
        None,
        MetricType::Gauge,
    )?;
    for (&(_, st), l) in paths.iter().zip(labels) {
        m.encode_family(l)?.encode_gauge(&st.in_flight)?;
    }

    let mut m = enc.encode_descriptor(
        "pathpulse_rtt_seconds",
        "Round-trip time of every answered probe.",
        None,
        MetricType::Histogram,
    )?;
    for (&(_, st), l) in paths.iter().zip(labels) {
        let c = &st.cumulative;
        let buckets: Vec<(f64, u64)> = CLASSIC_BOUNDS_US
            .iter()
            .map(|&b| secs(b as f64))
            .chain(std::iter::once(f64::INFINITY))
            .zip(c.buckets.iter().copied())
            .collect();
        let (spans, deltas) = native_spans(&c.native);
        let native = NativeHistogram {
            schema: NATIVE_SCHEMA,
            zero_threshold: 0.0,
            zero_count: c.native_zero,
            negative: NativeHistogramBuckets {
                spans: &[],
                deltas: &[],
            },
            positive: NativeHistogramBuckets {
                spans: &spans,
                deltas: &deltas,
            },
            created: None,
        };
        m.encode_family(l)?
            .encode_histogram_with_native::<NoLabelSet>(
                secs(c.sum_us as f64),
                c.count,
                &buckets,
                None,
                native,
            )?;
    }

    window_quantiles(
        enc,
        "pathpulse_rtt_quantile_seconds",
        "Exact RTT quantile over the window, from the merged HDR histogram (3 significant digits).",
        views,
        labels,
        |v, q| v.hist.quantile(q),
    )?;
    window_gauges(
        enc,
        "pathpulse_loss_ratio",
        "Lost / (received + lost) over the window.",
        views,
        labels,
        |v| loss_ratio(v.lost, v.received),
    )?;
    window_gauges(
        enc,
        "pathpulse_loss_ratio_upper",
        "Upper bound of the 95% Wilson confidence interval of the loss ratio over the window.",
        views,
        labels,
        |v| wilson_interval(v.lost, v.lost + v.received, Z95).map(|(_, hi)| hi),
    )?;

    let mut m = enc.encode_descriptor(
        "pathpulse_jitter_seconds",
        "Interarrival jitter of the RTT, by definition (method).",
        None,
        MetricType::Gauge,
    )?;
    for (&(_, st), pl) in paths.iter().zip(labels) {
        if let Some(j) = st.jitter_us {
            let l = with(pl, &[("method", "rfc3550")]);
            m.encode_family(&l)?.encode_gauge(&secs(j))?;
        }
    }

    window_gauges(
        enc,
        "pathpulse_loss_detectable_ratio",
        "Smallest loss ratio the window's probes detect with 95% confidence (about 3/n).",
        views,
        labels,
        |v| min_detectable_loss(v.lost + v.received, 0.95),
    )?;
    window_quantiles(
        enc,
        "pathpulse_ipdv_seconds",
        "Quantile of |RTT difference| between consecutive replies over the window (RFC 5481 IPDV).",
        views,
        labels,
        |v, q| v.ipdv.quantile(q),
    )?;
    window_quantiles(
        enc,
        "pathpulse_pdv_seconds",
        "Quantile of RTT minus the window's minimum RTT (RFC 5481 PDV).",
        views,
        labels,
        |v, q| Some(v.hist.quantile(q)?.saturating_sub(v.hist.quantile(0.0)?)),
    )?;

    directional(enc, views, labels)?;

    let mut m = enc.encode_descriptor(
        "pathpulse_mos",
        "E-model MOS estimate (1..4.5) from half the window's median RTT, RFC 3550 jitter and window loss.",
        None,
        MetricType::Gauge,
    )?;
    for ((vs, (_, st)), pl) in views.iter().zip(paths).zip(labels) {
        for (w, v) in vs {
            let (Some(p50), Some(loss)) = (v.hist.quantile(0.5), loss_ratio(v.lost, v.received))
            else {
                continue;
            };
            let jitter_ms = st.jitter_us.unwrap_or(0.0) / 1000.0;
            let score = mos(p50 as f64 / 2000.0, jitter_ms, loss);
            m.encode_family(&with(pl, &[("window", w)]))?
                .encode_gauge(&score)?;
        }
    }

    encode_hops(enc, paths, now)?;

    // The families over the whole store; empty ones (no agents, nothing localized, no
    // groups) when `whole` is `None`.
    let (empty_store, empty_rollups) = (Store::default(), Rollups::default());
    let (store, rollups) = whole
        .as_ref()
        .map_or((&empty_store, &empty_rollups), |w| (w.store, w.rollups));
    let mut m = enc.encode_descriptor(
        "pathpulse_fault_verdict",
        "1 per current localization verdict: where the packet loss of the last minute is (scope lan, site_uplink, isp, transit, target; suspect: the agent, site, ISP, router or target).",
        None,
        MetricType::Gauge,
    )?;
    if whole.is_some() {
        for v in localize(&observations(store, now), &Thresholds::default()) {
            let labels = [
                ("scope", v.scope.as_str()),
                ("suspect", v.suspect.as_str()),
                ("confidence", v.confidence.as_str()),
            ];
            m.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
    }
    encode_rollups(enc, rollups)?;

    let mut m = enc.encode_descriptor(
        "pathpulse_agent_up",
        "1 while the agent's reports arrive.",
        None,
        MetricType::Gauge,
    )?;
    for (a, st) in &store.agents {
        let up = i64::from(store.agent_up(st, now));
        m.encode_family(&[("agent", &**a)])?.encode_gauge(&up)?;
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_agent_last_report_timestamp_seconds",
        "When the agent's last report was applied (Unix time).",
        None,
        MetricType::Gauge,
    )?;
    for (a, st) in &store.agents {
        if let Some(t) = st.last_report_ms {
            m.encode_family(&[("agent", &**a)])?
                .encode_gauge(&(t as f64 / 1000.0))?;
        }
    }
    agent_counters(
        enc,
        "pathpulse_stray_replies",
        "Replies dropped because they answered no probe of this agent, by reason.",
        "reason",
        store,
        |h| {
            vec![
                ("not_ours", h.stray_not_ours),
                ("wrong_source", h.stray_wrong_source),
                ("unknown_probe", h.stray_unknown_probe),
            ]
        },
    )?;
    agent_counters(
        enc,
        "pathpulse_socket_errors",
        "Probe socket errors of the agent, by operation.",
        "op",
        store,
        |h| vec![("send", h.send_errors), ("recv", h.recv_errors)],
    )?;
    agent_counters(
        enc,
        "pathpulse_rtt_samples",
        "RTT samples by the clock they came from: kernel timestamps, or the monotonic clock around the syscalls when a stamp was missing.",
        "clock",
        store,
        |h| {
            vec![
                ("kernel", h.rtt_kernel_clock),
                ("monotonic", h.rtt_monotonic_clock),
            ]
        },
    )?;
    let mut m = enc.encode_descriptor(
        "pathpulse_stamp_reflector_reflected",
        "STAMP test packets the agent's reflector answered.",
        None,
        MetricType::Counter,
    )?;
    for (a, st) in &store.agents {
        m.encode_family(&[("agent", &**a)])?
            .encode_counter::<NoLabelSet, _, u64>(&st.health.stamp_reflected, None)?;
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_stamp_reflector_dropped",
        "Datagrams the agent's STAMP reflector dropped without answering, by reason.",
        None,
        MetricType::Counter,
    )?;
    for (a, st) in &store.agents {
        let reasons = pathpulse_wire::stamp::ReflectorCounts::default().dropped();
        for ((reason, _), v) in reasons.iter().zip(st.health.stamp_dropped) {
            m.encode_family(&[("agent", &**a), ("reason", reason)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_scheduling_lag_seconds",
        "Largest delay of a probe behind its schedule in the agent's last report interval.",
        None,
        MetricType::Gauge,
    )?;
    for (a, st) in &store.agents {
        m.encode_family(&[("agent", &**a)])?
            .encode_gauge(&secs(f64::from(st.last_scheduling_lag_us)))?;
    }
    Ok(())
}

impl Collector for StoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Within `encode_protobuf`: a chunk of paths at a time.
        if let Some(mut scrape) = Scrape::take() {
            let r = self.encode_in_chunks(&mut enc, &mut scrape);
            scrape.resume();
            return r;
        }
        let now = (self.clock)();
        let (mut rollups, split) = self.rollups_in_chunks(now);
        // A poisoned lock means a panic elsewhere; still export what is there.
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        // The cardinality budget: per-path series for the first paths only (in key order,
        // so the set is stable); roll-ups below cover all of them.
        let paths: Vec<(&PathKey, &PathState)> = store
            .paths
            .iter()
            .take(store.path_budget.unwrap_or(usize::MAX))
            .map(|(k, st)| (k, &**st))
            .collect();
        let over = store.paths.len() - paths.len();
        let dropped = self.count_dropped(over);

        // Each budgeted path's labels, built once for all its series.
        let sites = store.dst_sites();
        let labels: Vec<Labels> = paths
            .iter()
            .map(|(k, _)| path_labels(k, &store, &sites))
            .collect();

        // Windowed views, computed once per path and window. Only the budgeted paths'
        // (the first ones) are kept; the roll-ups need every path's, and those not folded
        // in already (`split`) are folded in as they are computed (holding all of them
        // took about 3 KB a path at every scrape, 320 MB at 100,000 paths).
        let mut views: Vec<PathViews> = Vec::with_capacity(paths.len());
        for (i, (k, st)) in store.paths.iter().enumerate() {
            let (keep, fold) = (i < paths.len(), split.covers(k));
            if !keep && !fold {
                break;
            }
            let groups = groups_of(&store, &sites, k);
            if !keep && groups == (None, None) {
                continue;
            }
            let vs = path_views(&st.windows, now);
            if fold {
                rollups.add(groups, &vs);
            }
            if keep {
                views.push(vs.map(|(w, v)| (w, slim(v))));
            }
        }
        rollups.finish();
        let whole = Whole {
            store: &store,
            over,
            dropped,
            rollups: &rollups,
        };
        let part = Part {
            paths: &paths,
            labels: &labels,
            views: &views,
            whole: Some(whole),
        };
        encode_store(&mut enc, part, now)
    }
}

/// One chunk of budgeted paths copied out of the store, to be encoded with the lock free
/// (the protobuf exposition).
#[derive(Debug)]
struct PathChunk {
    paths: Vec<(PathKey, PathState)>,
    labels: Vec<Labels<'static>>,
    views: Vec<PathViews>,
    now: u64,
}

impl Collector for PathChunk {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let paths: Vec<(&PathKey, &PathState)> = self.paths.iter().map(|(k, st)| (k, st)).collect();
        let part = Part {
            paths: &paths,
            labels: &self.labels,
            views: &self.views,
            whole: None,
        };
        encode_store(&mut enc, part, self.now)
    }
}

impl StoreCollector {
    /// Add this scrape's paths over the budget to the running sum; the sum.
    fn count_dropped(&self, over: usize) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.dropped.fetch_add(over as u64, Relaxed) + over as u64
    }

    /// The store's families for the protobuf exposition: the budgeted paths'
    /// [`Scrape::chunk`] at a time, each chunk copied under the lock and encoded into
    /// `scrape` with it free; then the families over the whole store into `enc`, with no
    /// path's series. Paths that come or go in between are treated as by the roll-ups'
    /// chunks ([`StoreCollector::fold_from`]).
    fn encode_in_chunks(
        &self,
        enc: &mut DescriptorEncoder,
        scrape: &mut Scrape,
    ) -> Result<(), std::fmt::Error> {
        use std::ops::Bound::{Excluded, Unbounded};
        type Owned = (Option<(String, String)>, Option<String>);
        let now = (self.clock)();
        let mut rollups = Rollups::default();
        let (mut last, mut emitted) = (None::<PathKey>, 0usize);
        loop {
            let (mut chunk, groups) = {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                let budget = store.path_budget.unwrap_or(usize::MAX);
                let n = scrape.chunk.min(budget.saturating_sub(emitted));
                let sites = store.dst_sites();
                let start = last.as_ref().map_or(Unbounded, Excluded);
                let mut chunk = PathChunk {
                    paths: Vec::with_capacity(n),
                    labels: Vec::with_capacity(n),
                    views: Vec::with_capacity(n),
                    now,
                };
                let mut groups: Vec<Owned> = Vec::with_capacity(n);
                for (k, st) in store.paths.range((start, Unbounded)).take(n) {
                    let labels = path_labels(k, &store, &sites)
                        .into_iter()
                        .map(|(name, v)| (name, Cow::Owned(v.into_owned())))
                        .collect();
                    let (pair, isp) = groups_of(&store, &sites, k);
                    let pair = pair.map(|(a, b)| (a.to_string(), b.to_string()));
                    groups.push((pair, isp.map(str::to_string)));
                    chunk.labels.push(labels);
                    chunk.paths.push((k.clone(), (**st).clone()));
                }
                (chunk, groups)
            };
            let Some((k, _)) = chunk.paths.last() else {
                break;
            };
            last = Some(k.clone());
            emitted += chunk.paths.len();
            for ((_, st), (pair, isp)) in chunk.paths.iter().zip(&groups) {
                let vs = path_views(&st.windows, now);
                let g = (
                    pair.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                    isp.as_deref(),
                );
                rollups.add(g, &vs);
                chunk.views.push(vs.map(|(w, v)| (w, slim(v))));
            }
            scrape.add(Box::new(chunk))?;
        }
        // The paths over the budget, into the roll-ups only.
        let mut rollups = self.fold_from(rollups, last, now);
        rollups.finish();
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let over = store.paths.len().saturating_sub(emitted);
        let whole = Whole {
            store: &store,
            over,
            dropped: self.count_dropped(over),
            rollups: &rollups,
        };
        let part = Part {
            paths: &[],
            labels: &[],
            views: &[],
            whole: Some(whole),
        };
        encode_store(enc, part, now)
    }
}

/// Aggregator-only self metrics.
#[derive(Debug)]
struct IngestCollector {
    store: SharedStore,
}

const REFUSE_REASONS: [RefuseReason; 11] = RefuseReason::ALL;

impl Collector for IngestCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = enc.encode_descriptor(
            "pathpulse_ingest_refused",
            "Connections, frames or reports the aggregator refused, by reason.",
            None,
            MetricType::Counter,
        )?;
        for r in REFUSE_REASONS
            .map(RefuseReason::as_str)
            .into_iter()
            .chain(LOCAL_REFUSALS)
        {
            let v = store.refused.get(r).copied().unwrap_or(0);
            m.encode_family(&[("reason", r)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_ingest_latency_seconds",
            "Time from a report read off its stream to the report applied to the store (stage=applied) and to its acknowledgement, after the durable commit (stage=acked).",
            None,
            MetricType::Histogram,
        )?;
        for (stage, h) in [
            ("applied", &store.ingest_applied),
            ("acked", &store.ingest_acked),
        ] {
            let buckets: Vec<(f64, u64)> = INGEST_LATENCY_BOUNDS_US
                .iter()
                .map(|&b| secs(b as f64))
                .chain(std::iter::once(f64::INFINITY))
                .zip(h.buckets.iter().copied())
                .collect();
            m.encode_family(&[("stage", stage)])?
                .encode_histogram::<NoLabelSet>(secs(h.sum_us as f64), h.count, &buckets, None)?;
        }
        enc.encode_descriptor(
            "pathpulse_enrollments",
            "Certificates issued in exchange for an enrollment token.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&store.enrolled, None)?;
        enc.encode_descriptor(
            "pathpulse_certificates_renewed",
            "Agent certificates renewed before expiry.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&store.renewed, None)?;
        let mut m = enc.encode_descriptor(
            "pathpulse_spool_reports",
            "Reports in the agent's spool for this aggregator at its last report (not yet acknowledged).",
            None,
            MetricType::Gauge,
        )?;
        for (a, st) in &store.agents {
            m.encode_family(&[("agent", &**a)])?
                .encode_gauge(&(st.spool_reports as i64))?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_spool_dropped",
            "Reports the agent dropped for this aggregator (spool bound reached), as it reported them.",
            None,
            MetricType::Counter,
        )?;
        for (a, st) in &store.agents {
            m.encode_family(&[("agent", &**a)])?
                .encode_counter::<NoLabelSet, _, u64>(&st.spool_dropped, None)?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_confirm_bursts",
            "Confirmation bursts the agent sent after a suspected or lost probe (evidence for fast loss alerts; their probes are in no path counter).",
            None,
            MetricType::Counter,
        )?;
        for (a, st) in &store.agents {
            m.encode_family(&[("agent", &**a)])?
                .encode_counter::<NoLabelSet, _, u64>(&st.confirm_bursts, None)?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_confirm_probes",
            "Probes of the agent's confirmation bursts, by result (received, lost).",
            None,
            MetricType::Counter,
        )?;
        for (a, st) in &store.agents {
            for (result, n) in [("received", st.confirm_received), ("lost", st.confirm_lost)] {
                m.encode_family(&[("agent", &**a), ("result", result)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        Ok(())
    }
}

/// One alert receiver's counters, for the alert self-metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverCounts {
    pub receiver: String,
    pub sent: u64,
    pub failed_attempts: u64,
    pub dropped: u64,
    pub queued: u64,
}

/// What the aggregator's alert engine exposes, read on every scrape.
pub trait AlertSource: Send + Sync + std::fmt::Debug + 'static {
    /// `(alertname, severity, alerts firing)` for every rule, zeros included.
    fn firing(&self) -> Vec<(String, String, u64)>;
    fn receivers(&self) -> Vec<ReceiverCounts>;
    /// Reports not evaluated because the engine fell behind.
    fn skipped_reports(&self) -> u64;
}

#[derive(Debug)]
struct AlertCollector {
    source: Arc<dyn AlertSource>,
}

impl Collector for AlertCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "pathpulse_alerts_firing",
            "Alerts firing now, by rule (alertname) and severity.",
            None,
            MetricType::Gauge,
        )?;
        for (name, severity, n) in self.source.firing() {
            m.encode_family(&[
                ("alertname", name.as_str()),
                ("severity", severity.as_str()),
            ])?
            .encode_gauge(&(n as i64))?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_alert_reports_skipped",
            "Reports the alert engine did not evaluate because its queue was full (ingest never waits for it).",
            None,
            MetricType::Counter,
        )?;
        let none: [(&str, &str); 0] = [];
        m.encode_family(&none)?
            .encode_counter::<NoLabelSet, _, u64>(&self.source.skipped_reports(), None)?;
        let receivers = self.source.receivers();
        let mut m = enc.encode_descriptor(
            "pathpulse_alert_notifications",
            "Alert notifications per receiver: delivered (sent) or given up (dropped: retries exhausted, refused, or pushed out of a full queue).",
            None,
            MetricType::Counter,
        )?;
        for r in &receivers {
            for (result, v) in [("sent", r.sent), ("dropped", r.dropped)] {
                m.encode_family(&[("receiver", r.receiver.as_str()), ("result", result)])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_alert_send_failures",
            "Failed attempts to deliver alert notifications (each retry counts), per receiver.",
            None,
            MetricType::Counter,
        )?;
        for r in &receivers {
            m.encode_family(&[("receiver", r.receiver.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&r.failed_attempts, None)?;
        }
        let mut m = enc.encode_descriptor(
            "pathpulse_alert_queue_length",
            "Alert notifications waiting for delivery, per receiver.",
            None,
            MetricType::Gauge,
        )?;
        for r in &receivers {
            m.encode_family(&[("receiver", r.receiver.as_str())])?
                .encode_gauge(&(r.queued as i64))?;
        }
        Ok(())
    }
}

/// Add the alert engine's metrics to an aggregator's registry.
pub fn register_alerts(reg: &mut Registry, source: Arc<dyn AlertSource>) {
    reg.register_collector(Box::new(AlertCollector { source }));
}

/// Which self metrics a registry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Aggregator,
}

/// A registry exposing the store.
pub fn registry(store: SharedStore, role: Role, clock: Clock) -> Registry {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(StoreCollector {
        store: store.clone(),
        clock,
        dropped: Default::default(),
    }));
    if role == Role::Aggregator {
        reg.register_collector(Box::new(IngestCollector { store }));
    }
    reg
}

/// Content type of the classic Prometheus text format (what `curl` and `promtool` get).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Families that are summaries in the classic text format: exact quantiles over sliding
/// windows, which is what a Prometheus summary is. (OpenMetrics output types them as
/// gauges: prometheus-client cannot encode summaries.)
/// Every family with a `quantile` label must be one: `promtool check metrics` refuses the
/// label on any other type.
const SUMMARY_FAMILIES: [&str; 7] = [
    "pathpulse_rtt_quantile_seconds",
    "pathpulse_ipdv_seconds",
    "pathpulse_pdv_seconds",
    "pathpulse_one_way_delay_seconds",
    "pathpulse_hop_rtt_quantile_seconds",
    "pathpulse_site_pair_rtt_quantile_seconds",
    "pathpulse_isp_rtt_quantile_seconds",
];

/// Convert the OpenMetrics text of [`encode_text`] into the classic Prometheus text
/// format 0.0.4: counter families are named with their `_total` suffix in HELP and TYPE,
/// quantile families are typed `summary`, and `# UNIT` / `# EOF` are dropped.
pub fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut classic = Classic::default();
    for line in om.lines() {
        classic.line(line, &mut out);
    }
    out
}

/// The conversion of [`openmetrics_to_prometheus`] one line at a time, so a streamed
/// exposition is converted as it is written (`stream.rs`).
#[derive(Debug, Default)]
pub struct Classic {
    /// The help of the family whose `# TYPE` line comes next.
    pending_help: Option<String>,
}

impl Classic {
    /// Append the classic form of one OpenMetrics `line` (without its `\n`) to `out`.
    pub fn line(&mut self, line: &str, out: &mut String) {
        use std::fmt::Write;
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (_, help) = rest.split_once(' ').unwrap_or((rest, ""));
            self.pending_help = Some(help.to_string());
            return;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, ty) = match ty {
                "counter" => ("_total", "counter"),
                _ if SUMMARY_FAMILIES.contains(&name) => ("", "summary"),
                "unknown" => ("", "untyped"),
                t => ("", t),
            };
            if let Some(help) = self.pending_help.take() {
                let _ = writeln!(out, "# HELP {name}{suffix} {help}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {ty}");
            return;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            return;
        }
        out.push_str(line);
        out.push('\n');
    }
}

/// Encode the registry in the OpenMetrics text format, whole (tests, the bench, tools);
/// `/metrics` streams it instead (`stream.rs`).
pub fn encode_text(reg: &Registry) -> String {
    // Sized from the last render: grown by doubling, a 73 MB exposition (10,000 paths) held
    // a 64 MB and a 128 MB buffer at once while it was copied.
    static LAST_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let last = LAST_LEN.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = String::with_capacity(last + last / 16);
    // Encoding into a String cannot fail except through a collector bug; keep what we have.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, reg) {
        out.push_str(&format!("# encoding error: {e}\n# EOF\n"));
    }
    LAST_LEN.store(out.len(), std::sync::atomic::Ordering::Relaxed);
    out
}

/// A counter family per agent with one more label (`label`), values from the agent's
/// health totals.
fn agent_counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    store: &Store,
    values: impl Fn(&HealthTotals) -> Vec<(&'static str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (a, st) in &store.agents {
        for (v, n) in values(&st.health) {
            m.encode_family(&[("agent", &**a), (label, v)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    Ok(())
}

/// Sparse native buckets as Prometheus wants them: spans (offset from the end of the
/// previous span, or the first index; length) and count deltas.
fn native_spans(buckets: &crate::store::NativeBuckets) -> (Vec<(i32, u32)>, Vec<i64>) {
    let (mut spans, mut deltas): (Vec<(i32, u32)>, Vec<i64>) = (Vec::new(), Vec::new());
    let (mut next, mut prev_count) = (None::<i32>, 0i64);
    for (i, n) in buckets.iter() {
        match next {
            Some(e) if e == i => {
                if let Some(last) = spans.last_mut() {
                    last.1 += 1;
                }
            }
            Some(e) => spans.push((i - e, 1)),
            None => spans.push((i, 1)),
        }
        next = Some(i + 1);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        deltas.push(n - prev_count);
        prev_count = n;
    }
    (spans, deltas)
}

/// Content type of the protobuf exposition (`protobuf.rs`).
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Windows merged over a group of paths: the histograms merged (not averaged), the
/// counts summed. Buckets are gathered unsorted and sorted only when they pile up:
/// merging each path's histogram into the group's in turn cost the size of the group's
/// per path, a third of a 100,000-path scrape.
#[derive(Default)]
struct Merged {
    paths: u64,
    /// Per window (in [`WINDOWS`] order): RTT and IPDV buckets, received, lost.
    sums: [(Gather, Gather, u64, u64); 3],
    /// The merged views, once [`Merged::finish`] ran.
    views: Vec<(&'static str, WindowView)>,
}

/// Histogram buckets gathered from many histograms.
#[derive(Default)]
struct Gather {
    folded: pathpulse_wire::SparseHist,
    pending: Vec<(u32, u32)>,
}

impl Gather {
    fn add(&mut self, h: &pathpulse_wire::SparseHist) {
        self.pending.extend_from_slice(h.buckets());
        if self.pending.len() > 4_096.max(2 * self.folded.buckets().len()) {
            self.fold();
        }
    }

    fn fold(&mut self) {
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(self.folded.buckets());
            self.folded = pathpulse_wire::SparseHist::from_pairs(std::mem::take(&mut self.pending));
        }
    }

    fn finish(&mut self) -> pathpulse_wire::SparseHist {
        self.fold();
        std::mem::take(&mut self.folded)
    }
}

impl Merged {
    fn add(&mut self, path: &[(&'static str, WindowView); 3]) {
        self.paths += 1;
        for ((_, p), (rtt, ipdv, received, lost)) in path.iter().zip(self.sums.iter_mut()) {
            rtt.add(&p.hist);
            ipdv.add(&p.ipdv);
            *received += p.received;
            *lost += p.lost;
        }
    }

    fn finish(&mut self) {
        self.views = WINDOWS
            .iter()
            .zip(self.sums.iter_mut())
            .map(|((w, _), (rtt, ipdv, received, lost))| {
                let v = WindowView {
                    hist: rtt.finish(),
                    ipdv: ipdv.finish(),
                    received: *received,
                    lost: *lost,
                    dir: None,
                };
                (*w, v)
            })
            .collect();
    }
}

/// The groups of the roll-ups, each with its paths' merged views: per site pair
/// (`src_site`, `dst_site`; `external` for destinations that are not agents) and per ISP
/// of the source agent. Owned names: a scrape fills them over several holds of the lock.
#[derive(Default)]
struct Rollups {
    pairs: BTreeMap<String, BTreeMap<String, Merged>>,
    isps: BTreeMap<String, Merged>,
}

/// A path's site pair and ISP, where known.
type Groups<'a> = (Option<(&'a str, &'a str)>, Option<&'a str>);

fn groups_of<'a>(store: &'a Store, sites: &DstSites<'a>, k: &'a PathKey) -> Groups<'a> {
    let agent = store.agents.get(&*k.src);
    let pair = agent.and_then(|a| known(a.site.as_deref())).map(|site| {
        let dst = known(sites.site_of(&k.dst)).unwrap_or("external");
        (site, dst)
    });
    (pair, agent.and_then(|a| known(a.isp.as_deref())))
}

fn group<'a, 'm, K: Ord + std::borrow::Borrow<str> + From<&'m str>, V: Default>(
    map: &'a mut BTreeMap<K, V>,
    name: &'m str,
) -> &'a mut V {
    if !map.contains_key(name) {
        map.insert(K::from(name), V::default());
    }
    map.get_mut(name).expect("inserted above")
}

impl Rollups {
    /// Merge each group's gathered views, once every path is in.
    fn finish(&mut self) {
        self.isps.values_mut().for_each(Merged::finish);
        for dsts in self.pairs.values_mut() {
            dsts.values_mut().for_each(Merged::finish);
        }
    }

    fn add(&mut self, (pair, isp): Groups<'_>, views: &[(&'static str, WindowView); 3]) {
        if let Some((src, dst)) = pair {
            group(group(&mut self.pairs, src), dst).add(views);
        }
        if let Some(isp) = isp {
            group(&mut self.isps, isp).add(views);
        }
    }
}

/// Which paths a scrape's main hold of the lock folds into the roll-ups; the ones after
/// it were folded a chunk at a time before ([`StoreCollector::rollups_in_chunks`]).
enum Split {
    /// All paths (everything fits the budget).
    All,
    /// Those up to and including this key (the last budgeted path when the chunks began),
    /// or none.
    UpTo(Option<PathKey>),
}

impl Split {
    fn covers(&self, k: &PathKey) -> bool {
        match self {
            Split::All => true,
            Split::UpTo(b) => b.as_ref().is_some_and(|b| k <= b),
        }
    }
}

/// Paths whose views are folded into the roll-ups per hold of the store's lock outside
/// the budget: a few milliseconds each, so ingest waits that long at most, not the whole
/// scrape (a second at 100,000 paths).
const ROLLUP_CHUNK: usize = 1_000;

impl StoreCollector {
    /// Fold the paths beyond the budget into their roll-ups, [`ROLLUP_CHUNK`] at a time,
    /// the lock released in between. A path that arrives in between may be missed by this
    /// scrape, as one that arrives after it is.
    fn rollups_in_chunks(&self, now: u64) -> (Rollups, Split) {
        let (after, split) = {
            let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let budget = store.path_budget.unwrap_or(usize::MAX);
            if budget >= store.paths.len() {
                return (Rollups::default(), Split::All);
            }
            match budget.checked_sub(1) {
                // After the last budgeted path.
                Some(last) => match store.paths.keys().nth(last) {
                    Some(k) => (Some(k.clone()), Split::UpTo(Some(k.clone()))),
                    None => return (Rollups::default(), Split::All),
                },
                // No budgeted path: from the first.
                None => (None, Split::UpTo(None)),
            }
        };
        (self.fold_from(Rollups::default(), after, now), split)
    }

    /// Fold the paths after `after` (from the first when `None`) to the end, a chunk at a
    /// time: under the lock only a copy of each path's slots and its groups' names is taken
    /// (about a millisecond a chunk); the views are merged and folded with the lock free.
    /// Merging them under the lock held it for 50–90 ms a chunk and nearly the whole scrape
    /// (seconds at 100,000 paths with IPDV), and ingest, waiting on the two async workers,
    /// starved until QUIC connections timed out.
    fn fold_from(&self, mut r: Rollups, mut after: Option<PathKey>, now: u64) -> Rollups {
        use std::ops::Bound::{Excluded, Unbounded};
        type Copied = ((Option<(String, String)>, Option<String>), PathWindows);
        loop {
            let chunk: Vec<Copied> = {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                let sites = store.dst_sites();
                let start = after.as_ref().map_or(Unbounded, Excluded);
                let mut chunk = Vec::with_capacity(ROLLUP_CHUNK);
                let mut last = None;
                for (k, st) in store.paths.range((start, Unbounded)).take(ROLLUP_CHUNK) {
                    last = Some(k);
                    let (pair, isp) = groups_of(&store, &sites, k);
                    if pair.is_some() || isp.is_some() {
                        let pair = pair.map(|(a, b)| (a.to_string(), b.to_string()));
                        chunk.push(((pair, isp.map(str::to_string)), st.windows.clone()));
                    }
                }
                match last {
                    Some(k) => after = Some(k.clone()),
                    None => return r,
                }
                chunk
            };
            for ((pair, isp), windows) in &chunk {
                let groups = (
                    pair.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                    isp.as_deref(),
                );
                r.add(groups, &path_views(windows, now));
            }
        }
    }
}

/// A window view reduced to what the per-path series read of it: the buckets of the
/// exported quantiles and the minimum (a scrape holds the views of every budgeted path at
/// once: all of a standalone agent's 10,000, about 12 MB whole).
fn slim(v: WindowView) -> WindowView {
    let qs: [f64; QUANTILES.len() + 1] =
        std::array::from_fn(|i| i.checked_sub(1).map_or(0.0, |i| QUANTILES[i].1));
    WindowView {
        hist: v.hist.only_quantiles(&qs),
        ipdv: v.ipdv.only_quantiles(&qs),
        ..v
    }
}

/// A path's views of [`WINDOWS`], in one pass over its slots.
fn path_views(windows: &PathWindows, now: u64) -> [(&'static str, WindowView); 3] {
    let mut vs = windows.views(WINDOWS.map(|(_, ms)| ms), now).into_iter();
    WINDOWS.map(|(w, _)| (w, vs.next().unwrap_or_default()))
}

/// Roll-ups that are always exported, whatever the budget, from the merged window
/// histograms of every path in the group ([`Rollups::finish`]ed).
fn encode_rollups(enc: &mut DescriptorEncoder, r: &Rollups) -> Result<(), std::fmt::Error> {
    type Group<'a> = (Vec<(&'static str, &'a str)>, &'a Merged);
    let groups: [(&str, Vec<Group>); 2] = [
        (
            "site_pair",
            r.pairs
                .iter()
                .flat_map(|(s, dsts)| {
                    dsts.iter()
                        .map(move |(d, m)| (vec![("src_site", &**s), ("dst_site", &**d)], m))
                })
                .collect(),
        ),
        (
            "isp",
            r.isps
                .iter()
                .map(|(i, m)| (vec![("isp", &**i)], m))
                .collect(),
        ),
    ];
    for (kind, list) in &groups {
        let name = format!("pathpulse_{kind}_rtt_quantile_seconds");
        let mut m = enc.encode_descriptor(
            &name,
            "Exact RTT quantile over the window of every path of the group, from their merged HDR histograms.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, merged) in list {
            for (w, v) in &merged.views {
                for (qs, q) in QUANTILES {
                    if let Some(us) = v.hist.quantile(q) {
                        let mut l = labels.clone();
                        l.extend([("quantile", qs), ("window", *w)]);
                        m.encode_family(&l)?.encode_gauge(&secs(us as f64))?;
                    }
                }
            }
        }
        let name = format!("pathpulse_{kind}_loss_ratio");
        let mut m = enc.encode_descriptor(
            &name,
            "Lost / (received + lost) over the window, summed over every path of the group.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, merged) in list {
            for (w, v) in &merged.views {
                if let Some(x) = loss_ratio(v.lost, v.received) {
                    let mut l = labels.clone();
                    l.push(("window", *w));
                    m.encode_family(&l)?.encode_gauge(&x)?;
                }
            }
        }
        let name = format!("pathpulse_{kind}_paths");
        let mut m = enc.encode_descriptor(&name, "Paths in the group.", None, MetricType::Gauge)?;
        for (labels, merged) in list {
            m.encode_family(labels)?
                .encode_gauge(&(merged.paths as i64))?;
        }
    }
    Ok(())
}

/// Labels of one hop: `src`, `anchor` (the target as written), `hop` (TTL), `hop_addr`,
/// `role`.
fn hop_labels<'a>(k: &'a PathKey, ttl: &'a str, h: &'a HopState) -> Labels<'a> {
    vec![
        ("src", Cow::Borrowed(&*k.src)),
        ("anchor", Cow::Borrowed(&*k.dst)),
        ("hop", Cow::Borrowed(ttl)),
        ("hop_addr", Cow::Borrowed(&*h.addr)),
        ("role", Cow::Borrowed(h.role.as_str())),
    ]
}

/// The per-hop view toward targets (hop discovery): counters, RTT quantiles and loss per
/// window, ICMP rate limiting, route changes (the paths' own; the fault verdicts that
/// follow them are over the whole store).
fn encode_hops(
    enc: &mut DescriptorEncoder,
    paths: &[(&PathKey, &PathState)],
    now: u64,
) -> Result<(), std::fmt::Error> {
    struct Hop<'a> {
        key: &'a PathKey,
        ttl: String,
        view: HopView<'a>,
    }
    let hops: Vec<Hop> = paths
        .iter()
        .flat_map(|&(k, st)| {
            hop_views(st, now).into_iter().map(move |view| Hop {
                key: k,
                ttl: view.ttl.to_string(),
                view,
            })
        })
        .collect();
    for (name, help, get) in [
        (
            "pathpulse_hop_probes_sent",
            "TTL-limited probes sent toward the anchor that expire at this hop.",
            (|h: &HopState| h.counters.sent) as fn(&HopState) -> u64,
        ),
        (
            "pathpulse_hop_probes_lost",
            "TTL-limited probes this hop did not answer within the timeout.",
            |h: &HopState| h.counters.lost,
        ),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for h in &hops {
            m.encode_family(&hop_labels(h.key, &h.ttl, h.view.state))?
                .encode_counter::<NoLabelSet, _, u64>(&get(h.view.state), None)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_hop_rtt_quantile_seconds",
        "Exact RTT quantile of this hop's answers over the window (HDR, 3 significant digits).",
        None,
        MetricType::Gauge,
    )?;
    for h in &hops {
        let hl = hop_labels(h.key, &h.ttl, h.view.state);
        for (w, v) in &h.view.views {
            for (qs, q) in QUANTILES {
                if let Some(us) = v.hist.quantile(q) {
                    let l = with(&hl, &[("quantile", qs), ("window", w)]);
                    m.encode_family(&l)?.encode_gauge(&secs(us as f64))?;
                }
            }
        }
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_hop_loss_ratio",
        "Share of this hop's TTL-limited probes without an answer over the window (see pathpulse_hop_icmp_ratelimited before calling it path loss).",
        None,
        MetricType::Gauge,
    )?;
    for h in &hops {
        let hl = hop_labels(h.key, &h.ttl, h.view.state);
        for (w, v) in &h.view.views {
            if let Some(x) = loss_ratio(v.lost, v.received) {
                let l = with(&hl, &[("window", w)]);
                m.encode_family(&l)?.encode_gauge(&x)?;
            }
        }
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_hop_icmp_ratelimited",
        "1 when this hop's loss over 1 min does not continue at later hops or the target: the router rate-limits its ICMP answers, the path is not losing packets.",
        None,
        MetricType::Gauge,
    )?;
    for h in &hops {
        if let Some(limited) = h.view.ratelimited {
            m.encode_family(&hop_labels(h.key, &h.ttl, h.view.state))?
                .encode_gauge(&i64::from(limited))?;
        }
    }
    let mut m = enc.encode_descriptor(
        "pathpulse_path_changes",
        "Times the hop list toward the anchor changed (a different router at a known TTL).",
        None,
        MetricType::Counter,
    )?;
    for &(k, st) in paths.iter().filter(|(_, st)| !st.hops.is_empty()) {
        m.encode_family(&[("src", &*k.src), ("anchor", &*k.dst)])?
            .encode_counter::<NoLabelSet, _, u64>(&st.route_changes, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn gathered_buckets_equal_one_merge_of_everything() {
        // Enough histograms to fold many times on the way.
        let mut g = Gather::default();
        let mut all = Vec::new();
        let mut x = 7u64;
        for i in 0..3_000u64 {
            let mut h = pathpulse_wire::SparseHist::new();
            for _ in 0..(i % 9) {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                h.record(1 + (x >> 33) % (1_000 + i * 50));
            }
            g.add(&h);
            all.push(h);
        }
        let got = g.finish();
        assert_eq!(got, pathpulse_wire::SparseHist::merged(&all));
        assert!(got.buckets().len() > 4_096, "folded more than once");
    }

    #[test]
    fn native_spans_and_deltas() {
        let b: crate::store::NativeBuckets =
            [(-53, 2), (-52, 5), (-50, 1), (3, 4)].into_iter().collect();
        let (spans, deltas) = super::native_spans(&b);
        assert_eq!(spans, vec![(-53, 2), (1, 1), (52, 1)]);
        assert_eq!(deltas, vec![2, 3, -4, 3]);
        assert_eq!(super::native_spans(&Default::default()), (vec![], vec![]));
    }

    use super::*;
    use pathpulse_wire::{AgentHealth, PathReport, Report};

    fn clock() -> u64 {
        1_010_000
    }

    /// 200 agents in 10 sites (2 ISPs) in full mesh: 39,800 paths, a budget of 5,000.
    #[test]
    fn the_budget_caps_per_path_series_and_roll_ups_merge_histograms() {
        let store: SharedStore = Arc::new(Mutex::new(Store::new(15_000)));
        let agents: Vec<String> = (0..200).map(|i| format!("a{i:03}")).collect();
        let site = |i: usize| format!("site-{}", i % 10);
        let mut expect_pair = pathpulse_wire::SparseHist::default();
        let (mut pair_lost, mut pair_n) = (0u64, 0u64);
        {
            let mut st = store.lock().expect("lock");
            st.path_budget = Some(5_000);
            for (i, a) in agents.iter().enumerate() {
                st.hello(a, Some(site(i)), Some(format!("isp-{}", i % 2)), None);
            }
            for (i, a) in agents.iter().enumerate() {
                let paths = agents
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, b)| {
                        let mut p = PathReport {
                            dst: b.clone(),
                            sent: 4,
                            lost: u32::from((i + j) % 7 == 0),
                            ..Default::default()
                        };
                        for k in 0..(4 - p.lost) {
                            let v = 1_000 + 37 * ((i * 31 + j * 17 + k as usize) % 400) as u64;
                            p.rtt.record(v);
                            p.rtt_sum_us += v;
                            p.received += 1;
                        }
                        if site(i) == "site-0" && site(j) == "site-1" {
                            expect_pair.merge(&p.rtt);
                            pair_lost += u64::from(p.lost);
                            pair_n += u64::from(p.lost + p.received);
                        }
                        p
                    })
                    .collect();
                let r = Report {
                    seq: 1,
                    agent: a.clone(),
                    interval_start_ms: 1_000_000,
                    interval_ms: 5000,
                    paths,
                    health: AgentHealth::default(),
                };
                st.apply(&r, 1_005_000);
            }
            assert_eq!(st.paths.len(), 39_800);
        }
        let reg = registry(store.clone(), Role::Aggregator, clock);
        let text = encode_text(&reg);
        let per_path = text
            .lines()
            .filter(|l| l.starts_with("pathpulse_probes_sent_total{"))
            .count();
        assert_eq!(per_path, 5_000, "per-path series within the budget");
        assert!(text.contains("pathpulse_paths_over_budget 34800"));
        assert!(text.contains("pathpulse_series_dropped_total 34800"));
        for (qs, q) in QUANTILES {
            let want = secs(expect_pair.quantile(q).expect("samples") as f64);
            let line = format!(
                "pathpulse_site_pair_rtt_quantile_seconds{{src_site=\"site-0\",dst_site=\"site-1\",quantile=\"{qs}\",window=\"1m\"}} {want}"
            );
            assert!(text.contains(&line), "{line}");
        }
        let loss = pair_lost as f64 / pair_n as f64;
        let line = format!(
            "pathpulse_site_pair_loss_ratio{{src_site=\"site-0\",dst_site=\"site-1\",window=\"1m\"}} {loss}"
        );
        assert!(text.contains(&line), "{line}");
        assert!(
            text.contains("pathpulse_site_pair_paths{src_site=\"site-0\",dst_site=\"site-1\"} 400")
        );
        assert!(text.contains("pathpulse_isp_paths{isp=\"isp-0\"} 19900"));
        // Paths beyond the budget are folded into the roll-ups a chunk at a time, the
        // lock released in between; wherever the budget ends, the roll-ups are the same.
        let rollups = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| {
                    l.starts_with("pathpulse_site_pair_") || l.starts_with("pathpulse_isp_")
                })
                .map(str::to_string)
                .collect()
        };
        let want = rollups(&text);
        assert!(want.len() > 300, "{}", want.len());
        for budget in [0, 1, ROLLUP_CHUNK - 1, ROLLUP_CHUNK, 2 * ROLLUP_CHUNK + 1] {
            store.lock().expect("lock").path_budget = Some(budget);
            assert_eq!(rollups(&encode_text(&reg)), want, "budget {budget}");
        }
        // And the lock is free for much of the scrape: only each chunk's copy is made
        // under it, the views are merged outside. A thread trying the lock over and over
        // finds it taken in a share of its tries: the share of the scrape the lock is held
        // (each try is an instant, so the thread's own scheduling does not bias it).
        // Merging under the lock, nearly every try found it taken: an ingest on the async
        // workers starved.
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let (done, free, taken) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        store.lock().expect("lock").path_budget = Some(0);
        let _alone = LOCK_SAMPLING.lock().unwrap_or_else(|e| e.into_inner());
        let waiter = {
            let (store, done, free, taken) =
                (store.clone(), done.clone(), free.clone(), taken.clone());
            std::thread::spawn(move || {
                while !done.load(Relaxed) {
                    match store.try_lock() {
                        Ok(guard) => {
                            drop(guard);
                            free.fetch_add(1, Relaxed);
                        }
                        Err(_) => {
                            taken.fetch_add(1, Relaxed);
                        }
                    }
                    std::thread::yield_now();
                }
            })
        };
        while free.load(Relaxed) == 0 {
            std::thread::yield_now();
        }
        // Up to three scrapes, the best one counts: on a loaded machine the scraping
        // thread is preempted while it holds the lock now and then (the waiter then finds
        // it taken however short the holds are); merging under the lock finds it taken at
        // every try of every scrape.
        let (mut share, mut free_best) = (1.0f64, 0);
        for _ in 0..3 {
            let (free0, taken0) = (free.load(Relaxed), taken.load(Relaxed));
            let text = encode_text(&reg);
            let (free1, taken1) = (free.load(Relaxed) - free0, taken.load(Relaxed) - taken0);
            assert_eq!(rollups(&text), want);
            let s = taken1 as f64 / (free1 + taken1).max(1) as f64;
            eprintln!(
                "during one scrape the lock was taken at {taken1} of {} tries ({:.0}%)",
                free1 + taken1,
                s * 100.0
            );
            (share, free_best) = (share.min(s), free_best.max(free1));
            if share < 0.75 && free_best >= 20 {
                break;
            }
        }
        done.store(true, Relaxed);
        waiter.join().expect("waiter");
        assert!(
            free_best >= 20,
            "the waiter got the lock {free_best} times during a scrape of {} chunks",
            39_800 / ROLLUP_CHUNK
        );
        // Release build: about a quarter (these paths hold a few samples each, so the
        // copies are a good share of the work); debug about half.
        assert!(
            share < 0.75,
            "the lock was taken at {share:.2} of the tries"
        );
    }

    #[test]
    fn exposition_has_the_contract_names_and_values() {
        let store: SharedStore = Arc::new(Mutex::new(Store::new(15_000)));
        let mut p = PathReport {
            dst: "127.0.0.2".into(),
            sent: 4,
            lost: 1,
            in_flight: 1,
            ..Default::default()
        };
        for v in [1000, 2000] {
            p.rtt.record(v);
            p.rtt_sum_us += v;
            p.received += 1;
        }
        p.jitter_us = Some(250);
        let r = Report {
            seq: 1,
            agent: "a1".into(),
            interval_start_ms: 1_000_000,
            interval_ms: 5000,
            paths: vec![p],
            health: AgentHealth {
                stray_not_ours: 3,
                ..Default::default()
            },
        };
        store.lock().expect("lock").apply(&r, 1_005_000);
        store
            .lock()
            .expect("lock")
            .refuse(RefuseReason::Certificate);
        {
            let mut s = store.lock().expect("lock");
            s.ingest_applied
                .observe(std::time::Duration::from_micros(300));
            s.ingest_applied
                .observe(std::time::Duration::from_millis(40));
            s.ingest_acked.observe(std::time::Duration::from_secs(7));
        }
        let text = encode_text(&registry(store, Role::Aggregator, clock));
        let labels = r#"src="a1",dst="127.0.0.2",probe="icmp""#;
        for line in [
            format!("pathpulse_probes_sent_total{{{labels}}} 4"),
            format!("pathpulse_probes_received_total{{{labels}}} 2"),
            format!("pathpulse_probes_lost_total{{{labels}}} 1"),
            format!("pathpulse_probes_in_flight{{{labels}}} 1"),
            format!("pathpulse_rtt_seconds_count{{{labels}}} 2"),
            format!("pathpulse_rtt_seconds_bucket{{le=\"0.001\",{labels}}} 1"),
            format!("pathpulse_rtt_seconds_bucket{{le=\"+Inf\",{labels}}} 2"),
            format!(
                "pathpulse_rtt_quantile_seconds{{{labels},quantile=\"0.5\",window=\"1m\"}} 0.001"
            ),
            format!("pathpulse_loss_ratio{{{labels},window=\"10s\"}} 0.3333333333333333"),
            format!("pathpulse_jitter_seconds{{{labels},method=\"rfc3550\"}} 0.00025"),
            "pathpulse_agent_up{agent=\"a1\"} 1".to_string(),
            format!("pathpulse_pdv_seconds{{{labels},quantile=\"0.5\",window=\"1m\"}} 0"),
            format!("pathpulse_loss_detectable_ratio{{{labels},window=\"1m\"}} 0.6315"),
            format!("pathpulse_mos{{{labels},window=\"1m\"}} "),
            "pathpulse_stray_replies_total{agent=\"a1\",reason=\"not_ours\"} 3".to_string(),
            "pathpulse_ingest_refused_total{reason=\"certificate\"} 1".to_string(),
            "pathpulse_ingest_latency_seconds_bucket{le=\"0.00025\",stage=\"applied\"} 0"
                .to_string(),
            "pathpulse_ingest_latency_seconds_bucket{le=\"0.0005\",stage=\"applied\"} 1"
                .to_string(),
            "pathpulse_ingest_latency_seconds_bucket{le=\"0.05\",stage=\"applied\"} 2".to_string(),
            "pathpulse_ingest_latency_seconds_count{stage=\"applied\"} 2".to_string(),
            "pathpulse_ingest_latency_seconds_bucket{le=\"5.0\",stage=\"acked\"} 0".to_string(),
            "pathpulse_ingest_latency_seconds_bucket{le=\"+Inf\",stage=\"acked\"} 1".to_string(),
        ] {
            assert!(text.contains(&line), "missing `{line}` in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        let classic = openmetrics_to_prometheus(&text);
        assert!(
            classic.contains("# TYPE pathpulse_probes_sent_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP pathpulse_probes_sent_total Probes sent.\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE pathpulse_rtt_quantile_seconds summary\n"),
            "{classic}"
        );
        assert!(classic.contains(&format!("pathpulse_probes_sent_total{{{labels}}} 4\n")));
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    }

    /// Every per-path series carries the source agent's site and ISP and the destination's
    /// site when they are known, and leaves out what is not (never an empty value).
    #[test]
    fn per_path_series_carry_sites_and_isp_where_known() {
        use pathpulse_wire::ProbeKind;
        use pathpulse_wire::stamp::Directional;
        let store: SharedStore = Arc::new(Mutex::new(Store::new(15_000)));
        let ip = |s: &str| s.parse().ok();
        {
            let mut st = store.lock().expect("lock");
            st.hello(
                "a1",
                Some("site-a".into()),
                Some("isp-x".into()),
                ip("10.0.0.1"),
            );
            st.hello("a2", Some("site-b".into()), None, ip("10.0.0.2"));
            st.hello("a3", Some(String::new()), Some(String::new()), None);
            for (agent, dsts) in [
                ("a1", &["a2", "10.0.0.2", "192.0.2.9"][..]),
                ("a2", &["a1"]),
                ("a3", &["a1"]),
            ] {
                let paths = dsts
                    .iter()
                    .flat_map(|d| [ProbeKind::Icmp, ProbeKind::Stamp].map(|k| (d, k)))
                    .map(|(d, kind)| {
                        let mut p = PathReport {
                            dst: d.to_string(),
                            probe: Some(kind),
                            sent: 4,
                            lost: 1,
                            jitter_us: Some(100),
                            ..Default::default()
                        };
                        for v in [1000, 1100, 1200] {
                            p.rtt.record(v);
                            p.ipdv.record(v - 900);
                            p.rtt_sum_us += v;
                            p.received += 1;
                        }
                        if kind == ProbeKind::Stamp {
                            let mut d = Directional {
                                attributed: 4,
                                forward_lost: 1,
                                ..Default::default()
                            };
                            d.owd_forward.record(400);
                            d.owd_reverse.record(500);
                            p.directional = Some(d);
                        }
                        p
                    })
                    .collect();
                let r = Report {
                    seq: 1,
                    agent: agent.into(),
                    interval_start_ms: 1_000_000,
                    interval_ms: 5000,
                    paths,
                    health: AgentHealth::default(),
                };
                st.apply(&r, 1_005_000);
            }
        }
        let text =
            openmetrics_to_prometheus(&encode_text(&registry(store, Role::Aggregator, clock)));
        assert!(!text.contains("=\"\""), "an empty label value in\n{text}");
        // (path, the labels it must carry right after src/dst/probe, in order)
        let cases = [
            (
                "src=\"a1\",dst=\"a2\",",
                ",src_site=\"site-a\",dst_site=\"site-b\",isp=\"isp-x\"",
            ),
            // An agent's address finds its site too.
            (
                "src=\"a1\",dst=\"10.0.0.2\",",
                ",src_site=\"site-a\",dst_site=\"site-b\",isp=\"isp-x\"",
            ),
            // Not an agent: no dst_site.
            (
                "src=\"a1\",dst=\"192.0.2.9\",",
                ",src_site=\"site-a\",isp=\"isp-x\"",
            ),
            // No ISP known for a2.
            (
                "src=\"a2\",dst=\"a1\",",
                ",src_site=\"site-b\",dst_site=\"site-a\"",
            ),
            // Empty site and ISP are unknown.
            ("src=\"a3\",dst=\"a1\",", ",dst_site=\"site-a\""),
        ];
        let mut families = std::collections::BTreeSet::new();
        for (path, want) in cases {
            for probe in ["icmp", "stamp"] {
                let head = format!("{path}probe=\"{probe}\"");
                let lines: Vec<&str> = text.lines().filter(|l| l.contains(&head)).collect();
                assert!(lines.len() > 50, "{head}: {} series", lines.len());
                for l in &lines {
                    let labels = &l[l.find(&head).expect("head") + head.len()..];
                    assert!(
                        labels.starts_with(want)
                            && !labels[want.len()..].contains("site=")
                            && !labels[want.len()..].contains("isp="),
                        "{head}: `{l}` should carry exactly `{want}`"
                    );
                    families.insert(l.split(['{', ' ']).next().unwrap_or_default().to_string());
                }
            }
        }
        for f in [
            "pathpulse_probes_sent_total",
            "pathpulse_probes_lost_total",
            "pathpulse_probes_in_flight",
            "pathpulse_rtt_seconds_bucket",
            "pathpulse_rtt_seconds_count",
            "pathpulse_rtt_quantile_seconds",
            "pathpulse_loss_ratio",
            "pathpulse_loss_ratio_upper",
            "pathpulse_jitter_seconds",
            "pathpulse_ipdv_seconds",
            "pathpulse_pdv_seconds",
            "pathpulse_mos",
            "pathpulse_directional_loss_ratio",
            "pathpulse_one_way_delay_seconds",
        ] {
            assert!(families.contains(f), "{f} not among {families:?}");
        }
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::*;
    use pathpulse_wire::stamp::{Directional, ReflectorCounts};
    use pathpulse_wire::{AgentHealth, PathReport, ProbeKind, Report};

    #[test]
    fn stamp_paths_export_loss_and_delay_per_direction_and_reflector_drops() {
        let store: SharedStore = Arc::new(Mutex::new(Store::new(15_000)));
        let mut d = Directional {
            attributed: 100,
            forward_lost: 10,
            reverse_lost: 9,
            ..Default::default()
        };
        d.owd_forward.record(300);
        d.owd_reverse.record(500);
        let mut p = PathReport {
            dst: "10.0.0.2".into(),
            probe: Some(ProbeKind::Stamp),
            sent: 100,
            lost: 19,
            directional: Some(d),
            ..Default::default()
        };
        for _ in 0..81 {
            p.rtt.record(800);
            p.received += 1;
        }
        let r = Report {
            seq: 1,
            agent: "a1".into(),
            interval_start_ms: 1_000_000,
            interval_ms: 5000,
            paths: vec![p],
            health: AgentHealth {
                reflector: ReflectorCounts {
                    reflected: 5,
                    oversize: 2,
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        store.lock().expect("lock").apply(&r, 1_005_000);
        let text = encode_text(&registry(store, Role::Agent, || 1_010_000));
        let l = r#"src="a1",dst="10.0.0.2",probe="stamp""#;
        for line in [
            format!(
                "pathpulse_directional_loss_ratio{{{l},direction=\"forward\",window=\"1m\"}} 0.1"
            ),
            format!(
                "pathpulse_directional_loss_ratio{{{l},direction=\"reverse\",window=\"1m\"}} 0.1"
            ),
            format!(
                "pathpulse_one_way_delay_seconds{{{l},direction=\"forward\",quantile=\"0.5\",window=\"1m\"}} 0.0003"
            ),
            format!(
                "pathpulse_one_way_delay_seconds{{{l},direction=\"reverse\",quantile=\"0.5\",window=\"1m\"}} 0.0005"
            ),
            "pathpulse_stamp_reflector_reflected_total{agent=\"a1\"} 5".to_string(),
            "pathpulse_stamp_reflector_dropped_total{agent=\"a1\",reason=\"oversize\"} 2"
                .to_string(),
            "pathpulse_stamp_reflector_dropped_total{agent=\"a1\",reason=\"truncated\"} 0"
                .to_string(),
        ] {
            assert!(text.contains(&line), "missing `{line}` in:\n{text}");
        }
        let classic = openmetrics_to_prometheus(&text);
        assert!(classic.contains("# TYPE pathpulse_one_way_delay_seconds summary\n"));
    }
}
