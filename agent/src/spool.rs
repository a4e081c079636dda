//! The on-disk spool of one uplink: every report not yet acknowledged by its aggregator,
//! in a redb file under `STATE_DIR/spool/`, so that neither a reconnect nor the agent's
//! own restart loses a report.
//!
//! - A report is written (and synced) before it is sent; it leaves when the aggregator
//!   acknowledges it. After a restart the spool is read back and replayed first.
//! - Each record keeps the session it was numbered in. The aggregator applies a report once
//!   per (agent, session, sequence), so a replay after a restart (or a report whose
//!   acknowledgement was lost) is acknowledged again but counted once. Every process start
//!   opens a new session, so a sequence number is never given to two different reports,
//!   whatever happens to the file.
//! - Bounded by count and bytes: when full, the oldest report goes and is counted.
//! - The disk is never a reason to stop probing: when a write fails (disk full, I/O error)
//!   the spool keeps its reports in memory, counts and logs the error, and rewrites the
//!   file from memory when the disk works again. A corrupt file is moved aside to
//!   `<name>.corrupt` and a new one started.
//!
//! Memory holds the same reports as the file (the replay reads memory), so the bound is
//! also the memory bound.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pathpulse_wire::Report;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Directory under the state directory holding one spool file per aggregator.
pub const SPOOL_DIR: &str = "spool";
/// Default bound on the number of reports kept per aggregator.
pub const DEFAULT_MAX_REPORTS: usize = 10_000;
/// Default bound on the encoded size of the reports kept per aggregator.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// How long after a failed write the spool tries the disk again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Version of the record encoding; a file of another version is moved aside.
const FORMAT: u64 = 1;

const REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("reports");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bounds of one spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    pub max_reports: usize,
    pub max_bytes: u64,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits {
            max_reports: DEFAULT_MAX_REPORTS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What a spool shows about itself (read by `/metrics` and carried in reports).
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Reports kept (gauge).
    pub reports: AtomicU64,
    /// Their encoded size (gauge).
    pub bytes: AtomicU64,
    /// Reports dropped because the bound was reached (oldest first), since start.
    pub dropped: AtomicU64,
    /// Failed writes (disk full, I/O errors), since start.
    pub write_errors: AtomicU64,
    /// Corrupt or unreadable spool files moved aside, since start.
    pub corrupt: AtomicU64,
    /// `true` while the file is written; `false` while reports are kept in memory only.
    pub on_disk: AtomicBool,
}

/// One spooled report and the session its sequence belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub session: u64,
    pub report: Report,
}

#[derive(Debug)]
struct Entry {
    key: u64,
    size: u64,
    record: Record,
}

/// The spool could not be opened at all (not a disk or corruption problem).
#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {reason}")]
pub struct SpoolOpenError {
    pub path: PathBuf,
    pub reason: String,
}

enum OpenFailure {
    /// Another process holds the file: two agents share a state directory.
    InUse(String),
    /// The file is not a usable spool: move it aside.
    Corrupt(String),
    /// The disk or file system refused: keep going in memory, try again later.
    Io(String),
}

pub struct Spool {
    path: PathBuf,
    limits: SpoolLimits,
    db: Option<redb::Database>,
    mem: VecDeque<Entry>,
    bytes: u64,
    next_key: u64,
    last_attempt: Instant,
    /// "Spool full" was logged and nothing was acknowledged since.
    full_logged: bool,
    stats: std::sync::Arc<SpoolStats>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("reports", &self.mem.len())
            .field("on_disk", &self.db.is_some())
            .finish()
    }
}

/// File name of the spool for an aggregator address (`HOST:PORT` made file-safe).
pub fn file_name(aggregator: &str) -> String {
    let safe: String = aggregator
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.redb")
}

fn classify(e: redb::DatabaseError) -> OpenFailure {
    use redb::{DatabaseError as D, StorageError as S};
    match e {
        D::DatabaseAlreadyOpen | D::LockProtocolMismatch => OpenFailure::InUse(
            "in use by another process (does another agent run with this state directory?)".into(),
        ),
        // "Not a redb database" and short reads are I/O errors of these kinds.
        D::Storage(S::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenFailure::Corrupt(io.to_string())
        }
        D::Storage(S::Io(io)) => OpenFailure::Io(io.to_string()),
        other => OpenFailure::Corrupt(other.to_string()),
    }
}

