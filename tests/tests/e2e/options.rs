//! Per-target options on the wire: an agent in one namespace probes another with DSCP,
//! TTL, packet size, source address and interface set per target; nftables counters in
//! the far namespace, each matching one combination (`ip dscp`, `ip ttl`, `ip length`,
//! `ip saddr`, `iifname`), prove the packets carry them. Bad options are refused with
//! their key named (exit 78).

use std::time::Duration;

use pathpulse_tests::lab::netns::{Netns, ip, unique};
use pathpulse_tests::{bin, free_port, run};

/// `(comment, packets)` of every counter rule in the namespace's `inet pp` table.
fn counters(ns: &Netns) -> Vec<(String, u64)> {
    let (code, out) = ns.run("nft", &["list", "table", "inet", "pp"]);
    assert_eq!(code, 0, "nft list: {out}");
    out.lines()
        .filter_map(|l| {
            let packets = l
                .split("counter packets ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            let name = l
                .split("comment \"")
                .nth(1)?
                .trim_end_matches('"')
                .to_string();
            Some((name, packets))
        })
        .collect()
}

#[test]
fn target_options_reach_the_wire_dscp_ttl_size_source_interface() {
    let test = "target_options_reach_the_wire";
    if !pathpulse_tests::require_root(test) || !pathpulse_tests::require_program(test, "nft") {
        return;
    }
    let _machine = crate::setup::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (Netns::new("oa"), Netns::new("ob"));
    // Two links: the second one only serves the `interface` option.
    let (a1, b1, a2, b2) = (unique("a1"), unique("b1"), unique("a2"), unique("b2"));
    for (x, y) in [(&a1, &b1), (&a2, &b2)] {
        ip(&["link", "add", x, "type", "veth", "peer", "name", y]);
        ip(&["link", "set", x, "netns", &a.name]);
        ip(&["link", "set", y, "netns", &b.name]);
    }
    for (ns, dev, addrs) in [
        (
            &a,
            &a1,
            &["10.77.0.1/24", "10.77.0.11/24", "fd77::1/64"][..],
        ),
        (&b, &b1, &["10.77.0.2/24", "fd77::2/64"][..]),
        (&a, &a2, &["10.78.0.1/24"][..]),
        (&b, &b2, &["10.78.0.2/24"][..]),
    ] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
    let rules = [
        (
            "icmp_opts",
            "ip saddr 10.77.0.1 icmp type echo-request ip dscp 46 ip ttl 9 ip length 1000"
                .to_string(),
        ),
        (
            "icmp_plain",
            "ip saddr 10.77.0.1 icmp type echo-request ip dscp 0 ip ttl 64 ip length 84"
                .to_string(),
        ),
        (
            "icmp_source",
            "ip saddr 10.77.0.11 icmp type echo-request".to_string(),
        ),
        (
            "icmp_interface",
            format!("iifname \"{b2}\" ip daddr 10.77.0.2 icmp type echo-request"),
        ),
        (
            "icmp6_opts",
            "icmpv6 type echo-request ip6 dscp 46 ip6 hoplimit 9 ip6 length 960".to_string(),
        ),
        (
            "stamp_opts",
            "udp dport 862 ip dscp 10 ip ttl 33 ip length 200".to_string(),
        ),
        (
            "tcp_opts",
            "tcp dport 7 tcp flags & (syn | ack) == syn ip dscp 18 ip ttl 44".to_string(),
        ),
        ("dns_opts", "udp dport 53 ip dscp 34 ip ttl 55".to_string()),
    ];
    let (code, out) = b.run("nft", &["add table inet pp; add chain inet pp in { type filter hook input priority 0; policy accept; }"]);
    assert_eq!(code, 0, "nft: {out}");
    for (name, rule) in &rules {
        let cmd = format!("add rule inet pp in {rule} counter comment \"{name}\"");
        let (code, out) = b.run("nft", &[&cmd]);
        assert_eq!(code, 0, "nft {cmd}: {out}");
    }
    let targets = [
        "icmp:10.77.0.2,dscp=46,ttl=9,size=1000,label=opts".to_string(),
        "icmp:10.77.0.2,label=plain".to_string(),
        "icmp:10.77.0.2,source=10.77.0.11,label=source".to_string(),
        format!("icmp:10.77.0.2,interface={a2},label=interface"),
        "icmp:fd77::2,dscp=46,ttl=9,size=1000".to_string(),
        "stamp:10.77.0.2,dscp=10,ttl=33,size=200".to_string(),
        "tcp:10.77.0.2:7,dscp=18,ttl=44".to_string(),
        "dns:10.77.0.2/example.test,dscp=34,ttl=55".to_string(),
    ];
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "run",
        "--name",
        "opts",
        "--interval",
        "200ms",
        "--no-hops",
        "--metrics-listen",
        &metrics,
    ];
    for t in &targets {
        args.extend(["--target", t.as_str()]);
    }
    let mut agent = a.spawn("agent", &bin("pathpulse-agent"), &args, dir.path());
    let seen = pathpulse_tests::wait_for(Duration::from_secs(20), || {
        let c = counters(&b);
        c.iter().all(|(_, n)| *n >= 5).then_some(c)
    });
    assert_eq!(agent.exited(), None, "agent exited:\n{}", agent.log());
    let c = seen.unwrap_or_else(|| {
        panic!(
            "not every option seen on the wire within 20 s: {:?}\nagent:\n{}",
            counters(&b),
            agent.log()
        )
    });
    assert_eq!(c.len(), rules.len(), "{c:?}");
}

#[test]
fn bad_target_options_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "metrics_listen = \"127.0.0.1:9469\"\n\
         [[targets]]\nspec = \"icmp:10.0.0.2\"\ndscp = 64\n\
         [[targets]]\nspec = \"tcp:10.0.0.3:443\"\nsize = 100\n\
         [[targets]]\nspec = \"stamp:10.0.0.4\"\necmp = 4\nflavour = \"x\"\n",
    )
    .expect("write");
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &["check-config", "--config", cfg.to_str().expect("utf-8")],
    );
    assert_eq!(code, 78, "{text}");
    for needle in [
        "targets[0].dscp",
        "0..=63",
        "targets[1].size",
        "not meaningful",
        "targets[2].flavour",
        "unknown option",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    std::fs::write(
        &cfg,
        "metrics_listen = \"127.0.0.1:9469\"\n[[targets]]\nspec = \"stamp:10.0.0.4\"\necmp = 4\ndscp = 46\n",
    )
    .expect("write");
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &["check-config", "--config", cfg.to_str().expect("utf-8")],
    );
    assert_eq!(code, 0, "a valid target table: {text}");
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &[
            "run",
            "--metrics-listen",
            "127.0.0.1:0",
            "--target",
            "icmp:10.0.0.2,ttl=0",
        ],
    );
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains("targets[0].ttl") && text.contains("1..=255"),
        "{text}"
    );
}
