//! A lab deployment with everything the page and the dashboards show: two sites behind
//! two ISPs meeting at a transit router, and a data centre (`anchor`) with the aggregator
//! (alert rules from a config file) and an agent that reflects STAMP.
//!
//! ```text
//! home-a ─ cpe-a ═(emulated)═ isp-a ─┐
//!                                     transit ─ anchor (aggregator, agent "anchor": STAMP reflector)
//! home-b ─ cpe-b ──────────── isp-b ─┘
//! ```
//!
//! The agents `home-a` (site-a, isp-a) and `home-b` (site-b, isp-b) probe the anchor with
//! ICMP (hop discovery on: cpe, isp, transit, target) and STAMP; loss is switched on and
//! off on the emulated link cpe-a → isp-a (one direction: STAMP calls it forward loss).
//! Every agent runs with `--clock-sync assume` (one kernel clock for all namespaces), so
//! STAMP reports one-way delay.

use std::path::PathBuf;
use std::time::Duration;

use pathpulse_tests::lab::impair::{Impairment, Loss};
use pathpulse_tests::lab::netns::Netns;
use pathpulse_tests::lab::topo::{LinkSpec, Topo};
use pathpulse_tests::{Proc, bin, run, wait_for};

/// The aggregator's HTTP address inside the anchor namespace.
pub const HTTP: &str = "127.0.0.1:9470";
/// Every agent's own /metrics, inside its namespace.
pub const AGENT_METRICS: &str = "127.0.0.1:9469";
const QUIC_PORT: u16 = 4470;

/// Alert rules of the lab's aggregator: the loss alert clears after 10 s at ≤ 1% (held
/// 5 s) instead of 30 s (held 10 s), so a test sees it resolve in about 20 s.
pub const ALERT_RULES: &str = r#"
[alert]
[[alert.rules]]
name = "PathpulseLoss"
clear_window = "10s"
clear_for = "5s"
"#;

pub struct Sites {
    /// Declared first: the processes are killed before the namespaces go.
    pub procs: Vec<Proc>,
    pub topo: Topo,
    pub dir: tempfile::TempDir,
}

