//! Load generator for the aggregator's ingest (a benchmark tool, not a test): N simulated
//! agents, each with its own certificate from the aggregator's CA, each on its own QUIC
//! connection with mutual TLS, speaking the real protocol (hello, then one report per
//! interval with M paths, pipelined, each acknowledged after the aggregator applied it).
//!
//!   pathpulse-loadgen --state-dir AGG_STATE --aggregator 127.0.0.1:4470 \
//!       --agents 1000 --paths 100 --interval-ms 1000 --duration-s 30 [--pid AGG_PID]
//!
//! `--mesh`: every simulated agent probes the same `--paths` destinations (10.0.x.y), so
//! the aggregator holds a full mesh of agents × paths cells (the live page's load test);
//! a few of the paths lose one probe in five. Without it each agent has its own
//! destinations.
//!
//! Each path has a base RTT of its own (1–40 ms, from its names) and every sample adds up
//! to 500 µs of jitter; its IPDV histogram holds the differences of consecutive samples, as
//! an agent's does (the loadgen sent none before 2026-12-05). Each report carries 5 samples
//! a path (5 probes/s at one report a second); `--samples N` sets it (1: the agent's
//! default of 1 probe/s, reported every second). `--wide-rtt` draws a new base for every report instead (every
//! window then spans 1–40 ms: the histograms' worst case, and the figures before
//! 2026-12-04).
//!
//! `--churn-ms MS`: each simulated agent instead connects, says hello, sends one report,
//! waits for its answer, disconnects and does it again after about MS (connection churn;
//! the soak benchmark). `--rss-every-s N` with `--pid` prints the aggregator's RSS every
//! N seconds of the measured interval.
//!
//! Prints path-reports applied per second (acknowledged reports × paths), the time from
//! sending a report to its acknowledgement (an upper bound of receive-to-applied), and with
//! `--pid` the aggregator's RSS and CPU over the measured interval.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use pathpulse_wire::frame::{self, DEFAULT_MAX_FRAME};
use pathpulse_wire::message::AgentHealth;
use pathpulse_wire::tls::{self, Ca};
use pathpulse_wire::{ClientMsg, Hello, PathReport, ProbeKind, Report, ServerMsg};
use rand::{Rng, SeedableRng};

struct Args {
    state_dir: PathBuf,
    aggregator: SocketAddr,
    agents: usize,
    paths: usize,
    interval: Duration,
    duration: Duration,
    warmup: Duration,
    pid: Option<u32>,
    churn: Option<Duration>,
    rss_every: Option<Duration>,
    /// The aggregator's `/metrics` URL: its receive-to-applied histogram is read before
    /// and after the measured interval.
    metrics: Option<String>,
    mesh: bool,
    /// `--wide-rtt`: each report of a path draws a new base RTT (1–40 ms), as the loadgen
    /// did before 2026-12-04, so a path's window histograms span the whole range.
    wide_rtt: bool,
    /// `--samples N`: RTT samples per path per report (default 5: 5 probes/s per path at
    /// one report a second; 1 is the agent's default of 1 probe/s reported every second).
    samples: u32,
    /// `--no-ipdv`: reports without IPDV, as the loadgen sent them before 2026-12-05.
    no_ipdv: bool,
}

/// The destinations of simulated agent `i`.
fn targets(args: &Args, i: usize) -> Vec<String> {
    (0..args.paths)
        .map(|p| match args.mesh {
            true => format!("10.0.{}.{}", p / 250, 1 + p % 250),
            false => format!("10.{}.{}.{}", i / 250, i % 250, 1 + p % 250),
        })
        .collect()
}

