//! Exactly-once across the aggregator's own restart: `STATE_DIR/counters.redb` holds per path
//! the counters and cumulative RTT histogram, and per agent its totals together with the
//! last applied sequence of each session, written in the same transaction. A report is
//! acknowledged only once a commit holding it is on disk; one commit covers every report
//! applied while the previous one was being written (group commit), so ingest pays one
//! disk sync per batch, not per report. At start the aggregator restores the file, so its
//! counters go on from where they were and a replayed report is recognized as a duplicate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pathpulse_metrics::durable::Changes;
use pathpulse_metrics::{SharedStore, Store};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub const COUNTERS_FILE: &str = "counters.redb";

/// Stored path key → path record.
const PATHS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("paths");
/// Agent name → agent record (totals and the sessions' last applied sequences).
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");

/// How long an acknowledgement waits for its commit before the stream gives up (the agent
/// keeps the report and sends it again).
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// The counters file. Held by one aggregator at a time (redb locks it).
pub struct CountersDb {
    db: redb::Database,
    path: PathBuf,
}

impl CountersDb {
    pub fn open(state_dir: &Path) -> anyhow::Result<CountersDb> {
        let path = state_dir.join(COUNTERS_FILE);
        let db =
            // A small page cache: the file is written far more than read (once, at start).
            redb::Builder::new()
                .set_cache_size(16 << 20)
                .create(&path)
                .with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(PATHS)?;
        txn.open_table(AGENTS)?;
        txn.commit()?;
        Ok(CountersDb { db, path })
    }

    /// Load everything into `store`. Returns (paths, agents) restored; a record that cannot
    /// be decoded is skipped with a warning (its counters start again from zero).
    pub fn restore(&self, store: &mut Store) -> anyhow::Result<(usize, usize)> {
        let txn = self.db.begin_read()?;
        let (mut paths, mut agents) = (0, 0);
        for item in txn.open_table(AGENTS)?.iter()? {
            let (k, v) = item?;
            match store.restore_agent(k.value(), v.value()) {
                Ok(()) => agents += 1,
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), agent = k.value(), error = %e, "skipped")
                }
            }
        }
        for item in txn.open_table(PATHS)?.iter()? {
            let (k, v) = item?;
            match store.restore_path(k.value(), v.value()) {
                Ok(()) => paths += 1,
                Err(e) => tracing::warn!(file = %self.path.display(), error = %e, "skipped"),
            }
        }
        Ok((paths, agents))
    }

    /// Write a batch in one durable transaction.
    fn write(&self, batch: &Batch) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut paths = txn.open_table(PATHS)?;
            for (k, v) in &batch.paths {
                match v {
                    Some(v) => paths.insert(k.as_slice(), v.as_slice())?,
                    None => paths.remove(k.as_slice())?,
                };
            }
            let mut agents = txn.open_table(AGENTS)?;
            for (k, v) in &batch.agents {
                agents.insert(k.as_str(), v.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// Changes not yet committed, newest value per key.
#[derive(Default)]
struct Batch {
    paths: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    agents: BTreeMap<String, Vec<u8>>,
    applied: u64,
}

impl Batch {
    fn merge(&mut self, ch: Changes) {
        self.paths.extend(ch.paths);
        self.agents.extend(ch.agents);
        self.applied = self.applied.max(ch.applied);
    }
}

/// What ingest uses to wait for durability.
pub struct Durability {
    wake: Notify,
    committed: watch::Receiver<u64>,
}

impl Durability {
    /// A durability that is never waited for (no counters file: tests, the agent).
    pub fn none() -> Arc<Durability> {
        let (tx, rx) = watch::channel(u64::MAX);
        drop(tx);
        Arc::new(Durability {
            wake: Notify::new(),
            committed: rx,
        })
    }

    /// Wait until the first `applied` reports (see `Store::applied_count`) are on disk.
    /// `false`: not within [`COMMIT_WAIT`] (the database fails, or the aggregator stops).
    pub async fn wait(&self, applied: u64) -> bool {
        if *self.committed.borrow() >= applied {
            return true;
        }
        self.wake.notify_one();
        let mut rx = self.committed.clone();
        matches!(
            tokio::time::timeout(COMMIT_WAIT, rx.wait_for(|c| *c >= applied)).await,
            Ok(Ok(_))
        )
    }
}

/// Restore the counters into `store`, turn on its change journal, and start the committer.
pub fn start(
    db: CountersDb,
    store: &SharedStore,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<Durability>, tokio::task::JoinHandle<()>)> {
    {
        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
        let (paths, agents) = db.restore(&mut s)?;
        s.track_changes();
        tracing::info!(paths, agents, file = %db.path.display(), "counters restored");
    }
    let (tx, rx) = watch::channel(0u64);
    let durability = Arc::new(Durability {
        wake: Notify::new(),
        committed: rx,
    });
    let task = tokio::spawn(commit_loop(
        Arc::new(db),
        store.clone(),
        durability.clone(),
        tx,
        shutdown,
    ));
    Ok((durability, task))
}

async fn commit_loop(
    db: Arc<CountersDb>,
    store: SharedStore,
    durability: Arc<Durability>,
    committed: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut pending = Batch::default();
    let mut failing = false;
    // Commits, records written and time spent since the last debug line.
    let (mut commits, mut records, mut spent, mut since) =
        (0u64, 0usize, Duration::ZERO, std::time::Instant::now());
    loop {
        let stopping = tokio::select! {
            _ = durability.wake.notified() => false,
            // Also every second: prunes and the like need no waiter to be written.
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = shutdown.cancelled() => true,
        };
        let t0 = std::time::Instant::now();
        pending.merge(
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_changes(),
        );
        let encoded = t0.elapsed();
        if !pending.paths.is_empty() || !pending.agents.is_empty() {
            records += pending.paths.len() + pending.agents.len();
            let (db2, batch) = (db.clone(), std::mem::take(&mut pending));
            let (batch, result) = tokio::task::spawn_blocking(move || {
                let r = db2.write(&batch);
                (batch, r)
            })
            .await
            .unwrap_or_else(|e| (Batch::default(), Err(anyhow::anyhow!("{e}"))));
            commits += 1;
            spent += t0.elapsed();
            if since.elapsed() >= Duration::from_secs(10) {
                tracing::debug!(
                    commits,
                    records,
                    ms_per_commit = spent.as_millis() as u64 / commits.max(1),
                    last_encode_ms = encoded.as_millis() as u64,
                    "counters written"
                );
                (commits, records, spent, since) =
                    (0, 0, Duration::ZERO, std::time::Instant::now());
            }
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!("counters written again");
                        failing = false;
                    }
                    committed.send_replace(batch.applied);
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(file = %db.path.display(), error = %format!("{e:#}"), "cannot write the counters; reports are not acknowledged until it works again");
                        failing = true;
                    }
                    // Keep the batch (newer changes merged over it) and try again.
                    pending = batch;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    durability.wake.notify_one();
                }
            }
        } else {
            // (The borrow ends before the send: holding it would deadlock.)
            let done = pending.applied.max(*committed.borrow());
            committed.send_replace(done);
        }
        if stopping {
            return;
        }
    }
}
