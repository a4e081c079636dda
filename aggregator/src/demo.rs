//! `pathpulse-aggregator demo`: an aggregator and two agents in one process, with a CA
//! made on the fly in a temporary state directory, so a newcomer sees metrics within
//! seconds. Agents probe loopback addresses with ICMP (when this user may open ICMP
//! sockets), each other's... and the aggregator's HTTP port with TCP connect, which needs
//! no privilege, and the default gateway unless `--no-gateway`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use pathpulse_agent::config::AgentConfig;
use pathpulse_agent::target::TargetSpec;
use pathpulse_agent::{RunError, run::IDENTITY_DIR};
use tokio_util::sync::CancellationToken;

use crate::alert::config::{AlertArgs, AlertConfig};
use crate::config::AggregatorConfig;
use crate::{pki, server};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// HTTP address for /metrics.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9470",
        env = "PATHPULSE_HTTP"
    )]
    pub http: SocketAddr,
    /// Do not probe the default gateway (probe loopback only).
    #[arg(long)]
    pub no_gateway: bool,
    /// Stop after this long (default: run until interrupted).
    #[arg(long, value_name = "DUR")]
    pub duration: Option<String>,
    #[command(flatten)]
    pub alert: AlertArgs,
}

/// The IPv4 default gateway from /proc/net/route, if any.
pub fn default_gateway() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    text.lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == "00000000")
                .then(|| u32::from_str_radix(f[2], 16).ok())
                .flatten()
                .map(|g| Ipv4Addr::from(g.swap_bytes()))
        })
        .filter(|g| !g.is_unspecified())
}

fn spec(s: &str) -> Result<TargetSpec, RunError> {
    TargetSpec::parse(s).map_err(|e| RunError::Fatal(e.into()))
}

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let dir = tempfile::Builder::new()
        .prefix("pathpulse-demo-")
        .tempdir()
        .map_err(|e| RunError::Fatal(e.into()))?;
    let state: PathBuf = dir.path().to_path_buf();
    let alert = AlertConfig::resolve(None, &args.alert)
        .map_err(|e| RunError::Config(pathpulse_agent::config::ConfigErrors(e)))?;
    let cfg = AggregatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http: args.http,
        state_dir: state.join("aggregator"),
        server_names: vec![],
        stale_after: Duration::from_secs(10),
        max_connections: 64,
        alert,
        remote_write: None,
        path_budget: None,
        prune_after: Some(crate::config::DEFAULT_PRUNE_AFTER),
        mesh: Default::default(),
        // A first look with throw-away state: nobody could hold a token for it.
        http_auth: crate::auth::AuthMode::Open,
        metrics_auth: crate::auth::AuthMode::Open,
        report_rate: crate::limits::DEFAULT_REPORTS,
        registration_rate: crate::limits::DEFAULT_REGISTRATIONS,
    };
    if !args.http.ip().is_loopback() {
        tracing::warn!(http = %args.http, "the demo's page and API are open (no tokens) on a non-loopback address");
    }
    let running = server::start(&cfg, shutdown.clone()).await?;
    let ca = pki::load_ca(&cfg.state_dir).map_err(RunError::Fatal)?;
    let http = running.bound.http;
    let gateway = if args.no_gateway {
        None
    } else {
        default_gateway()
    };

    let mut agents = Vec::new();
    for (name, icmp) in [
        ("demo-a", ["127.0.0.1", "127.0.0.2"]),
        ("demo-b", ["127.0.0.3", "::1"]),
    ] {
        let agent_state = state.join(name);
        pki::issue_agent(&ca, name, &agent_state.join(IDENTITY_DIR)).map_err(RunError::Fatal)?;
        let mut targets: Vec<TargetSpec> =
            icmp.iter().map(|s| spec(s)).collect::<Result<_, _>>()?;
        targets.push(spec(&format!("tcp:127.0.0.1:{}", http.port()))?);
        if let Some(g) = gateway.filter(|_| name == "demo-a") {
            targets.push(spec(&IpAddr::V4(g).to_string())?);
        }
        let acfg = AgentConfig {
            name: name.into(),
            targets,
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            report_interval: Duration::from_secs(1),
            aggregators: vec![running.bound.quic.to_string()],
            metrics_listen: None,
            state_dir: agent_state,
            site: Some("demo".into()),
            isp: None,
            hops: true,
            isp_prefixes: Vec::new(),
            hop_interval: pathpulse_agent::config::DEFAULT_HOP_INTERVAL,
            hop_probe: Default::default(),
            stamp_listen: pathpulse_agent::config::StampListen::Off,
            stamp_rate: pathpulse_agent::probe::stamp::reflector::DEFAULT_RATE,
            stamp_key: None,
            advertise: vec![],
            spool: Default::default(),
            clock_sync: Default::default(),
            confirm: Default::default(),
        };
        agents.push(tokio::spawn(pathpulse_agent::run(acfg, shutdown.clone())));
    }
    println!("pathpulse demo running: aggregator and agents demo-a, demo-b on this machine");
    println!("  page:     http://{http}/ (the live mesh)");
    println!("  metrics:  http://{http}/metrics");
    println!("  health:   http://{http}/healthz");
    println!("  alerts:   http://{http}/api/alerts");
    for r in &running.alerts.receivers {
        println!("  alerts go to {} ({})", r.cfg.url, r.cfg.kind.as_str());
    }
    println!(
        "  QUIC:     {} (mutual TLS, CA in {})",
        running.bound.quic,
        pki::ca_dir(&cfg.state_dir).display()
    );
    if let Some(g) = gateway {
        println!(
            "  probing the default gateway {g} from demo-a (--no-gateway to stay on loopback)"
        );
    }
    match pathpulse_agent::probe::icmp_socket::IcmpSocket::open(
        pathpulse_agent::probe::icmp_socket::Family::V4,
    ) {
        Ok(s) => println!(
            "  ICMP:     on ({:?} sockets with kernel timestamps)",
            s.kind()
        ),
        Err(e) => println!("  ICMP:     OFF, measuring with TCP connect only. {e}"),
    }
    println!("Press Ctrl-C to stop.");
    if let Some(d) = &args.duration {
        let d = pathpulse_agent::config::parse_duration(d)
            .map_err(|e| RunError::Fatal(anyhow::anyhow!("--duration: {e}")))?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let mut result = Ok(());
    for a in agents {
        match a.await {
            Ok(Err(e)) => {
                tracing::error!(error = %e, "demo agent failed");
                shutdown.cancel();
                result = Err(e);
            }
            Err(e) => tracing::error!(error = %e, "demo agent panicked"),
            Ok(Ok(())) => {}
        }
    }
    let _ = running.done.await;
    drop(dir);
    result
}
