//! The text exposition streamed to the scraper in chunks, never built whole.
//!
//! `/metrics` of 10,000 paths is about 73 MB of text. Built in one `String` and then copied
//! into the classic format it took 263 MiB at the peak of a scrape; here it is encoded on a
//! blocking thread into a [`ChunkWriter`] that hands chunks of [`CHUNK`] bytes to the
//! response body through a bounded channel, converting OpenMetrics to the classic format
//! line by line as it goes (so no second copy exists).
//!
//! The collectors hold the store lock while they encode, so the writer never waits for the
//! client: a chunk the channel has no room for goes to a backlog in memory, which is handed
//! to the body once encoding is done and the lock released. A client that reads as fast as
//! the encoder writes (Prometheus, curl) keeps the backlog empty; one that stalls costs at
//! most the exposition in chunks (no doubling, no contiguous copy) until the connection's
//! idle deadline ends it, and never holds up ingest or probing.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::export::Classic;

/// Bytes per chunk handed to the body (a chunk in classic format ends at a line end, so it
/// may be a line longer).
pub const CHUNK: usize = 64 * 1024;

/// Chunks in flight between the encoder and the body before the encoder spills to its
/// backlog: 1 MiB.
const QUEUE: usize = 16;

/// What the encoder sends to the body.
#[derive(Debug)]
enum Piece {
    Chunk(Bytes),
    /// The last chunks (the backlog and the tail), after the store lock was released; the
    /// exposition is complete once they are sent.
    Rest(VecDeque<Bytes>),
    /// Encoding failed: the body ends in an error, so the scraper sees a failed scrape and
    /// not a truncated exposition it might accept.
    Failed(String),
}

/// A `fmt::Write` that cuts the text into chunks for the channel, in the classic format
/// when asked.
pub struct ChunkWriter {
    buf: String,
    chunk: usize,
    /// Where the line being written starts in `buf` (classic format only).
    line_start: usize,
    classic: Option<Classic>,
    tx: mpsc::Sender<Piece>,
    backlog: VecDeque<Bytes>,
    /// Chunks that went to the backlog, for the tests.
    spilled: usize,
    /// The body was dropped (the client went away).
    gone: bool,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<Piece>, classic: bool, chunk: usize) -> ChunkWriter {
        ChunkWriter {
            buf: String::with_capacity(chunk + chunk / 16),
            chunk,
            line_start: 0,
            classic: classic.then(Classic::default),
            tx,
            backlog: VecDeque::new(),
            spilled: 0,
            gone: false,
        }
    }

    /// Convert the line that ends at the end of `buf` (without its `\n`), in place.
    fn end_line(&mut self) {
        let Some(classic) = self.classic.as_mut() else {
            return;
        };
        // As `str::lines` does (what `openmetrics_to_prometheus` reads the text with).
        if self.buf.len() > self.line_start && self.buf.ends_with('\r') {
            self.buf.pop();
        }
        if self.buf.as_bytes().get(self.line_start) == Some(&b'#') {
            let line = self.buf.split_off(self.line_start);
            classic.line(&line, &mut self.buf);
        } else {
            self.buf.push('\n');
        }
        self.line_start = self.buf.len();
    }

    /// Hand the chunk to the body without waiting: into the channel if it has room and
    /// nothing is waiting before it, else to the backlog.
    fn flush(&mut self) -> fmt::Result {
        let full = std::mem::replace(
            &mut self.buf,
            String::with_capacity(self.chunk + self.chunk / 16),
        );
        self.line_start = 0;
        while let Some(first) = self.backlog.pop_front() {
            match self.tx.try_send(Piece::Chunk(first)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(Piece::Chunk(first))) => {
                    self.backlog.push_front(first);
                    break;
                }
                // The client went away: stop encoding (and release the lock) now.
                Err(_) => {
                    self.gone = true;
                    return Err(fmt::Error);
                }
            }
        }
        let chunk = Bytes::from(full.into_bytes());
        if !self.backlog.is_empty() {
            self.spilled += 1;
            self.backlog.push_back(chunk);
            return Ok(());
        }
        match self.tx.try_send(Piece::Chunk(chunk)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Piece::Chunk(chunk))) => {
                self.spilled += 1;
                self.backlog.push_back(chunk);
                Ok(())
            }
            Err(_) => {
                self.gone = true;
                Err(fmt::Error)
            }
        }
    }

    /// What is left to send once encoding has ended.
    fn finish(mut self, encoded: fmt::Result) -> Piece {
        if encoded.is_err() {
            return Piece::Failed("the exposition could not be encoded".into());
        }
        if self.classic.is_some() && self.line_start < self.buf.len() {
            // A last line without its `\n` (`str::lines` gives it one).
            self.end_line();
        }
        if !self.buf.is_empty() {
            let tail = std::mem::take(&mut self.buf);
            self.backlog.push_back(Bytes::from(tail.into_bytes()));
        }
        Piece::Rest(self.backlog)
    }
}