fn parse_args() -> anyhow::Result<Args> {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |name: &str, default: u64| -> anyhow::Result<u64> {
        get(name).map_or(Ok(default), |v| {
            v.parse()
                .with_context(|| format!("{name}: not a number: {v}"))
        })
    };
    Ok(Args {
        state_dir: get("--state-dir")
            .map(PathBuf::from)
            .context("--state-dir (the aggregator's) is required")?,
        aggregator: get("--aggregator")
            .unwrap_or_else(|| "127.0.0.1:4470".into())
            .parse()
            .context("--aggregator HOST:PORT")?,
        agents: num("--agents", 1000)? as usize,
        paths: num("--paths", 100)? as usize,
        interval: Duration::from_millis(num("--interval-ms", 1000)?),
        duration: Duration::from_secs(num("--duration-s", 30)?),
        warmup: Duration::from_secs(num("--warmup-s", 5)?),
        pid: get("--pid")
            .map(|p| p.parse())
            .transpose()
            .context("--pid")?,
        churn: get("--churn-ms")
            .map(|v| v.parse().map(Duration::from_millis))
            .transpose()
            .context("--churn-ms")?,
        rss_every: get("--rss-every-s")
            .map(|v| v.parse().map(Duration::from_secs))
            .transpose()
            .context("--rss-every-s")?,
        metrics: get("--metrics"),
        mesh: args.iter().any(|a| a == "--mesh"),
        wide_rtt: args.iter().any(|a| a == "--wide-rtt"),
        no_ipdv: args.iter().any(|a| a == "--no-ipdv"),
        samples: u32::try_from(num("--samples", 5)?)
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| anyhow!("--samples: 1 to 10000"))?,
    })
}

#[derive(Default)]
struct Totals {
    acked: AtomicU64,
    refused: AtomicU64,
    connections: AtomicU64,
    /// Sessions tried again (handshake or hello failed).
    retried: AtomicU64,
    latency_us: Mutex<Option<Histogram<u64>>>,
}

