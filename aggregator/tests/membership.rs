//! Mesh membership against real QUIC clients with real certificates: a protocol-2 agent
//! is answered in protocol 2 and probed but never told; protocol-3 agents that join get
//! their peer list on a stream the aggregator opens, again at every join and leave; a
//! member gone past `leave_after` drops out of the lists and its paths out of the store.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pathpulse_aggregator::config::AggregatorConfig;
use pathpulse_aggregator::mesh::MeshConfig;
use pathpulse_aggregator::{pki, server};
use pathpulse_wire::frame;
use pathpulse_wire::message::AgentHealth;
use pathpulse_wire::{
    ClientMsg, Hello, Join, PathReport, Peer, RefuseReason, Report, ServerMsg, tls,
};
use tokio_util::sync::CancellationToken;

struct Agg {
    running: server::Running,
    dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

async fn start() -> Agg {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = AggregatorConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http: "127.0.0.1:0".parse().expect("addr"),
        state_dir: dir.path().join("agg"),
        server_names: vec![],
        stale_after: Duration::from_secs(30),
        max_connections: 16,
        alert: Default::default(),
        remote_write: None,
        path_budget: None,
        prune_after: Some(pathpulse_aggregator::config::DEFAULT_PRUNE_AFTER),
        mesh: MeshConfig {
            enabled: true,
            peers_per_site: Some(3),
            leave_after: Duration::from_millis(500),
        },
        http_auth: pathpulse_aggregator::auth::AuthMode::Open,
        metrics_auth: pathpulse_aggregator::auth::AuthMode::Open,
        report_rate: pathpulse_aggregator::limits::DEFAULT_REPORTS,
        registration_rate: pathpulse_aggregator::limits::DEFAULT_REGISTRATIONS,
    };
    let stop = CancellationToken::new();
    let running = server::start(&cfg, stop.clone())
        .await
        .expect("aggregator starts");
    Agg {
        running,
        dir,
        _stop: stop.drop_guard(),
    }
}

fn identity(agg: &Agg, name: &str) -> std::path::PathBuf {
    let ca = pki::load_ca(&agg.dir.path().join("agg")).expect("ca");
    let out = agg.dir.path().join(name);
    pki::issue_agent(&ca, name, &out).expect("issue");
    out
}

