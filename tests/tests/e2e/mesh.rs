//! Mesh membership in the lab: agents in their own namespaces (joined through a `core`
//! router), an aggregator with `[mesh]` on, and no target configured by hand. Every agent
//! measures every other (ICMP, and STAMP to the reflector every member runs on UDP 862 by
//! default); an agent started later is in every peer list
//! within one report interval and its paths appear; a stopped agent leaves after the
//! grace period and its paths, from it and toward it, disappear from /metrics.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pathpulse_tests::lab::netns::Netns;
use pathpulse_tests::lab::topo::Topo;
use pathpulse_tests::{Proc, Sample, bin, http_get, parse_metrics, require_root, wait_for};

const QUIC: u16 = 4470;
const HTTP: u16 = 9470;
const AGENT_METRICS: u16 = 9469;
/// The agents' report interval: the bound for a newcomer to reach every peer list.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);
const LEAVE_AFTER: Duration = Duration::from_secs(3);

/// GET `path` of a server listening on 127.0.0.1:`port` inside `ns`.
fn get_in(ns: &Netns, port: u16, path: &str) -> String {
    let url = format!("http://127.0.0.1:{port}{path}");
    ns.enter(|| http_get(&url)).unwrap_or_default()
}

fn metrics(ns: &Netns, port: u16) -> Vec<Sample> {
    parse_metrics(&get_in(ns, port, "/metrics"))
}

/// Per-path replies at the aggregator: (src, dst, probe) with received > 0.
fn answered(m: &[Sample]) -> BTreeSet<(String, String, String)> {
    m.iter()
        .filter(|s| s.name == "pathpulse_probes_received_total" && s.value > 0.0)
        .filter_map(|s| {
            Some((
                s.labels.get("src")?.clone(),
                s.labels.get("dst")?.clone(),
                s.labels.get("probe")?.clone(),
            ))
        })
        .collect()
}

/// Every ordered pair of `names` in both probes.
fn all_pairs(names: &[&str]) -> BTreeSet<(String, String, String)> {
    let mut want = BTreeSet::new();
    for a in names {
        for b in names.iter().filter(|b| *b != a) {
            for probe in ["icmp", "stamp"] {
                want.insert((a.to_string(), b.to_string(), probe.to_string()));
            }
        }
    }
    want
}

/// The members and their peer lists from `/api/members`.
fn members(topo: &Topo) -> Vec<(String, Vec<String>)> {
    let body = get_in(topo.ns("core"), HTTP, "/api/members");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let peers = m["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect();
            (m["name"].as_str().unwrap_or("").to_string(), peers)
        })
        .collect()
}

/// The peer count an agent shows on its own /metrics.
fn agent_peers(topo: &Topo, name: &str) -> Option<f64> {
    let m = metrics(topo.ns(name), AGENT_METRICS);
    pathpulse_tests::select(&m, "pathpulse_agent_peers", &[])
        .first()
        .map(|s| s.value)
}

