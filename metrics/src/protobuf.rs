//! The Prometheus protobuf exposition (native histograms), encoded a chunk of paths at a
//! time.
//!
//! prometheus-client builds every `MetricFamily` of a registry in memory before it encodes
//! one: about 55 messages of a few hundred bytes each (and a `String` per label) for every
//! path, 556 MiB at the peak of a scrape of 10,000 paths. Protobuf messages merge when
//! concatenated, and a repeated field's elements add up: a family written as its name, help
//! and type followed by the `metric` fields of several encodings decodes as one family with
//! all of their metrics.
//!
//! So within [`encode_protobuf`] (a thread-local [`Scrape`] says so) the store collector
//! copies its budgeted paths out of the store [`CHUNK`] at a time, each under a short hold
//! of the lock, has each chunk encoded by a registry of its own, and keeps only the bytes of
//! each family's metrics; into the scrape's registry it encodes every family with only the
//! metrics over the whole store. Each family is then written delimited, its chunks' bytes
//! after its own: byte for byte what `encode_to_vec` writes, while at most one chunk's
//! messages exist at a time. The encoded exposition itself is held until it is sent (a
//! family's length comes before it, and every chunk adds to every family).

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_protobuf::{self, prometheus_data_model::MetricFamily};
use prometheus_client::registry::Registry;
use prost::Message;

/// Paths per chunk: their messages take about 55 KiB a path (5.5 MiB a chunk) until they
/// are encoded.
pub const CHUNK: usize = 100;

/// A family's bytes are kept in blocks of this size, each filled before the next is
/// allocated (pieces of every size would each waste their allocator size class's rest);
/// the blocks are the body's pieces.
const BLOCK: usize = 64 * 1024;

/// Pieces of the body smaller than this are gathered into one.
const GATHER: usize = 16 * 1024;

thread_local! {
    /// The protobuf scrape in progress on this thread, for the store collector.
    static SCRAPE: RefCell<Option<Scrape>> = const { RefCell::new(None) };
}

/// A protobuf scrape in progress: the encoded metrics of the chunks so far, by family.
#[derive(Debug)]
pub(crate) struct Scrape {
    /// Paths per chunk.
    pub(crate) chunk: usize,
    metrics: HashMap<String, Blocks>,
    /// Where a family's metrics are encoded before they are copied to its blocks.
    scratch: Vec<u8>,
    /// Chunks encoded, for the tests.
    chunks: usize,
}

/// Bytes in blocks of [`BLOCK`], all full but the last.
#[derive(Debug, Default)]
struct Blocks {
    full: Vec<Bytes>,
    last: Vec<u8>,
}

impl Blocks {
    fn extend(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.last.len() == BLOCK {
                let full = std::mem::replace(&mut self.last, Vec::with_capacity(BLOCK));
                self.full.push(Bytes::from(full));
            }
            if self.last.capacity() == 0 {
                self.last.reserve_exact(BLOCK);
            }
            let n = b.len().min(BLOCK - self.last.len());
            self.last.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
    }

    fn len(&self) -> usize {
        self.full.iter().map(Bytes::len).sum::<usize>() + self.last.len()
    }

    fn into_pieces(mut self) -> Vec<Bytes> {
        if !self.last.is_empty() {
            self.full.push(Bytes::from(self.last));
        }
        self.full
    }
}

impl Scrape {
    /// The scrape in progress on this thread, taken to be filled and handed back with
    /// [`Scrape::resume`]; `None` outside [`encode_protobuf`] (the text exposition).
    pub(crate) fn take() -> Option<Scrape> {
        SCRAPE.with_borrow_mut(Option::take)
    }

    pub(crate) fn resume(self) {
        SCRAPE.set(Some(self));
    }

