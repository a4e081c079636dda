//! Agent configuration: a TOML file, every key overridable by a flag or a `PATHPULSE_*`
//! environment variable. All problems are collected and reported together, each with the
//! key that is wrong and why; the binary exits 78 (EX_CONFIG) on any of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::probe::hop_udp::HopProbe;
use crate::probe::stamp::clock::ClockSync;
use crate::spool::SpoolLimits;
use crate::target::TargetSpec;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Probe interval per hop: routers answer about one ICMP error per second per source
/// (Linux's default), so faster probing shows their rate limit, not the path.
pub const DEFAULT_HOP_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest hop interval: a router is probed at most once per hop interval, and
/// faster than routers' ICMP error rate the agent would measure that limit, not the path
/// (and send real routers more than they answer).
pub const MIN_HOP_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest hop interval with `--lab-fast-hops` (lab routers with
/// `net.ipv4.icmp_ratelimit=0`, which answer every probe).
pub const MIN_LAB_HOP_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pathpulse";
/// Exit code for bad configuration (sysexits.h EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

/// The file form. Every field optional; flags and environment override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub name: Option<String>,
    /// SPEC strings or tables `{ spec = "...", dscp = 46, ... }` (see [`crate::target_list`]).
    pub targets: Option<Vec<toml::Value>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub report_interval: Option<String>,
    pub aggregators: Option<Vec<String>>,
    pub metrics_listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub site: Option<String>,
    pub isp: Option<String>,
    pub hops: Option<bool>,
    pub spool_max_reports: Option<u64>,
    pub spool_max_mib: Option<u64>,
    /// Address prefixes of this agent's ISP (`["203.0.113.0/24"]`): hops inside them are
    /// the `isp` role; without them the ISP boundary is guessed (see README).
    pub isp_prefixes: Option<Vec<String>>,
    pub hop_interval: Option<String>,
    pub hop_probe: Option<HopProbe>,
    /// Internet anchors (see [`crate::anchors`]): addresses, names, `resolvers`, `public`.
    pub anchors: Option<Vec<String>>,
    pub stamp_listen: Option<Vec<String>>,
    pub stamp_rate: Option<u32>,
    pub stamp_key_file: Option<PathBuf>,
    /// Mesh: addresses other agents probe this one at (default: the address the
    /// aggregator sees its connection come from).
    pub advertise: Option<Vec<String>>,
    pub clock_sync: Option<ClockSync>,
    pub confirm_probes: Option<u32>,
    pub confirm_spacing: Option<String>,
}

