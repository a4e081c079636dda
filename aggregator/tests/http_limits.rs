//! The HTTP listener's bounds with real sockets: silent connections beyond the per-address
//! and total limits are closed at once and counted, other addresses are still served,
//! idle connections are closed after the deadline, and a response that keeps sending is
//! never cut however long it lasts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use pathpulse_metrics::http_limit::{HttpLimits, LimitedListener, Refused};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((src, 0))).expect("bind source");
    s.connect(to).await.expect("connect")
}

/// Whether the server closes `s` within `within` (EOF or reset on read).
async fn closed(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn get_from(src: [u8; 4], to: SocketAddr, path: &str) -> String {
    let mut s = connect_from(src, to).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("answered in time")
        .expect("read");
    out
}

fn count(refused: &Refused, reason: &str) -> u64 {
    refused
        .get_or_create(&vec![("reason".into(), reason.into())])
        .get()
}

#[tokio::test]
async fn silent_idle_and_excess_connections_are_closed_and_counted() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let refused = Refused::default();
    let counters = refused.clone();
    let limits = HttpLimits {
        connections: 4,
        per_address: 2,
        idle: Duration::from_secs(1),
    };
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        // 2.5 s of output, a chunk every 200 ms: longer than the idle deadline, never idle.
        .route(
            "/slow",
            get(|| async {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
                tokio::spawn(async move {
                    for i in 0..12 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if tx.send(Ok(format!("chunk {i}\n"))).await.is_err() {
                            return;
                        }
                    }
                });
                axum::body::Body::from_stream(tokio_stream_from(rx))
            }),
        );
    tokio::spawn(async move {
        axum::serve(LimitedListener::new(listener, limits, counters), app)
            .await
            .expect("serve");
    });
    let counters = &refused;

    // Two silent connections from one address fill its share; the third is closed at once.
    let mut held = vec![
        connect_from([127, 0, 0, 1], addr).await,
        connect_from([127, 0, 0, 1], addr).await,
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect_from([127, 0, 0, 1], addr).await;
    assert!(
        closed(&mut third, Duration::from_millis(500)).await,
        "third from one address"
    );
    assert_eq!(count(counters, "address_limit"), 1);
    // Another address is served meanwhile.
    let answer = get_from([127, 0, 0, 2], addr, "/").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "{answer}"
    );
    // Two more silent ones from a third address: four open, the limit; a fifth is closed.
    held.push(connect_from([127, 0, 0, 3], addr).await);
    held.push(connect_from([127, 0, 0, 3], addr).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = connect_from([127, 0, 0, 4], addr).await;
    assert!(
        closed(&mut fifth, Duration::from_millis(500)).await,
        "fifth in all"
    );
    assert_eq!(count(counters, "connection_limit"), 1);
    // The silent ones are closed once idle for 1 s, and their places come back.
    let t0 = Instant::now();
    for s in &mut held {
        assert!(
            closed(s, Duration::from_secs(3)).await,
            "idle connection closed"
        );
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(count(counters, "idle"), 4);
    let answer = get_from([127, 0, 0, 1], addr, "/").await;
    assert!(answer.ends_with("ok"), "{answer}");
    // A response that keeps sending for longer than the idle deadline arrives whole.
    let slow = get_from([127, 0, 0, 1], addr, "/slow").await;
    assert!(
        slow.contains("chunk 0") && slow.contains("chunk 11"),
        "{slow}"
    );
    assert_eq!(
        count(counters, "idle"),
        4,
        "the streaming response was not cut"
    );
}

/// The channel's items as a stream.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
