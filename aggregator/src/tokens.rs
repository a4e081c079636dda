//! HTTP API bearer tokens (roles `read` and `admin`), kept in the aggregator's state
//! database next to the enrollment tokens. A token reads `ppapi_<id>_<secret>`: the id
//! names it (listing, revocation, logs), only the SHA-256 of the secret is stored, and the
//! secret is compared in constant time. Unlike enrollment tokens they are used many times,
//! until they expire or are revoked.

use std::time::Duration;

use anyhow::bail;
use pathpulse_wire::tls;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::state::{StateDb, now_ms};

/// Token id → [`ApiTokenRecord`].
pub(crate) const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");

const PREFIX: &str = "ppapi";

/// What a bearer token allows. `Admin` includes everything `Read` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ApiRole {
    Read,
    Admin,
}

impl ApiRole {
    pub fn parse(s: &str) -> Option<ApiRole> {
        match s {
            "read" => Some(ApiRole::Read),
            "admin" => Some(ApiRole::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Read => "read",
            ApiRole::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub role: ApiRole,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub created_ms: u64,
    /// `None`: until revoked.
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// A token just made: the only time its secret exists outside the caller.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    pub id: String,
    pub token: String,
    pub record: ApiTokenRecord,
}

/// Why a bearer token was not accepted (the `reason` label of
/// `pathpulse_http_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiTokenError {
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
}

impl ApiTokenError {
    pub fn reason(self) -> &'static str {
        match self {
            ApiTokenError::Unknown => "unknown_token",
            ApiTokenError::Expired => "expired_token",
            ApiTokenError::Revoked => "revoked_token",
        }
    }
}

fn random_hex(n: usize) -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn dec(v: &[u8]) -> Option<ApiTokenRecord> {
    postcard::from_bytes(v).ok()
}

impl StateDb {
    /// A new API token for `role`, valid for `ttl` (`None`: until revoked).
    pub fn create_api_token(
        &self,
        role: ApiRole,
        ttl: Option<Duration>,
    ) -> anyhow::Result<NewApiToken> {
        let (id, secret) = (random_hex(4)?, random_hex(16)?);
        let now = now_ms();
        let record = ApiTokenRecord {
            role,
            hash: tls::sha256_hex(secret.as_bytes()),
            created_ms: now,
            expires_ms: ttl.map(|t| now.saturating_add(t.as_millis().min(u64::MAX.into()) as u64)),
            revoked_ms: None,
        };
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(API_TOKENS)?;
            if t.get(id.as_str())?.is_some() {
                bail!("token id collision; try again");
            }
            let v = postcard::to_stdvec(&record)?;
            t.insert(id.as_str(), v.as_slice())?;
        }
        txn.commit()?;
        Ok(NewApiToken {
            token: format!("{PREFIX}_{id}_{secret}"),
            id,
            record,
        })
    }

    /// The role of a presented bearer token, if it is valid now.
    pub fn check_api_token(
        &self,
        presented: &str,
    ) -> anyhow::Result<Result<ApiRole, ApiTokenError>> {
        let mut parts = presented.trim().splitn(3, '_');
        let (Some(PREFIX), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(Err(ApiTokenError::Unknown));
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(API_TOKENS)?;
        let Some(rec) = table.get(id)?.and_then(|v| dec(v.value())) else {
            return Ok(Err(ApiTokenError::Unknown));
        };
        let hash = tls::sha256_hex(secret.as_bytes());
        if !bool::from(hash.as_bytes().ct_eq(rec.hash.as_bytes())) {
            return Ok(Err(ApiTokenError::Unknown));
        }
        Ok(if rec.revoked_ms.is_some() {
            Err(ApiTokenError::Revoked)
        } else if rec.expires_ms.is_some_and(|e| e <= now_ms()) {
            Err(ApiTokenError::Expired)
        } else {
            Ok(rec.role)
        })
    }

    /// Revoke the API token `id`. `false`: no such token.
    pub fn revoke_api_token(&self, id: &str) -> anyhow::Result<bool> {
        let txn = self.db.begin_write()?;
        let found = {
            let mut t = txn.open_table(API_TOKENS)?;
            let rec = t.get(id)?.and_then(|v| dec(v.value()));
            match rec {
                None => false,
                Some(mut r) => {
                    r.revoked_ms.get_or_insert_with(now_ms);
                    let v = postcard::to_stdvec(&r)?;
                    t.insert(id, v.as_slice())?;
                    true
                }
            }
        };
        txn.commit()?;
        Ok(found)
    }

    /// Every API token (no secrets), by id.
    pub fn api_tokens(&self) -> anyhow::Result<Vec<(String, ApiTokenRecord)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(API_TOKENS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            if let Some(r) = dec(v.value()) {
                out.push((k.value().to_string(), r));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_check_revoke_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        let admin = db.create_api_token(ApiRole::Admin, None).expect("admin");
        let read = db
            .create_api_token(ApiRole::Read, Some(Duration::from_secs(60)))
            .expect("read");
        assert_eq!(
            db.check_api_token(&admin.token).expect("db"),
            Ok(ApiRole::Admin)
        );
        assert_eq!(
            db.check_api_token(&read.token).expect("db"),
            Ok(ApiRole::Read)
        );
        // A right id with a wrong secret, garbage, an enrollment-like token: unknown.
        let forged = format!("{PREFIX}_{}_{}", read.id, "0".repeat(32));
        for t in [forged.as_str(), "", "ppapi", "ppapi__", "pp1.abc.def"] {
            assert_eq!(
                db.check_api_token(t).expect("db"),
                Err(ApiTokenError::Unknown),
                "{t}"
            );
        }
        assert!(db.revoke_api_token(&read.id).expect("db"));
        assert!(!db.revoke_api_token("nope").expect("db"));
        assert_eq!(
            db.check_api_token(&read.token).expect("db"),
            Err(ApiTokenError::Revoked)
        );
        let short = db
            .create_api_token(ApiRole::Read, Some(Duration::ZERO))
            .expect("short");
        assert_eq!(
            db.check_api_token(&short.token).expect("db"),
            Err(ApiTokenError::Expired)
        );
        assert_eq!(db.api_tokens().expect("list").len(), 3);
        drop(db);
        let raw = std::fs::read(dir.path().join(crate::state::STATE_FILE)).expect("read");
        let secret = admin.token.rsplit('_').next().expect("secret").as_bytes();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret),
            "secret stored in clear"
        );
    }
}
