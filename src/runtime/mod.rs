//! [`Runtime`]: duejob embedded in a process. It owns the data directory, recovers the WAL,
//! and runs the WAL thread, the dispatcher and the workers. The socket server ([`crate::server`])
//! is a thin layer over the same [`Handle`].
//!
//! ```no_run
//! use duejob::{JobContext, JobError, JobSpec, Runtime};
//!
//! let rt = Runtime::builder("./my-data")
//!     .register("greet", |ctx: &JobContext<'_>| -> Result<(), JobError> {
//!         println!("hello from job {}", ctx.id);
//!         Ok(())
//!     })
//!     .start()?;
//! let s = rt.submit(&JobSpec::new("default", "greet", "{}"))?;
//! println!("job {} durable at LSN {}", s.id, s.lsn);
//! rt.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::checkpoint::worker as ckpt;
use crate::config::{Config, MAX_DURATION_MS};
use crate::datadir::{lock_data_dir, private_dir};
use crate::handlers::{Handler, Kinds};
use crate::job::WalMsg;
use crate::job::{now_ms, Job, JobRef, LiveSize};
use crate::scheduler::dispatcher::{self};
use crate::scheduler::handoff::Handoff;
use crate::scheduler::{DeadFilter, Msg, Refused};
use crate::wal::appender::{Appender, Sealed};
use crate::wal::commit::{self, Ack, Append, Fate, RecordBatch, WalEvent};
use crate::wal::io::{FileStorage, Storage};
use crate::wal::reader::Tail;
use crate::wal::record::Record;
use crate::wal::stats::WalStats;
use crate::wal::WalError;
use crate::wire::{
    CheckpointReport, CheckpointTaken, DeadSelect, ErrorCode, JobInfo, JobSpec, Rejection, Stats,
    Submitted, WalReport,
};
use crossbeam_channel::{Receiver, Sender};

mod queues;
pub use queues::UNTIL_RESUMED;

pub use crate::error::Error;

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Deepest nesting of arrays and objects in a payload (what serde_json reads back).
pub const MAX_PAYLOAD_DEPTH: usize = 100;

/// How deep arrays and objects nest in JSON text (strings and their escapes skipped).
fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Largest payload, in bytes: with the job's other fields it must fit in one WAL record
/// (`wal::format::MAX_BODY`). Through the socket, `max_line_bytes` (at most 8 MiB) comes first.
pub const MAX_PAYLOAD_BYTES: usize = crate::wal::format::MAX_BODY as usize - 4096;

struct Inner {
    cfg: Arc<Config>,
    kinds: Arc<Kinds>,
    next_id: AtomicU64,
    wal_tx: commit::Queue<JobRef>,
    /// The log itself, for connections that commit their own lone appends.
    wal: commit::Wal<JobRef>,
    sched_tx: Sender<Msg>,
    wal_stats: Arc<WalStats>,
    closing: AtomicBool,
    /// Set once the WAL thread has stopped: no acknowledgement will come any more.
    wal_stopped: AtomicBool,
    /// The data directory, when the WAL lives in it (not with custom storage).
    data_dir: Option<PathBuf>,
    /// The checkpointer's inbox and counters.
    ckpt_tx: Sender<ckpt::Msg>,
    ckpt_stats: Arc<ckpt::Stats>,
    /// The catalog, when it is on (`catalog`, and the WAL in a data directory).
    catalog: Option<Arc<crate::catalog::Shared>>,
    /// Asks the catalog thread for a rebuild.
    rebuild: Option<Rebuild>,
    /// The WAL's files (read by a replay for the payloads).
    storage: Arc<dyn Storage>,
    /// What the alert thread shows.
    alerts: Arc<crate::alerts::Shared>,
    /// The queues' live settings (`queue set|pause|resume`).
    queues: queues::QueueControl,
}

type Rebuild = Box<dyn Fn() -> Result<crate::catalog::Rebuilt, String> + Send + Sync>;

/// A cloneable handle on a running runtime: what connections use.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

fn catalog_failing(e: String) -> Rejection {
    Rejection::new(ErrorCode::CatalogUnavailable, e)
}

fn closed() -> Rejection {
    Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
}