fn open_db(path: &Path) -> Result<redb::Database, OpenFailure> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenFailure::Io(format!("creating {}: {e}", dir.display())))?;
    }
    let mut b = redb::Builder::new();
    b.set_cache_size(4 << 20).set_check_integrity_on_open(true);
    // redb may panic on some damaged files (debug builds check harder); a damaged spool
    // is a file to move aside, never a reason for the agent to stop.
    match std::panic::catch_unwind(AssertUnwindSafe(|| b.create(path))) {
        Ok(r) => r.map_err(classify),
        Err(_) => Err(OpenFailure::Corrupt("the file could not be read".into())),
    }
}

fn encode(r: &Record) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail.
    postcard::to_stdvec(r).unwrap_or_default()
}

/// Everything in an opened file, in order; an error means the file is not usable.
fn read_all(db: &redb::Database) -> Result<Vec<Entry>, String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let format = meta
            .get("format")
            .map_err(|e| e.to_string())?
            .map(|v| v.value());
        match format {
            None => {
                meta.insert("format", FORMAT).map_err(|e| e.to_string())?;
            }
            Some(FORMAT) => {}
            Some(other) => return Err(format!("spool format {other}, this agent writes {FORMAT}")),
        }
        txn.open_table(REPORTS).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())?;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(REPORTS).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for item in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let bytes = v.value();
        let record: Record =
            postcard::from_bytes(bytes).map_err(|e| format!("record {}: {e}", k.value()))?;
        out.push(Entry {
            key: k.value(),
            size: bytes.len() as u64,
            record,
        });
    }
    Ok(out)
}

impl Spool {
    /// Open (or create) the spool at `path`. Corrupt files are moved aside and a disk that
    /// refuses leaves the spool in memory; only a file held by another process is an error.
    pub fn open(
        path: PathBuf,
        limits: SpoolLimits,
        stats: std::sync::Arc<SpoolStats>,
    ) -> Result<Spool, SpoolOpenError> {
        let mut s = Spool {
            path,
            limits,
            db: None,
            mem: VecDeque::new(),
            bytes: 0,
            next_key: 0,
            last_attempt: Instant::now(),
            full_logged: false,
            stats,
        };
        match s.open_file() {
            Ok((db, entries)) => {
                s.next_key = entries.last().map_or(0, |e| e.key + 1);
                for e in entries {
                    s.bytes += e.size;
                    s.mem.push_back(e);
                }
                s.db = Some(db);
                let evicted = s.evict(0);
                if !evicted.is_empty() {
                    s.persist(|t| remove_keys(t, &evicted));
                }
                if !s.mem.is_empty() {
                    tracing::info!(spool = %s.path.display(), reports = s.mem.len(), "spooled reports from an earlier run will be replayed");
                }
            }
            Err(OpenFailure::InUse(reason)) => {
                return Err(SpoolOpenError {
                    path: s.path,
                    reason,
                });
            }
            Err(OpenFailure::Io(e) | OpenFailure::Corrupt(e)) => {
                s.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(spool = %s.path.display(), error = %e, "cannot write the spool; keeping reports in memory and trying again");
            }
        }
        s.update_stats();
        Ok(s)
    }

    /// Open the file, moving a corrupt one aside and starting a new one.
    fn open_file(&mut self) -> Result<(redb::Database, Vec<Entry>), OpenFailure> {
        let reason = match open_db(&self.path) {
            Ok(db) => match read_all(&db) {
                Ok(entries) => return Ok((db, entries)),
                Err(e) => {
                    drop(db);
                    e
                }
            },
            Err(OpenFailure::Corrupt(e)) => e,
            Err(other) => return Err(other),
        };
        let aside = self.aside_path();
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        match std::fs::rename(&self.path, &aside) {
            Ok(()) => tracing::error!(
                spool = %self.path.display(), moved_to = %aside.display(), error = %reason,
                "spool file is corrupt: moved aside, starting a new spool (its reports are lost)"
            ),
            Err(e) => {
                tracing::error!(spool = %self.path.display(), error = %reason, rename_error = %e, "spool file is corrupt and cannot be moved aside; removing it");
                std::fs::remove_file(&self.path).map_err(|e| {
                    OpenFailure::Io(format!("removing {}: {e}", self.path.display()))
                })?;
            }
        }
        let db = open_db(&self.path)?;
        let entries = read_all(&db).map_err(OpenFailure::Corrupt)?;
        Ok((db, entries))
    }

