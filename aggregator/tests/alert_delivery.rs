//! Alert delivery against real HTTP receivers on loopback: a healthy one, one that is
//! down, one that is slow, one that answers 500 for a while. Failures are retried a
//! bounded number of times, queues stay bounded, and the healthy receiver gets its
//! notification as fast as if the others were not there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use pathpulse_aggregator::alert::deliver::{
    DeliveryContext, Receiver, ReceiverConfig, ReceiverKind, client, run_receiver,
};
use pathpulse_aggregator::alert::{Alert, AlertState};
use tokio_util::sync::CancellationToken;

fn alert(state: AlertState) -> Alert {
    let labels = BTreeMap::from([
        ("alertname".to_string(), "PathpulseLoss".to_string()),
        ("severity".to_string(), "warning".to_string()),
        ("src".to_string(), "a".to_string()),
        ("dst".to_string(), "192.0.2.1".to_string()),
        ("probe".to_string(), "icmp".to_string()),
    ]);
    Alert {
        fingerprint: pathpulse_aggregator::alert::engine::fingerprint(&labels),
        state,
        alertname: "PathpulseLoss".into(),
        kind: "loss".into(),
        severity: "warning".into(),
        labels,
        annotations: BTreeMap::from([("summary".to_string(), "loss 20.0%".to_string())]),
        starts_at_ms: 1_700_000_000_000,
        ends_at_ms: (state == AlertState::Resolved).then_some(1_700_000_060_000),
        value: Some(0.2),
        threshold: Some(0.05),
        window_seconds: 3.0,
    }
}

/// What a test receiver saw: (arrival, JSON body).
type Seen = Arc<Mutex<Vec<(Instant, serde_json::Value)>>>;

