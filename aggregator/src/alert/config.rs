//! The `[alert]` table of the aggregator's configuration file, and the `--webhook`,
//! `--alertmanager` and `--external-url` flags. With none of them the default rules run
//! and alerts show in `GET /api/alerts` and `pathpulse_alerts_firing`.

use std::time::Duration;

use pathpulse_agent::config::{ConfigError, parse_duration};
use serde::Deserialize;

use super::deliver::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, DEFAULT_RESEND_INTERVAL, DEFAULT_TIMEOUT, ReceiverConfig,
    ReceiverKind,
};
use super::rules::{Rule, RuleConfig, resolve_rules};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertFile {
    /// Generic webhooks (Alertmanager webhook JSON).
    pub webhooks: Option<Vec<String>>,
    /// Alertmanager base URLs (`http://am:9093`); alerts go to `/api/v2/alerts`.
    pub alertmanagers: Option<Vec<String>>,
    /// Base URL of this aggregator's pages, for links in notifications.
    pub external_url: Option<String>,
    pub resend_interval: Option<String>,
    /// Per-request timeout of every receiver.
    pub timeout: Option<String>,
    /// Notifications queued per receiver at most.
    pub queue: Option<usize>,
    /// Attempts per notification (first try included).
    pub max_attempts: Option<u32>,
    /// Keep the built-in rules (default true); `[[alert.rules]]` change or add to them.
    pub default_rules: Option<bool>,
    pub rules: Option<Vec<RuleConfig>>,
}

/// Flags that add receivers on the command line (they replace the file's lists).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct AlertArgs {
    /// Send alerts to this webhook (Alertmanager webhook JSON); repeatable.
    #[arg(
        long = "webhook",
        value_name = "URL",
        env = "PATHPULSE_WEBHOOKS",
        value_delimiter = ','
    )]
    pub webhooks: Vec<String>,
    /// Push alerts to this Alertmanager (`http://host:9093`); repeatable.
    #[arg(
        long = "alertmanager",
        value_name = "URL",
        env = "PATHPULSE_ALERTMANAGERS",
        value_delimiter = ','
    )]
    pub alertmanagers: Vec<String>,
    /// Base URL of this aggregator's pages, for links in alerts (default: from --http).
    #[arg(long, value_name = "URL", env = "PATHPULSE_EXTERNAL_URL")]
    pub external_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertConfig {
    pub rules: Vec<Rule>,
    pub receivers: Vec<ReceiverConfig>,
    pub external_url: Option<String>,
    pub resend_interval: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            rules: Rule::defaults(),
            receivers: vec![],
            external_url: None,
            resend_interval: DEFAULT_RESEND_INTERVAL,
        }
    }
}

fn url_ok(u: &str) -> Result<(), String> {
    match reqwest::Url::parse(u) {
        Ok(p) if (p.scheme() == "http" || p.scheme() == "https") && p.host().is_some() => Ok(()),
        _ => Err(format!("`{u}` is not an http:// or https:// URL")),
    }
}

impl AlertConfig {
    /// Resolve the file's `[alert]` table and the flags, collecting every error.
    pub fn resolve(
        file: Option<&AlertFile>,
        args: &AlertArgs,
    ) -> Result<AlertConfig, Vec<ConfigError>> {
        let empty = AlertFile::default();
        let f = file.unwrap_or(&empty);
        let mut errs = Vec::new();
        let mut err = |key: String, reason: String| errs.push(ConfigError { key, reason });
        let rules = match resolve_rules(
            f.rules.as_deref().unwrap_or_default(),
            f.default_rules.unwrap_or(true),
        ) {
            Ok(r) => r,
            Err(e) => {
                for x in e {
                    err(x.key, x.reason);
                }
                vec![]
            }
        };
        let dur = |key: &str, v: &Option<String>, d: Duration, errs: &mut Vec<ConfigError>| match v
        {
            None => d,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                errs.push(ConfigError {
                    key: format!("alert.{key}"),
                    reason: e,
                });
                d
            }),
        };
        let resend_interval = dur(
            "resend_interval",
            &f.resend_interval,
            DEFAULT_RESEND_INTERVAL,
            &mut errs,
        );
        let timeout = dur("timeout", &f.timeout, DEFAULT_TIMEOUT, &mut errs);
        let mut err = |key: String, reason: String| errs.push(ConfigError { key, reason });
        let queue = f.queue.unwrap_or(DEFAULT_QUEUE);
        if queue == 0 {
            err("alert.queue".into(), "must be at least 1".into());
        }
        let max_attempts = f.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            err("alert.max_attempts".into(), "must be at least 1".into());
        }
        let pick = |flag: &Vec<String>, file: &Option<Vec<String>>| {
            if flag.is_empty() {
                file.clone().unwrap_or_default()
            } else {
                flag.clone()
            }
        };
        let mut receivers = Vec::new();
        for (key, kind, urls) in [
            (
                "webhooks",
                ReceiverKind::Webhook,
                pick(&args.webhooks, &f.webhooks),
            ),
            (
                "alertmanagers",
                ReceiverKind::Alertmanager,
                pick(&args.alertmanagers, &f.alertmanagers),
            ),
        ] {
            for (i, u) in urls.iter().enumerate() {
                match url_ok(u) {
                    Ok(()) => {
                        let mut r = ReceiverConfig::new(kind, u);
                        r.timeout = timeout;
                        r.queue = queue;
                        r.max_attempts = max_attempts;
                        if receivers.iter().any(|o: &ReceiverConfig| o.name == r.name) {
                            r.name = format!("{}#{}", r.name, i + 1);
                        }
                        receivers.push(r);
                    }
                    Err(e) => err(format!("alert.{key}[{i}]"), e),
                }
            }
        }
        let external_url = args.external_url.clone().or(f.external_url.clone());
        if let Some(u) = &external_url
            && let Err(e) = url_ok(u)
        {
            err("alert.external_url".into(), e);
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(AlertConfig {
            rules,
            receivers,
            external_url,
            resend_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_add_receivers_and_errors_are_collected() {
        let args = AlertArgs {
            webhooks: vec!["http://127.0.0.1:9/hook".into(), "ftp://x".into()],
            alertmanagers: vec!["http://am:9093/".into()],
            external_url: None,
        };
        let e = AlertConfig::resolve(None, &args).expect_err("ftp");
        assert_eq!(e[0].key, "alert.webhooks[1]");
        let args = AlertArgs {
            webhooks: vec!["http://127.0.0.1:9/hook".into()],
            ..args
        };
        let c = AlertConfig::resolve(None, &args).expect("valid");
        assert_eq!(c.rules, Rule::defaults());
        let names: Vec<&str> = c.receivers.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["webhook:127.0.0.1:9", "alertmanager:am:9093"]);
        assert_eq!(c.receivers[1].url, "http://am:9093");
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The `[alert]` example in README.md is a valid configuration.
    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\n[alert]")
            .expect("README has the [alert] example")
            + 8;
        let len = readme[start..].find("```").expect("closing fence");
        #[derive(Deserialize)]
        struct File {
            alert: AlertFile,
        }
        let f: File = toml::from_str(&readme[start..start + len]).expect("README example parses");
        let c = AlertConfig::resolve(Some(&f.alert), &AlertArgs::default()).expect("valid");
        assert!(c.rules.iter().any(|r| r.name == "WanLatency"));
        assert!(!c.rules.iter().any(|r| r.name == "PathpulseJitterHigh"));
        assert_eq!(c.receivers.len(), 3);
    }
}
