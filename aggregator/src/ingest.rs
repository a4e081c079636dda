//! QUIC ingest: verifies each agent's certificate (mutual TLS), takes the agent's identity
//! from it, and applies its reports once each, acknowledging after applying. Everything
//! refused is counted by reason in `pathpulse_ingest_refused_total` and logged once per
//! connection; nothing a peer sends can panic the server or block other agents.

use std::sync::Arc;
use std::time::Duration;

use pathpulse_agent::systemd::{BEAT_EVERY, Beat};
use pathpulse_metrics::export::wall_clock_ms;
use pathpulse_metrics::{Applied, SharedStore};
use pathpulse_wire::frame::{self, FrameError};
use pathpulse_wire::message::MAX_ENROLL_FRAME;
use pathpulse_wire::message::{validate_join, validate_report};
use pathpulse_wire::{ClientMsg, EnrollReply, EnrollRequest, RefuseReason, ServerMsg, tls};
use rustls_pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::alert::Alerts;
use crate::durable::Durability;
use crate::limits::Limits;
use crate::mesh::Mesh;
use crate::pki::AGENT_CERT_VALIDITY;
use crate::state::{StateDb, TokenError};

/// Streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 4;

/// A connection must say hello this soon after its handshake, or it is closed (and counted
/// as `silent`): keep-alives alone would hold a connection slot for ever.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);

pub struct Ingest {
    pub endpoint: quinn::Endpoint,
    /// Beats while the accept loop runs (systemd watchdog).
    pub beat: Arc<Beat>,
    pub store: SharedStore,
    pub max_frame: u32,
    pub connections: Arc<Semaphore>,
    pub name: String,
    /// The alert engine, told of every applied report.
    pub alerts: Option<Arc<Alerts>>,
    pub auth: Arc<Auth>,
    /// Mesh membership (peer lists), when `[mesh]` is enabled.
    pub mesh: Option<Arc<Mesh>>,
    /// Acknowledgements wait for the counters to be on disk.
    pub durability: Arc<Durability>,
    pub limits: Arc<Limits>,
}

/// What the ingest needs to enroll agents and check revocations.
#[derive(Debug)]
pub struct Auth {
    pub ca: tls::Ca,
    pub state: Arc<StateDb>,
}

/// Receive buffer asked for the ingest's UDP socket: every agent's reports arrive on this
/// one socket, and the kernel drops what does not fit while the endpoint is busy. With the
/// default 208 KiB, 1,000 agents × 100 paths (about 10 MB/s) overflowed it within a minute
/// (the kernel's `RcvbufErrors` rose by thousands a second), QUIC backed off and resent,
/// and most connections timed out. 8 MiB holds most of a second of that traffic.
pub const UDP_RECV_BUFFER: usize = 8 << 20;

/// The ingest's UDP socket, bound to `addr`, with a receive buffer of [`UDP_RECV_BUFFER`]
/// where the system allows it (beyond `net.core.rmem_max` only with `CAP_NET_ADMIN`).
/// Returns the buffer the kernel granted (half what it reports: it counts its own
/// bookkeeping twice) so the caller can warn when it is smaller.
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if socket.set_recv_buffer_size(UDP_RECV_BUFFER).is_err()
        || socket.recv_buffer_size()? / 2 < UDP_RECV_BUFFER
    {
        // Above rmem_max: allowed to a privileged process (root, CAP_NET_ADMIN).
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &UDP_RECV_BUFFER,
        );
    }
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size()? / 2;
    Ok((socket.into(), granted))
}

/// The QUIC server configuration from rustls's, with limits suited to report streams.
pub fn server_config(tls_cfg: rustls::ServerConfig) -> anyhow::Result<quinn::ServerConfig> {
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls_cfg)
        .map_err(|e| anyhow::anyhow!("QUIC TLS configuration: {e}"))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    // One datagram a send, no GSO batch: quinn gives every connection a send buffer for a
    // whole batch (10 datagrams of the path MTU, a 16 KiB allocation) the first time it
    // sends several at once (the handshake's certificates) and keeps it for the life of the
    // connection. The aggregator sends agents acknowledgements and small replies: 1,000
    // agents' buffers held 16 MB for nothing.
    transport.enable_segmentation_offload(false);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

