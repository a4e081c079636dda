//! The JSON behind the page, built from the store and the history. Pure: `now` is an
//! argument. The shapes are documented in the README ("The live page and its API").

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;

use pathpulse_metrics::stats::{Z95, loss_ratio, mos, wilson_interval};
use pathpulse_metrics::store::{AgentState, PathKey};
use pathpulse_metrics::window::{PathWindows, WINDOWS};
use pathpulse_metrics::{SharedStore, Store};
use serde::Serialize;

use super::history::{self, History};

/// A window named like the exported `window` label.
pub fn window_ms(name: &str) -> Option<(&'static str, u64)> {
    WINDOWS.iter().copied().find(|(n, _)| *n == name)
}

pub const DEFAULT_WINDOW: &str = "1m";

#[derive(Debug, Serialize)]
pub struct Mesh {
    pub window: &'static str,
    pub window_ms: u64,
    pub generated_ms: u64,
    pub sources: Vec<Source>,
    pub destinations: Vec<Destination>,
    /// Names of the fields of each cell, in order.
    pub cell_fields: [&'static str; 7],
    pub cells: Vec<Cell>,
}

pub const CELL_FIELDS: [&str; 7] = ["src", "dst", "received", "lost", "loss", "p50_us", "p99_us"];

#[derive(Debug, Serialize)]
pub struct Source {
    pub name: String,
    pub site: Option<String>,
    pub isp: Option<String>,
    pub up: bool,
}

#[derive(Debug, Serialize)]
pub struct Destination {
    pub name: String,
    pub probe: &'static str,
    /// The agent at this address or of this name, when the aggregator knows one.
    pub agent: Option<String>,
    pub site: Option<String>,
    pub isp: Option<String>,
}

/// One path, as an array (compact for 40,000 cells): indexes into `sources` and
/// `destinations`, replies and losses in the window, loss ratio and RTT quantiles.
#[derive(Debug, Serialize)]
pub struct Cell(
    pub u32,
    pub u32,
    pub u64,
    pub u64,
    pub Option<f64>,
    pub Option<u64>,
    pub Option<u64>,
);

/// The agents by the address they connect from (`None`: several agents behind one
/// address, NAT), built once per mesh: looking every destination up by scanning the agents
/// took 1,000 agents × 100,000 destinations comparisons under the store's lock.
struct ByAddr<'a>(HashMap<IpAddr, Option<(&'a str, &'a AgentState)>>);

impl<'a> ByAddr<'a> {
    fn new(store: &'a Store) -> Self {
        let mut m = HashMap::new();
        for (k, a) in &store.agents {
            if let Some(ip) = a.addr {
                m.entry(ip)
                    .and_modify(|v| *v = None)
                    .or_insert(Some((&**k, a)));
            }
        }
        ByAddr(m)
    }
}

/// The agent a destination names, by agent name or by the address it alone connects from.
fn agent_at<'a>(
    store: &'a Store,
    by_addr: &ByAddr<'a>,
    dst: &str,
) -> Option<(&'a str, &'a AgentState)> {
    if let Some((k, a)) = store.agents.get_key_value(dst) {
        return Some((k, a));
    }
    let ip: IpAddr = dst
        .parse()
        .ok()
        .or_else(|| dst.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    if ip.is_loopback() || ip.is_unspecified() {
        return None; // every agent on the aggregator's host connects from here
    }
    // Nobody, or several agents behind one address (NAT): none.
    by_addr.0.get(&ip).copied().flatten()
}

/// Paths whose cells one hold of the store's lock computes in [`mesh_chunked`].
pub const MESH_CHUNK: usize = 1_000;

/// One path's figures in a window, before the mesh's indexes are known.
struct Row {
    key: PathKey,
    received: u64,
    lost: u64,
    p50: Option<u64>,
    p99: Option<u64>,
}

/// Copies of the windows of up to `n` paths from `from` on, in key order.
fn copies_from(store: &Store, from: Bound<&PathKey>, n: usize) -> Vec<(PathKey, PathWindows)> {
    store
        .paths
        .range((from, Bound::Unbounded))
        .take(n)
        .map(|(k, st)| (k.clone(), st.windows.clone()))
        .collect()
}

fn row(key: PathKey, windows: &PathWindows, window_ms: u64, now_ms: u64) -> Row {
    let v = windows.view(window_ms, now_ms);
    Row {
        key,
        received: v.received,
        lost: v.lost,
        p50: v.hist.quantile(0.5),
        p99: v.hist.quantile(0.99),
    }
}

/// The mesh in one hold of the store's lock (tests, small stores).
pub fn mesh(store: &Store, window: (&'static str, u64), now_ms: u64) -> Mesh {
    let rows = store
        .paths
        .iter()
        .map(|(k, st)| row(k.clone(), &st.windows, window.1, now_ms))
        .collect();
    assemble(store, rows, window, now_ms)
}

/// The mesh as [`mesh`], for a blocking thread: [`MESH_CHUNK`] paths' windows copied per
/// hold of the store's lock, their views merged with the lock free (every path's view
/// under the lock took about a second at 100,000 paths, with ingest waiting on the async
/// workers). A path that arrives in between may be missed until the next mesh.
pub fn mesh_chunked(store: &SharedStore, window: (&'static str, u64), now_ms: u64) -> Mesh {
    let lock = || store.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<Row> = Vec::new();
    loop {
        let chunk = {
            let st = lock();
            let from = rows
                .last()
                .map_or(Bound::Unbounded, |r| Bound::Excluded(&r.key));
            copies_from(&st, from, MESH_CHUNK)
        };
        let done = chunk.len() < MESH_CHUNK;
        rows.extend(chunk.into_iter().map(|(k, w)| row(k, &w, window.1, now_ms)));
        if done {
            break;
        }
    }
    assemble(&lock(), rows, window, now_ms)
}

/// Sources (every agent), destinations (every destination of a row) and a cell per row
/// whose source is a known agent.
fn assemble(store: &Store, rows: Vec<Row>, window: (&'static str, u64), now_ms: u64) -> Mesh {
    let sources: Vec<Source> = store
        .agents
        .iter()
        .map(|(name, a)| Source {
            name: name.to_string(),
            site: a.site.clone(),
            isp: a.isp.clone(),
            up: store.agent_up(a, now_ms),
        })
        .collect();
    let src_index: BTreeMap<&str, u32> = store
        .agents
        .keys()
        .enumerate()
        .map(|(i, k)| (&**k, i as u32))
        .collect();
    let mut dst_index: BTreeMap<(&str, &'static str), u32> = BTreeMap::new();
    for r in &rows {
        dst_index.insert((&*r.key.dst, r.key.probe.as_str()), 0);
    }
    let by_addr = ByAddr::new(store);
    let mut destinations = Vec::with_capacity(dst_index.len());
    for (i, ((name, probe), idx)) in dst_index.iter_mut().enumerate() {
        *idx = i as u32;
        let agent = agent_at(store, &by_addr, name);
        destinations.push(Destination {
            name: name.to_string(),
            probe,
            agent: agent.map(|(n, _)| n.to_string()),
            site: agent.and_then(|(_, a)| a.site.clone()),
            isp: agent.and_then(|(_, a)| a.isp.clone()),
        });
    }
    let cells = rows
        .iter()
        .filter_map(|r| {
            let s = *src_index.get(&*r.key.src)?;
            let d = *dst_index.get(&(&*r.key.dst, r.key.probe.as_str()))?;
            Some(Cell(
                s,
                d,
                r.received,
                r.lost,
                loss_ratio(r.lost, r.received),
                r.p50,
                r.p99,
            ))
        })
        .collect();
    Mesh {
        window: window.0,
        window_ms: window.1,
        generated_ms: now_ms,
        sources,
        destinations,
        cell_fields: CELL_FIELDS,
        cells,
    }
}

#[derive(Debug, Serialize)]
pub struct Agents {
    pub generated_ms: u64,
    pub stale_after_ms: u64,
    pub agents: Vec<AgentView>,
}

#[derive(Debug, Serialize)]
pub struct AgentView {
    pub name: String,
    pub site: Option<String>,
    pub isp: Option<String>,
    pub addr: Option<String>,
    /// `up` while the last report is younger than `stale_after_ms`, else `down`.
    pub state: &'static str,
    pub last_report_ms: Option<u64>,
    pub last_report_age_ms: Option<u64>,
    pub reports: u64,
    pub paths: u64,
    pub scheduling_lag_us: u32,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub stray_replies: u64,
    pub rtt_kernel_clock: u64,
    pub rtt_monotonic_clock: u64,
}

pub fn agents(store: &Store, now_ms: u64) -> Agents {
    let mut paths: BTreeMap<&str, u64> = BTreeMap::new();
    for k in store.paths.keys() {
        *paths.entry(&*k.src).or_default() += 1;
    }
    let agents = store
        .agents
        .iter()
        .map(|(name, a)| {
            let h = &a.health;
            AgentView {
                name: name.to_string(),
                site: a.site.clone(),
                isp: a.isp.clone(),
                addr: a.addr.map(|ip| ip.to_string()),
                state: if store.agent_up(a, now_ms) {
                    "up"
                } else {
                    "down"
                },
                last_report_ms: a.last_report_ms,
                last_report_age_ms: a.last_report_ms.map(|t| now_ms.saturating_sub(t)),
                reports: a.reports,
                paths: paths.get(&**name).copied().unwrap_or(0),
                scheduling_lag_us: a.last_scheduling_lag_us,
                send_errors: h.send_errors,
                recv_errors: h.recv_errors,
                stray_replies: h.stray_not_ours + h.stray_wrong_source + h.stray_unknown_probe,
                rtt_kernel_clock: h.rtt_kernel_clock,
                rtt_monotonic_clock: h.rtt_monotonic_clock,
            }
        })
        .collect();
    Agents {
        generated_ms: now_ms,
        stale_after_ms: store.stale_after_ms,
        agents,
    }
}

#[derive(Debug, Serialize)]
pub struct PathView {
    pub src: String,
    pub dst: String,
    pub probe: &'static str,
    pub generated_ms: u64,
    /// RFC 3550 jitter at the last report.
    pub jitter_us: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub windows: Vec<WindowStats>,
    pub hops: Vec<HopRow>,
    pub history: Vec<HistoryPoint>,
}

#[derive(Debug, Serialize)]
pub struct WindowStats {
    pub window: &'static str,
    pub received: u64,
    pub lost: u64,
    pub loss: Option<f64>,
    /// Upper bound of the 95% Wilson interval of the loss.
    pub loss_upper: Option<f64>,
    pub min_us: Option<u64>,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub mos: Option<f64>,
    /// STAMP paths: loss before the reflector and on the way back (null otherwise).
    pub forward_loss: Option<f64>,
    pub reverse_loss: Option<f64>,
}

/// One hop toward the target (ICMP paths with hop discovery), over the last minute.
#[derive(Debug, Serialize)]
pub struct HopRow {
    pub ttl: u8,
    pub addr: String,
    pub role: &'static str,
    pub sent: u64,
    pub lost: u64,
    pub loss: Option<f64>,
    pub p50_us: Option<u64>,
    /// The router rate-limits its ICMP answers: its loss is not the path's.
    pub ratelimited: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct HistoryPoint {
    pub t_ms: u64,
    pub step_ms: u64,
    pub received: u64,
    pub lost: u64,
    pub loss: Option<f64>,
    /// RTT quantiles `min p10 p25 p50 p75 p90 p99` in µs; `null` without replies.
    pub rtt_us: Option<[u64; history::QUANTILES.len()]>,
    pub jitter_us: Option<u64>,
}

pub fn path(store: &Store, hist: &History, key: &PathKey, now_ms: u64) -> Option<PathView> {
    let st = store.paths.get(key)?;
    let windows = WINDOWS
        .iter()
        .map(|&(name, ms)| {
            let v = st.windows.view(ms, now_ms);
            let loss = loss_ratio(v.lost, v.received);
            let p50 = v.hist.quantile(0.5);
            WindowStats {
                window: name,
                received: v.received,
                lost: v.lost,
                loss,
                loss_upper: wilson_interval(v.lost, v.lost + v.received, Z95).map(|(_, hi)| hi),
                min_us: v.hist.min(),
                p50_us: p50,
                p90_us: v.hist.quantile(0.9),
                p99_us: v.hist.quantile(0.99),
                mos: match (p50, loss) {
                    (Some(p50), Some(loss)) => Some(mos(
                        p50 as f64 / 2_000.0,
                        st.jitter_us.unwrap_or(0.0) / 1_000.0,
                        loss,
                    )),
                    _ => None,
                },
                forward_loss: v.dir.as_deref().and_then(|d| {
                    pathpulse_wire::stamp::Directional::forward_ratio(d.attributed, d.forward_lost)
                }),
                reverse_loss: v.dir.as_deref().and_then(|d| {
                    pathpulse_wire::stamp::Directional::reverse_ratio(
                        d.attributed,
                        d.forward_lost,
                        d.reverse_lost,
                    )
                }),
            }
        })
        .collect();
    let hops = pathpulse_metrics::localize::hop_views(st, now_ms)
        .into_iter()
        .map(|h| {
            let one_min = &h.views[1].1;
            HopRow {
                ttl: h.ttl,
                addr: h.state.addr.to_string(),
                role: h.state.role.as_str(),
                sent: h.state.counters.sent,
                lost: h.state.counters.lost,
                loss: loss_ratio(one_min.lost, one_min.received),
                p50_us: one_min.hist.quantile(0.5),
                ratelimited: h.ratelimited,
            }
        })
        .collect();
    let history = hist
        .paths
        .get(key)
        .map(|h| {
            h.points()
                .into_iter()
                .map(|(t, step, p)| {
                    let q = p.quantiles_us();
                    HistoryPoint {
                        t_ms: t,
                        step_ms: step,
                        received: p.received(),
                        lost: p.lost(),
                        loss: loss_ratio(p.lost(), p.received()),
                        rtt_us: q
                            .iter()
                            .all(Option::is_some)
                            .then(|| q.map(|v| v.unwrap_or(0))),
                        jitter_us: p.jitter_us(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Some(PathView {
        src: key.src.to_string(),
        dst: key.dst.to_string(),
        probe: key.probe.as_str(),
        generated_ms: now_ms,
        jitter_us: st.jitter_us,
        sent: st.counters.sent,
        received: st.counters.received,
        lost: st.counters.lost,
        windows,
        hops,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pathpulse_wire::{AgentHealth, PathReport, ProbeKind, Report};

    fn report(agent: &str, dsts: &[(&str, u32)], start_ms: u64) -> Report {
        let paths = dsts
            .iter()
            .map(|&(dst, lost)| {
                let mut p = PathReport {
                    dst: dst.into(),
                    lost,
                    ..Default::default()
                };
                for v in [100, 200, 300, 400] {
                    p.rtt.record(v);
                    p.received += 1;
                }
                p.sent = p.received + lost;
                p
            })
            .collect();
        Report {
            seq: 1,
            agent: agent.into(),
            interval_start_ms: start_ms,
            interval_ms: 1_000,
            paths,
            health: AgentHealth::default(),
        }
    }

    #[test]
    fn mesh_has_a_cell_per_path_and_labels_agents_by_address() {
        let now = 1_800_000_000_000u64;
        let mut s = Store::new(10_000);
        s.hello(
            "b",
            Some("par".into()),
            Some("isp-x".into()),
            "10.0.0.2".parse().ok(),
        );
        s.apply(
            &report("a", &[("10.0.0.2", 4), ("192.0.2.1", 0)], now - 2_000),
            now,
        );
        s.apply(&report("b", &[("192.0.2.1", 0)], now - 2_000), now);
        let m = mesh(&s, ("10s", 10_000), now);
        assert_eq!(m.sources.len(), 2);
        assert_eq!(m.destinations.len(), 2);
        assert_eq!(m.cells.len(), 3);
        let d = &m.destinations[0];
        assert_eq!(
            (d.name.as_str(), d.agent.as_deref(), d.site.as_deref()),
            ("10.0.0.2", Some("b"), Some("par"))
        );
        let c = m
            .cells
            .iter()
            .find(|c| c.0 == 0 && c.1 == 0)
            .expect("a -> b");
        assert_eq!((c.2, c.3, c.4), (4, 4, Some(0.5)));
        assert_eq!(c.5, Some(200));
        let json = serde_json::to_string(&m).expect("json");
        assert!(json.contains("\"cells\":[[0,0,4,4,0.5,200,"), "{json}");
    }

    /// The mesh computed a chunk of paths per hold of the lock is the mesh computed in one:
    /// 2,501 paths (three chunks, the last partial), destinations that are agents by
    /// address (one of them behind a NAT shared by two agents) and one that is none.
    #[test]
    fn a_chunked_mesh_is_the_mesh_in_one() {
        let now = 1_800_000_000_000u64;
        let mut s = Store::new(10_000);
        for i in 0..50u32 {
            let addr = format!("10.1.0.{}", i.min(48));
            s.hello(
                &format!("agent-{i:02}"),
                Some(format!("site-{}", i % 4)),
                None,
                addr.parse().ok(),
            );
        }
        let dsts: Vec<String> = (0..50).map(|j| format!("10.1.0.{j}")).collect();
        for i in 0..50u32 {
            let refs: Vec<(&str, u32)> = dsts.iter().map(|d| (d.as_str(), i % 2)).collect();
            s.apply(&report(&format!("agent-{i:02}"), &refs, now - 3_000), now);
        }
        s.apply(&report("stranger", &[("192.0.2.9", 1)], now - 3_000), now);
        assert_eq!(s.paths.len(), 2_501);
        let one = serde_json::to_string(&mesh(&s, ("10s", 10_000), now)).expect("json");
        let shared: SharedStore = std::sync::Arc::new(std::sync::Mutex::new(s));
        let m = mesh_chunked(&shared, ("10s", 10_000), now);
        assert_eq!(m.cells.len(), 2_501);
        let by_addr = |name: &str| {
            m.destinations
                .iter()
                .find(|d| d.name == name)
                .and_then(|d| d.agent.clone())
        };
        assert_eq!(by_addr("10.1.0.7").as_deref(), Some("agent-07"));
        assert_eq!(by_addr("10.1.0.48"), None, "two agents behind one address");
        assert_eq!(serde_json::to_string(&m).expect("json"), one);
    }

    #[test]
    fn mesh_of_a_200_agent_full_mesh_is_built_and_serialized_quickly() {
        // 200 agents × 200 destinations, 12 reports each (the 1 min window full).
        let now = 1_800_000_000_000u64;
        let mut s = Store::new(10_000);
        let dsts: Vec<String> = (0..200)
            .map(|j| format!("10.0.{}.{}", j / 250, j % 250))
            .collect();
        for i in 0..200 {
            let name = format!("agent-{i:03}");
            for r in 0..12u64 {
                let t = now - 60_000 + r * 5_000;
                let refs: Vec<(&str, u32)> =
                    dsts.iter().map(|d| (d.as_str(), (i % 3) as u32)).collect();
                s.apply(&report(&name, &refs, t), t + 1_000);
            }
        }
        assert_eq!(s.paths.len(), 40_000);
        let t0 = std::time::Instant::now();
        let m = mesh(&s, ("1m", 60_000), now);
        let built = t0.elapsed();
        let json = serde_json::to_string(&m).expect("json");
        let total = t0.elapsed();
        eprintln!(
            "mesh of 40,000 paths: built in {built:?}, serialized in {:?}, {} bytes",
            total - built,
            json.len()
        );
        assert_eq!(m.cells.len(), 40_000);
        // Generous for debug builds on two cores; a release build is ~10 times faster.
        assert!(total < std::time::Duration::from_secs(5), "{total:?}");
    }

    #[test]
    fn path_view_has_windows_and_history() {
        let now = 1_800_000_000_000u64;
        let mut s = Store::new(10_000);
        let mut h = History::default();
        for i in 0..30u64 {
            let t = now - 150_000 + i * 5_000;
            s.apply(&report("a", &[("192.0.2.1", 1)], t), t + 1_000);
            h.sample(&s, t + 1_000);
        }
        let key = PathKey {
            src: "a".into(),
            dst: "192.0.2.1".into(),
            probe: ProbeKind::Icmp,
        };
        let v = path(&s, &h, &key, now).expect("path");
        assert_eq!(v.windows.len(), 3);
        assert_eq!(v.windows[0].p50_us, Some(200));
        assert!(v.windows[1].loss_upper.expect("upper") > 0.2);
        assert!(v.history.len() >= 12, "{}", v.history.len());
        let p = v.history.last().expect("point");
        assert_eq!((p.received, p.lost), (8, 2));
        assert!(p.rtt_us.is_some_and(|q| q[0] == 100 && q[3] == 200));
        let missing = PathKey {
            dst: "nowhere".into(),
            ..key
        };
        assert!(path(&s, &h, &missing, now).is_none());
    }
}