/// A path's base RTT, 1–40 ms, the same in every report (a path's RTT is its distance).
fn base_rtt_us(agent: &str, dst: &str) -> u64 {
    // FNV-1a: stable across runs and processes.
    let h = agent
        .bytes()
        .chain([0])
        .chain(dst.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    1_000 + h % 39_000
}

/// One report of `paths` paths with `--samples` RTT samples each (5 by default): the
/// path's base RTT plus up to 500 µs of jitter (`--wide-rtt`: a new base for every report),
/// and their IPDV (each sample's difference from the path's previous one, kept in `last`);
/// with `--mesh`, about one path in 25 loses one probe. The report covers one interval.
fn report(
    agent: &str,
    seq: u64,
    paths: &[String],
    last: &mut [Option<u64>],
    args: &Args,
    rng: &mut impl Rng,
) -> ClientMsg {
    let (lossy, wide, n) = (args.mesh, args.wide_rtt, args.samples);
    let paths = paths
        .iter()
        .zip(last.iter_mut())
        .map(|(dst, last)| {
            let lost = u32::from(lossy && rng.random_range(0..25u32) == 0);
            let mut p = PathReport {
                dst: dst.clone(),
                probe: Some(ProbeKind::Icmp),
                sent: n,
                received: n - lost,
                lost,
                ..PathReport::default()
            };
            let base = match wide {
                true => rng.random_range(1_000..40_000u64),
                false => base_rtt_us(agent, dst),
            };
            for _ in 0..p.received {
                let v = base + rng.random_range(0..500u64);
                p.rtt.record(v);
                p.rtt_sum_us += v;
                if let Some(l) = last.replace(v).filter(|_| !args.no_ipdv) {
                    p.ipdv.record(v.abs_diff(l));
                }
            }
            p
        })
        .collect();
    ClientMsg::Report(Report {
        seq,
        agent: agent.into(),
        interval_start_ms: pathpulse_metrics::export::wall_clock_ms(),
        interval_ms: u32::try_from(args.interval.as_millis()).unwrap_or(u32::MAX),
        paths,
        health: AgentHealth::default(),
    })
}

/// Churn: connect, hello, one report, its answer, disconnect; again after about `every`.
async fn churner(
    i: usize,
    ep: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    args: Arc<Args>,
    totals: Arc<Totals>,
    start: Instant,
    every: Duration,
) -> anyhow::Result<()> {
    let name = format!("load-{i}");
    let paths = targets(&args, i);
    let mut last = vec![None; paths.len()];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(i as u64);
    let session: u64 = rand::random();
    let end = start + args.warmup + args.duration;
    let measure_from = start + args.warmup;
    tokio::time::sleep_until((start + every.mul_f64(rng.random_range(0.0..1.0))).into()).await;
    let mut seq = 0u64;
    while Instant::now() < end {
        seq += 1;
        let once = async {
            let conn = ep
                .connect_with(cfg.clone(), args.aggregator, tls::SERVER_NAME)?
                .await?;
            totals.connections.fetch_add(1, Ordering::Relaxed);
            let (mut send, mut recv) = conn.open_bi().await?;
            let hello = ClientMsg::Hello(Hello {
                agent: name.clone(),
                session,
                software: "loadgen".into(),
                site: Some(format!("site-{}", i % 10)),
                isp: None,
            });
            frame::write(&mut send, &hello).await?;
            let answer = frame::read::<ServerMsg, _>(&mut recv, DEFAULT_MAX_FRAME).await?;
            if matches!(answer, Some(ServerMsg::Welcome { .. })) {
                let t = Instant::now();
                frame::write(
                    &mut send,
                    &report(&name, seq, &paths, &mut last, &args, &mut rng),
                )
                .await?;
                let answer = frame::read::<ServerMsg, _>(&mut recv, DEFAULT_MAX_FRAME).await?;
                if matches!(answer, Some(ServerMsg::Ack { .. })) && t >= measure_from {
                    totals.acked.fetch_add(1, Ordering::Relaxed);
                    if let Some(h) = totals
                        .latency_us
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                    {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    }
                } else if matches!(answer, Some(ServerMsg::Refused { .. })) {
                    totals.refused.fetch_add(1, Ordering::Relaxed);
                }
            } else if matches!(answer, Some(ServerMsg::Refused { .. })) {
                totals.refused.fetch_add(1, Ordering::Relaxed);
            }
            conn.close(0u32.into(), b"churn");
            anyhow::Ok(())
        };
        // A failed or timed-out round is simply tried again at the next one.
        let _ = tokio::time::timeout(Duration::from_secs(10), once).await;
        tokio::time::sleep(every.mul_f64(rng.random_range(0.5..1.5))).await;
    }
    Ok(())
}

async fn agent(
    i: usize,
    ep: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    args: Arc<Args>,
    totals: Arc<Totals>,
    start: Instant,
) -> anyhow::Result<()> {
    let name = format!("load-{i}");
    // A thousand handshakes at once can time out, and a hello that waits too long is
    // closed by the aggregator: try again, as a real agent would.
    let mut attempt = 0;
    let (conn, mut send, mut recv) = loop {
        attempt += 1;
        let session = async {
            let conn = ep
                .connect_with(cfg.clone(), args.aggregator, tls::SERVER_NAME)?
                .await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            frame::write(
                &mut send,
                &ClientMsg::Hello(Hello {
                    agent: name.clone(),
                    session: rand::random(),
                    software: "loadgen".into(),
                    site: Some(format!("site-{}", i % 10)),
                    isp: None,
                }),
            )
            .await?;
            match frame::read::<ServerMsg, _>(&mut recv, DEFAULT_MAX_FRAME).await? {
                Some(ServerMsg::Welcome { .. }) => anyhow::Ok((conn, send, recv)),
                other => bail!("no welcome: {other:?}"),
            }
        };
        match session.await {
            Ok(s) => break s,
            Err(e) if attempt < 5 => {
                totals.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                let _ = e;
            }
            Err(e) => return Err(anyhow!("{name}: connect: {e:#}")),
        }
    };
    let sent_at: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
    let (sent2, totals2, measure_from) = (sent_at.clone(), totals.clone(), start + args.warmup);
    let reader = tokio::spawn(async move {
        while let Ok(Some(msg)) = frame::read::<ServerMsg, _>(&mut recv, DEFAULT_MAX_FRAME).await {
            match msg {
                ServerMsg::Ack { seq } => {
                    let now = Instant::now();
                    let mut q = sent2.lock().unwrap_or_else(|e| e.into_inner());
                    while let Some((s, t)) = q.pop_front() {
                        if s == seq {
                            if t >= measure_from {
                                totals2.acked.fetch_add(1, Ordering::Relaxed);
                                if let Some(h) = totals2
                                    .latency_us
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .as_mut()
                                {
                                    let _ = h.record((now - t).as_micros() as u64);
                                }
                            }
                            break;
                        }
                    }
                }
                ServerMsg::Refused { .. } => {
                    totals2.refused.fetch_add(1, Ordering::Relaxed);
                }
                ServerMsg::Welcome { .. } | ServerMsg::Renewed { .. } | ServerMsg::Peers { .. } => {
                }
            }
        }
    });
    let paths = targets(&args, i);
    let mut last = vec![None; paths.len()];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(i as u64);
    // Spread the agents over the interval, as real agents started at different times are.
    let offset = args.interval.mul_f64(i as f64 / args.agents as f64);
    let mut tick = tokio::time::interval_at((start + offset).into(), args.interval);
    let end = start + args.warmup + args.duration;
    let mut seq = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        seq += 1;
        let msg = report(&name, seq, &paths, &mut last, &args, &mut rng);
        let bytes = frame::encode(&msg).map_err(|e| anyhow!("encode: {e}"))?;
        sent_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((seq, Instant::now()));
        send.write_all(&bytes).await?;
    }
    // Let the last acknowledgements arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    reader.abort();
    conn.close(0u32.into(), b"done");
    Ok(())
}

