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
        mesh: Default::default(),
        http_auth: pathpulse_aggregator::auth::AuthMode::Open,
        metrics_auth: pathpulse_aggregator::auth::AuthMode::Open,
        report_rate: pathpulse_aggregator::limits::DEFAULT_REPORTS,
        registration_rate: pathpulse_aggregator::limits::DEFAULT_REGISTRATIONS,
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

#[tokio::test]
async fn replay_of_an_earlier_session_on_one_stream_is_applied_once() {
    // A restarted agent: its new session's hello, then a hello naming the earlier session
    // before the spooled reports, then its own session again.
    let agg = start().await;
    let id = identity(&agg, "a3");
    let session_hello = |session: u64| {
        ClientMsg::Hello(Hello {
            agent: "a3".into(),
            session,
            software: "test".into(),
            site: None,
            isp: None,
        })
    };
    // First process (session 1): reports 1..=3 applied.
    let (_ep, conn) = connect(agg.running.bound.quic, &id).await.expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(&mut send, &session_hello(1))
        .await
        .expect("hello");
    answer(&mut recv).await;
    for seq in 1..=3 {
        frame::write(&mut send, &report("a3", seq))
            .await
            .expect("report");
        assert_eq!(answer(&mut recv).await, Some(ServerMsg::Ack { seq }));
    }
    // Second process (session 2) replays 2..=4 of session 1, then sends its own 1..=2.
    let (_ep2, conn2) = connect(agg.running.bound.quic, &id).await.expect("connect");
    let (mut send, mut recv) = conn2.open_bi().await.expect("stream");
    frame::write(&mut send, &session_hello(2))
        .await
        .expect("hello");
    answer(&mut recv).await;
    frame::write(&mut send, &session_hello(1))
        .await
        .expect("hello");
    assert!(matches!(
        answer(&mut recv).await,
        Some(ServerMsg::Welcome { .. })
    ));
    for seq in 2..=4 {
        frame::write(&mut send, &report("a3", seq))
            .await
            .expect("report");
        assert_eq!(answer(&mut recv).await, Some(ServerMsg::Ack { seq }));
    }
    frame::write(&mut send, &session_hello(2))
        .await
        .expect("hello");
    answer(&mut recv).await;
    for seq in 1..=2 {
        frame::write(&mut send, &report("a3", seq))
            .await
            .expect("report");
        assert_eq!(answer(&mut recv).await, Some(ServerMsg::Ack { seq }));
    }
    let store = agg.running.store.lock().expect("lock");
    let c = store.paths.values().next().expect("path").counters;
    assert_eq!(
        c.sent,
        3 * 6,
        "4 reports of session 1 and 2 of session 2, once each"
    );
    drop(store);
    agg.stop.cancel();
}

