//! What an ICMP socket reads (replies and error-queue copies, IPv4 and IPv6, with or
//! without link and IP headers), parsed and then matched against probes in flight. The
//! matcher (and the UDP hop probes' quoted-header reader) must never panic and must never count a reply for a probe that was not sent.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pathpulse_agent::probe::hop_udp::{quoted_udp, ttl_of_len, udp_len};
use pathpulse_agent::probe::icmp_socket::{Family, parse_packet};
use pathpulse_agent::probe::matcher::{Matcher, Outcome, ReplyMeta, decode_payload};

const TOKEN: u64 = 0x7061_7468_7075_6c73;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, packet)) = data.split_first() else {
        return;
    };
    let family = if flags & 1 == 0 {
        Family::V4
    } else {
        Family::V6
    };
    let errqueue = flags & 2 != 0;
    let Some(p) = parse_packet(family, packet, errqueue) else {
        return;
    };
    assert!(p.payload.len() + 8 <= packet.len());
    // An ICMP error quoting a UDP hop probe: the TTL comes back from the quoted length.
    if let Some((_, _, _, len)) = quoted_udp(family, p.message) {
        if let Some(ttl) = ttl_of_len(len) {
            assert_eq!(udp_len(ttl), len);
        }
    }
    let _ = decode_payload(p.payload);
    let t0 = Instant::now();
    let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
    let addr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for target in 0..3 {
        let id = m.allocate();
        m.sent(id, target, addr, t0, Duration::from_secs(1));
    }
    let meta = ReplyMeta {
        src: addr,
        ident: (flags & 4 != 0).then_some(p.ident),
        seq: p.seq,
        payload: p.payload,
        rx_mono: t0 + Duration::from_micros(u64::from(flags)),
        rx_kernel: None,
    };
    for _ in 0..2 {
        if let Outcome::Reply { target, .. } = m.reply(&meta) {
            assert!(target < 3);
        }
    }
    let _ = m.expire(t0 + Duration::from_secs(2));
});
