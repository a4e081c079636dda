//! Uplink to one aggregator: QUIC with mutual TLS, one bidirectional stream carrying a
//! hello and then reports; the aggregator acknowledges each report after applying it.
//! Every report is numbered within this process's session and written to the uplink's
//! [`Spool`] before it is sent; it leaves the spool when acknowledged. After a reconnect or
//! a restart the spool is replayed first, oldest first; reports of an earlier session are
//! sent after a hello naming that session, so the aggregator, which applies each
//! (agent, session, sequence) once, counts every report exactly once. Reconnects use
//! jittered exponential backoff.
//!
//! Mesh membership (protocol 3): after the hello, a join says how peers reach this agent;
//! the aggregator then sends peer lists on a stream it opens, applied by the
//! [`PeerBoard`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use pathpulse_wire::{
    ClientMsg, Confirm, ConfirmPath, Hello, Join, RefuseReason, Report, ServerMsg, frame, tls,
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::peers::PeerBoard;
use crate::spool::{Spool, SpoolStats};

/// What an uplink shows about itself.
#[derive(Debug, Default)]
pub struct UplinkStatus {
    pub connected: AtomicBool,
    /// Reports acknowledged by the aggregator since start.
    pub acked: AtomicU64,
    /// Reports the reporter could not hand to this uplink (its queue was full).
    pub queue_dropped: AtomicU64,
    pub spool: Arc<SpoolStats>,
    /// Peers in the last peer list from this aggregator, and its epoch.
    pub peers: AtomicU64,
    pub peer_epoch: AtomicU64,
}

pub struct Uplink {
    pub aggregator: String,
    /// The hello of this process's session.
    pub hello: Hello,
    pub client: quinn::ClientConfig,
    /// Where the identity lives: read again at every connection (a renewed certificate is
    /// used from the next one) and renewed when due. `None`: `client` as given, no renewal.
    pub identity_dir: Option<std::path::PathBuf>,
    pub reports: mpsc::Receiver<Report>,
    pub spool: Spool,
    pub status: Arc<UplinkStatus>,
    /// Join the aggregator's mesh with this, and apply its peer lists to the board.
    pub mesh: Option<(Join, Arc<PeerBoard>)>,
    /// Finished confirmation bursts ([`crate::shared::Shared::confirms`]): written at once
    /// while connected, never spooled.
    pub confirms: Option<broadcast::Receiver<(Instant, ConfirmPath)>>,
}

/// A confirmation burst older than this when the uplink could send it is dropped: it is
/// evidence for a real-time decision, and a reconnection makes it stale.
pub const CONFIRM_FRESH: Duration = Duration::from_secs(1);

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

/// Reports written on the current stream and not yet acknowledged, in order.
type InFlight = std::collections::VecDeque<(u64, u64)>;

/// The state of one report stream.
struct Stream {
    send: quinn::SendStream,
    /// Session named by the last hello on this stream.
    session: u64,
    in_flight: InFlight,
    /// Spool key of the last record written.
    last_sent: Option<u64>,
}

