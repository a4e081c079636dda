//! The command line of `pathpulse-aggregator`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use pathpulse_agent::RunError;
use pathpulse_agent::cli::{
    LogFormat, generate_assets, hangups, init_logging, shutdown_on_signals,
};
use pathpulse_agent::config::{EXIT_CONFIG, check_name};
use tokio_util::sync::CancellationToken;

use crate::config::{AggregatorConfig, DEFAULT_STATE_DIR, RunArgs};
use crate::demo::DemoArgs;

const EXAMPLES: &str = "\
Examples:
  # try everything on this machine: aggregator + two local agents, metrics on :9470
  pathpulse-aggregator demo

  # run for real
  pathpulse-aggregator run --listen 0.0.0.0:4470 --http 0.0.0.0:9470 --state-dir /var/lib/pathpulse

  # with alerts to a webhook and to Alertmanager (both repeatable; default rules)
  pathpulse-aggregator run --webhook https://hooks.example/pathpulse --alertmanager http://am:9093

  # issue an agent identity (copy DIR to the agent's /var/lib/pathpulse/identity)
  pathpulse-aggregator cert issue --name branch-1 --out ./branch-1-identity";

#[derive(Debug, Parser)]
#[command(name = "pathpulse-aggregator", version, about = "pathpulse aggregator: merges agent reports, exports Prometheus metrics", after_help = EXAMPLES)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PATHPULSE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the aggregator.
    Run(RunArgs),
    /// Aggregator plus local agents with embedded defaults, for a first look.
    Demo(DemoArgs),
    /// Enrollment tokens (not built yet: use `cert issue`).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Certificates from the aggregator's CA.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Validate a configuration file and exit (78 when invalid).
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a one-time enrollment token.
    Create {
        #[arg(long, default_value = "agent")]
        role: String,
        #[arg(long, value_name = "DUR")]
        ttl: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertAction {
    /// Issue an agent certificate (identity = NAME) into DIR: agent.crt, agent.key, ca.crt.
    Issue {
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The aggregator's state directory (holds the CA; created if missing).
        #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn exit_for(r: Result<(), RunError>) -> ExitCode {
    match r {
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
}

/// SIGHUP must not end the aggregator (its default action would): nothing of its
/// configuration can be reloaded yet, so say so.
async fn ignore_hangups(mut hup: tokio::signal::unix::Signal, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        tracing::warn!(
            "SIGHUP: the aggregator has nothing to reload in this version; restart it to apply configuration changes"
        );
    }
}

fn serve(
    f: impl FnOnce(
        CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RunError>>>>,
) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit_for(rt.block_on(async move {
        let token = CancellationToken::new();
        shutdown_on_signals(token.clone());
        if let Some(hup) = hangups() {
            tokio::spawn(ignore_hangups(hup, token.clone()));
        }
        f(token).await
    }))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => match AggregatorConfig::resolve(&args) {
            Ok(cfg) => serve(|t| Box::pin(crate::server::run(cfg, t))),
            Err(e) => exit_for(Err(RunError::Config(e))),
        },
        Command::GenerateAssets { out } => generate_assets(Cli::command(), &out),
        Command::Demo(args) => serve(|t| Box::pin(crate::demo::run(args, t))),
        Command::CheckConfig { config } => {
            match AggregatorConfig::resolve(&RunArgs {
                config: Some(config.clone()),
                ..RunArgs::default()
            }) {
                Ok(_) => {
                    println!("{}: valid", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => exit_for(Err(RunError::Config(e))),
            }
        }
        Command::Token { .. } => {
            eprintln!(
                "token create: token enrollment is not available in this version; use `pathpulse-aggregator cert issue`"
            );
            ExitCode::from(69)
        }
        Command::Cert {
            action:
                CertAction::Issue {
                    name,
                    out,
                    state_dir,
                },
        } => {
            if let Err(e) = check_name(&name) {
                eprintln!("invalid configuration:\n  name: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            match crate::pki::load_ca(&state_dir)
                .and_then(|ca| crate::pki::issue_agent(&ca, &name, &out))
            {
                Ok(()) => {
                    println!(
                        "issued identity `{name}` into {} (agent.crt, agent.key, ca.crt)",
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
