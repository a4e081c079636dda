//! Firing alerts persisted in the aggregator's embedded store (redb, `alerts.redb` in the
//! state directory), so a restart neither fires them again nor forgets them: they are
//! written when they fire, removed when they resolve, and read back at start.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::engine::{Alert, AlertState};

/// fingerprint → the alert as JSON.
const FIRING: TableDefinition<&str, &[u8]> = TableDefinition::new("firing_alerts");

pub const FILE_NAME: &str = "alerts.redb";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("alert state {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("alert state {path}: record {key} unreadable: {source}")]
    Record {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

pub struct AlertStateStore {
    db: Database,
    path: PathBuf,
}

impl AlertStateStore {
    /// Open (or create) `state_dir/alerts.redb`.
    pub fn open(state_dir: &Path) -> Result<AlertStateStore, StateError> {
        let path = state_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| StateError::Db {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(AlertStateStore { db, path })
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StateError {
        StateError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// The alerts that were firing when the aggregator stopped.
    pub fn load(&self) -> Result<Vec<Alert>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = match txn.open_table(FIRING) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(self.db_err(e)),
        };
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let a: Alert = serde_json::from_slice(v.value()).map_err(|e| StateError::Record {
                path: self.path.clone(),
                key: k.value().to_string(),
                source: e,
            })?;
            out.push(a);
        }
        Ok(out)
    }

    /// Record transitions in one transaction: firing alerts stored, resolved ones removed.
    pub fn apply(&self, alerts: &[Alert]) -> Result<(), StateError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = txn.open_table(FIRING).map_err(|e| self.db_err(e))?;
            for a in alerts {
                match a.state {
                    AlertState::Firing => {
                        let v = serde_json::to_vec(a).map_err(|e| StateError::Record {
                            path: self.path.clone(),
                            key: a.fingerprint.clone(),
                            source: e,
                        })?;
                        table
                            .insert(a.fingerprint.as_str(), v.as_slice())
                            .map_err(|e| self.db_err(e))?;
                    }
                    AlertState::Resolved => {
                        table
                            .remove(a.fingerprint.as_str())
                            .map_err(|e| self.db_err(e))?;
                    }
                    AlertState::Pending => {}
                }
            }
        }
        txn.commit().map_err(|e| self.db_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alert(fp: &str, state: AlertState) -> Alert {
        Alert {
            fingerprint: fp.into(),
            state,
            alertname: "PathpulseLoss".into(),
            kind: "loss".into(),
            severity: "warning".into(),
            labels: BTreeMap::from([("src".into(), "a".into())]),
            annotations: BTreeMap::new(),
            starts_at_ms: 1,
            ends_at_ms: None,
            value: Some(0.2),
            threshold: Some(0.05),
            window_seconds: 3.0,
        }
    }

    #[test]
    fn firing_alerts_survive_a_reopen_and_resolved_ones_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = AlertStateStore::open(dir.path()).expect("open");
            assert!(s.load().expect("load").is_empty());
            s.apply(&[
                alert("a1", AlertState::Firing),
                alert("b2", AlertState::Firing),
            ])
            .expect("apply");
            s.apply(&[alert("a1", AlertState::Resolved)])
                .expect("apply");
        }
        let s = AlertStateStore::open(dir.path()).expect("reopen");
        let got = s.load().expect("load");
        assert_eq!(got, vec![alert("b2", AlertState::Firing)]);
    }
}
