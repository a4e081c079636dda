//! Reply matching, pure: which probe does a reply answer, and what happened to it.
//!
//! Every probe carries in its payload a per-agent random token and a 64-bit probe id; the
//! 16-bit ICMP sequence is the low half of the id. Matching uses the id from the payload,
//! so sequence wrap at 65535 is harmless, and checks the token, the sequence, the source
//! address and (on RAW sockets, where the host sees everyone's replies) the identifier.
//! A reply that fails any check is stray: counted by reason, never recorded as RTT.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::probe::recent::Recent;

/// First bytes of every probe payload.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"PPv1";
/// magic (4) + token (8) + probe id (8).
pub const PAYLOAD_HEADER: usize = 20;
/// A kernel RTT is trusted when it is no larger than the monotonic one plus this slack
/// (the monotonic send stamp is taken after `send` returns, so it is normally larger).
const KERNEL_SLACK: Duration = Duration::from_millis(5);

/// A kernel software timestamp (`CLOCK_REALTIME`), nanoseconds since the epoch.
pub type KernelNs = i64;

/// The byte after the header that marks a confirmation probe (when the payload has room
/// for it): `tcpdump` and the lab's emulator can tell bursts from the regular probes.
pub const CONFIRM_MARK: u8 = b'C';

/// Mark a payload of [`encode_payload`] as a confirmation probe's.
pub fn mark_confirm(payload: &mut [u8]) {
    if let Some(b) = payload.get_mut(PAYLOAD_HEADER) {
        *b = CONFIRM_MARK;
    }
}

/// Whether a payload is a marked confirmation probe's (see [`mark_confirm`]).
pub fn is_confirm(payload: &[u8]) -> bool {
    payload.starts_with(&PAYLOAD_MAGIC) && payload.get(PAYLOAD_HEADER) == Some(&CONFIRM_MARK)
}

pub fn encode_payload(token: u64, probe_id: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(PAYLOAD_HEADER));
    p.extend_from_slice(&PAYLOAD_MAGIC);
    p.extend_from_slice(&token.to_be_bytes());
    p.extend_from_slice(&probe_id.to_be_bytes());
    p.resize(size.max(PAYLOAD_HEADER), 0);
    p
}

/// `(token, probe id)` when the payload is one of ours in shape.
pub fn decode_payload(p: &[u8]) -> Option<(u64, u64)> {
    if p.len() < PAYLOAD_HEADER || p[..4] != PAYLOAD_MAGIC {
        return None;
    }
    let token = u64::from_be_bytes(p[4..12].try_into().ok()?);
    let id = u64::from_be_bytes(p[12..20].try_into().ok()?);
    Some((token, id))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrayReason {
    /// Not a pathpulse payload, another agent's token, or another program's identifier.
    NotOurs,
    /// Our token and a probe we sent, but from an address we did not send it to.
    WrongSource,
    /// Our token but no probe we know (forged, corrupted, or older than we remember).
    UnknownProbe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reply {
        target: usize,
        rtt: Duration,
        reordered: bool,
        kernel_timestamps: bool,
        /// A confirmation probe ([`Matcher::sent_confirm`]), not a regular one.
        confirm: bool,
    },
    /// A second reply to a probe already answered.
    Duplicate {
        target: usize,
        confirm: bool,
    },
    /// A reply to a probe already declared lost.
    Late {
        target: usize,
        confirm: bool,
    },
    Stray(StrayReason),
}

#[derive(Debug, Clone)]
struct InFlight {
    target: usize,
    addr: IpAddr,
    sent_mono: Instant,
    tx_kernel: Option<KernelNs>,
    /// The probe's timeout, ms (its deadline is `sent_mono` plus this).
    timeout_ms: u32,
    /// Time to the target's next probe, µs, for the early decision: the matcher's spacing
    /// for regular probes, the burst's for confirmation probes.
    spacing_us: u32,
    confirm: bool,
}

/// What the matcher keeps of a target's replies: the newest probe answered, and the
/// RFC 6298 smoothed RTT and its variation (µs), for the early loss decision.
#[derive(Debug, Clone, Copy, Default)]
struct Answered {
    last_id: u64,
    /// The newest regular probe answered (a regular reply older than it is reordered;
    /// confirmation probes in between do not make it so).
    last_regular_id: u64,
    srtt_us: u32,
    rttvar_us: u32,
}

impl Answered {
    fn sample(&mut self, rtt: Duration) {
        let r = rtt.as_micros().min(u128::from(u32::MAX)) as u32;
        if self.last_id == 0 {
            (self.srtt_us, self.rttvar_us) = (r, r / 2);
        } else {
            let dev = self.srtt_us.abs_diff(r);
            self.rttvar_us = ((3 * u64::from(self.rttvar_us) + u64::from(dev)) / 4) as u32;
            self.srtt_us = ((7 * u64::from(self.srtt_us) + u64::from(r)) / 8) as u32;
        }
    }

    /// How long after a probe's successor was sent its reply is normally in: the
    /// smoothed RTT, four variations and the reordering slack ([`REORDER_SLACK`], or a
    /// quarter of the smoothed RTT if more).
    fn reply_within(&self) -> Duration {
        let (srtt, var) = (u64::from(self.srtt_us), u64::from(self.rttvar_us));
        Duration::from_micros(srtt + 4 * var) + REORDER_SLACK.max(Duration::from_micros(srtt / 4))
    }
}

/// How much later than usual a probe's reply may come after the reply of a probe sent
/// after it (reordering) before the early decision counts it lost: at least this, a
/// quarter of the smoothed RTT on long paths (RFC 8985's reordering window).
pub const REORDER_SLACK: Duration = Duration::from_millis(50);

/// What the reply looked like on the wire, as the socket layer parsed it.
#[derive(Debug, Clone, Copy)]
pub struct ReplyMeta<'a> {
    pub src: IpAddr,
    /// Echo identifier of the reply, when the socket does not own it (RAW); `None` on DGRAM.
    pub ident: Option<u16>,
    pub seq: u16,
    pub payload: &'a [u8],
    pub rx_mono: Instant,
    pub rx_kernel: Option<KernelNs>,
}