impl Sites {
    /// Build the lab (every link clean), start the aggregator and the three agents.
    pub fn start(seed: u64) -> Sites {
        let links = [
            LinkSpec::veth("home-a", "cpe-a", "192.168.1"),
            LinkSpec::emulated(
                "cpe-a",
                "isp-a",
                "203.0.113",
                Impairment::default(),
                Impairment::default(),
            ),
            LinkSpec::veth("isp-a", "transit", "198.51.100"),
            LinkSpec::veth("home-b", "cpe-b", "192.168.2"),
            LinkSpec::veth("cpe-b", "isp-b", "198.18.0"),
            LinkSpec::veth("isp-b", "transit", "198.51.101"),
            LinkSpec::veth("transit", "anchor", "192.0.2"),
        ];
        let nodes = [
            "home-a", "cpe-a", "isp-a", "home-b", "cpe-b", "isp-b", "transit", "anchor",
        ];
        let topo = Topo::build(&nodes, &links, seed);
        // Routers answer every TTL-expired probe (hops once a second per agent).
        for r in ["cpe-a", "isp-a", "cpe-b", "isp-b", "transit"] {
            topo.ns(r)
                .run("sysctl", &["-qw", "net.ipv4.icmp_ratelimit=0"]);
        }
        for (home, cpe) in [("home-a", "cpe-a"), ("home-b", "cpe-b")] {
            topo.ns(home)
                .ip(&["route", "add", "default", "via", &topo.addr(cpe, home)]);
        }
        let mut s = Sites {
            procs: Vec::new(),
            topo,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let config = s.dir.path().join("aggregator.toml");
        std::fs::write(&config, ALERT_RULES).expect("write aggregator.toml");
        let state = s.state();
        let listen = format!("0.0.0.0:{QUIC_PORT}");
        let agg = s.anchor().spawn(
            "aggregator",
            &bin("pathpulse-aggregator"),
            &[
                "run",
                "--config",
                config.to_str().expect("utf-8"),
                "--listen",
                &listen,
                "--http",
                HTTP,
                "--state-dir",
                state.to_str().expect("utf-8"),
                "--stale-after",
                "5s",
            ],
            s.dir.path(),
        );
        let ready = wait_for(Duration::from_secs(20), || {
            s.get("/readyz").filter(|(st, _)| st.contains(" 200"))
        });
        assert!(ready.is_some(), "aggregator ready:\n{}", agg.log());
        s.procs.push(agg);
        let anchor = s.anchor_addr();
        s.agent(
            "anchor",
            "anchor",
            &["--site", "dc", "--stamp-listen", "0.0.0.0:862"],
        );
        let stamp = format!("stamp:{anchor}");
        for (name, site, isp) in [("home-a", "site-a", "isp-a"), ("home-b", "site-b", "isp-b")] {
            s.agent(
                name,
                name,
                &[
                    "--site",
                    site,
                    "--isp",
                    isp,
                    "--target",
                    &anchor,
                    "--target",
                    &stamp,
                    "--interval",
                    "200ms",
                    "--timeout",
                    "1s",
                ],
            );
        }
        s
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("aggregator")
    }

    pub fn anchor(&self) -> &Netns {
        self.topo.ns("anchor")
    }

    /// The anchor's address (what the agents probe and report to).
    pub fn anchor_addr(&self) -> String {
        self.topo.addr("anchor", "transit")
    }

    /// Start agent `name` in namespace `node`, reporting every second to the aggregator.
    fn agent(&mut self, node: &str, name: &str, extra: &[&str]) {
        let dir = self.dir.path().join(name);
        let (code, text) = run(
            &bin("pathpulse-aggregator"),
            &[
                "cert",
                "issue",
                "--name",
                name,
                "--out",
                dir.join("identity").to_str().expect("utf-8"),
                "--state-dir",
                self.state().to_str().expect("utf-8"),
            ],
        );
        assert_eq!(code, 0, "cert issue: {text}");
        let aggregator = format!("{}:{QUIC_PORT}", self.anchor_addr());
        let mut args = vec![
            "run",
            "--name",
            name,
            "--aggregator",
            &aggregator,
            "--state-dir",
            dir.to_str().expect("utf-8"),
            "--report-interval",
            "1s",
            // The namespaces share one kernel clock: synchronized, whatever the kernel says
            // (STAMP's S bit, so one-way delays exist on every host).
            "--clock-sync",
            "assume",
            "--metrics-listen",
            AGENT_METRICS,
        ];
        args.extend_from_slice(extra);
        let p = self
            .topo
            .ns(node)
            .spawn(name, &bin("pathpulse-agent"), &args, self.dir.path());
        self.procs.push(p);
    }

    /// Random loss (`p`, 0 for none) on the way from cpe-a to isp-a; nothing on the way back.
    pub fn set_loss(&self, p: f64) {
        let (emu, dir) = self.topo.emu("cpe-a", "isp-a").expect("emulated link");
        let loss = if p > 0.0 {
            Loss::Bernoulli { p }
        } else {
            Loss::None
        };
        emu.set(
            dir,
            Impairment {
                loss,
                ..Impairment::default()
            },
        );
    }

    /// GET `path` from the aggregator, from inside the anchor namespace: (status line, body).
    pub fn get(&self, path: &str) -> Option<(String, String)> {
        get_in(self.anchor(), HTTP, path)
    }

    /// The text of agent `node`'s own /metrics (status 200 only).
    pub fn agent_metrics(&self, node: &str) -> Option<String> {
        get_in(self.topo.ns(node), AGENT_METRICS, "/metrics")
            .filter(|(status, _)| status.contains(" 200"))
            .map(|(_, body)| body)
    }

    /// GET `path` as JSON (status 200 only).
    pub fn json(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get(path).filter(|(s, _)| s.contains(" 200"))?;
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path} ({status}): not JSON: {e}: {body:.300}"))
    }

    /// Every process's log, for a failure message.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(Proc::log)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// GET `path` from `addr` inside `ns` (HTTP/1.0): (status line, body).
fn get_in(ns: &Netns, addr: &str, path: &str) -> Option<(String, String)> {
    let (host, port) = addr.split_once(':').expect("addr");
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let (code, text) = ns.run("bash", &["-c", &script]);
    if code != 0 {
        return None;
    }
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// Whether the kernel calls this host's clock synchronized (`adjtimex`, read only), as the
/// agent asks before it sets STAMP's S bit: one-way delays exist only when it is.
#[allow(unsafe_code)]
pub fn clock_synchronized() -> bool {
    // SAFETY: `timex` is a plain C struct for which all-zero bytes are valid (modes = 0
    // asks for nothing to be changed).
    let mut tx: nix::libc::timex = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
    // SAFETY: `tx` is a valid, writable `struct timex` that outlives the call.
    let ret = unsafe { nix::libc::adjtimex(&mut tx) };
    const TIME_ERROR: i32 = 5;
    const STA_UNSYNC: i32 = 0x0040;
    ret >= 0 && ret != TIME_ERROR && tx.status & STA_UNSYNC == 0 && tx.maxerror <= 100_000
}