fn refuse(store: &SharedStore, reason: RefuseReason) {
    store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .refuse(reason);
}

fn frame_reason(e: &FrameError) -> RefuseReason {
    match e {
        FrameError::Oversize { .. } => RefuseReason::Oversize,
        FrameError::UnsupportedVersion { .. } => RefuseReason::UnsupportedVersion,
        _ => RefuseReason::Malformed,
    }
}

impl Ingest {
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = tokio_util::task::TaskTracker::new();
        let mut beat = tokio::time::interval(BEAT_EVERY);
        let endpoint = self.endpoint.clone();
        let mut accept = Box::pin(endpoint.accept());
        loop {
            self.beat.beat();
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = beat.tick() => continue,
                i = &mut accept => match i { Some(i) => i, None => break },
            };
            accept = Box::pin(endpoint.accept());
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(peer = %incoming.remote_address(), "connection limit reached; refusing");
                self.store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .refuse_local(pathpulse_metrics::store::CONNECTION_LIMIT);
                incoming.refuse();
                continue;
            };
            let (store, max_frame, name) = (self.store.clone(), self.max_frame, self.name.clone());
            let shared = Shared {
                auth: self.auth.clone(),
                alerts: self.alerts.clone(),
                durability: self.durability.clone(),
                limits: self.limits.clone(),
                mesh: self.mesh.clone(),
            };
            tasks.spawn(async move {
                handle_connection(incoming, store, max_frame, name, shared).await;
                drop(permit);
            });
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            tasks.wait().await;
            self.endpoint.wait_idle().await;
        })
        .await;
    }
}

async fn handle_connection(
    incoming: quinn::Incoming,
    store: SharedStore,
    max_frame: u32,
    name: String,
    shared: Shared,
) {
    let Shared {
        auth,
        alerts,
        durability,
        limits,
        mesh,
    } = shared;
    let peer = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        // The peer gave up its own handshake (closed, or went silent): nothing refused.
        Err(
            e @ (quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::TimedOut),
        ) => {
            tracing::debug!(%peer, error = %e, "peer left during the handshake");
            return;
        }
        Err(e) => {
            // A failed handshake is almost always the agent's certificate (missing, unknown
            // issuer, expired); the error text says which.
            tracing::warn!(%peer, error = %e, "handshake refused");
            refuse(&store, RefuseReason::Certificate);
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() == Some(tls::ENROLL_ALPN) {
        handle_enroll(conn, store, auth).await;
        return;
    }
    let cert = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned());
    let validity = cert
        .as_ref()
        .and_then(|c| tls::cert_validity(c).ok())
        .unwrap_or((0, i64::MAX));
    let agent = match cert.as_ref().map(tls::peer_agent_name) {
        Some(Ok(a)) => a,
        other => {
            let why = match other {
                Some(Err(e)) => e.to_string(),
                _ => "no client certificate: without one a connection may only enroll".into(),
            };
            tracing::warn!(%peer, error = %why, "no agent identity in certificate");
            refuse(&store, RefuseReason::Certificate);
            refuse_connection(conn, RefuseReason::Certificate, why).await;
            return;
        }
    };
    // Revocation is checked on every connection (a resumed TLS session is a new one too).
    let serial = cert
        .as_ref()
        .and_then(|c| tls::cert_serial(c).ok())
        .unwrap_or_default();
    match auth.state.is_revoked(&serial) {
        Ok(false) => {}
        Ok(true) => {
            tracing::warn!(%peer, %agent, %serial, "revoked certificate refused");
            refuse(&store, RefuseReason::Revoked);
            let why = format!(
                "the certificate of `{agent}` (serial {serial}) was revoked; enroll again with a new token"
            );
            refuse_connection(conn, RefuseReason::Revoked, why).await;
            return;
        }
        Err(e) => {
            // Fail closed: an unreadable revocation list lets nobody in.
            tracing::error!(%peer, %agent, error = %e, "cannot read the revocation list; refusing");
            refuse(&store, RefuseReason::Certificate);
            refuse_connection(
                conn,
                RefuseReason::Certificate,
                "the aggregator cannot check revocation now".into(),
            )
            .await;
            return;
        }
    }
    tracing::info!(%peer, %agent, "agent connected");
    if let Some(a) = &alerts {
        a.agent_address(&agent, peer.ip().to_canonical());
    }
    let greeted = Arc::new(tokio::sync::Notify::new());
    {
        let (conn, greeted, store, agent) =
            (conn.clone(), greeted.clone(), store.clone(), agent.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = greeted.notified() => {}
                _ = conn.closed() => {}
                _ = tokio::time::sleep(HELLO_DEADLINE) => {
                    tracing::warn!(%peer, %agent, "no hello within {HELLO_DEADLINE:?} of the handshake; closing");
                    store
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .refuse_local(pathpulse_metrics::store::SILENT);
                    conn.close(0u32.into(), b"no hello in time");
                }
            }
        });
    }
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%peer, %agent, reason = %e, "agent disconnected");
                if let Some(m) = &mesh {
                    m.disconnected(&agent, conn.stable_id());
                }
                return;
            }
        };
        tokio::spawn(handle_stream(
            send,
            recv,
            Peer {
                store: store.clone(),
                max_frame,
                agent: agent.clone(),
                name: name.clone(),
                validity,
                auth: auth.clone(),
                addr: peer,
                alerts: alerts.clone(),
                mesh: mesh.clone(),
                conn: conn.clone(),
                durability: durability.clone(),
                limits: limits.clone(),
                greeted: greeted.clone(),
            },
        ));
    }
}