impl Handle {
    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Relaxed)
    }

    /// The data directory (`None` when the runtime runs on custom storage).
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.data_dir.as_deref()
    }

    /// Whether the WAL thread has stopped: an append not answered by now never will be.
    pub(crate) fn is_wal_stopped(&self) -> bool {
        self.inner.wal_stopped.load(Ordering::SeqCst)
    }

    /// Reserves `n` consecutive job ids.
    pub(crate) fn reserve_ids(&self, n: u64) -> u64 {
        self.inner.next_id.fetch_add(n, Ordering::Relaxed)
    }

    /// Validates a submit and builds the job with id 0 (the caller assigns one from
    /// [`Handle::reserve_ids`] once everything it submits together is valid). Writes nothing.
    pub(crate) fn prepare(&self, spec: &JobSpec<'_>, now: u64) -> Result<Job, Rejection> {
        self.prepare_as(spec, now, false)
    }

    /// [`Handle::prepare`]; `replay`: the job is a replay, whose key may carry the reserved
    /// prefix.
    pub(crate) fn prepare_as(
        &self,
        spec: &JobSpec<'_>,
        now: u64,
        replay: bool,
    ) -> Result<Job, Rejection> {
        let cfg = &self.inner.cfg;
        let queue = cfg.queue_id(spec.queue).ok_or_else(|| {
            let known: Vec<&str> = cfg.queues.iter().map(|q| q.name.as_str()).collect();
            Rejection::new(
                ErrorCode::UnknownQueue,
                format!(
                    "unknown queue {:?} (known: {})",
                    spec.queue,
                    known.join(", ")
                ),
            )
        })?;
        let kind = self.inner.kinds.id(spec.kind).ok_or_else(|| {
            Rejection::new(
                ErrorCode::UnknownKind,
                format!(
                    "unknown kind {:?} (known: {})",
                    spec.kind,
                    self.inner.kinds.names().join(", ")
                ),
            )
        })?;
        if let Some(k) = spec.key {
            check_key(k, ErrorCode::BadRequest, "key")?;
            if k.starts_with(crate::job::REPLAY_KEY_PREFIX) && !replay {
                return Err(Rejection::new(
                    ErrorCode::BadRequest,
                    format!(
                        "keys starting with {:?} are reserved for `duejob replay`",
                        crate::job::REPLAY_KEY_PREFIX
                    ),
                ));
            }
        }
        let dur = |name: &str, v: Option<u64>| -> Result<Option<u64>, Rejection> {
            match v {
                Some(ms) if ms > MAX_DURATION_MS => Err(Rejection::new(
                    ErrorCode::BadRequest,
                    format!("{name} must be at most {MAX_DURATION_MS} (10 years)"),
                )),
                v => Ok(v),
            }
        };
        let due_in = dur("due_in_ms", spec.due_in_ms)?;
        let delay = dur("delay_ms", spec.delay_ms)?;
        let q = &cfg.queues[queue as usize];
        let timeout_ms = match dur("timeout_ms", spec.timeout_ms)? {
            Some(0) => {
                return Err(Rejection::new(
                    ErrorCode::BadRequest,
                    "timeout_ms must be at least 1",
                ))
            }
            Some(t) => Some(t),
            None => q.timeout.map(|t| t.as_millis() as u64),
        };
        let max_attempts = match spec.max_attempts {
            Some(0) | Some(1001..) => {
                return Err(Rejection::new(
                    ErrorCode::BadRequest,
                    "max_attempts must be between 1 and 1000",
                ))
            }
            Some(n) => n,
            None => q.max_attempts,
        };
        let admitted = self
            .inner
            .kinds
            .handler(kind)
            .admit_in(&q.name, spec.payload)
            .map_err(|m| Rejection::new(ErrorCode::InvalidPayload, m))?;
        let key: Option<Box<str>> = match (spec.key, admitted.default_key) {
            (Some(k), _) => Some(k.into()),
            (None, Some(k)) => {
                check_key(&k, ErrorCode::InvalidPayload, "the payload's key")?;
                if k.starts_with(crate::job::REPLAY_KEY_PREFIX) {
                    return Err(Rejection::new(
                        ErrorCode::InvalidPayload,
                        format!(
                            "the payload's key must not start with {:?} (reserved for `duejob \
                             replay`)",
                            crate::job::REPLAY_KEY_PREFIX
                        ),
                    ));
                }
                Some(k.into())
            }
            (None, None) => None,
        };
        let payload: Box<str> = match admitted.payload {
            Some(p) => p.into(),
            None => spec.payload.into(),
        };
        // Fewer opening brackets than the limit cannot nest deeper (a count that vectorizes),
        // so the exact scan runs only for payloads that might.
        let brackets = payload.bytes().filter(|&b| b == b'[' || b == b'{').count();
        if brackets > MAX_PAYLOAD_DEPTH && json_depth(&payload) > MAX_PAYLOAD_DEPTH {
            return Err(Rejection::new(
                ErrorCode::InvalidPayload,
                format!(
                    "the payload nests arrays and objects more than {MAX_PAYLOAD_DEPTH} deep \
                     (it could not be shown by `status`)"
                ),
            ));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Rejection::new(
                ErrorCode::InvalidPayload,
                format!(
                    "the payload is {} bytes; at most {MAX_PAYLOAD_BYTES} fit in one WAL record",
                    payload.len()
                ),
            ));
        }
        let run_at = delay.filter(|&d| d > 0).map(|d| now + d);
        let deadline =
            run_at.unwrap_or(now) + due_in.unwrap_or_else(|| self.inner.queues.due_in_ms(queue));
        Ok(Job {
            id: 0,
            queue,
            kind,
            payload,
            key,
            submitted_at: now,
            deadline,
            run_at,
            max_attempts,
            timeout_ms,
        })
    }

    /// Encodes a job's `submit` record into `batch`.
    pub(crate) fn encode_submit(&self, job: &Job, batch: &mut RecordBatch) {
        let q = &self.inner.cfg.queues[job.queue as usize].name;
        let k = self.inner.kinds.name(job.kind);
        batch.push(&Record::Submit(job.to_record(q, k)));
    }

    /// Sends records and their jobs to the WAL; `ack` hears what became of each record.
    pub(crate) fn append(
        &self,
        records: RecordBatch,
        jobs: Vec<JobRef>,
        ack: Sender<Ack>,
    ) -> Result<(), Rejection> {
        if self.is_closing() {
            return Err(closed());
        }
        self.inner
            .wal_tx
            .send(WalMsg::Append(Append {
                records,
                jobs,
                ack: Some(ack),
            }))
            .map_err(|_| closed())
    }

    /// Commits records and their jobs on the calling thread when the log is idle (see
    /// [`commit::Wal::append_now`]: the caller must have no earlier append unanswered), and
    /// returns what became of each record; gives them back when the log is busy or closing.
    pub(crate) fn append_now(
        &self,
        records: RecordBatch,
        jobs: Vec<JobRef>,
    ) -> Result<Ack, (RecordBatch, Vec<JobRef>)> {
        if self.is_closing() {
            return Err((records, jobs));
        }
        self.inner
            .wal
            .append_now(Append {
                records,
                jobs,
                ack: None,
            })
            .map_err(|a| (a.records, a.jobs))
    }

    /// Validates `specs`, numbers them and sends their `submit` records to the WAL as one group
    /// without waiting. Returns the first id (the others follow it) and the channel that hears
    /// each record's fate.
    fn send_specs(&self, specs: &[JobSpec<'_>]) -> Result<(u64, Receiver<Ack>), Rejection> {
        let now = now_ms();
        let mut jobs = specs
            .iter()
            .map(|s| self.prepare(s, now))
            .collect::<Result<Vec<Job>, Rejection>>()?;
        let first = self.reserve_ids(jobs.len() as u64);
        let mut batch = RecordBatch::new();
        for (i, job) in jobs.iter_mut().enumerate() {
            job.id = first + i as u64;
            self.encode_submit(job, &mut batch);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.append(batch, jobs.into_iter().map(Arc::new).collect(), tx)?;
        Ok((first, rx))
    }

    /// Submits one job and waits until it is durable.
    pub fn submit(&self, spec: &JobSpec<'_>) -> Result<Submitted, Rejection> {
        let (id, rx) = self.send_specs(std::slice::from_ref(spec))?;
        let ack = rx.recv().map_err(|_| closed())?;
        match ack.fates().next() {
            Some(Fate::Recorded(lsn)) => Ok(Submitted {
                id,
                lsn,
                duplicate: false,
            }),
            Some(Fate::Duplicate { id, lsn }) => Ok(Submitted {
                id,
                lsn,
                duplicate: true,
            }),
            Some(fate) => Err(fate_rejection(&ack, fate, id)),
            None => Err(closed()),
        }
    }

    pub(crate) fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Msg) -> Result<T, Rejection> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.sched_tx.send(make(tx)).map_err(|_| closed())?;
        rx.recv().map_err(|_| closed())
    }

    /// A job's status and timeline, if known: from the dispatcher's memory (live jobs and the
    /// last `history_limit` finished ones), else from the catalog.
    pub fn status(&self, id: u64) -> Result<Option<JobInfo>, Rejection> {
        if let Some(j) = self.ask(|reply| Msg::Status { id, reply })? {
            return Ok(Some(j));
        }
        let Some(c) = &self.inner.catalog else {
            return Ok(None);
        };
        if id == 0 || id >= self.inner.next_id.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let found = match c.status(id) {
            Ok(found) => found,
            // Not open yet (the daemon has just started, or a rebuild is under way): wait for
            // it as for a lagging one; a failing catalog is answered at once.
            Err(_) => {
                c.catch_up(crate::catalog::READ_WAIT);
                c.status(id).map_err(catalog_failing)?
            }
        };
        if found.is_some() {
            return Ok(found);
        }
        // Forgotten by memory but not applied by the catalog yet?
        let caught = c.catch_up(crate::catalog::READ_WAIT);
        match c.status(id).map_err(catalog_failing)? {
            Some(j) => Ok(Some(j)),
            None if caught => Ok(None),
            None => Err(Rejection::new(
                ErrorCode::CatalogUnavailable,
                format!(
                    "job {id} is not in memory, and the catalog is {} records behind the log: \
                     try again",
                    c.report().lag_records
                ),
            )),
        }
    }

    /// The WAL's files.
    pub(crate) fn wal_storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The catalog, when it is on.
    pub(crate) fn catalog(&self) -> Result<&Arc<crate::catalog::Shared>, Rejection> {
        self.inner.catalog.as_ref().ok_or_else(|| {
            Rejection::new(
                ErrorCode::CatalogUnavailable,
                "the catalog is off (`catalog = false` in the config, or the WAL is not in a data \
                 directory)",
            )
        })
    }

    /// Jobs by submission time, newest first (`duejob jobs`); the second value says whether
    /// more matched than `q.limit`.
    pub fn jobs(&self, q: &crate::catalog::Query) -> Result<(Vec<JobInfo>, bool), Rejection> {
        let c = self.catalog()?;
        if !c.catch_up(crate::catalog::READ_WAIT) {
            log::warn!("jobs: the catalog lags the log; answering with what it has");
        }
        c.jobs(q, &mut |id| {
            self.ask(|reply| Msg::Status { id, reply }).ok().flatten()
        })
        .map_err(catalog_failing)
    }

    /// Rebuilds the catalog from the WAL and the archive; returns once it has caught up.
    pub fn catalog_rebuild(&self) -> Result<crate::catalog::Rebuilt, Rejection> {
        self.catalog()?;
        let r = self
            .inner
            .rebuild
            .as_ref()
            .expect("a catalog has a rebuilder");
        r().map_err(catalog_failing)
    }

    /// Scheduler and WAL figures.
    pub fn stats(&self) -> Result<Stats, Rejection> {
        let mut sched = self.ask(|reply| Msg::Stats { reply })?;
        for (q, o) in self
            .inner
            .cfg
            .queues
            .iter()
            .zip(self.inner.queues.overridden())
        {
            if let Some(s) = sched.queues.get_mut(&q.name) {
                s.overridden = o;
            }
        }
        Ok(Stats {
            sched,
            wal: self.wal_report(),
            kinds: self.inner.kinds.health(),
            catalog: self.inner.catalog.as_ref().map(|c| c.report()),
            alerts: Some(self.inner.alerts.report()),
        })
    }

    /// What `/metrics` shows: the figures of `stats`, the dispatcher's counters and histograms,
    /// and the WAL's fsync latency and group size buckets (powers of two: µs, records).
    pub(crate) fn metrics(
        &self,
    ) -> Result<(Stats, crate::scheduler::Metrics, Vec<u64>, Vec<u64>), Rejection> {
        let stats = self.stats()?;
        let m = self.ask(|reply| Msg::Metrics { reply })?;
        let w = &self.inner.wal_stats;
        Ok((stats, m, w.fsync_buckets(), w.group_buckets()))
    }

    /// A piece of an attempt's output (`duejob log`): attempt `attempt` (default: the latest)
    /// of job `id`, from byte `offset` of its output, at most 64 KiB. While the attempt runs,
    /// the piece ends before an incomplete UTF-8 sequence (it comes whole in the next read).
    pub fn log(
        &self,
        id: u64,
        attempt: Option<u32>,
        offset: u64,
    ) -> Result<crate::wire::JobLog, Rejection> {
        use crate::handlers::exec::output;
        let job = self
            .status(id)?
            .ok_or_else(|| Rejection::new(ErrorCode::NotFound, format!("no job {id}")))?;
        let attempts = job.attempts.len() as u32;
        let latest = job.attempts.last().map(|a| a.number);
        let attempt = match attempt {
            Some(n) if !job.attempts.iter().any(|a| a.number == n) => {
                return Err(Rejection::new(
                    ErrorCode::NotFound,
                    format!("job {id} has no attempt {n} (it has had {attempts})"),
                ))
            }
            Some(n) => Some(n),
            None => latest,
        };
        let running =
            job.state == crate::wire::State::Running && attempt.is_some() && attempt == latest;
        let mut piece = match (attempt, &self.inner.data_dir) {
            (Some(n), Some(dir)) => {
                output::read(&dir.join("output"), id, n, offset, output::MAX_READ)
            }
            _ => output::Chunked {
                start: offset,
                next: offset,
                ..output::Chunked::default()
            },
        };
        if running {
            let whole = utf8_prefix(&piece.data);
            piece.data.truncate(whole);
            piece.next = piece.start + whole as u64;
        }
        Ok(crate::wire::JobLog {
            id,
            attempt,
            attempts,
            state: job.state,
            running,
            start: piece.start,
            next: piece.next,
            skipped: piece.skipped,
            output: String::from_utf8_lossy(&piece.data).into_owned(),
        })
    }

    /// The alert figures `stats` shows (without asking the dispatcher for the rest).
    pub fn alert_summary(&self) -> crate::wire::AlertsReport {
        self.inner.alerts.report()
    }

    /// The alert rules and their state (`duejob alerts`).
    pub fn alerts(&self) -> Vec<crate::wire::AlertInfo> {
        self.inner.alerts.list()
    }

    fn wal_report(&self) -> WalReport {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.inner.wal_stats;
        let groups = s.groups.load(Relaxed);
        let records = s.records.load(Relaxed);
        WalReport {
            sync: self.inner.cfg.sync.to_string(),
            segments: s.segments.load(Relaxed),
            bytes: s.bytes.load(Relaxed),
            records,
            sync_marks: s.marks.load(Relaxed),
            groups,
            mean_group: if groups == 0 {
                0.0
            } else {
                records as f64 / groups as f64
            },
            max_group: s.max_group.load(Relaxed),
            fsyncs: s.fsyncs.load(Relaxed),
            fsync_p50_us: s.fsync_quantile_us(0.5),
            fsync_p99_us: s.fsync_quantile_us(0.99),
            keys: s.keys.load(Relaxed),
            keys_evicted: s.keys_evicted.load(Relaxed),
            checkpoint: self.checkpoint_report(),
        }
    }

    fn checkpoint_report(&self) -> CheckpointReport {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.ckpt_stats;
        let last_at = c.last_at.load(Relaxed);
        CheckpointReport {
            auto: self.inner.cfg.checkpoint.auto,
            bytes_since: c.sealed_bytes.load(Relaxed)
                + self.inner.wal_stats.active_bytes.load(Relaxed),
            checkpoints: c.checkpoints.load(Relaxed),
            last_at: (last_at > 0).then_some(last_at),
            last_lsn: c.last_lsn.load(Relaxed),
            last_ms: c.last_ms.load(Relaxed),
            last_bytes: c.last_bytes.load(Relaxed),
            failures: c.failures.load(Relaxed),
            last_error: c.last_error.lock().expect("stats").clone(),
            released: c.released.load(Relaxed),
            archive_segments: c.archive_segments.load(Relaxed),
            archive_bytes: c.archive_bytes.load(Relaxed),
        }
    }

    /// Takes a checkpoint now: the current segment is sealed, every sealed segment folded into
    /// the checkpoint, and the segments it covers released. Returns once it is in place.
    pub fn checkpoint(&self) -> Result<CheckpointTaken, Rejection> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner
            .ckpt_tx
            .send(ckpt::Msg::Force(tx))
            .map_err(|_| closed())?;
        match rx.recv() {
            Ok(Ok(d)) => Ok(CheckpointTaken {
                lsn: d.lsn,
                segment: d.segment,
                bytes: d.bytes,
                jobs: d.jobs,
                keys: d.keys,
                released: d.released,
                ms: d.ms,
            }),
            Ok(Err(e)) => Err(Rejection::new(
                ErrorCode::CheckpointFailed,
                format!("checkpoint failed: {e}"),
            )),
            Err(_) => Err(closed()),
        }
    }

    /// Cancels a job that has not ended (a running one is told to stop; an exec job's process
    /// group is killed). Returns the state it was in, once the cancel record is durable.
    pub fn cancel(&self, id: u64) -> Result<crate::job::State, Rejection> {
        self.ask(|reply| Msg::Cancel { id, reply })?
            .map_err(|r| refused(id, r, "cancelled"))
    }

    /// Dead jobs (with their last error), oldest death first.
    pub fn dead_list(
        &self,
        queue: Option<&str>,
        since: Option<u64>,
    ) -> Result<Vec<JobInfo>, Rejection> {
        let queue = queue.map(|q| self.queue_for_filter(q)).transpose()?;
        self.ask(|reply| Msg::DeadList {
            queue,
            since,
            reply,
        })
    }

    /// Puts dead jobs back with fresh attempts (one by id, or all, of a queue if given); returns
    /// their ids once that is durable.
    pub fn dead_retry(&self, which: &DeadSelect<'_>) -> Result<Vec<u64>, Rejection> {
        self.dead_op(which, "retried", |which, reply| Msg::DeadRetry {
            which,
            reply,
        })
    }

    /// Removes dead jobs from the dead letters (one by id, or all, of a queue and dead before a
    /// time if given); returns their ids once that is durable.
    pub fn dead_purge(&self, which: &DeadSelect<'_>) -> Result<Vec<u64>, Rejection> {
        self.dead_op(which, "purged", |which, reply| Msg::DeadPurge {
            which,
            reply,
        })
    }

    fn dead_op(
        &self,
        sel: &DeadSelect<'_>,
        verb: &str,
        msg: impl FnOnce(DeadFilter, Sender<Result<Vec<u64>, Refused>>) -> Msg,
    ) -> Result<Vec<u64>, Rejection> {
        sel.check(verb == "retried")?;
        let which = match (sel.id, sel.queue.as_deref()) {
            (Some(id), _) => DeadFilter::Id(id),
            (None, q) => DeadFilter::All {
                queue: q.map(|q| self.queue_for_filter(q)).transpose()?,
                before: sel.before,
            },
        };
        let id = sel.id.unwrap_or(0);
        self.ask(|reply| msg(which, reply))?
            .map_err(|r| refused(id, r, verb))
    }

    /// A queue's index, for filters.
    fn queue_for_filter(&self, name: &str) -> Result<u16, Rejection> {
        self.inner.cfg.queue_id(name).ok_or_else(|| {
            Rejection::new(ErrorCode::UnknownQueue, format!("unknown queue {name:?}"))
        })
    }
}