async fn connect(addr: SocketAddr, id: &Path) -> (quinn::Endpoint, quinn::Connection) {
    let cfg = pathpulse_agent::uplink::client_config(id).expect("client config");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let conn = ep
        .connect_with(cfg, addr, tls::SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    (ep, conn)
}

fn hello(agent: &str, site: &str) -> ClientMsg {
    ClientMsg::Hello(Hello {
        agent: agent.into(),
        session: 7,
        software: "test".into(),
        site: Some(site.into()),
        isp: None,
    })
}

fn report(agent: &str, dst: &str) -> ClientMsg {
    let mut p = PathReport {
        dst: dst.into(),
        sent: 1,
        received: 1,
        ..Default::default()
    };
    p.rtt.record(100);
    p.rtt_sum_us = 100;
    ClientMsg::Report(Report {
        seq: 1,
        agent: agent.into(),
        interval_start_ms: pathpulse_metrics::export::wall_clock_ms(),
        interval_ms: 1000,
        paths: vec![p],
        health: AgentHealth::default(),
    })
}

async fn read<T: serde::de::DeserializeOwned>(recv: &mut quinn::RecvStream) -> Option<(T, u16)> {
    tokio::time::timeout(
        Duration::from_secs(5),
        frame::read_versioned::<T, _>(recv, frame::DEFAULT_MAX_FRAME),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .flatten()
}

/// Connect as `name`, say hello and join; returns the connection and its peer stream.
async fn join(
    agg: &Agg,
    name: &str,
    site: &str,
    j: Join,
    version: u16,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let id = identity(agg, name);
    let (ep, conn) = connect(agg.running.bound.quic, &id).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    for m in [hello(name, site), ClientMsg::Join(j)] {
        send.write_all(&frame::encode_as(&m, version).expect("encode"))
            .await
            .expect("hello and join");
    }
    let (w, v) = read::<ServerMsg>(&mut recv).await.expect("welcome");
    assert!(matches!(w, ServerMsg::Welcome { .. }) && v == version);
    let peers = tokio::time::timeout(Duration::from_secs(5), conn.accept_uni())
        .await
        .expect("peer stream in time")
        .expect("peer stream");
    (ep, conn, send, peers)
}

/// The next peer list, which must come in frames of `version` (the agent's).
async fn next_list(peers: &mut quinn::RecvStream, version: u16) -> (u64, Vec<Peer>) {
    match read::<ServerMsg>(peers).await {
        Some((ServerMsg::Peers { epoch, peers }, v)) if v == version => (epoch, peers),
        other => panic!("expected a peer list in version {version}, got {other:?}"),
    }
}

fn names(p: &[Peer]) -> Vec<&str> {
    p.iter().map(|p| p.name.as_str()).collect()
}

#[tokio::test]
async fn peer_lists_follow_joins_and_leaves_and_protocol_2_agents_are_probed_not_told() {
    let agg = start().await;
    // A protocol-2 agent: answered in version 2 frames; a member nobody pushes to.
    let id = identity(&agg, "old");
    let (_ep_old, old) = connect(agg.running.bound.quic, &id).await;
    let (mut send, mut recv) = old.open_bi().await.expect("stream");
    for m in [hello("old", "hq"), report("old", "new2")] {
        send.write_all(&frame::encode_as(&m, 2).expect("encode"))
            .await
            .expect("write");
    }
    let (w, v) = read::<ServerMsg>(&mut recv).await.expect("welcome");
    assert!(matches!(w, ServerMsg::Welcome { .. }), "{w:?}");
    assert_eq!(v, 2, "a version-2 agent is answered in version 2");
    assert_eq!(
        read::<ServerMsg>(&mut recv).await,
        Some((ServerMsg::Ack { seq: 1 }, 2))
    );

    // A protocol-3 agent (the release before confirmation bursts) joins: its list names
    // the old agent, at its connection's address, in version-3 frames it can read.
    let advertised = "192.0.2.1".parse().expect("ip");
    let (_ep1, _c1, _s1, mut peers1) = join(
        &agg,
        "new1",
        "hq",
        Join {
            advertise: vec![],
            stamp_port: None,
        },
        3,
    )
    .await;
    let (e1, list) = next_list(&mut peers1, 3).await;
    assert_eq!(names(&list), ["old"]);
    assert_eq!(list[0].addrs[0].to_string(), "127.0.0.1");
    assert_eq!(
        (list[0].site.as_deref(), list[0].stamp_port),
        (Some("hq"), None)
    );

    // Another joins, advertising an address and a reflector: both lists have it.
    let (_ep2, c2, mut s2, mut peers2) = join(
        &agg,
        "new2",
        "branch",
        Join {
            advertise: vec![advertised],
            stamp_port: Some(8620),
        },
        frame::PROTOCOL_VERSION,
    )
    .await;
    let (_, list2) = next_list(&mut peers2, frame::PROTOCOL_VERSION).await;
    assert_eq!(names(&list2), ["new1", "old"]);
    let (e2, list) = next_list(&mut peers1, 3).await;
    assert!(e2 > e1);
    assert_eq!(names(&list), ["new2", "old"]);
    assert_eq!(
        (list[0].addrs.as_slice(), list[0].stamp_port),
        (&[advertised][..], Some(8620))
    );
    frame::write(&mut s2, &report("new2", "new1"))
        .await
        .expect("report");
    let store = agg.running.store.clone();
    let paths_of = |a: &str| {
        store
            .lock()
            .expect("lock")
            .paths
            .keys()
            .filter(|k| &*k.src == a || &*k.dst == a)
            .count()
    };
    assert!(
        pathpulse_tests_wait(|| paths_of("new2") == 2).await,
        "new2's paths (from it, and old's toward it)"
    );

    // new2 goes: it stays listed for the grace period, then leaves every list and its
    // paths go from the store.
    c2.close(0u32.into(), b"bye");
    let gone_at = std::time::Instant::now();
    let (_, list) = tokio::time::timeout(Duration::from_secs(5), next_list(&mut peers1, 3))
        .await
        .expect("a list without new2");
    assert_eq!(names(&list), ["old"]);
    assert!(
        gone_at.elapsed() >= Duration::from_millis(450),
        "left before its grace period"
    );
    assert!(
        pathpulse_tests_wait(|| paths_of("new2") == 0).await,
        "new2's paths removed"
    );
    assert!(paths_of("old") == 0, "old's only path was toward new2");

    // A join before any hello is refused.
    let id = identity(&agg, "rude");
    let (_ep3, c3) = connect(agg.running.bound.quic, &id).await;
    let (mut send, mut recv) = c3.open_bi().await.expect("stream");
    frame::write(
        &mut send,
        &ClientMsg::Join(Join {
            advertise: vec![],
            stamp_port: None,
        }),
    )
    .await
    .expect("join");
    match read::<ServerMsg>(&mut recv).await {
        Some((ServerMsg::Refused { reason, .. }, _)) => assert_eq!(reason, RefuseReason::NoHello),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn pathpulse_tests_wait(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..50 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
