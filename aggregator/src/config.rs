//! Aggregator configuration: TOML file, flags and `PATHPULSE_*` environment, validated
//! with every error collected (exit 78).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pathpulse_agent::config::{ConfigError, ConfigErrors, parse_duration};
use serde::Deserialize;

use crate::alert::config::{AlertArgs, AlertConfig, AlertFile};
use crate::auth::AuthMode;
use crate::limits::{DEFAULT_REGISTRATIONS, DEFAULT_REPORTS, Rate};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:4470";
pub const DEFAULT_HTTP: &str = "0.0.0.0:9470";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pathpulse";
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// The HTTP address, or a `[http]` table with it and the access settings.
    pub http: Option<HttpFile>,
    pub state_dir: Option<PathBuf>,
    /// Extra names and addresses for the server certificate.
    pub server_names: Option<Vec<String>>,
    pub stale_after: Option<String>,
    pub max_connections: Option<usize>,
    /// Alert rules and receivers.
    pub alert: Option<AlertFile>,
    pub remote_write: Option<RemoteWriteFile>,
    /// Cardinality budget: paths with per-path series (roll-ups always cover all).
    pub path_budget: Option<usize>,
    /// A path no report carried for this long is pruned (a removed target, a departed
    /// peer); "0s" keeps paths forever.
    pub prune_after: Option<String>,
    /// Mesh membership and peer lists.
    pub mesh: Option<crate::mesh::MeshFile>,
    /// Per-agent rate limits.
    pub rate_limit: Option<RateLimitFile>,
}

/// `[rate_limit]`: per agent identity, token buckets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub reports_per_second: Option<f64>,
    pub report_burst: Option<u32>,
    pub registrations_per_minute: Option<f64>,
    pub registration_burst: Option<u32>,
}

/// `http = "ADDR"`, or `[http]` with `listen`, `auth` and `metrics_auth`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum HttpFile {
    Addr(String),
    Table(HttpTable),
}

impl TryFrom<toml::Value> for HttpFile {
    type Error = String;

