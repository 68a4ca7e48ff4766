//! The catalog thread: follows the durable log and applies it to the store.
//!
//! Each step reads up to [`CHUNK`] records from its position (segment, offset, LSN) up to the
//! durable LSN the commit thread publishes, applies them to rows held in memory (a job submitted,
//! started and finished within one chunk is written once), writes the rows, and at most once a
//! second flushes the touched partitions and then the manifest with the new position. A segment
//! is looked for in `wal/`, then in `archive/`; one that is gone (past retention) is counted and
//! logged, and reading goes on with the next one there is; damage in a sealed segment (which
//! never changes again) is counted, logged and read past, to the next record that checks out.
//!
//! A failure drops the store, is logged and counted, and is retried with a backoff (1 s doubling
//! to a minute) from the manifest's position; records applied twice change nothing (each row
//! keeps the LSN of the last record applied to it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::store::{Row, Store, DAY_MS};
use super::{CatalogError, Shared};
use crate::checkpoint::fold::{FoldJob, Interner};
use crate::job::machine::{self, JobCore};
use crate::wal::format::segment_file_name;
use crate::wal::io::{FileStorage, SegmentFile, Storage};
use crate::wal::reader::{list_segments, resync, tail_segment, RecordView, TailEnd, TailPos};
use crate::wal::record::Record;
use crate::wal::stats::WalStats;
use crate::wal::WalError;

/// Most records read and applied in one step.
pub const CHUNK: usize = 20_000;
/// How often the store is flushed and the manifest written while records come in (caught up or
/// not: a flush is several fsyncs, and one per record of a lone client would queue the WAL's
/// own fdatasync behind them on the same disk). A crash loses at most this much of the catalog's
/// work, which it redoes from the log.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long the thread rests when it has caught up (records that come meanwhile are read in one
/// step after it, not one step each; a reader that waits for them wakes it at once).
const IDLE: Duration = Duration::from_millis(20);
/// Longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often retention is applied and the disk figure updated.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long a failing catalog keeps the segments it has not read from deletion.
const PIN_WHILE_FAILING: Duration = Duration::from_secs(60);

/// The catalog thread's niceness.
const NICENESS: i32 = 19;
/// The share of the time it works while it keeps up with the log.
const DUTY: f64 = 0.25;
/// The lag (records) past which it works harder, up to all of its time.
const LAG_LIMIT: u64 = 1_000_000;

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Records read.
    pub records: u64,
    /// Jobs in the catalog.
    pub jobs: u64,
    /// How long it took (ms).
    pub ms: u64,
}

/// Who waits for a rebuild.
type Reply = Sender<Result<Rebuilt, String>>;
/// A segment file opened, and its location for messages.
type Opened = (Box<dyn SegmentFile>, String);

enum Msg {
    Rebuild(Sender<Result<Rebuilt, String>>),
    Stop,
}

/// The running catalog: its thread and what readers share with it.
pub struct Catalog {
    /// For readers and `stats`.
    pub shared: Arc<Shared>,
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Catalog {
    /// A sender that asks for a rebuild (for the runtime's handle).
    pub fn rebuilder(&self) -> impl Fn() -> Result<Rebuilt, String> + Send + Sync + 'static {
        let tx = self.tx.clone();
        move || {
            let (rtx, rx) = crossbeam_channel::bounded(1);
            tx.send(Msg::Rebuild(rtx))
                .map_err(|_| "the catalog has stopped".to_string())?;
            rx.recv()
                .map_err(|_| "the catalog has stopped".to_string())?
        }
    }

