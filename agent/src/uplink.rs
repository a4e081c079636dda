//! Uplink to one aggregator: QUIC with mutual TLS, one bidirectional stream carrying a
//! hello and then reports; the aggregator acknowledges each report after applying it.
//! Unacknowledged reports are kept (bounded, oldest dropped first and counted) and sent
//! again after a reconnect; the aggregator ignores sequences it has already applied.
//! Reconnects use jittered exponential backoff.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use pathpulse_wire::{ClientMsg, Hello, Report, ServerMsg, frame, tls};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Unacknowledged reports kept per aggregator (the on-disk spool replaces this bound).
pub const DEFAULT_QUEUE_LIMIT: usize = 10_000;

/// What an uplink shows about itself.
#[derive(Debug, Default)]
pub struct UplinkStatus {
    pub connected: AtomicBool,
    pub acked: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct Uplink {
    pub aggregator: String,
    pub hello: Hello,
    pub client: quinn::ClientConfig,
    pub reports: mpsc::Receiver<Report>,
    pub queue_limit: usize,
    pub status: Arc<UplinkStatus>,
}

/// The QUIC client configuration from the agent's identity and the aggregator's CA.
pub fn client_config(identity_dir: &std::path::Path) -> anyhow::Result<quinn::ClientConfig> {
    let id = tls::load_identity(identity_dir, tls::AGENT_STEM)?;
    let ca = tls::read_ca_pem(identity_dir)?;
    let rustls_cfg = tls::client_config(&ca, id)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)
        .map_err(|e| anyhow!("QUIC TLS configuration: {e}"))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(Duration::from_secs(20).try_into()?));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

enum Ended {
    Shutdown,
}

impl Uplink {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut pending: VecDeque<Report> = VecDeque::new();
        let mut next_seq = 0u64;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut last_error = String::new();
        loop {
            match self
                .session(&mut pending, &mut next_seq, &shutdown, &mut backoff)
                .await
            {
                Ok(Ended::Shutdown) => return,
                Err(e) => {
                    self.status.connected.store(false, Ordering::Relaxed);
                    let msg = format!("{e:#}");
                    if msg != last_error {
                        tracing::warn!(aggregator = %self.aggregator, error = %msg, "uplink down; retrying with backoff");
                        last_error = msg;
                    }
                }
            }
            let wait = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut wait => break,
                    r = self.reports.recv() => match r {
                        Some(r) => self.enqueue(&mut pending, &mut next_seq, r),
                        None => return,
                    },
                }
            }
        }
    }

    fn enqueue(&self, pending: &mut VecDeque<Report>, next_seq: &mut u64, mut r: Report) {
        *next_seq += 1;
        r.seq = *next_seq;
        if pending.len() >= self.queue_limit {
            pending.pop_front();
            self.status.dropped.fetch_add(1, Ordering::Relaxed);
        }
        pending.push_back(r);
    }

    async fn session(
        &mut self,
        pending: &mut VecDeque<Report>,
        next_seq: &mut u64,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Ended> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.aggregator)
            .await
            .with_context(|| format!("resolving {}", self.aggregator))?
            .next()
            .ok_or_else(|| anyhow!("{} has no address", self.aggregator))?;
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?;
        let endpoint = quinn::Endpoint::client(bind).context("opening the QUIC socket")?;
        let conn = endpoint
            .connect_with(self.client.clone(), addr, tls::SERVER_NAME)?
            .await
            .with_context(|| format!("QUIC handshake with {addr}"))?;
        let result = self
            .stream(&conn, pending, next_seq, shutdown, backoff)
            .await;
        conn.close(0u32.into(), b"bye");
        tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle())
            .await
            .ok();
        result
    }

    async fn stream(
        &mut self,
        conn: &quinn::Connection,
        pending: &mut VecDeque<Report>,
        next_seq: &mut u64,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Ended> {
        let (mut send, mut recv) = conn.open_bi().await.context("opening the report stream")?;
        frame::write(&mut send, &ClientMsg::Hello(self.hello.clone())).await?;
        match frame::read::<ServerMsg, _>(&mut recv, frame::DEFAULT_MAX_FRAME).await {
            Ok(Some(ServerMsg::Welcome { .. })) => {}
            Ok(Some(ServerMsg::Refused { reason, detail })) => {
                bail!("refused ({}): {detail}", reason.as_str())
            }
            Ok(Some(other)) => bail!("unexpected answer to hello: {other:?}"),
            Ok(None) => {
                bail!("aggregator closed the stream (is this agent's certificate from its CA?)")
            }
            Err(e) => {
                let why = conn
                    .close_reason()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                bail!("no welcome: {e}{why}")
            }
        }
        backoff.reset();
        self.status.connected.store(true, Ordering::Relaxed);
        tracing::info!(aggregator = %self.aggregator, replay = pending.len(), "uplink connected");
        // Acknowledgements come on their own task: frame reads are not cancel-safe.
        let (ack_tx, mut acks) = mpsc::channel::<anyhow::Result<ServerMsg>>(64);
        let reader = tokio::spawn(async move {
            loop {
                let m = frame::read::<ServerMsg, _>(&mut recv, frame::DEFAULT_MAX_FRAME).await;
                let stop = !matches!(m, Ok(Some(_)));
                let m = m
                    .map_err(anyhow::Error::from)
                    .and_then(|m| m.ok_or_else(|| anyhow!("aggregator closed the stream")));
                if ack_tx.send(m).await.is_err() || stop {
                    return;
                }
            }
        });
        let _abort = AbortOnDrop(reader);
        for r in pending.iter() {
            frame::write(&mut send, &ClientMsg::Report(r.clone())).await?;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Give in-flight acknowledgements a moment so nothing is replayed needlessly.
                    let deadline = tokio::time::sleep(Duration::from_millis(500));
                    tokio::pin!(deadline);
                    while !pending.is_empty() {
                        tokio::select! {
                            _ = &mut deadline => break,
                            m = acks.recv() => match m { Some(Ok(ServerMsg::Ack { seq })) => self.acked(pending, seq), _ => break },
                        }
                    }
                    send.finish().ok();
                    return Ok(Ended::Shutdown);
                }
                r = self.reports.recv() => {
                    let Some(r) = r else { return Ok(Ended::Shutdown) };
                    self.enqueue(pending, next_seq, r);
                    if let Some(r) = pending.back() {
                        frame::write(&mut send, &ClientMsg::Report(r.clone())).await?;
                    }
                }
                m = acks.recv() => match m {
                    Some(Ok(ServerMsg::Ack { seq })) => self.acked(pending, seq),
                    Some(Ok(ServerMsg::Refused { reason, detail })) => bail!("report refused ({}): {detail}", reason.as_str()),
                    Some(Ok(other)) => bail!("unexpected message: {other:?}"),
                    Some(Err(e)) => return Err(e),
                    None => bail!("acknowledgement reader ended"),
                },
            }
        }
    }

    fn acked(&self, pending: &mut VecDeque<Report>, seq: u64) {
        while pending.front().is_some_and(|r| r.seq <= seq) {
            pending.pop_front();
            self.status.acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
