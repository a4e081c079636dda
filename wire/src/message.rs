//! Messages between agent and aggregator. Everything here is plain data; framing and the
//! version check are in `frame`.

use serde::{Deserialize, Serialize};

use crate::hist::SparseHist;

/// Largest number of paths in one report; a larger report is refused (bounded memory).
pub const MAX_PATHS_PER_REPORT: usize = 100_000;
/// Longest string (agent name, destination, label) accepted in a message.
pub const MAX_NAME_LEN: usize = 255;
/// Hops per path in a report (TTL is at most 255; traceroute's default is 30).
pub const MAX_HOPS: usize = 64;

/// Kind of probe that measured a path: the `probe` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProbeKind {
    Icmp,
    Stamp,
    Tcp,
    Dns,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Icmp => "icmp",
            ProbeKind::Stamp => "stamp",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Dns => "dns",
        }
    }
}

/// Agent → aggregator, first message on a connection's control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's name; must equal the identity in its certificate.
    pub agent: String,
    /// Random per agent process: report sequences are unique within it. An agent replaying
    /// reports of an earlier process sends a hello naming that process's session first.
    pub session: u64,
    /// Software version of the agent (`CARGO_PKG_VERSION`).
    pub software: String,
    pub site: Option<String>,
    pub isp: Option<String>,
}

/// Agent → aggregator: one report interval of every path of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Per aggregator, increasing by one per report.
    pub seq: u64,
    pub agent: String,
    /// Wall-clock start of the interval, milliseconds since the Unix epoch.
    pub interval_start_ms: u64,
    /// Length of the interval in milliseconds (from the monotonic clock).
    pub interval_ms: u32,
    pub paths: Vec<PathReport>,
    /// The agent's own health over the interval.
    pub health: AgentHealth,
}

/// Agent self-observation carried in every report (counts over the interval).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// Replies that were not answers to this agent's probes (other programs, other agents).
    pub stray_not_ours: u32,
    /// Replies carrying our token and a known sequence but from an unexpected address.
    pub stray_wrong_source: u32,
    /// Replies carrying our token for no probe we know (too old, or forged).
    pub stray_unknown_probe: u32,
    /// Socket send errors.
    pub send_errors: u32,
    /// Socket receive errors.
    pub recv_errors: u32,
    /// Largest lag of a probe behind its scheduled send time, microseconds.
    pub max_scheduling_lag_us: u32,
    /// RTT samples taken from kernel timestamps (both TX and RX stamps present).
    pub rtt_kernel_clock: u32,
    /// RTT samples that fell back to the monotonic clock around the syscalls (a stamp was
    /// missing or a clock step made the kernel difference implausible).
    pub rtt_monotonic_clock: u32,
    /// The agent's STAMP reflector (all zero when it does not run one).
    pub reflector: crate::stamp::ReflectorCounts,
    /// Reports in the agent's spool for this aggregator, this one included (not yet
    /// acknowledged when the report was made).
    pub spool_reports: u32,
    /// Reports this agent process dropped for this aggregator so far (spool bound reached,
    /// or its queue full): cumulative within the session.
    pub spool_dropped: u32,
}

/// Statistics of one path over one report interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    /// Destination as the user named it (`127.0.0.2`, `example.net`, `10.0.0.1:443`).
    pub dst: String,
    pub probe: Option<ProbeKind>,
    /// Probes sent in this interval.
    pub sent: u32,
    /// Replies in time and timeouts decided in this interval: over any run of reports,
    /// sent = received + lost + in flight at the end.
    pub received: u32,
    pub lost: u32,
    /// Replies that arrived after their probe had been declared lost.
    pub late: u32,
    pub duplicate: u32,
    pub reordered: u32,
    /// Probes that could not be sent (socket error, unresolved name).
    pub send_errors: u32,
    /// Probes sent and not yet decided at the end of the interval.
    pub in_flight: u32,
    /// RTT samples in microseconds.
    pub rtt: SparseHist,
    /// Exact sum of the RTT samples in microseconds (histogram `_sum`).
    pub rtt_sum_us: u64,
    /// RFC 3550 interarrival jitter at the end of the interval, in microseconds.
    pub jitter_us: Option<u32>,
    /// |RTT difference| of consecutive replies in arrival order (RFC 5481 IPDV magnitude),
    /// microseconds.
    pub ipdv: SparseHist,
    /// STAMP paths only: loss per direction and one-way delay.
    pub directional: Option<crate::stamp::Directional>,
    /// Per-hop view toward this target (ICMP targets beyond the directly connected
    /// subnets): one entry per TTL that was probed, in TTL order.
    pub hops: Vec<HopReport>,
    /// Times the hop list toward this target changed in this interval.
    pub route_changes: u32,
}