    fn try_from(v: toml::Value) -> Result<HttpFile, String> {
        match v {
            toml::Value::String(s) => Ok(HttpFile::Addr(s)),
            t @ toml::Value::Table(_) => t
                .try_into::<HttpTable>()
                .map(HttpFile::Table)
                .map_err(|e| format!("[http]: {}", e.message())),
            other => Err(format!(
                "`http` is an address (\"0.0.0.0:9470\") or a table (got {})",
                other.type_str()
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTable {
    pub listen: Option<String>,
    /// "open" or "token": whether the page and `/api/*` reads need a token.
    pub auth: Option<String>,
    /// "open" or "token": whether `/metrics` needs a token.
    pub metrics_auth: Option<String>,
}

/// `[remote_write]`: push every series to a Prometheus-compatible store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteFile {
    pub url: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub queue_limit: Option<usize>,
    pub external_labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Clone, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "PATHPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// QUIC address agents report to.
    #[arg(long, value_name = "ADDR", env = "PATHPULSE_LISTEN")]
    pub listen: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz, the page / and its /api.
    #[arg(long, value_name = "ADDR", env = "PATHPULSE_HTTP")]
    pub http: Option<String>,
    /// Directory for the CA, the server certificate and state.
    #[arg(long, value_name = "DIR", env = "PATHPULSE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// An agent is down when no report arrived for this long, e.g. 30s.
    #[arg(long, value_name = "DUR", env = "PATHPULSE_STALE_AFTER")]
    pub stale_after: Option<String>,
    /// "open" or "token": whether the page and /api reads need a bearer token (default:
    /// open when --http is a loopback address, token otherwise). Writes always need an
    /// admin token.
    #[arg(long, value_name = "MODE", env = "PATHPULSE_HTTP_AUTH")]
    pub http_auth: Option<String>,
    /// "open" or "token": whether /metrics needs a bearer token (default: open).
    #[arg(long, value_name = "MODE", env = "PATHPULSE_METRICS_AUTH")]
    pub metrics_auth: Option<String>,
    #[command(flatten)]
    pub alert: AlertArgs,
    /// Push every series to this Prometheus remote-write URL (Mimir, Thanos Receive,
    /// VictoriaMetrics, Prometheus with --web.enable-remote-write-receiver).
    #[arg(long, value_name = "URL", env = "PATHPULSE_REMOTE_WRITE")]
    pub remote_write: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorConfig {
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub state_dir: PathBuf,
    pub server_names: Vec<String>,
    pub stale_after: Duration,
    pub max_connections: usize,
    pub alert: AlertConfig,
    pub remote_write: Option<crate::remote_write::RemoteWriteConfig>,
    pub path_budget: Option<usize>,
    /// None: paths are never pruned.
    pub prune_after: Option<Duration>,
    pub mesh: crate::mesh::MeshConfig,
    /// Whether the page and `/api/*` reads need a token.
    pub http_auth: AuthMode,
    /// Whether `/metrics` needs a token.
    pub metrics_auth: AuthMode,
    /// Reports per agent.
    pub report_rate: Rate,
    /// Registrations (hellos) per agent.
    pub registration_rate: Rate,
}

/// Paths not reported for this long are pruned.
pub const DEFAULT_PRUNE_AFTER: Duration = Duration::from_secs(600);

impl AggregatorConfig {
    pub fn resolve(args: &RunArgs) -> Result<AggregatorConfig, ConfigErrors> {
        let text = match &args.config {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| one("config", format!("cannot read {}: {e}", p.display())))?,
            ),
            None => None,
        };
        AggregatorConfig::resolve_text(args, text.as_deref())
    }

    /// As [`AggregatorConfig::resolve`] with the configuration file's text given (`None`:
    /// no file); `args.config` only names the file in errors. Reads no file itself.
    pub fn resolve_text(
        args: &RunArgs,
        text: Option<&str>,
    ) -> Result<AggregatorConfig, ConfigErrors> {
        let name = args
            .config
            .as_deref()
            .map_or_else(|| "config".to_string(), |p| p.display().to_string());
        let mut file = match text {
            Some(text) => toml::from_str::<FileConfig>(text)
                .map_err(|e| one("config", format!("{name}: {}", e.to_string().trim_end())))?,
            None => FileConfig::default(),
        };
        let mut errs = Vec::new();
        let mut addr = |key: &str, v: Option<&str>, default: &str| -> SocketAddr {
            let s = v.unwrap_or(default);
            s.parse().unwrap_or_else(|_| {
                errs.push(ConfigError {
                    key: key.into(),
                    reason: format!("`{s}` is not an address like 0.0.0.0:4470 or [::]:4470"),
                });
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let listen = addr(
            "listen",
            args.listen.as_deref().or(file.listen.as_deref()),
            DEFAULT_LISTEN,
        );
        let http_table = match file.http.take() {
            Some(HttpFile::Addr(a)) => HttpTable {
                listen: Some(a),
                ..HttpTable::default()
            },
            Some(HttpFile::Table(t)) => t,
            None => HttpTable::default(),
        };
        let http = addr(
            "http",
            args.http.as_deref().or(http_table.listen.as_deref()),
            DEFAULT_HTTP,
        );
        let mut mode = |key: &str, v: Option<&str>, default: AuthMode| match v {
            None => default,
            Some(s) => AuthMode::parse(s).unwrap_or_else(|| {
                errs.push(ConfigError {
                    key: key.into(),
                    reason: format!("`{s}` is not \"open\" or \"token\""),
                });
                default
            }),
        };
        // Open where only this host can reach it (the demo, a test); tokens elsewhere.
        let auth_default = if http.ip().is_loopback() {
            AuthMode::Open
        } else {
            AuthMode::Token
        };
        let http_auth = mode(
            "http.auth",
            args.http_auth.as_deref().or(http_table.auth.as_deref()),
            auth_default,
        );
        let metrics_auth = mode(
            "http.metrics_auth",
            args.metrics_auth
                .as_deref()
                .or(http_table.metrics_auth.as_deref()),
            AuthMode::Open,
        );
        let stale_after = match args.stale_after.as_deref().or(file.stale_after.as_deref()) {
            None => DEFAULT_STALE_AFTER,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                errs.push(ConfigError {
                    key: "stale_after".into(),
                    reason: e,
                });
                DEFAULT_STALE_AFTER
            }),
        };
        let max_connections = file.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            errs.push(ConfigError {
                key: "max_connections".into(),
                reason: "must be at least 1".into(),
            });
        }
        let alert = AlertConfig::resolve(file.alert.as_ref(), &args.alert).unwrap_or_else(|e| {
            errs.extend(e);
            AlertConfig::default()
        });
        if file.path_budget == Some(0) {
            errs.push(ConfigError {
                key: "path_budget".into(),
                reason: "must be at least 1 (leave it out for no limit)".into(),
            });
        }
        let prune_after = match file.prune_after.as_deref().map(parse_duration) {
            None => Some(DEFAULT_PRUNE_AFTER),
            Some(Ok(d)) if d.is_zero() => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                errs.push(ConfigError {
                    key: "prune_after".into(),
                    reason: e,
                });
                None
            }
        };
        let mesh = crate::mesh::MeshConfig::resolve(file.mesh.as_ref()).unwrap_or_else(|e| {
            errs.extend(e);
            Default::default()
        });
        let rl = file.rate_limit.take().unwrap_or_default();
        let mut positive = |key: &str, v: Option<f64>, default: f64| match v {
            None => default,
            Some(x) if x.is_finite() && x > 0.0 => x,
            Some(x) => {
                errs.push(ConfigError {
                    key: format!("rate_limit.{key}"),
                    reason: format!("{x} is not a positive number"),
                });
                default
            }
        };
        let report_rate = Rate {
            per_second: positive(
                "reports_per_second",
                rl.reports_per_second,
                DEFAULT_REPORTS.per_second,
            ),
            burst: positive(
                "report_burst",
                rl.report_burst.map(f64::from),
                DEFAULT_REPORTS.burst,
            ),
        };
        let registration_rate = Rate {
            per_second: positive(
                "registrations_per_minute",
                rl.registrations_per_minute,
                DEFAULT_REGISTRATIONS.per_second * 60.0,
            ) / 60.0,
            burst: positive(
                "registration_burst",
                rl.registration_burst.map(f64::from),
                DEFAULT_REGISTRATIONS.burst,
            ),
        };
        let rw = file.remote_write.take().unwrap_or_default();
        let remote_write = match args.remote_write.clone().or(rw.url) {
            None => None,
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    errs.push(ConfigError {
                        key: "remote_write.url".into(),
                        reason: format!("`{url}` is not an http:// or https:// URL"),
                    });
                }
                let mut dur = |key: &str, v: Option<String>, default: Duration| match v {
                    None => default,
                    Some(s) => parse_duration(&s)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .unwrap_or_else(|| {
                            errs.push(ConfigError {
                                key: key.into(),
                                reason: format!("`{s}` is not a duration like 15s"),
                            });
                            default
                        }),
                };
                let interval = dur(
                    "remote_write.interval",
                    rw.interval,
                    crate::remote_write::DEFAULT_INTERVAL,
                );
                let timeout = dur(
                    "remote_write.timeout",
                    rw.timeout,
                    crate::remote_write::DEFAULT_TIMEOUT,
                );
                Some(crate::remote_write::RemoteWriteConfig {
                    url,
                    interval,
                    timeout,
                    external_labels: rw.external_labels.unwrap_or_default().into_iter().collect(),
                    queue_limit: rw
                        .queue_limit
                        .unwrap_or(crate::remote_write::DEFAULT_QUEUE_LIMIT),
                })
            }
        };
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        Ok(AggregatorConfig {
            listen,
            http,
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            server_names: file.server_names.unwrap_or_default(),
            stale_after,
            max_connections,
            alert,
            remote_write,
            path_budget: file.path_budget,
            prune_after,
            mesh,
            http_auth,
            metrics_auth,
            report_rate,
            registration_rate,
        })
    }
}

