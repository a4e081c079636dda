//! `/metrics` render time and size for about 100,000 series: a store holding 1,300 paths
//! (100 agents × 13 targets, about 79 series each) with full 5 min windows, rendered as the HTTP handler does
//! (OpenMetrics text, then the classic text format curl and promtool get).
//! `cargo bench -p pathpulse-metrics --bench exposition` (prints series and bytes first)

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use pathpulse_metrics::export::{self, Role};
use pathpulse_metrics::{SharedStore, Store};
use pathpulse_wire::{AgentHealth, PathReport, ProbeKind, Report};

const AGENTS: usize = 100;
const TARGETS: usize = 13;
const T0: u64 = 1_700_000_000_000;
/// 5 s reports for 6 minutes: every window full.
const REPORTS: u64 = 72;

fn now() -> u64 {
    T0 + REPORTS * 5_000
}

fn store() -> SharedStore {
    let mut st = Store::new(60_000);
    for a in 0..AGENTS {
        st.hello(
            &format!("agent-{a:03}"),
            Some(format!("site-{}", a % 10)),
            Some(format!("isp-{}", a % 3)),
            None,
        );
    }
    for k in 0..REPORTS {
        let start = T0 + k * 5_000;
        for a in 0..AGENTS {
            let paths = (0..TARGETS)
                .map(|t| {
                    let mut p = PathReport {
                        dst: format!("agent-{:03}", (a + t + 1) % AGENTS),
                        probe: Some(ProbeKind::Icmp),
                        sent: 5,
                        lost: u32::from((a + t + k as usize).is_multiple_of(50)),
                        jitter_us: Some(120),
                        ..Default::default()
                    };
                    let mut prev = None;
                    for s in 0..(5 - p.lost) {
                        let v = 8_000
                            + ((a * 31 + t * 17 + k as usize * 7 + s as usize) % 900) as u64 * 11;
                        p.rtt.record(v);
                        p.rtt_sum_us += v;
                        p.received += 1;
                        if let Some(prev) = prev {
                            p.ipdv.record(u64::abs_diff(v, prev));
                        }
                        prev = Some(v);
                    }
                    p
                })
                .collect();
            st.apply(
                &Report {
                    seq: k,
                    agent: format!("agent-{a:03}"),
                    interval_start_ms: start,
                    interval_ms: 5_000,
                    paths,
                    health: AgentHealth::default(),
                },
                start + 5_000,
            );
        }
    }
    Arc::new(Mutex::new(st))
}

fn render(reg: &prometheus_client::registry::Registry) -> String {
    export::openmetrics_to_prometheus(&export::encode_text(reg))
}

fn benches(c: &mut Criterion) {
    let reg = export::registry(store(), Role::Aggregator, now);
    let t = Instant::now();
    let text = render(&reg);
    let took = t.elapsed();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "/metrics: {series} series from {} paths, {:.1} MB, first render {:.0} ms (goal <= 300 ms for 100,000 series)",
        AGENTS * TARGETS,
        text.len() as f64 / 1e6,
        took.as_secs_f64() * 1e3
    );
    let mut g = c.benchmark_group("exposition");
    g.sample_size(10);
    g.bench_function("render /metrics, ~100,000 series (classic text)", |b| {
        b.iter(|| render(black_box(&reg)))
    });
    g.finish();
}

criterion_group!(exposition_benches, benches);
criterion_main!(exposition_benches);
