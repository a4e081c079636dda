//! Sparse histogram micro benchmarks: record a sample, merge, quantile.
//! `cargo bench -p pathpulse-wire --bench hist`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pathpulse_wire::SparseHist;

/// `n` RTTs around `base_us` (deterministic spread, about ±10%).
fn rtts(n: u64, base_us: u64) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| base_us + (i * 7919) % (base_us / 5 + 1) - base_us / 10)
}

fn hist(n: u64, base_us: u64) -> SparseHist {
    let mut h = SparseHist::new();
    rtts(n, base_us).for_each(|v| h.record(v));
    h
}

fn benches(c: &mut Criterion) {
    let mut h = hist(1_000, 20_000);
    let mut i = 0u64;
    c.bench_function("record one sample into a 1,000-sample histogram", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            h.record(black_box(18_000 + i % 4_000));
        })
    });
    let interval = hist(5, 20_000);
    let slot = hist(60, 20_000);
    c.bench_function("merge a 5-sample report into a 60-sample window", |b| {
        b.iter(|| {
            let mut s = slot.clone();
            s.merge(black_box(&interval));
            s
        })
    });
    let (a, other) = (hist(1_000, 20_000), hist(1_000, 25_000));
    c.bench_function("merge two 1,000-sample histograms", |b| {
        b.iter(|| {
            let mut s = a.clone();
            s.merge(black_box(&other));
            s
        })
    });
    let slots: Vec<SparseHist> = (0..18).map(|k| hist(5, 20_000 + k * 100)).collect();
    c.bench_function("merge 18 window slots at once (SparseHist::merged)", |b| {
        b.iter(|| SparseHist::merged(black_box(&slots)))
    });
    let big = hist(10_000, 20_000);
    c.bench_function("quantile p99 of a 10,000-sample histogram", |b| {
        b.iter(|| black_box(&big).quantile(black_box(0.99)))
    });
}

criterion_group!(hist_benches, benches);
criterion_main!(hist_benches);
