//! Per-target options: address family, source address, interface, DSCP, TTL, packet size,
//! ECMP spreading and the `dst` label. Written after the SPEC, comma-separated, on the
//! command line (`icmp:10.0.0.2,dscp=46,size=1000`), or as keys of a target table in the
//! configuration file (`[[targets]] spec = "icmp:10.0.0.2"  dscp = 46`). Every problem names
//! its key (`targets[1].dscp`) and why.

use std::net::IpAddr;

use pathpulse_wire::ProbeKind;

use crate::probe::icmp_socket::Family;
use crate::target::{Host, TargetSpec};

/// Option keys, in the order the README lists them.
pub const KEYS: [&str; 10] = [
    "family",
    "source",
    "interface",
    "dscp",
    "ttl",
    "size",
    "ecmp",
    "label",
    "hops",
    "confirm",
];
/// Most source ports one target spreads its probes over.
pub const MAX_ECMP: u8 = 64;
/// Largest IP packet a probe may ask for (bytes, headers included).
pub const MAX_SIZE: u16 = 65_000;

/// Which address family a target is probed over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FamilyChoice {
    /// As resolved (IPv4 preferred for names).
    #[default]
    Auto,
    V4,
    V6,
    /// Names only: two paths, one per family (`dst` labels `NAME@v4` and `NAME@v6`).
    Both,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetOptions {
    pub family: FamilyChoice,
    /// Source address of the probes (bound, or `IP_PKTINFO` on shared ICMP sockets).
    pub source: Option<IpAddr>,
    /// Outgoing interface (`SO_BINDTODEVICE`; `IP_PKTINFO` on shared ICMP sockets).
    pub interface: Option<String>,
    /// Differentiated Services code point, 0..=63 (the upper six bits of TOS / traffic class).
    pub dscp: Option<u8>,
    /// IPv4 TTL or IPv6 hop limit of the probes.
    pub ttl: Option<u8>,
    /// IP packet size in bytes, headers included (ICMP and STAMP: padded payload).
    pub size: Option<u16>,
    /// STAMP: spread probes over this many source ports (one session each).
    pub ecmp: Option<u8>,
    /// The `dst` label, instead of the SPEC as written.
    pub label: Option<String>,
    /// ICMP: hop discovery toward this target (default: on unless `--no-hops`; mesh peers
    /// inside the agent's own site get `off`).
    pub hops: Option<bool>,
    /// ICMP: confirmation bursts toward this target (see `probe::confirm`; default on,
    /// anchors off).
    pub confirm: Option<bool>,
}

fn on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("`{v}` is not on or off")),
    }
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    v: &str,
    lo: T,
    hi: T,
) -> Result<T, String> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(format!("`{v}` is not a number in {lo}..={hi}")),
    }
}

impl TargetOptions {
    /// True when no option is set.
    pub fn is_default(&self) -> bool {
        *self == TargetOptions::default()
    }

    /// Options that need a socket of the target's own (source, interface, ECMP ports).
    pub fn needs_own_socket(&self) -> bool {
        self.source.is_some() || self.interface.is_some() || self.ecmp.is_some_and(|n| n > 1)
    }

    /// The family a target's name must resolve in (`None`: any, IPv4 preferred).
    pub fn family(&self) -> Option<Family> {
        match self.family {
            FamilyChoice::V4 => Some(Family::V4),
            FamilyChoice::V6 => Some(Family::V6),
            FamilyChoice::Auto | FamilyChoice::Both => None,
        }
    }

    /// TOS / traffic class byte: DSCP in the upper six bits, ECN bits zero.
    pub fn tos(&self) -> Option<u8> {
        self.dscp.map(|d| d << 2)
    }

