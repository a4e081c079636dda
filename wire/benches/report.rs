//! Encode and decode of a report frame: 100 paths at 1 probe/s over a 5 s interval.
//! `cargo bench -p pathpulse-wire --bench report` (also prints the bytes per path-report)

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pathpulse_wire::frame::{self, DEFAULT_MAX_FRAME};
use pathpulse_wire::{AgentHealth, PathReport, ProbeKind, Report};

fn report(paths: usize) -> Report {
    let paths = (0..paths)
        .map(|i| {
            let mut p = PathReport {
                dst: format!("192.0.2.{}", i % 250),
                probe: Some(ProbeKind::Icmp),
                sent: 5,
                received: 5,
                jitter_us: Some(40),
                ..Default::default()
            };
            let mut prev = None;
            for k in 0..5u64 {
                let v = 10_000 + (i as u64 * 37 + k * 101) % 600;
                p.rtt.record(v);
                p.rtt_sum_us += v;
                if let Some(prev) = prev {
                    p.ipdv.record(u64::abs_diff(v, prev));
                }
                prev = Some(v);
            }
            p
        })
        .collect();
    Report {
        seq: 7,
        agent: "bench-agent".into(),
        interval_start_ms: 1_700_000_000_000,
        interval_ms: 5_000,
        paths,
        health: AgentHealth::default(),
    }
}

fn benches(c: &mut Criterion) {
    let r = report(100);
    let bytes = frame::encode(&r).expect("encode");
    println!(
        "report frame: {} bytes for 100 path-reports ({} B per path-report, 1 probe/s, 5 s)",
        bytes.len(),
        bytes.len() / 100
    );
    c.bench_function("encode a 100-path report frame", |b| {
        b.iter(|| frame::encode(black_box(&r)).expect("encode"))
    });
    c.bench_function("decode a 100-path report frame", |b| {
        b.iter(|| frame::decode::<Report>(black_box(&bytes), DEFAULT_MAX_FRAME).expect("decode"))
    });
}

criterion_group!(report_benches, benches);
criterion_main!(report_benches);