/// (RSS in KiB, user + system CPU ticks) of a process.
fn proc_stats(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(parse_args()?);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_dir = args.state_dir.join("ca");
    if !ca_dir.join("ca.crt").exists() {
        bail!(
            "no CA in {} (start the aggregator with this --state-dir first)",
            ca_dir.display()
        );
    }
    let ca = Ca::load_or_create(&ca_dir)?;
    eprintln!("loadgen: issuing {} agent certificates", args.agents);
    let mut configs = Vec::with_capacity(args.agents);
    // Valid for the whole run and an hour more: an hour, as it was, expired in the middle
    // of a soak with an hour of warm-up, and every handshake after was refused.
    let valid = args.warmup + args.duration + Duration::from_secs(3600);
    for i in 0..args.agents {
        let cert = ca.issue_agent(&format!("load-{i}"), valid)?;
        let rustls_cfg = tls::client_config(ca.cert_pem(), cert.identity()?)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)
            .map_err(|e| anyhow!("QUIC TLS configuration: {e}"))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        cfg.transport_config(Arc::new(transport));
        configs.push(cfg);
    }
    // One runtime thread: the aggregator gets the other core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let totals = Arc::new(Totals {
            latency_us: Mutex::new(Some(Histogram::new(3)?)),
            ..Totals::default()
        });
        let endpoints: Vec<quinn::Endpoint> = (0..8)
            .map(|_| quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")))
            .collect::<Result<_, _>>()?;
        let start = Instant::now() + Duration::from_secs(2);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, cfg) in configs.into_iter().enumerate() {
            let ep = endpoints[i % endpoints.len()].clone();
            match args.churn {
                Some(every) => tasks.spawn(churner(
                    i,
                    ep,
                    cfg,
                    args.clone(),
                    totals.clone(),
                    start,
                    every,
                )),
                None => tasks.spawn(agent(i, ep, cfg, args.clone(), totals.clone(), start)),
            };
        }
        tokio::time::sleep_until((start + args.warmup).into()).await;
        let before = args.pid.and_then(proc_stats);
        let stages_before = args.metrics.as_deref().map(ingest_latency);
        eprintln!(
            "loadgen: {} agents × {} paths every {:?}{}; measuring for {:?}",
            args.agents,
            args.paths,
            args.interval,
            args.churn
                .map(|c| format!(", reconnecting every {c:?}"))
                .unwrap_or_default(),
            args.duration
        );
        let measured = Instant::now();
        match (args.pid, args.rss_every) {
            (Some(pid), Some(every)) => {
                while measured.elapsed() < args.duration {
                    if let Some((rss, _)) = proc_stats(pid) {
                        let heap = match args.metrics.clone() {
                            Some(url) => tokio::task::spawn_blocking(move || allocator(&url))
                                .await
                                .unwrap_or_default(),
                            None => String::new(),
                        };
                        println!(
                            "rss t={:>4}s {:.1} MiB (connections so far: {}){heap}",
                            measured.elapsed().as_secs(),
                            rss as f64 / 1024.0,
                            totals.connections.load(Ordering::Relaxed)
                        );
                    }
                    tokio::time::sleep(every.min(args.duration.saturating_sub(measured.elapsed())))
                        .await;
                }
            }
            _ => tokio::time::sleep(args.duration).await,
        }
        let after = args.pid.and_then(proc_stats);
        let acked = totals.acked.load(Ordering::Relaxed);
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                failed += 1;
                if failed <= 3 {
                    eprintln!("loadgen: agent failed: {e:#}");
                }
            }
        }
        let secs = args.duration.as_secs_f64();
        let offered = args.agents as f64 * args.paths as f64 / args.interval.as_secs_f64();
        let applied = acked as f64 * args.paths as f64 / secs;
        println!(
            "path-reports applied: {applied:.0}/s (offered {offered:.0}/s, ratio {:.3}); reports acknowledged: {acked}; refused: {}; agents failed: {failed}; sessions retried: {}; connections: {}",
            applied / offered,
            totals.refused.load(Ordering::Relaxed),
            totals.retried.load(Ordering::Relaxed),
            totals.connections.load(Ordering::Relaxed)
        );
        if let Some(h) = totals
            .latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            println!(
                "send-to-ack: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal: p99 < 100 ms)",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            );
        }
        if let (Some(url), Some(b)) = (args.metrics.as_deref(), stages_before) {
            let a = ingest_latency(url);
            for (stage, what) in [("applied", "receive-to-applied"), ("acked", "receive-to-ack")] {
                match quantile_bound(b.get(stage), a.get(stage), 0.99) {
                    Some((le, n)) => println!(
                        "{what} at the aggregator: p99 <= {:.1} ms (bucket bound; {n} reports; goal for applied: p99 < 100 ms)",
                        le * 1000.0
                    ),
                    None => println!("{what} at the aggregator: no reports in the interval"),
                }
            }
        }
        if let (Some((_, c0)), Some((rss, c1))) = (before, after) {
            let hz = 100.0;
            let paths = (args.agents * args.paths) as f64;
            println!(
                "aggregator: RSS {:.1} MiB = {:.2} KiB per active path (goal <= 8 KB); CPU {:.2} cores{}",
                rss as f64 / 1024.0,
                rss as f64 / paths,
                (c1 - c0) as f64 / hz / secs,
                args.metrics.as_deref().map(allocator).unwrap_or_default()
            );
        }
        anyhow::Ok(())
    })
}

