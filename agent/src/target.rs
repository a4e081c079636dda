//! Target specifications as users write them: `HOST`, `icmp:HOST`, `tcp:HOST:PORT`,
//! `stamp:HOST[:PORT]`, `dns:SERVER[:PORT]/NAME`. HOST is an IPv4 or IPv6 address (IPv6 in
//! brackets when a port follows) or a name.

use std::fmt;
use std::net::IpAddr;

use pathpulse_wire::ProbeKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Default port of DNS servers.
pub const DNS_PORT: u16 = 53;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub probe: ProbeKind,
    pub host: Host,
    pub port: Option<u16>,
    /// The `dst` label: the spec as the user wrote it, minus the `icmp:` prefix.
    pub label: String,
    /// DNS targets: the name queried (`dns:SERVER/NAME`), lower case, no trailing dot.
    pub dns_name: Option<String>,
    /// Per-target options (`SPEC,key=value,...`; see [`crate::options`]).
    pub options: crate::options::TargetOptions,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("target `{0}` is empty")]
    Empty(String),
    #[error("target `{spec}`: {reason}")]
    Invalid { spec: String, reason: String },
}

fn invalid(spec: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

fn parse_host(spec: &str, s: &str) -> Result<Host, SpecError> {
    let s = s.trim_start_matches('[').trim_end_matches(']');
    if s.is_empty() {
        return Err(invalid(spec, "no host"));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let valid = s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
        });
    if valid {
        Ok(Host::Name(s.to_ascii_lowercase()))
    } else {
        Err(invalid(
            spec,
            format!("`{s}` is neither an IP address nor a host name"),
        ))
    }
}

/// Split `HOST:PORT` where HOST may be `[v6]`.
fn split_host_port<'a>(spec: &str, s: &'a str) -> Result<(&'a str, Option<u16>), SpecError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| invalid(spec, "missing `]` after IPv6 address"))?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(invalid(spec, format!("unexpected `{after}` after `]`"))),
        };
        (&rest[..end], port)
    } else if s.matches(':').count() > 1 {
        (s, None) // bare IPv6 address without port
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(invalid(
                spec,
                format!("port `{p}` is not a number in 1..=65535"),
            )),
            Ok(n) => Ok(n),
        })
        .transpose()?;
    Ok((host, port))
}