/// What a stream knows about its connection.
struct Peer {
    store: SharedStore,
    max_frame: u32,
    agent: String,
    /// The aggregator's name (in the welcome).
    name: String,
    /// The client certificate's validity (seconds since the epoch).
    validity: (i64, i64),
    auth: Arc<Auth>,
    /// Where the connection comes from.
    addr: std::net::SocketAddr,
    /// The alert engine, told of every applied report.
    alerts: Option<Arc<Alerts>>,
    mesh: Option<Arc<Mesh>>,
    conn: quinn::Connection,
    durability: Arc<Durability>,
    limits: Arc<Limits>,
    /// Told when the connection's first hello is welcomed.
    greeted: Arc<tokio::sync::Notify>,
}

/// What every connection shares.
struct Shared {
    auth: Arc<Auth>,
    alerts: Option<Arc<Alerts>>,
    durability: Arc<Durability>,
    limits: Arc<Limits>,
    mesh: Option<Arc<Mesh>>,
}

/// Answer a renewal request: a new certificate for the connection's identity, when the
/// current one is in the last third of its validity.
async fn renew(peer: &Peer, csr_pem: String) -> Result<ServerMsg, (RefuseReason, String)> {
    let now = (wall_clock_ms() / 1000) as i64;
    if !tls::renewal_due(peer.validity, now) {
        return Err((
            RefuseReason::Malformed,
            format!(
                "renewal not due: the certificate is valid for {} more days",
                (peer.validity.1 - now) / 86_400
            ),
        ));
    }
    let (auth, agent) = (peer.auth.clone(), peer.agent.clone());
    let signed = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let cert = auth
            .ca
            .sign_agent_request(&agent, &csr_pem, AGENT_CERT_VALIDITY)?;
        auth.state.record_issued(&cert, &agent, "renew")?;
        Ok(cert)
    })
    .await
    .map_err(|e| (RefuseReason::Malformed, e.to_string()))?;
    match signed {
        Ok(cert_pem) => {
            peer.store.lock().unwrap_or_else(|e| e.into_inner()).renewed += 1;
            tracing::info!(agent = %peer.agent, "certificate renewed");
            Ok(ServerMsg::Renewed { cert_pem })
        }
        Err(e) => Err((RefuseReason::Malformed, format!("{e:#}"))),
    }
}