impl Uplink {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut next_seq = 0u64;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut last_error = String::new();
        loop {
            match self.session(&mut next_seq, &shutdown, &mut backoff).await {
                Ok(Ended::Shutdown) => return self.drain(&mut next_seq).await,
                Err(e) => {
                    self.status.connected.store(false, Ordering::Relaxed);
                    let msg = format!("{e:#}");
                    if msg != last_error {
                        tracing::warn!(aggregator = %self.aggregator, error = %msg, spooled = self.spool.len(), "uplink down; retrying with backoff");
                        last_error = msg;
                    }
                }
            }
            let wait = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return self.drain(&mut next_seq).await,
                    _ = &mut wait => break,
                    r = self.reports.recv() => match r {
                        Some(r) => self.enqueue(&mut next_seq, r),
                        None => return,
                    },
                }
            }
        }
    }

    /// At shutdown: spool what the reporter still sends (its last report) until it closes
    /// the channel, so that a restart replays it.
    async fn drain(&mut self, next_seq: &mut u64) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(r) = self.reports.recv().await {
                self.enqueue(next_seq, r);
            }
        })
        .await;
    }

    /// Number the report, note the spool's state in it and spool it.
    fn enqueue(&mut self, next_seq: &mut u64, mut r: Report) {
        *next_seq += 1;
        r.seq = *next_seq;
        let s = &self.status;
        r.health.spool_reports = u32::try_from(self.spool.len() + 1).unwrap_or(u32::MAX);
        r.health.spool_dropped = u32::try_from(
            s.spool.dropped.load(Ordering::Relaxed) + s.queue_dropped.load(Ordering::Relaxed),
        )
        .unwrap_or(u32::MAX);
        self.spool.push(self.hello.session, r);
    }

    /// Await `fut` (which borrows nothing of the uplink) while spooling what the reporter
    /// sends meanwhile: a handshake with an aggregator that is down waits for its timeout
    /// (tens of seconds), and the reporter's queue must not fill and drop reports then.
    /// `None` when shutting down (cancelled, or the reporter has stopped).
    async fn spooling<T>(
        &mut self,
        next_seq: &mut u64,
        shutdown: &CancellationToken,
        fut: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                _ = shutdown.cancelled() => return None,
                r = self.reports.recv() => match r {
                    Some(r) => self.enqueue(next_seq, r),
                    None => return None,
                },
            }
        }
    }

    async fn session(
        &mut self,
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
        if let Some(dir) = &self.identity_dir {
            match client_config(dir) {
                Ok(c) => self.client = c,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read the identity again; using the one loaded before")
                }
            }
        }
        let endpoint = quinn::Endpoint::client(bind).context("opening the QUIC socket")?;
        let connecting = endpoint.connect_with(self.client.clone(), addr, tls::SERVER_NAME)?;
        let Some(conn) = self.spooling(next_seq, shutdown, connecting).await else {
            return Ok(Ended::Shutdown);
        };
        let conn = conn.with_context(|| format!("QUIC handshake with {addr}"))?;
        let result = self.stream(&conn, next_seq, shutdown, backoff).await;
        conn.close(0u32.into(), b"bye");
        tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle())
            .await
            .ok();
        result
    }

    /// Write every spooled record not yet written on this stream (a hello first when a
    /// record belongs to another session than the stream's), taking in new reports from
    /// the reporter between writes so that a long replay never fills its queue.
    ///
    /// Acknowledgements are taken in between too: a long replay must not leave them
    /// unread, or the aggregator, blocked writing them, would stop reading reports.
    async fn pump(
        &mut self,
        st: &mut Stream,
        next_seq: &mut u64,
        acks: &mut mpsc::Receiver<anyhow::Result<ServerMsg>>,
    ) -> anyhow::Result<()> {
        loop {
            while let Ok(r) = self.reports.try_recv() {
                self.enqueue(next_seq, r);
            }
            while let Ok(m) = acks.try_recv() {
                self.answer(st, m?)?;
            }
            let Some((key, rec)) = self.spool.next_after(st.last_sent) else {
                return Ok(());
            };
            if rec.session != st.session {
                let mut h = self.hello.clone();
                h.session = rec.session;
                frame::write(&mut st.send, &ClientMsg::Hello(h)).await?;
                st.session = rec.session;
            }
            let (session, seq) = (rec.session, rec.report.seq);
            // The frame is encoded before the first await: nothing borrowed crosses it.
            let bytes = frame::encode(&ClientMsg::Report(rec.report.clone()))?;
            st.send.write_all(&bytes).await?;
            st.in_flight.push_back((session, seq));
            st.last_sent = Some(key);
        }
    }

    async fn stream(
        &mut self,
        conn: &quinn::Connection,
        next_seq: &mut u64,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Ended> {
        let (hello, join) = (
            ClientMsg::Hello(self.hello.clone()),
            self.mesh.as_ref().map(|(j, _)| ClientMsg::Join(j.clone())),
        );
        let greet = async move {
            let (mut send, mut recv) = conn.open_bi().await.context("opening the report stream")?;
            frame::write(&mut send, &hello).await?;
            if let Some(join) = &join {
                frame::write(&mut send, join).await?;
            }
            let answer = frame::read::<ServerMsg, _>(&mut recv, frame::DEFAULT_MAX_FRAME).await;
            anyhow::Ok((send, recv, answer))
        };
        let Some(greeted) = self.spooling(next_seq, shutdown, greet).await else {
            return Ok(Ended::Shutdown);
        };
        let (send, mut recv, answer) = greeted?;
        match answer {
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
        tracing::info!(aggregator = %self.aggregator, replay = self.spool.len(), "uplink connected");
        if let Some(dir) = self.identity_dir.clone() {
            let (conn, name, aggregator) = (
                conn.clone(),
                self.hello.agent.clone(),
                self.aggregator.clone(),
            );
            tokio::spawn(async move {
                match crate::renew::renew_if_due(&conn, &dir, &name).await {
                    Ok(None) => {}
                    Ok(Some((serial, not_after))) => tracing::info!(
                        %aggregator, %serial, valid_until = not_after,
                        "certificate renewed; used from the next connection"
                    ),
                    Err(e) => {
                        tracing::warn!(%aggregator, error = %format!("{e:#}"), "certificate renewal failed; trying again at the next connection")
                    }
                }
            });
        }
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
        let _peers = self.mesh.as_ref().map(|(_, board)| {
            AbortOnDrop(tokio::spawn(read_peers(
                conn.clone(),
                board.clone(),
                self.aggregator.clone(),
                self.status.clone(),
            )))
        });
        let mut st = Stream {
            send,
            session: self.hello.session,
            in_flight: InFlight::new(),
            last_sent: None,
        };
        self.pump(&mut st, next_seq, &mut acks).await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Send the reporter's last report; give acknowledgements a moment so
                    // that nothing is replayed needlessly after a restart.
                    let deadline = tokio::time::sleep(Duration::from_millis(500));
                    tokio::pin!(deadline);
                    let mut open = true;
                    while open || !st.in_flight.is_empty() {
                        tokio::select! {
                            _ = &mut deadline => break,
                            r = self.reports.recv(), if open => match r {
                                Some(r) => {
                                    self.enqueue(next_seq, r);
                                    if self.pump(&mut st, next_seq, &mut acks).await.is_err() {
                                        break;
                                    }
                                }
                                None => open = false,
                            },
                            m = acks.recv() => match m {
                                Some(Ok(m)) => if self.answer(&mut st, m).is_err() { break },
                                _ => break,
                            },
                        }
                    }
                    st.send.finish().ok();
                    return Ok(Ended::Shutdown);
                }
                r = self.reports.recv() => {
                    let Some(r) = r else { return Ok(Ended::Shutdown) };
                    self.enqueue(next_seq, r);
                    self.pump(&mut st, next_seq, &mut acks).await?;
                }
                c = recv_confirm(&mut self.confirms) => match c {
                    Ok((at, path)) if at.elapsed() <= CONFIRM_FRESH => {
                        let msg = ClientMsg::Confirm(Confirm { paths: vec![path] });
                        st.send.write_all(&frame::encode(&msg)?).await?;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(aggregator = %self.aggregator, skipped = n, "confirmation bursts skipped (uplink behind)");
                    }
                    Err(broadcast::error::RecvError::Closed) => self.confirms = None,
                },
                m = acks.recv() => match m {
                    Some(Ok(m)) => self.answer(&mut st, m)?,
                    Some(Err(e)) => return Err(e),
                    None => bail!("acknowledgement reader ended"),
                },
            }
        }
    }

    /// Handle the aggregator's answer. Acknowledgements arrive in the order the reports
    /// were written; a refused report is taken out of the spool (it would be refused again
    /// on every replay) and the stream restarted.
    fn answer(&mut self, st: &mut Stream, m: ServerMsg) -> anyhow::Result<()> {
        match m {
            ServerMsg::Ack { seq } => match st.in_flight.pop_front() {
                Some((session, s)) if s == seq => {
                    let n = self.spool.ack(session, seq);
                    self.status.acked.fetch_add(n as u64, Ordering::Relaxed);
                    Ok(())
                }
                other => bail!("acknowledgement of {seq} out of order (expected {other:?})"),
            },
            // The answer to a hello naming an earlier session during a replay.
            ServerMsg::Welcome { .. } => Ok(()),
            ServerMsg::Renewed { .. } => bail!("unexpected certificate on the report stream"),
            ServerMsg::Peers { .. } => bail!("unexpected peer list on the report stream"),
            ServerMsg::Refused { reason, detail } => {
                // Over the rate limit: kept, sent again after the backoff.
                if reason != RefuseReason::RateLimited
                    && let Some((session, seq)) = st.in_flight.front().copied()
                    && self.spool.discard(session, seq)
                {
                    tracing::error!(aggregator = %self.aggregator, session, seq, reason = reason.as_str(), %detail, "report refused; removed from the spool");
                }
                bail!("report refused ({}): {detail}", reason.as_str())
            }
        }
    }
}

