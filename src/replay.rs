//! `duejob replay`: the finished jobs of a time window submitted again, duplicates discarded.
//!
//! The catalog selects the jobs submitted in the window (queue and kind filters), the dispatcher's
//! memory gives the freshest state of each (the catalog may lag it by a moment), and each is:
//! - skipped as `live` if it has not finished (it will run anyway);
//! - skipped as `duplicate` if it was replayed before, or is a replay itself: a replay's
//!   idempotency key is `replay:ID` of the first job (G5 within `key_retention` in the commit
//!   thread's memory, and the catalog's key index beyond it), so running the same replay again
//!   enqueues nothing;
//! - skipped as `payload_unavailable` if its `submit` record is gone (past archive retention);
//! - skipped as `refused` if it no longer validates (its queue or kind left the configuration);
//! - otherwise submitted again with its payload, queue, kind, attempts and timeout, and a fresh
//!   deadline.
//!
//! The window is read oldest first, a chunk at a time (the rows of 256 jobs, one dispatcher ask
//! for their states, their `submit` records read through one open segment file), and it ends at
//! the moment the replay starts: the replay's own jobs are never part of it. New jobs go in
//! chunks, each only once the ready jobs of its queues are few, so a large replay
//! flows in as fast as the workers take the jobs and never puts thousands of jobs ahead of a
//! notification submitted after it. A `replay` record with the figures follows the new jobs'
//! records in the log (`wal dump` shows it). A dry run writes nothing.

use std::time::{Duration, Instant};

use crate::catalog::store::Row;
use crate::catalog::{Query, Shared, READ_WAIT};
use crate::job::{replay_key, replay_of, Job, JobRef};
use crate::runtime::{fate_rejection, Handle};
use crate::scheduler::Msg;
use crate::wal::commit::{Fate, RecordBatch};
use crate::wal::io::Storage;
use crate::wal::reader::RecordReader;
use crate::wal::record::{self, Record};
use crate::wire::{ErrorCode, JobSpec, Rejection, ReplaySpec, Replayed};

/// Jobs submitted at once.
const CHUNK: usize = 256;
/// Ids kept per reason in `samples`.
const SAMPLES: usize = 5;
/// Longest wait for a queue's ready jobs to drain before a chunk goes in anyway.
const MAX_PACE_WAIT: Duration = Duration::from_secs(60);

/// A job the replay will submit.
struct Todo {
    root: u64,
    queue: String,
    kind: String,
    payload: String,
    max_attempts: u32,
    timeout_ms: Option<u64>,
}

fn skip(out: &mut Replayed, reason: &str, id: u64) {
    *out.skipped.entry(reason.to_string()).or_default() += 1;
    let s = out.samples.entry(reason.to_string()).or_default();
    if s.len() < SAMPLES {
        s.push(id);
    }
}

impl Handle {
    /// Runs (or, with `dry_run`, describes) a replay; see the module docs.
    pub fn replay(&self, spec: &ReplaySpec<'_>) -> Result<Replayed, Rejection> {
        let c = self.catalog()?.clone();
        if !c.catch_up(READ_WAIT) {
            let r = c.report();
            return Err(Rejection::new(
                ErrorCode::CatalogUnavailable,
                if r.failing {
                    format!(
                        "the catalog is failing ({}); `duejob catalog rebuild` restores it",
                        r.last_error.unwrap_or_default()
                    )
                } else {
                    format!(
                        "the catalog is {} records behind the log: a replay now could miss jobs; \
                         try again when `duejob stats` shows it caught up",
                        r.lag_records
                    )
                },
            ));
        }
        // Jobs submitted from now on (this replay's own among them) are not part of it.
        let started = crate::job::now_ms();
        let q = Query {
            since: Some(spec.since),
            until: Some(spec.until.min(started)),
            queue: spec.queue.as_deref().map(Into::into),
            kind: spec.kind.as_deref().map(Into::into),
            states: Vec::new(),
            limit: usize::MAX,
        };
        let mut pass = Pass {
            h: self,
            spec,
            out: Replayed {
                dry_run: spec.dry_run,
                ..Replayed::default()
            },
            rows: Vec::with_capacity(CHUNK),
            reader: RecordReader::default(),
            would: Vec::new(),
            failed: None,
        };
        for reason in ["live", "duplicate", "payload_unavailable", "refused"] {
            pass.out.skipped.insert(reason.into(), 0);
        }
        let scanned = c.select(&q, &mut |row| {
            pass.rows.push(row);
            pass.rows.len() < CHUNK || pass.chunk(&c)
        });
        scanned.map_err(|e| Rejection::new(ErrorCode::CatalogUnavailable, e))?;
        if let Some(e) = pass.failed.take() {
            return Err(e);
        }
        if !pass.chunk(&c) {
            return Err(pass.failed.take().expect("a failed chunk says why"));
        }
        let mut out = pass.out;
        out.samples.insert("enqueue".into(), pass.would);
        if spec.dry_run {
            return Ok(out);
        }
        out.enqueued = out.ids.len() as u64;
        self.record_replay(spec, &out)?;
        log::info!(
            "replay of {}..{}: {} selected, {} enqueued, skipped {:?}",
            spec.since,
            spec.until,
            out.selected,
            out.enqueued,
            out.skipped
        );
        Ok(out)
    }
}

