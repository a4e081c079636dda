//! A Session-Sender's view of one STAMP session (one target), pure: probes in flight,
//! replies matched by sequence, RTT without the reflector's residence time, and the
//! attribution of lost probes to a direction.
//!
//! Direction: a stateful reflector numbers the packets it reflects in each session. When a
//! reply (sender seq `s`, reflector seq `r`) follows the previous reply in sender order
//! (`s0`, `r0`), the `k` probes between them were lost, and `r − r0 − 1` of them had been
//! reflected: those were lost on the way back, the other `k − (r − r0 − 1)` never reached
//! the reflector. A gap that does not fit (reflector restarted, forward duplicates) leaves
//! those probes unattributed rather than guessed. Attribution waits until every earlier
//! probe is decided, so reordering does not disturb it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::packet::ReflectorPacket;

/// A kernel RTT is trusted when it is no larger than the monotonic one plus this slack.
const KERNEL_SLACK: Duration = Duration::from_millis(5);
/// Upper bound of remembered decided probes per session.
const MAX_RECENT: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Probe number counted from 0 (the wire's 32-bit sequence never wraps here).
    number: i64,
    dst: SocketAddr,
    sent_mono: Instant,
    /// Wall-clock send time written into the packet (ns since the epoch).
    tx_wall_ns: i64,
    tx_kernel: Option<i64>,
}

/// How a reply arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub src: SocketAddr,
    pub rx_mono: Instant,
    pub rx_kernel: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reply {
        rtt: Duration,
        reordered: bool,
        kernel_timestamps: bool,
        /// (forward, reverse) one-way delays, when both ends said synchronized.
        owd: Option<(Duration, Duration)>,
    },
    Duplicate,
    Late,
    /// Not from the address the probe went to.
    WrongSource,
    /// A sequence this session never sent, or no longer remembers.
    Unknown,
}

/// Per-direction counts attributed since the last call to [`SenderSession::take_directions`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirCounts {
    pub attributed: u32,
    pub forward_lost: u32,
    pub reverse_lost: u32,
}

#[derive(Debug, Default)]
struct Directions {
    /// Last attributed reply: (sender probe number, counting from 0 without wrap; reflector
    /// sequence, wrapping). Before the first reply: (-1, u32::MAX), so the reflector's first
    /// number, 0, follows it.
    anchor: (i64, u32),
    /// Decided probes after the anchor: reflector seq when answered, None when lost.
    decided: BTreeMap<i64, Option<u32>>,
    /// Lost probes after the anchor, waiting for the next reply.
    pending_lost: u32,
    counts: DirCounts,
}

impl Directions {
    fn new() -> Self {
        Directions {
            anchor: (-1, u32::MAX),
            ..Directions::default()
        }
    }

    fn decide(&mut self, probe: i64, reflector_seq: Option<u32>) {
        if probe > self.anchor.0 {
            self.decided.insert(probe, reflector_seq);
        }
        self.settle();
    }