/// Refuse a whole connection: answer its first stream's first message with the refusal
/// (so the agent can say why), then close.
async fn refuse_connection(conn: quinn::Connection, reason: RefuseReason, detail: String) {
    let answer = async {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let _ = frame::read::<ClientMsg, _>(&mut recv, 64 * 1024).await;
        send_refusal(&mut send, reason, detail).await;
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
    conn.close(1u32.into(), reason.as_str().as_bytes());
}

/// An enrollment connection: one request, one answer.
async fn handle_enroll(conn: quinn::Connection, store: SharedStore, auth: Arc<Auth>) {
    let peer = conn.remote_address();
    let exchange = async {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let reply = match frame::read::<EnrollRequest, _>(&mut recv, MAX_ENROLL_FRAME).await {
            Ok(Some(req)) => {
                let auth = auth.clone();
                let store2 = store.clone();
                // Signing and the database are quick but blocking.
                tokio::task::spawn_blocking(move || enroll(&req, &auth, &store2, peer))
                    .await
                    .unwrap_or_else(|_| EnrollReply::Refused {
                        reason: RefuseReason::Malformed,
                        detail: "internal error".into(),
                    })
            }
            Ok(None) | Err(FrameError::Io(_)) => return None,
            Err(e) => {
                let reason = frame_reason(&e);
                refuse(&store, reason);
                EnrollReply::Refused {
                    reason,
                    detail: e.to_string(),
                }
            }
        };
        let _ = frame::write(&mut send, &reply).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), exchange).await;
    conn.close(0u32.into(), b"enrollment done");
}

fn enroll(
    req: &EnrollRequest,
    auth: &Auth,
    store: &SharedStore,
    peer: std::net::SocketAddr,
) -> EnrollReply {
    let refused = |reason: RefuseReason, detail: String| {
        tracing::warn!(%peer, name = %req.name, reason = reason.as_str(), %detail, "enrollment refused");
        refuse(store, reason);
        EnrollReply::Refused { reason, detail }
    };
    if let Err(e) = tls::validate_agent_name(&req.name) {
        return refused(RefuseReason::Malformed, e.to_string());
    }
    let issued = auth.state.redeem(&req.secret, &req.name, || {
        Ok(auth
            .ca
            .sign_agent_request(&req.name, &req.csr_pem, AGENT_CERT_VALIDITY)?)
    });
    match issued {
        Ok(Ok(cert_pem)) => {
            if let Err(e) = auth.state.record_issued(&cert_pem, &req.name, "enroll") {
                tracing::error!(error = %e, "cannot record the issued certificate");
            }
            store.lock().unwrap_or_else(|e| e.into_inner()).enrolled += 1;
            tracing::info!(%peer, name = %req.name, "agent enrolled");
            EnrollReply::Issued {
                cert_pem,
                ca_pem: auth.ca.cert_pem().to_string(),
            }
        }
        Ok(Err(e)) => {
            let reason = match e {
                TokenError::Unknown | TokenError::Role(_) => RefuseReason::TokenUnknown,
                TokenError::Used(_) => RefuseReason::TokenReused,
                TokenError::Expired(_) => RefuseReason::TokenExpired,
            };
            refused(reason, e.to_string())
        }
        // The token was fine; the request was not (or the database failed).
        Err(e) => refused(RefuseReason::Malformed, format!("{e:#}")),
    }
}

async fn send_refusal(send: &mut quinn::SendStream, reason: RefuseReason, detail: String) {
    send_refusal_as(send, reason, detail, frame::PROTOCOL_VERSION).await
}

