//! DNS queries of one target, pure: build a query (hickory-proto), decide what a datagram
//! from the network means, expire queries that were not answered in time.
//!
//! A reply answers a query when it parses as a DNS response, carries the id of a query in
//! flight, comes from the address and port that query went to, and repeats its question
//! (name, type A, class IN). Anything else is stray (counted by reason, never recorded):
//! a wrong source is `WrongSource`; a known id with another question (a forgery or a
//! confused server) or an unknown id is `UnknownProbe`; what does not parse is `NotOurs`.
//! Such a reply does not consume the query: the real answer can still come.
//!
//! RCODE: NOERROR and NXDOMAIN are answers (the server did its job; NXDOMAIN is a valid
//! answer about a name, and probing a name that does not exist is a legitimate way to
//! time a resolver without caching effects upstream). SERVFAIL, REFUSED and every other
//! code are failures: counted as lost, no RTT.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};

use crate::probe::matcher::{KernelNs, StrayReason};

/// A kernel RTT is trusted when no larger than the monotonic one plus this (as ICMP's).
const KERNEL_SLACK: Duration = Duration::from_millis(5);
/// Upper bound of remembered decided queries.
const MAX_RECENT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// NOERROR or NXDOMAIN within the timeout.
    Answer {
        rtt: Duration,
        reordered: bool,
        kernel_timestamps: bool,
    },
    /// SERVFAIL, REFUSED or another error code: the query failed.
    Failed {
        rcode: ResponseCode,
    },
    /// An answer after the timeout (the query was already counted lost).
    Late,
    Duplicate,
    Stray(StrayReason),
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    dst: SocketAddr,
    sent_mono: Instant,
    tx_kernel: Option<KernelNs>,
    query: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Decided {
    seq: u64,
    dst: SocketAddr,
    answered: bool,
}

#[derive(Debug)]
pub struct Queries {
    name: Name,
    next_seq: u64,
    last_answered: u64,
    inflight: HashMap<u16, InFlight>,
    deadlines: BinaryHeap<Reverse<(Instant, u64, u16)>>,
    recent: HashMap<u16, Decided>,
    recent_order: VecDeque<(Instant, u16, u64)>,
    retention: Duration,
}

/// The name as a fully qualified DNS name (`example.test` → `example.test.`).
pub fn fqdn(name: &str) -> Result<Name, String> {
    let text = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|e| format!("`{name}` is not a DNS name: {e}"))
}

/// A recursive query for the name's A records.
pub fn build(id: u16, name: &Name) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), RecordType::A));
    // Encoding a message with one valid question cannot fail; an empty datagram would be
    // counted as a send error by the socket layer if it ever did.
    m.to_vec().unwrap_or_default()
}

impl Queries {
    pub fn new(name: Name, retention: Duration) -> Self {
        Queries {
            name,
            next_seq: 1,
            last_answered: 0,
            inflight: HashMap::new(),
            deadlines: BinaryHeap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            retention,
        }
    }

    /// A fresh random id (not in flight, not remembered) and the query carrying it.
    pub fn next_query(&self) -> (u16, Vec<u8>) {
        let mut id: u16 = rand::random();
        while self.inflight.contains_key(&id) || self.recent.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        (id, build(id, &self.name))
    }