#[derive(Debug)]
pub struct Matcher {
    token: u64,
    /// Identifier our probes carry on RAW sockets.
    ident: u16,
    next_id: u64,
    inflight: HashMap<u64, InFlight>,
    by_seq: HashMap<u16, u64>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    recent: Recent,
    retention: Duration,
    answered: HashMap<usize, Answered>,
    /// Time between two probes of a target, when every target has the same (the ICMP
    /// prober): enables the early loss decision (see [`Matcher::expire`]).
    spacing: Option<Duration>,
    /// When a regular probe's reply is overdue enough to suspect a loss (see
    /// [`Matcher::suspected`]), by probe id.
    suspects: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Whether regular probes are suspected at all (only when confirmation bursts are on).
    suspicion: bool,
}

/// A regular probe is suspected lost this long after its smoothed RTT and four variations
/// (no reordering slack: a suspicion only starts a confirmation burst).
pub const SUSPECT_SLACK: Duration = Duration::from_millis(10);

impl Matcher {
    /// `retention`: how long decided probes are remembered to tell late and duplicate
    /// replies from strays.
    pub fn new(token: u64, ident: u16, retention: Duration) -> Self {
        Matcher {
            token,
            ident,
            next_id: 1,
            inflight: HashMap::new(),
            by_seq: HashMap::new(),
            deadlines: BinaryHeap::new(),
            recent: Recent::new(Instant::now()),
            retention,
            answered: HashMap::new(),
            spacing: None,
            suspects: BinaryHeap::new(),
            suspicion: false,
        }
    }

    /// The time between two probes of the same target (`None`: no early loss decision).
    pub fn set_spacing(&mut self, spacing: Option<Duration>) {
        self.spacing = spacing.filter(|s| !s.is_zero());
    }

    /// Suspect overdue regular probes ([`Matcher::suspected`]) from now on, or not.
    pub fn set_suspicion(&mut self, on: bool) {
        self.suspicion = on;
        if !on {
            self.suspects.clear();
        }
    }

    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn ident(&self) -> u16 {
        self.ident
    }

