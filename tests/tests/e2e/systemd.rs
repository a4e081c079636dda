//! The systemd units (`systemd/`) and the service-manager protocol of the real binaries:
//! `systemd-analyze verify` and `security --offline=yes` on the units, and `READY=1`,
//! `WATCHDOG=1`, `STOPPING=1` sent to a notify socket this test owns.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pathpulse_tests::{Proc, bin, free_port, http_get, require_program, run};

use crate::setup::shared;

pub const UNITS: [(&str, &str); 2] = [
    ("pathpulse-agent.service", "pathpulse-agent"),
    ("pathpulse-aggregator.service", "pathpulse-aggregator"),
];

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn unit_text(unit: &str) -> String {
    std::fs::read_to_string(repo().join("systemd").join(unit)).expect("unit file")
}

/// Values of `key=` in a unit, in order (a key may repeat).
pub fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The program `ExecStart=` runs.
pub fn exec_start(text: &str) -> String {
    let v = unit_values(text, "ExecStart");
    assert_eq!(v.len(), 1, "one ExecStart: {v:?}");
    v[0].split_whitespace().next().expect("program").to_string()
}

/// Hard link when possible (same file system), else copy.
fn place(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).expect("copy binary");
    }
}

#[test]
fn units_verify_and_score_at_most_2() {
    let test = "units_verify_and_score_at_most_2";
    if !require_program(test, "systemd-analyze") {
        return;
    }
    // A root for `verify --root`: the host's system units (sysinit.target and friends),
    // ours under /etc, and the binaries where ExecStart expects them.
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).expect("mkdir");
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .expect("cp");
    assert!(st.success(), "copying the host's units");
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).expect("symlink bin");
    // ExecReload runs /bin/sh (a link to dash on Debian: place the file itself).
    place(
        &std::fs::canonicalize("/bin/sh").expect("/bin/sh"),
        &r.join("usr/bin/sh"),
    );
    for (unit, binary) in UNITS {
        let text = unit_text(unit);
        let exec = exec_start(&text);
        assert_eq!(exec, format!("/usr/bin/{binary}"), "{unit}");
        place(&bin(binary), &r.join(exec.trim_start_matches('/')));
        place(
            &repo().join("systemd").join(unit),
            &r.join("etc/systemd/system").join(unit),
        );
    }
    // The agent's STAMP port, bound by systemd for the agent (socket activation).
    let socket = "pathpulse-agent.socket";
    let text = unit_text(socket);
    assert_eq!(
        unit_values(&text, "ListenDatagram"),
        ["0.0.0.0:862", "[::]:862"],
        "{socket}"
    );
    place(
        &repo().join("systemd").join(socket),
        &r.join("etc/systemd/system").join(socket),
    );
    for unit in UNITS.map(|(u, _)| u).into_iter().chain([socket]) {
        let (code, out) = run(
            Path::new("systemd-analyze"),
            &[
                "verify",
                "--man=no",
                &format!("--root={}", r.display()),
                unit,
            ],
        );
        assert!(
            code == 0 && out.trim().is_empty(),
            "systemd-analyze verify {unit}: exit {code}\n{out}"
        );
        if unit == socket {
            continue;
        }

        let path = repo().join("systemd").join(unit);
        let (code, out) = run(
            Path::new("systemd-analyze"),
            &[
                "security",
                "--offline=yes",
                "--no-pager",
                path.to_str().expect("utf-8"),
            ],
        );
        let score: f64 = out
            .lines()
            .find_map(|l| {
                let rest = l.split("Overall exposure level for ").nth(1)?;
                rest.split(": ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no exposure level in (exit {code}):\n{out}"));
        eprintln!("{unit}: exposure {score}");
        assert!(score <= 2.0, "{unit}: exposure {score} > 2.0\n{out}");
    }
}