    /// Set one option from its text form; the error is the reason (the caller names the key).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let v = value.trim();
        match key {
            "family" => {
                self.family = match v {
                    "v4" | "ipv4" | "4" => FamilyChoice::V4,
                    "v6" | "ipv6" | "6" => FamilyChoice::V6,
                    "both" => FamilyChoice::Both,
                    "auto" => FamilyChoice::Auto,
                    _ => return Err(format!("`{v}` is not one of v4, v6, both, auto")),
                }
            }
            "source" => {
                self.source = Some(
                    v.parse()
                        .map_err(|_| format!("`{v}` is not an IP address"))?,
                )
            }
            "interface" => {
                // IFNAMSIZ is 16 with the terminating NUL.
                let ok = !v.is_empty()
                    && v.len() < 16
                    && !v.contains(['/', ' ', ','])
                    && v != "."
                    && v != "..";
                if !ok {
                    return Err(format!("`{v}` is not an interface name (1..15 characters)"));
                }
                self.interface = Some(v.to_string());
            }
            "dscp" => self.dscp = Some(number(v, 0u8, 63)?),
            "ttl" => self.ttl = Some(number(v, 1u8, 255)?),
            "size" => self.size = Some(number(v, 1u16, MAX_SIZE)?),
            "ecmp" => self.ecmp = Some(number(v, 1u8, MAX_ECMP)?),
            "hops" => self.hops = Some(on_off(v)?),
            "confirm" => self.confirm = Some(on_off(v)?),
            "label" => {
                if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) {
                    return Err("must be 1..200 printable characters".into());
                }
                self.label = Some(v.to_string());
            }
            _ => {
                return Err(format!(
                    "unknown option `{key}` (known: {})",
                    KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Problems of these options on this target: (option key, reason).
    pub fn check(&self, t: &TargetSpec) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        let kind = t.probe.as_str();
        let ip = match &t.host {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        };
        if let Some(ip) = ip {
            let fam = Family::of(&ip);
            match self.family {
                FamilyChoice::V4 | FamilyChoice::V6 if self.family() != Some(fam) => errs.push((
                    "family",
                    format!("{ip} is an {fam} address; family applies to names"),
                )),
                FamilyChoice::Both => errs.push((
                    "family",
                    "`both` needs a host name (an address has one family)".into(),
                )),
                _ => {}
            }
        }
        let want = ip.map(|ip| Family::of(&ip)).or(self.family());
        if let (Some(src), Some(fam)) = (self.source, want)
            && Family::of(&src) != fam
        {
            errs.push((
                "source",
                format!("{src} is not an {fam} address like the target's"),
            ));
        }
        if let (Some(_), FamilyChoice::Both) = (self.source, self.family) {
            errs.push((
                "source",
                "a source address has one family; use family=v4 or family=v6".into(),
            ));
        }
        if let Some(size) = self.size {
            match t.probe {
                ProbeKind::Tcp | ProbeKind::Dns => errs.push((
                    "size",
                    format!("not meaningful for {kind} probes (their packets are what the protocol makes)"),
                )),
                ProbeKind::Icmp | ProbeKind::Stamp => {
                    let min = min_size(t.probe, want);
                    if size < min {
                        errs.push((
                            "size",
                            format!("{size} is below the smallest {kind} probe of {min} bytes"),
                        ));
                    }
                }
            }
        }
        if self.hops.is_some() && t.probe != ProbeKind::Icmp {
            errs.push((
                "hops",
                format!("hop discovery runs toward ICMP targets, not {kind}"),
            ));
        }
        if self.confirm.is_some() && t.probe != ProbeKind::Icmp {
            errs.push((
                "confirm",
                format!("confirmation bursts go to ICMP targets, not {kind}"),
            ));
        }
        if self.ecmp.is_some() && t.probe != ProbeKind::Stamp {
            errs.push((
                "ecmp",
                format!("only STAMP probes spread over source ports, not {kind}"),
            ));
        }
        errs
    }
}

/// Smallest IP packet of a probe: headers plus what the probe must carry (the larger IPv6
/// header when the family is not known).
pub fn min_size(probe: ProbeKind, family: Option<Family>) -> u16 {
    let ip = match family {
        Some(Family::V4) => 20,
        _ => 40,
    };
    let inner = match probe {
        ProbeKind::Icmp => 8 + crate::probe::matcher::PAYLOAD_HEADER as u16,
        ProbeKind::Stamp => 8 + crate::probe::stamp::packet::PACKET_LEN as u16,
        ProbeKind::Tcp | ProbeKind::Dns => 0,
    };
    ip + inner
}

/// Bytes of IP and transport header in front of a payload sent to `ip` (ICMP: 8, UDP: 8).
pub fn header_len(ip: &IpAddr) -> usize {
    if ip.is_ipv4() { 28 } else { 48 }
}

/// A target as the command line writes it: `SPEC[,KEY=VALUE]...`. Errors are
/// (option key or `""` for the SPEC itself, reason).
pub fn parse_flag(text: &str) -> Result<TargetSpec, Vec<(String, String)>> {
    let mut parts = text.split(',');
    let spec = parts.next().unwrap_or_default();
    let pairs: Vec<(String, String)> = parts
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), v.to_string()),
            None => (p.trim().to_string(), String::new()),
        })
        .collect();
    build(spec, &pairs)
}