fn refused(id: u64, r: Refused, verb: &str) -> Rejection {
    match r {
        Refused::NotFound => Rejection::new(ErrorCode::NotFound, format!("no job {id}")),
        Refused::WrongState(_) | Refused::Purged => {
            let state = match r {
                Refused::WrongState(s) => s.to_string(),
                _ => "purged".into(),
            };
            let what = if verb == "cancelled" {
                "jobs that have not ended"
            } else {
                "dead jobs"
            };
            Rejection::new(
                ErrorCode::WrongState,
                format!("job {id} is {state}; only {what} can be {verb}"),
            )
        }
        Refused::Wal {
            error,
            certain,
            applied,
        } => {
            if let WalError::Closed = *error {
                return closed();
            }
            let mut r = if certain {
                Rejection::new(
                    ErrorCode::WalFailed,
                    format!("{error}; the change was not recorded and nothing was changed"),
                )
            } else {
                Rejection::new(
                    ErrorCode::WalUncertain,
                    format!("{error}; the change may or may not have been recorded: after a restart, the job's status tells"),
                )
            };
            if !applied.is_empty() {
                r.message.push_str(&format!(
                    " (it was recorded, and made, for {} job(s) before the failure: recorded_ids)",
                    applied.len()
                ));
                r.recorded_ids = Some(applied);
            }
            r
        }
    }
}