/// Where a hop sits on the way from the agent to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HopRole {
    /// Private addresses behind the default gateway.
    Lan,
    /// The default gateway (customer premises equipment).
    Cpe,
    /// The ISP's first hops, up to its boundary (configured prefixes, or detected).
    Isp,
    /// Between the ISP and the target.
    Transit,
    /// The target itself.
    Target,
    /// No hop has answered at this TTL yet.
    Unknown,
}

impl HopRole {
    pub fn as_str(self) -> &'static str {
        match self {
            HopRole::Lan => "lan",
            HopRole::Cpe => "cpe",
            HopRole::Isp => "isp",
            HopRole::Transit => "transit",
            HopRole::Target => "target",
            HopRole::Unknown => "unknown",
        }
    }
}

/// TTL-limited probes toward a target that expired at (or were answered by) one hop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HopReport {
    /// 1-based hop number (the TTL of the probes).
    pub ttl: u8,
    /// The address that answered at this TTL most recently.
    pub addr: Option<String>,
    pub role: Option<HopRole>,
    /// sent / received / lost and the RTT histogram of this hop's probes (no `hops`).
    pub stats: PathReport,
}

impl PathReport {
    pub fn probe(&self) -> ProbeKind {
        self.probe.unwrap_or(ProbeKind::Icmp)
    }
}

/// Agent → aggregator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    Hello(Hello),
    Report(Report),
    /// Ask for a new certificate for this connection's identity (sent on its own stream
    /// when the current one nears expiry): a request signed by a new key.
    Renew {
        csr_pem: String,
    },
    /// Version 3, after the first hello of a connection: join the mesh (take peer lists).
    Join(Join),
    /// Version 4: the outcome of confirmation bursts, sent as soon as a burst is decided
    /// and never spooled (evidence for real-time alerts only; not in any metric of loss).
    Confirm(Confirm),
}

/// Paths in one [`Confirm`] at most.
pub const MAX_CONFIRM_PATHS: usize = 10_000;

/// Confirmation bursts decided since the last `Confirm`: after a probe of a path is lost
/// the agent sends a short burst of extra probes to that target, so that the aggregator
/// can tell a loss onset from background loss within a fraction of a second instead of
/// waiting for seconds of regular probes. The probe that started a burst is not in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm {
    pub paths: Vec<ConfirmPath>,
}

/// One decided burst toward one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmPath {
    /// Destination as in the path's [`PathReport`].
    pub dst: String,
    pub probe: ProbeKind,
    pub sent: u32,
    pub received: u32,
    pub lost: u32,
    /// The agent's bursts toward other targets still under way when this one was decided:
    /// more evidence about the agent's own side is on its way (the aggregator may wait
    /// for it before it says which paths lose).
    pub others_under_way: u32,
}

/// Addresses advertised per agent at most.
pub const MAX_ADVERTISE: usize = 8;
/// Peers in one peer list at most.
pub const MAX_PEERS: usize = 100_000;

/// How other agents reach this one for probes. An agent that sends it gets peer lists
/// ([`ServerMsg::Peers`]) on a stream the aggregator opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// Addresses other agents probe, preferred first. Empty: the address the aggregator
    /// sees the connection come from.
    pub advertise: Vec<std::net::IpAddr>,
    /// UDP port of this agent's STAMP reflector, when it runs one.
    pub stamp_port: Option<u16>,
}

