//! Stateful STAMP Session-Reflector (RFC 8762 §4.3). The core is pure: it takes a
//! datagram, where and when it arrived, and returns the reply or why it is dropped.
//!
//! - A session is (source address, source port, SSID); each has its own reflector sequence
//!   number, so the sender can tell forward from reverse loss. The table is bounded; idle
//!   sessions expire.
//! - Each source address has a token bucket; the table of buckets is bounded too.
//! - The reply is never larger than the request (no amplification): 44 bytes, or the
//!   request's length when the sender padded (symmetric size, as TWAMP-Light expects).
//! - Truncated, oversize and malformed datagrams are counted by reason and never answered.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pathpulse_wire::stamp::ReflectorCounts;
use tokio_util::sync::CancellationToken;

use super::clock::{ClockState, ClockSync};
use super::packet::{
    AUTH_PACKET_LEN, NtpTimestamp, PACKET_LEN, PacketError, ReflectorPacket, SenderPacket, StampKey,
};
use super::socket::{StampSocket, UdpEvent};
use crate::backoff::Backoff;
use crate::shared::Shared;

/// The IANA port of STAMP.
pub const DEFAULT_PORT: u16 = 862;
/// Largest request answered (a 1500-byte MTU minus IPv4 and UDP headers).
pub const MAX_REQUEST: usize = 1472;
/// Default reflected packets per second per source address.
pub const DEFAULT_RATE: u32 = 200;
pub const MAX_SESSIONS: usize = 10_000;
pub const MAX_SOURCES: usize = 10_000;
/// A session idle this long is forgotten (its sequence starts again at 0).
pub const SESSION_IDLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Truncated,
    Oversize,
    Malformed,
    RateLimited,
    TableFull,
    /// Authenticated mode: HMAC missing or wrong.
    AuthFailed,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Packets per second per source address (also the burst).
    pub rate: u32,
    pub max_sessions: usize,
    pub max_sources: usize,
    pub session_idle: Duration,
    pub max_request: usize,
    /// Authenticated mode (RFC 8762 §4.4) with this key; unauthenticated when `None`.
    pub key: Option<StampKey>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: DEFAULT_RATE,
            max_sessions: MAX_SESSIONS,
            max_sources: MAX_SOURCES,
            session_idle: SESSION_IDLE,
            max_request: MAX_REQUEST,
            key: None,
        }
    }
}

#[derive(Debug)]
struct Session {
    next_seq: u32,
    last: Instant,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// When and how a request arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub src: SocketAddr,
    /// Receive time, ns since the Unix epoch (kernel stamp, else the wall clock).
    pub rx_ns: i64,
    pub ttl: Option<u8>,
    pub now: Instant,
}

#[derive(Debug)]
pub struct Reflector {
    limits: Limits,
    sessions: HashMap<(SocketAddr, u16), Session>,
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
}

impl Reflector {
    pub fn new(limits: Limits) -> Self {
        Reflector {
            limits,
            sessions: HashMap::new(),
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The reply to `req`, with `tx_ns` (ns since the epoch) as its transmit timestamp.
    pub fn reflect(
        &mut self,
        req: &[u8],
        at: Arrival,
        clock: ClockState,
        tx_ns: i64,
    ) -> Result<Vec<u8>, DropReason> {
        if req.len() > self.limits.max_request {
            return Err(DropReason::Oversize);
        }
        let decoded = match &self.limits.key {
            None => SenderPacket::decode(req),
            Some(k) => SenderPacket::decode_auth(req, k),
        };
        let p = decoded.map_err(|e| match e {
            PacketError::Truncated { .. } => DropReason::Truncated,
            PacketError::Malformed(_) => DropReason::Malformed,
            PacketError::BadHmac => DropReason::AuthFailed,
        })?;
        self.sweep(at.now);
        self.take_token(at.src.ip(), at.now)?;
        let key = (at.src, p.ssid);
        if !self.sessions.contains_key(&key) && self.sessions.len() >= self.limits.max_sessions {
            return Err(DropReason::TableFull);
        }
        let s = self.sessions.entry(key).or_insert(Session {
            next_seq: 0,
            last: at.now,
        });
        let seq = s.next_seq;
        s.next_seq = s.next_seq.wrapping_add(1);
        s.last = at.now;
        let reply = ReflectorPacket {
            seq,
            timestamp: NtpTimestamp::from_unix_ns(tx_ns),
            error: clock.error_estimate(),
            ssid: p.ssid,
            receive_timestamp: NtpTimestamp::from_unix_ns(at.rx_ns),
            sender_seq: p.seq,
            sender_timestamp: p.timestamp,
            sender_error: p.error,
            sender_ttl: at.ttl.unwrap_or(0),
        };
        let (mut out, min) = match &self.limits.key {
            None => (reply.encode().to_vec(), PACKET_LEN),
            Some(k) => (reply.encode_auth(k).to_vec(), AUTH_PACKET_LEN),
        };
        // Symmetric size: as long as the request (never longer), padding zeroed.
        out.resize(req.len().max(min), 0);
        Ok(out)
    }

    fn take_token(&mut self, ip: IpAddr, now: Instant) -> Result<(), DropReason> {
        let rate = f64::from(self.limits.rate.max(1));
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.limits.max_sources {
            return Err(DropReason::TableFull);
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(DropReason::RateLimited)
        }
    }

    /// At most once a second: forget idle sessions and full buckets.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let idle = self.limits.session_idle;
        self.sessions
            .retain(|_, s| now.saturating_duration_since(s.last) < idle);
        // A bucket idle for a second is full again: it carries no state worth keeping.
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(1));
    }
}

