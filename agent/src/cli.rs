//! The command line of `pathpulse-agent`: parse, set up logging and signals, call the library.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, EXIT_CONFIG, RunArgs, load_file};
use crate::reload::Reloader;
use crate::run::{AgentHandles, RunError};
use crate::systemd;

const EXAMPLES: &str = "\
Examples:
  # standalone, a drop-in for smokeping_prober: probe two hosts, serve /metrics
  pathpulse-agent run --target 192.0.2.1 --target tcp:example.net:443 --metrics-listen 127.0.0.1:9469

  # report to an aggregator (identity in --state-dir, see `pathpulse-aggregator cert issue`)
  pathpulse-agent run --name branch-1 --aggregator agg.example.net:4433 --target 10.0.0.1

  # validate a configuration file without starting
  pathpulse-agent check-config --config /etc/pathpulse/agent.toml";

#[derive(Debug, Parser)]
#[command(name = "pathpulse-agent", version, about = "pathpulse agent: measures latency, loss and jitter of network paths", after_help = EXAMPLES)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PATHPULSE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
// Parsed once at start; boxing the flags would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Probe the targets and report (to aggregators, to /metrics, or both).
    Run(RunArgs),
    /// Exchange a one-time token for a certificate (not built yet: see `pathpulse-aggregator cert issue`).
    Enroll {
        #[arg(long, value_name = "HOST:PORT")]
        aggregator: String,
        #[arg(long)]
        token: String,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<std::path::PathBuf>,
    },
    /// Validate a configuration file and exit (78 when invalid).
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

/// `generate-assets`: man pages and completions for `cmd` into `out`.
pub fn generate_assets(cmd: clap::Command, out: &std::path::Path) -> ExitCode {
    match crate::assets::write(cmd, out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing into {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// Initialise tracing once (later calls are ignored, e.g. in tests).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    // Colours only on a terminal: the journal and log files get plain `key=value` text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Cancel `token` on SIGINT or SIGTERM (telling systemd `STOPPING=1`); a second signal
/// exits at once.
pub fn shutdown_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down (a second signal exits at once)");
        crate::systemd::stopping();
        token.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
}

/// Install the SIGHUP handler now (so an early SIGHUP is queued, not fatal); the
/// returned stream is handed to [`reload_on_sighup`] once the agent runs.
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload is off");
            None
        }
    }
}

/// On each SIGHUP, resolve the configuration again from the same flags, environment and
/// file, and apply it; an invalid one is refused (logged) and the running one kept.
pub async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    args: RunArgs,
    reloader: std::sync::Arc<Reloader>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        systemd::reloading();
        let file = args
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(no file)".into());
        tracing::info!(config = %file, "SIGHUP: reloading the configuration");
        match AgentConfig::resolve(&args) {
            Ok(cfg) => {
                reloader.apply(cfg).await;
            }
            Err(e) => {
                let errors: Vec<String> =
                    e.0.iter()
                        .map(|e| format!("{}: {}", e.key, e.reason))
                        .collect();
                tracing::error!(config = %file, errors = ?errors, "reload refused: invalid configuration; the running configuration stays");
            }
        }
        systemd::ready(&running_status(&reloader.running()));
    }
}

fn running_status(cfg: &AgentConfig) -> String {
    format!(
        "probing {} targets, reporting to {} aggregators{}",
        cfg.targets.len(),
        cfg.aggregators.len(),
        if cfg.metrics_listen.is_some() {
            ", serving /metrics"
        } else {
            ""
        }
    )
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => {
            let args = RunArgs {
                config: Some(config.clone()),
                ..RunArgs::default()
            };
            match load_file(&config).and_then(|_| AgentConfig::resolve(&args)) {
                Ok(c) => {
                    println!(
                        "{}: valid ({} targets, {} aggregators)",
                        config.display(),
                        c.targets.len(),
                        c.aggregators.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::from(EXIT_CONFIG as u8)
                }
            }
        }
        Command::GenerateAssets { out } => generate_assets(Cli::command(), &out),
        Command::Enroll { aggregator, .. } => {
            eprintln!(
                "enroll: token enrollment is not available in this version; ask the operator of {aggregator} to run \
                 `pathpulse-aggregator cert issue --name NAME --out STATE_DIR/identity` and copy the files"
            );
            ExitCode::from(69)
        }
        Command::Run(args) => {
            let cfg = match AgentConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                let token = CancellationToken::new();
                shutdown_on_signals(token.clone());
                let hup = hangups();
                let t = token.clone();
                let started = move |h: AgentHandles| {
                    systemd::ready(&running_status(&h.reloader.running()));
                    tokio::spawn(systemd::watchdog(h.liveness, t.clone()));
                    if let Some(hup) = hup {
                        tokio::spawn(reload_on_sighup(hup, args, h.reloader, t));
                    }
                };
                match crate::run::run_with(cfg, token, started).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(RunError::Config(e)) => {
                        eprint!("{e}");
                        ExitCode::from(EXIT_CONFIG as u8)
                    }
                    Err(RunError::Fatal(e)) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
