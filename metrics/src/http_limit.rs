//! Bounds on an HTTP listener (the aggregator's page, API and `/metrics`; an agent's
//! `/metrics`): at most so many open
//! connections, at most so many from one address, and none idle (no byte read or written)
//! for longer than a deadline. A client that opens connections and sends nothing, or
//! holds them open without reading (slowloris), cannot keep the page and `/metrics` from
//! others, and its connections cost a bounded amount of memory. Connections turned away
//! are closed at once; each is counted in `pathpulse_http_refused_total{reason=
//! "connection_limit"|"address_limit"|"idle"}`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// `pathpulse_http_refused_total{reason}`.
pub type Refused = Family<Vec<(String, String)>, Counter>;

/// Reasons counted here (the aggregator counts its token refusals beside them).
pub const REASONS: [&str; 3] = ["connection_limit", "address_limit", "idle"];

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections in all.
    pub connections: usize,
    /// Open connections from one address.
    pub per_address: usize,
    /// No byte either way for this long closes the connection. The live page's event
    /// stream sends every second, so it never idles.
    pub idle: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connections: 1024,
            per_address: 64,
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// A TCP listener for `axum::serve` that applies [`HttpLimits`].
pub struct LimitedListener {
    inner: TcpListener,
    limits: HttpLimits,
    open: Arc<Mutex<Open>>,
    refused: Refused,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limits: HttpLimits, refused: Refused) -> LimitedListener {
        for r in REASONS {
            let _ = refused.get_or_create(&vec![("reason".into(), r.into())]);
        }
        LimitedListener {
            inner,
            limits,
            open: Arc::default(),
            refused,
        }
    }

    fn count(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// A slot for a connection from `ip`, or the reason it gets none.
    fn admit(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.limits.connections {
            return Err("connection_limit");
        }
        let mine = open.per_address.entry(ip).or_insert(0);
        if *mine >= self.limits.per_address {
            return Err("address_limit");
        }
        *mine += 1;
        open.total += 1;
        Ok(Slot {
            open: self.open.clone(),
            ip,
        })
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedIo, SocketAddr) {
        loop {
            let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match self.admit(addr.ip().to_canonical()) {
                Ok(slot) => {
                    let idle = self.limits.idle;
                    return (
                        LimitedIo {
                            io,
                            _slot: slot,
                            idle,
                            deadline: Box::pin(tokio::time::sleep(idle)),
                            refused: self.refused.clone(),
                        },
                        addr,
                    );
                }
                Err(reason) => {
                    tracing::debug!(peer = %addr, reason, "HTTP connection refused");
                    self.count(reason);
                    drop(io);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Gives its place back when the connection ends.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
    }
}

/// A connection that ends once idle for too long.
pub struct LimitedIo {
    io: TcpStream,
    _slot: Slot,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    refused: Refused,
}

impl LimitedIo {
    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// On a pending read or write: whether the connection has idled past its deadline.
    fn idled(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.refused
                .get_or_create(&vec![("reason".into(), "idle".into())])
                .inc();
            return true;
        }
        false
    }
}

impl LimitedIo {
    /// A write's outcome: bytes written are progress; a pending write past the deadline
    /// ends the connection.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.idled(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle too long")
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.idled(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        self.wrote(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