    /// Allocate the id of the next probe; its ICMP sequence is `id as u16`.
    pub fn allocate(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The probe left the socket at `sent_mono`; it is lost if unanswered by `sent_mono +
    /// timeout`, or earlier (see [`Matcher::expire`]).
    pub fn sent(
        &mut self,
        id: u64,
        target: usize,
        addr: IpAddr,
        sent_mono: Instant,
        timeout: Duration,
    ) {
        self.sent_as(id, target, addr, sent_mono, timeout, self.spacing, false);
    }

    /// A confirmation probe left the socket: as [`Matcher::sent`], its outcomes flagged
    /// `confirm`, and its early decision reckoned from the burst's own `spacing` (the
    /// target's next probe is that close), once the target has answered.
    pub fn sent_confirm(
        &mut self,
        id: u64,
        target: usize,
        addr: IpAddr,
        sent_mono: Instant,
        timeout: Duration,
        spacing: Duration,
    ) {
        let spacing = Some(spacing).filter(|s| !s.is_zero());
        self.sent_as(id, target, addr, sent_mono, timeout, spacing, true);
    }

    #[allow(clippy::too_many_arguments)]
    fn sent_as(
        &mut self,
        id: u64,
        target: usize,
        addr: IpAddr,
        sent_mono: Instant,
        timeout: Duration,
        spacing: Option<Duration>,
        confirm: bool,
    ) {
        let timeout_ms = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let spacing_us = spacing.map_or(0, |s| s.as_micros().min(u128::from(u32::MAX)) as u32);
        self.inflight.insert(
            id,
            InFlight {
                target,
                addr,
                sent_mono,
                tx_kernel: None,
                timeout_ms,
                spacing_us,
                confirm,
            },
        );
        self.by_seq.insert(id as u16, id);
        let early = match (spacing, self.answered.get(&target)) {
            (Some(spacing), Some(a)) => {
                if !confirm && self.suspicion {
                    let (srtt, var) = (u64::from(a.srtt_us), u64::from(a.rttvar_us));
                    let overdue = Duration::from_micros(srtt + 4 * var) + SUSPECT_SLACK;
                    self.suspects.push(Reverse((sent_mono + overdue, id)));
                }
                Some(spacing + a.reply_within())
            }
            _ => None,
        };
        let first = early.map_or(timeout, |e| e.min(timeout));
        self.deadlines.push(Reverse((sent_mono + first, id)));
    }

    /// Kernel TX timestamp for the in-flight probe with this sequence.
    pub fn tx_stamp(&mut self, seq: u16, tx: KernelNs) {
        if let Some(p) = self
            .by_seq
            .get(&seq)
            .and_then(|id| self.inflight.get_mut(id))
        {
            p.tx_kernel.get_or_insert(tx);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The next time [`Matcher::expire`] or [`Matcher::suspected`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.next_expiry(), self.next_suspect()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next time [`Matcher::expire`] has something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((t, _))| *t)
    }

    /// The next time [`Matcher::suspected`] has something to do.
    pub fn next_suspect(&self) -> Option<Instant> {
        self.suspects.peek().map(|Reverse((t, _))| *t)
    }

    /// Targets of regular probes still unanswered [`SUSPECT_SLACK`] after their smoothed
    /// RTT and four variations (once the target has answered before, with a spacing set):
    /// not lost yet, but worth a confirmation burst now rather than when the loss is
    /// decided (one spacing and the reordering slack later). Each probe once.
    pub fn suspected(&mut self, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(Reverse((t, id))) = self.suspects.peek().copied() {
            if t > now {
                break;
            }
            self.suspects.pop();
            if let Some(p) = self.inflight.get(&id) {
                out.push(p.target);
            }
        }
        if let Some(to) = shrunk(self.suspects.len(), self.suspects.capacity()) {
            self.suspects.shrink_to(to);
        }
        out
    }

    pub fn reply(&mut self, r: &ReplyMeta<'_>) -> Outcome {
        let Some((token, id)) = decode_payload(r.payload) else {
            return Outcome::Stray(StrayReason::NotOurs);
        };
        if token != self.token || r.ident.is_some_and(|i| i != self.ident) {
            return Outcome::Stray(StrayReason::NotOurs);
        }
        if r.seq != id as u16 {
            return Outcome::Stray(StrayReason::UnknownProbe);
        }
        if let Some(p) = self.inflight.get(&id) {
            if p.addr != r.src {
                return Outcome::Stray(StrayReason::WrongSource);
            }
            let Some(p) = self.inflight.remove(&id) else {
                return Outcome::Stray(StrayReason::UnknownProbe);
            };
            if self.by_seq.get(&r.seq) == Some(&id) {
                self.by_seq.remove(&r.seq);
            }
            let mono = r.rx_mono.saturating_duration_since(p.sent_mono);
            let kernel = match (p.tx_kernel, r.rx_kernel) {
                (Some(tx), Some(rx)) if rx >= tx => Some(Duration::from_nanos((rx - tx) as u64)),
                _ => None,
            }
            .filter(|k| *k <= mono + KERNEL_SLACK);
            let rtt = kernel.unwrap_or(mono);
            let a = self.answered.entry(p.target).or_default();
            let reordered = !p.confirm && id < a.last_regular_id;
            if !p.confirm {
                a.last_regular_id = a.last_regular_id.max(id);
            }
            a.sample(rtt);
            a.last_id = a.last_id.max(id);
            self.recent
                .remember(id, p.target, p.addr, true, p.confirm, r.rx_mono);
            return Outcome::Reply {
                target: p.target,
                rtt,
                reordered,
                kernel_timestamps: kernel.is_some(),
                confirm: p.confirm,
            };
        }
        match self.recent.get(id) {
            Some(d) if !self.recent.from_target(&d, &r.src) => {
                Outcome::Stray(StrayReason::WrongSource)
            }
            Some(d) if d.answered() => Outcome::Duplicate {
                target: d.target(),
                confirm: d.confirm(),
            },
            Some(d) => {
                // Count a late reply once; a second copy of it is a duplicate.
                self.recent.mark_answered(id);
                Outcome::Late {
                    target: d.target(),
                    confirm: d.confirm(),
                }
            }
            None => Outcome::Stray(StrayReason::UnknownProbe),
        }
    }

    /// Declare lost every probe whose deadline has passed; returns their targets, each
    /// with whether it was a confirmation probe.
    ///
    /// The early decision (with a spacing set, once the target has answered): a probe is
    /// lost before its timeout when a probe sent after it to the same target has been
    /// answered and its own reply is overdue, i.e. one spacing, the smoothed RTT, four
    /// RTT variations and [`REORDER_SLACK`] after it was sent (RFC 8985's idea: a later
    /// packet delivered is evidence of loss). Until a later probe is answered it is looked
    /// at again every spacing, up to its timeout. A reply after the decision is late, as
    /// after a timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<(usize, bool)> {
        let mut lost = Vec::new();
        while let Some(Reverse((t, id))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let undecided = self.inflight.get(&id).and_then(|p| {
                let timeout_at = p.sent_mono + Duration::from_millis(u64::from(p.timeout_ms));
                let later_answered = self.answered.get(&p.target).is_some_and(|a| a.last_id > id);
                (t < timeout_at && !later_answered).then(|| {
                    let spacing = Duration::from_micros(u64::from(p.spacing_us));
                    let again = if spacing.is_zero() {
                        timeout_at
                    } else {
                        now + spacing
                    };
                    again.min(timeout_at)
                })
            });
            if let Some(again) = undecided {
                self.deadlines.push(Reverse((again, id)));
                continue;
            }
            if let Some(p) = self.inflight.remove(&id) {
                if self.by_seq.get(&(id as u16)) == Some(&id) {
                    self.by_seq.remove(&(id as u16));
                }
                lost.push((p.target, p.confirm));
                self.recent
                    .remember(id, p.target, p.addr, false, p.confirm, now);
            }
        }
        let inflight = &self.inflight;
        self.recent
            .expire(now, self.retention, |id| inflight.contains_key(&id));
        if let Some(to) = shrunk(self.inflight.len(), self.inflight.capacity()) {
            self.inflight.shrink_to(to);
        }
        if let Some(to) = shrunk(self.by_seq.len(), self.by_seq.capacity()) {
            self.by_seq.shrink_to(to);
        }
        if let Some(to) = shrunk(self.deadlines.len(), self.deadlines.capacity()) {
            self.deadlines.shrink_to(to);
        }
        self.recent.shrink();
        lost
    }
}

/// Capacity to shrink a collection to, if it holds under a quarter of its capacity: twice
/// what it holds. A burst (a stalled receive loop, a reload, a timeout lowered) can leave
/// the in-flight maps many times larger than their usual contents, and they never give
/// memory back by themselves; at 10,000 targets that was 6 MiB held for good. Small
/// collections are left alone.
pub(crate) fn shrunk(len: usize, capacity: usize) -> Option<usize> {
    const SMALL: usize = 4096;
    (capacity > SMALL && capacity / 4 > len).then(|| (2 * len).max(SMALL))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: u64 = 0x5eed_cafe_f00d_0001;
    const TIMEOUT: Duration = Duration::from_secs(2);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    struct Probe {
        id: u64,
        payload: Vec<u8>,
    }

    fn send(m: &mut Matcher, target: usize, addr: &str, at: Instant) -> Probe {
        let id = m.allocate();
        m.sent(id, target, ip(addr), at, TIMEOUT);
        Probe {
            id,
            payload: encode_payload(m.token(), id, 56),
        }
    }

    /// A confirmation probe to target 0 (127.0.0.2) of a burst 5 ms apart.
    fn send_confirm(m: &mut Matcher, at: Instant) -> Probe {
        let id = m.allocate();
        m.sent_confirm(
            id,
            0,
            ip("127.0.0.2"),
            at,
            TIMEOUT,
            Duration::from_millis(5),
        );
        Probe {
            id,
            payload: encode_payload(m.token(), id, 56),
        }
    }

    fn reply<'a>(p: &'a Probe, src: &str, at: Instant) -> ReplyMeta<'a> {
        ReplyMeta {
            src: ip(src),
            ident: Some(7),
            seq: p.id as u16,
            payload: &p.payload,
            rx_mono: at,
            rx_kernel: None,
        }
    }

    #[test]
    fn a_reply_is_matched_once_and_a_copy_is_a_duplicate() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        let p = send(&mut m, 3, "127.0.0.2", t0);
        let out = m.reply(&reply(&p, "127.0.0.2", t0 + Duration::from_micros(80)));
        assert_eq!(
            out,
            Outcome::Reply {
                target: 3,
                rtt: Duration::from_micros(80),
                reordered: false,
                kernel_timestamps: false,
                confirm: false
            }
        );
        assert_eq!(
            m.reply(&reply(&p, "127.0.0.2", t0 + Duration::from_micros(90))),
            Outcome::Duplicate {
                target: 3,
                confirm: false
            }
        );
        assert_eq!(m.in_flight(), 0);
    }

    #[test]
    fn reply_from_another_address_is_stray_and_does_not_consume_the_probe() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        let p = send(&mut m, 0, "127.0.0.2", t0);
        assert_eq!(
            m.reply(&reply(&p, "127.0.0.9", t0)),
            Outcome::Stray(StrayReason::WrongSource)
        );
        assert!(matches!(
            m.reply(&reply(&p, "127.0.0.2", t0)),
            Outcome::Reply { target: 0, .. }
        ));
    }

    #[test]
    fn wrong_token_identifier_or_garbage_is_not_ours() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        let p = send(&mut m, 0, "127.0.0.2", t0);
        let foreign = Probe {
            id: p.id,
            payload: encode_payload(TOKEN ^ 1, p.id, 56),
        };
        assert_eq!(
            m.reply(&reply(&foreign, "127.0.0.2", t0)),
            Outcome::Stray(StrayReason::NotOurs)
        );
        let mut other_ident = reply(&p, "127.0.0.2", t0);
        other_ident.ident = Some(8);
        assert_eq!(m.reply(&other_ident), Outcome::Stray(StrayReason::NotOurs));
        let garbage = Probe {
            id: p.id,
            payload: vec![0xAB; 56],
        };
        assert_eq!(
            m.reply(&reply(&garbage, "127.0.0.2", t0)),
            Outcome::Stray(StrayReason::NotOurs)
        );
        let short = Probe {
            id: p.id,
            payload: PAYLOAD_MAGIC.to_vec(),
        };
        assert_eq!(
            m.reply(&reply(&short, "127.0.0.2", t0)),
            Outcome::Stray(StrayReason::NotOurs)
        );
        // DGRAM sockets: the kernel owns the identifier, so none is checked.
        let mut dgram = reply(&p, "127.0.0.2", t0);
        dgram.ident = None;
        assert!(matches!(m.reply(&dgram), Outcome::Reply { .. }));
    }

    #[test]
    fn forged_sequence_or_unknown_id_is_unknown_probe() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        let p = send(&mut m, 0, "127.0.0.2", t0);
        let mut forged = reply(&p, "127.0.0.2", t0);
        forged.seq = forged.seq.wrapping_add(1);
        assert_eq!(m.reply(&forged), Outcome::Stray(StrayReason::UnknownProbe));
        let never = Probe {
            id: 999_999,
            payload: encode_payload(TOKEN, 999_999, 56),
        };
        assert_eq!(
            m.reply(&reply(&never, "127.0.0.2", t0)),
            Outcome::Stray(StrayReason::UnknownProbe)
        );
    }

    #[test]
    fn sequence_wrap_at_65535_is_not_a_duplicate() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(600));
        let mut first = None;
        let mut last = None;
        // 65,537 probes: ids 1 and 65,537 share the 16-bit sequence 1.
        for i in 0..65_537u64 {
            let p = send(&mut m, 0, "127.0.0.2", t0);
            let out = m.reply(&reply(
                &p,
                "127.0.0.2",
                t0 + Duration::from_micros(10 + i % 7),
            ));
            assert!(
                matches!(out, Outcome::Reply { .. }),
                "probe {} (seq {}): {out:?}",
                p.id,
                p.id as u16
            );
            if i == 0 {
                first = Some(p);
            } else if i == 65_536 {
                last = Some(p);
            }
        }
        let (first, last) = (first.expect("first"), last.expect("last"));
        assert_eq!(first.id as u16, last.id as u16, "same 16-bit sequence");
        assert_eq!(
            m.reply(&reply(&last, "127.0.0.2", t0)),
            Outcome::Duplicate {
                target: 0,
                confirm: false
            }
        );
    }

    #[test]
    fn memory_held_after_a_burst_goes_back() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        // 50,000 probes in flight at once (a receive loop stalled), all lost.
        for i in 0..50_000 {
            send(&mut m, i % 10_000, "127.0.0.2", t0);
        }
        assert!(m.inflight.capacity() >= 50_000);
        assert_eq!(m.expire(t0 + TIMEOUT).len(), 50_000);
        assert!(m.inflight.capacity() <= 8192, "{}", m.inflight.capacity());
        assert!(m.deadlines.capacity() <= 8192, "{}", m.deadlines.capacity());
        // The decided ones are remembered for the retention, then the ring shrinks too.
        assert_eq!(m.recent.len(), 50_000);
        m.expire(t0 + Duration::from_secs(20));
        assert!(m.recent.is_empty());
        // Still matching afterwards.
        let p = send(&mut m, 3, "127.0.0.2", t0 + Duration::from_secs(20));
        assert!(matches!(
            m.reply(&reply(&p, "127.0.0.2", t0 + Duration::from_secs(20))),
            Outcome::Reply { target: 3, .. }
        ));
        assert_eq!(shrunk(100, 4096), None, "small: left alone");
        assert_eq!(shrunk(3000, 10_000), None, "over a quarter full");
        assert_eq!(shrunk(2000, 10_000), Some(4096));
        assert_eq!(shrunk(9000, 40_000), Some(18_000));
    }

    fn is_reply(o: Outcome, reordered_want: bool) -> bool {
        matches!(o, Outcome::Reply { reordered, .. } if reordered == reordered_want)
    }

    /// With the spacing set, a probe is lost before its timeout once a probe sent after it
    /// is answered and its own reply is overdue (one spacing + smoothed RTT + 4 × RTT
    /// variation + the reordering slack after it was sent); a reply after that is late.
    /// Without a later answer it waits, looked at again every spacing, up to its timeout;
    /// a reply reordered by less than the slack is a reply; without a spacing nothing is
    /// decided early.
    #[test]
    fn a_later_probe_answered_decides_loss_before_the_timeout() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        m.set_spacing(Some(ms(100)));
        // First answer: srtt 1 ms, variation 0.5 ms.
        let a = send(&mut m, 0, "127.0.0.2", t0);
        assert!(is_reply(
            m.reply(&reply(&a, "127.0.0.2", t0 + ms(1))),
            false
        ));
        // b is lost; c, sent 100 ms after it, is answered.
        let b = send(&mut m, 0, "127.0.0.2", t0 + ms(100));
        let c = send(&mut m, 0, "127.0.0.2", t0 + ms(200));
        assert!(is_reply(
            m.reply(&reply(&c, "127.0.0.2", t0 + ms(201))),
            false
        ));
        // b's early deadline: 100 ms + 100 + 1 + 4 × 0.5 + 50.
        assert!(m.expire(t0 + ms(252)).is_empty());
        assert_eq!(
            m.expire(t0 + ms(253)),
            vec![(0, false)],
            "decided 1.85 s before the timeout"
        );
        assert_eq!(
            m.reply(&reply(&b, "127.0.0.2", t0 + ms(260))),
            Outcome::Late {
                target: 0,
                confirm: false
            }
        );
        // d is lost, e (sent after it) not answered yet: d waits, looked at again one
        // spacing later, and is lost once e is answered.
        let d = send(&mut m, 0, "127.0.0.2", t0 + ms(300));
        let e = send(&mut m, 0, "127.0.0.2", t0 + ms(400));
        let d_early = t0 + ms(300) + ms(100) + m.answered[&0].reply_within();
        assert!(m.expire(d_early).is_empty(), "no later answer yet");
        assert!(is_reply(
            m.reply(&reply(&e, "127.0.0.2", d_early + ms(20))),
            false
        ));
        assert!(m.expire(d_early + ms(99)).is_empty());
        assert_eq!(m.expire(d_early + ms(100)), vec![(0, false)]);
        assert_eq!(
            m.reply(&reply(&d, "127.0.0.2", d_early + ms(150))),
            Outcome::Late {
                target: 0,
                confirm: false
            }
        );
        // f and g: g's reply first, f's 40 ms after it (reordered, within the slack): a
        // reply, flagged reordered, nothing lost.
        let f = send(&mut m, 0, "127.0.0.2", t0 + ms(600));
        let g = send(&mut m, 0, "127.0.0.2", t0 + ms(700));
        assert!(is_reply(
            m.reply(&reply(&g, "127.0.0.2", t0 + ms(701))),
            false
        ));
        assert!(m.expire(t0 + ms(740)).is_empty());
        assert!(is_reply(
            m.reply(&reply(&f, "127.0.0.2", t0 + ms(741))),
            true
        ));
        assert!(m.expire(t0 + ms(900)).is_empty());
        // Another target's answers say nothing about target 1, which has none of its own:
        // its probe is lost at its timeout only.
        let h = send(&mut m, 1, "127.0.0.3", t0 + ms(1000));
        assert!(m.expire(t0 + ms(1000) + TIMEOUT - ms(1)).is_empty());
        assert_eq!(m.expire(t0 + ms(1000) + TIMEOUT), vec![(1, false)]);
        drop(h);
        // Without a spacing: the timeout only, even with a later probe answered.
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        let a = send(&mut m, 0, "127.0.0.2", t0);
        let b = send(&mut m, 0, "127.0.0.2", t0 + ms(100));
        assert!(is_reply(
            m.reply(&reply(&b, "127.0.0.2", t0 + ms(101))),
            false
        ));
        assert!(m.expire(t0 + TIMEOUT - ms(1)).is_empty());
        assert_eq!(m.expire(t0 + TIMEOUT), vec![(0, false)]);
        drop(a);
    }

    #[test]
    fn reply_after_timeout_is_late_not_received_and_counted_once() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        let p = send(&mut m, 2, "127.0.0.2", t0);
        assert!(m.expire(t0 + TIMEOUT - Duration::from_millis(1)).is_empty());
        assert_eq!(m.expire(t0 + TIMEOUT), vec![(2, false)]);
        assert_eq!(
            m.reply(&reply(
                &p,
                "127.0.0.2",
                t0 + TIMEOUT + Duration::from_millis(5)
            )),
            Outcome::Late {
                target: 2,
                confirm: false
            }
        );
        assert_eq!(
            m.reply(&reply(
                &p,
                "127.0.0.2",
                t0 + TIMEOUT + Duration::from_millis(6)
            )),
            Outcome::Duplicate {
                target: 2,
                confirm: false
            }
        );
        // After the retention the probe is forgotten: a very late copy is stray, not late.
        m.expire(t0 + Duration::from_secs(20));
        assert_eq!(
            m.reply(&reply(&p, "127.0.0.2", t0 + Duration::from_secs(20))),
            Outcome::Stray(StrayReason::UnknownProbe)
        );
    }

    #[test]
    fn reordering_is_flagged_and_kernel_stamps_win_when_sane() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        let a = send(&mut m, 0, "127.0.0.2", t0);
        let b = send(&mut m, 0, "127.0.0.2", t0 + Duration::from_millis(10));
        m.tx_stamp(a.id as u16, 1_000_000_000);
        let mut rb = reply(&b, "127.0.0.2", t0 + Duration::from_millis(11));
        rb.rx_kernel = Some(2_000_000_000);
        // b has no TX stamp: falls back to the monotonic RTT.
        assert_eq!(
            m.reply(&rb),
            Outcome::Reply {
                target: 0,
                rtt: Duration::from_millis(1),
                reordered: false,
                kernel_timestamps: false,
                confirm: false
            }
        );
        let mut ra = reply(&a, "127.0.0.2", t0 + Duration::from_millis(12));
        ra.rx_kernel = Some(1_000_000_000 + 11_500_000);
        assert_eq!(
            m.reply(&ra),
            Outcome::Reply {
                target: 0,
                rtt: Duration::from_micros(11_500),
                reordered: true,
                kernel_timestamps: true,
                confirm: false
            }
        );
    }

    #[test]
    fn a_clock_step_between_kernel_stamps_falls_back_to_monotonic() {
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        for rx in [999_000_000i64, 1_000_000_000 + 3_600_000_000_000] {
            let p = send(&mut m, 0, "127.0.0.2", t0);
            m.tx_stamp(p.id as u16, 1_000_000_000);
            let mut r = reply(&p, "127.0.0.2", t0 + Duration::from_millis(3));
            r.rx_kernel = Some(rx);
            assert_eq!(
                m.reply(&r),
                Outcome::Reply {
                    target: 0,
                    rtt: Duration::from_millis(3),
                    reordered: false,
                    kernel_timestamps: false,
                    confirm: false
                }
            );
        }
    }

    /// Confirmation probes carry their flag through every outcome, and are decided early
    /// from the burst's own spacing (5 ms), not the regular one (100 ms); a regular probe
    /// around them keeps its own.
    #[test]
    fn confirmation_probes_are_flagged_and_decided_on_the_bursts_spacing() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        m.set_spacing(Some(ms(100)));
        // A regular answer first: srtt 1 ms, variation 0.5 ms.
        let a = send(&mut m, 0, "127.0.0.2", t0);
        assert!(is_reply(
            m.reply(&reply(&a, "127.0.0.2", t0 + ms(1))),
            false
        ));
        let regular = send(&mut m, 0, "127.0.0.2", t0 + ms(10));
        let b1 = send_confirm(&mut m, t0 + ms(10));
        let b2 = send_confirm(&mut m, t0 + ms(15));
        let b3 = send_confirm(&mut m, t0 + ms(20));
        assert!(matches!(
            m.reply(&reply(&b1, "127.0.0.2", t0 + ms(11))),
            Outcome::Reply {
                target: 0,
                confirm: true,
                ..
            }
        ));
        assert!(matches!(
            m.reply(&reply(&b3, "127.0.0.2", t0 + ms(21))),
            Outcome::Reply { confirm: true, .. }
        ));
        // b2's early deadline: 15 ms + 5 + 1 + 4 × 0.5 + 50 = 73 ms; the regular probe
        // sent at 10 ms waits for 10 + 100 + 53 = 163 ms.
        assert!(m.expire(t0 + ms(72)).is_empty());
        assert_eq!(m.expire(t0 + ms(74)), vec![(0, true)]);
        assert_eq!(
            m.reply(&reply(&b2, "127.0.0.2", t0 + ms(80))),
            Outcome::Late {
                target: 0,
                confirm: true
            }
        );
        assert_eq!(
            m.reply(&reply(&b2, "127.0.0.2", t0 + ms(81))),
            Outcome::Duplicate {
                target: 0,
                confirm: true
            }
        );
        assert!(m.expire(t0 + ms(162)).is_empty());
        assert_eq!(m.expire(t0 + ms(164)), vec![(0, false)]);
        assert_eq!(
            m.reply(&reply(&regular, "127.0.0.2", t0 + ms(170))),
            Outcome::Late {
                target: 0,
                confirm: false
            }
        );
    }

    /// A regular probe unanswered 10 ms past its smoothed RTT and four variations is
    /// suspected, once; an answered one, a confirmation probe, or a probe to a target that
    /// never answered is not.
    #[test]
    fn an_overdue_reply_is_suspected_before_the_loss_is_decided() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        m.set_spacing(Some(ms(100)));
        m.set_suspicion(true);
        let never = send(&mut m, 1, "127.0.0.3", t0);
        let a = send(&mut m, 0, "127.0.0.2", t0);
        assert!(is_reply(
            m.reply(&reply(&a, "127.0.0.2", t0 + ms(2))),
            false
        ));
        // srtt 2 ms, variation 1 ms: suspected 2 + 4 + 10 = 16 ms after it was sent.
        let b = send(&mut m, 0, "127.0.0.2", t0 + ms(100));
        let c = send(&mut m, 0, "127.0.0.2", t0 + ms(200));
        send_confirm(&mut m, t0 + ms(200));
        assert!(m.next_deadline().is_some_and(|d| d <= t0 + ms(116)));
        assert!(m.suspected(t0 + ms(115)).is_empty());
        assert_eq!(m.suspected(t0 + ms(116)), vec![0]);
        assert!(m.suspected(t0 + ms(200)).is_empty(), "once");
        assert!(is_reply(
            m.reply(&reply(&c, "127.0.0.2", t0 + ms(203))),
            false
        ));
        assert!(
            m.suspected(t0 + ms(400)).is_empty(),
            "answered, or a confirmation probe"
        );
        assert!(m.expire(t0 + ms(400)).contains(&(0, false)), "b is lost");
        // Bursts off: no suspicion at all.
        m.set_suspicion(false);
        let _d = send(&mut m, 0, "127.0.0.2", t0 + ms(500));
        assert_eq!(m.next_suspect(), None);
        assert!(m.suspected(t0 + ms(900)).is_empty());
        let _ = (never, b);
    }

    /// A regular reply that comes after a newer confirmation probe's reply is not
    /// reordered (bursts interleave with the regular probes); the confirmation payload is
    /// marked, the regular one not.
    #[test]
    fn bursts_do_not_make_regular_replies_reordered_and_carry_their_mark() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut m = Matcher::new(TOKEN, 7, Duration::from_secs(8));
        m.set_spacing(Some(ms(100)));
        let a = send(&mut m, 0, "127.0.0.2", t0);
        let mut b = send_confirm(&mut m, t0 + ms(1));
        assert!(!is_confirm(&b.payload));
        mark_confirm(&mut b.payload);
        assert!(is_confirm(&b.payload));
        assert!(matches!(
            m.reply(&reply(&b, "127.0.0.2", t0 + ms(2))),
            Outcome::Reply { confirm: true, .. }
        ));
        assert!(is_reply(
            m.reply(&reply(&a, "127.0.0.2", t0 + ms(3))),
            false
        ));
    }
}