/// A replay under way: the rows of the chunk read from the catalog, and what it did so far.
struct Pass<'a> {
    h: &'a Handle,
    spec: &'a ReplaySpec<'a>,
    out: Replayed,
    rows: Vec<Row>,
    reader: RecordReader,
    /// The first jobs it (would) submit again, for `samples.enqueue`.
    would: Vec<u64>,
    failed: Option<Rejection>,
}

impl Pass<'_> {
    /// Decides each row of the chunk, and (unless a dry run) submits the chunk's jobs once their
    /// queues have room. Returns false if the replay must stop (`failed` says why).
    fn chunk(&mut self, c: &Shared) -> bool {
        match self.try_chunk(c) {
            Ok(()) => true,
            Err(e) => {
                self.failed = Some(e);
                false
            }
        }
    }

    fn try_chunk(&mut self, c: &Shared) -> Result<(), Rejection> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let ids = rows.iter().map(|r| r.job.id).collect();
        // The dispatcher's memory may know a newer state than the catalog: one ask per chunk.
        let live = self.h.ask(|reply| Msg::States { ids, reply })?;
        let storage = self.h.wal_storage();
        let archive = storage.archive();
        let places: Vec<&dyn Storage> = std::iter::once(storage.as_ref())
            .chain(archive.as_deref())
            .collect();
        let mut todo = Vec::new();
        let out = &mut self.out;
        for (row, live) in rows.iter().zip(live) {
            let id = row.job.id;
            let state = live.unwrap_or(row.job.core.state);
            if !self.spec.states.is_empty() && !self.spec.states.contains(&state) {
                continue;
            }
            out.selected += 1;
            *out.by_queue
                .entry(row.job.queue.to_string())
                .or_default()
                .entry(state)
                .or_default() += 1;
            if !state.is_terminal() {
                skip(out, "live", id);
                continue;
            }
            // The same root twice in one replay cannot happen: a job and a replay of it in the
            // window means that replay exists, so its key is known.
            let root = replay_of(row.job.key.as_deref()).unwrap_or(id);
            let known = c
                .key(&replay_key(root))
                .map_err(|e| Rejection::new(ErrorCode::CatalogUnavailable, e))?;
            if known.is_some() {
                skip(out, "duplicate", id);
                continue;
            }
            let Some(payload) = payload_of(&mut self.reader, &places, id, row.payload_at) else {
                skip(out, "payload_unavailable", id);
                continue;
            };
            todo.push(Todo {
                root,
                queue: row.job.queue.to_string(),
                kind: row.job.kind.to_string(),
                payload,
                max_attempts: row.job.max_attempts,
                timeout_ms: row.job.timeout_ms,
            });
        }
        let room = SAMPLES - self.would.len();
        self.would.extend(todo.iter().take(room).map(|t| t.root));
        if self.spec.dry_run {
            out.enqueued += todo.len() as u64;
            return Ok(());
        }
        if todo.is_empty() {
            return Ok(());
        }
        self.h.pace(&todo);
        self.h.submit_replays(&todo, out)
    }
}

/// The payload of job `id`, from its `submit` record at `at` (in `wal/` or the archive).
fn payload_of(
    reader: &mut RecordReader,
    places: &[&dyn Storage],
    id: u64,
    (seq, offset): (u64, u64),
) -> Option<String> {
    match reader.read(places, seq, offset) {
        Ok(Some((_, Record::Submit(sub)))) if sub.id == id => Some(sub.payload.into_owned()),
        Ok(Some(_)) => {
            log::error!(
                "replay: the catalog says job {id}'s submit is at segment {seq} offset {offset}, \
                 but another record is there"
            );
            None
        }
        Ok(None) => None,
        Err(e) => {
            log::error!("replay: job {id}'s submit record: {e}");
            None
        }
    }
}

