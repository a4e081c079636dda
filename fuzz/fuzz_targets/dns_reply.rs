//! Datagrams arriving on a DNS probe's socket: whatever the bytes (a response, a forgery
//! with the right id, garbage), the matcher answers with an outcome, never a panic, and a
//! query is answered at most once.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pathpulse_agent::probe::dns::query::{Outcome, Queries, fqdn};

fuzz_target!(|data: &[u8]| {
    let server: SocketAddr = "192.0.2.53:53".parse().expect("addr");
    let mut qs = Queries::new(fqdn("example.test").expect("name"), Duration::from_secs(10));
    let (id, q) = qs.next_query();
    let t0 = Instant::now();
    qs.sent(id, q, server, t0, Duration::from_secs(2));
    // As sent, and with the id of the query in flight (so the parser's deeper paths and
    // the question check are reached).
    let mut with_id = data.to_vec();
    if with_id.len() >= 2 {
        with_id[..2].copy_from_slice(&id.to_be_bytes());
    }
    let mut answers = 0;
    for d in [data, &with_id[..], &with_id[..]] {
        qs.tx_stamp(d, 1);
        if let Outcome::Answer { .. } | Outcome::Failed { .. } = qs.reply(server, d, t0, Some(2)) {
            answers += 1;
        }
    }
    assert!(answers <= 1, "a query answered {answers} times");
    let _ = qs.expire(t0 + Duration::from_secs(3));
});
