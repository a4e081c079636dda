//! remote_write from the aggregator: a real Prometheus with its receiver on gets every
//! series; a receiver answering 5xx gets the same batch again, one answering 4xx does not.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pathpulse_tests::{Proc, bin, free_port, http_get, parse_metrics, require_program, wait_for};

use crate::prometheus::urlencode;
use crate::setup::{Deployment, value};

/// Replace the deployment's aggregator by one with `config` (same ports and state).
fn restart_with_config(d: &mut Deployment, config: &str) {
    d.aggregator = None;
    let cfg = d.dir.path().join("aggregator.toml");
    std::fs::write(&cfg, config).expect("write config");
    let state = d.state();
    d.aggregator = Some(Proc::start(
        "aggregator",
        &bin("pathpulse-aggregator"),
        &[
            "run",
            "--config",
            cfg.to_str().expect("utf-8"),
            "--listen",
            &format!("127.0.0.1:{}", d.quic),
            "--http",
            &format!("127.0.0.1:{}", d.http),
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
        d.dir.path(),
    ));
    wait_for(Duration::from_secs(20), || http_get(&d.url("/readyz")).ok())
        .expect("aggregator ready");
}

#[test]
fn remote_write_reaches_a_real_prometheus() {
    let test = "remote_write_reaches_a_real_prometheus";
    if !require_program(test, "prometheus") {
        return;
    }
    let mut d = Deployment::start();
    let prom_port = free_port();
    let prom_cfg = d.dir.path().join("prometheus.yml");
    std::fs::write(&prom_cfg, "global:\n  scrape_interval: 15s\n").expect("write");
    let tsdb = d.dir.path().join("tsdb-rw");
    let prom = Proc::start(
        "prometheus",
        std::path::Path::new("prometheus"),
        &[
            &format!("--config.file={}", prom_cfg.display()),
            &format!("--storage.tsdb.path={}", tsdb.display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--web.enable-remote-write-receiver",
        ],
        d.dir.path(),
    );
    restart_with_config(
        &mut d,
        &format!(
            "[remote_write]\nurl = \"http://127.0.0.1:{prom_port}/api/v1/write\"\ninterval = \"1s\"\nexternal_labels = {{ aggregator = \"agg-1\" }}\n"
        ),
    );
    let state = d.issue("rw-a", &d.state());
    let target = format!("tcp:127.0.0.1:{}", d.http);
    let _a = d.agent("rw-a", &state, &[&target], &[]);
    let q = |expr: &str| -> Option<f64> {
        let url = format!(
            "http://127.0.0.1:{prom_port}/api/v1/query?query={}",
            urlencode(expr)
        );
        let body: serde_json::Value = serde_json::from_str(&http_get(&url).ok()?).ok()?;
        body["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    };
    let sent_expr = "pathpulse_probes_sent_total{aggregator=\"agg-1\",src=\"rw-a\"}";
    let pushed = wait_for(Duration::from_secs(60), || {
        q(sent_expr).filter(|v| *v > 0.0)
    });
    assert!(
        pushed.is_some(),
        "no remote-written sample in Prometheus\n{}\n{}",
        prom.log(),
        d.aggregator.as_ref().map(|a| a.log()).unwrap_or_default()
    );
    let now = value(
        &d.metrics(),
        "pathpulse_probes_sent_total",
        &[("src", "rw-a")],
    )
    .expect("sent at the aggregator");
    let pushed = pushed.unwrap_or(0.0);
    eprintln!("probes sent: {pushed} remote-written, {now} at the aggregator now");
    assert!(
        pushed <= now,
        "a pushed counter cannot be ahead of the source"
    );
    let buckets = q("count(pathpulse_rtt_seconds_bucket{aggregator=\"agg-1\"})");
    assert_eq!(buckets, Some(18.0), "classic buckets as _bucket series");
    let m = d.metrics();
    assert!(
        value(&m, "pathpulse_remote_write_samples_total", &[]).is_some_and(|v| v > 0.0),
        "delivered samples counted"
    );
}

/// One request as the fake receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: String,
    body: Vec<u8>,
}

/// A receiver answering the scripted statuses in order (then 204), one per connection.
fn fake_receiver(script: Vec<u16>) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut headers = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push_str(&line);
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            log.lock().expect("lock").push(Seen { headers, body });
            let status = script.get(i).copied().unwrap_or(204);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

#[test]
fn remote_write_retries_5xx_with_the_same_batch_and_drops_a_4xx() {
    let mut d = Deployment::start();
    let (port, seen) = fake_receiver(vec![500, 503, 204, 400]);
    restart_with_config(
        &mut d,
        &format!("[remote_write]\nurl = \"http://127.0.0.1:{port}/receive\"\ninterval = \"1s\"\n"),
    );
    let got = wait_for(Duration::from_secs(30), || {
        let s = seen.lock().expect("lock").clone();
        (s.len() >= 5).then_some(s)
    })
    .expect("five requests");
    for s in &got {
        let h = s.headers.to_ascii_lowercase();
        assert!(h.contains("content-encoding: snappy"), "{h}");
        assert!(h.contains("content-type: application/x-protobuf"), "{h}");
        assert!(
            h.contains("x-prometheus-remote-write-version: 0.1.0"),
            "{h}"
        );
    }
    // 500 and 503: the same batch again (byte for byte); after the 204 a new one; the
    // batch refused with 400 is not sent again.
    assert_eq!(got[0].body, got[1].body, "retried after 500");
    assert_eq!(got[1].body, got[2].body, "retried after 503");
    assert_ne!(got[2].body, got[3].body, "a new batch after delivery");
    assert_ne!(
        got[3].body, got[4].body,
        "the refused batch is dropped, not retried"
    );
    let m = parse_metrics(&http_get(&d.url("/metrics")).expect("scrape"));
    assert!(value(&m, "pathpulse_remote_write_retries_total", &[]).is_some_and(|v| v >= 2.0));
    assert_eq!(
        value(
            &m,
            "pathpulse_remote_write_dropped_batches_total",
            &[("reason", "refused")]
        ),
        Some(1.0)
    );
}