/// Flags of `pathpulse-agent run` (also the environment: `PATHPULSE_<FLAG>`).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "PATHPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Agent name (its identity in certificates and the `src` label). Default: host name.
    #[arg(long, env = "PATHPULSE_NAME")]
    pub name: Option<String>,
    /// Target to probe, repeatable: HOST, icmp:HOST, tcp:HOST:PORT, stamp:HOST[:PORT],
    /// dns:SERVER[:PORT]/NAME, each optionally followed by options, e.g.
    /// icmp:10.0.0.2,dscp=46,size=1000 (keys: family, source, interface, dscp, ttl, size,
    /// ecmp, label).
    #[arg(
        long = "target",
        value_name = "SPEC",
        env = "PATHPULSE_TARGETS",
        value_delimiter = ','
    )]
    pub targets: Vec<String>,
    /// Probe interval per target, e.g. 1s, 250ms (10ms .. 1h).
    #[arg(long, value_name = "DUR", env = "PATHPULSE_INTERVAL")]
    pub interval: Option<String>,
    /// Time after which an unanswered probe is lost, e.g. 2s.
    #[arg(long, value_name = "DUR", env = "PATHPULSE_TIMEOUT")]
    pub timeout: Option<String>,
    /// How often a report is sent to the aggregators, e.g. 5s.
    #[arg(long, value_name = "DUR", env = "PATHPULSE_REPORT_INTERVAL")]
    pub report_interval: Option<String>,
    /// Probe interval per hop toward ICMP targets, and so the most a router is probed
    /// (default 1s; 1s .. 1h).
    #[arg(long, value_name = "DUR", env = "PATHPULSE_HOP_INTERVAL")]
    pub hop_interval: Option<String>,
    /// Test only: let --hop-interval go down to 100ms, for lab routers that answer every
    /// probe (real routers answer about one ICMP error a second and would show that limit).
    #[arg(long, hide = true)]
    pub lab_fast_hops: bool,
    /// Internet anchor, repeatable: probed with ICMP and given hop discovery like a
    /// target. An address, a name, `resolvers` (this host's DNS resolvers, from
    /// /etc/resolv.conf, behind a local stub from /run/systemd/resolve/resolv.conf) or
    /// `public` (1.1.1.1, 8.8.8.8, 9.9.9.9). Default: none.
    #[arg(
        long = "anchor",
        value_name = "ANCHOR",
        env = "PATHPULSE_ANCHORS",
        value_delimiter = ','
    )]
    pub anchors: Vec<String>,
    /// Packets for hop discovery: icmp (echo requests) or udp (to port 33434); both keep
    /// one flow per target so ECMP routers keep them on one path (default icmp).
    #[arg(long, value_name = "KIND", env = "PATHPULSE_HOP_PROBE")]
    pub hop_probe: Option<HopProbe>,
    /// Aggregator to report to, repeatable (each gets every report).
    #[arg(
        long = "aggregator",
        value_name = "HOST:PORT",
        env = "PATHPULSE_AGGREGATORS",
        value_delimiter = ','
    )]
    pub aggregators: Vec<String>,
    /// Serve this agent's own /metrics here (standalone mode), e.g. 127.0.0.1:9469.
    #[arg(long, value_name = "ADDR", env = "PATHPULSE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Directory for identity and spool.
    #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Site label of this agent.
    #[arg(long, env = "PATHPULSE_SITE")]
    pub site: Option<String>,
    /// ISP label of this agent's uplink.
    #[arg(long, env = "PATHPULSE_ISP")]
    pub isp: Option<String>,
    /// Turn off hop discovery and per-hop metrics toward ICMP targets.
    #[arg(long, env = "PATHPULSE_NO_HOPS")]
    pub no_hops: bool,
    /// Unacknowledged reports kept on disk per aggregator; beyond it the oldest go.
    #[arg(long, value_name = "N", env = "PATHPULSE_SPOOL_MAX_REPORTS")]
    pub spool_max_reports: Option<u64>,
    /// Size bound of each aggregator's spool, MiB.
    #[arg(long, value_name = "MIB", env = "PATHPULSE_SPOOL_MAX_MIB")]
    pub spool_max_mib: Option<u64>,
    /// Run the STAMP reflector (RFC 8762) on this UDP address, repeatable, e.g.
    /// 0.0.0.0:8620, or `off`. Default with an aggregator (a mesh member): 0.0.0.0:862 and
    /// [::]:862, or the sockets systemd passes (pathpulse-agent.socket); without: only those.
    #[arg(
        long = "stamp-listen",
        value_name = "ADDR",
        env = "PATHPULSE_STAMP_LISTEN",
        value_delimiter = ','
    )]
    pub stamp_listen: Vec<String>,
    /// Most STAMP packets per second the reflector answers per source address (and burst).
    #[arg(long, value_name = "N", env = "PATHPULSE_STAMP_RATE")]
    pub stamp_rate: Option<u32>,
    /// STAMP authenticated mode (HMAC-SHA-256) for sender and reflector: a file holding the
    /// shared key in hex (at least 32 hex digits). Default: unauthenticated.
    #[arg(long, value_name = "FILE", env = "PATHPULSE_STAMP_KEY_FILE")]
    pub stamp_key_file: Option<PathBuf>,
    /// Mesh: address other agents probe this one at, repeatable (default: the address the
    /// aggregator sees this agent's connection come from; set it behind NAT).
    #[arg(
        long = "advertise",
        value_name = "IP",
        env = "PATHPULSE_ADVERTISE",
        value_delimiter = ','
    )]
    pub advertise: Vec<String>,
    /// Who says the host clock is synchronized (STAMP's S bit, so one-way delay): kernel
    /// (adjtimex, as NTP daemons set it) or assume (PTP via phc2sys, which the kernel does
    /// not see; namespaces sharing one clock). Default kernel.
    #[arg(long, value_name = "MODE", env = "PATHPULSE_CLOCK_SYNC")]
    pub clock_sync: Option<ClockSync>,
    /// Probes of the confirmation burst an ICMP path sends after a lost probe, kept out of
    /// its loss and RTT figures and sent to the aggregators at once for fast alerts (0
    /// turns bursts off; default 60, at most 1000).
    #[arg(long, value_name = "N", env = "PATHPULSE_CONFIRM_PROBES")]
    pub confirm_probes: Option<u32>,
    /// Time between the probes of a confirmation burst (default 3ms; 1ms .. 100ms).
    #[arg(long, value_name = "DUR", env = "PATHPULSE_CONFIRM_SPACING")]
    pub confirm_spacing: Option<String>,
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub name: String,
    pub targets: Vec<TargetSpec>,
    pub interval: Duration,
    pub timeout: Duration,
    pub report_interval: Duration,
    pub aggregators: Vec<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub state_dir: PathBuf,
    pub site: Option<String>,
    pub isp: Option<String>,
    pub spool: SpoolLimits,
    /// Hop discovery and per-hop monitoring toward ICMP targets.
    pub hops: bool,
    pub isp_prefixes: Vec<crate::probe::route::Prefix>,
    pub hop_interval: Duration,
    pub hop_probe: HopProbe,
    /// Where the STAMP reflector listens.
    pub stamp_listen: StampListen,
    /// Reflected packets per second per source address.
    pub stamp_rate: u32,
    /// Shared key of STAMP authenticated mode (sender and reflector); None: unauthenticated.
    pub stamp_key: Option<crate::probe::stamp::packet::StampKey>,
    /// Mesh: addresses peers probe this agent at (empty: as the aggregator sees it).
    pub advertise: Vec<std::net::IpAddr>,
    /// Who says the host clock is synchronized (STAMP's S bit).
    pub clock_sync: ClockSync,
    /// Confirmation bursts of ICMP paths (read at start).
    pub confirm: crate::probe::confirm::Confirmation,
}