    /// Encode `chunk` (a collector of some paths' series) and keep the bytes of its
    /// families' metrics, the messages dropped family by family as they are encoded.
    pub(crate) fn add(&mut self, chunk: Box<dyn Collector>) -> Result<(), std::fmt::Error> {
        let mut reg = Registry::default();
        reg.register_collector(chunk);
        for f in prometheus_protobuf::encode(&reg)? {
            if f.metric.is_empty() {
                continue;
            }
            // Field 4 (`metric`) only: the family's name, help and type are written once.
            let only = MetricFamily {
                metric: f.metric,
                ..Default::default()
            };
            self.scratch.clear();
            only.encode(&mut self.scratch)
                .map_err(|_| std::fmt::Error)?;
            self.metrics
                .entry(f.name)
                .or_default()
                .extend(&self.scratch);
        }
        self.chunks += 1;
        Ok(())
    }
}

/// Clears this thread's scrape however the encoding ends.
struct Active;

impl Active {
    fn start(chunk: usize) -> Active {
        SCRAPE.set(Some(Scrape {
            chunk,
            metrics: HashMap::new(),
            scratch: Vec::new(),
            chunks: 0,
        }));
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        SCRAPE.set(None);
    }
}

/// The body's pieces: small ones gathered, the chunks' bytes passed as they are.
#[derive(Default)]
struct Pieces {
    done: Vec<Bytes>,
    small: Vec<u8>,
}

impl Pieces {
    fn write(&mut self, b: &[u8]) {
        self.small.extend_from_slice(b);
        if self.small.len() >= GATHER {
            self.flush();
        }
    }

    fn push(&mut self, b: Bytes) {
        if b.len() < GATHER {
            self.write(&b);
        } else {
            self.flush();
            self.done.push(b);
        }
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.done.push(Bytes::from(std::mem::take(&mut self.small)));
        }
    }
}

/// The protobuf exposition (length-delimited `MetricFamily` messages) of `registry`, in
/// pieces to be sent one after the other (`stream::pieces_body`).
pub fn encode_protobuf(registry: &Registry) -> Result<Vec<Bytes>, String> {
    encode_with(registry, CHUNK).map(|(pieces, _)| pieces)
}