/// A target from its SPEC and option pairs (the file's table form comes here too).
pub fn build(spec: &str, pairs: &[(String, String)]) -> Result<TargetSpec, Vec<(String, String)>> {
    let mut errs = Vec::new();
    let mut t = match TargetSpec::parse(spec) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.push((String::new(), e.to_string()));
            None
        }
    };
    let mut o = TargetOptions::default();
    for (k, v) in pairs {
        if let Err(e) = o.set(k, v) {
            errs.push((k.clone(), e));
        }
    }
    if let Some(t) = &mut t {
        for (k, e) in o.check(t) {
            errs.push((k.to_string(), e));
        }
        if let Some(l) = &o.label {
            t.label = l.clone();
        }
        t.options = o;
    }
    match t {
        Some(t) if errs.is_empty() => Ok(t),
        _ => Err(errs),
    }
}

/// A target with `family=both` as the two paths it stands for; others as they are.
pub fn expand(t: TargetSpec) -> Vec<TargetSpec> {
    if t.options.family != FamilyChoice::Both {
        return vec![t];
    }
    [(FamilyChoice::V4, "v4"), (FamilyChoice::V6, "v6")]
        .into_iter()
        .map(|(f, suffix)| {
            let mut one = t.clone();
            one.options.family = f;
            one.label = format!("{}@{suffix}", t.label);
            one
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<(String, String)> {
        parse_flag(text).expect_err(text)
    }

    #[test]
    fn flag_options_parse_and_plain_specs_keep_working() {
        let t = parse_flag("icmp:10.0.0.2,dscp=46,size=1000,ttl=9").expect("valid");
        assert_eq!(t.options.hops, None);
        let off = parse_flag("icmp:192.0.2.7,hops=off").expect("valid");
        assert_eq!(off.options.hops, Some(false));
        assert_eq!(
            (
                t.options.dscp,
                t.options.size,
                t.options.ttl,
                t.options.tos()
            ),
            (Some(46), Some(1000), Some(9), Some(184))
        );
        assert_eq!(t.label, "10.0.0.2");
        let t = parse_flag("10.0.0.2").expect("plain");
        assert!(t.options.is_default());
        let t = parse_flag("10.0.0.2,confirm=off").expect("confirm");
        assert_eq!(t.options.confirm, Some(false));
        let t = parse_flag("stamp:10.0.0.2,ecmp=8,source=10.0.0.1,interface=eth1,label=core")
            .expect("stamp");
        assert!(t.options.needs_own_socket());
        assert_eq!(t.label, "core");
    }

    #[test]
    fn bad_options_name_their_key() {
        for (text, key, needle) in [
            ("icmp:10.0.0.2,dscp=64", "dscp", "0..=63"),
            ("icmp:10.0.0.2,ttl=0", "ttl", "1..=255"),
            ("icmp:10.0.0.2,colour=red", "colour", "unknown option"),
            ("icmp:10.0.0.2,size=20", "size", "smallest icmp probe of 48"),
            ("tcp:10.0.0.2:80,size=100", "size", "not meaningful"),
            ("icmp:10.0.0.2,ecmp=4", "ecmp", "only STAMP"),
            ("icmp:10.0.0.2,family=v6", "family", "IPv4 address"),
            ("icmp:10.0.0.2,source=::1", "source", "not an IPv4"),
            ("icmp:10.0.0.2,family=both", "family", "needs a host name"),
            (
                "icmp:10.0.0.2,interface=a/b",
                "interface",
                "not an interface",
            ),
            ("stamp:10.0.0.2,ecmp=65", "ecmp", "1..=64"),
            ("icmp:10.0.0.2,dscp", "dscp", "not a number"),
            ("icmp:10.0.0.2,hops=maybe", "hops", "not on or off"),
            ("tcp:10.0.0.2:80,hops=off", "hops", "toward ICMP targets"),
            ("icmp:10.0.0.2,confirm=maybe", "confirm", "not on or off"),
            ("stamp:10.0.0.2,confirm=off", "confirm", "ICMP targets"),
        ] {
            let e = errs(text);
            assert!(
                e.iter().any(|(k, r)| k == key && r.contains(needle)),
                "{text}: {e:?}"
            );
        }
    }

    #[test]
    fn family_both_expands_a_name_into_two_paths() {
        let t = parse_flag("icmp:example.net,family=both").expect("valid");
        let two = expand(t);
        let labels: Vec<(&str, Option<Family>)> = two
            .iter()
            .map(|t| (t.label.as_str(), t.options.family()))
            .collect();
        assert_eq!(
            labels,
            [
                ("example.net@v4", Some(Family::V4)),
                ("example.net@v6", Some(Family::V6))
            ]
        );
    }
}