fn start_agent(
    topo: &Topo,
    dir: &std::path::Path,
    state: &std::path::Path,
    name: &str,
    site: &str,
    hops: bool,
) -> Proc {
    let agent_state = dir.join(name);
    let (code, out) = pathpulse_tests::run(
        &bin("pathpulse-aggregator"),
        &[
            "cert",
            "issue",
            "--name",
            name,
            "--out",
            agent_state.join("identity").to_str().expect("utf-8"),
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "cert issue: {out}");
    let aggregator = format!("{}:{QUIC}", topo.addr("core", name));
    let metrics_listen = format!("127.0.0.1:{AGENT_METRICS}");
    let mut args = vec![
        "run",
        "--name",
        name,
        "--site",
        site,
        "--isp",
        "isp-lab",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--report-interval",
        "2s",
        // No --stamp-listen: a mesh member reflects STAMP on UDP 862 by default.
        "--aggregator",
        &aggregator,
        "--metrics-listen",
        &metrics_listen,
        "--state-dir",
        agent_state.to_str().expect("utf-8"),
    ];
    if !hops {
        args.push("--no-hops");
    }
    topo.ns(name)
        .spawn(name, &bin("pathpulse-agent"), &args, dir)
}

#[test]
fn lab_mesh_agents_find_each_other_through_the_aggregator() {
    let _serial = crate::lab::lab_lock();
    if !require_root("lab_mesh_agents_find_each_other_through_the_aggregator") {
        return;
    }
    let topo = Topo::mesh(4, &[], 41);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("agg");
    let cfg = dir.path().join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"0.0.0.0:{QUIC}\"\nhttp = \"127.0.0.1:{HTTP}\"\nstate_dir = \"{}\"\n\n\
             [mesh]\nenabled = true\npeers_per_site = 3\nleave_after = \"{}s\"\n",
            state.display(),
            LEAVE_AFTER.as_secs()
        ),
    )
    .expect("config");
    let agg = topo.ns("core").spawn(
        "aggregator",
        &bin("pathpulse-aggregator"),
        &["run", "--config", cfg.to_str().expect("utf-8")],
        dir.path(),
    );
    assert!(
        wait_for(Duration::from_secs(15), || (!metrics(
            topo.ns("core"),
            HTTP
        )
        .is_empty())
        .then_some(()))
        .is_some(),
        "aggregator up:\n{}",
        agg.log()
    );
    let mut agents = vec![
        // e1 with hop discovery: toward e3 (another site), not toward e2 (its own).
        start_agent(&topo, dir.path(), &state, "e1", "site-a", true),
        start_agent(&topo, dir.path(), &state, "e2", "site-a", false),
        start_agent(&topo, dir.path(), &state, "e3", "site-b", false),
    ];

    // 1. No target by hand: every agent measures every other, ICMP and STAMP.
    let three = all_pairs(&["e1", "e2", "e3"]);
    let seen = wait_for(Duration::from_secs(40), || {
        let got = answered(&metrics(topo.ns("core"), HTTP));
        three.is_subset(&got).then_some(got)
    });
    let Some(seen) = seen else {
        let got = answered(&metrics(topo.ns("core"), HTTP));
        panic!(
            "missing paths {:?}\n{}\n{}",
            three.difference(&got).collect::<Vec<_>>(),
            agents[0].log(),
            agg.log()
        );
    };
    assert!(
        seen.iter().all(|(s, d, _)| s != d),
        "no agent probes itself: {seen:?}"
    );
    // Paths to peers carry the destination's site in the roll-ups.
    let m = metrics(topo.ns("core"), HTTP);
    for (s, d) in [
        ("site-a", "site-b"),
        ("site-b", "site-a"),
        ("site-a", "site-a"),
    ] {
        assert!(
            !pathpulse_tests::select(
                &m,
                "pathpulse_site_pair_paths",
                &[("src_site", s), ("dst_site", d)]
            )
            .is_empty(),
            "site pair {s} → {d} missing"
        );
    }
    // Per-path series carry the sites of both ends and the source's ISP, at the aggregator
    // and (its own site and ISP) at the agent.
    let site_of = |a: &str| if a == "e3" { "site-b" } else { "site-a" };
    for (src, dst, probe) in &three {
        let want = [
            ("src", src.as_str()),
            ("dst", dst.as_str()),
            ("probe", probe.as_str()),
            ("src_site", site_of(src)),
            ("dst_site", site_of(dst)),
            ("isp", "isp-lab"),
        ];
        for name in [
            "pathpulse_probes_received_total",
            "pathpulse_rtt_seconds_count",
            "pathpulse_loss_ratio",
        ] {
            let got =
                pathpulse_tests::select(&m, name, &[("src", src), ("dst", dst), ("probe", probe)]);
            assert!(
                !got.is_empty()
                    && got.iter().all(|s| want.iter().all(|(k, v)| s
                        .labels
                        .get(*k)
                        .map(String::as_str)
                        == Some(*v))),
                "{name} {src} → {dst} ({probe}) should carry {want:?}: {:?}",
                got.iter().map(|s| &s.labels).collect::<Vec<_>>()
            );
        }
    }
    let own = metrics(topo.ns("e3"), AGENT_METRICS);
    assert_eq!(
        pathpulse_tests::select(&own, "pathpulse_stamp_reflector_sockets", &[])
            .first()
            .map(|s| s.value),
        Some(2.0),
        "the default reflector on 0.0.0.0:862 and [::]:862"
    );
    let sent = pathpulse_tests::select(&own, "pathpulse_probes_sent_total", &[("src", "e3")]);
    assert!(
        !sent.is_empty()
            && sent.iter().all(
                |s| s.labels.get("src_site").map(String::as_str) == Some("site-b")
                    && s.labels.get("isp").map(String::as_str) == Some("isp-lab")
            ),
        "e3's own /metrics: {:?}",
        sent.iter().map(|s| &s.labels).collect::<Vec<_>>()
    );

    // Hop discovery follows the peer list: e1 found the core router and e3 behind it,
    // and left e2, in its own site, alone.
    let hop_anchors = |m: &[Sample]| -> BTreeSet<String> {
        m.iter()
            .filter(|s| s.name == "pathpulse_hop_probes_sent_total")
            .filter_map(|s| s.labels.get("anchor").cloned())
            .collect()
    };
    let found = wait_for(Duration::from_secs(20), || {
        let m = metrics(topo.ns("e1"), AGENT_METRICS);
        let core_then_e3 = pathpulse_tests::select(
            &m,
            "pathpulse_hop_probes_sent_total",
            &[("anchor", "e3"), ("hop", "2")],
        )
        .len()
            == 1;
        core_then_e3.then(|| hop_anchors(&m))
    });
    let Some(anchors) = found else {
        panic!("no hop view from e1 toward e3:\n{}", agents[0].log());
    };
    assert_eq!(
        anchors,
        BTreeSet::from(["e3".to_string()]),
        "hops toward the other site only"
    );

    // 2. A newcomer is in every peer list within one report interval, then measured.
    let spawned = Instant::now();
    agents.push(start_agent(
        &topo,
        dir.path(),
        &state,
        "e4",
        "site-b",
        false,
    ));
    let joined = wait_for(Duration::from_secs(20), || {
        members(&topo)
            .iter()
            .any(|(n, _)| n == "e4")
            .then(Instant::now)
    })
    .unwrap_or_else(|| panic!("e4 never became a member\n{}", agg.log()));
    let everywhere = wait_for(REPORT_INTERVAL * 3, || {
        let m = members(&topo);
        let lists = m
            .iter()
            .filter(|(n, _)| n != "e4")
            .all(|(_, p)| p.iter().any(|p| p == "e4"));
        let applied = ["e1", "e2", "e3"]
            .iter()
            .all(|a| agent_peers(&topo, a) == Some(3.0));
        (lists && applied && m.len() == 4).then(|| joined.elapsed())
    });
    let took = everywhere.unwrap_or_else(|| {
        panic!(
            "e4 not in every applied peer list: {:?}\n{}",
            members(&topo),
            agents[0].log()
        )
    });
    eprintln!(
        "newcomer in every applied peer list {took:?} after it became a member ({:?} after its process started)",
        spawned.elapsed()
    );
    assert!(
        took <= REPORT_INTERVAL,
        "newcomer took {took:?} to reach every peer list"
    );
    assert!(
        agents[0].log().contains("peer list applied"),
        "agents log the peer lists they apply"
    );
    let four = all_pairs(&["e1", "e2", "e3", "e4"]);
    assert!(
        wait_for(Duration::from_secs(30), || four
            .is_subset(&answered(&metrics(topo.ns("core"), HTTP)))
            .then_some(()))
        .is_some(),
        "the newcomer's paths: missing {:?}\n{}",
        four.difference(&answered(&metrics(topo.ns("core"), HTTP)))
            .collect::<Vec<_>>(),
        agents[3].log()
    );

    // 3. A departed agent: out of the lists and out of /metrics after the grace period.
    let involves_e2 = |m: &[Sample]| {
        m.iter()
            .filter(|s| s.name.starts_with("pathpulse_probes_"))
            .filter(|s| {
                s.labels.get("src").is_some_and(|v| v == "e2")
                    || s.labels.get("dst").is_some_and(|v| v == "e2")
            })
            .count()
    };
    assert!(involves_e2(&metrics(topo.ns("core"), HTTP)) > 0);
    let stopped = Instant::now();
    agents[1].stop();
    let gone = wait_for(LEAVE_AFTER + Duration::from_secs(15), || {
        (involves_e2(&metrics(topo.ns("core"), HTTP)) == 0).then(|| stopped.elapsed())
    })
    .unwrap_or_else(|| panic!("e2's paths stayed in /metrics\n{}", agg.log()));
    eprintln!(
        "departed agent's series gone {gone:?} after it stopped (leave_after {LEAVE_AFTER:?})"
    );
    assert!(
        gone >= LEAVE_AFTER,
        "removed before the grace period: {gone:?}"
    );
    // The others dropped it from their lists, and its paths do not come back.
    assert!(
        wait_for(REPORT_INTERVAL * 2, || ["e1", "e3", "e4"]
            .iter()
            .all(|a| agent_peers(&topo, a) == Some(2.0))
            .then_some(()))
        .is_some(),
        "peer lists after the departure: {:?}",
        members(&topo)
    );
    std::thread::sleep(REPORT_INTERVAL * 2);
    let m = metrics(topo.ns("core"), HTTP);
    assert_eq!(involves_e2(&m), 0, "e2's paths came back");
    assert!(
        members(&topo)
            .iter()
            .all(|(n, p)| n != "e2" && !p.contains(&"e2".to_string()))
    );
    // The remaining mesh is still measured.
    let three = all_pairs(&["e1", "e3", "e4"]);
    assert!(three.is_subset(&answered(&m)), "{:?}", answered(&m));
}
