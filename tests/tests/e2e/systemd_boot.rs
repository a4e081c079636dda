//! The packaged units under a real systemd: a Debian root file system
//! (scripts/systemd-rootfs.sh) booted with systemd-nspawn (its own network namespace), the
//! two .deb packages installed with dpkg, and then what an operator does: start the
//! aggregator, enroll the agent as the service's dynamic user, start the agent, read both
//! `/metrics`, reload, break the configuration. Asserted: `Type=notify` readiness (start
//! returns only when ready), the watchdog pinged, the agent running as a dynamic user with
//! CAP_NET_RAW and no other capability and still probing with ICMP under the hardening,
//! reload keeping the process and picking up a new target, exit 78 not restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pathpulse_tests::lab::netns::unique;
use pathpulse_tests::{in_ci, parse_metrics, require_program, require_root, run, wait_for};

use crate::package::{debs, target_dir};
use crate::setup::value;

/// A booted container: systemd-nspawn and the container's PID 1 (systemd).
struct Container {
    nspawn: Child,
    pid1: i32,
    log: PathBuf,
    _root: tempfile::TempDir,
}

impl Container {
    fn boot(root: tempfile::TempDir) -> Container {
        let log = root.path().join("nspawn.log");
        let out = std::fs::File::create(&log).expect("nspawn log");
        let nspawn = Command::new("systemd-nspawn")
            .args(["--quiet", "--boot", "--register=no", "--keep-unit"])
            .args(["--private-network", "--console=pipe", "-M", &unique("sd")])
            .arg("-D")
            .arg(root.path().join("fs"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("systemd-nspawn");
        let mut c = Container {
            pid1: 0,
            nspawn,
            log,
            _root: root,
        };
        let parent = c.nspawn.id();
        c.pid1 = wait_for(Duration::from_secs(30), || child_of(parent))
            .unwrap_or_else(|| panic!("the container did not start:\n{}", c.log()));
        let state = wait_for(Duration::from_secs(60), || {
            let (_, s) = c.sh("systemctl is-system-running");
            let s = s.trim().to_string();
            matches!(s.as_str(), "running" | "degraded").then_some(s)
        });
        assert!(
            state.is_some(),
            "systemd did not finish booting:\n{}\n{}",
            c.sh("systemctl --failed --no-pager").1,
            c.log()
        );
        c
    }

    /// Run a shell command inside the container (all its namespaces), as root.
    fn sh(&self, script: &str) -> (i32, String) {
        run(
            Path::new("nsenter"),
            &[
                "-t",
                &self.pid1.to_string(),
                "-a",
                "/bin/bash",
                "-c",
                script,
            ],
        )
    }

    /// `systemctl show -p PROP --value UNIT`.
    fn prop(&self, unit: &str, prop: &str) -> String {
        self.sh(&format!("systemctl show -p {prop} --value {unit}"))
            .1
            .trim()
            .to_string()
    }

    fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl -u {unit} --no-pager -n 60")).1
    }

    /// GET /metrics inside the container's network namespace.
    fn metrics(&self, port: u16) -> Vec<pathpulse_tests::Sample> {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        );
        parse_metrics(&self.sh(&script).1)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM asks nspawn to shut the container down cleanly; then make sure.
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid1),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The first process whose parent is `parent`.
fn child_of(parent: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid ...: the command may hold spaces, so split after ')'.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
}

fn rootfs() -> Option<PathBuf> {
    let base = target_dir().join("systemd-rootfs");
    if base.join("usr/lib/systemd/systemd").exists() {
        return Some(base);
    }
    assert!(
        !in_ci(),
        "no {} (scripts/systemd-rootfs.sh makes it; scripts/test.sh runs it), and CI=true forbids skipping",
        base.display()
    );
    eprintln!(
        "\n*** SKIP: no Debian root file system for systemd; run scripts/systemd-rootfs.sh ***\n"
    );
    None
}

const AGENT_TOML: &str = r#"name = "box"
targets = ["127.0.0.1"]
interval = "200ms"
report_interval = "1s"
aggregators = ["127.0.0.1:4470"]
metrics_listen = "127.0.0.1:9469"
state_dir = "/var/lib/pathpulse"
"#;

/// Run as the units' dynamic user with their state directory, as an operator would with
/// `systemd-run` (files made by root there would be unreadable to the services).
const AS_SERVICE: &str = "systemd-run --quiet --wait --pipe -p DynamicUser=yes -p User=pathpulse \
    -p Group=pathpulse -p StateDirectory=pathpulse -p StateDirectoryMode=0700 -p UMask=0077 --";

#[test]
fn packaged_units_run_under_a_real_systemd() {
    let test = "packaged_units_run_under_a_real_systemd";
    if !require_root(test)
        || !require_program(test, "systemd-nspawn")
        || !require_program(test, "nsenter")
        || !require_program(test, "cargo-deb")
    {
        return;
    }
    let Some(base) = rootfs() else { return };
    let (agent_deb, agg_deb) = debs();
    let root = tempfile::tempdir().expect("tempdir");
    let fs = root.path().join("fs");
    let (code, out) = run(
        Path::new("cp"),
        &[
            "-a",
            base.to_str().expect("utf-8"),
            fs.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "copy the root file system: {out}");
    for deb in [&agent_deb, &agg_deb] {
        std::fs::copy(deb, fs.join("tmp").join(deb.file_name().expect("name"))).expect("copy");
    }
    let (code, out) = run(
        Path::new("chroot"),
        &[
            fs.to_str().expect("utf-8"),
            "/bin/sh",
            "-c",
            "dpkg -i /tmp/pathpulse-*.deb",
        ],
    );
    assert_eq!(code, 0, "dpkg -i in the root file system: {out}");
    std::fs::write(fs.join("etc/pathpulse/agent.toml"), AGENT_TOML).expect("agent.toml");

    let c = Container::boot(root);
    let agg = "pathpulse-aggregator";
    let agent = "pathpulse-agent";

    // Type=notify: `systemctl start` returns once the aggregator said READY=1.
    let (code, out) = c.sh(&format!("systemctl start {agg}"));
    assert_eq!(code, 0, "start {agg}: {out}\n{}", c.journal(agg));
    assert_eq!(c.prop(agg, "ActiveState"), "active", "{}", c.journal(agg));
    assert!(
        !c.metrics(9470).is_empty(),
        "the aggregator serves /metrics as soon as it is ready:\n{}",
        c.journal(agg)
    );

    // Reload: rules re-read, same process.
    let agg_pid = c.prop(agg, "MainPID");
    let (code, out) = c.sh(&format!("systemctl reload {agg}"));
    assert_eq!(code, 0, "reload {agg}: {out}");
    let reloaded = wait_for(Duration::from_secs(10), || {
        c.journal(agg)
            .contains("configuration reloaded")
            .then_some(())
    });
    assert!(reloaded.is_some(), "{}", c.journal(agg));
    assert_eq!(c.prop(agg, "MainPID"), agg_pid, "reload kept the process");

    // Enrollment as the services' user.
    let (code, out) = c.sh(&format!(
        "{AS_SERVICE} pathpulse-aggregator token create --ttl 10m --state-dir /var/lib/pathpulse"
    ));
    let token = out
        .lines()
        .find(|l| l.starts_with("pp1."))
        .unwrap_or_else(|| panic!("token create ({code}): {out}"))
        .to_string();
    let (code, out) = c.sh(&format!(
        "{AS_SERVICE} pathpulse-agent enroll --aggregator 127.0.0.1:4470 --token {token} \
         --name box --state-dir /var/lib/pathpulse"
    ));
    assert_eq!(code, 0, "enroll: {out}");

    let (code, out) = c.sh(&format!("systemctl start {agent}"));
    assert_eq!(code, 0, "start {agent}: {out}\n{}", c.journal(agent));
    let pid = c.prop(agent, "MainPID");
    let status = c.sh(&format!("cat /proc/{pid}/status")).1;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in\n{status}"))
    };
    let uid: u32 = field("Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("uid");
    assert!(
        (61184..=65519).contains(&uid),
        "the agent runs as a dynamic user, not uid {uid}"
    );
    // CAP_NET_RAW is capability 13: 0x2000, and nothing else, effective and bounding.
    assert_eq!(field("CapEff:"), "0000000000002000", "{status}");
    assert_eq!(field("CapBnd:"), "0000000000002000", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "a system-call filter is in force");

    // ICMP works under the hardening, and reports reach the aggregator over QUIC.
    let probed = wait_for(Duration::from_secs(30), || {
        let got = value(
            &c.metrics(9470),
            "pathpulse_probes_received_total",
            &[("src", "box"), ("dst", "127.0.0.1"), ("probe", "icmp")],
        )?;
        (got >= 5.0).then_some(got)
    });
    assert!(
        probed.is_some(),
        "no ICMP replies from box at the aggregator:\n{}\n{}",
        c.journal(agent),
        c.journal(agg)
    );
    let own = value(
        &c.metrics(9469),
        "pathpulse_probes_received_total",
        &[("dst", "127.0.0.1")],
    );
    assert!(own.is_some_and(|v| v > 0.0), "the agent's own /metrics");

    // The watchdog: WATCHDOG=1 every WatchdogSec/2 (15 s).
    let first = c.prop(agent, "WatchdogTimestampMonotonic");
    let pinged = wait_for(Duration::from_secs(25), || {
        let now = c.prop(agent, "WatchdogTimestampMonotonic");
        (now != first && now != "0").then_some(now)
    });
    assert!(
        pinged.is_some(),
        "no watchdog ping after {first}:\n{}",
        c.journal(agent)
    );

    // Reload: same process, new target probed.
    let more = AGENT_TOML.replace(r#"["127.0.0.1"]"#, r#"["127.0.0.1", "127.0.0.2"]"#);
    std::fs::write(c._root.path().join("fs/etc/pathpulse/agent.toml"), more).expect("write");
    let (code, out) = c.sh(&format!("systemctl reload {agent}"));
    assert_eq!(code, 0, "reload: {out}");
    let second = wait_for(Duration::from_secs(20), || {
        value(
            &c.metrics(9469),
            "pathpulse_probes_received_total",
            &[("dst", "127.0.0.2")],
        )
        .filter(|v| *v > 0.0)
    });
    assert!(
        second.is_some(),
        "the reloaded target is probed:\n{}",
        c.journal(agent)
    );
    assert_eq!(c.prop(agent, "MainPID"), pid, "reload kept the process");
    assert_eq!(c.prop(agent, "ActiveState"), "active");

    // A broken configuration: exit 78 with the key named, and no restart loop.
    std::fs::write(
        c._root.path().join("fs/etc/pathpulse/agent.toml"),
        "interval = \"fast\"\n",
    )
    .expect("write");
    let (code, _) = c.sh(&format!("systemctl restart {agent}"));
    assert_ne!(code, 0, "a start with a broken configuration fails");
    std::thread::sleep(Duration::from_secs(7)); // longer than RestartSec=5s
    assert_eq!(
        c.prop(agent, "ExecMainStatus"),
        "78",
        "{}",
        c.journal(agent)
    );
    assert_eq!(
        c.prop(agent, "NRestarts"),
        "0",
        "RestartPreventExitStatus=78"
    );
    assert_eq!(c.prop(agent, "ActiveState"), "failed");
    assert!(
        c.journal(agent).contains("interval"),
        "the journal names the key:\n{}",
        c.journal(agent)
    );

    // A clean stop.
    let (code, out) = c.sh(&format!("systemctl stop {agg}"));
    assert_eq!(code, 0, "stop: {out}");
    assert_eq!(c.prop(agg, "Result"), "success", "{}", c.journal(agg));
}