    /// Stops the thread after a last flush.
    pub fn stop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the catalog thread on `dir` (`DATA/catalog`), following the log in `storage`.
pub fn spawn(
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    wal: Arc<WalStats>,
    retention: Duration,
) -> Catalog {
    let (shared, nudge_rx) = Shared::new(wal, dir.clone());
    let shared = Arc::new(shared);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut w = Worker::new(shared.clone(), storage, dir, retention, nudge_rx);
    let thread = std::thread::Builder::new()
        .name("duejob-catalog".into())
        .spawn(move || {
            // Below the primary path (sled's threads, started from this one, inherit it), and
            // paced like the checkpointer: a share of the time while it keeps up, more as it
            // falls behind, so that its lag stays bounded.
            if let Err(e) = rustix::process::setpriority_process(None, NICENESS) {
                log::warn!("catalog: could not lower its priority: {e}");
            }
            crate::checkpoint::enable_pacing(DUTY, Arc::new(Default::default()));
            let wal = w.shared.clone();
            crate::checkpoint::follow(Some(crate::checkpoint::Follow {
                backlog: Box::new(move || {
                    let durable = wal.durable.durable_lsn.load(Relaxed);
                    durable.saturating_sub(wal.stats.applied_lsn.load(Relaxed))
                }),
                limit: LAG_LIMIT,
            }));
            w.run(rx)
        })
        .expect("spawn the catalog thread");
    Catalog {
        shared,
        tx,
        thread: Some(thread),
    }
}

/// Rebuilds the catalog of the data directory `data` while no daemon runs (it takes the data
/// directory's lock, so it refuses while one does): removes `DATA/catalog` and applies the whole
/// WAL and archive.
pub fn rebuild_offline(data: &Path) -> Result<Rebuilt, String> {
    if !data.join("wal").is_dir() {
        return Err(format!(
            "{} holds no WAL (no wal/ directory): not a duejob data directory",
            data.display()
        ));
    }
    let _lock = crate::datadir::lock_data_dir(data).map_err(|e| match e {
        crate::error::Error::Locked(_) => format!(
            "a daemon runs on {}: ask it (`duejob catalog rebuild --socket PATH`)",
            data.display()
        ),
        e => e.to_string(),
    })?;
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::data_dir(data));
    let wal = Arc::new(WalStats::default());
    // Everything the log holds that checks out: the reader of recovery says where it ends. From
    // wal/'s first segment, at whatever LSN it starts (a checkpoint may have released those
    // before it: read from LSN 1, the walk would stop at once, and nothing of the current
    // segment would count as durable).
    let first = list_segments(storage.as_ref())
        .map_err(|e| e.to_string())?
        .first()
        .map_or(1, |(seq, _)| *seq);
    let scan = crate::wal::reader::walk_log_after(
        storage.as_ref(),
        crate::wal::reader::After::from_segment(first),
        crate::wal::reader::OnDamage::Stop,
        &mut |_| Ok(()),
    )
    .0;
    let last = scan.last_lsn().unwrap_or(0);
    wal.durable_lsn.store(last, Release);
    let (shared, nudge_rx) = Shared::new(wal, data.join("catalog"));
    let mut w = Worker::new(
        Arc::new(shared),
        storage,
        data.join("catalog"),
        Duration::from_secs(u64::MAX / 4),
        nudge_rx,
    );
    let t = Instant::now();
    w.reset().map_err(|e| e.to_string())?;
    // Every sealed segment is read to its end whatever the durable point says: read until a
    // step finds nothing more.
    loop {
        match w.step() {
            Ok(Step { read: 0, .. }) => break,
            Ok(_) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    w.flush().map_err(|e| e.to_string())?;
    Ok(Rebuilt {
        records: w.shared.stats.records.load(Relaxed),
        jobs: w.shared.stats.jobs.load(Relaxed),
        ms: t.elapsed().as_millis() as u64,
    })
}

/// What a step did.
struct Step {
    /// Records read.
    read: usize,
    /// Whether it reached the durable point it started with.
    caught: bool,
}

/// A row being changed in this step.
struct Pend {
    day: u64,
    row: Row,
    /// The `time` index (and the key) must be written too.
    index: bool,
    /// The row must be written.
    dirty: bool,
}

struct Worker {
    shared: Arc<Shared>,
    storage: Arc<dyn Storage>,
    archive: Option<Box<dyn Storage>>,
    dir: PathBuf,
    store: Option<Arc<Store>>,
    pos: TailPos,
    pending: HashMap<u64, Pend>,
    names: Interner,
    unflushed: bool,
    last_flush: Instant,
    retention: Duration,
    last_sweep: Option<Instant>,
    backoff: Duration,
    retry_at: Instant,
    waiters: Vec<(Reply, Instant)>,
    /// The step's first error inside the reader's visitor.
    visit_err: Option<CatalogError>,
    /// A reader waiting for the catalog to catch up (see [`Shared::catch_up`]).
    nudge: Receiver<()>,
}

impl Worker {
    fn new(
        shared: Arc<Shared>,
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        retention: Duration,
        nudge: Receiver<()>,
    ) -> Worker {
        let archive = storage.archive();
        Worker {
            shared,
            nudge,
            storage,
            archive,
            dir,
            store: None,
            pos: TailPos {
                seq: 0,
                offset: 0,
                lsn: 0,
            },
            pending: HashMap::new(),
            names: Interner::default(),
            unflushed: false,
            last_flush: Instant::now(),
            retention,
            last_sweep: None,
            backoff: Duration::from_secs(1),
            retry_at: Instant::now(),
            waiters: Vec::new(),
            visit_err: None,
        }
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let mut wait = Duration::ZERO;
            if self.shared.hold.load(Relaxed) {
                wait = IDLE;
            } else if self.store.is_none() {
                let now = Instant::now();
                if now < self.retry_at {
                    wait = self.retry_at - now;
                } else if let Err(e) = self.open() {
                    self.failed(e);
                    continue;
                }
            } else {
                match self.step() {
                    // Caught up: rest rather than read again at once, so that a lone client's
                    // records are read a few dozen at a time, not one step (a read, a sled
                    // batch) each.
                    Ok(Step { read, caught }) if read == 0 || caught => wait = IDLE,
                    Ok(_) => {}
                    Err(e) => {
                        self.failed(e);
                        continue;
                    }
                }
            }
            if !wait.is_zero() || !rx.is_empty() {
                let msg = crossbeam_channel::select! {
                    recv(rx) -> m => m.map_err(|_| RecvTimeoutError::Disconnected),
                    recv(self.nudge) -> _ => Err(RecvTimeoutError::Timeout),
                    default(wait) => Err(RecvTimeoutError::Timeout),
                };
                match msg {
                    Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        if self.store.is_some() {
                            if let Err(e) = self.apply_pending().and_then(|_| self.flush()) {
                                log::error!("catalog: last flush failed: {e}");
                            }
                        }
                        return;
                    }
                    Ok(Msg::Rebuild(reply)) => self.rebuild(reply),
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
        }
    }

    /// Opens the store at the manifest's position (or the log's first segment).
    fn open(&mut self) -> Result<(), CatalogError> {
        let (store, m) = Store::open(&self.dir)?;
        self.pos = if m.seq == 0 {
            self.first_pos()?
        } else {
            TailPos {
                seq: m.seq,
                offset: m.offset,
                lsn: m.lsn,
            }
        };
        self.shared
            .stats
            .applied_lsn
            .store(self.pos.lsn.saturating_sub(1), Release);
        let store = Arc::new(store);
        self.store = Some(store.clone());
        *self.shared.store.lock().expect("catalog store") = Some(store);
        self.pending.clear();
        if self.shared.stats.failing.swap(false, Relaxed) {
            log::info!("catalog: open again at segment {}, LSN {}", self.pos.seq, self.pos.lsn);
        }
        self.shared.stats.failing_since.store(0, Relaxed);
        self.shared.pin_seq.store(self.pos.seq, Relaxed);
        self.backoff = Duration::from_secs(1);
        Ok(())
    }

    /// Where reading starts without a manifest: the oldest segment in the archive or `wal/`.
    fn first_pos(&self) -> Result<TailPos, CatalogError> {
        let seq = self.segments_after(0)?.unwrap_or(1);
        Ok(TailPos {
            seq,
            offset: 0,
            lsn: 0,
        })
    }

    /// The lowest segment number above `seq` in `wal/` or the archive.
    fn segments_after(&self, seq: u64) -> Result<Option<u64>, CatalogError> {
        let mut best: Option<u64> = None;
        let mut look = |s: &dyn Storage| -> Result<(), CatalogError> {
            match list_segments(s) {
                Ok(l) => {
                    if let Some(&(n, _)) = l.iter().find(|(n, _)| *n > seq) {
                        best = Some(best.map_or(n, |b| b.min(n)));
                    }
                    Ok(())
                }
                // No archive directory yet.
                Err(_) if !std::ptr::eq(s, self.storage.as_ref()) => Ok(()),
                Err(e) => Err(CatalogError::Wal(e)),
            }
        };
        look(self.storage.as_ref())?;
        if let Some(a) = &self.archive {
            look(a.as_ref())?;
        }
        Ok(best)
    }

    fn open_segment(&self, seq: u64) -> Result<Option<Opened>, CatalogError> {
        let name = segment_file_name(seq);
        let places = std::iter::once(self.storage.as_ref()).chain(self.archive.as_deref());
        for s in places {
            match s.open(&name, false) {
                Ok(f) => return Ok(Some((f, s.location(&name)))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CatalogError::Wal(WalError::io(s.location(&name), e))),
            }
        }
        Ok(None)
    }

    /// Moves the position past damage at `offset` of the sealed segment it is in: to the next
    /// record there that checks out, or else to the next segment. Counted and logged.
    fn skip_damage(
        &mut self,
        file: &dyn SegmentFile,
        loc: &str,
        offset: u64,
        detail: &str,
    ) -> Result<(), CatalogError> {
        self.shared.stats.damage_skipped.fetch_add(1, Relaxed);
        let after = self.pos.lsn.saturating_sub(1);
        let seq = self.pos.seq;
        match resync(file, loc, seq, offset + 1, after).map_err(CatalogError::Wal)? {
            Some((off, lsn)) => {
                log::error!(
                    "catalog: {loc} is damaged at offset {offset} ({detail}); the history of \
                     {} record(s) from LSN {} on is lost; reading on at offset {off}",
                    lsn.saturating_sub(self.pos.lsn),
                    self.pos.lsn
                );
                self.pos = TailPos {
                    seq,
                    offset: off,
                    lsn,
                };
            }
            None => {
                log::error!(
                    "catalog: {loc} is damaged at offset {offset} ({detail}) and nothing after \
                     it checks out; the history of its records from LSN {} on is lost; going on \
                     with segment {}",
                    self.pos.lsn,
                    seq + 1
                );
                self.pos = TailPos {
                    seq: seq + 1,
                    offset: 0,
                    lsn: 0,
                };
                self.shared.pin_seq.store(self.pos.seq, Relaxed);
            }
        }
        Ok(())
    }

    /// One step: reads and applies what is durable past the position.
    fn step(&mut self) -> Result<Step, CatalogError> {
        let upto = self.shared.durable.durable_lsn.load(Acquire);
        let mut n = 0usize;
        while n < CHUNK {
            // Whether the segment was sealed before it is read: then its end is final.
            let sealed = self.open_segment(self.pos.seq + 1)?.is_some();
            let Some((file, loc)) = self.open_segment(self.pos.seq)? else {
                match self.segments_after(self.pos.seq)? {
                    Some(next) => {
                        log::error!(
                            "catalog: segment {} is gone (past archive retention) before it was \
                             read: the history of its records is lost; going on with segment \
                             {next}",
                            self.pos.seq
                        );
                        self.shared
                            .stats
                            .missed_segments
                            .fetch_add(next - self.pos.seq, Relaxed);
                        self.pos = TailPos {
                            seq: next,
                            offset: 0,
                            lsn: 0,
                        };
                        continue;
                    }
                    None => break,
                }
            };
            let mut pos = self.pos;
            let mut visited = 0usize;
            let end = {
                let mut visit = |r: &RecordView<'_>| -> Result<(), WalError> {
                    visited += 1;
                    match self.apply(r) {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            self.visit_err = Some(e);
                            Err(WalError::Closed)
                        }
                    }
                };
                // A sealed segment was synced whole: every record in it is durable (its last
                // may be a sync mark after the durable data LSN).
                let upto = if sealed { u64::MAX } else { upto };
                tail_segment(file.as_ref(), &loc, &mut pos, upto, CHUNK - n, &mut visit)
            };
            if let Some(e) = self.visit_err.take() {
                return Err(e);
            }
            self.pos = pos;
            n += visited;
            let end = match end {
                // A sealed segment never changes again: reading it once more would meet the same
                // damage forever. Read on past it, loudly.
                Err(WalError::Corrupt { offset, detail, .. }) if sealed => {
                    self.skip_damage(file.as_ref(), &loc, offset, &detail)?;
                    continue;
                }
                end => end.map_err(CatalogError::Wal)?,
            };
            match end {
                TailEnd::SegmentEnd if sealed => {
                    // The pin moves at the next flush: until the manifest says so, a restart
                    // reads this segment again.
                    self.pos = TailPos {
                        seq: pos.seq + 1,
                        offset: 0,
                        lsn: pos.lsn,
                    };
                    self.unflushed = true;
                }
                TailEnd::Full => {}
                _ => break,
            }
        }
        self.apply_pending()?;
        if n > 0 {
            let days = self.store.as_ref().map_or(0, |s| s.days().len());
            self.shared.stats.partitions.store(days as u64, Relaxed);
        }
        let applied = self.pos.lsn.saturating_sub(1);
        self.shared.stats.applied_lsn.store(applied, Release);
        self.shared.stats.records.fetch_add(n as u64, Relaxed);
        let caught = applied >= upto;
        if caught {
            self.shared.stats.caught_up_at.store(crate::clock::now_ms(), Relaxed);
        }
        if self.unflushed && self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        self.answer_waiters(caught);
        self.sweep()?;
        Ok(Step { read: n, caught })
    }