/// The aggregator's `/metrics` text (empty, with a message, when it cannot be read).
fn fetch(url: &str) -> String {
    match ureq::get(url).call() {
        Ok(mut r) => r.body_mut().read_to_string().unwrap_or_default(),
        Err(e) => {
            eprintln!("loadgen: {url}: {e}");
            String::new()
        }
    }
}

/// `; allocator: allocated A, active B, resident C, retained D MiB` from the aggregator's
/// `pathpulse_allocator_bytes{kind}` (how much of its RSS is live data), or nothing.
fn allocator(url: &str) -> String {
    let text = fetch(url);
    let kinds: Vec<String> = ["allocated", "active", "resident", "retained"]
        .iter()
        .filter_map(|kind| {
            let prefix = format!("pathpulse_allocator_bytes{{kind=\"{kind}\"}} ");
            let v: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))?
                .trim()
                .parse()
                .ok()?;
            Some(format!("{kind} {:.1}", v / f64::from(1 << 20)))
        })
        .collect();
    match kinds.is_empty() {
        true => String::new(),
        false => format!("; allocator: {} MiB", kinds.join(", ")),
    }
}

/// `pathpulse_ingest_latency_seconds` by stage: cumulative counts per `le` bound.
fn ingest_latency(url: &str) -> std::collections::HashMap<String, Vec<(f64, u64)>> {
    let mut out: std::collections::HashMap<String, Vec<(f64, u64)>> = Default::default();
    let text = fetch(url);
    if text.is_empty() {
        return out;
    }
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("pathpulse_ingest_latency_seconds_bucket{") else {
            continue;
        };
        let label = |name: &str| {
            let at = rest.find(&format!("{name}=\""))? + name.len() + 2;
            rest[at..].split('"').next().map(str::to_string)
        };
        let (Some(stage), Some(le)) = (label("stage"), label("le")) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let n = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(n) = n {
            out.entry(stage).or_default().push((le, n as u64));
        }
    }
    out
}

/// The smallest bucket bound under which `q` of the reports between two reads fall, and
/// how many reports that was.
fn quantile_bound(
    before: Option<&Vec<(f64, u64)>>,
    after: Option<&Vec<(f64, u64)>>,
    q: f64,
) -> Option<(f64, u64)> {
    let after = after?;
    let at = |le: f64| {
        before
            .and_then(|b| b.iter().find(|(l, _)| *l == le))
            .map_or(0, |(_, n)| *n)
    };
    let deltas: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| (le, n.saturating_sub(at(le))))
        .collect();
    let total = deltas.iter().map(|d| d.1).max()?;
    if total == 0 {
        return None;
    }
    deltas
        .iter()
        .find(|(_, n)| *n as f64 >= q * total as f64)
        .map(|&(le, _)| (le, total))
}
