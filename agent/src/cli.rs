//! The command line of `pathpulse-agent`: parse, set up logging and signals, call the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, EXIT_CONFIG, RunArgs, load_file};
use crate::run::RunError;

const EXAMPLES: &str = "\
Examples:
  # standalone, a drop-in for smokeping_prober: probe two hosts, serve /metrics
  pathpulse-agent run --target 192.0.2.1 --target tcp:example.net:443 --metrics-listen 127.0.0.1:9469

  # get an identity with a one-time token from `pathpulse-aggregator token create`
  pathpulse-agent enroll --aggregator agg.example.net:4470 --token pp1.… --name branch-1

  # report to an aggregator (identity in --state-dir)
  pathpulse-agent run --name branch-1 --aggregator agg.example.net:4470 --target 10.0.0.1

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
pub enum Command {
    /// Probe the targets and report (to aggregators, to /metrics, or both).
    Run(Box<RunArgs>),
    /// Exchange a one-time token (`pathpulse-aggregator token create`) for a certificate
    /// whose identity is NAME; the key is made here and never leaves this machine.
    Enroll {
        #[arg(long, value_name = "HOST:PORT")]
        aggregator: String,
        #[arg(long, env = "PATHPULSE_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Identity to enroll as (default: host name).
        #[arg(long, env = "PATHPULSE_NAME")]
        name: Option<String>,
        /// State directory; the identity goes to DIR/identity.
        #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR")]
        state_dir: Option<std::path::PathBuf>,
        /// Replace an existing identity.
        #[arg(long)]
        force: bool,
    },
    /// Validate a configuration file and exit (78 when invalid).
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
}

/// Initialise tracing once (later calls are ignored, e.g. in tests).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Cancel `token` on SIGINT or SIGTERM; a second signal exits at once.
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
        token.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
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
        Command::Enroll {
            aggregator,
            token,
            name,
            state_dir,
            force,
        } => {
            let name = name.unwrap_or_else(crate::config::host_name);
            let state_dir = state_dir.unwrap_or_else(|| crate::config::DEFAULT_STATE_DIR.into());
            let dir = state_dir.join(crate::run::IDENTITY_DIR);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(crate::enroll::enroll(
                &aggregator,
                &token,
                &name,
                &dir,
                force,
            )) {
                Ok(e) => {
                    println!(
                        "enrolled as `{name}` with {aggregator}: identity in {} (serial {})",
                        e.identity_dir.display(),
                        e.serial
                    );
                    println!(
                        "run: pathpulse-agent run --name {name} --aggregator {aggregator} --state-dir {} --target …",
                        state_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(crate::enroll::EnrollError::Usage(e)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG as u8)
                }
                Err(e) => {
                    eprintln!("error: enrollment failed: {e}");
                    ExitCode::FAILURE
                }
            }
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
                match crate::run(cfg, token).await {
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