    /// Applies one record to its job's row (held in `pending` until the step ends).
    fn apply(&mut self, r: &RecordView<'_>) -> Result<(), CatalogError> {
        crate::checkpoint::pace();
        let Some(id) = r.record.job_id() else {
            return Ok(());
        };
        let store = self.store.clone().expect("open store");
        if let Record::Submit(s) = &r.record {
            if self.pending.contains_key(&id) {
                return Ok(());
            }
            if let Some((day, row)) = store.get(id)? {
                if row.last_lsn >= r.lsn {
                    // Applied before a restart: what follows may be too.
                    self.pending.insert(
                        id,
                        Pend {
                            day,
                            row,
                            index: false,
                            dirty: false,
                        },
                    );
                    return Ok(());
                }
            }
            let row = Row {
                job: FoldJob {
                    id,
                    queue: self.names.get(&s.queue),
                    kind: self.names.get(&s.kind),
                    payload: None,
                    key: s.key.as_deref().map(Into::into),
                    submitted_at: s.submitted_at,
                    deadline: s.deadline,
                    run_at: s.run_at,
                    max_attempts: s.max_attempts,
                    timeout_ms: s.timeout_ms,
                    core: JobCore::new(s),
                },
                last_lsn: r.lsn,
                payload_at: (r.segment, r.offset),
                replay_of: None,
            };
            self.pending.insert(
                id,
                Pend {
                    day: s.submitted_at / DAY_MS,
                    row,
                    index: true,
                    dirty: true,
                },
            );
            self.shared.stats.jobs.fetch_add(1, Relaxed);
            return Ok(());
        }
        let p = match self.pending.entry(id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match store.get(id)? {
                Some((day, row)) => v.insert(Pend {
                    day,
                    row,
                    index: false,
                    dirty: false,
                }),
                None => {
                    self.shared.stats.orphans.fetch_add(1, Relaxed);
                    return Ok(());
                }
            },
        };
        if r.lsn <= p.row.last_lsn {
            return Ok(());
        }
        let before = p.row.job.core.state;
        if machine::apply(&mut p.row.job.core, &r.record).is_ok() {
            p.row.last_lsn = r.lsn;
            p.dirty = true;
            p.index |= p.row.job.core.state != before;
        }
        Ok(())
    }

