//! Internet anchors: destinations that hop discovery watches besides the configured
//! targets, so the path through the ISP is seen even when every target is on the LAN. An
//! entry is an address or a name, `resolvers` (this host's DNS resolvers) or `public`
//! ([`PUBLIC_ANCHORS`]). Each becomes an ICMP target: probed, and given hop discovery like
//! any other (unless `--no-hops`).
//!
//! `resolvers` reads the `nameserver` lines of `/etc/resolv.conf`. A loopback nameserver is
//! a local stub (systemd-resolved's 127.0.0.53, dnsmasq, unbound): nothing to discover
//! toward it, so it is skipped, and the upstreams the stub uses are read from
//! `/run/systemd/resolve/resolv.conf` when that file exists. The files are read through a
//! function so the parsing is tested on given texts.

use std::net::IpAddr;

use crate::target::TargetSpec;

/// Where the resolver's configuration is.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the upstream servers behind its 127.0.0.53 stub.
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
/// `public`: well-known anycast resolvers, answered close to nearly every network
/// (Cloudflare, Google, Quad9). IPv4 only: on a host without an IPv6 route an IPv6 anchor
/// would only ever show loss; give IPv6 anchors by address.
pub const PUBLIC_ANCHORS: [&str; 3] = ["1.1.1.1", "8.8.8.8", "9.9.9.9"];

/// The `nameserver` addresses of a resolv.conf text, in order (an IPv6 zone such as
/// `%eth0` removed; lines that are not a nameserver with an address are ignored, as the
/// C library ignores them).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            let addr = words.next()?;
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

/// A resolver worth discovering a path to: not a local stub, not on the link.
fn beyond_the_host(ip: &IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    };
    !ip.is_loopback() && !ip.is_unspecified() && !link_local
}

