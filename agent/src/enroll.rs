//! `pathpulse-agent enroll`: exchange a one-time token for a certificate. The agent makes
//! its key here (it never leaves the machine), sends a certificate request over a QUIC
//! connection without a client certificate (ALPN `pathpulse-enroll/1`), and trusts the
//! aggregator only if its CA has the fingerprint the token carries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use pathpulse_wire::message::MAX_ENROLL_FRAME;
use pathpulse_wire::tls::{self, EnrollToken};
use pathpulse_wire::{EnrollReply, EnrollRequest, frame};

/// What an enrollment wrote.
#[derive(Debug)]
pub struct Enrolled {
    pub identity_dir: PathBuf,
    pub serial: String,
}

/// Why an enrollment failed: the aggregator's answer, or anything before it.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Usage(String),
    #[error("the aggregator refused ({reason}): {detail}")]
    Refused {
        reason: &'static str,
        detail: String,
    },
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for EnrollError {
    fn from(e: anyhow::Error) -> Self {
        EnrollError::Failed(e)
    }
}

pub(crate) fn write_private(path: &Path, data: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Enroll as `name` with `aggregator` (HOST:PORT) and write the identity into
/// `identity_dir` (`agent.key`, `agent.crt`, `ca.crt`). An existing identity is kept
/// unless `force`.
pub async fn enroll(
    aggregator: &str,
    token: &str,
    name: &str,
    identity_dir: &Path,
    force: bool,
) -> Result<Enrolled, EnrollError> {
    let token = EnrollToken::parse(token).map_err(EnrollError::Usage)?;
    tls::validate_agent_name(name).map_err(|e| EnrollError::Usage(e.to_string()))?;
    let crt = identity_dir.join(format!("{}.crt", tls::AGENT_STEM));
    if crt.exists() && !force {
        return Err(EnrollError::Usage(format!(
            "{} exists already (this agent has an identity); pass --force to replace it",
            crt.display()
        )));
    }
    let (key_pem, csr_pem) = tls::new_key_and_request(name).map_err(|e| anyhow!(e))?;
    let reply = exchange(
        aggregator,
        &token,
        EnrollRequest {
            secret: token.secret.clone(),
            name: name.to_string(),
            csr_pem,
        },
    )
    .await?;
    let (cert_pem, ca_pem) = match reply {
        EnrollReply::Issued { cert_pem, ca_pem } => (cert_pem, ca_pem),
        EnrollReply::Refused { reason, detail } => {
            return Err(EnrollError::Refused {
                reason: reason.as_str(),
                detail,
            });
        }
    };
    // The CA sent must be the one the token names, and the certificate ours.
    if tls::ca_fingerprint(&ca_pem).map_err(|e| anyhow!(e))? != token.ca_fingerprint {
        return Err(anyhow!("the aggregator sent another CA than the token names").into());
    }
    if !tls::key_matches_cert(&key_pem, &cert_pem) {
        return Err(anyhow!("the certificate received is not for this agent's key").into());
    }
    std::fs::create_dir_all(identity_dir)
        .with_context(|| format!("creating {}", identity_dir.display()))?;
    write_private(
        &identity_dir.join(format!("{}.key", tls::AGENT_STEM)),
        &key_pem,
    )?;
    tls::write_ca_pem(identity_dir, &ca_pem).map_err(|e| anyhow!(e))?;
    std::fs::write(&crt, &cert_pem).with_context(|| format!("writing {}", crt.display()))?;
    Ok(Enrolled {
        identity_dir: identity_dir.to_path_buf(),
        serial: tls::cert_serial_pem(&cert_pem).unwrap_or_default(),
    })
}

async fn exchange(
    aggregator: &str,
    token: &EnrollToken,
    req: EnrollRequest,
) -> anyhow::Result<EnrollReply> {
    let addr: SocketAddr = tokio::net::lookup_host(aggregator)
        .await
        .with_context(|| format!("resolving {aggregator}"))?
        .next()
        .ok_or_else(|| anyhow!("{aggregator} has no address"))?;
    let rustls_cfg = tls::enroll_client_config(&token.ca_fingerprint)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)
        .map_err(|e| anyhow!("QUIC TLS configuration: {e}"))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(10).try_into()?));
    cfg.transport_config(Arc::new(transport));
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let endpoint = quinn::Endpoint::client(bind).context("opening the QUIC socket")?;
    let result = async {
        let conn = endpoint
            .connect_with(cfg, addr, tls::SERVER_NAME)?
            .await
            .map_err(|e| match e {
                quinn::ConnectionError::TransportError(t)
                    if t.to_string().contains("fingerprint") =>
                {
                    anyhow!(
                        "{aggregator} is not the aggregator this token was made for: its CA does not match the token's fingerprint"
                    )
                }
                other => anyhow!("QUIC handshake with {addr}: {other}"),
            })?;
        let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
        frame::write(&mut send, &req).await?;
        send.finish().ok();
        let reply = frame::read::<EnrollReply, _>(&mut recv, MAX_ENROLL_FRAME)
            .await?
            .ok_or_else(|| anyhow!("the aggregator closed the connection without an answer"))?;
        conn.close(0u32.into(), b"thanks");
        Ok::<_, anyhow::Error>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(20), result)
        .await
        .map_err(|_| anyhow!("no answer from {aggregator} within 20 s"))??;
    tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle())
        .await
        .ok();
    Ok(reply)
}