#[test]
fn units_say_what_the_issue_asks() {
    for (unit, _) in UNITS {
        let t = unit_text(unit);
        for (key, want) in [
            ("Type", "notify"),
            ("RestartPreventExitStatus", "78"),
            ("DynamicUser", "yes"),
            ("StateDirectory", "pathpulse"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("NoNewPrivileges", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ] {
            assert_eq!(unit_values(&t, key), [want], "{unit}: {key}");
        }
        assert!(
            unit_values(&t, "SystemCallFilter").contains(&"@system-service".to_string()),
            "{unit}"
        );
        assert_eq!(unit_values(&t, "WatchdogSec").len(), 1, "{unit}");
    }
    let agent = unit_text("pathpulse-agent.service");
    assert_eq!(unit_values(&agent, "AmbientCapabilities"), ["CAP_NET_RAW"]);
    assert_eq!(
        unit_values(&agent, "CapabilityBoundingSet"),
        ["CAP_NET_RAW"]
    );
    assert_eq!(
        unit_values(&agent, "ExecReload"),
        ["/bin/sh -c 'kill -HUP $MAINPID'"]
    );
    let agg = unit_text("pathpulse-aggregator.service");
    assert_eq!(
        unit_values(&agg, "ExecReload"),
        ["/bin/sh -c 'kill -HUP $MAINPID'"]
    );
    assert_eq!(unit_values(&agg, "CapabilityBoundingSet"), [""]);
    assert_eq!(unit_values(&agg, "AmbientCapabilities"), [""]);
}

/// Messages arriving on a notify socket, each with the time it arrived.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    got: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        NotifySocket {
            sock,
            path,
            got: Vec::new(),
        }
    }

    /// Read until a message containing `line` arrives (or `timeout`); returns its index.
    fn wait(&mut self, line: &str, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        if let Some(i) = self
            .got
            .iter()
            .position(|(_, m)| m.lines().any(|l| l == line))
        {
            return Some(i);
        }
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.got.push((Instant::now(), m));
                if self.got[self.got.len() - 1].1.lines().any(|l| l == line) {
                    return Some(self.got.len() - 1);
                }
            }
        }
        None
    }
}

/// READY=1 once `url` answers (checked the moment READY arrives), WATCHDOG=1 every half
/// WATCHDOG_USEC, STOPPING=1 on SIGTERM and a clean exit.
fn check_notify(name: &str, program: &Path, args: &[&str], url: &str, dir: &Path) {
    let mut ns = NotifySocket::bind(dir);
    let sock = ns.path.to_str().expect("utf-8").to_string();
    let mut p = Proc::start_env(
        name,
        program,
        args,
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "1000000")],
        dir,
    );
    let ready = ns.wait("READY=1", Duration::from_secs(20));
    assert!(ready.is_some(), "{name}: no READY=1; got {:?}", ns.got);
    let body = http_get(url);
    assert!(
        body.is_ok(),
        "{name}: READY=1 arrived but {url} does not answer: {body:?}"
    );
    assert_eq!(
        ready,
        Some(0),
        "{name}: READY=1 is the first message: {:?}",
        ns.got
    );
    // 1 s watchdog: a ping every 500 ms; in 3.2 s at least 5.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(3200) {
        let _ = ns.wait("never", Duration::from_millis(200));
    }
    let pings: Vec<Instant> = ns
        .got
        .iter()
        .filter(|(t, m)| *t >= t0 && m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 5,
        "{name}: {} watchdog pings in 3.2 s at WATCHDOG_USEC=1s: {:?}",
        pings.len(),
        ns.got
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(900)),
        "{name}: gaps between pings {gaps:?}"
    );
    p.signal(Signal::SIGTERM);
    assert!(
        ns.wait("STOPPING=1", Duration::from_secs(5)).is_some(),
        "{name}: no STOPPING=1 after SIGTERM; got {:?}",
        ns.got
    );
    let code = p.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{name} exit after SIGTERM");
}

#[test]
fn agent_notifies_ready_watchdog_and_stopping() {
    let _machine = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    check_notify(
        "agent",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "n1",
            "--target",
            &format!("tcp:{listen}"),
            "--metrics-listen",
            &listen,
            "--interval",
            "200ms",
        ],
        &format!("http://{listen}/metrics"),
        dir.path(),
    );
}

#[test]
fn aggregator_notifies_ready_watchdog_and_stopping() {
    let _machine = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let (quic, http) = (free_port(), free_port());
    let state = dir.path().join("state");
    check_notify(
        "aggregator",
        &bin("pathpulse-aggregator"),
        &[
            "run",
            "--listen",
            &format!("127.0.0.1:{quic}"),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
        &format!("http://127.0.0.1:{http}/readyz"),
        dir.path(),
    );
}
