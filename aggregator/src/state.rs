//! The aggregator's durable state, `STATE_DIR/aggregator.redb`: enrollment tokens (only a
//! hash of each secret is stored), the agent certificates issued (by serial) and the
//! revoked ones; the HTTP API's tokens too (`tokens`). Opened by the running aggregator and by the `token` and `cert` commands
//! at the same time (redb's multi-writer mode), so a token made or a certificate revoked
//! while the aggregator runs takes effect at the next enrollment or connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use pathpulse_wire::tls;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "aggregator.redb";
/// Default lifetime of an enrollment token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Roles a token may carry: `agent` (one-time enrollment) and the HTTP API's `read` and
/// `admin` (see `tokens`).
pub const TOKEN_ROLES: [&str; 3] = ["agent", "read", "admin"];

/// SHA-256 of the token secret → [`TokenRecord`].
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Certificate serial (hex) → [`IssuedRecord`].
const ISSUED: TableDefinition<&str, &[u8]> = TableDefinition::new("issued");
/// Certificate serial (hex) → when it was revoked (ms since the epoch).
const REVOKED: TableDefinition<&str, u64> = TableDefinition::new("revoked");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub role: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// When and for which name it was used; a token is used once.
    pub used: Option<(u64, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub name: String,
    pub issued_ms: u64,
    /// `cert issue`, `enroll` or `renew`.
    pub how: String,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown token (mistyped, or made by another aggregator)")]
    Unknown,
    #[error(
        "token already used{0} (tokens are one-time: make a new one with `pathpulse-aggregator token create`)"
    )]
    Used(String),
    #[error(
        "token expired {0} s ago (make a new one with `pathpulse-aggregator token create --ttl DUR`)"
    )]
    Expired(u64),
    #[error("token role `{0}` cannot enroll an agent")]
    Role(String),
}

pub fn now_ms() -> u64 {
    pathpulse_metrics::export::wall_clock_ms()
}

pub use tls::EnrollToken as Token;

fn secret_hash(secret: &str) -> String {
    tls::sha256_hex(secret.to_ascii_lowercase().as_bytes())
}

pub struct StateDb {
    pub(crate) db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.path).finish()
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

impl StateDb {
    pub fn open(state_dir: &Path) -> anyhow::Result<StateDb> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let path = state_dir.join(STATE_FILE);
        let db = redb::Builder::new()
            .set_cache_size(8 << 20)
            .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
            .create(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(TOKENS)?;
        txn.open_table(ISSUED)?;
        txn.open_table(REVOKED)?;
        txn.open_table(crate::tokens::API_TOKENS)?;
        txn.commit()?;
        Ok(StateDb { db, path })
    }

    /// A new one-time token for `role`, valid for `ttl`; only its hash is stored.
    pub fn create_token(&self, role: &str, ttl: Duration, ca_pem: &str) -> anyhow::Result<Token> {
        if role != "agent" {
            bail!("role `{role}` does not enroll agents (API tokens: `create_api_token`)");
        }
        use ring::rand::SecureRandom;
        let mut b = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let secret: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let now = now_ms();
        let rec = TokenRecord {
            role: role.into(),
            created_ms: now,
            expires_ms: now.saturating_add(ttl.as_millis().min(u128::from(u64::MAX)) as u64),
            used: None,
        };
        let txn = self.db.begin_write()?;
        txn.open_table(TOKENS)?
            .insert(secret_hash(&secret).as_str(), enc(&rec).as_slice())?;
        txn.commit()?;
        Ok(Token {
            secret,
            ca_fingerprint: tls::ca_fingerprint(ca_pem)?,
        })
    }