impl fmt::Write for ChunkWriter {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        if self.classic.is_none() {
            while self.buf.len() + s.len() >= self.chunk {
                let mut cut = self.chunk.saturating_sub(self.buf.len());
                while !s.is_char_boundary(cut) {
                    cut += 1;
                }
                self.buf.push_str(&s[..cut]);
                s = &s[cut..];
                self.flush()?;
            }
            self.buf.push_str(s);
            return Ok(());
        }
        // Classic: cut at line ends only, so a `#` line is converted whole.
        while let Some(i) = s.find('\n') {
            self.buf.push_str(&s[..i]);
            self.end_line();
            s = &s[i + 1..];
            if self.buf.len() >= self.chunk {
                self.flush()?;
            }
        }
        self.buf.push_str(s);
        Ok(())
    }
}

/// The response body: the chunks as they come, then the rest.
pub struct ChunkBody {
    rx: mpsc::Receiver<Piece>,
    rest: VecDeque<Bytes>,
    done: bool,
}

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if let Some(b) = self.rest.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(Piece::Chunk(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Piece::Rest(rest)) => {
                    self.rest = rest;
                    self.done = true;
                }
                Some(Piece::Failed(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(io::Error::other(e))));
                }
                // The encoder ended without saying it was done (it panicked).
                None => {
                    self.done = true;
                    return Poll::Ready(Some(Err(io::Error::other("the exposition ended early"))));
                }
            }
        }
    }
}

/// Start encoding `registry` as text (OpenMetrics, or the classic format when `classic`)
/// and return the body it streams into. Must be called within a Tokio runtime.
pub fn text_body(registry: Arc<Registry>, classic: bool) -> ChunkBody {
    text_body_with(registry, classic, CHUNK)
}

/// A body of pieces encoded beforehand (the protobuf exposition, `protobuf.rs`), sent one
/// after the other, each freed once sent.
pub fn pieces_body(pieces: Vec<Bytes>) -> ChunkBody {
    let (_, rx) = mpsc::channel(1);
    ChunkBody {
        rx,
        rest: pieces.into(),
        done: true,
    }
}

