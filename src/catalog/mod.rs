//! The catalog: every job's history within `history_retention`, derived from the WAL.
//!
//! A background thread (`worker`) follows the committed log from the catalog's own position,
//! through sealed segments, the archive and the current segment up to the durable LSN, and
//! applies each record to the job's row with the one state machine (`job::machine`). It is never
//! on the acknowledgement path: the commit thread only stores the durable LSN in an atomic, and
//! nothing ever waits for the catalog but the requests that read it (`status` of a job the
//! dispatcher forgot, `jobs`, `replay`). If it fails (an unwritable directory, a corrupt file, a
//! full disk), it says so in the log and `stats`, retries with a backoff, and jobs go on (G6);
//! `duejob catalog rebuild` rebuilds it from the WAL and the archive.
//!
//! - `store`: the sled databases, one per day of submission, and the manifest.
//! - `worker`: the thread, its position, failures and retention; also the offline rebuild.

internal_mods! {
    mod store;
    mod worker;
}

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::job::State;
use crate::wire::{CatalogReport, JobInfo};
use store::{Order, Row, Store};

pub use worker::{rebuild_offline, spawn, Catalog, Rebuilt};

/// What went wrong in the catalog.
#[derive(Debug)]
#[non_exhaustive]
pub enum CatalogError {
    /// A file or directory could not be read or written.
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// sled failed (I/O, or a corrupt database).
    Sled {
        /// The partition.
        path: PathBuf,
        /// The error.
        source: sled::Error,
    },
    /// A file of the catalog does not hold what it should.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The log could not be read.
    Wal(crate::wal::WalError),
}

impl CatalogError {
    fn io(path: &Path, source: std::io::Error) -> CatalogError {
        CatalogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CatalogError::Sled { path, source } => write!(f, "{}: {source}", path.display()),
            CatalogError::Corrupt { path, detail } => {
                write!(f, "{}: corrupt: {detail}", path.display())
            }
            CatalogError::Wal(e) => write!(f, "reading the log: {e}"),
        }
    }
}

impl std::error::Error for CatalogError {}

/// Counters `stats` reads; written by the catalog thread.
#[derive(Debug, Default)]
pub struct Stats {
    /// LSN of the last record applied.
    pub applied_lsn: AtomicU64,
    /// Records applied since start.
    pub records: AtomicU64,
    /// Jobs added since start.
    pub jobs: AtomicU64,
    /// Records about jobs the catalog does not hold (submitted before its history began).
    pub orphans: AtomicU64,
    /// Failures since start.
    pub failures: AtomicU64,
    /// Whether it is failing now.
    pub failing: AtomicBool,
    /// When it started failing (ms), 0 if not.
    pub failing_since: AtomicU64,
    /// When it was last caught up with the durable log (ms).
    pub caught_up_at: AtomicU64,
    /// Partitions.
    pub partitions: AtomicU64,
    /// Bytes on disk (updated once in a while).
    pub bytes: AtomicU64,
    /// Segments it could not read because they were gone (history lost).
    pub missed_segments: AtomicU64,
    /// Places of damage in sealed segments that it read past (the records between lost).
    pub damage_skipped: AtomicU64,
    /// Flushes since start.
    pub flushes: AtomicU64,
    /// The last error.
    pub last_error: Mutex<Option<String>>,
}

/// A `jobs` query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Submitted at or after (ms).
    pub since: Option<u64>,
    /// Submitted before (ms).
    pub until: Option<u64>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only these states (all when empty).
    pub states: Vec<State>,
    /// At most this many.
    pub limit: usize,
}

impl From<&crate::wire::JobsQuery<'_>> for Query {
    fn from(q: &crate::wire::JobsQuery<'_>) -> Query {
        Query {
            since: q.since,
            until: q.until,
            queue: q.queue.as_deref().map(Into::into),
            kind: q.kind.as_deref().map(Into::into),
            states: q.states.clone(),
            limit: q.limit.unwrap_or(crate::wire::DEFAULT_JOBS_LIMIT),
        }
    }
}

impl Query {
    fn admits(&self, ix: &store::Indexed) -> bool {
        self.queue.as_ref().is_none_or(|q| *q == ix.queue)
            && self.kind.as_ref().is_none_or(|k| *k == ix.kind)
            && (self.states.is_empty() || self.states.contains(&ix.state))
    }
}

/// What the readers share with the catalog thread.
pub struct Shared {
    /// The counters.
    pub stats: Stats,
    /// The store; `None` while failing or rebuilding.
    store: Mutex<Option<Arc<Store>>>,
    /// The oldest segment the catalog still has to read (`u64::MAX`: none): the checkpointer
    /// keeps it and those after it in the archive.
    pub pin_seq: AtomicU64,
    /// The durable LSN, as the commit thread publishes it.
    durable: Arc<crate::wal::stats::WalStats>,
    /// Test hook: while set, the catalog thread applies nothing (a stalled catalog).
    pub hold: AtomicBool,
    dir: PathBuf,
    /// Wakes the catalog thread from its rest after catching up, for a reader that waits.
    nudge: crossbeam_channel::Sender<()>,
}

/// How long a read waits for the catalog to apply what was durable when it was asked.
pub const READ_WAIT: Duration = Duration::from_secs(5);

