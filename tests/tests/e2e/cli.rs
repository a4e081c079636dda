//! Bad input on the command line: each a clear error naming the key, exit 78.

use pathpulse_tests::{bin, free_port, run};

#[test]
fn bad_configuration_exits_78_naming_each_key() {
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &[
            "run",
            "--target",
            "tcp:10.0.0.1",
            "--interval",
            "fast",
            "--timeout",
            "0s",
            "--metrics-listen",
            "nonsense",
        ],
    );
    assert_eq!(code, 78, "{text}");
    for needle in [
        "targets[0]",
        "need a port",
        "interval",
        "`fast` is not a duration",
        "timeout",
        "metrics_listen",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[test]
fn nothing_to_do_is_a_configuration_error() {
    let (code, text) = run(&bin("pathpulse-agent"), &["run", "--target", "127.0.0.1"]);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("nothing to do"), "{text}");
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &["run", "--metrics-listen", "127.0.0.1:0"],
    );
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("no targets"), "{text}");
}

#[test]
fn unknown_config_keys_and_occupied_ports_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "targets = [\"127.0.0.1\"]\nintervall = \"1s\"\n").expect("write");
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &["check-config", "--config", cfg.to_str().expect("utf-8")],
    );
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("intervall"), "{text}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let (code, text) = run(
        &bin("pathpulse-agent"),
        &[
            "run",
            "--target",
            &format!("tcp:127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains("metrics_listen") && text.contains(&port.to_string()),
        "{text}"
    );

    let state = dir.path().join("agg");
    let (code, text) = run(
        &bin("pathpulse-aggregator"),
        &[
            "run",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--http",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains("http") && text.contains(&port.to_string()),
        "{text}"
    );
}

#[test]
fn help_has_examples_and_version_works() {
    for b in ["pathpulse-agent", "pathpulse-aggregator"] {
        let (code, text) = run(&bin(b), &["--help"]);
        assert_eq!(code, 0);
        assert!(text.contains("Examples:"), "{b} --help: {text}");
        let (code, text) = run(&bin(b), &["--version"]);
        assert_eq!(code, 0);
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    }
}

#[test]
fn unresolvable_target_is_counted_not_fatal() {
    // Name resolution must not leave the machine: run the agent in a network namespace of
    // its own (only `lo`), where the lookup fails at once, and read /metrics from inside.
    if !pathpulse_tests::require_root("unresolvable_target_is_counted_not_fatal") {
        return;
    }
    let agent = bin("pathpulse-agent");
    let script = format!(
        "ip link set lo up; {} run --name n --target tcp:no-such-host.invalid:80 --target tcp:127.0.0.1:1 \
         --interval 100ms --report-interval 500ms --metrics-listen 127.0.0.1:9469 2>/dev/null & pid=$!; sleep 4; \
         exec 3<>/dev/tcp/127.0.0.1/9469; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3; \
         kill -0 $pid && echo AGENT-ALIVE; kill $pid",
        agent.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--net", "bash", "-c", &script])
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("AGENT-ALIVE"),
        "agent died on an unresolvable target:\n{text}"
    );
    let m = pathpulse_tests::parse_metrics(&text);
    let errors = crate::setup::value(
        &m,
        "pathpulse_send_errors_total",
        &[("dst", "no-such-host.invalid:80")],
    )
    .unwrap_or(0.0);
    assert!(errors >= 5.0, "send errors not counted: {errors}\n{text}");
    let lost = crate::setup::value(&m, "pathpulse_probes_lost_total", &[("dst", "127.0.0.1:1")])
        .unwrap_or(0.0);
    assert!(
        lost >= 5.0,
        "the other target kept being probed: {lost}\n{text}"
    );
}
