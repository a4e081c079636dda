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
use pathpulse_wire::message::validate_report;
use pathpulse_wire::{ClientMsg, RefuseReason, ServerMsg, tls};
use rustls_pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::alert::Alerts;

/// Streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 4;

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
                incoming.refuse();
                continue;
            };
            let (store, max_frame, name) = (self.store.clone(), self.max_frame, self.name.clone());
            let alerts = self.alerts.clone();
            tasks.spawn(async move {
                handle_connection(incoming, store, max_frame, name, alerts).await;
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
    alerts: Option<Arc<Alerts>>,
) {
    let peer = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // A failed handshake is almost always the agent's certificate (missing, unknown
            // issuer, expired); the error text says which.
            tracing::warn!(%peer, error = %e, "handshake refused");
            refuse(&store, RefuseReason::Certificate);
            return;
        }
    };
    let agent = match conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().map(tls::peer_agent_name))
    {
        Some(Ok(a)) => a,
        other => {
            let why = match other {
                Some(Err(e)) => e.to_string(),
                _ => "no client certificate".into(),
            };
            tracing::warn!(%peer, error = %why, "no agent identity in certificate");
            refuse(&store, RefuseReason::Certificate);
            conn.close(1u32.into(), b"no agent identity");
            return;
        }
    };
    tracing::info!(%peer, %agent, "agent connected");
    if let Some(a) = &alerts {
        a.agent_address(&agent, peer.ip().to_canonical());
    }
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%peer, %agent, reason = %e, "agent disconnected");
                return;
            }
        };
        tokio::spawn(handle_stream(
            send,
            recv,
            store.clone(),
            max_frame,
            (agent.clone(), peer),
            name.clone(),
            alerts.clone(),
        ));
    }
}

async fn send_refusal(send: &mut quinn::SendStream, reason: RefuseReason, detail: String) {
    let _ = frame::write(send, &ServerMsg::Refused { reason, detail }).await;
    let _ = send.finish();
    // Let the refusal reach the agent before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}

async fn handle_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    store: SharedStore,
    max_frame: u32,
    (agent, peer): (String, std::net::SocketAddr),
    name: String,
    alerts: Option<Arc<Alerts>>,
) {
    let mut session = None;
    loop {
        let msg = match frame::read::<ClientMsg, _>(&mut recv, max_frame).await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(FrameError::Io(_)) => return, // connection lost: nothing to answer
            Err(e) => {
                let reason = frame_reason(&e);
                tracing::warn!(%agent, error = %e, "bad frame; closing the stream");
                refuse(&store, reason);
                send_refusal(&mut send, reason, e.to_string()).await;
                return;
            }
        };
        let (refusal, reply) = match (msg, session) {
            (ClientMsg::Hello(h), _) if h.agent != agent => (
                Some((
                    RefuseReason::WrongIdentity,
                    format!("hello names `{}` but the certificate is `{agent}`", h.agent),
                )),
                None,
            ),
            (ClientMsg::Hello(h), _) => {
                session = Some(h.session);
                if let Some(a) = &alerts {
                    a.agent_hello(&agent, h.site.as_deref(), h.isp.as_deref());
                }
                store.lock().unwrap_or_else(|e| e.into_inner()).hello(
                    &agent,
                    h.site,
                    h.isp,
                    Some(peer.ip()),
                );
                (
                    None,
                    Some(ServerMsg::Welcome {
                        aggregator: name.clone(),
                    }),
                )
            }
            (ClientMsg::Report(_), None) => (
                Some((RefuseReason::NoHello, "report before hello".to_string())),
                None,
            ),
            (ClientMsg::Report(r), Some(_)) if r.agent != agent => (
                Some((
                    RefuseReason::WrongIdentity,
                    format!(
                        "report names `{}` but the certificate is `{agent}`",
                        r.agent
                    ),
                )),
                None,
            ),
            (ClientMsg::Report(r), Some(sess)) => match validate_report(&r) {
                Err(why) => (Some((RefuseReason::Malformed, why)), None),
                Ok(()) => {
                    let now = wall_clock_ms();
                    let applied = store
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .apply_once(&r, sess, now);
                    let seq = r.seq;
                    if applied == Applied::Duplicate {
                        tracing::debug!(%agent, seq, "replayed report acknowledged again");
                    } else if let Some(a) = &alerts {
                        a.submit(r, now);
                    }
                    (None, Some(ServerMsg::Ack { seq }))
                }
            },
        };
        if let Some((reason, detail)) = refusal {
            tracing::warn!(%agent, reason = reason.as_str(), %detail, "refused");
            refuse(&store, reason);
            send_refusal(&mut send, reason, detail).await;
            return;
        }
        if let Some(reply) = reply
            && frame::write(&mut send, &reply).await.is_err()
        {
            return;
        }
    }
}
