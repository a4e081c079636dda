//! Packaging: the .deb of each binary (scripts/package.sh, cargo-deb) holds the binary,
//! its systemd unit, the example configuration, man pages and completions, and the
//! unit's `ExecStart` is the binary's path in the package. The shipped example
//! configurations pass `check-config`.
//!
//! The test packages the debug binaries the suite already built (`--profile dev
//! --no-build --fast`, about 6 s); a release package (`scripts/package.sh`) needs a
//! release build, several minutes on two cores, so it is not part of the suite.

use std::path::{Path, PathBuf};
use std::process::Command;

use pathpulse_tests::{bin, require_program, run};

use crate::setup::shared;
use crate::systemd::{exec_start, repo};

pub fn target_dir() -> PathBuf {
    bin("pathpulse-agent")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

#[test]
fn shipped_example_configs_pass_check_config() {
    for b in ["agent", "aggregator"] {
        let cfg = repo().join("packaging").join(format!("{b}.toml"));
        let (code, out) = run(
            &bin(&format!("pathpulse-{b}")),
            &["check-config", "--config", cfg.to_str().expect("utf-8")],
        );
        assert_eq!(code, 0, "packaging/{b}.toml: {out}");
        assert!(out.contains("valid"), "{out}");
    }
}

/// The two .deb packages (agent, aggregator) of the debug binaries the suite built, made
/// once per test run (scripts/package.sh --profile dev --no-build --fast).
pub fn debs() -> (PathBuf, PathBuf) {
    static DEBS: std::sync::Mutex<Option<(PathBuf, PathBuf)>> = std::sync::Mutex::new(None);
    let mut made = DEBS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = made.as_ref() {
        return d.clone();
    }
    let target = target_dir();
    let out = Command::new(repo().join("scripts/package.sh"))
        .args(["--profile", "dev", "--no-build", "--fast"])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("scripts/package.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/package.sh failed:\n{log}");
    let version = env!("CARGO_PKG_VERSION");
    let find = |b: &str| {
        let prefix = format!("pathpulse-{b}_{version}-1_");
        std::fs::read_dir(target.join("debian"))
            .expect("target/debian")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".deb"))
            })
            .unwrap_or_else(|| panic!("no {prefix}*.deb built:\n{log}"))
    };
    let d = (find("agent"), find("aggregator"));
    *made = Some(d.clone());
    d
}

#[test]
fn debs_hold_binary_unit_config_man_pages_and_completions() {
    let test = "debs_hold_binary_unit_config_man_pages_and_completions";
    if !require_program(test, "cargo-deb") || !require_program(test, "dpkg-deb") {
        return;
    }
    let _machine = shared();
    let version = env!("CARGO_PKG_VERSION");
    let debs = debs();
    for (b, deb) in [("agent", &debs.0), ("aggregator", &debs.1)] {
        let name = format!("pathpulse-{b}");
        let deb_s = deb.to_str().expect("utf-8");
        let (code, listing) = run(Path::new("dpkg"), &["-c", deb_s]);
        assert_eq!(code, 0, "dpkg -c: {listing}");
        let files: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .map(|p| p.trim_start_matches('.'))
            .collect();
        let unit_path = format!("/usr/lib/systemd/system/{name}.service");
        for want in [
            format!("/usr/bin/{name}"),
            unit_path.clone(),
            format!("/etc/pathpulse/{b}.toml"),
            format!("/usr/share/man/man1/{name}.1.gz"),
            format!("/usr/share/man/man1/{name}-run.1.gz"),
            format!("/usr/share/bash-completion/completions/{name}"),
            format!("/usr/share/zsh/vendor-completions/_{name}"),
            format!("/usr/share/fish/vendor_completions.d/{name}.fish"),
        ]
        .into_iter()
        // The agent's STAMP port, bound by systemd (socket activation).
        .chain((b == "agent").then(|| format!("/usr/lib/systemd/system/{name}.socket")))
        // The aggregator's UDP receive buffer (net.core.rmem_max), applied at boot.
        .chain((b == "aggregator").then(|| format!("/usr/lib/sysctl.d/60-{name}.conf")))
        {
            assert!(
                files.contains(&want.as_str()),
                "{name}: no {want} in\n{listing}"
            );
        }
        let (_, conffiles) = run(Path::new("dpkg-deb"), &["--info", deb_s, "conffiles"]);
        assert!(
            conffiles.contains(&format!("/etc/pathpulse/{b}.toml")),
            "{name}: the example configuration is a conffile: {conffiles}"
        );

        // The unit as packaged starts the binary as packaged, and that binary accepts
        // the configuration as packaged.
        let root = tempfile::tempdir().expect("tempdir");
        let (code, text) = run(
            Path::new("dpkg-deb"),
            &["-x", deb_s, root.path().to_str().expect("utf-8")],
        );
        assert_eq!(code, 0, "dpkg-deb -x: {text}");
        let unit = std::fs::read_to_string(root.path().join(unit_path.trim_start_matches('/')))
            .expect("packaged unit");
        let exec = exec_start(&unit);
        assert_eq!(exec, format!("/usr/bin/{name}"), "{name}: ExecStart");
        assert!(
            files.contains(&exec.as_str()),
            "{name}: {exec} not in the package"
        );
        assert_eq!(
            unit,
            std::fs::read_to_string(repo().join("systemd").join(format!("{name}.service")))
                .expect("unit"),
            "the packaged unit is systemd/{name}.service"
        );
        let packaged = root.path().join(exec.trim_start_matches('/'));
        let cfg = root.path().join(format!("etc/pathpulse/{b}.toml"));
        let (code, text) = run(
            &packaged,
            &["check-config", "--config", cfg.to_str().expect("utf-8")],
        );
        assert_eq!(code, 0, "packaged {name} check-config: {text}");
        let (code, text) = run(&packaged, &["--version"]);
        assert!(code == 0 && text.contains(version), "{text}");
    }
}
