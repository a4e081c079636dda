//! `[mesh]` of the aggregator's configuration.

use std::time::Duration;

use pathpulse_agent::config::{ConfigError, parse_duration};
use serde::Deserialize;

/// Peers per other site unless configured.
pub const DEFAULT_PEERS_PER_SITE: usize = 3;
/// How long a member may be disconnected before it leaves the peer lists.
pub const DEFAULT_LEAVE_AFTER: Duration = Duration::from_secs(30);

/// The file form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// Hand every agent its peer list (default false: agents probe only their targets).
    pub enabled: Option<bool>,
    /// Agents of each other site that an agent probes; 0: all of them (full mesh).
    pub peers_per_site: Option<usize>,
    /// A disconnected agent leaves the peer lists after this long, and its paths go.
    pub leave_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    pub enabled: bool,
    /// `None`: full mesh.
    pub peers_per_site: Option<usize>,
    pub leave_after: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            enabled: false,
            peers_per_site: Some(DEFAULT_PEERS_PER_SITE),
            leave_after: DEFAULT_LEAVE_AFTER,
        }
    }
}

impl MeshConfig {
    /// Validate `[mesh]`; errors name the key.
    pub fn resolve(f: Option<&MeshFile>) -> Result<MeshConfig, Vec<ConfigError>> {
        let d = MeshConfig::default();
        let Some(f) = f else { return Ok(d) };
        let mut errs = Vec::new();
        let leave_after = match f.leave_after.as_deref().map(parse_duration) {
            None => d.leave_after,
            Some(Ok(v)) if !v.is_zero() => v,
            Some(Ok(_)) => {
                errs.push(ConfigError {
                    key: "mesh.leave_after".into(),
                    reason: "must be longer than 0s".into(),
                });
                d.leave_after
            }
            Some(Err(e)) => {
                errs.push(ConfigError {
                    key: "mesh.leave_after".into(),
                    reason: e,
                });
                d.leave_after
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(MeshConfig {
            enabled: f.enabled.unwrap_or(d.enabled),
            peers_per_site: match f.peers_per_site {
                None => d.peers_per_site,
                Some(0) => None,
                Some(k) => Some(k),
            },
            leave_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_resolve_and_bad_values_name_the_key() {
        let f: MeshFile =
            toml::from_str("enabled = true\npeers_per_site = 0\nleave_after = \"5s\"")
                .expect("parses");
        let c = MeshConfig::resolve(Some(&f)).expect("valid");
        assert_eq!(
            (c.enabled, c.peers_per_site, c.leave_after),
            (true, None, Duration::from_secs(5))
        );
        let f: MeshFile = toml::from_str("leave_after = \"soon\"").expect("parses");
        let e = MeshConfig::resolve(Some(&f)).expect_err("invalid");
        assert_eq!(e[0].key, "mesh.leave_after");
        assert!(toml::from_str::<MeshFile>("peers = 3").is_err());
        assert_eq!(MeshConfig::resolve(None), Ok(MeshConfig::default()));
    }
}
