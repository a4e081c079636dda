//! The ingest against a real QUIC client with real certificates: hostile frames are
//! refused with the reason and counted, replays are acknowledged but applied once, and
//! expired certificates are refused.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pathpulse_aggregator::config::AggregatorConfig;
use pathpulse_aggregator::{pki, server};
use pathpulse_wire::frame::{self, HEADER_LEN, MAGIC, PROTOCOL_VERSION};
use pathpulse_wire::message::AgentHealth;
use pathpulse_wire::{ClientMsg, Hello, PathReport, RefuseReason, Report, ServerMsg, tls};
use tokio_util::sync::CancellationToken;

struct Agg {
    running: server::Running,
    dir: tempfile::TempDir,
    stop: CancellationToken,
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
    };
    let stop = CancellationToken::new();
    let running = server::start(&cfg, stop.clone())
        .await
        .expect("aggregator starts");
    Agg { running, dir, stop }
}

fn identity(agg: &Agg, name: &str) -> std::path::PathBuf {
    let ca = pki::load_ca(&agg.dir.path().join("agg")).expect("ca");
    let out = agg.dir.path().join(name);
    pki::issue_agent(&ca, name, &out).expect("issue");
    out
}

async fn connect(
    addr: SocketAddr,
    identity_dir: &Path,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let cfg = pathpulse_agent::uplink::client_config(identity_dir).map_err(|e| e.to_string())?;
    let ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
    let conn = ep
        .connect_with(cfg, addr, tls::SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok((ep, conn))
}

fn hello(agent: &str) -> ClientMsg {
    ClientMsg::Hello(Hello {
        agent: agent.into(),
        session: 42,
        software: "test".into(),
        site: None,
        isp: None,
    })
}

fn report(agent: &str, seq: u64) -> ClientMsg {
    let mut p = PathReport {
        dst: "127.0.0.9".into(),
        sent: 3,
        received: 2,
        lost: 1,
        ..Default::default()
    };
    for v in [100, 200] {
        p.rtt.record(v);
        p.rtt_sum_us += v;
    }
    ClientMsg::Report(Report {
        seq,
        agent: agent.into(),
        interval_start_ms: pathpulse_metrics::export::wall_clock_ms(),
        interval_ms: 1000,
        paths: vec![p],
        health: AgentHealth::default(),
    })
}

async fn answer(recv: &mut quinn::RecvStream) -> Option<ServerMsg> {
    tokio::time::timeout(
        Duration::from_secs(5),
        frame::read::<ServerMsg, _>(recv, frame::DEFAULT_MAX_FRAME),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .flatten()
}

fn refused(agg: &Agg, reason: RefuseReason) -> u64 {
    agg.running
        .store
        .lock()
        .expect("lock")
        .refused
        .get(reason.as_str())
        .copied()
        .unwrap_or(0)
}

/// Send raw bytes after a valid hello; expect a refusal with `reason`.
async fn refuse_raw(agg: &Agg, id: &Path, agent: &str, bytes: Vec<u8>, reason: RefuseReason) {
    let before = refused(agg, reason);
    let (_ep, conn) = connect(agg.running.bound.quic, id).await.expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(&mut send, &hello(agent)).await.expect("hello");
    assert!(matches!(
        answer(&mut recv).await,
        Some(ServerMsg::Welcome { .. })
    ));
    send.write_all(&bytes).await.expect("write");
    match answer(&mut recv).await {
        Some(ServerMsg::Refused { reason: r, detail }) => {
            assert_eq!(r, reason, "{detail}");
            assert!(!detail.is_empty());
        }
        other => panic!("expected a refusal ({reason:?}), got {other:?}"),
    }
    assert_eq!(refused(agg, reason), before + 1, "{reason:?} counted once");
}

#[tokio::test]
async fn hostile_frames_are_refused_with_their_reason_and_counted() {
    let agg = start().await;
    let id = identity(&agg, "a1");
    let mut future = frame::encode(&report("a1", 1)).expect("encode");
    future[2..4].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    refuse_raw(&agg, &id, "a1", future, RefuseReason::UnsupportedVersion).await;

    let mut huge = [0u8; HEADER_LEN];
    huge[..2].copy_from_slice(&MAGIC);
    huge[2..4].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    huge[4..].copy_from_slice(&u32::MAX.to_be_bytes());
    refuse_raw(&agg, &id, "a1", huge.to_vec(), RefuseReason::Oversize).await;

    let mut garbage = frame::encode(&report("a1", 1)).expect("encode");
    for b in &mut garbage[HEADER_LEN..] {
        *b = 0xfe;
    }
    refuse_raw(&agg, &id, "a1", garbage, RefuseReason::Malformed).await;
    refuse_raw(
        &agg,
        &id,
        "a1",
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        RefuseReason::Malformed,
    )
    .await;
    assert_eq!(refused(&agg, RefuseReason::Malformed), 2);

    // A report naming another agent than the certificate.
    let (_ep, conn) = connect(agg.running.bound.quic, &id).await.expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(&mut send, &hello("a1")).await.expect("hello");
    answer(&mut recv).await;
    frame::write(&mut send, &report("someone-else", 1))
        .await
        .expect("report");
    assert!(matches!(
        answer(&mut recv).await,
        Some(ServerMsg::Refused {
            reason: RefuseReason::WrongIdentity,
            ..
        })
    ));

    // A report before the hello.
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(&mut send, &report("a1", 1))
        .await
        .expect("report");
    assert!(matches!(
        answer(&mut recv).await,
        Some(ServerMsg::Refused {
            reason: RefuseReason::NoHello,
            ..
        })
    ));
    assert!(
        agg.running.store.lock().expect("lock").paths.is_empty(),
        "nothing refused was applied"
    );
    agg.stop.cancel();
}

#[tokio::test]
async fn replayed_reports_are_acknowledged_and_applied_once() {
    let agg = start().await;
    let id = identity(&agg, "a2");
    for _attempt in 0..2 {
        // Same session, same sequences, as after a reconnect.
        let (_ep, conn) = connect(agg.running.bound.quic, &id).await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        frame::write(&mut send, &hello("a2")).await.expect("hello");
        answer(&mut recv).await;
        for seq in 1..=3 {
            frame::write(&mut send, &report("a2", seq))
                .await
                .expect("report");
            assert_eq!(answer(&mut recv).await, Some(ServerMsg::Ack { seq }));
        }
    }
    let store = agg.running.store.lock().expect("lock");
    let c = store.paths.values().next().expect("path").counters;
    assert_eq!(
        (c.sent, c.received, c.lost),
        (9, 6, 3),
        "three reports, each applied once"
    );
    drop(store);
    agg.stop.cancel();
}

#[tokio::test]
async fn expired_and_foreign_certificates_are_refused() {
    let agg = start().await;
    // Expired: valid last year only.
    let ca = pki::load_ca(&agg.dir.path().join("agg")).expect("ca");
    let now = time::OffsetDateTime::now_utc();
    let old = ca
        .issue_agent_between(
            "old",
            now - time::Duration::days(400),
            now - time::Duration::days(35),
        )
        .expect("issue");
    let dir = agg.dir.path().join("old");
    old.write_to(&dir, tls::AGENT_STEM).expect("write");
    tls::write_ca_pem(&dir, ca.cert_pem()).expect("ca");
    // Foreign: another CA entirely.
    let other = tls::Ca::generate("someone else's CA").expect("ca");
    let foreign = other
        .issue_agent("foreign", Duration::from_secs(3600))
        .expect("issue");
    let fdir = agg.dir.path().join("foreign");
    foreign.write_to(&fdir, tls::AGENT_STEM).expect("write");
    tls::write_ca_pem(&fdir, ca.cert_pem()).expect("ca");

    for (n, d) in [(1, dir), (2, fdir)] {
        // The client may see the handshake complete; the server refuses the certificate,
        // so no stream ever answers.
        if let Ok((_ep, conn)) = connect(agg.running.bound.quic, &d).await {
            let r = async {
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                frame::write(&mut send, &hello("x")).await.ok()?;
                answer(&mut recv).await
            };
            assert_eq!(
                tokio::time::timeout(Duration::from_secs(5), r)
                    .await
                    .ok()
                    .flatten(),
                None
            );
        }
        let counted = async {
            while refused(&agg, RefuseReason::Certificate) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), counted)
            .await
            .expect("refusal counted");
    }
    assert!(agg.running.store.lock().expect("lock").agents.is_empty());
    agg.stop.cancel();
}