    /// Redeem a token for `name`: if it is valid, `issue` runs and the token is marked used
    /// in the same transaction, so a token never yields two certificates.
    pub fn redeem<T>(
        &self,
        secret: &str,
        name: &str,
        issue: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<Result<T, TokenError>> {
        let now = now_ms();
        let key = secret_hash(secret);
        let txn = self.db.begin_write()?;
        let out = {
            let mut tokens = txn.open_table(TOKENS)?;
            let rec: Option<TokenRecord> = tokens
                .get(key.as_str())?
                .and_then(|v| postcard::from_bytes(v.value()).ok());
            match rec {
                None => Err(TokenError::Unknown),
                Some(TokenRecord {
                    used: Some((when, by)),
                    ..
                }) => Err(TokenError::Used(format!(
                    " {} s ago by `{by}`",
                    now.saturating_sub(when) / 1000
                ))),
                Some(r) if r.expires_ms <= now => {
                    Err(TokenError::Expired((now - r.expires_ms) / 1000))
                }
                Some(r) if r.role != "agent" => Err(TokenError::Role(r.role)),
                Some(mut r) => {
                    let v = issue()?;
                    r.used = Some((now, name.to_string()));
                    tokens.insert(key.as_str(), enc(&r).as_slice())?;
                    Ok(v)
                }
            }
        };
        if out.is_ok() {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(out)
    }

    /// Remember a certificate issued to `name`.
    pub fn record_issued(&self, cert_pem: &str, name: &str, how: &str) -> anyhow::Result<()> {
        let serial = tls::cert_serial_pem(cert_pem)?;
        let rec = IssuedRecord {
            name: name.into(),
            issued_ms: now_ms(),
            how: how.into(),
        };
        let txn = self.db.begin_write()?;
        txn.open_table(ISSUED)?
            .insert(serial.as_str(), enc(&rec).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Revoke every certificate issued to `name` so far. Returns their serials.
    pub fn revoke_name(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let now = now_ms();
        let txn = self.db.begin_write()?;
        let serials: Vec<String> = {
            let issued = txn.open_table(ISSUED)?;
            let mut v = Vec::new();
            for item in issued.iter()? {
                let (k, val) = item?;
                if postcard::from_bytes::<IssuedRecord>(val.value()).is_ok_and(|r| r.name == name) {
                    v.push(k.value().to_string());
                }
            }
            v
        };
        {
            let mut revoked = txn.open_table(REVOKED)?;
            for s in &serials {
                if revoked.get(s.as_str())?.is_none() {
                    revoked.insert(s.as_str(), now)?;
                }
            }
        }
        txn.commit()?;
        Ok(serials)
    }

    /// Whether the certificate with this serial was revoked.
    pub fn is_revoked(&self, serial: &str) -> anyhow::Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(REVOKED)?.get(serial)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_time_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        let ca = tls::Ca::generate("t").expect("ca");
        let t = db
            .create_token("agent", Duration::from_secs(60), ca.cert_pem())
            .expect("token");
        assert_eq!(Token::parse(&t.to_string()), Ok(t.clone()));
        assert_eq!(
            t.ca_fingerprint,
            tls::ca_fingerprint(ca.cert_pem()).expect("fp")
        );
        let ok = db.redeem(&t.secret, "a1", || Ok(7)).expect("db");
        assert_eq!(ok, Ok(7));
        let again = db.redeem(&t.secret, "a2", || Ok(8)).expect("db");
        assert!(
            matches!(again, Err(TokenError::Used(ref by)) if by.contains("a1")),
            "{again:?}"
        );
        let unknown = db.redeem("00", "a1", || Ok(9)).expect("db");
        assert_eq!(unknown, Err(TokenError::Unknown));
        let short = db
            .create_token("agent", Duration::ZERO, ca.cert_pem())
            .expect("token");
        let expired = db.redeem(&short.secret, "a1", || Ok(1)).expect("db");
        assert!(
            matches!(expired, Err(TokenError::Expired(_))),
            "{expired:?}"
        );
        // A failing issue leaves the token usable.
        let t2 = db
            .create_token("agent", Duration::from_secs(60), ca.cert_pem())
            .expect("token");
        assert!(
            db.redeem(&t2.secret, "a", || -> anyhow::Result<()> { bail!("no") })
                .is_err()
        );
        assert_eq!(db.redeem(&t2.secret, "a", || Ok(())).expect("db"), Ok(()));
        assert!(
            db.create_token("admin", Duration::from_secs(1), ca.cert_pem())
                .is_err()
        );
        // Only the hash is stored.
        drop(db);
        let raw = std::fs::read(dir.path().join(STATE_FILE)).expect("read");
        let needle = t.secret.as_bytes();
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "secret stored in clear"
        );
    }

    #[test]
    fn revocation_by_name_covers_every_certificate_of_the_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        let ca = tls::Ca::generate("t").expect("ca");
        let c1 = ca.issue_agent("a", Duration::from_secs(60)).expect("c1");
        let c2 = ca.issue_agent("a", Duration::from_secs(60)).expect("c2");
        let other = ca.issue_agent("b", Duration::from_secs(60)).expect("b");
        for (c, n) in [(&c1, "a"), (&c2, "a"), (&other, "b")] {
            db.record_issued(&c.cert_pem, n, "cert issue")
                .expect("record");
        }
        let s1 = tls::cert_serial_pem(&c1.cert_pem).expect("serial");
        assert_ne!(s1, tls::cert_serial_pem(&c2.cert_pem).expect("serial"));
        assert!(!db.is_revoked(&s1).expect("db"));
        assert_eq!(db.revoke_name("a").expect("revoke").len(), 2);
        assert!(db.is_revoked(&s1).expect("db"));
        let sb = tls::cert_serial_pem(&other.cert_pem).expect("serial");
        assert!(!db.is_revoked(&sb).expect("db"));
        // A second handle (another process: the CLI) sees the same state.
        let db2 = StateDb::open(dir.path()).expect("second handle");
        assert!(db2.is_revoked(&s1).expect("db"));
        db2.revoke_name("b").expect("revoke");
        assert!(db.is_revoked(&sb).expect("db"));
    }
}