/// This host's DNS resolvers as anchors: the nameservers of [`RESOLV_CONF`] that are not
/// loopback; when one of them is (a local stub), also those of [`SYSTEMD_RESOLV_CONF`] if
/// `read` finds it. Each address once, in order.
pub fn resolvers(read: impl Fn(&str) -> Option<String>) -> Vec<IpAddr> {
    let main = read(RESOLV_CONF)
        .map(|t| nameservers(&t))
        .unwrap_or_default();
    let behind_stub = main.iter().any(IpAddr::is_loopback);
    let mut all = main;
    if behind_stub && let Some(text) = read(SYSTEMD_RESOLV_CONF) {
        all.extend(nameservers(&text));
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in all.into_iter().filter(beyond_the_host) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The ICMP targets that `entries` (the `anchors` setting) stand for, each once, and the
/// problems as (key, reason). `read` reads a file (see [`resolvers`]).
pub fn expand(
    entries: &[String],
    read: impl Fn(&str) -> Option<String>,
) -> (Vec<TargetSpec>, Vec<(String, String)>) {
    let mut specs: Vec<TargetSpec> = Vec::new();
    let mut errs = Vec::new();
    // No confirmation bursts toward anchors: they are other people's hosts, and some
    // rate-limit ICMP echo below a burst's 333/s (the burst would show loss the path does
    // not have).
    let mut add = |mut s: TargetSpec| {
        s.options.confirm.get_or_insert(false);
        if !specs.iter().any(|o| o.label == s.label) {
            specs.push(s);
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("anchors[{i}]");
        match entry.trim() {
            "resolvers" => {
                let found = resolvers(&read);
                if found.is_empty() {
                    tracing::warn!(
                        key = %key,
                        "`resolvers`: no nameserver beyond this host in {RESOLV_CONF} (or {SYSTEMD_RESOLV_CONF} behind a local stub)"
                    );
                }
                for ip in found {
                    match TargetSpec::parse(&ip.to_string()) {
                        Ok(s) => add(s),
                        Err(e) => errs.push((key.clone(), e.to_string())),
                    }
                }
            }
            "public" => {
                for a in PUBLIC_ANCHORS {
                    match TargetSpec::parse(a) {
                        Ok(s) => add(s),
                        Err(e) => errs.push((key.clone(), e.to_string())),
                    }
                }
            }
            other => match TargetSpec::parse(other) {
                Ok(s) if s.probe == pathpulse_wire::ProbeKind::Icmp => add(s),
                Ok(_) => errs.push((
                    key,
                    format!(
                        "`{other}` is not an anchor: give an address, a name, `resolvers` or `public` (anchors are probed with ICMP; other probes go in `targets`)"
                    ),
                )),
                Err(e) => errs.push((key, e.to_string())),
            },
        }
    }
    (specs, errs)
}

/// Read a whole file, `None` when it cannot be read (an absent resolv.conf is no error).
pub fn read_file(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().expect("ip")).collect()
    }

    /// Files by path, as `read` sees them.
    fn files<'a>(f: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |p| f.iter().find(|(q, _)| *q == p).map(|(_, t)| t.to_string())
    }

    #[test]
    fn nameservers_are_read_as_the_c_library_reads_them() {
        let text = "# Generated by NetworkManager\n\
                    search lan example.net\n\
                    nameserver 192.0.2.53\n\
                    nameserver   2001:db8::53 # secondary\n\
                    ;nameserver 192.0.2.99\n\
                    nameserver fe80::1%eth0\n\
                    nameserver not-an-address\n\
                    nameserver\n\
                    options edns0 trust-ad\n\
                    \tnameserver 198.51.100.53\n";
        assert_eq!(
            nameservers(text),
            ips(&["192.0.2.53", "2001:db8::53", "fe80::1", "198.51.100.53"])
        );
    }

    #[test]
    fn a_local_stub_is_skipped_for_the_upstreams_behind_it() {
        // systemd-resolved: the stub in /etc/resolv.conf, the upstreams in /run.
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n";
        let upstream = "nameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver 192.0.2.53\n";
        let both = [(RESOLV_CONF, stub), (SYSTEMD_RESOLV_CONF, upstream)];
        assert_eq!(
            resolvers(files(&both)),
            ips(&["192.0.2.53", "2001:db8::53"])
        );
        // A stub without systemd-resolved's file (dnsmasq, unbound): nothing to watch.
        assert_eq!(
            resolvers(files(&[(RESOLV_CONF, stub)])),
            Vec::<IpAddr>::new()
        );
        // No stub: the file in /run is not consulted, and link-local is left out.
        let plain = "nameserver 198.51.100.1\nnameserver fe80::1%wlan0\n";
        let with_run = [(RESOLV_CONF, plain), (SYSTEMD_RESOLV_CONF, upstream)];
        assert_eq!(resolvers(files(&with_run)), ips(&["198.51.100.1"]));
        // An IPv6 loopback stub beside a real server: both lists, the stub left out.
        let mixed = "nameserver ::1\nnameserver 198.51.100.1\n";
        let with_run = [(RESOLV_CONF, mixed), (SYSTEMD_RESOLV_CONF, upstream)];
        assert_eq!(
            resolvers(files(&with_run)),
            ips(&["198.51.100.1", "192.0.2.53", "2001:db8::53"])
        );
        // No resolv.conf at all.
        assert_eq!(resolvers(files(&[])), Vec::<IpAddr>::new());
    }

    #[test]
    fn entries_expand_to_icmp_targets_once_each_and_bad_ones_are_named() {
        let conf = [(RESOLV_CONF, "nameserver 1.1.1.1\nnameserver 192.0.2.53\n")];
        let entries: Vec<String> = ["resolvers", "public", "203.0.113.9", "anchor.example.net"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (specs, errs) = expand(&entries, files(&conf));
        assert!(errs.is_empty(), "{errs:?}");
        let labels: Vec<&str> = specs.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "1.1.1.1",
                "192.0.2.53",
                "8.8.8.8",
                "9.9.9.9",
                "203.0.113.9",
                "anchor.example.net"
            ]
        );
        assert!(
            specs
                .iter()
                .all(|s| s.probe == pathpulse_wire::ProbeKind::Icmp)
        );
        assert!(
            specs.iter().all(|s| s.options.confirm == Some(false)),
            "no confirmation bursts toward anchors"
        );
        let bad: Vec<String> = ["tcp:192.0.2.1:443", "bad host!", "192.0.2.1,dscp=46"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (specs, errs) = expand(&bad, files(&conf));
        assert!(specs.is_empty());
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["anchors[0]", "anchors[1]", "anchors[2]"], "{errs:?}");
        assert!(errs[0].1.contains("not an anchor"), "{errs:?}");
    }
}