    fn aside_path(&self) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(".corrupt");
        PathBuf::from(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.mem.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }

    /// The kept reports, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.mem.iter().map(|e| &e.record)
    }

    /// Keep a report (already numbered within `session`), dropping the oldest ones when
    /// the bound is reached. Written to disk before this returns, when the disk works.
    pub fn push(&mut self, session: u64, report: Report) {
        let record = Record { session, report };
        let bytes = encode(&record);
        let size = bytes.len() as u64;
        let evicted = self.evict(size);
        let key = self.next_key;
        self.next_key += 1;
        self.mem.push_back(Entry { key, size, record });
        self.bytes += size;
        self.persist(|t| {
            remove_keys(t, &evicted)?;
            let mut table = t.open_table(REPORTS)?;
            table.insert(key, bytes.as_slice())?;
            Ok(())
        });
        self.update_stats();
    }

    /// Make room for `incoming` bytes: drop the oldest reports beyond the bounds.
    fn evict(&mut self, incoming: u64) -> Vec<u64> {
        let extra = usize::from(incoming > 0);
        let mut gone = Vec::new();
        while !self.mem.is_empty()
            && (self.mem.len() + extra > self.limits.max_reports
                || self.bytes + incoming > self.limits.max_bytes)
        {
            if let Some(e) = self.mem.pop_front() {
                self.bytes -= e.size;
                gone.push(e.key);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !gone.is_empty() && !self.full_logged {
            // Once per episode: it stays full while the aggregator is away.
            tracing::warn!(spool = %self.path.display(), limit = self.limits.max_reports, max_bytes = self.limits.max_bytes, "spool full: dropping the oldest reports (counted in pathpulse_spool_dropped_total)");
            self.full_logged = true;
        }
        gone
    }

    /// The first kept record after spool key `after` (all of them for `None`), with its key.
    pub fn next_after(&self, after: Option<u64>) -> Option<(u64, &Record)> {
        let i = match after {
            None => 0,
            Some(k) => self.mem.partition_point(|e| e.key <= k),
        };
        self.mem.get(i).map(|e| (e.key, &e.record))
    }

    /// Take one record out (the aggregator refuses it for good). Returns whether it was kept.
    pub fn discard(&mut self, session: u64, seq: u64) -> bool {
        let Some(pos) = self
            .mem
            .iter()
            .position(|e| e.record.session == session && e.record.report.seq == seq)
        else {
            return false;
        };
        let Some(e) = self.mem.remove(pos) else {
            return false;
        };
        self.bytes -= e.size;
        self.persist(|t| remove_keys(t, &[e.key]));
        self.update_stats();
        true
    }

    /// Drop records of another agent name (the agent was renamed: the aggregator would
    /// refuse them). Returns how many went.
    pub fn retain_agent(&mut self, agent: &str) -> usize {
        let (keep, gone): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.mem)
            .into_iter()
            .partition(|e| e.record.report.agent == agent);
        self.mem = keep.into();
        let keys: Vec<u64> = gone
            .iter()
            .map(|e| {
                self.bytes -= e.size;
                e.key
            })
            .collect();
        if !keys.is_empty() {
            tracing::warn!(spool = %self.path.display(), dropped = keys.len(), agent, "spooled reports of another agent name dropped");
            self.persist(|t| remove_keys(t, &keys));
            self.update_stats();
        }
        keys.len()
    }

    /// The aggregator applied `(session, seq)`: it and everything kept before it leave.
    /// Returns how many left.
    pub fn ack(&mut self, session: u64, seq: u64) -> usize {
        let Some(pos) = self
            .mem
            .iter()
            .position(|e| e.record.session == session && e.record.report.seq == seq)
        else {
            return 0; // dropped meanwhile
        };
        let gone: Vec<u64> = self
            .mem
            .drain(..=pos)
            .map(|e| {
                self.bytes -= e.size;
                e.key
            })
            .collect();
        self.persist(|t| remove_keys(t, &gone));
        self.update_stats();
        self.full_logged = false;
        gone.len()
    }

    fn update_stats(&self) {
        self.stats
            .reports
            .store(self.mem.len() as u64, Ordering::Relaxed);
        self.stats.bytes.store(self.bytes, Ordering::Relaxed);
        self.stats
            .on_disk
            .store(self.db.is_some(), Ordering::Relaxed);
    }

    /// Apply a change to the file; on failure keep going in memory.
    fn persist(&mut self, f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>) {
        if self.db.is_none() {
            self.recover();
            return; // a recovery rewrites everything from memory
        }
        let Some(db) = &self.db else { return };
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(spool = %self.path.display(), error = %e, "spool write failed; keeping reports in memory and trying the disk again in {}s", RETRY_AFTER.as_secs());
            self.db = None;
            self.last_attempt = Instant::now();
        }
    }

    /// After a failure: reopen the file (moving it aside if corrupt) and write every kept
    /// report again. At most once per [`RETRY_AFTER`].
    fn recover(&mut self) {
        if self.last_attempt.elapsed() < RETRY_AFTER {
            return;
        }
        self.last_attempt = Instant::now();
        let db = match self.open_file() {
            Ok((db, _stale)) => db,
            Err(OpenFailure::InUse(e) | OpenFailure::Io(e) | OpenFailure::Corrupt(e)) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(spool = %self.path.display(), error = %e, "spool still not writable");
                return;
            }
        };
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.delete_table(REPORTS)?;
            {
                let mut table = txn.open_table(REPORTS)?;
                for e in &self.mem {
                    table.insert(e.key, encode(&e.record).as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                tracing::info!(spool = %self.path.display(), reports = self.mem.len(), "spool writable again; kept reports written");
                self.db = Some(db);
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(spool = %self.path.display(), error = %e, "spool still not writable");
            }
        }
        self.update_stats();
    }

    /// Try the disk again now if it failed (tests; the uplink retries on every push).
    pub fn retry_now(&mut self) {
        if self.db.is_none() {
            self.last_attempt = Instant::now() - RETRY_AFTER;
            self.recover();
        }
    }
}