    fn settle(&mut self) {
        while let Some(d) = self.decided.remove(&(self.anchor.0 + 1)) {
            match d {
                None => {
                    self.pending_lost += 1;
                    self.anchor.0 += 1;
                }
                Some(r) => {
                    // Reflected between the two replies (wrapping arithmetic: the
                    // reflector's 32-bit number may wrap; a restart looks huge).
                    let back = r.wrapping_sub(self.anchor.1.wrapping_add(1));
                    if back <= self.pending_lost {
                        self.counts.attributed += self.pending_lost;
                        self.counts.reverse_lost += back;
                        self.counts.forward_lost += self.pending_lost - back;
                    }
                    self.counts.attributed += 1;
                    self.pending_lost = 0;
                    self.anchor = (self.anchor.0 + 1, r);
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct SenderSession {
    pub ssid: u16,
    /// Probes sent so far (the next probe's number); its low 32 bits are the sequence.
    sent_count: i64,
    inflight: BTreeMap<u32, InFlight>,
    recent: BTreeMap<u32, (SocketAddr, bool)>,
    recent_order: VecDeque<(Instant, u32)>,
    retention: Duration,
    highest_answered: Option<u32>,
    dirs: Directions,
}

impl SenderSession {
    pub fn new(ssid: u16, retention: Duration) -> Self {
        SenderSession {
            ssid,
            sent_count: 0,
            inflight: BTreeMap::new(),
            recent: BTreeMap::new(),
            recent_order: VecDeque::new(),
            retention,
            highest_answered: None,
            dirs: Directions::new(),
        }
    }

    /// Sequence number of the next probe (it is used only once [`Self::sent`] is called).
    pub fn next_seq(&self) -> u32 {
        self.sent_count as u32
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The probe with [`Self::next_seq`] left the socket.
    pub fn sent(&mut self, dst: SocketAddr, sent_mono: Instant, tx_wall_ns: i64) -> u32 {
        let seq = self.next_seq();
        let number = self.sent_count;
        self.sent_count += 1;
        self.inflight.insert(
            seq,
            InFlight {
                number,
                dst,
                sent_mono,
                tx_wall_ns,
                tx_kernel: None,
            },
        );
        seq
    }

    pub fn tx_stamp(&mut self, seq: u32, tx_ns: i64) {
        if let Some(p) = self.inflight.get_mut(&seq) {
            p.tx_kernel.get_or_insert(tx_ns);
        }
    }

    /// Probe `seq` timed out (no-op when it was answered meanwhile). True when it was lost.
    pub fn expire(&mut self, seq: u32, now: Instant) -> bool {
        let Some(p) = self.inflight.remove(&seq) else {
            return false;
        };
        self.remember(seq, p.dst, false, now);
        self.dirs.decide(p.number, None);
        true
    }

    pub fn reply(&mut self, r: &ReflectorPacket, a: &Arrival) -> Outcome {
        let seq = r.sender_seq;
        if let Some(p) = self.inflight.get(&seq).copied() {
            if p.dst != a.src {
                return Outcome::WrongSource;
            }
            self.inflight.remove(&seq);
            let mono = a.rx_mono.saturating_duration_since(p.sent_mono);
            let raw_kernel = match (p.tx_kernel, a.rx_kernel) {
                (Some(tx), Some(rx)) if rx >= tx => Some(Duration::from_nanos((rx - tx) as u64)),
                _ => None,
            }
            .filter(|k| *k <= mono + KERNEL_SLACK);
            let raw = raw_kernel.unwrap_or(mono);
            // Residence time at the reflector (its TX − its RX), from its own clock.
            let t2 = r.receive_timestamp.to_unix_ns();
            let t3 = r.timestamp.to_unix_ns();
            let residence = u64::try_from(t3.saturating_sub(t2))
                .map(Duration::from_nanos)
                .unwrap_or_default();
            let rtt = if residence <= raw {
                raw - residence
            } else {
                raw
            };
            let owd = (r.error.synchronized && r.sender_error.synchronized)
                .then(|| {
                    let t1 = p.tx_kernel.unwrap_or(p.tx_wall_ns);
                    let t4 = a.rx_kernel?;
                    let fwd = u64::try_from(t2.checked_sub(t1)?).ok()?;
                    let rev = u64::try_from(t4.checked_sub(t3)?).ok()?;
                    Some((Duration::from_nanos(fwd), Duration::from_nanos(rev)))
                })
                .flatten();
            let reordered = self.highest_answered.is_some_and(|h| seq < h);
            self.highest_answered = Some(self.highest_answered.map_or(seq, |h| h.max(seq)));
            self.remember(seq, p.dst, true, a.rx_mono);
            self.dirs.decide(p.number, Some(r.seq));
            return Outcome::Reply {
                rtt,
                reordered,
                kernel_timestamps: raw_kernel.is_some(),
                owd,
            };
        }
        match self.recent.get_mut(&seq) {
            Some((dst, _)) if *dst != a.src => Outcome::WrongSource,
            Some((_, true)) => Outcome::Duplicate,
            Some((_, answered)) => {
                *answered = true;
                Outcome::Late
            }
            None => Outcome::Unknown,
        }
    }

    /// Per-direction counts attributed since the last call.
    pub fn take_directions(&mut self) -> DirCounts {
        std::mem::take(&mut self.dirs.counts)
    }

    fn remember(&mut self, seq: u32, dst: SocketAddr, answered: bool, at: Instant) {
        self.recent.insert(seq, (dst, answered));
        self.recent_order.push_back((at, seq));
        while let Some(&(t, s)) = self.recent_order.front() {
            if at.saturating_duration_since(t) < self.retention && self.recent.len() <= MAX_RECENT {
                break;
            }
            self.recent_order.pop_front();
            self.recent.remove(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::stamp::packet::{ErrorEstimate, NtpTimestamp};

    const DST: &str = "192.0.2.7:862";

    fn reply(
        sender_seq: u32,
        reflector_seq: u32,
        rx_ns: i64,
        tx_ns: i64,
        sync: bool,
    ) -> ReflectorPacket {
        ReflectorPacket {
            seq: reflector_seq,
            timestamp: NtpTimestamp::from_unix_ns(tx_ns),
            error: ErrorEstimate::new(sync, 1000),
            ssid: 9,
            receive_timestamp: NtpTimestamp::from_unix_ns(rx_ns),
            sender_seq,
            sender_timestamp: NtpTimestamp::default(),
            sender_error: ErrorEstimate::new(sync, 1000),
            sender_ttl: 64,
        }
    }

    fn arrival(at: Instant, rx_kernel: Option<i64>) -> Arrival {
        Arrival {
            src: DST.parse().expect("addr"),
            rx_mono: at,
            rx_kernel,
        }
    }

    #[test]
    fn rtt_excludes_reflector_residence_and_owd_needs_both_synchronized() {
        let t0 = Instant::now();
        let base = 1_700_000_000_000_000_000i64;
        let mut s = SenderSession::new(9, Duration::from_secs(10));
        let dst = DST.parse().expect("addr");
        let seq = s.sent(dst, t0, base);
        s.tx_stamp(seq, base);
        // Forward 300 µs, residence 2 ms, reverse 500 µs: RTT 800 µs.
        let r = reply(seq, 0, base + 300_000, base + 2_300_000, true);
        let out = s.reply(
            &r,
            &arrival(t0 + Duration::from_micros(2_900), Some(base + 2_800_000)),
        );
        assert_eq!(
            out,
            Outcome::Reply {
                rtt: Duration::from_micros(800),
                reordered: false,
                kernel_timestamps: true,
                owd: Some((Duration::from_micros(300), Duration::from_micros(500))),
            }
        );
        let seq = s.sent(dst, t0, base);
        let r = reply(seq, 1, base + 300_000, base + 2_300_000, false);
        match s.reply(&r, &arrival(t0 + Duration::from_micros(2_900), None)) {
            Outcome::Reply {
                owd,
                kernel_timestamps,
                rtt,
                ..
            } => {
                assert_eq!(owd, None, "not synchronized: no one-way delay");
                assert!(!kernel_timestamps);
                assert_eq!(rtt, Duration::from_micros(900), "monotonic 2.9 ms − 2 ms");
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(s.reply(&r, &arrival(t0, None)), Outcome::Duplicate);
        let mut wrong = arrival(t0, None);
        wrong.src = "192.0.2.8:862".parse().expect("addr");
        let seq = s.sent(dst, t0, base);
        assert_eq!(
            s.reply(&reply(seq, 2, 0, 0, false), &wrong),
            Outcome::WrongSource
        );
        assert_eq!(
            s.reply(&reply(999, 2, 0, 0, false), &arrival(t0, None)),
            Outcome::Unknown
        );
    }

    /// Drive a session: `fate[i]` is what happens to probe i: 'o' answered, 'f' lost forward
    /// (reflector never saw it), 'r' lost on the way back (reflector counted it).
    fn run(fate: &str, reorder: bool) -> (DirCounts, u32) {
        let t0 = Instant::now();
        let dst: SocketAddr = DST.parse().expect("addr");
        let mut s = SenderSession::new(9, Duration::from_secs(60));
        let mut reflector_seq = 0u32;
        let mut replies = Vec::new();
        for c in fate.chars() {
            let seq = s.sent(dst, t0, 0);
            match c {
                'o' => {
                    replies.push(reply(seq, reflector_seq, 0, 0, false));
                    reflector_seq += 1;
                }
                'r' => reflector_seq += 1,
                _ => {}
            }
        }
        if reorder {
            for pair in replies.chunks_mut(2) {
                pair.reverse();
            }
        }
        let mut reordered = 0;
        for r in &replies {
            if let Outcome::Reply {
                reordered: true, ..
            } = s.reply(r, &arrival(t0, None))
            {
                reordered += 1;
            }
        }
        for seq in 0..fate.len() as u32 {
            s.expire(seq, t0 + Duration::from_secs(5));
        }
        (s.take_directions(), reordered)
    }

    #[test]
    fn lost_probes_are_attributed_to_the_direction_that_lost_them() {
        let (d, _) = run("offrrofrofffoo", false);
        assert_eq!(
            d,
            DirCounts {
                attributed: 14,
                forward_lost: 6,
                reverse_lost: 3
            }
        );
        // Reordered replies change nothing in the attribution.
        let (d2, reordered) = run("offrrofrofffoo", true);
        assert_eq!(d2, d);
        assert!(reordered > 0);
        // Losses after the last reply wait for a later reply.
        let (d, _) = run("oorf", false);
        assert_eq!(
            d,
            DirCounts {
                attributed: 2,
                forward_lost: 0,
                reverse_lost: 0
            }
        );
        // Leading losses count from the reflector's first sequence number (0).
        let (d, _) = run("frro", false);
        assert_eq!(
            d,
            DirCounts {
                attributed: 4,
                forward_lost: 1,
                reverse_lost: 2
            }
        );
    }

    #[test]
    fn an_impossible_reflector_gap_is_left_unattributed() {
        let t0 = Instant::now();
        let dst: SocketAddr = DST.parse().expect("addr");
        let mut s = SenderSession::new(9, Duration::from_secs(60));
        for _ in 0..4 {
            s.sent(dst, t0, 0);
        }
        s.reply(&reply(0, 10, 0, 0, false), &arrival(t0, None));
        s.expire(1, t0);
        // Reflector restarted: its sequence went back to 0.
        s.reply(&reply(2, 0, 0, 0, false), &arrival(t0, None));
        // 12 reflected between: more than the one lost probe.
        s.reply(&reply(3, 13, 0, 0, false), &arrival(t0, None));
        let d = s.take_directions();
        assert_eq!(
            d,
            DirCounts {
                attributed: 3,
                forward_lost: 0,
                reverse_lost: 0
            }
        );
    }

    #[test]
    fn sequence_numbers_wrap_without_stopping_attribution() {
        let t0 = Instant::now();
        let dst: SocketAddr = DST.parse().expect("addr");
        let mut s = SenderSession::new(9, Duration::from_secs(60));
        s.sent_count = i64::from(u32::MAX) - 1;
        let mut d = Directions::new();
        d.anchor = (s.sent_count - 1, u32::MAX - 1);
        s.dirs = d;
        // Sender seqs MAX-1, MAX, 0, 1; reflector seqs MAX, (reflected, lost back), 1.
        let seqs: Vec<u32> = (0..4).map(|_| s.sent(dst, t0, 0)).collect();
        assert_eq!(seqs, [u32::MAX - 1, u32::MAX, 0, 1]);
        s.reply(
            &reply(u32::MAX - 1, u32::MAX, 0, 0, false),
            &arrival(t0, None),
        );
        s.expire(u32::MAX, t0);
        s.expire(0, t0);
        s.reply(&reply(1, 1, 0, 0, false), &arrival(t0, None));
        assert_eq!(
            s.take_directions(),
            DirCounts {
                attributed: 4,
                forward_lost: 1,
                reverse_lost: 1
            }
        );
    }

    #[test]
    fn late_replies_are_late_once_then_duplicates() {
        let t0 = Instant::now();
        let dst: SocketAddr = DST.parse().expect("addr");
        let mut s = SenderSession::new(9, Duration::from_secs(60));
        let seq = s.sent(dst, t0, 0);
        assert!(s.expire(seq, t0 + Duration::from_secs(2)));
        assert!(!s.expire(seq, t0 + Duration::from_secs(2)));
        let r = reply(seq, 0, 0, 0, false);
        assert_eq!(s.reply(&r, &arrival(t0, None)), Outcome::Late);
        assert_eq!(s.reply(&r, &arrival(t0, None)), Outcome::Duplicate);
    }
}