    /// The query left the socket toward `dst` at `sent_mono`.
    pub fn sent(
        &mut self,
        id: u16,
        query: Vec<u8>,
        dst: SocketAddr,
        sent_mono: Instant,
        timeout: Duration,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight.insert(
            id,
            InFlight {
                seq,
                dst,
                sent_mono,
                tx_kernel: None,
                query,
            },
        );
        self.deadlines.push(Reverse((sent_mono + timeout, seq, id)));
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((t, _, _))| *t)
    }

    /// A kernel TX stamp whose packet copy ends with `tail`: the oldest unstamped query
    /// whose bytes end the same way (the id is in the tail unless the query is longer).
    pub fn tx_stamp(&mut self, tail: &[u8], tx: KernelNs) {
        let hit = self
            .inflight
            .values_mut()
            .filter(|q| q.tx_kernel.is_none())
            .filter(|q| {
                let n = q.query.len().min(tail.len());
                n > 0 && q.query[q.query.len() - n..] == tail[tail.len() - n..]
            })
            .min_by_key(|q| q.seq);
        if let Some(q) = hit {
            q.tx_kernel = Some(tx);
        }
    }

    fn question_matches(&self, m: &Message) -> bool {
        m.queries.len() == 1
            && m.queries[0].name() == &self.name
            && m.queries[0].query_type() == RecordType::A
            && m.queries[0].query_class() == DNSClass::IN
    }

    pub fn reply(
        &mut self,
        src: SocketAddr,
        data: &[u8],
        rx_mono: Instant,
        rx_kernel: Option<KernelNs>,
    ) -> Outcome {
        let Ok(m) = Message::from_vec(data) else {
            return Outcome::Stray(StrayReason::NotOurs);
        };
        if m.metadata.message_type != MessageType::Response {
            return Outcome::Stray(StrayReason::NotOurs);
        }
        let id = m.metadata.id;
        if let Some(q) = self.inflight.get(&id) {
            if q.dst != src {
                return Outcome::Stray(StrayReason::WrongSource);
            }
            if !self.question_matches(&m) {
                return Outcome::Stray(StrayReason::UnknownProbe);
            }
            let Some(q) = self.inflight.remove(&id) else {
                return Outcome::Stray(StrayReason::UnknownProbe);
            };
            self.remember(id, q.seq, q.dst, true, rx_mono);
            let rcode = m.metadata.response_code;
            if !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
                return Outcome::Failed { rcode };
            }
            let mono = rx_mono.saturating_duration_since(q.sent_mono);
            let kernel = match (q.tx_kernel, rx_kernel) {
                (Some(tx), Some(rx)) if rx >= tx => Some(Duration::from_nanos((rx - tx) as u64)),
                _ => None,
            }
            .filter(|k| *k <= mono + KERNEL_SLACK);
            let reordered = q.seq < self.last_answered;
            self.last_answered = self.last_answered.max(q.seq);
            return Outcome::Answer {
                rtt: kernel.unwrap_or(mono),
                reordered,
                kernel_timestamps: kernel.is_some(),
            };
        }
        let question_ok = self.question_matches(&m);
        match self.recent.get_mut(&id) {
            Some(d) if d.dst != src => Outcome::Stray(StrayReason::WrongSource),
            Some(_) if !question_ok => Outcome::Stray(StrayReason::UnknownProbe),
            Some(d) if d.answered => Outcome::Duplicate,
            Some(d) => {
                d.answered = true;
                Outcome::Late
            }
            None => Outcome::Stray(StrayReason::UnknownProbe),
        }
    }

    /// Queries whose deadline passed: how many are lost now.
    pub fn expire(&mut self, now: Instant) -> u32 {
        let mut lost = 0;
        while let Some(&Reverse((t, seq, id))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            if self.inflight.get(&id).is_some_and(|q| q.seq == seq)
                && let Some(q) = self.inflight.remove(&id)
            {
                lost += 1;
                self.remember(id, q.seq, q.dst, false, now);
            }
        }
        while let Some(&(t, id, seq)) = self.recent_order.front() {
            if now.saturating_duration_since(t) < self.retention && self.recent.len() <= MAX_RECENT
            {
                break;
            }
            self.recent_order.pop_front();
            if self.recent.get(&id).is_some_and(|d| d.seq == seq) {
                self.recent.remove(&id);
            }
        }
        lost
    }

    fn remember(&mut self, id: u16, seq: u64, dst: SocketAddr, answered: bool, at: Instant) {
        self.recent.insert(id, Decided { seq, dst, answered });
        self.recent_order.push_back((at, id, seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn server() -> SocketAddr {
        "10.0.0.53:53".parse().expect("addr")
    }

    fn answer(query: &[u8], rcode: ResponseCode, name: Option<&str>) -> Vec<u8> {
        let q = Message::from_vec(query).expect("query parses");
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.response_code = rcode;
        let n = name
            .map(|n| fqdn(n).expect("name"))
            .unwrap_or_else(|| q.queries[0].name().clone());
        m.add_query(Query::query(n, RecordType::A));
        m.to_vec().expect("encode")
    }

    fn setup() -> (Queries, u16, Vec<u8>, Instant) {
        let mut qs = Queries::new(fqdn("example.test").expect("name"), Duration::from_secs(10));
        let (id, q) = qs.next_query();
        let t0 = Instant::now();
        qs.sent(id, q.clone(), server(), t0, TIMEOUT);
        (qs, id, q, t0)
    }

    #[test]
    fn the_query_is_a_recursive_a_question() {
        let (_, id, q, _) = setup();
        let m = Message::from_vec(&q).expect("parses");
        assert_eq!(m.metadata.id, id);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.metadata.message_type, MessageType::Query);
        assert_eq!(m.queries[0].name().to_ascii(), "example.test.");
        assert_eq!(m.queries[0].query_type(), RecordType::A);
    }

    #[test]
    fn an_answer_is_matched_once_and_nxdomain_counts_as_an_answer() {
        let (mut qs, _, q, t0) = setup();
        let r = answer(&q, ResponseCode::NXDomain, None);
        let out = qs.reply(server(), &r, t0 + Duration::from_micros(300), None);
        assert_eq!(
            out,
            Outcome::Answer {
                rtt: Duration::from_micros(300),
                reordered: false,
                kernel_timestamps: false
            }
        );
        assert_eq!(qs.reply(server(), &r, t0, None), Outcome::Duplicate);
        assert_eq!(qs.in_flight(), 0);
    }

    #[test]
    fn servfail_and_refused_are_failures() {
        for rc in [ResponseCode::ServFail, ResponseCode::Refused] {
            let (mut qs, _, q, t0) = setup();
            let out = qs.reply(server(), &answer(&q, rc, None), t0, None);
            assert_eq!(out, Outcome::Failed { rcode: rc });
            assert_eq!(qs.in_flight(), 0);
        }
    }

    #[test]
    fn forged_and_stray_replies_are_counted_and_do_not_consume_the_query() {
        let (mut qs, _, q, t0) = setup();
        let good = answer(&q, ResponseCode::NoError, None);
        let elsewhere: SocketAddr = "10.0.0.66:53".parse().expect("addr");
        assert_eq!(
            qs.reply(elsewhere, &good, t0, None),
            Outcome::Stray(StrayReason::WrongSource)
        );
        let other_port: SocketAddr = "10.0.0.53:5353".parse().expect("addr");
        assert_eq!(
            qs.reply(other_port, &good, t0, None),
            Outcome::Stray(StrayReason::WrongSource)
        );
        let forged = answer(&q, ResponseCode::NoError, Some("evil.test"));
        assert_eq!(
            qs.reply(server(), &forged, t0, None),
            Outcome::Stray(StrayReason::UnknownProbe)
        );
        let mut wrong_id = good.clone();
        wrong_id[0] ^= 0xff;
        assert_eq!(
            qs.reply(server(), &wrong_id, t0, None),
            Outcome::Stray(StrayReason::UnknownProbe)
        );
        assert_eq!(
            qs.reply(server(), &q, t0, None),
            Outcome::Stray(StrayReason::NotOurs),
            "a query is not an answer"
        );
        assert_eq!(
            qs.reply(server(), b"\x00\x01garbage", t0, None),
            Outcome::Stray(StrayReason::NotOurs)
        );
        assert_eq!(
            qs.reply(server(), &good[..5], t0, None),
            Outcome::Stray(StrayReason::NotOurs)
        );
        assert!(matches!(
            qs.reply(server(), &good, t0, None),
            Outcome::Answer { .. }
        ));
    }

    #[test]
    fn unanswered_queries_are_lost_then_a_reply_is_late_once() {
        let (mut qs, _, q, t0) = setup();
        assert_eq!(qs.expire(t0 + TIMEOUT - Duration::from_millis(1)), 0);
        assert_eq!(qs.expire(t0 + TIMEOUT), 1);
        let r = answer(&q, ResponseCode::NoError, None);
        assert_eq!(qs.reply(server(), &r, t0 + TIMEOUT, None), Outcome::Late);
        assert_eq!(
            qs.reply(server(), &r, t0 + TIMEOUT, None),
            Outcome::Duplicate
        );
    }

    #[test]
    fn kernel_stamps_are_matched_by_the_query_bytes() {
        let (mut qs, _, q, t0) = setup();
        let (id2, q2) = qs.next_query();
        qs.sent(id2, q2.clone(), server(), t0, TIMEOUT);
        // The error queue returns the packet with its headers in front.
        let mut tail = vec![0x45u8; 28];
        tail.extend_from_slice(&q2);
        qs.tx_stamp(&tail, 1_000_000_000);
        let r2 = answer(&q2, ResponseCode::NoError, None);
        let out = qs.reply(
            server(),
            &r2,
            t0 + Duration::from_millis(1),
            Some(1_000_000_000 + 400_000),
        );
        assert_eq!(
            out,
            Outcome::Answer {
                rtt: Duration::from_micros(400),
                reordered: false,
                kernel_timestamps: true
            }
        );
        // The first query has no TX stamp: its RTT is monotonic, and it came back second.
        let r1 = answer(&q, ResponseCode::NoError, None);
        let out = qs.reply(server(), &r1, t0 + Duration::from_millis(2), Some(5));
        assert_eq!(
            out,
            Outcome::Answer {
                rtt: Duration::from_millis(2),
                reordered: true,
                kernel_timestamps: false
            }
        );
    }
}