pub fn count(c: &mut ReflectorCounts, r: Result<(), DropReason>) {
    match r {
        Ok(()) => c.reflected += 1,
        Err(DropReason::Truncated) => c.truncated += 1,
        Err(DropReason::Oversize) => c.oversize += 1,
        Err(DropReason::Malformed) => c.malformed += 1,
        Err(DropReason::RateLimited) => c.rate_limited += 1,
        Err(DropReason::TableFull) => c.table_full += 1,
        Err(DropReason::AuthFailed) => c.auth_failed += 1,
    }
}

fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// The reflector's I/O shell: one socket, one loop.
pub struct ReflectorTask {
    pub socket: StampSocket,
    pub limits: Limits,
    pub shared: Arc<Shared>,
    /// Who says whether the clock is synchronized (the S bit of every reply).
    pub clock: ClockSync,
}

impl ReflectorTask {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut core = Reflector::new(self.limits.clone());
        let mut buf = vec![0u8; 64 * 1024];
        let mut events = Vec::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut clock_state = self.clock.query();
        let mut clock_read = Instant::now();
        tracing::info!(
            synchronized = clock_state.synchronized,
            clock_sync = %self.clock,
            "STAMP reflector: host clock"
        );
        loop {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.socket.recv_batch(&mut buf, &mut events) => r,
            };
            if let Err(e) = r {
                self.shared.health(|h| h.recv_errors += 1);
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, backoff = ?wait, "STAMP reflector receive failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            backoff.reset();
            if clock_read.elapsed() > Duration::from_secs(10) {
                clock_state = self.clock.query();
                clock_read = Instant::now();
            }
            for ev in events.drain(..) {
                let UdpEvent::Datagram {
                    src,
                    data,
                    rx_ns,
                    rx_mono,
                    ttl,
                } = ev
                else {
                    continue;
                };
                let at = Arrival {
                    src,
                    rx_ns: rx_ns.unwrap_or_else(wall_ns),
                    ttl,
                    now: rx_mono,
                };
                let outcome = match core.reflect(&data, at, clock_state, wall_ns()) {
                    Ok(reply) => {
                        if let Err(e) = self.socket.send_to(&reply, src).await {
                            self.shared.health(|h| h.send_errors += 1);
                            tracing::debug!(%src, error = %e, "STAMP reply not sent");
                        }
                        Ok(())
                    }
                    Err(why) => {
                        tracing::debug!(%src, len = data.len(), reason = ?why, "STAMP datagram dropped");
                        Err(why)
                    }
                };
                self.shared.health(|h| count(&mut h.reflector, outcome));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::stamp::packet::ErrorEstimate;

    fn req(seq: u32, ssid: u16) -> [u8; PACKET_LEN] {
        SenderPacket {
            seq,
            timestamp: NtpTimestamp::from_unix_ns(1_700_000_000_000_000_000),
            error: ErrorEstimate::new(false, 1_000),
            ssid,
        }
        .encode()
    }

    fn at(src: &str, now: Instant) -> Arrival {
        Arrival {
            src: src.parse().expect("addr"),
            rx_ns: 1_700_000_000_000_100_000,
            ttl: Some(61),
            now,
        }
    }

    #[test]
    fn reflects_with_per_session_sequence_ttl_and_timestamps() {
        let mut r = Reflector::new(Limits::default());
        let t = Instant::now();
        let c = ClockState::unknown();
        let tx = 1_700_000_000_000_150_000;
        for (i, sender_seq) in [10u32, 11, 15].into_iter().enumerate() {
            let out = r
                .reflect(&req(sender_seq, 7), at("192.0.2.1:5000", t), c, tx)
                .expect("reply");
            assert_eq!(out.len(), PACKET_LEN);
            let p = ReflectorPacket::decode(&out).expect("decode");
            assert_eq!(
                (p.seq, p.sender_seq, p.ssid, p.sender_ttl),
                (i as u32, sender_seq, 7, 61)
            );
            assert_eq!(p.receive_timestamp.to_unix_ns(), 1_700_000_000_000_100_000);
            assert_eq!(p.timestamp.to_unix_ns(), tx);
            assert!(!p.error.synchronized);
            assert!(
                out[38..40].iter().chain(&out[41..44]).all(|&b| b == 0),
                "MBZ"
            );
        }
        // Another SSID, or another port, is another session with its own sequence.
        let p = ReflectorPacket::decode(
            &r.reflect(&req(1, 8), at("192.0.2.1:5000", t), c, tx)
                .expect("r"),
        )
        .expect("d");
        assert_eq!(p.seq, 0);
        let p = ReflectorPacket::decode(
            &r.reflect(&req(1, 7), at("192.0.2.1:5001", t), c, tx)
                .expect("r"),
        )
        .expect("d");
        assert_eq!(p.seq, 0);
        assert_eq!(r.sessions(), 3);
    }

    #[test]
    fn never_amplifies_and_drops_bad_datagrams_by_reason() {
        let mut r = Reflector::new(Limits::default());
        let t = Instant::now();
        let c = ClockState::unknown();
        let mut padded = req(1, 1).to_vec();
        padded.extend_from_slice(&[0x55; 56]);
        let out = r
            .reflect(&padded, at("192.0.2.1:1", t), c, 0)
            .expect("reply");
        assert_eq!(out.len(), padded.len(), "symmetric, never larger");
        assert!(
            out[PACKET_LEN..].iter().all(|&b| b == 0),
            "padding not echoed"
        );
        assert_eq!(
            r.reflect(b"hello", at("192.0.2.1:1", t), c, 0),
            Err(DropReason::Truncated)
        );
        assert_eq!(
            r.reflect(&[], at("192.0.2.1:1", t), c, 0),
            Err(DropReason::Truncated)
        );
        assert_eq!(
            r.reflect(&[0u8; 44], at("192.0.2.1:1", t), c, 0),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            r.reflect(&vec![1u8; MAX_REQUEST + 1], at("192.0.2.1:1", t), c, 0),
            Err(DropReason::Oversize)
        );
    }

    #[test]
    fn authenticated_mode_answers_only_the_right_key() {
        let key = StampKey::new(vec![0x42; 32]).expect("key");
        let mut r = Reflector::new(Limits {
            key: Some(key.clone()),
            ..Limits::default()
        });
        let t = Instant::now();
        let c = ClockState::unknown();
        let p = SenderPacket::decode(&req(5, 3)).expect("p");
        let out = r
            .reflect(&p.encode_auth(&key), at("192.0.2.1:1", t), c, 0)
            .expect("reply");
        assert_eq!(out.len(), AUTH_PACKET_LEN);
        let back = ReflectorPacket::decode_auth(&out, &key).expect("signed reply");
        assert_eq!((back.sender_seq, back.ssid, back.sender_ttl), (5, 3, 61));
        let other = StampKey::new(vec![0x43; 32]).expect("key");
        assert_eq!(
            r.reflect(&p.encode_auth(&other), at("192.0.2.1:1", t), c, 0),
            Err(DropReason::AuthFailed)
        );
        // An unauthenticated packet is too short for this reflector.
        assert_eq!(
            r.reflect(&req(6, 3), at("192.0.2.1:1", t), c, 0),
            Err(DropReason::Truncated)
        );
    }

    #[test]
    fn rate_limit_per_source_and_bounded_tables() {
        let mut r = Reflector::new(Limits {
            rate: 10,
            max_sessions: 3,
            max_sources: 2,
            ..Limits::default()
        });
        let t = Instant::now();
        let c = ClockState::unknown();
        let ok = (0..20)
            .filter(|&i| r.reflect(&req(i, 1), at("192.0.2.1:1", t), c, 0).is_ok())
            .count();
        assert_eq!(ok, 10, "burst of `rate`, then limited");
        assert_eq!(
            r.reflect(&req(99, 1), at("192.0.2.1:1", t), c, 0),
            Err(DropReason::RateLimited)
        );
        // Another source has its own bucket.
        assert!(r.reflect(&req(0, 1), at("192.0.2.2:1", t), c, 0).is_ok());
        // Tokens come back with time: 0.5 s at 10/s = 5.
        let later = t + Duration::from_millis(500);
        let ok = (0..20)
            .filter(|&i| {
                r.reflect(&req(i, 1), at("192.0.2.1:1", later), c, 0)
                    .is_ok()
            })
            .count();
        assert_eq!(ok, 5);
        // A third source while two are tracked: refused, not growing the table.
        assert_eq!(
            r.reflect(&req(0, 1), at("192.0.2.3:1", later), c, 0),
            Err(DropReason::TableFull)
        );
        // Sessions: 2 exist; one more fits, then the table is full.
        assert!(
            r.reflect(&req(0, 2), at("192.0.2.2:1", later), c, 0)
                .is_ok()
        );
        assert_eq!(
            r.reflect(&req(0, 3), at("192.0.2.2:1", later), c, 0),
            Err(DropReason::TableFull)
        );
        // Idle sessions and sources are forgotten.
        let much_later = t + SESSION_IDLE + Duration::from_secs(1);
        assert!(
            r.reflect(&req(0, 3), at("192.0.2.3:1", much_later), c, 0)
                .is_ok()
        );
        assert_eq!(r.sessions(), 1);
    }
}