impl Shared {
    fn new(
        durable: Arc<crate::wal::stats::WalStats>,
        dir: PathBuf,
    ) -> (Shared, crossbeam_channel::Receiver<()>) {
        let (nudge, nudge_rx) = crossbeam_channel::bounded(1);
        let shared = Shared {
            stats: Stats::default(),
            store: Mutex::new(None),
            pin_seq: AtomicU64::new(0),
            durable,
            hold: Default::default(),
            dir,
            nudge,
        };
        (shared, nudge_rx)
    }

    fn store(&self) -> Result<Arc<Store>, String> {
        self.store
            .lock()
            .expect("catalog store")
            .clone()
            .ok_or_else(|| self.failing_message())
    }

    fn failing_message(&self) -> String {
        match self
            .stats
            .last_error
            .lock()
            .expect("catalog error")
            .as_deref()
        {
            Some(e) => {
                format!("the catalog is failing ({e}); `duejob catalog rebuild` restores it")
            }
            None => "the catalog is not open yet".into(),
        }
    }

    /// Waits (at most `wait`) until the catalog has applied every record durable now. Returns
    /// whether it has.
    pub fn catch_up(&self, wait: Duration) -> bool {
        let target = self.durable.durable_lsn.load(Ordering::Acquire);
        let end = Instant::now() + wait;
        if self.stats.applied_lsn.load(Ordering::Acquire) < target {
            // It may be resting (it reads what comes in once per rest, not record by record).
            let _ = self.nudge.try_send(());
        }
        loop {
            if self.stats.applied_lsn.load(Ordering::Acquire) >= target {
                return true;
            }
            if Instant::now() >= end || self.stats.failing.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Job `id` as the catalog holds it.
    pub fn status(&self, id: u64) -> Result<Option<JobInfo>, String> {
        let store = self.store()?;
        Ok(store
            .get(id)
            .map_err(|e| e.to_string())?
            .map(|(_, r)| r.job.info()))
    }

    /// Jobs matching `q`, newest first: the catalog's rows (for each, `fresh` may give a newer
    /// view, from the dispatcher's memory), and whether more matched than the limit.
    pub fn jobs(
        &self,
        q: &Query,
        fresh: &mut dyn FnMut(u64) -> Option<JobInfo>,
    ) -> Result<(Vec<JobInfo>, bool), String> {
        let store = self.store()?;
        let mut ids = Vec::new();
        let mut more = false;
        store
            .scan(
                q.since.unwrap_or(0),
                q.until.unwrap_or(u64::MAX),
                Order::NewestFirst,
                &mut |ix| {
                    if !q.admits(&ix) {
                        return true;
                    }
                    if ids.len() == q.limit {
                        more = true;
                        return false;
                    }
                    ids.push(ix.id);
                    true
                },
            )
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(j) = fresh(id) {
                out.push(j);
            } else if let Some((_, r)) = store.get(id).map_err(|e| e.to_string())? {
                out.push(r.job.info());
            }
        }
        Ok((out, more))
    }

    /// Every job of the window that `q` admits (no limit), oldest first, with its row, one at
    /// a time until `each` returns false (a replay filters by state itself: the dispatcher's
    /// memory may know a newer one).
    pub(crate) fn select(
        &self,
        q: &Query,
        each: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), String> {
        let store = self.store()?;
        let mut failed = None;
        store
            .scan(
                q.since.unwrap_or(0),
                q.until.unwrap_or(u64::MAX),
                Order::OldestFirst,
                &mut |ix| {
                    if !q.admits(&ix) {
                        return true;
                    }
                    match store.get(ix.id) {
                        Ok(Some((_, r))) => each(r),
                        Ok(None) => true,
                        Err(e) => {
                            failed = Some(e.to_string());
                            false
                        }
                    }
                },
            )
            .map_err(|e| e.to_string())?;
        failed.map_or(Ok(()), Err)
    }

    /// The job a key names, if the catalog holds it.
    pub fn key(&self, key: &str) -> Result<Option<u64>, String> {
        self.store()?.key(key).map_err(|e| e.to_string())
    }

    /// The figures `stats` shows.
    pub fn report(&self) -> CatalogReport {
        let s = &self.stats;
        let applied = s.applied_lsn.load(Ordering::Relaxed);
        let durable = self.durable.durable_lsn.load(Ordering::Relaxed);
        let caught = s.caught_up_at.load(Ordering::Relaxed);
        let behind = durable > applied;
        CatalogReport {
            dir: self.dir.display().to_string(),
            applied_lsn: applied,
            lag_records: durable.saturating_sub(applied),
            behind_ms: if behind && caught > 0 {
                crate::clock::now_ms().saturating_sub(caught)
            } else {
                0
            },
            records: s.records.load(Ordering::Relaxed),
            jobs_added: s.jobs.load(Ordering::Relaxed),
            orphans: s.orphans.load(Ordering::Relaxed),
            missed_segments: s.missed_segments.load(Ordering::Relaxed),
            damage_skipped: s.damage_skipped.load(Ordering::Relaxed),
            partitions: s.partitions.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            // Acquire: the error set before `failing` comes with it.
            failing: s.failing.load(Ordering::Acquire),
            failures: s.failures.load(Ordering::Relaxed),
            last_error: s.last_error.lock().expect("catalog error").clone(),
        }
    }
}
