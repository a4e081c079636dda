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

  # a one-time enrollment token (printed once; the agent runs `pathpulse-agent enroll`)
  pathpulse-aggregator token create --ttl 1h --state-dir /var/lib/pathpulse

  # or issue an agent identity by hand (copy DIR to the agent's /var/lib/pathpulse/identity)
  pathpulse-aggregator cert issue --name branch-1 --out ./branch-1-identity

  # revoke every certificate of an agent (refused at its next connection)
  pathpulse-aggregator cert revoke --name branch-1 --state-dir /var/lib/pathpulse";

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
    /// Enrollment tokens (one-time) and HTTP API tokens (read, admin).
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
    /// Create a token, printed once (only its hash is stored). Role `agent`: a one-time
    /// enrollment token carrying the CA's fingerprint, so the enrolling agent trusts only
    /// this aggregator. Roles `read` and `admin`: an HTTP API bearer token.
    Create {
        /// agent, read or admin.
        #[arg(long, default_value = "agent")]
        role: String,
        /// Lifetime, e.g. 30m, 24h (default: 24h for agent, until revoked for read and
        /// admin).
        #[arg(long, value_name = "DUR")]
        ttl: Option<String>,
        /// The aggregator's state directory (CA and tokens).
        #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// List the HTTP API tokens (ids, roles, times; never secrets).
    List {
        #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Revoke an HTTP API token by its id (refused from its next request).
    Revoke {
        #[arg(long)]
        id: String,
        #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
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
        /// Validity, e.g. 90d (default one year). Agents renew in the last third.
        #[arg(long, value_name = "DUR")]
        valid_for: Option<String>,
        /// The aggregator's state directory (holds the CA; created if missing).
        #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Install an operator's CA (PEM certificate and key) into the state directory before
    /// the first start, instead of the CA the aggregator would make itself.
    ImportCa {
        /// The CA certificate (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Its private key (PEM, PKCS#8).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Revoke every certificate issued to NAME: refused at its next connection (the
    /// running aggregator sees it at once).
    Revoke {
        #[arg(long)]
        name: String,
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

/// SIGHUP reloads the configuration (`crate::reload`); it must never end the aggregator
/// (its default action would), so the handler is installed before anything starts.
async fn on_hangups(mut hup: tokio::signal::unix::Signal, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        if crate::reload::reload_now("SIGHUP").is_none() {
            tracing::warn!("SIGHUP: {}", crate::reload::NOTHING_TO_RELOAD);
        }
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
            tokio::spawn(on_hangups(hup, token.clone()));
        }
        f(token).await
    }))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => match AggregatorConfig::resolve(&args) {
            Ok(cfg) => serve(|t| Box::pin(crate::server::run(args, cfg, t))),
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
        Command::Token {
            action:
                TokenAction::Create {
                    role,
                    ttl,
                    state_dir,
                },
        } => {
            let ttl = match ttl.as_deref().map(pathpulse_agent::config::parse_duration) {
                None => None,
                Some(Ok(d)) if !d.is_zero() => Some(d),
                Some(Ok(_)) => {
                    eprintln!("invalid configuration:\n  ttl: must be more than 0s");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
                Some(Err(e)) => {
                    eprintln!("invalid configuration:\n  ttl: {e}");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            if !crate::state::TOKEN_ROLES.contains(&role.as_str()) {
                eprintln!(
                    "invalid configuration:\n  role: `{role}` is not one of {:?}",
                    crate::state::TOKEN_ROLES
                );
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            create_token(&role, ttl, &state_dir)
        }
        Command::Token {
            action: TokenAction::List { state_dir },
        } => match crate::state::StateDb::open(&state_dir).and_then(|db| db.api_tokens()) {
            Ok(list) => {
                println!("id        role   created_ms     expires_ms     revoked_ms");
                for (id, r) in list {
                    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                    println!(
                        "{id:<9} {:<6} {:<14} {:<14} {}",
                        r.role.as_str(),
                        r.created_ms,
                        opt(r.expires_ms),
                        opt(r.revoked_ms)
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Token {
            action: TokenAction::Revoke { id, state_dir },
        } => {
            match crate::state::StateDb::open(&state_dir).and_then(|db| db.revoke_api_token(&id)) {
                Ok(true) => {
                    println!("revoked API token `{id}`; refused from its next request");
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    eprintln!(
                        "error: no API token with id `{id}` in {}",
                        state_dir.display()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cert {
            action: CertAction::Revoke { name, state_dir },
        } => match crate::state::StateDb::open(&state_dir).and_then(|db| db.revoke_name(&name)) {
            Ok(serials) if serials.is_empty() => {
                eprintln!(
                    "error: no certificate issued to `{name}` is known in {} (those from `cert issue` and `enroll` are recorded)",
                    state_dir.display()
                );
                ExitCode::FAILURE
            }
            Ok(serials) => {
                println!(
                    "revoked {} certificate(s) of `{name}` (serials {}); refused from its next connection",
                    serials.len(),
                    serials.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Cert {
            action:
                CertAction::ImportCa {
                    cert,
                    key,
                    state_dir,
                },
        } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
            };
            let imported = read(&cert)
                .and_then(|c| Ok((c, read(&key)?)))
                .and_then(|(c, k)| {
                    pathpulse_wire::tls::Ca::import(&crate::pki::ca_dir(&state_dir), &c, &k)
                        .map_err(|e| e.to_string())
                });
            match imported {
                Ok(ca) => {
                    let fp = pathpulse_wire::tls::ca_fingerprint(ca.cert_pem()).unwrap_or_default();
                    println!(
                        "CA installed in {} (SHA-256 {fp}); the aggregator issues agent certificates with it",
                        crate::pki::ca_dir(&state_dir).display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("invalid configuration:\n  CA: {e}");
                    ExitCode::from(EXIT_CONFIG as u8)
                }
            }
        }
        Command::Cert {
            action:
                CertAction::Issue {
                    name,
                    out,
                    valid_for,
                    state_dir,
                },
        } => {
            let valid_for = match valid_for
                .as_deref()
                .map(pathpulse_agent::config::parse_duration)
            {
                None => crate::pki::AGENT_CERT_VALIDITY,
                Some(Ok(d)) if !d.is_zero() => d,
                Some(Ok(_)) => {
                    eprintln!("invalid configuration:\n  valid_for: must be more than 0s");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
                Some(Err(e)) => {
                    eprintln!("invalid configuration:\n  valid_for: {e}");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            if let Err(e) = check_name(&name) {
                eprintln!("invalid configuration:\n  name: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            match crate::pki::load_ca(&state_dir).and_then(|ca| {
                crate::pki::issue_agent_recorded(&state_dir, &ca, &name, &out, valid_for)
            }) {
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

/// `token create`: an enrollment token (`agent`) or an API token (`read`, `admin`).
fn create_token(
    role: &str,
    ttl: Option<std::time::Duration>,
    state_dir: &std::path::Path,
) -> ExitCode {
    let made = crate::pki::load_ca(state_dir).and_then(|ca| {
        let db = crate::state::StateDb::open(state_dir)?;
        match crate::tokens::ApiRole::parse(role) {
            None => {
                let ttl = ttl.unwrap_or(crate::state::DEFAULT_TOKEN_TTL);
                let token = db.create_token(role, ttl, ca.cert_pem())?;
                Ok((
                    token.to_string(),
                    format!(
                        "one-time {role} token, valid for {} (only its hash is kept; it is not shown again).\n\
                         On the agent: pathpulse-agent enroll --aggregator HOST:PORT --token TOKEN --name NAME",
                        pathpulse_agent::config::fmt_dur(ttl)
                    ),
                ))
            }
            Some(api) => {
                let t = db.create_api_token(api, ttl)?;
                let valid = ttl.map_or("until revoked".to_string(), |d| {
                    format!("for {}", pathpulse_agent::config::fmt_dur(d))
                });
                Ok((
                    t.token,
                    format!(
                        "HTTP API {role} token `{}`, valid {valid} (only its hash is kept; it is not shown again).\n\
                         Use: curl -H 'Authorization: Bearer TOKEN' ...; in a browser open /?token=TOKEN once.\n\
                         Revoke: pathpulse-aggregator token revoke --id {} (or DELETE /api/tokens/{})",
                        t.id, t.id, t.id
                    ),
                ))
            }
        }
    });
    match made {
        Ok((token, note)) => {
            println!("{token}");
            eprintln!("{note}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