#[cfg(feature = "internals")]
impl Handle {
    /// For the crate's own tests: holds the catalog thread (it applies nothing while `on`), and
    /// returns the catalog's figures, if it is on.
    pub fn catalog_hold(&self, on: bool) -> Option<crate::wire::CatalogReport> {
        let c = self.inner.catalog.as_ref()?;
        c.hold.store(on, Ordering::SeqCst);
        Some(c.report())
    }

    /// For the crate's own tests and examples: validates `specs`, numbers them and sends their
    /// `submit` records to the WAL as one group without waiting. Returns their ids and the
    /// channel that hears each record's fate.
    pub fn append_specs(
        &self,
        specs: &[JobSpec<'_>],
    ) -> Result<(Vec<u64>, Receiver<Ack>), Rejection> {
        let (first, rx) = self.send_specs(specs)?;
        Ok(((first..first + specs.len() as u64).collect(), rx))
    }
}

/// The rejection for a record of `ack` whose fate is not `Recorded`: `wal_failed` when it is
/// certainly not in the log (safe to submit again once the daemon runs again), `wal_uncertain`
/// when it may be (the reply names the job, whose `status` tells after a restart).
pub(crate) fn fate_rejection(ack: &Ack, fate: Fate, id: u64) -> Rejection {
    let error = match &ack.failure {
        Some(f) => f.error.clone(),
        None => Arc::new(WalError::Closed),
    };
    if let WalError::Closed = *error {
        return closed();
    }
    match fate {
        Fate::Unknown => {
            let mut r = Rejection::new(
                ErrorCode::WalUncertain,
                format!("{error}; job {id} was written but may or may not be in the log: after a restart, `status {id}` tells (or submit it again with the same key)"),
            );
            r.id = Some(id);
            r
        }
        _ => Rejection::new(
            ErrorCode::WalFailed,
            format!("{error}; the job was not recorded"),
        ),
    }
}

/// Idempotency keys are 1 to [`MAX_KEY_BYTES`] bytes.
fn check_key(k: &str, code: ErrorCode, what: &str) -> Result<(), Rejection> {
    if k.is_empty() || k.len() > MAX_KEY_BYTES {
        return Err(Rejection::new(
            code,
            format!("{what} must be 1 to {MAX_KEY_BYTES} bytes, not {}", k.len()),
        ));
    }
    // Keys are identifiers. Control characters (NUL above all) have no place in one, and keeping
    // NUL bytes out of every client-chosen string is what keeps a record body from ever holding
    // a forged sync mark (docs/wal-format.md).
    if k.chars().any(char::is_control) {
        return Err(Rejection::new(
            code,
            format!("{what} must not contain control characters"),
        ));
    }
    Ok(())
}

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    data_dir: PathBuf,
    config: Config,
    kinds: Kinds,
    storage: Option<Arc<dyn Storage>>,
    /// The application registered its own `email` kind: `[smtp]` does not replace it.
    own_email: bool,
    own_exec: bool,
}

