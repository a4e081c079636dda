//! Reply matching: a probe sent and its reply matched, with 10,000 probes in flight and
//! 100,000 decided ones remembered (10,000 targets at 1 probe/s, 10 s retention).
//! `cargo bench -p pathpulse-agent --bench matcher`

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use pathpulse_agent::probe::matcher::{Matcher, Outcome, ReplyMeta, encode_payload};

const TARGETS: u64 = 10_000;
const TOKEN: u64 = 0x5eed_cafe_f00d_0001;

fn addr(t: u64) -> IpAddr {
    IpAddr::from([127, 20, (t / 250) as u8, (t % 250 + 1) as u8])
}

fn benches(c: &mut Criterion) {
    let timeout = Duration::from_secs(1);
    let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(10));
    let mut now = Instant::now();
    let step = Duration::from_micros(100);
    let mut payload = encode_payload(TOKEN, 0, 56);
    // One round: a probe to the next target, the reply to an earlier one, expiry.
    let round = |m: &mut Matcher, now: &mut Instant, payload: &mut Vec<u8>| {
        let id = m.allocate();
        let t = id % TARGETS;
        m.sent(id, t as usize, addr(t), *now, timeout);
        *now += step;
        // Answer the probe sent 5,000 probes ago (0.5 s in flight).
        if let Some(old) = id.checked_sub(5_000).filter(|o| *o > 0) {
            payload[12..20].copy_from_slice(&old.to_be_bytes());
            let out = m.reply(&ReplyMeta {
                src: addr(old % TARGETS),
                ident: Some(7),
                seq: old as u16,
                payload,
                rx_mono: *now,
                rx_kernel: None,
            });
            assert!(matches!(out, Outcome::Reply { .. }), "{out:?}");
        }
        if id.is_multiple_of(100) {
            m.expire(*now);
        }
    };
    // Warm up to the steady state: 10 s of probes remembered.
    for _ in 0..(TARGETS * 12) {
        round(&mut m, &mut now, &mut payload);
    }
    c.bench_function(
        "send, match a reply, expire (steady state, 10,000 targets)",
        |b| b.iter(|| round(black_box(&mut m), &mut now, &mut payload)),
    );
}

criterion_group!(matcher_benches, benches);
criterion_main!(matcher_benches);