/// Apply the peer lists the aggregator sends on the streams it opens (one per join).
async fn read_peers(
    conn: quinn::Connection,
    board: Arc<PeerBoard>,
    aggregator: String,
    status: Arc<UplinkStatus>,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        loop {
            match frame::read::<ServerMsg, _>(&mut recv, frame::DEFAULT_MAX_FRAME).await {
                Ok(Some(ServerMsg::Peers { epoch, peers })) => {
                    if let Err(why) = pathpulse_wire::message::validate_peers(&peers) {
                        tracing::warn!(%aggregator, epoch, error = %why, "peer list refused");
                        continue;
                    }
                    status.peers.store(peers.len() as u64, Ordering::Relaxed);
                    status.peer_epoch.store(epoch, Ordering::Relaxed);
                    board.update(&aggregator, epoch, peers).await;
                }
                Ok(Some(other)) => {
                    tracing::warn!(%aggregator, message = ?other, "unexpected message on the peer stream")
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%aggregator, error = %e, "peer stream ended");
                    break;
                }
            }
        }
    }
}

/// The next finished burst; never resolves without a receiver.
async fn recv_confirm(
    rx: &mut Option<broadcast::Receiver<(Instant, ConfirmPath)>>,
) -> Result<(Instant, ConfirmPath), broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