/// One entry of a peer list: an agent to probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's agent name: the `dst` label of paths toward it.
    pub name: String,
    pub site: Option<String>,
    pub isp: Option<String>,
    /// Where to probe it, preferred first (never empty).
    pub addrs: Vec<std::net::IpAddr>,
    /// Its STAMP reflector's port, when it runs one.
    pub stamp_port: Option<u16>,
}

/// Why the aggregator refused something. Bounded: it is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The report or hello named another agent than the certificate's identity.
    WrongIdentity,
    /// The frame or message could not be decoded.
    Malformed,
    /// The frame exceeded the size limit.
    Oversize,
    /// The peer speaks a protocol version this aggregator does not.
    UnsupportedVersion,
    /// A report before the hello.
    NoHello,
    /// TLS: certificate missing, unknown issuer, expired.
    Certificate,
    /// The certificate was revoked (`pathpulse-aggregator cert revoke`).
    Revoked,
    /// Enrollment: no such token (mistyped, or made for another aggregator).
    TokenUnknown,
    /// Enrollment: the token was used already (tokens are one-time).
    TokenReused,
    /// Enrollment: the token expired.
    TokenExpired,
    /// Over the agent's rate limit (reports or registrations): a refused report stays in
    /// the agent's spool and is sent again after its backoff.
    RateLimited,
}

impl RefuseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::WrongIdentity => "wrong_identity",
            RefuseReason::Malformed => "malformed",
            RefuseReason::Oversize => "oversize",
            RefuseReason::UnsupportedVersion => "unsupported_version",
            RefuseReason::NoHello => "no_hello",
            RefuseReason::Certificate => "certificate",
            RefuseReason::Revoked => "revoked",
            RefuseReason::TokenUnknown => "token_unknown",
            RefuseReason::TokenReused => "token_reused",
            RefuseReason::TokenExpired => "token_expired",
            RefuseReason::RateLimited => "rate_limited",
        }
    }

    /// Every reason, in declaration order (metric label values).
    pub const ALL: [RefuseReason; 11] = [
        RefuseReason::WrongIdentity,
        RefuseReason::Malformed,
        RefuseReason::Oversize,
        RefuseReason::UnsupportedVersion,
        RefuseReason::NoHello,
        RefuseReason::Certificate,
        RefuseReason::Revoked,
        RefuseReason::TokenUnknown,
        RefuseReason::TokenReused,
        RefuseReason::TokenExpired,
        RefuseReason::RateLimited,
    ];
}

/// Agent → aggregator on an enrollment connection (ALPN [`crate::tls::ENROLL_ALPN`], no
/// client certificate): exchange a one-time token for a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token's secret part (the token minus its CA fingerprint).
    pub secret: String,
    /// The identity asked for.
    pub name: String,
    /// PKCS #10 request signed by the agent's own new key (the key never leaves the agent).
    pub csr_pem: String,
}

/// Aggregator → agent: the answer to an [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollReply {
    Issued {
        cert_pem: String,
        ca_pem: String,
    },
    Refused {
        reason: RefuseReason,
        detail: String,
    },
}

/// Largest enrollment request accepted (a CSR is well under 2 KiB).
pub const MAX_ENROLL_FRAME: u32 = 16 * 1024;

/// Aggregator → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Answer to hello: the aggregator accepted the agent.
    Welcome { aggregator: String },
    /// The report with this sequence has been applied (or was applied before).
    Ack { seq: u64 },
    /// Something was refused; the connection may be closed after this.
    Refused {
        reason: RefuseReason,
        detail: String,
    },
    /// Answer to [`ClientMsg::Renew`]: the new certificate, PEM.
    Renewed { cert_pem: String },
    /// Version 3: the agent's whole peer list, sent on the peer stream at join and after
    /// every change. `epoch` grows with every change of the aggregator's membership.
    Peers { epoch: u64, peers: Vec<Peer> },
}

