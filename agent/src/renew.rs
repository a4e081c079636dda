//! Certificate renewal before expiry: once the agent's certificate is in the last third of
//! its validity, an uplink that has just connected asks its aggregator for a new one, on a
//! stream of its own, with a request signed by a new key. The new key and certificate
//! replace the files in `STATE_DIR/identity` and are used from the next connection. The
//! aggregator signs only for the identity of the certificate the connection presents, and
//! refuses a revoked one before that.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use pathpulse_wire::{ClientMsg, ServerMsg, frame, tls};

/// Uplinks to several aggregators renew one at a time; the first one's result is seen by
/// the others as "not due".
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_s() -> i64 {
    (crate::run::wall_ms() / 1000) as i64
}

/// Whether the certificate in `identity_dir` should be renewed now.
pub fn due(identity_dir: &Path) -> anyhow::Result<bool> {
    let crt = identity_dir.join(format!("{}.crt", tls::AGENT_STEM));
    let pem =
        std::fs::read_to_string(&crt).with_context(|| format!("reading {}", crt.display()))?;
    Ok(tls::renewal_due(tls::cert_validity_pem(&pem)?, now_s()))
}

/// Renew over `conn` when due. Returns the new certificate's serial and expiry (Unix s).
pub async fn renew_if_due(
    conn: &quinn::Connection,
    identity_dir: &Path,
    name: &str,
) -> anyhow::Result<Option<(String, i64)>> {
    let _one_at_a_time = LOCK.lock().await;
    if !due(identity_dir)? {
        return Ok(None);
    }
    let (key_pem, csr_pem) = tls::new_key_and_request(name)?;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
        frame::write(&mut send, &ClientMsg::Renew { csr_pem }).await?;
        send.finish().ok();
        let m = frame::read::<ServerMsg, _>(&mut recv, frame::DEFAULT_MAX_FRAME).await?;
        Ok::<_, anyhow::Error>(m)
    };
    let reply = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| anyhow!("no answer within 15 s"))??;
    let cert_pem = match reply {
        Some(ServerMsg::Renewed { cert_pem }) => cert_pem,
        Some(ServerMsg::Refused { reason, detail }) => {
            bail!("renewal refused ({}): {detail}", reason.as_str())
        }
        other => bail!("unexpected answer to a renewal: {other:?}"),
    };
    if !tls::key_matches_cert(&key_pem, &cert_pem) {
        bail!("the renewed certificate is not for the new key");
    }
    let stem = tls::AGENT_STEM;
    let (key_path, crt_path) = (
        identity_dir.join(format!("{stem}.key")),
        identity_dir.join(format!("{stem}.crt")),
    );
    // Both new files first, then the renames: a crash leaves the old pair or the new key
    // with the old certificate for an instant only.
    let (key_new, crt_new) = (
        identity_dir.join(format!("{stem}.key.new")),
        identity_dir.join(format!("{stem}.crt.new")),
    );
    crate::enroll::write_private(&key_new, &key_pem)?;
    std::fs::write(&crt_new, &cert_pem)
        .with_context(|| format!("writing {}", crt_new.display()))?;
    std::fs::rename(&key_new, &key_path)
        .with_context(|| format!("replacing {}", key_path.display()))?;
    std::fs::rename(&crt_new, &crt_path)
        .with_context(|| format!("replacing {}", crt_path.display()))?;
    let serial = tls::cert_serial_pem(&cert_pem)?;
    let (_, not_after) = tls::cert_validity_pem(&cert_pem)?;
    Ok(Some((serial, not_after)))
}