/// Where the STAMP reflector listens. Sockets passed by systemd (socket activation,
/// `pathpulse-agent.socket`) are used instead of binding, unless the reflector is `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampListen {
    /// `off`: no reflector.
    Off,
    /// Nothing asked for, no aggregator: only sockets systemd passes.
    Activated,
    /// A mesh member's default, [`DEFAULT_STAMP_LISTEN`]: a port that cannot be bound is a
    /// warning (peers then get no STAMP path to this agent), not a failure.
    Default,
    /// Addresses given: a port that cannot be bound is a configuration error.
    Addrs(Vec<SocketAddr>),
}

/// Where a mesh member's reflector listens by default: UDP 862 (RFC 8762), both families.
pub const DEFAULT_STAMP_LISTEN: [&str; 2] = ["0.0.0.0:862", "[::]:862"];

impl StampListen {
    /// The addresses to bind when systemd passed no socket.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            StampListen::Off | StampListen::Activated => Vec::new(),
            StampListen::Default => DEFAULT_STAMP_LISTEN
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            StampListen::Addrs(a) => a.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

/// Every problem found, in the order found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.key, e.reason)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Collect(Vec<ConfigError>);

impl Collect {
    fn err(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.to_string(),
            reason: reason.into(),
        });
    }

    fn duration(
        &mut self,
        key: &str,
        v: Option<&str>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(s) = v else { return default };
        match parse_duration(s) {
            Ok(d) if d >= min && d <= max => d,
            Ok(d) => {
                self.err(
                    key,
                    format!(
                        "{} is outside {} .. {}",
                        fmt_dur(d),
                        fmt_dur(min),
                        fmt_dur(max)
                    ),
                );
                default
            }
            Err(e) => {
                self.err(key, e);
                default
            }
        }
    }
}