#[tokio::test]
async fn a_connection_without_a_certificate_may_only_enroll() {
    let agg = start().await;
    let ca = pki::load_ca(&agg.dir.path().join("agg")).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut tls_cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls_cfg.alpn_protocols = vec![tls::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg).expect("quic");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("ep");
    let conn = ep
        .connect_with(
            quinn::ClientConfig::new(std::sync::Arc::new(quic)),
            agg.running.bound.quic,
            tls::SERVER_NAME,
        )
        .expect("connect")
        .await
        .expect("handshake without a certificate completes");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(&mut send, &hello("a4")).await.expect("hello");
    match answer(&mut recv).await {
        Some(ServerMsg::Refused { reason, detail }) => {
            assert_eq!(reason, RefuseReason::Certificate);
            assert!(detail.contains("enroll"), "{detail}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(refused(&agg, RefuseReason::Certificate), 1);
    assert!(agg.running.store.lock().expect("lock").agents.is_empty());

    // On an enrollment connection a report is not an enrollment request.
    let cfg =
        tls::enroll_client_config(&tls::ca_fingerprint(ca.cert_pem()).expect("fp")).expect("cfg");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).expect("quic");
    let conn = ep
        .connect_with(
            quinn::ClientConfig::new(std::sync::Arc::new(quic)),
            agg.running.bound.quic,
            tls::SERVER_NAME,
        )
        .expect("connect")
        .await
        .expect("enrollment handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(&mut send, &report("a4", 1))
        .await
        .expect("report");
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        frame::read::<pathpulse_wire::EnrollReply, _>(&mut recv, 1 << 16),
    )
    .await
    .expect("answered")
    .expect("frame");
    assert!(
        matches!(
            reply,
            Some(pathpulse_wire::EnrollReply::Refused {
                reason: RefuseReason::Malformed,
                ..
            })
        ),
        "{reply:?}"
    );
    assert!(agg.running.store.lock().expect("lock").paths.is_empty());
    agg.stop.cancel();
}

#[tokio::test]
async fn reports_that_contradict_themselves_are_refused_as_malformed() {
    let agg = start().await;
    let id = identity(&agg, "a5");
    let mut cases = Vec::new();
    // More replies than RTT samples.
    let ClientMsg::Report(mut r) = report("a5", 1) else {
        unreachable!()
    };
    r.paths[0].received = 5;
    cases.push((r.clone(), "RTT samples"));
    // A path without a destination.
    let ClientMsg::Report(mut r) = report("a5", 1) else {
        unreachable!()
    };
    r.paths[0].dst = String::new();
    cases.push((r, "destination"));
    for (r, needle) in cases {
        let before = refused(&agg, RefuseReason::Malformed);
        let (_ep, conn) = connect(agg.running.bound.quic, &id).await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        frame::write(&mut send, &hello("a5")).await.expect("hello");
        answer(&mut recv).await;
        frame::write(&mut send, &ClientMsg::Report(r))
            .await
            .expect("report");
        match answer(&mut recv).await {
            Some(ServerMsg::Refused {
                reason: RefuseReason::Malformed,
                detail,
            }) => assert!(detail.contains(needle), "{detail}"),
            other => panic!("expected malformed, got {other:?}"),
        }
        assert_eq!(refused(&agg, RefuseReason::Malformed), before + 1);
    }
    assert!(agg.running.store.lock().expect("lock").paths.is_empty());
    agg.stop.cancel();
}

#[tokio::test]
async fn renewal_is_refused_until_due_and_only_for_the_connections_identity() {
    let agg = start().await;
    // A fresh one-year certificate: not due.
    let id = identity(&agg, "a6");
    let (_ep, conn) = connect(agg.running.bound.quic, &id).await.expect("connect");
    let (_, csr) = tls::new_key_and_request("someone-else").expect("csr");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(
        &mut send,
        &ClientMsg::Renew {
            csr_pem: csr.clone(),
        },
    )
    .await
    .expect("renew");
    match answer(&mut recv).await {
        Some(ServerMsg::Refused { reason, detail }) => {
            assert_eq!(reason, RefuseReason::Malformed);
            assert!(detail.contains("not due"), "{detail}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A certificate in its last third: renewed, for the connection's name whatever the
    // request asked for.
    let ca = pki::load_ca(&agg.dir.path().join("agg")).expect("ca");
    let dir = agg.dir.path().join("a7");
    pki::issue_agent_for(&ca, "a7", &dir, Duration::from_secs(600)).expect("issue");
    let (_ep, conn) = connect(agg.running.bound.quic, &dir)
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(&mut send, &ClientMsg::Renew { csr_pem: csr })
        .await
        .expect("renew");
    match answer(&mut recv).await {
        Some(ServerMsg::Renewed { cert_pem }) => {
            let der =
                rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).expect("pem");
            assert_eq!(tls::peer_agent_name(&der).expect("name"), "a7");
        }
        other => panic!("expected a certificate, got {other:?}"),
    }
    assert_eq!(agg.running.store.lock().expect("lock").renewed, 1);
    agg.stop.cancel();
}

fn refused_local(agg: &Agg, reason: &str) -> u64 {
    agg.running
        .store
        .lock()
        .expect("lock")
        .refused
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// Connections beyond `max_connections` are refused at once and counted, and a connection
/// that never says hello is closed after the deadline and counted: a client cannot hold
/// the aggregator's connection slots with handshakes and keep-alives alone.
#[tokio::test]
async fn connection_limit_and_silent_connections_are_refused_and_counted() {
    use pathpulse_aggregator::ingest::HELLO_DEADLINE;
    use pathpulse_metrics::store::{CONNECTION_LIMIT, SILENT};
    let agg = start().await;
    let id = identity(&agg, "crowd");
    // 16 connections (the limit in `start`), each greeted, so none is silent.
    let mut held = Vec::new();
    for _ in 0..16 {
        let (ep, conn) = connect(agg.running.bound.quic, &id).await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        frame::write(&mut send, &hello("crowd"))
            .await
            .expect("hello");
        assert!(matches!(
            answer(&mut recv).await,
            Some(ServerMsg::Welcome { .. })
        ));
        held.push((ep, conn, send, recv));
    }
    let err = connect(agg.running.bound.quic, &id)
        .await
        .expect_err("the 17th connection is refused");
    assert!(err.contains("refused"), "{err}");
    assert_eq!(refused_local(&agg, CONNECTION_LIMIT), 1);
    assert_eq!(refused_local(&agg, SILENT), 0);
    // Room again: one held connection goes, a silent one takes its place and is closed.
    let (_, gone, _, _) = held.pop().expect("held");
    gone.close(0u32.into(), b"bye");
    drop(gone);
    let silent = loop {
        match connect(agg.running.bound.quic, &id).await {
            Ok((ep, conn)) => break (ep, conn),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let t0 = std::time::Instant::now();
    let why = tokio::time::timeout(HELLO_DEADLINE * 2, silent.1.closed())
        .await
        .expect("the silent connection is closed by the aggregator");
    let took = t0.elapsed();
    assert!(
        matches!(why, quinn::ConnectionError::ApplicationClosed(ref c) if c.reason.as_ref() == b"no hello in time"),
        "{why:?}"
    );
    assert!(
        took >= HELLO_DEADLINE - Duration::from_secs(1),
        "closed after {took:?}"
    );
    assert_eq!(refused_local(&agg, SILENT), 1);
    // The greeted ones are still served.
    let (_, _, send, recv) = held.last_mut().expect("held");
    frame::write(send, &report("crowd", 1))
        .await
        .expect("report");
    assert!(matches!(
        answer(recv).await,
        Some(ServerMsg::Ack { seq: 1 })
    ));
    agg.stop.cancel();
}

/// Revocation is checked on every connection, a resumed TLS session included: the agent
/// reconnects with the same client configuration (its session tickets from the first
/// connection) after `cert revoke`, and its hello is refused as `revoked` and counted.
#[tokio::test]
async fn a_revoked_agent_is_refused_on_its_next_connection_even_when_resumed() {
    let agg = start().await;
    let state = agg.dir.path().join("agg");
    let ca = pki::load_ca(&state).expect("ca");
    let out = agg.dir.path().join("resumer");
    pki::issue_agent_recorded(&state, &ca, "resumer", &out, pki::AGENT_CERT_VALIDITY)
        .expect("issue");
    let cfg = pathpulse_agent::uplink::client_config(&out).expect("client config");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let greet = |conn: quinn::Connection| async move {
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        frame::write(&mut send, &hello("resumer"))
            .await
            .expect("hello");
        (answer(&mut recv).await, conn)
    };
    let conn = ep
        .connect_with(cfg.clone(), agg.running.bound.quic, tls::SERVER_NAME)
        .expect("connect")
        .await
        .expect("first handshake");
    let (first, conn) = greet(conn).await;
    assert!(
        matches!(first, Some(ServerMsg::Welcome { .. })),
        "{first:?}"
    );
    // Let the server's session tickets arrive, then leave.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.close(0u32.into(), b"bye");
    let serials = pathpulse_aggregator::state::StateDb::open(&state)
        .and_then(|db| db.revoke_name("resumer"))
        .expect("revoke");
    assert_eq!(serials.len(), 1);
    let before = refused(&agg, RefuseReason::Revoked);
    // Same configuration, same ticket store: the handshake may resume; the check is made
    // per connection either way.
    let again = ep
        .connect_with(cfg, agg.running.bound.quic, tls::SERVER_NAME)
        .expect("connect")
        .await;
    match again {
        Err(e) => panic!("the revoked agent should get a refusal it can read, got {e}"),
        Ok(conn) => {
            let (second, _conn) = greet(conn).await;
            match second {
                Some(ServerMsg::Refused { reason, detail }) => {
                    assert_eq!(reason, RefuseReason::Revoked, "{detail}");
                    assert!(detail.contains("revoked"), "{detail}");
                }
                other => panic!("expected Refused(revoked), got {other:?}"),
            }
        }
    }
    assert_eq!(refused(&agg, RefuseReason::Revoked), before + 1);
    agg.stop.cancel();
}

/// Confirmation bursts have no answer: a good one is counted per agent (and exported), a
/// malformed one (more probes decided than sent) is counted as `malformed` and dropped
/// without a refusal, which the agent would take for a refused report; the stream goes on
/// and the next report is acknowledged.
#[tokio::test]
async fn confirmation_bursts_are_counted_and_bad_ones_dropped_without_a_refusal() {
    let agg = start().await;
    let id = identity(&agg, "c1");
    let (_ep, conn) = connect(agg.running.bound.quic, &id).await.expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write(&mut send, &hello("c1")).await.expect("hello");
    assert!(matches!(
        answer(&mut recv).await,
        Some(ServerMsg::Welcome { .. })
    ));
    let burst = |received, lost| {
        ClientMsg::Confirm(pathpulse_wire::Confirm {
            paths: vec![pathpulse_wire::ConfirmPath {
                dst: "127.0.0.9".into(),
                probe: pathpulse_wire::ProbeKind::Icmp,
                sent: 60,
                received,
                lost,
                others_under_way: 0,
            }],
        })
    };
    let malformed = refused(&agg, RefuseReason::Malformed);
    for m in [burst(48, 12), burst(50, 20), burst(30, 0), report("c1", 1)] {
        frame::write(&mut send, &m).await.expect("write");
    }
    assert_eq!(answer(&mut recv).await, Some(ServerMsg::Ack { seq: 1 }));
    assert_eq!(refused(&agg, RefuseReason::Malformed), malformed + 1);
    {
        let store = agg.running.store.lock().expect("lock");
        let a = &store.agents["c1"];
        assert_eq!(
            (a.confirm_bursts, a.confirm_received, a.confirm_lost),
            (2, 78, 12)
        );
    }
    use pathpulse_metrics::export;
    let reg = export::registry(
        agg.running.store.clone(),
        export::Role::Aggregator,
        export::wall_clock_ms,
    );
    let text = export::encode_text(&reg);
    for line in [
        "pathpulse_confirm_bursts_total{agent=\"c1\"} 2",
        "pathpulse_confirm_probes_total{agent=\"c1\",result=\"lost\"} 12",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
    agg.stop.cancel();
}