/// Refuse in the version the agent speaks, so that it can read why.
async fn send_refusal_as(
    send: &mut quinn::SendStream,
    reason: RefuseReason,
    detail: String,
    version: u16,
) {
    let _ = frame::write_as(send, &ServerMsg::Refused { reason, detail }, version).await;
    let _ = send.finish();
    // Let the refusal reach the agent before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}

async fn handle_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, peer: Peer) {
    let (store, max_frame, agent, name) = (&peer.store, peer.max_frame, &peer.agent, &peer.name);
    let alerts = &peer.alerts;
    let mut session = None;
    // Answers go in the version of the agent's last frame (2 to 4).
    let mut version = frame::PROTOCOL_VERSION;
    let mut received;
    loop {
        let msg = match frame::read_versioned::<ClientMsg, _>(&mut recv, max_frame).await {
            Ok(Some((m, v))) => {
                received = std::time::Instant::now();
                version = v;
                m
            }
            Ok(None) => return,
            Err(FrameError::Io(_)) => return, // connection lost: nothing to answer
            Err(e) => {
                let reason = frame_reason(&e);
                tracing::warn!(%agent, error = %e, "bad frame; closing the stream");
                refuse(store, reason);
                send_refusal_as(&mut send, reason, e.to_string(), version).await;
                return;
            }
        };
        let (refusal, reply) = match (msg, session) {
            (ClientMsg::Renew { csr_pem }, _) => match renew(&peer, csr_pem).await {
                Ok(reply) => (None, Some(reply)),
                Err(refusal) => (Some(refusal), None),
            },
            (ClientMsg::Hello(h), _) if h.agent != *agent => (
                Some((
                    RefuseReason::WrongIdentity,
                    format!("hello names `{}` but the certificate is `{agent}`", h.agent),
                )),
                None,
            ),
            (ClientMsg::Hello(_), _)
                if !peer
                    .limits
                    .registrations
                    .allow(agent, std::time::Instant::now()) =>
            {
                (
                    Some((
                        RefuseReason::RateLimited,
                        format!(
                            "`{agent}` registers too often (rate_limit.registrations_per_minute); retry after a backoff"
                        ),
                    )),
                    None,
                )
            }
            (ClientMsg::Hello(h), _) => {
                session = Some(h.session);
                peer.greeted.notify_one();
                if let Some(a) = &alerts {
                    a.agent_hello(agent, h.site.as_deref(), h.isp.as_deref());
                }
                if let Some(m) = &peer.mesh {
                    let seen = peer.addr.ip();
                    m.hello(
                        agent,
                        h.site.clone(),
                        h.isp.clone(),
                        seen,
                        peer.conn.stable_id(),
                    );
                }
                store.lock().unwrap_or_else(|e| e.into_inner()).hello(
                    agent,
                    h.site,
                    h.isp,
                    Some(peer.addr.ip()),
                );
                (
                    None,
                    Some(ServerMsg::Welcome {
                        aggregator: name.clone(),
                    }),
                )
            }
            (ClientMsg::Join(_), None) => (
                Some((RefuseReason::NoHello, "join before hello".to_string())),
                None,
            ),
            (ClientMsg::Join(j), Some(_)) => match validate_join(&j) {
                Err(why) => (Some((RefuseReason::Malformed, why)), None),
                Ok(()) => {
                    // Without `[mesh]` a join is accepted and changes nothing.
                    if let Some(m) = &peer.mesh {
                        m.join(agent, &peer.conn, j, version);
                    }
                    (None, None)
                }
            },
            (ClientMsg::Report(_), None) => (
                Some((RefuseReason::NoHello, "report before hello".to_string())),
                None,
            ),
            (ClientMsg::Report(r), Some(_)) if r.agent != *agent => (
                Some((
                    RefuseReason::WrongIdentity,
                    format!(
                        "report names `{}` but the certificate is `{agent}`",
                        r.agent
                    ),
                )),
                None,
            ),
            (ClientMsg::Report(_), Some(_))
                if !peer.limits.reports.allow(agent, std::time::Instant::now()) =>
            {
                (
                    Some((
                        RefuseReason::RateLimited,
                        format!(
                            "`{agent}` reports faster than rate_limit.reports_per_second allows; the report stays in the spool, send it again after a backoff"
                        ),
                    )),
                    None,
                )
            }
            (ClientMsg::Report(r), Some(sess)) => match validate_report(&r) {
                Err(why) => (Some((RefuseReason::Malformed, why)), None),
                Ok(()) => {
                    let now = wall_clock_ms();
                    let (applied, upto) = {
                        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                        let out = (s.apply_once(&r, sess, now), s.applied_count());
                        s.ingest_applied.observe(received.elapsed());
                        out
                    };
                    let seq = r.seq;
                    if applied == Applied::Duplicate {
                        tracing::debug!(%agent, seq, "replayed report acknowledged again");
                    } else if let Some(a) = &alerts {
                        a.submit(r, now);
                    }
                    // Acknowledged once durable (a duplicate too: its first application
                    // may still be on its way to disk).
                    if !peer.durability.wait(upto).await {
                        tracing::warn!(%agent, seq, "counters not on disk in time; report left unacknowledged (the agent sends it again)");
                        return;
                    }
                    store
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .ingest_acked
                        .observe(received.elapsed());
                    (None, Some(ServerMsg::Ack { seq }))
                }
            },
            // Confirmation bursts have no answer: a bad one is counted and dropped (a
            // refusal would read as one of the reports in flight).
            (ClientMsg::Confirm(_), None) => {
                tracing::warn!(%agent, "confirmation burst before hello; dropped");
                refuse(store, RefuseReason::NoHello);
                (None, None)
            }
            (ClientMsg::Confirm(c), Some(_)) => {
                match pathpulse_wire::message::validate_confirm(&c) {
                    Err(why) => {
                        tracing::warn!(%agent, error = %why, "malformed confirmation burst; dropped");
                        refuse(store, RefuseReason::Malformed);
                    }
                    Ok(()) => {
                        store
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .confirmed(agent, &c);
                        if let Some(a) = &alerts {
                            a.on_confirm(agent, &c, wall_clock_ms());
                        }
                    }
                }
                (None, None)
            }
        };
        if let Some((reason, detail)) = refusal {
            tracing::warn!(%agent, reason = reason.as_str(), %detail, "refused");
            refuse(store, reason);
            send_refusal_as(&mut send, reason, detail, version).await;
            return;
        }
        if let Some(reply) = reply
            && frame::write_as(&mut send, &reply, version).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ingest's socket asks for a receive buffer of [`UDP_RECV_BUFFER`] and gets it as
    /// root (CI), or unprivileged at least as much as `net.core.rmem_max` allows.
    #[test]
    fn the_ingest_socket_gets_a_large_receive_buffer() {
        let (socket, granted) =
            udp_socket("127.0.0.1:0".parse().expect("address")).expect("socket");
        assert_ne!(socket.local_addr().expect("bound").port(), 0);
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let root = nix::unistd::geteuid().is_root();
        let floor = match root {
            true => UDP_RECV_BUFFER,
            false => UDP_RECV_BUFFER.min(rmem_max),
        };
        assert!(
            granted >= floor,
            "granted {granted} B, rmem_max {rmem_max} B, root {root}"
        );
    }

    /// The QUIC server sends one datagram at a time (no per-connection GSO buffer).
    #[test]
    fn the_quic_server_sends_without_segmentation_offload() {
        let ca = tls::Ca::generate("test").expect("CA");
        let server = ca
            .issue_server(&[], Duration::from_secs(3600))
            .expect("server certificate");
        let tls_cfg = tls::server_config(ca.cert_pem(), server.identity().expect("identity"))
            .expect("TLS config");
        let cfg = server_config(tls_cfg).expect("QUIC config");
        let transport = format!("{:?}", cfg.transport);
        assert!(
            transport.contains("enable_segmentation_offload: false"),
            "{transport}"
        );
    }

    /// The .deb's sysctl.d file lets the (unprivileged) service have the buffer it asks for.
    #[test]
    fn the_packaged_rmem_max_fits_the_buffer() {
        let conf = include_str!("../../packaging/60-pathpulse-aggregator.conf");
        let rmem_max: usize = conf
            .lines()
            .find_map(|l| l.strip_prefix("net.core.rmem_max = "))
            .and_then(|v| v.trim().parse().ok())
            .expect("net.core.rmem_max in the sysctl.d file");
        assert!(rmem_max >= UDP_RECV_BUFFER, "{conf}");
    }
}