pub fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Durations are written like `250ms`, `10s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 250ms or 10s ({e})"))
}

/// Read the TOML file, naming the file and the line on a syntax error or unknown key.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            key: "config".into(),
            reason: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    parse_file(&text, path)
}

/// Parse the TOML text of a configuration file (`path` names it in errors).
pub fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            key: "config".into(),
            reason: format!("{}: {}", path.display(), e.to_string().trim_end()),
        }])
    })
}

/// Agent names: 1..=64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    // One rule for names, shared with certificate issuing and checking.
    pathpulse_wire::tls::validate_agent_name(name).map_err(|e| match e {
        pathpulse_wire::tls::TlsError::BadName(why) => why,
        other => other.to_string(),
    })
}

/// This machine's short host name when it is a valid agent name, else `agent`.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_string())
        .filter(|h| check_name(h).is_ok())
        .unwrap_or_else(|| "agent".to_string())
}

impl AgentConfig {
    /// Merge file, environment and flags (flags and environment win) and validate.
    pub fn resolve(args: &RunArgs) -> Result<AgentConfig, ConfigErrors> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        Self::resolve_with(args, file)
    }

    /// As [`AgentConfig::resolve`] with the file already parsed.
    pub fn resolve_with(args: &RunArgs, file: FileConfig) -> Result<AgentConfig, ConfigErrors> {
        let mut c = Collect::default();
        let name = args.name.clone().or(file.name).unwrap_or_else(host_name);
        if let Err(e) = check_name(&name) {
            c.err("name", e);
        }
        let (targets, written, target_errs) =
            crate::target_list::resolve(&args.targets, file.targets);
        for (key, reason) in target_errs {
            c.err(&key, reason);
        }
        // Anchors join the targets as ICMP targets (one already a target stays as written).
        let anchor_entries = if args.anchors.is_empty() {
            file.anchors.unwrap_or_default()
        } else {
            args.anchors.clone()
        };
        let (anchors, anchor_errs) =
            crate::anchors::expand(&anchor_entries, crate::anchors::read_file);
        for (key, reason) in anchor_errs {
            c.err(&key, reason);
        }
        let mut targets = targets;
        for a in anchors {
            if !targets
                .iter()
                .any(|t| t.probe == a.probe && t.label == a.label)
            {
                targets.push(a);
            }
        }
        targets.shrink_to_fit();
        let stamp_listen_specs = if args.stamp_listen.is_empty() {
            file.stamp_listen.unwrap_or_default()
        } else {
            args.stamp_listen.clone()
        };
        let mut addrs = Vec::new();
        let off = stamp_listen_specs.iter().any(|s| s == "off");
        if off && stamp_listen_specs.len() > 1 {
            c.err("stamp_listen", "`off` goes alone, not beside addresses");
        }
        for (i, s) in stamp_listen_specs.iter().enumerate().filter(|_| !off) {
            match s.parse::<SocketAddr>() {
                Ok(a) => addrs.push(a),
                Err(_) => c.err(
                    &format!("stamp_listen[{i}]"),
                    format!("`{s}` is not an address like 0.0.0.0:862 or [::]:862, nor `off`"),
                ),
            }
        }
        let stamp_rate = args
            .stamp_rate
            .or(file.stamp_rate)
            .unwrap_or(crate::probe::stamp::reflector::DEFAULT_RATE);
        if stamp_rate == 0 {
            c.err("stamp_rate", "must be at least 1 packet per second");
        }
        let stamp_key = match args.stamp_key_file.clone().or(file.stamp_key_file) {
            None => None,
            Some(p) => match std::fs::read_to_string(&p) {
                Ok(text) => match crate::probe::stamp::packet::StampKey::from_hex(&text) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        c.err("stamp_key_file", format!("{}: {e}", p.display()));
                        None
                    }
                },
                Err(e) => {
                    c.err(
                        "stamp_key_file",
                        format!("cannot read {}: {e}", p.display()),
                    );
                    None
                }
            },
        };
        // A reflector alone is something to do, and so is a mesh (peer lists come from the
        // aggregators): targets are then optional.
        let meshed = !args.aggregators.is_empty()
            || file.aggregators.as_ref().is_some_and(|a| !a.is_empty());
        let stamp_listen = match (off, addrs.is_empty(), meshed) {
            (true, _, _) => StampListen::Off,
            (false, false, _) => StampListen::Addrs(addrs),
            (false, true, true) => StampListen::Default,
            (false, true, false) => StampListen::Activated,
        };
        if targets.is_empty() && written == 0 && (stamp_listen_specs.is_empty() || off) && !meshed {
            c.err("targets", "no targets: give --target SPEC (repeatable) or `targets = [...]` in the config file, or anchors");
        }
        let interval = c.duration(
            "interval",
            args.interval.as_deref().or(file.interval.as_deref()),
            DEFAULT_INTERVAL,
            MIN_INTERVAL,
            MAX_INTERVAL,
        );
        let timeout = c.duration(
            "timeout",
            args.timeout.as_deref().or(file.timeout.as_deref()),
            DEFAULT_TIMEOUT,
            Duration::from_millis(1),
            MAX_TIMEOUT,
        );
        let report_interval = c.duration(
            "report_interval",
            args.report_interval
                .as_deref()
                .or(file.report_interval.as_deref()),
            DEFAULT_REPORT_INTERVAL,
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        let hop_interval = c.duration(
            "hop_interval",
            args.hop_interval
                .as_deref()
                .or(file.hop_interval.as_deref()),
            DEFAULT_HOP_INTERVAL,
            if args.lab_fast_hops {
                MIN_LAB_HOP_INTERVAL
            } else {
                MIN_HOP_INTERVAL
            },
            MAX_INTERVAL,
        );
        let aggregators = if args.aggregators.is_empty() {
            file.aggregators.unwrap_or_default()
        } else {
            args.aggregators.clone()
        };
        for (i, a) in aggregators.iter().enumerate() {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                c.err(
                    &format!("aggregators[{i}]"),
                    format!("`{a}` is not HOST:PORT"),
                );
            }
        }
        let metrics_listen = match args
            .metrics_listen
            .as_deref()
            .or(file.metrics_listen.as_deref())
        {
            None => None,
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.err(
                        "metrics_listen",
                        format!("`{s}` is not an address like 127.0.0.1:9469 or [::]:9469"),
                    );
                    None
                }
            },
        };
        if aggregators.is_empty()
            && metrics_listen.is_none()
            && !c.0.iter().any(|e| e.key == "metrics_listen")
        {
            c.err(
                "aggregators",
                "nothing to do: give --aggregator HOST:PORT, --metrics-listen ADDR, or both",
            );
        }
        let state_dir = args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let mut confirm = crate::probe::confirm::Confirmation::default();
        if let Some(n) = args.confirm_probes.or(file.confirm_probes) {
            if n <= crate::probe::confirm::MAX_PROBES {
                confirm.probes = n;
            } else {
                c.err(
                    "confirm_probes",
                    format!("{n} is outside 0 .. {}", crate::probe::confirm::MAX_PROBES),
                );
            }
        }
        confirm.spacing = c.duration(
            "confirm_spacing",
            args.confirm_spacing
                .as_deref()
                .or(file.confirm_spacing.as_deref()),
            crate::probe::confirm::DEFAULT_SPACING,
            Duration::from_millis(1),
            Duration::from_millis(100),
        );
        let mut spool = SpoolLimits::default();
        if let Some(n) = args.spool_max_reports.or(file.spool_max_reports) {
            if (1..=10_000_000).contains(&n) {
                spool.max_reports = n as usize;
            } else {
                c.err("spool_max_reports", format!("{n} is outside 1 .. 10000000"));
            }
        }
        if let Some(m) = args.spool_max_mib.or(file.spool_max_mib) {
            if (1..=1 << 20).contains(&m) {
                spool.max_bytes = m << 20;
            } else {
                c.err("spool_max_mib", format!("{m} is outside 1 .. 1048576"));
            }
        }
        let advertise_specs = if args.advertise.is_empty() {
            file.advertise.unwrap_or_default()
        } else {
            args.advertise.clone()
        };
        let mut advertise = Vec::new();
        for (i, s) in advertise_specs.iter().enumerate() {
            match s.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => advertise.push(ip),
                _ => c.err(
                    &format!("advertise[{i}]"),
                    format!("`{s}` is not an IP address peers can reach"),
                ),
            }
        }
        if advertise.len() > pathpulse_wire::message::MAX_ADVERTISE {
            c.err(
                "advertise",
                format!(
                    "{} addresses, at most {}",
                    advertise.len(),
                    pathpulse_wire::message::MAX_ADVERTISE
                ),
            );
        }
        let mut isp_prefixes = Vec::new();
        for (i, p) in file.isp_prefixes.unwrap_or_default().iter().enumerate() {
            match p.parse() {
                Ok(p) => isp_prefixes.push(p),
                Err(e) => c.err(&format!("isp_prefixes[{i}]"), e),
            }
        }
        if c.0.is_empty() {
            Ok(AgentConfig {
                name,
                targets,
                interval,
                timeout,
                report_interval,
                aggregators,
                metrics_listen,
                state_dir,
                site: args.site.clone().or(file.site),
                isp: args.isp.clone().or(file.isp),
                spool,
                hops: !args.no_hops && file.hops.unwrap_or(true),
                isp_prefixes,
                hop_interval,
                hop_probe: args.hop_probe.or(file.hop_probe).unwrap_or_default(),
                stamp_listen,
                stamp_rate,
                stamp_key,
                advertise,
                clock_sync: args.clock_sync.or(file.clock_sync).unwrap_or_default(),
                confirm,
            })
        } else {
            Err(ConfigErrors(c.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pathpulse_wire::ProbeKind;

    fn args(targets: &[&str]) -> RunArgs {
        RunArgs {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            metrics_listen: Some("127.0.0.1:0".into()),
            name: Some("a1".into()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let c = AgentConfig::resolve(&args(&["127.0.0.2"])).expect("valid");
        assert_eq!(
            (c.interval, c.timeout, c.report_interval),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_REPORT_INTERVAL)
        );
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn all_errors_are_reported_with_their_key() {
        let mut a = args(&["tcp:1.2.3.4", "127.0.0.2", "127.0.0.2"]);
        a.interval = Some("5 parsecs".into());
        a.timeout = Some("2h".into());
        a.name = Some("-bad name".into());
        a.aggregators = vec!["nohostport".into()];
        let e = AgentConfig::resolve(&a).expect_err("invalid");
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "name",
                "targets[0]",
                "targets[2]",
                "interval",
                "timeout",
                "aggregators[0]"
            ],
            "{e}"
        );
        let text = e.to_string();
        assert!(text.contains("`5 parsecs` is not a duration"), "{text}");
        assert!(text.contains("outside"), "{text}");
    }

    #[test]
    fn stamp_reflector_keys_are_checked_and_a_reflector_alone_needs_no_targets() {
        let mut a = args(&[]);
        a.stamp_listen = vec!["0.0.0.0:862".into(), "[::]:862".into()];
        let c = AgentConfig::resolve(&a).expect("reflector only");
        assert_eq!(c.stamp_listen.addrs().len(), 2);
        assert_eq!(c.stamp_listen.addrs(), StampListen::Default.addrs());
        assert_eq!(c.stamp_rate, crate::probe::stamp::reflector::DEFAULT_RATE);
        a.stamp_listen = vec!["0.0.0.0".into()];
        a.stamp_rate = Some(0);
        let e = AgentConfig::resolve(&a).expect_err("bad");
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["stamp_listen[0]", "stamp_rate"], "{e}");
        let c =
            AgentConfig::resolve(&args(&["stamp:10.0.0.1", "stamp:10.0.0.1:8620"])).expect("two");
        assert_eq!(
            c.stamp_listen,
            StampListen::Activated,
            "no reflector bound unless asked for or meshed"
        );
        // A mesh member reflects on 862 by default; `off` turns it off, alone.
        let mut a = args(&[]);
        a.aggregators = vec!["agg.example:4470".into()];
        assert_eq!(
            AgentConfig::resolve(&a).expect("mesh").stamp_listen,
            StampListen::Default
        );
        a.stamp_listen = vec!["off".into()];
        assert_eq!(
            AgentConfig::resolve(&a).expect("off").stamp_listen,
            StampListen::Off
        );
        a.stamp_listen = vec!["off".into(), "0.0.0.0:8620".into()];
        let e = AgentConfig::resolve(&a).expect_err("off beside an address");
        assert_eq!(e.0[0].key, "stamp_listen", "{e}");
        a.stamp_listen = vec!["[::]:8620".into()];
        let c = AgentConfig::resolve(&a).expect("explicit");
        assert_eq!(
            c.stamp_listen,
            StampListen::Addrs(vec!["[::]:8620".parse().expect("addr")])
        );
    }

    #[test]
    fn nothing_to_do_is_refused() {
        let mut a = args(&["127.0.0.2"]);
        a.metrics_listen = None;
        let e = AgentConfig::resolve(&a).expect_err("nothing to do");
        assert_eq!(e.0[0].key, "aggregators");
        let e = AgentConfig::resolve(&args(&[])).expect_err("no targets");
        assert_eq!(e.0[0].key, "targets");
        // With an aggregator, peer lists are something to do.
        let mut a = args(&[]);
        a.aggregators = vec!["127.0.0.1:4470".into()];
        a.advertise = vec!["192.0.2.7".into(), "0.0.0.0".into()];
        let e = AgentConfig::resolve(&a).expect_err("bad advertise");
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "advertise[1]");
        a.advertise.pop();
        let c = AgentConfig::resolve(&a).expect("a mesh member without targets");
        assert_eq!(
            c.advertise,
            ["192.0.2.7".parse::<std::net::IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused_with_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, "name = \"a\"\ntargetz = [\"127.0.0.1\"]\n").expect("write");
        let e = load_file(&p).expect_err("unknown key");
        assert!(e.to_string().contains("targetz"), "{e}");
        std::fs::write(
            &p,
            "targets = [\"127.0.0.3\"]\ninterval = \"250ms\"\nmetrics_listen = \"127.0.0.1:0\"\n",
        )
        .expect("write");
        let c = AgentConfig::resolve(&RunArgs {
            config: Some(p),
            name: Some("x".into()),
            ..RunArgs::default()
        })
        .expect("valid file");
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!(c.targets[0].label, "127.0.0.3");
    }

    #[test]
    fn the_shipped_example_states_the_defaults() {
        let text = include_str!("../../packaging/agent.toml");
        let f: FileConfig = toml::from_str(text).expect("packaging/agent.toml parses");
        let d = |s: Option<String>| parse_duration(&s.expect("present")).expect("duration");
        assert_eq!(d(f.interval), DEFAULT_INTERVAL);
        assert_eq!(d(f.timeout), DEFAULT_TIMEOUT);
        assert_eq!(d(f.report_interval), DEFAULT_REPORT_INTERVAL);
        assert_eq!(f.state_dir, Some(PathBuf::from(DEFAULT_STATE_DIR)));
        assert_eq!(f.hops, Some(true));
        assert_eq!(d(f.hop_interval), DEFAULT_HOP_INTERVAL);
        assert_eq!(f.clock_sync, Some(ClockSync::default()));
        assert_eq!(
            f.confirm_probes,
            Some(crate::probe::confirm::DEFAULT_PROBES)
        );
        assert_eq!(d(f.confirm_spacing), crate::probe::confirm::DEFAULT_SPACING);
        // Not the binary's default (none: tests and the demo send nothing beyond the lab),
        // but what an installed agent watches.
        assert_eq!(
            f.anchors,
            Some(vec!["resolvers".to_string(), "public".to_string()])
        );
        let c = AgentConfig::resolve_with(&args(&[]), FileConfig::default())
            .expect_err("no targets and no anchors");
        assert_eq!(c.0[0].key, "targets", "no anchors by default: {c}");
    }

    #[test]
    fn confirmation_bursts_come_from_the_flags_or_the_file_and_bad_values_name_their_key() {
        let file = |t: &str| parse_file(t, Path::new("agent.toml"));
        let c = AgentConfig::resolve(&args(&["127.0.0.2"])).expect("valid");
        assert_eq!(c.confirm, crate::probe::confirm::Confirmation::default());
        let f = file("confirm_probes = 0\nconfirm_spacing = \"10ms\"").expect("file");
        let c = AgentConfig::resolve_with(&args(&["127.0.0.2"]), f).expect("valid");
        assert_eq!(
            (c.confirm.probes, c.confirm.spacing),
            (0, Duration::from_millis(10))
        );
        let mut a = args(&["127.0.0.2"]);
        a.confirm_probes = Some(1001);
        a.confirm_spacing = Some("1s".into());
        let e = AgentConfig::resolve_with(&a, FileConfig::default()).expect_err("bad");
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["confirm_probes", "confirm_spacing"], "{e}");
    }

    #[test]
    fn clock_sync_comes_from_the_flag_or_the_file() {
        let file = |t: &str| parse_file(t, Path::new("agent.toml"));
        let c = AgentConfig::resolve(&args(&["127.0.0.2"])).expect("valid");
        assert_eq!(c.clock_sync, ClockSync::Kernel);
        let f = file("clock_sync = \"assume\"").expect("assume");
        let c = AgentConfig::resolve_with(&args(&["127.0.0.2"]), f).expect("valid");
        assert_eq!(c.clock_sync, ClockSync::Assume);
        let mut a = args(&["127.0.0.2"]);
        a.clock_sync = Some(ClockSync::Kernel);
        let f = file("clock_sync = \"assume\"").expect("assume");
        assert_eq!(
            AgentConfig::resolve_with(&a, f).expect("valid").clock_sync,
            ClockSync::Kernel,
            "the flag wins"
        );
        let e = file("clock_sync = \"ntp\"").expect_err("bad value");
        assert!(e.to_string().contains("clock_sync"), "{e}");
    }

    #[test]
    fn hop_interval_is_at_least_a_second_unless_a_lab_asks() {
        let mut a = args(&["192.0.2.1"]);
        a.hop_interval = Some("200ms".into());
        let e = AgentConfig::resolve(&a).expect_err("below 1 s");
        assert_eq!(e.0[0].key, "hop_interval", "{e}");
        assert!(e.0[0].reason.contains("200ms is outside 1s .. 1h"), "{e}");
        a.lab_fast_hops = true;
        let c = AgentConfig::resolve(&a).expect("a lab's routers answer every probe");
        assert_eq!(c.hop_interval, Duration::from_millis(200));
        a.hop_interval = Some("50ms".into());
        let e = AgentConfig::resolve(&a).expect_err("below 100 ms even in a lab");
        assert_eq!(e.0[0].key, "hop_interval", "{e}");
        a.hop_interval = Some("1s".into());
        a.lab_fast_hops = false;
        assert!(AgentConfig::resolve(&a).is_ok());
    }

    #[test]
    fn anchors_join_the_targets_as_icmp_once_and_flags_win() {
        let file = |anchors: &[&str]| FileConfig {
            anchors: Some(anchors.iter().map(|s| s.to_string()).collect()),
            ..FileConfig::default()
        };
        // Anchors alone are something to probe.
        let c = AgentConfig::resolve_with(&args(&[]), file(&["192.0.2.1", "public"]))
            .expect("anchors only");
        let labels: Vec<&str> = c.targets.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["192.0.2.1", "1.1.1.1", "8.8.8.8", "9.9.9.9"]);
        assert!(c.targets.iter().all(|t| t.probe == ProbeKind::Icmp));
        // An anchor that is already a target stays as the target was written.
        let c = AgentConfig::resolve_with(
            &args(&["icmp:192.0.2.1,dscp=46", "tcp:192.0.2.2:443"]),
            file(&["192.0.2.1", "192.0.2.2"]),
        )
        .expect("valid");
        let t: Vec<(&str, Option<u8>)> = c
            .targets
            .iter()
            .map(|t| (t.label.as_str(), t.options.dscp))
            .collect();
        assert_eq!(
            t,
            [
                ("192.0.2.1", Some(46)),
                ("192.0.2.2:443", None),
                ("192.0.2.2", None)
            ]
        );
        // Flags replace the file's list; a bad entry is named by its key.
        let mut a = args(&["192.0.2.7"]);
        a.anchors = vec!["192.0.2.3".into(), "stamp:192.0.2.4".into()];
        let e = AgentConfig::resolve_with(&a, file(&["public"])).expect_err("bad anchor");
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "anchors[1]");
        a.anchors.pop();
        let c = AgentConfig::resolve_with(&a, file(&["public"])).expect("valid");
        let labels: Vec<&str> = c.targets.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["192.0.2.7", "192.0.2.3"]);
    }
}