impl TargetSpec {
    pub fn parse(spec: &str) -> Result<TargetSpec, SpecError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(SpecError::Empty(spec.to_string()));
        }
        let (kind, rest) = match spec.split_once(':') {
            Some((k @ ("icmp" | "tcp" | "stamp" | "dns"), rest)) => (k, rest),
            _ => ("icmp", spec),
        };
        match kind {
            "icmp" => {
                let host = parse_host(spec, rest)?;
                Ok(TargetSpec {
                    probe: ProbeKind::Icmp,
                    label: host.to_string(),
                    host,
                    port: None,
                    dns_name: None,
                    options: Default::default(),
                })
            }
            "tcp" => {
                let (h, port) = split_host_port(spec, rest)?;
                let port =
                    port.ok_or_else(|| invalid(spec, "tcp targets need a port: tcp:HOST:PORT"))?;
                let host = parse_host(spec, h)?;
                let label = match &host {
                    Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
                    h => format!("{h}:{port}"),
                };
                Ok(TargetSpec {
                    probe: ProbeKind::Tcp,
                    host,
                    port: Some(port),
                    label,
                    dns_name: None,
                    options: Default::default(),
                })
            }
            "stamp" => {
                // Port 862 (STAMP's) unless given; the label is the spec as written.
                let (h, port) = split_host_port(spec, rest)?;
                let host = parse_host(spec, h)?;
                let label = match (&host, port) {
                    (Host::Ip(IpAddr::V6(ip)), Some(port)) => format!("[{ip}]:{port}"),
                    (h, Some(port)) => format!("{h}:{port}"),
                    (h, None) => h.to_string(),
                };
                Ok(TargetSpec {
                    probe: ProbeKind::Stamp,
                    host,
                    port,
                    label,
                    dns_name: None,
                    options: Default::default(),
                })
            }
            _ => {
                // dns:SERVER[:PORT]/NAME; port 53 unless given; the label is the rest as written.
                let (server, name) = rest
                    .split_once('/')
                    .ok_or_else(|| invalid(spec, "dns targets need a name: dns:SERVER/NAME"))?;
                let (h, port) = split_host_port(spec, server)?;
                let host = parse_host(spec, h)?;
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                parse_host(spec, &name)
                    .map_err(|_| invalid(spec, format!("`{name}` is not a DNS name to query")))?;
                let server = match (&host, port) {
                    (Host::Ip(IpAddr::V6(ip)), Some(port)) => format!("[{ip}]:{port}"),
                    (h, Some(port)) => format!("{h}:{port}"),
                    (h, None) => h.to_string(),
                };
                Ok(TargetSpec {
                    probe: ProbeKind::Dns,
                    host,
                    port: Some(port.unwrap_or(DNS_PORT)),
                    label: format!("{server}/{name}"),
                    dns_name: Some(name),
                    options: Default::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_documented() {
        let t = TargetSpec::parse("127.0.0.2").expect("ip");
        assert_eq!((t.probe, t.label.as_str()), (ProbeKind::Icmp, "127.0.0.2"));
        let t = TargetSpec::parse("icmp:::1").expect("v6");
        assert_eq!(t.host, Host::Ip("::1".parse().expect("ip")));
        let t = TargetSpec::parse("Example.NET").expect("name");
        assert_eq!(t.host, Host::Name("example.net".into()));
        let t = TargetSpec::parse("tcp:[2001:db8::1]:443").expect("tcp v6");
        assert_eq!((t.port, t.label.as_str()), (Some(443), "[2001:db8::1]:443"));
        let t = TargetSpec::parse("tcp:localhost:8080").expect("tcp name");
        assert_eq!(t.label, "localhost:8080");
        let t = TargetSpec::parse("stamp:10.0.0.1").expect("stamp");
        assert_eq!(
            (t.probe, t.port, t.label.as_str()),
            (ProbeKind::Stamp, None, "10.0.0.1")
        );
        let t = TargetSpec::parse("stamp:[2001:db8::1]:8620").expect("stamp v6 port");
        assert_eq!(
            (t.port, t.label.as_str()),
            (Some(8620), "[2001:db8::1]:8620")
        );
        let t = TargetSpec::parse("dns:10.0.0.53:5353/Example.Test.").expect("dns");
        assert_eq!(
            (t.probe, t.port, t.label.as_str(), t.dns_name.as_deref()),
            (
                ProbeKind::Dns,
                Some(5353),
                "10.0.0.53:5353/example.test",
                Some("example.test")
            )
        );
        let t = TargetSpec::parse("dns:[2001:db8::53]/example.net").expect("dns v6");
        assert_eq!(
            (t.port, t.label.as_str()),
            (Some(53), "2001:db8::53/example.net")
        );
        let t = TargetSpec::parse("stamp:::1").expect("stamp bare v6");
        assert_eq!(
            (t.host, t.port),
            (Host::Ip("::1".parse().expect("ip")), None)
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("tcp:10.0.0.1", "need a port"),
            ("tcp:10.0.0.1:0", "port `0`"),
            ("tcp:10.0.0.1:http", "port `http`"),
            ("bad host!", "neither an IP address nor a host name"),
            ("icmp:", "no host"),
            ("stamp:10.0.0.1:0", "port `0`"),
            ("stamp:", "no host"),
            ("dns:10.0.0.1", "need a name"),
            ("dns:10.0.0.1/", "not a DNS name"),
            ("dns:10.0.0.1/bad name!", "not a DNS name"),
            ("dns:10.0.0.1:0/example.net", "port `0`"),
            ("tcp:[::1", "missing `]`"),
        ] {
            let e = TargetSpec::parse(spec).expect_err(spec).to_string();
            assert!(e.contains(needle) && e.contains(spec.trim()), "{spec}: {e}");
        }
    }
}