fn one(key: &str, reason: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.into(),
        reason,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_all_reported() {
        let a = RunArgs {
            listen: Some("nope".into()),
            http: Some("1.2.3.4".into()),
            stale_after: Some("soon".into()),
            ..RunArgs::default()
        };
        let e = AggregatorConfig::resolve(&a).expect_err("invalid");
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["listen", "http", "stale_after"]);
    }

    #[test]
    fn http_auth_defaults_to_open_on_loopback_only_and_bad_modes_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = |text: &str, http: Option<&str>| {
            let p = dir.path().join("agg.toml");
            std::fs::write(&p, text).expect("write");
            AggregatorConfig::resolve(&RunArgs {
                config: Some(p),
                http: http.map(String::from),
                ..RunArgs::default()
            })
        };
        let c = cfg("", Some("127.0.0.1:9470")).expect("valid");
        assert_eq!(
            (c.http_auth, c.metrics_auth),
            (AuthMode::Open, AuthMode::Open)
        );
        let c = cfg("http = \"0.0.0.0:9470\"\n", None).expect("valid");
        assert_eq!(
            (c.http_auth, c.metrics_auth),
            (AuthMode::Token, AuthMode::Open)
        );
        let c = cfg(
            "[http]\nlisten = \"[::1]:1\"\nauth = \"token\"\nmetrics_auth = \"token\"\n",
            None,
        )
        .expect("valid");
        assert_eq!(c.http.port(), 1);
        assert_eq!(
            (c.http_auth, c.metrics_auth),
            (AuthMode::Token, AuthMode::Token)
        );
        let e = cfg("[http]\nauth = \"maybe\"\n", None).expect_err("bad mode");
        assert!(e.to_string().contains("http.auth"), "{e}");
        let e = cfg("[http]\nauht = \"open\"\n", None).expect_err("unknown key");
        assert!(e.to_string().contains("auht"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("agg.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:0\"\nlisten_port = 5\n").expect("write");
        let e = AggregatorConfig::resolve(&RunArgs {
            config: Some(p),
            ..RunArgs::default()
        })
        .expect_err("unknown key");
        assert!(e.to_string().contains("listen_port"), "{e}");
    }

    #[test]
    fn the_shipped_example_states_the_defaults() {
        let text = include_str!("../../packaging/aggregator.toml");
        let f: FileConfig = toml::from_str(text).expect("packaging/aggregator.toml parses");
        assert_eq!(f.listen.as_deref(), Some(DEFAULT_LISTEN));
        let Some(HttpFile::Table(h)) = &f.http else {
            panic!("[http] table expected");
        };
        assert_eq!(h.listen.as_deref(), Some(DEFAULT_HTTP));
        assert_eq!(h.metrics_auth.as_deref(), Some("open"));
        assert_eq!(f.state_dir, Some(PathBuf::from(DEFAULT_STATE_DIR)));
        let stale = parse_duration(&f.stale_after.expect("stale_after")).expect("duration");
        assert_eq!(stale, DEFAULT_STALE_AFTER);
        assert_eq!(f.max_connections, Some(DEFAULT_MAX_CONNECTIONS));
        let mesh = crate::mesh::MeshConfig::resolve(f.mesh.as_ref()).expect("valid [mesh]");
        assert_eq!(mesh, crate::mesh::MeshConfig::default());
        let alert = AlertConfig::resolve(f.alert.as_ref(), &AlertArgs::default()).expect("valid");
        assert_eq!(alert, AlertConfig::default());
        let a = f.alert.expect("[alert]");
        let (q, m) = (a.queue, a.max_attempts);
        assert_eq!(
            (q, m),
            (
                Some(crate::alert::deliver::DEFAULT_QUEUE),
                Some(crate::alert::deliver::DEFAULT_MAX_ATTEMPTS)
            )
        );
        let t = parse_duration(&a.timeout.expect("timeout")).expect("duration");
        assert_eq!(t, crate::alert::deliver::DEFAULT_TIMEOUT);
    }
}