impl RuntimeBuilder {
    /// Replaces the configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    /// Sets the worker count (the default queues follow it).
    pub fn workers(mut self, n: usize) -> Self {
        let keep_queues = self.config.queues.clone();
        let default_queues = Config::with_workers(self.config.workers).queues;
        self.config.workers = n;
        self.config.queues = if keep_queues == default_queues {
            Config::with_workers(n).queues
        } else {
            keep_queues
        };
        self
    }
    /// Registers a kind.
    pub fn register(mut self, name: &str, handler: impl Handler) -> Self {
        self.own_email |= name == "email";
        self.own_exec |= name == "exec";
        self.kinds.register(name, Arc::new(handler));
        self
    }
    /// Uses this storage for the WAL instead of `DATA/wal` (tests: in-memory, with faults).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Recovers the WAL and starts the threads.
    pub fn start(mut self) -> Result<Runtime, Error> {
        self.config.validate().map_err(Error::Config)?;
        if !self.own_exec {
            self.kinds.configure_exec(&self.config);
        }
        if let (Some(smtp), false) = (&self.config.smtp, self.own_email) {
            self.kinds.configure_email(smtp).map_err(Error::Config)?;
            log::info!(
                "email: SMTP server {}:{} ({:?}, pool of {})",
                smtp.host,
                smtp.port,
                smtp.tls,
                smtp.pool_size
            );
        }
        let own_storage = self.storage.is_none();
        let (storage, lock): (Arc<dyn Storage>, Option<File>) = match self.storage {
            Some(s) => (s, None),
            None => {
                let lock = lock_data_dir(&self.data_dir)?;
                private_dir(&self.data_dir.join("wal"))?;
                (Arc::new(FileStorage::data_dir(&self.data_dir)), Some(lock))
            }
        };
        let cfg = Arc::new(self.config);
        let kinds = Arc::new(self.kinds);
        let mut rec = crate::recovery::recover(storage.as_ref(), &cfg, &kinds)?;
        // The operator's live queue settings from the log, over the file's.
        let (queue_ctl, effective, paused) =
            queues::QueueControl::start(&cfg, std::mem::take(&mut rec.queues));
        let cfg = Arc::new(effective);
        rec.recovered.paused = paused;
        if let Some(c) = &rec.checkpoint {
            log::info!(
                "checkpoint through LSN {} (segment {}): {} live jobs, {} keys",
                c.header.covered_lsn,
                c.header.covered_seq,
                c.end.jobs,
                c.end.keys
            );
        }
        log::info!(
            "recovered {} records in {:.1} ms: {} live jobs, next id {}",
            rec.records,
            rec.elapsed.as_secs_f64() * 1000.0,
            rec.recovered.live.len(),
            rec.next_id
        );
        let wal_stats = Arc::new(WalStats::default());
        // Every segment but the one the appender goes on in is sealed.
        let mut sealed: Vec<Sealed> = rec
            .scan
            .segments
            .iter()
            .filter(|s| s.tail != Tail::EmptySegment)
            .map(|s| Sealed {
                seq: s.seq,
                end: s.end,
                last_lsn: s.last_lsn.unwrap_or(s.first_lsn.saturating_sub(1)),
            })
            .collect();
        sealed.pop();
        let appender = Appender::open(
            storage.clone(),
            &rec.scan,
            cfg.segment_size,
            wal_stats.clone(),
        )?;
        let (sched_tx, sched_rx) = crossbeam_channel::unbounded();
        let (wal_tx, wal_rx) = commit::queue(Some(4096));
        let seal_tx = wal_tx.clone();
        // The live set's size, counted here for the recovered jobs, then by the dispatcher.
        let live = Arc::new(LiveSize::default());
        for l in &rec.recovered.live {
            live.add(&l.job, 1);
        }
        let catalog = (own_storage && cfg.catalog).then(|| {
            crate::catalog::spawn(
                self.data_dir.join("catalog"),
                storage.clone(),
                wal_stats.clone(),
                cfg.history_retention,
            )
        });
        let pin = catalog.as_ref().map(|c| c.shared.clone());
        let wal_files = storage.clone();
        let checkpointer = ckpt::spawn(
            storage,
            ckpt::Settings {
                cfg: cfg.checkpoint.clone(),
                key_retention_ms: cfg.key_retention.as_millis() as u64,
                max_keys: cfg.max_keys,
                history_limit: cfg.history_limit,
                catalog_pin: ckpt::Pin(Arc::new(move || {
                    pin.as_ref()
                        .map_or(u64::MAX, |c| c.pin_seq.load(Ordering::Relaxed))
                })),
            },
            rec.checkpoint.as_ref(),
            sealed,
            live.clone(),
            wal_stats.clone(),
            Box::new(move || {
                let (tx, rx) = crossbeam_channel::bounded(1);
                seal_tx
                    .send(WalMsg::Seal(tx))
                    .map_err(|_| "the WAL is closed".to_string())?;
                match rx.recv() {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("the WAL is closed".to_string()),
                }
            }),
        );
        let to_sched = sched_tx.clone();
        let to_ckpt = checkpointer.sender();
        let handoff = Arc::new(Handoff::default());
        let to_dispatcher = handoff.clone();
        let (wal, wal_thread) = commit::spawn(
            appender,
            commit::Options {
                mode: cfg.sync,
                seal_after: cfg.checkpoint.auto.then_some(cfg.checkpoint.seal_after),
            },
            rec.keys,
            wal_rx,
            Box::new(move |event| match event {
                WalEvent::Durable(jobs) => handoff.hand_on(jobs, &to_sched),
                WalEvent::Failed(e) => handoff.failed(e, &to_sched),
                WalEvent::Sealed(s) => {
                    let _ = to_ckpt.send(ckpt::Msg::Sealed(s));
                }
            }),
        );
        if !rec.orphans.is_empty() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = wal_tx.send(WalMsg::Append(Append {
                records: rec.orphans,
                jobs: vec![],
                ack: Some(tx),
            }));
            if let Ok(Ack {
                failure: Some(f), ..
            }) = rx.recv()
            {
                log::error!(
                    "could not record the end of jobs that can no longer run: {}",
                    f.error
                );
            }
        }
        // Kinds set up before anything runs (exec: kill what a daemon that died left running).
        kinds
            .start(own_storage.then_some(self.data_dir.as_path()))
            .map_err(Error::Config)?;
        let dispatcher = dispatcher::spawn(
            cfg.clone(),
            kinds.clone(),
            rec.recovered,
            wal_tx.clone(),
            sched_tx.clone(),
            (sched_rx, to_dispatcher),
            live,
        );
        log::info!(
            "duejob runtime started: {} workers, sync {}, order {}, queues {}",
            cfg.workers,
            cfg.sync,
            cfg.order.name(),
            cfg.queues
                .iter()
                .map(|q| q.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let inner = Arc::new(Inner {
            next_id: AtomicU64::new(rec.next_id),
            cfg,
            kinds,
            wal_tx,
            wal,
            sched_tx,
            wal_stats,
            closing: AtomicBool::new(false),
            wal_stopped: AtomicBool::new(false),
            data_dir: own_storage.then(|| self.data_dir.clone()),
            ckpt_tx: checkpointer.sender(),
            ckpt_stats: checkpointer.stats.clone(),
            rebuild: catalog.as_ref().map(|c| Box::new(c.rebuilder()) as Rebuild),
            catalog: catalog.as_ref().map(|c| c.shared.clone()),
            storage: wal_files,
            alerts: Arc::default(),
            queues: queue_ctl,
        });
        let handle = Handle { inner };
        let source = handle.clone();
        let alerts = crate::alerts::spawn(
            handle.inner.cfg.clone(),
            handle.inner.alerts.clone(),
            Box::new(move || {
                if source.inner.closing.load(Ordering::Relaxed) {
                    return None;
                }
                let stats = source.stats().ok()?;
                Some((stats, source.inner.wal_stats.fsync_buckets()))
            }),
        );
        Ok(Runtime {
            handle,
            threads: Some((dispatcher, wal_thread)),
            checkpointer: Some(checkpointer),
            alerts: Some(alerts),
            catalog,
            _lock: lock,
            data_dir: self.data_dir,
        })
    }
}

/// duejob running in this process.
pub struct Runtime {
    handle: Handle,
    threads: Option<(JoinHandle<()>, JoinHandle<()>)>,
    checkpointer: Option<ckpt::Checkpointer>,
    alerts: Option<crate::alerts::Alerts>,
    catalog: Option<crate::catalog::Catalog>,
    _lock: Option<File>,
    data_dir: PathBuf,
}

impl std::ops::Deref for Runtime {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Runtime {
    /// A builder with the default configuration (docs/guarantees.md) and the built-in kinds.
    pub fn builder(data_dir: impl Into<PathBuf>) -> RuntimeBuilder {
        RuntimeBuilder {
            data_dir: data_dir.into(),
            config: Config::with_workers(crate::config::default_workers()),
            kinds: Kinds::builtin(),
            storage: None,
            own_email: false,
            own_exec: false,
        }
    }