fn text_body_with(registry: Arc<Registry>, classic: bool, chunk: usize) -> ChunkBody {
    let (tx, rx) = mpsc::channel(QUEUE);
    let encoder_tx = tx.clone();
    tokio::spawn(async move {
        let encoded = tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter::new(encoder_tx, classic, chunk);
            let r = prometheus_client::encoding::text::encode(&mut w, &registry);
            if w.gone {
                tracing::debug!("scraper went away during the text exposition");
            } else if let Err(e) = r {
                tracing::warn!(error = %e, "text exposition failed");
            }
            w.finish(r)
        })
        .await;
        let last = encoded.unwrap_or_else(|e| Piece::Failed(format!("encoder: {e}")));
        // Waits for the client without any lock; the connection's idle deadline bounds it.
        let _ = tx.send(last).await;
    });
    ChunkBody {
        rx,
        rest: VecDeque::new(),
        done: false,
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use http_body::Body as _;
    use pathpulse_wire::{AgentHealth, PathReport, Report};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::export::{Role, SharedStore, encode_text, openmetrics_to_prometheus, registry};
    use crate::store::Store;

    fn clock() -> u64 {
        1_010_000
    }

    /// A store with `n` paths of one agent, every window holding samples.
    fn store(n: usize) -> SharedStore {
        let store: SharedStore = Arc::new(Mutex::new(Store::new(15_000)));
        let paths = (0..n)
            .map(|i| {
                let mut p = PathReport {
                    dst: format!("10.0.{}.{}", i / 250, 1 + i % 250),
                    sent: 5,
                    lost: u32::from(i % 3 == 0),
                    jitter_us: Some(100),
                    ..Default::default()
                };
                for k in 0..(5 - p.lost) {
                    let v = 1_000 + 37 * ((i * 31 + k as usize) % 400) as u64;
                    p.rtt.record(v);
                    p.ipdv.record(v / 10);
                    p.rtt_sum_us += v;
                    p.received += 1;
                }
                p
            })
            .collect();
        let r = Report {
            seq: 1,
            agent: "a1".into(),
            interval_start_ms: 1_000_000,
            interval_ms: 5000,
            paths,
            health: AgentHealth::default(),
        };
        store.lock().expect("lock").apply(&r, 1_005_000);
        store
    }

    /// Whatever pieces the encoder writes in, and wherever the chunks are cut, the chunks
    /// put together are the whole exposition (converted line by line for the classic
    /// format, lines split between two writes included), in order, also when the channel
    /// is full and chunks wait in the backlog.
    #[test]
    fn chunks_put_together_are_the_exposition_whatever_the_cuts() {
        let om = encode_text(&registry(store(20), Role::Agent, clock));
        let classic = openmetrics_to_prometheus(&om);
        assert!(om.len() > 20_000, "{} bytes", om.len());
        for (want, as_classic) in [(&om, false), (&classic, true)] {
            for (piece, chunk) in [(1, 100), (7, 1000), (333, 4096), (om.len(), 1000)] {
                // A channel of 2: most chunks go to the backlog, as with a stalled client.
                let (tx, mut rx) = mpsc::channel(2);
                let mut w = ChunkWriter::new(tx, as_classic, chunk);
                let mut rest = om.as_str();
                while !rest.is_empty() {
                    let mut cut = piece.min(rest.len());
                    while !rest.is_char_boundary(cut) {
                        cut += 1;
                    }
                    w.write_str(&rest[..cut]).expect("write");
                    rest = &rest[cut..];
                }
                let spilled = w.spilled;
                let last = w.finish(Ok(()));
                let mut chunks = Vec::new();
                while let Ok(Piece::Chunk(b)) = rx.try_recv() {
                    chunks.push(b);
                }
                let Piece::Rest(tail) = last else {
                    panic!("not done: {last:?}")
                };
                chunks.extend(tail);
                assert!(chunks.len() > 5 && spilled > 0, "{} chunks", chunks.len());
                for c in &chunks[..chunks.len() - 1] {
                    assert!(c.len() >= chunk, "a short chunk ({} bytes)", c.len());
                    if as_classic {
                        assert!(c.ends_with(b"\n"), "a classic chunk ends mid-line");
                    }
                }
                let got: Vec<u8> = chunks.concat();
                assert!(
                    got == want.as_bytes(),
                    "classic {as_classic}, pieces of {piece}, chunks of {chunk}: differs"
                );
            }
        }
    }

    async fn frames(mut body: ChunkBody) -> Result<Vec<Bytes>, io::Error> {
        let mut out = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(b) = f?.into_data() {
                out.push(b);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn the_streamed_body_is_the_exposition_in_chunks() {
        let reg = Arc::new(registry(store(200), Role::Agent, clock));
        let om = encode_text(&reg);
        let got = frames(text_body(reg.clone(), false)).await.expect("body");
        assert!(got.len() > 1, "one chunk for {} bytes", om.len());
        assert!(got.concat() == om.as_bytes(), "OpenMetrics differs");
        let got = frames(text_body(reg, true)).await.expect("body");
        assert!(got.len() > 1);
        assert!(
            got.concat() == openmetrics_to_prometheus(&om).as_bytes(),
            "classic differs"
        );
    }

    /// A scraper that reads the first bytes and then stops reading must not keep the store
    /// locked: the encoder spills to its backlog instead of waiting, so ingest (a lock and
    /// an apply) goes on within a bound while the response is still unsent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_scraper_does_not_hold_the_store_lock() {
        let store = store(400);
        let reg = Arc::new(registry(store.clone(), Role::Agent, clock));
        let full_len = openmetrics_to_prometheus(&encode_text(&reg)).len();
        // Small socket buffers on both ends, so the kernel takes little of the body.
        let server = tokio::net::TcpSocket::new_v4().expect("socket");
        server.set_send_buffer_size(4096).expect("sndbuf");
        server
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = server.listen(16).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let app = crate::http::metrics_router::<()>(reg);
        tokio::spawn(async move { axum::serve(listener, app).await });

        let client = tokio::net::TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut conn = client.connect(addr).await.expect("connect");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n")
            .await
            .expect("request");
        // The head and the first bytes of the body.
        let (mut first, mut n) = (vec![0u8; 4096], 0);
        while !first[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < first.len() {
            let got = conn.read(&mut first[n..]).await.expect("read");
            assert!(got > 0, "connection closed after {n} bytes");
            n += got;
        }
        let head = String::from_utf8_lossy(&first[..n]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("transfer-encoding: chunked") && !head.contains("content-length"),
            "not streamed: {head}"
        );
        // Stop reading; the encoder has the lock now or had it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = store.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(mut st) = s.try_lock() {
                    let r = Report {
                        seq: 2,
                        agent: "a2".into(),
                        interval_start_ms: 1_005_000,
                        interval_ms: 5000,
                        paths: vec![PathReport::default()],
                        health: AgentHealth::default(),
                    };
                    st.apply(&r, 1_006_000);
                    return Some(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        })
        .await
        .expect("join");
        assert!(
            applied.is_some(),
            "the store stayed locked while the scraper stalled"
        );
        // The client has still taken only a small part of the body.
        let mut more = vec![0u8; 1 << 16];
        let n2 = tokio::time::timeout(Duration::from_millis(50), conn.read(&mut more))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        assert!(n + n2 < full_len / 4, "{} of {full_len} bytes sent", n + n2);
    }
}