/// Check a join's sizes.
pub fn validate_join(j: &Join) -> Result<(), String> {
    if j.advertise.len() > MAX_ADVERTISE {
        return Err(format!(
            "{} advertised addresses, limit {MAX_ADVERTISE}",
            j.advertise.len()
        ));
    }
    if j.stamp_port == Some(0) {
        return Err("STAMP port 0".into());
    }
    Ok(())
}

/// Check a peer list's sizes (the agent's side of the decoder's limits).
pub fn validate_peers(peers: &[Peer]) -> Result<(), String> {
    if peers.len() > MAX_PEERS {
        return Err(format!("{} peers, limit {MAX_PEERS}", peers.len()));
    }
    for p in peers {
        let long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_NAME_LEN);
        if p.name.is_empty() || p.name.len() > MAX_NAME_LEN || long(&p.site) || long(&p.isp) {
            return Err(format!("peer `{}`: name or label out of bounds", p.name));
        }
        if p.addrs.is_empty() || p.addrs.len() > MAX_ADVERTISE {
            return Err(format!(
                "peer `{}`: {} addresses, expected 1..={MAX_ADVERTISE}",
                p.name,
                p.addrs.len()
            ));
        }
    }
    Ok(())
}

/// Check the invariants the decoder cannot express: sizes of strings and lists.
pub fn validate_report(r: &Report) -> Result<(), String> {
    if r.paths.len() > MAX_PATHS_PER_REPORT {
        return Err(format!(
            "{} paths, limit {MAX_PATHS_PER_REPORT}",
            r.paths.len()
        ));
    }
    if r.agent.len() > MAX_NAME_LEN {
        return Err("agent name too long".into());
    }
    for p in &r.paths {
        if p.dst.is_empty() || p.dst.len() > MAX_NAME_LEN {
            return Err(format!(
                "destination of length {} out of 1..={MAX_NAME_LEN}",
                p.dst.len()
            ));
        }
        if p.hops.len() > MAX_HOPS {
            return Err(format!(
                "path {}: {} hops, limit {MAX_HOPS}",
                p.dst,
                p.hops.len()
            ));
        }
        for h in &p.hops {
            if !h.stats.hops.is_empty()
                || h.addr.as_ref().is_some_and(|a| a.len() > MAX_NAME_LEN)
                || u64::from(h.stats.received) != h.stats.rtt.count()
            {
                return Err(format!("path {}: hop {} is malformed", p.dst, h.ttl));
            }
        }
        if p.ipdv.count() > u64::from(p.received) {
            return Err(format!("path {}: more IPDV samples than replies", p.dst));
        }
        if let Some(d) = &p.directional {
            crate::stamp::validate(d, p.received).map_err(|e| format!("path {}: {e}", p.dst))?;
        }
        if u64::from(p.received) != p.rtt.count() {
            return Err(format!(
                "path {}: {} received but {} RTT samples",
                p.dst,
                p.received,
                p.rtt.count()
            ));
        }
    }
    Ok(())
}

/// Check a [`Confirm`] against the limits: what an aggregator must refuse.
pub fn validate_confirm(c: &Confirm) -> Result<(), String> {
    if c.paths.len() > MAX_CONFIRM_PATHS {
        return Err(format!(
            "{} confirmation bursts, limit {MAX_CONFIRM_PATHS}",
            c.paths.len()
        ));
    }
    for p in &c.paths {
        if p.dst.is_empty() || p.dst.len() > MAX_NAME_LEN {
            return Err(format!(
                "confirmation burst: destination of length {} out of 1..={MAX_NAME_LEN}",
                p.dst.len()
            ));
        }
        if u64::from(p.received) + u64::from(p.lost) > u64::from(p.sent) {
            return Err(format!(
                "confirmation burst to {}: {} received and {} lost of {} sent",
                p.dst, p.received, p.lost, p.sent
            ));
        }
    }
    Ok(())
}