    /// A cloneable handle.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops: no new submits, running jobs get the configured grace period, everything written
    /// is synced.
    pub fn shutdown(mut self) {
        let grace = self.handle.inner.cfg.shutdown_grace;
        self.stop(grace);
    }

    /// Like [`Runtime::shutdown`] with an explicit grace period.
    pub fn shutdown_within(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        let Some((dispatcher, wal)) = self.threads.take() else {
            return;
        };
        let inner = &self.handle.inner;
        inner.closing.store(true, Ordering::SeqCst);
        if let Some(mut a) = self.alerts.take() {
            a.stop();
        }
        // First: it may be waiting for the WAL to seal a segment.
        if let Some(mut c) = self.checkpointer.take() {
            c.stop();
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        if inner
            .sched_tx
            .send(Msg::Shutdown { grace, reply: tx })
            .is_ok()
        {
            let _ = rx.recv();
        }
        let _ = dispatcher.join();
        let (tx, rx) = crossbeam_channel::bounded(1);
        if inner.wal_tx.send(WalMsg::Stop(tx)).is_ok() {
            let _ = rx.recv();
        }
        let _ = wal.join();
        inner.wal_stopped.store(true, Ordering::SeqCst);
        if let Some(mut c) = self.catalog.take() {
            c.stop();
        }
        log::info!("duejob runtime stopped");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// Length of `b` without an incomplete UTF-8 sequence at its end (one cut by the read, whose
/// rest comes with the next).
fn utf8_prefix(b: &[u8]) -> usize {
    // The last lead byte, within the last 4 bytes.
    let Some(lead) = (b.len().saturating_sub(4)..b.len())
        .rev()
        .find(|&i| b[i] & 0xC0 != 0x80)
    else {
        return b.len();
    };
    let need = match b[lead] {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    };
    if b.len() - lead < need {
        lead
    } else {
        b.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("{}"), 1);
        assert_eq!(json_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(r#"{"s":"[[[{{{ \" ]]]"}"#), 1);
        assert_eq!(json_depth("7"), 0);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(json_depth(&deep), 200);
    }

    #[test]
    fn a_cut_utf8_sequence_at_the_end_is_held_back_and_nothing_else() {
        let s = "añ€😀".as_bytes();
        assert_eq!(super::utf8_prefix(s), s.len());
        for cut in 1..s.len() {
            let whole = super::utf8_prefix(&s[..cut]);
            assert!(std::str::from_utf8(&s[..whole]).is_ok(), "cut {cut}");
            assert!(cut - whole < 4 && whole <= cut, "cut {cut}: {whole}");
        }
        assert_eq!(
            super::utf8_prefix(&s[..s.len() - 1]),
            s.len() - 4,
            "the emoji waits"
        );
        // Invalid bytes are not held back (nothing would ever complete them).
        assert_eq!(super::utf8_prefix(b"ab\xff"), 3);
        assert_eq!(super::utf8_prefix(b""), 0);
    }
}
