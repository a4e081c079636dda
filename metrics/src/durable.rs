//! What of the store survives an aggregator restart: per path its counters and cumulative
//! RTT histogram, per agent its totals and, with them, the last applied sequence of each
//! session. The store notes what changed ([`Journal`]); the aggregator takes the changes
//! ([`Store::take_changes`]) and writes them in one transaction (a group commit) before it
//! acknowledges the reports they contain, and restores them at start. Quantile windows are
//! not kept: they describe the last minutes and refill by themselves.

use std::collections::BTreeSet;
use std::sync::Arc;

use pathpulse_wire::{HopRole, ProbeKind};
use serde::{Deserialize, Serialize};

use crate::store::{
    AgentState, Counters, Cumulative, HealthTotals, HopState, PathKey, PathState, SessionState,
    Store,
};
use crate::window::PathWindows;

/// What changed since the last [`Store::take_changes`].
#[derive(Debug, Default)]
pub struct Journal {
    pub(crate) paths: BTreeSet<PathKey>,
    pub(crate) agents: BTreeSet<Arc<str>>,
    pub(crate) removed: BTreeSet<PathKey>,
    /// Reports applied since tracking began (duplicates excluded).
    pub(crate) applied: u64,
}

impl Journal {
    pub(crate) fn forget(&mut self, key: PathKey) {
        self.paths.remove(&key);
        self.removed.insert(key);
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PathRecord {
    counters: Counters,
    cumulative: Cumulative,
    route_changes: u64,
    last_report_ms: u64,
    hops: Vec<HopRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct HopRecord {
    ttl: u8,
    addr: String,
    role: HopRole,
    counters: Counters,
}

#[derive(Debug, Serialize, Deserialize)]
struct AgentRecord {
    reports: u64,
    health: HealthTotals,
    spool_dropped: u64,
    sessions: Vec<SessionState>,
}

/// Encoded changes, ready for one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    /// Reports applied (a count since tracking began) that these changes make durable.
    pub applied: u64,
    /// Path key → record, or `None` for a path to delete.
    pub paths: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Agent name → record.
    pub agents: Vec<(String, Vec<u8>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.agents.is_empty()
    }
}

/// Why a stored record could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("undecodable {what} record: {source}")]
pub struct RestoreError {
    what: &'static str,
    source: postcard::Error,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of numbers and strings: encoding into a Vec cannot fail.
    postcard::to_stdvec(v).unwrap_or_default()
}

/// The stored form of a path's key.
pub fn path_key(k: &PathKey) -> Vec<u8> {
    enc(&(&*k.src, &*k.dst, k.probe))
}

impl Store {
    /// Note every change from now on, for [`Store::take_changes`].
    pub fn track_changes(&mut self) {
        self.journal.get_or_insert_with(Journal::default);
    }

    /// Reports applied since tracking began: once [`Changes::applied`] of a committed
    /// batch reaches this number, every report applied so far is durable.
    pub fn applied_count(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.applied)
    }

    /// Everything changed since the last call, encoded; the journal starts again empty.
    pub fn take_changes(&mut self) -> Changes {
        let Some(j) = self.journal.as_mut() else {
            return Changes::default();
        };
        let applied = j.applied;
        let (paths, agents, removed) = (
            std::mem::take(&mut j.paths),
            std::mem::take(&mut j.agents),
            std::mem::take(&mut j.removed),
        );
        let mut out = Changes {
            applied,
            ..Changes::default()
        };
        for k in removed {
            out.paths.push((path_key(&k), None));
        }
        for k in paths {
            let Some(st) = self.paths.get(&k) else {
                continue;
            };
            let rec = PathRecord {
                counters: st.counters,
                cumulative: st.cumulative.clone(),
                route_changes: st.route_changes,
                last_report_ms: st.last_report_ms,
                hops: st
                    .hops
                    .iter()
                    .map(|(&ttl, h)| HopRecord {
                        ttl,
                        addr: h.addr.to_string(),
                        role: h.role,
                        counters: h.counters,
                    })
                    .collect(),
            };
            out.paths.push((path_key(&k), Some(enc(&rec))));
        }
        for name in agents {
            let Some(a) = self.agents.get(&name) else {
                continue;
            };
            let rec = AgentRecord {
                reports: a.reports,
                health: a.health,
                spool_dropped: a.spool_dropped,
                sessions: self.applied.get(&name).cloned().unwrap_or_default(),
            };
            out.agents.push((name.to_string(), enc(&rec)));
        }
        out
    }

    /// Restore one path written by [`Store::take_changes`].
    pub fn restore_path(&mut self, key: &[u8], value: &[u8]) -> Result<(), RestoreError> {
        let err = |source| RestoreError {
            what: "path",
            source,
        };
        let (src, dst, probe): (String, String, ProbeKind) =
            postcard::from_bytes(key).map_err(err)?;
        let rec: PathRecord = postcard::from_bytes(value).map_err(err)?;
        let src = match self.agents.get_key_value(src.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(src),
        };
        let st = PathState {
            counters: rec.counters,
            cumulative: rec.cumulative,
            route_changes: rec.route_changes,
            last_report_ms: rec.last_report_ms,
            hops: rec
                .hops
                .into_iter()
                .map(|h| {
                    let hs = HopState {
                        addr: Arc::from(h.addr),
                        role: h.role,
                        counters: h.counters,
                        windows: PathWindows::default(),
                    };
                    (h.ttl, hs)
                })
                .collect(),
            ..PathState::default()
        };
        let key = PathKey {
            src,
            dst: Arc::from(dst),
            probe,
        };
        self.paths.insert(key, Box::new(st));
        Ok(())
    }

    /// Restore one agent written by [`Store::take_changes`]. It counts as down until it
    /// reports again.
    pub fn restore_agent(&mut self, name: &str, value: &[u8]) -> Result<(), RestoreError> {
        let rec: AgentRecord = postcard::from_bytes(value).map_err(|source| RestoreError {
            what: "agent",
            source,
        })?;
        let name: Arc<str> = Arc::from(name);
        self.applied.insert(name.clone(), rec.sessions);
        self.agents.insert(
            name,
            AgentState {
                reports: rec.reports,
                health: rec.health,
                spool_dropped: rec.spool_dropped,
                ..AgentState::default()
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use pathpulse_wire::{AgentHealth, PathReport, Report};

    use super::*;
    use crate::store::Applied;

    fn report(agent: &str, seq: u64, dst: &str) -> Report {
        let mut p = PathReport {
            dst: dst.into(),
            sent: 10,
            lost: 1,
            ..Default::default()
        };
        for v in [800u64, 1200, 30_000] {
            p.rtt.record(v);
            p.rtt_sum_us += v;
            p.received += 1;
        }
        Report {
            seq,
            agent: agent.into(),
            interval_start_ms: 1_000_000,
            interval_ms: 1000,
            paths: vec![p],
            health: AgentHealth {
                spool_dropped: 2,
                send_errors: 1,
                ..Default::default()
            },
        }
    }

    /// Stored paths and agents, as in the aggregator's database.
    type Db = (Vec<(Vec<u8>, Vec<u8>)>, Vec<(String, Vec<u8>)>);

    /// Write `changes` into a plain map, as the aggregator writes them into its database.
    fn persist(db: &mut Db, ch: Changes) {
        for (k, v) in ch.paths {
            db.0.retain(|(x, _)| *x != k);
            if let Some(v) = v {
                db.0.push((k, v));
            }
        }
        for (k, v) in ch.agents {
            db.1.retain(|(x, _)| *x != k);
            db.1.push((k, v));
        }
    }

    #[test]
    fn counters_and_sequences_survive_a_restart() {
        let mut s = Store::new(15_000);
        s.track_changes();
        let mut db: Db = Default::default();
        assert_eq!(
            s.apply_once(&report("a", 1, "x"), 7, 1_000_000),
            Applied::New
        );
        assert_eq!(
            s.apply_once(&report("a", 2, "y"), 7, 1_000_000),
            Applied::New
        );
        assert_eq!(s.applied_count(), 2);
        let ch = s.take_changes();
        assert_eq!((ch.applied, ch.paths.len(), ch.agents.len()), (2, 2, 1));
        persist(&mut db, ch);
        assert!(s.take_changes().is_empty(), "nothing new");
        assert_eq!(
            s.apply_once(&report("a", 2, "y"), 7, 1_000_000),
            Applied::Duplicate
        );
        assert!(s.take_changes().is_empty(), "a duplicate changes nothing");

        let mut r = Store::new(15_000);
        r.track_changes();
        for (k, v) in &db.1 {
            r.restore_agent(k, v).expect("agent");
        }
        for (k, v) in &db.0 {
            r.restore_path(k, v).expect("path");
        }
        assert_eq!(r.paths.len(), 2);
        for (k, st) in &s.paths {
            let back = &r.paths[k];
            assert_eq!(back.counters, st.counters);
            assert_eq!(back.cumulative, st.cumulative);
            assert_eq!(back.last_report_ms, st.last_report_ms);
        }
        let (a, b) = (&s.agents["a"], &r.agents["a"]);
        assert_eq!(
            (a.reports, a.health, a.spool_dropped),
            (b.reports, b.health, b.spool_dropped)
        );
        assert!(b.last_report_ms.is_none(), "down until it reports again");
        // The restored sequences make a replay a duplicate, and the session goes on.
        assert_eq!(
            r.apply_once(&report("a", 2, "y"), 7, 1_000_000),
            Applied::Duplicate
        );
        assert_eq!(
            r.apply_once(&report("a", 3, "y"), 7, 1_000_000),
            Applied::New
        );
        let y = PathKey {
            src: Arc::from("a"),
            dst: Arc::from("y"),
            probe: ProbeKind::Icmp,
        };
        assert_eq!(r.paths[&y].counters.sent, 20);
        assert_eq!(r.agents["a"].spool_dropped, 2, "counted once per session");
    }

    #[test]
    fn pruned_paths_are_deleted_and_untracked_stores_keep_nothing() {
        let mut s = Store::new(15_000);
        s.prune_after_ms = Some(1000);
        s.track_changes();
        s.apply_once(&report("a", 1, "x"), 1, 1_000_000);
        let _ = s.take_changes();
        s.expire(1_002_000);
        let ch = s.take_changes();
        assert_eq!(ch.paths.len(), 1);
        assert!(ch.paths[0].1.is_none(), "a delete");
        let mut plain = Store::new(15_000);
        plain.apply_once(&report("a", 1, "x"), 1, 1_000_000);
        assert!(plain.journal.is_none() && plain.take_changes().is_empty());
        assert!(s.restore_path(b"junk", b"junk").is_err());
    }
}