impl Handle {
    /// Waits until the queues of `chunk` have few ready jobs (as many as twice their workers, at
    /// least a chunk), at most [`MAX_PACE_WAIT`].
    fn pace(&self, chunk: &[Todo]) {
        let cfg = self.config();
        let mut queues: Vec<u16> = chunk
            .iter()
            .filter_map(|t| cfg.queue_id(&t.queue))
            .collect();
        queues.sort_unstable();
        queues.dedup();
        let start = Instant::now();
        for q in queues {
            let limit = (2 * cfg.queues[q as usize].max_workers).max(CHUNK) as u64;
            loop {
                let Ok(ready) = self.ask(|reply| Msg::Ready { queue: q, reply }) else {
                    return;
                };
                if ready <= limit {
                    break;
                }
                if start.elapsed() >= MAX_PACE_WAIT {
                    log::warn!(
                        "replay: queue {} still has {ready} ready jobs after {} s; going on",
                        cfg.queues[q as usize].name,
                        MAX_PACE_WAIT.as_secs()
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn submit_replays(&self, chunk: &[Todo], out: &mut Replayed) -> Result<(), Rejection> {
        let now = crate::job::now_ms();
        let keys: Vec<String> = chunk.iter().map(|t| replay_key(t.root)).collect();
        let mut jobs: Vec<Job> = Vec::with_capacity(chunk.len());
        let mut roots = Vec::with_capacity(chunk.len());
        for (t, key) in chunk.iter().zip(&keys) {
            let spec = JobSpec {
                queue: &t.queue,
                kind: &t.kind,
                payload: &t.payload,
                key: Some(key),
                due_in_ms: None,
                delay_ms: None,
                max_attempts: Some(t.max_attempts),
                timeout_ms: t.timeout_ms,
            };
            match self.prepare_as(&spec, now, true) {
                Ok(j) => {
                    jobs.push(j);
                    roots.push(t.root);
                }
                Err(e) => {
                    log::warn!("replay: job {} cannot be submitted again: {e}", t.root);
                    skip(out, "refused", t.root);
                }
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let first = self.reserve_ids(jobs.len() as u64);
        let mut batch = RecordBatch::new();
        for (i, job) in jobs.iter_mut().enumerate() {
            job.id = first + i as u64;
            self.encode_submit(job, &mut batch);
        }
        let n = jobs.len();
        let refs: Vec<JobRef> = jobs.into_iter().map(std::sync::Arc::new).collect();
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.append(batch, refs, tx)?;
        let ack = rx
            .recv()
            .map_err(|_| Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"))?;
        // One fate per record (the iterator goes on past the end).
        for (i, fate) in ack.fates().take(n).enumerate() {
            let id = first + i as u64;
            match fate {
                Fate::Recorded(_) => out.ids.push(id),
                Fate::Duplicate { .. } => skip(out, "duplicate", roots[i]),
                fate => {
                    let mut r = fate_rejection(&ack, fate, id);
                    r.recorded_ids = Some(out.ids.clone());
                    return Err(r);
                }
            }
        }
        Ok(())
    }

    /// Appends the `replay` record with the figures, and waits until it is durable.
    fn record_replay(&self, spec: &ReplaySpec<'_>, out: &Replayed) -> Result<(), Rejection> {
        let n = |r: &str| out.skipped.get(r).copied().unwrap_or(0);
        let rec = Record::Replay(record::Replay {
            at: crate::job::now_ms(),
            since: spec.since,
            until: spec.until,
            queue: spec.queue.clone(),
            kind: spec.kind.clone(),
            states: spec.states.iter().map(|s| s.index() as u8).collect(),
            selected: out.selected,
            enqueued: out.enqueued,
            skipped_live: n("live"),
            skipped_duplicate: n("duplicate"),
            skipped_unavailable: n("payload_unavailable"),
            first_id: out.ids.first().copied().unwrap_or(0),
            last_id: out.ids.last().copied().unwrap_or(0),
        });
        let mut batch = RecordBatch::new();
        batch.push(&rec);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.append(batch, Vec::new(), tx)?;
        match rx.recv() {
            Ok(a) if a.is_ok() => Ok(()),
            Ok(a) => {
                let f = a.fates().next().unwrap_or(Fate::NotRecorded);
                let mut r = fate_rejection(&a, f, 0);
                r.recorded_ids = Some(out.ids.clone());
                Err(r)
            }
            Err(_) => Err(Rejection::new(
                ErrorCode::ShuttingDown,
                "the daemon is shutting down",
            )),
        }
    }
}