/// [`encode_protobuf`] with `chunk` paths per chunk; also the number of chunks.
fn encode_with(registry: &Registry, chunk: usize) -> Result<(Vec<Bytes>, usize), String> {
    let active = Active::start(chunk.max(1));
    let families = prometheus_protobuf::encode(registry).map_err(|e| format!("{e:?}"))?;
    let (mut chunked, chunks) =
        Scrape::take().map_or_else(Default::default, |s| (s.metrics, s.chunks));
    drop(active);
    let mut out = Pieces::default();
    let mut head = Vec::new();
    for f in families {
        let more = chunked.remove(&f.name).unwrap_or_default();
        head.clear();
        f.encode(&mut head).map_err(|e| e.to_string())?;
        let len = head.len() + more.len();
        let mut prefix = Vec::with_capacity(10);
        prost::encode_length_delimiter(len, &mut prefix).map_err(|e| e.to_string())?;
        out.write(&prefix);
        out.write(&head);
        for b in more.into_pieces() {
            out.push(b);
        }
    }
    // Every family the chunks wrote is one of the registry's (the store collector encodes
    // them all): anything else is a bug, better a failed scrape than a missing family.
    if let Some(name) = chunked.keys().next() {
        return Err(format!(
            "family {name} encoded in chunks but not by the registry"
        ));
    }
    out.flush();
    Ok((out.done, chunks))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use pathpulse_wire::stamp::Directional;
    use pathpulse_wire::{AgentHealth, HopReport, PathReport, ProbeKind, Report};
    use prometheus_client::metrics::counter::Counter;

    use super::*;
    use crate::export::{Role, SharedStore, registry};
    use crate::store::Store;

    fn clock() -> u64 {
        1_010_000
    }

    /// Four agents in two sites and two ISPs, `n` paths each (ICMP with hops toward some,
    /// STAMP toward others, with and without losses), and a fifth agent without labels.
    fn store(n: usize) -> SharedStore {
        let store: SharedStore = Arc::new(Mutex::new(Store::new(15_000)));
        let mut st = store.lock().expect("lock");
        for a in 0..5 {
            let (site, isp) = match a {
                4 => (None, None),
                _ => (
                    Some(format!("site-{}", a % 2)),
                    Some(format!("isp-{}", a / 2)),
                ),
            };
            st.hello(&format!("a{a}"), site, isp, None);
        }
        for a in 0..5usize {
            let paths = (0..n)
                .map(|i| {
                    let stamp = i % 5 == 1;
                    let mut p = PathReport {
                        dst: match i % 4 {
                            0 => format!("a{}", (a + 1 + i / 4) % 5),
                            _ => format!("10.{a}.{}.{}", i / 250, 1 + i % 250),
                        },
                        probe: Some(if stamp {
                            ProbeKind::Stamp
                        } else {
                            ProbeKind::Icmp
                        }),
                        sent: 5,
                        lost: u32::from((i + a) % 3 == 0),
                        in_flight: (i % 2) as u32,
                        jitter_us: (i % 7 != 0).then_some(100 + i as u32),
                        ..Default::default()
                    };
                    for k in 0..(5 - p.lost) {
                        let v = 1_000 + 37 * ((i * 31 + a * 7 + k as usize) % 400) as u64;
                        p.rtt.record(v);
                        p.ipdv.record(v / 10);
                        p.rtt_sum_us += v;
                        p.received += 1;
                    }
                    if stamp {
                        let mut d = Directional {
                            attributed: 5,
                            forward_lost: p.lost,
                            ..Default::default()
                        };
                        d.owd_forward.record(300 + i as u64);
                        d.owd_reverse.record(500);
                        p.directional = Some(d);
                    }
                    if i % 6 == 2 {
                        p.hops = (1..=3)
                            .map(|ttl| {
                                let mut s = PathReport {
                                    sent: 5,
                                    lost: u32::from(ttl == 2),
                                    ..Default::default()
                                };
                                for k in 0..(5 - s.lost) {
                                    s.rtt.record(200 * u64::from(ttl) + k as u64);
                                    s.received += 1;
                                }
                                HopReport {
                                    ttl,
                                    addr: Some(format!("192.0.2.{ttl}")),
                                    role: None,
                                    stats: s,
                                }
                            })
                            .collect();
                    }
                    p
                })
                .collect();
            let r = Report {
                seq: 1,
                agent: format!("a{a}"),
                interval_start_ms: 1_000_000,
                interval_ms: 5000,
                paths,
                health: AgentHealth {
                    stray_not_ours: a as u32,
                    ..Default::default()
                },
            };
            st.apply(&r, 1_005_000);
        }
        drop(st);
        store
    }

    fn decode(mut b: &[u8]) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        while !b.is_empty() {
            out.push(MetricFamily::decode_length_delimited(&mut b).expect("delimited family"));
        }
        out
    }

    /// The chunked exposition decodes to the families `encode_to_vec` writes, in the same
    /// order with the same metrics in the same order (and is the same bytes), for chunks of
    /// any size, with or without a cardinality budget cutting the paths short (in a chunk
    /// or at its end): a registry with the store, the aggregator's ingest families and a
    /// metric registered after them.
    #[test]
    fn chunked_protobuf_decodes_to_the_families_of_encode_to_vec() {
        let store = store(120);
        // Several hundred paths (paths toward the other agents repeat).
        let paths = store.lock().expect("lock").paths.len();
        assert!(paths > 400, "{paths} paths");
        let mut reg = registry(store.clone(), Role::Aggregator, clock);
        let refused: Counter = Counter::default();
        refused.inc_by(3);
        reg.register("pathpulse_http_refused", "Refused.", refused);
        // Seconds of work in a debug build: not beside a test that samples the lock.
        let _alone = crate::export::LOCK_SAMPLING
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for budget in [None, Some(0), Some(250), Some(300)] {
            store.lock().expect("lock").path_budget = budget;
            let budgeted = budget.unwrap_or(usize::MAX).min(paths);
            let over = (paths - budgeted) as f64;
            for chunk in [1, 7, 100, 1_000] {
                let want_bytes =
                    prometheus_protobuf::encode_to_vec(&reg).expect("whole exposition");
                let (pieces, chunks) = encode_with(&reg, chunk).expect("chunked exposition");
                assert_eq!(
                    chunks,
                    budgeted.div_ceil(chunk),
                    "budget {budget:?}, chunk {chunk}"
                );
                let got_bytes = pieces.concat();
                let (mut want, got) = (decode(&want_bytes), decode(&got_bytes));
                // The one value that differs: the count of paths over the budget summed
                // over scrapes, one more scrape in.
                let dropped = want
                    .iter_mut()
                    .find(|f| f.name == "pathpulse_series_dropped_total")
                    .and_then(|f| f.metric.first_mut())
                    .and_then(|m| m.counter.as_mut())
                    .expect("pathpulse_series_dropped_total");
                dropped.value += over;
                assert_eq!(got.len(), want.len(), "budget {budget:?}, chunk {chunk}");
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        g == w,
                        "{} differs (budget {budget:?}, chunk {chunk})",
                        w.name
                    );
                }
                if over == 0.0 {
                    assert!(got_bytes == want_bytes, "chunk {chunk}: other bytes");
                }
            }
        }
        // What was compared has every kind of family in it.
        store.lock().expect("lock").path_budget = None;
        let families = decode(&prometheus_protobuf::encode_to_vec(&reg).expect("encode"));
        let metrics = |name: &str| {
            families
                .iter()
                .find(|f| f.name == name)
                .map_or(0, |f| f.metric.len())
        };
        for (name, at_least) in [
            ("pathpulse_probes_sent_total", paths),
            ("pathpulse_rtt_seconds", paths),
            ("pathpulse_rtt_quantile_seconds", 3 * 4 * paths),
            ("pathpulse_one_way_delay_seconds", 100),
            ("pathpulse_hop_rtt_quantile_seconds", 100),
            ("pathpulse_path_changes_total", 50),
            ("pathpulse_site_pair_paths", 4),
            ("pathpulse_isp_paths", 2),
            ("pathpulse_agent_up", 5),
            ("pathpulse_ingest_refused_total", 1),
            ("pathpulse_http_refused_total", 1),
        ] {
            assert!(metrics(name) >= at_least, "{name}: {}", metrics(name));
        }
    }

    /// The store lock is held only to copy each chunk (and for the families over the whole
    /// store at the end), not while the chunks are encoded: a thread trying the lock over
    /// and over finds it free at most tries (as `the_budget_caps_per_path_series...` in
    /// `export.rs` measures the text exposition's roll-ups).
    #[test]
    fn the_store_lock_is_free_for_most_of_a_protobuf_scrape() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let store = store(800);
        let reg = registry(store.clone(), Role::Agent, clock);
        let _alone = crate::export::LOCK_SAMPLING
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (done, free, taken) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
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
        let (free0, taken0) = (free.load(Relaxed), taken.load(Relaxed));
        let (_, chunks) = encode_with(&reg, CHUNK).expect("chunked exposition");
        let (free1, taken1) = (free.load(Relaxed) - free0, taken.load(Relaxed) - taken0);
        done.store(true, Relaxed);
        waiter.join().expect("waiter");
        let share = taken1 as f64 / (free1 + taken1).max(1) as f64;
        eprintln!(
            "during one protobuf scrape of {chunks} chunks the lock was taken at {taken1} of {} tries ({:.0}%)",
            free1 + taken1,
            share * 100.0
        );
        assert!(chunks >= 20, "{chunks} chunks");
        assert!(free1 >= 20, "the waiter got the lock {free1} times");
        assert!(share < 0.5, "the lock was taken at {share:.2} of the tries");
    }

    /// Outside `encode_protobuf` the store collector encodes whole (the text exposition),
    /// also on a thread that ran one.
    #[test]
    fn the_scrape_ends_with_the_encoding() {
        let reg = registry(store(10), Role::Agent, clock);
        let (_, chunks) = encode_with(&reg, 3).expect("chunked exposition");
        assert_eq!(chunks, 17);
        assert!(Scrape::take().is_none());
    }
}
