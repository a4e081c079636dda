//! The aggregator's CA (made at first start under the state directory) and the
//! certificates it issues: its own server certificate and agent identities.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use pathpulse_wire::tls::{self, Ca, IssuedCert};

pub const CA_DIR: &str = "ca";
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn ca_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(CA_DIR)
}

/// Load the CA, creating it on first start.
pub fn load_ca(state_dir: &Path) -> anyhow::Result<Ca> {
    let dir = ca_dir(state_dir);
    Ca::load_or_create(&dir).with_context(|| format!("CA in {}", dir.display()))
}

/// A fresh server certificate for this start.
pub fn server_identity(ca: &Ca, names: &[String]) -> anyhow::Result<IssuedCert> {
    Ok(ca.issue_server(names, SERVER_CERT_VALIDITY)?)
}

/// Write an agent identity (certificate, key, CA certificate) into `out`, the agent's
/// `STATE_DIR/identity`.
pub fn issue_agent(ca: &Ca, name: &str, out: &Path) -> anyhow::Result<()> {
    issue_agent_for(ca, name, out, AGENT_CERT_VALIDITY)
}

/// As [`issue_agent`], valid for `valid_for` (from an hour ago, for clocks behind).
pub fn issue_agent_for(ca: &Ca, name: &str, out: &Path, valid_for: Duration) -> anyhow::Result<()> {
    let cert = ca.issue_agent(name, valid_for)?;
    cert.write_to(out, tls::AGENT_STEM)
        .with_context(|| format!("writing the identity to {}", out.display()))?;
    tls::write_ca_pem(out, ca.cert_pem())
        .with_context(|| format!("writing the CA certificate to {}", out.display()))?;
    Ok(())
}

/// As [`issue_agent`], recording the certificate in the state database (so that
/// `cert revoke --name` finds it).
pub fn issue_agent_recorded(
    state_dir: &Path,
    ca: &Ca,
    name: &str,
    out: &Path,
    valid_for: Duration,
) -> anyhow::Result<()> {
    let db = crate::state::StateDb::open(state_dir)?;
    issue_agent_for(ca, name, out, valid_for)?;
    let cert = std::fs::read_to_string(out.join(format!("{}.crt", tls::AGENT_STEM)))
        .with_context(|| format!("reading back the certificate in {}", out.display()))?;
    db.record_issued(&cert, name, "cert issue")
}