    fn apply_pending(&mut self) -> Result<(), CatalogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let store = self.store.clone().expect("open store");
        let rows: Vec<(u64, &Row, bool)> = self
            .pending
            .values()
            .filter(|p| p.dirty)
            .map(|p| (p.day, &p.row, p.index))
            .collect();
        if !rows.is_empty() {
            store.put(&rows)?;
            self.unflushed = true;
        }
        self.pending.clear();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CatalogError> {
        let store = self.store.clone().expect("open store");
        store.flush(self.pos)?;
        // The manifest now starts past the segments before this one: they may go.
        self.shared.pin_seq.store(self.pos.seq, Relaxed);
        self.unflushed = false;
        self.last_flush = Instant::now();
        self.shared.stats.flushes.fetch_add(1, Relaxed);
        self.shared
            .stats
            .partitions
            .store(store.days().len() as u64, Relaxed);
        Ok(())
    }

    /// Drops partitions past retention and updates the disk figure (every [`SWEEP_EVERY`]).
    fn sweep(&mut self) -> Result<(), CatalogError> {
        if self.last_sweep.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return Ok(());
        }
        self.last_sweep = Some(Instant::now());
        let store = self.store.clone().expect("open store");
        let now = crate::clock::now_ms();
        let keep_ms = self.retention.as_millis().min(u64::MAX as u128 / 2) as u64;
        // A day goes once all of it is older than the retention.
        let first_kept = now.saturating_sub(keep_ms) / DAY_MS;
        let n = store.drop_before(first_kept)?;
        if n > 0 {
            log::info!("catalog: removed {n} daily partitions past history_retention");
            self.flush()?;
        }
        self.shared.stats.bytes.store(store.disk_bytes(), Relaxed);
        Ok(())
    }

    fn failed(&mut self, e: CatalogError) {
        let s = &self.shared.stats;
        s.failures.fetch_add(1, Relaxed);
        let msg = e.to_string();
        // The error first: a reader that sees `failing` (Acquire) sees it too.
        *s.last_error.lock().expect("catalog error") = Some(msg.clone());
        let first = !s.failing.swap(true, std::sync::atomic::Ordering::AcqRel);
        if first {
            s.failing_since.store(crate::clock::now_ms(), Relaxed);
            log::error!(
                "catalog: {msg}; jobs go on, `status` of old jobs, `jobs` and `replay` wait for it \
                 (retrying; `duejob catalog rebuild` rebuilds it from the WAL and the archive)"
            );
        } else {
            log::warn!("catalog: still failing: {msg}");
        }
        self.store = None;
        *self.shared.store.lock().expect("catalog store") = None;
        self.pending.clear();
        self.unflushed = false;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        let since = s.failing_since.load(Relaxed);
        if crate::clock::now_ms().saturating_sub(since) >= PIN_WHILE_FAILING.as_millis() as u64 {
            self.shared.pin_seq.store(u64::MAX, Relaxed);
        }
        for (w, _) in self.waiters.drain(..) {
            let _ = w.send(Err(format!("the catalog failed while rebuilding: {msg}")));
        }
    }

    /// Removes the catalog directory and starts over from the log's first segment.
    fn reset(&mut self) -> Result<(), CatalogError> {
        self.store = None;
        *self.shared.store.lock().expect("catalog store") = None;
        self.pending.clear();
        self.unflushed = false;
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CatalogError::io(&self.dir, e)),
        }
        let s = &self.shared.stats;
        s.records.store(0, Relaxed);
        s.jobs.store(0, Relaxed);
        s.orphans.store(0, Relaxed);
        s.missed_segments.store(0, Relaxed);
        s.damage_skipped.store(0, Relaxed);
        self.open()
    }

    fn rebuild(&mut self, reply: Sender<Result<Rebuilt, String>>) {
        log::info!("catalog: rebuilding from the WAL and the archive");
        match self.reset() {
            Ok(()) => {
                *self.shared.stats.last_error.lock().expect("catalog error") = None;
                self.waiters.push((reply, Instant::now()));
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
                self.failed(e);
            }
        }
    }

    fn answer_waiters(&mut self, caught: bool) {
        if !caught || self.waiters.is_empty() {
            return;
        }
        let s = &self.shared.stats;
        for (w, t) in self.waiters.drain(..) {
            let r = Rebuilt {
                records: s.records.load(Relaxed),
                jobs: s.jobs.load(Relaxed),
                ms: t.elapsed().as_millis() as u64,
            };
            log::info!(
                "catalog: rebuilt: {} records, {} jobs in {} ms",
                r.records,
                r.jobs,
                r.ms
            );
            let _ = w.send(Ok(r));
        }
    }
}
