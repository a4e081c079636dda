//! A small deployment: an aggregator with its CA, and agents with issued identities.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pathpulse_tests::{Proc, Sample, bin, free_port, http_get, parse_metrics, run, wait_for};

/// Timing-sensitive tests (the lab, the comparison with ping) take this exclusively;
/// every other test takes it shared, so nothing competes with a measurement for the two
/// cores.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

pub struct Deployment {
    /// Held for the deployment's life (see [`shared`]); `None` for a second aggregator of
    /// a test that holds it already (a second shared lock could wait behind a writer).
    _machine: Option<std::sync::RwLockReadGuard<'static, ()>>,
    /// Held instead for a measurement that nothing else may load (see [`exclusive`]).
    _alone: Option<std::sync::RwLockWriteGuard<'static, ()>>,
    pub dir: tempfile::TempDir,
    pub quic: u16,
    pub http: u16,
    /// The aggregator process (killed on drop); `None` while stopped.
    pub aggregator: Option<Proc>,
    /// Extra arguments of `pathpulse-aggregator run` (at the next `start_aggregator`).
    pub args: Vec<String>,
}

impl Deployment {
    pub fn start() -> Deployment {
        Deployment::start_with(&[])
    }

    /// Not started yet: fresh ports and directory, holding `machine` or `alone`.
    fn unstarted(
        machine: Option<std::sync::RwLockReadGuard<'static, ()>>,
        alone: Option<std::sync::RwLockWriteGuard<'static, ()>>,
        args: &[&str],
    ) -> Deployment {
        Deployment {
            _machine: machine,
            _alone: alone,
            dir: tempfile::tempdir().expect("tempdir"),
            quic: free_port(),
            http: free_port(),
            aggregator: None,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Ports and directory, the aggregator not started (to prepare its state directory).
    pub fn unstarted_shared() -> Deployment {
        Deployment::unstarted(Some(shared()), None, &[])
    }

    /// A deployment for a measurement: no other test runs meanwhile.
    pub fn start_alone() -> Deployment {
        let mut d = Deployment::unstarted(None, Some(exclusive()), &[]);
        d.start_aggregator();
        d
    }

    /// With extra arguments of `pathpulse-aggregator run`.
    pub fn start_with(args: &[&str]) -> Deployment {
        let mut d = Deployment::unstarted(Some(shared()), None, args);
        d.start_aggregator();
        d
    }

    /// A second aggregator with `first`'s CA, so that agents' certificates are valid at both.
    pub fn start_sharing_ca(first: &Deployment) -> Deployment {
        let mut d = Deployment::unstarted(None, None, &[]);
        let ca = d.state().join("ca");
        std::fs::create_dir_all(&ca).expect("mkdir");
        for f in ["ca.crt", "ca.key"] {
            std::fs::copy(first.state().join("ca").join(f), ca.join(f)).expect("copy CA");
        }
        d.start_aggregator();
        d
    }

    /// (Re)start the aggregator on the same ports and state directory; wait until ready.
    pub fn start_aggregator(&mut self) {
        let state = self.state();
        let mut args = vec![
            "run".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.quic),
            "--http".into(),
            format!("127.0.0.1:{}", self.http),
            "--state-dir".into(),
            state.to_str().expect("utf-8 path").into(),
        ];
        args.extend(self.args.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.aggregator = Some(Proc::start(
            "aggregator",
            &bin("pathpulse-aggregator"),
            &refs,
            self.dir.path(),
        ));
        wait_for(Duration::from_secs(20), || {
            http_get(&self.url("/readyz")).ok()
        })
        .expect("aggregator ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("aggregator")
    }

    /// Issue an identity for `name` with the aggregator's CA (or another state dir's CA).
    pub fn issue(&self, name: &str, ca_state: &Path) -> PathBuf {
        let agent_state = self.dir.path().join(name);
        let out = agent_state.join("identity");
        let (code, text) = run(
            &bin("pathpulse-aggregator"),
            &[
                "cert",
                "issue",
                "--name",
                name,
                "--out",
                out.to_str().expect("utf-8"),
                "--state-dir",
                ca_state.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(code, 0, "cert issue: {text}");
        agent_state
    }

    /// Start an agent reporting here every 500 ms.
    pub fn agent(&self, name: &str, state: &Path, targets: &[&str], extra: &[&str]) -> Proc {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--name".into(),
            name.into(),
            "--aggregator".into(),
            format!("127.0.0.1:{}", self.quic),
            "--state-dir".into(),
            state.to_str().expect("utf-8").into(),
            "--interval".into(),
            "100ms".into(),
            "--timeout".into(),
            "1s".into(),
            "--report-interval".into(),
            "500ms".into(),
        ];
        for t in targets {
            args.push("--target".into());
            args.push((*t).into());
        }
        // Agents with an aggregator reflect STAMP on UDP 862 by default: several on one
        // host would race for it.
        if !extra.contains(&"--stamp-listen") {
            args.extend(["--stamp-listen".into(), "off".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::start(name, &bin("pathpulse-agent"), &refs, self.dir.path())
    }

    pub fn metrics(&self) -> Vec<Sample> {
        http_get(&self.url("/metrics"))
            .map(|t| parse_metrics(&t))
            .unwrap_or_default()
    }
}

/// Value of the first sample named `name` with these labels.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    pathpulse_tests::select(samples, name, labels)
        .first()
        .map(|s| s.value)
}