fn remove_keys(t: &redb::WriteTransaction, keys: &[u64]) -> Result<(), redb::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut table = t.open_table(REPORTS)?;
    for k in keys {
        table.remove(k)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn report(seq: u64) -> Report {
        Report {
            seq,
            agent: "a".into(),
            interval_start_ms: 1_000 * seq,
            interval_ms: 1000,
            paths: vec![],
            health: Default::default(),
        }
    }

    fn open(path: &Path, max_reports: usize) -> (Spool, Arc<SpoolStats>) {
        let stats = Arc::new(SpoolStats::default());
        let s = Spool::open(
            path.to_path_buf(),
            SpoolLimits {
                max_reports,
                max_bytes: DEFAULT_MAX_BYTES,
            },
            stats.clone(),
        )
        .expect("open");
        (s, stats)
    }

    fn seqs(s: &Spool) -> Vec<(u64, u64)> {
        s.records().map(|r| (r.session, r.report.seq)).collect()
    }

    #[test]
    fn survives_a_restart_and_acks_remove_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("spool").join(file_name("127.0.0.1:4470"));
        let (mut s, stats) = open(&p, 100);
        for seq in 1..=5 {
            s.push(7, report(seq));
        }
        assert_eq!(s.ack(7, 2), 2);
        assert_eq!(stats.reports.load(Ordering::Relaxed), 3);
        assert!(stats.on_disk.load(Ordering::Relaxed));
        drop(s);
        // A new process: a new session; the old session's reports come back in order.
        let (mut s, _) = open(&p, 100);
        assert_eq!(seqs(&s), [(7, 3), (7, 4), (7, 5)]);
        s.push(8, report(1));
        assert_eq!(s.ack(7, 5), 3);
        assert_eq!(seqs(&s), [(8, 1)]);
        assert_eq!(s.ack(7, 99), 0, "unknown acknowledgements change nothing");
        drop(s);
        let (s, _) = open(&p, 100);
        assert_eq!(seqs(&s), [(8, 1)]);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.redb");
        let (mut s, stats) = open(&p, 3);
        for seq in 1..=5 {
            s.push(1, report(seq));
        }
        assert_eq!(seqs(&s), [(1, 3), (1, 4), (1, 5)]);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        drop(s);
        // A smaller bound after a restart applies to what was kept.
        let (s, stats) = open(&p, 2);
        assert_eq!(seqs(&s), [(1, 4), (1, 5)]);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        // The byte bound too.
        let p2 = dir.path().join("b.redb");
        let stats2 = Arc::new(SpoolStats::default());
        let mut b = Spool::open(
            p2,
            SpoolLimits {
                max_reports: 100,
                max_bytes: 3 * encode(&Record {
                    session: 1,
                    report: report(1),
                })
                .len() as u64,
            },
            stats2.clone(),
        )
        .expect("open");
        for seq in 1..=4 {
            b.push(1, report(seq));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(stats2.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_a_new_spool_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.redb");
        let (mut s, _) = open(&p, 100);
        for seq in 1..=20 {
            s.push(1, report(seq));
        }
        drop(s);
        // Garbage over the whole file.
        let len = std::fs::metadata(&p).expect("meta").len() as usize;
        std::fs::write(&p, vec![0xa5u8; len]).expect("write");
        let (mut s, stats) = open(&p, 100);
        assert_eq!(stats.corrupt.load(Ordering::Relaxed), 1);
        assert!(s.is_empty());
        assert!(dir.path().join("s.redb.corrupt").exists());
        s.push(2, report(1));
        drop(s);
        let (s, stats) = open(&p, 100);
        assert_eq!(seqs(&s), [(2, 1)]);
        assert_eq!(stats.corrupt.load(Ordering::Relaxed), 0);
        drop(s);
        // Damage in the middle of the file: either redb rolls back to an intact commit or
        // the file is moved aside; either way the spool works and nothing panics.
        let m = dir.path().join("m.redb");
        let (mut s, _) = open(&m, 100);
        for seq in 1..=200 {
            s.push(1, report(seq));
        }
        drop(s);
        let mut bytes = std::fs::read(&m).expect("read");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 4096] {
            *b ^= 0x5a;
        }
        std::fs::write(&m, &bytes).expect("write");
        let (mut s, stats) = open(&m, 100);
        eprintln!(
            "middle damage: {} kept, corrupt {}",
            s.len(),
            stats.corrupt.load(Ordering::Relaxed)
        );
        s.push(2, report(1));
        assert!(stats.on_disk.load(Ordering::Relaxed));
        drop(s);
        // A file that is not redb at all, and a truncated one.
        for bad in [b"not a spool".to_vec(), Vec::new()] {
            let q = dir.path().join("t.redb");
            let (mut s, _) = open(&q, 100);
            for seq in 1..=20 {
                s.push(1, report(seq));
            }
            drop(s);
            if bad.is_empty() {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&q)
                    .expect("open");
                f.set_len(4096 + 100).expect("truncate");
            } else {
                std::fs::write(&q, &bad).expect("write");
            }
            let (mut s, stats) = open(&q, 100);
            assert_eq!(stats.corrupt.load(Ordering::Relaxed), 1, "{bad:?}");
            s.push(3, report(1));
            assert!(stats.on_disk.load(Ordering::Relaxed));
            drop(s);
            std::fs::remove_file(&q).expect("rm");
        }
    }

    #[test]
    fn another_process_holding_the_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.redb");
        let (_s, _) = open(&p, 10);
        let e = Spool::open(p, SpoolLimits::default(), Arc::default()).expect_err("in use");
        assert!(e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn a_failing_disk_keeps_reports_in_memory_and_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The spool's directory is a file: nothing can be created there.
        let blocker = dir.path().join("spool");
        std::fs::write(&blocker, b"x").expect("write");
        let p = blocker.join("s.redb");
        let (mut s, stats) = open(&p, 100);
        assert!(!stats.on_disk.load(Ordering::Relaxed));
        assert!(stats.write_errors.load(Ordering::Relaxed) >= 1);
        for seq in 1..=3 {
            s.push(1, report(seq));
        }
        assert_eq!(s.len(), 3, "kept in memory");
        // The disk works again.
        std::fs::remove_file(&blocker).expect("rm");
        s.retry_now();
        assert!(stats.on_disk.load(Ordering::Relaxed));
        drop(s);
        let (s, _) = open(&p, 100);
        assert_eq!(seqs(&s), [(1, 1), (1, 2), (1, 3)]);
    }
}