/// Serve `behaviour(attempt number)` → (delay, status) on a free port.
async fn receiver(
    behaviour: impl Fn(u32) -> (Duration, StatusCode) + Send + Sync + 'static,
) -> (String, Seen, Arc<AtomicU32>) {
    let seen: Seen = Arc::default();
    let attempts = Arc::new(AtomicU32::new(0));
    let (s, a, b) = (seen.clone(), attempts.clone(), Arc::new(behaviour));
    let app = Router::new().route(
        "/hook",
        post(move |body: String| {
            let (s, a, b) = (s.clone(), a.clone(), b.clone());
            async move {
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                let (delay, status) = b(n);
                tokio::time::sleep(delay).await;
                if status.is_success() {
                    let v = serde_json::from_str(&body).expect("JSON body");
                    s.lock().expect("lock").push((Instant::now(), v));
                }
                status
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen, attempts)
}

fn cfg(url: &str, name: &str) -> ReceiverConfig {
    ReceiverConfig {
        name: name.into(),
        timeout: Duration::from_millis(300),
        max_attempts: 4,
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        queue: 8,
        ..ReceiverConfig::new(ReceiverKind::Webhook, url)
    }
}

fn ctx() -> DeliveryContext {
    DeliveryContext {
        client: client().expect("client"),
        external_url: "http://agg.example:9470".into(),
        resend_interval: Duration::from_secs(30),
        firing: Arc::new(Vec::new),
    }
}

#[tokio::test]
async fn failing_receivers_are_retried_bounded_and_delay_nobody() {
    let (good_url, good_seen, _) = receiver(|_| (Duration::ZERO, StatusCode::OK)).await;
    let (flaky_url, flaky_seen, flaky_attempts) = receiver(|n| {
        let st = if n <= 2 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        (Duration::ZERO, st)
    })
    .await;
    let (slow_url, slow_seen, slow_attempts) =
        receiver(|_| (Duration::from_secs(5), StatusCode::OK)).await;
    // A port nothing listens on.
    let dead_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/hook", l.local_addr().expect("addr"))
    };
    let (gone_url, _, gone_attempts) = receiver(|_| (Duration::ZERO, StatusCode::NOT_FOUND)).await;

    let stop = CancellationToken::new();
    let receivers: Vec<Arc<Receiver>> = [
        (&good_url, "good"),
        (&flaky_url, "flaky"),
        (&slow_url, "slow"),
        (&dead_url, "dead"),
        (&gone_url, "gone"),
    ]
    .iter()
    .map(|(u, n)| Arc::new(Receiver::new(cfg(u, n))))
    .collect();
    for r in &receivers {
        tokio::spawn(run_receiver(r.clone(), ctx(), stop.clone()));
    }
    let t0 = Instant::now();
    for r in &receivers {
        r.push(alert(AlertState::Firing));
    }
    // The healthy receiver: delivered at once, in the Alertmanager webhook format.
    let deadline = Instant::now() + Duration::from_secs(5);
    while good_seen.lock().expect("lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (at, body) = good_seen.lock().expect("lock")[0].clone();
    let latency = at - t0;
    println!("healthy receiver got the alert after {latency:?} while 4 others failed");
    assert!(latency < Duration::from_millis(250), "{latency:?}");
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "good");
    assert_eq!(body["groupLabels"]["alertname"], "PathpulseLoss");
    assert_eq!(body["externalURL"], "http://agg.example:9470");
    let a = &body["alerts"][0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["labels"]["dst"], "192.0.2.1");
    assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000Z");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(a["generatorURL"], "http://agg.example:9470/");

    // Let the retries run out: 4 attempts, backoff at most 0.4 s, timeout 0.3 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stat = |i: usize| {
        let s = &receivers[i].stats;
        (
            s.sent.load(Ordering::Relaxed),
            s.failed_attempts.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
        )
    };
    assert_eq!(stat(0), (1, 0, 0), "good");
    assert_eq!(stat(1), (1, 2, 0), "flaky: two 500s, then delivered");
    assert_eq!(flaky_attempts.load(Ordering::SeqCst), 3);
    assert_eq!(flaky_seen.lock().expect("lock").len(), 1);
    assert_eq!(
        stat(2),
        (0, 4, 1),
        "slow: every attempt timed out, given up"
    );
    assert_eq!(slow_attempts.load(Ordering::SeqCst), 4);
    assert!(slow_seen.lock().expect("lock").is_empty());
    assert_eq!(stat(3), (0, 4, 1), "dead: 4 attempts, given up");
    assert_eq!(stat(4), (0, 1, 1), "404: refused for good, not retried");
    assert_eq!(gone_attempts.load(Ordering::SeqCst), 1);

    // A burst at the dead receiver: its queue stays bounded, oldest dropped first.
    for _ in 0..50 {
        receivers[3].push(alert(AlertState::Resolved));
    }
    assert!(receivers[3].queued() <= 8);
    assert!(receivers[3].stats.dropped.load(Ordering::Relaxed) >= 1 + 50 - 8 - 1);
    // ...and the healthy receiver still delivers at once.
    let t1 = Instant::now();
    receivers[0].push(alert(AlertState::Resolved));
    let deadline = Instant::now() + Duration::from_secs(5);
    while good_seen.lock().expect("lock").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (at, body) = good_seen.lock().expect("lock")[1].clone();
    assert!(at - t1 < Duration::from_millis(250), "{:?}", at - t1);
    assert_eq!(body["status"], "resolved");
    assert_eq!(body["alerts"][0]["endsAt"], "2023-11-14T22:14:20.000Z");
    stop.cancel();
}

#[tokio::test]
async fn alertmanager_gets_firing_alerts_again_and_resolved_with_ends_at() {
    // Alertmanager's path is /api/v2/alerts (the real one is in the end-to-end tests).
    let seen_am: Seen = Arc::default();
    let s = seen_am.clone();
    let app = Router::new().route(
        "/api/v2/alerts",
        post(move |body: String| {
            let s = s.clone();
            async move {
                s.lock()
                    .expect("lock")
                    .push((Instant::now(), serde_json::from_str(&body).expect("json")));
                StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let am = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });

    let stop = CancellationToken::new();
    let mut c = cfg(&am, "am");
    c.kind = ReceiverKind::Alertmanager;
    let rx = Arc::new(Receiver::new(c));
    let firing = alert(AlertState::Firing);
    let f2 = firing.clone();
    let ctx = DeliveryContext {
        resend_interval: Duration::from_secs(1),
        firing: Arc::new(move || vec![f2.clone()]),
        ..ctx()
    };
    tokio::spawn(run_receiver(rx.clone(), ctx, stop.clone()));
    rx.push(firing);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    rx.push(alert(AlertState::Resolved));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let got = seen_am.lock().expect("lock").clone();
    // At start (re-send of what fires), the push, two more re-sends, the resolution.
    assert!(got.len() >= 4, "{}", got.len());
    let first = &got[0].1[0];
    assert_eq!(first["labels"]["alertname"], "PathpulseLoss");
    assert_eq!(first["generatorURL"], "http://agg.example:9470/");
    let last = &got.last().expect("one").1[0];
    assert_eq!(
        last["endsAt"], "2023-11-14T22:14:20.000Z",
        "resolved: endsAt set"
    );
}
