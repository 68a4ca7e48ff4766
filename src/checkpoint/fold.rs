//! The fold: what the log's records, applied in order through the job state machine, leave of
//! every job. Recovery folds the checkpoint and the tail of the log into the dispatcher's starting
//! state; the checkpointer folds the previous checkpoint and the segments sealed since into the
//! next checkpoint. One fold, so a checkpoint holds exactly what recovery would have built from
//! the segments it replaces.
//!
//! The fold is raw: it applies records and nothing else. What recovery decides afterwards (a
//! running attempt was interrupted, a job whose queue went is ended) is recovery's, done after the
//! fold and written to the log as records, so a checkpoint taken later folds them like any other.
//!
//! Finished jobs (succeeded, cancelled, purged) are kept only as the history `status` serves:
//! beyond `history_limit` the oldest are dropped (counted in [`Fold::released`]), so folding a log
//! of any length takes memory for the live jobs and the history only.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::idmap::{id_map, IdMap};
use crate::job::machine::{self, JobCore, Stale, Transition};
use crate::job::State;
use crate::wal::keys::KeyIndex;
use crate::wal::reader::RecordView;
use crate::wal::record::Record;

/// How a purged dead job is counted in [`Fold::released`] (states count by [`State::index`]).
pub const PURGED: u8 = 7;

/// A job as the fold knows it: what it was submitted with, and its progress.
#[derive(Debug, Clone)]
pub struct FoldJob {
    /// Job id.
    pub id: u64,
    /// Queue name.
    pub queue: Arc<str>,
    /// Kind name.
    pub kind: Arc<str>,
    /// Payload; dropped once the job finished (a dead job keeps it: it can be revived).
    pub payload: Option<Box<str>>,
    /// Idempotency key.
    pub key: Option<Box<str>>,
    /// Acceptance time (ms).
    pub submitted_at: u64,
    /// Deadline (ms).
    pub deadline: u64,
    /// Earliest start of a delayed job (ms).
    pub run_at: Option<u64>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// State, attempts, timeline.
    pub core: JobCore,
}

impl FoldJob {
    /// Whether the job left the live set for good: succeeded, cancelled, or dead and purged.
    pub fn finished(&self) -> bool {
        self.core.purged || matches!(self.core.state, State::Succeeded | State::Cancelled)
    }
}

/// Shares one `Arc<str>` per queue or kind name. A handful of names: a linear scan beats hashing
/// the name of every record.
#[derive(Default)]
pub struct Interner(Vec<Arc<str>>);

impl Interner {
    /// For each interned name, in order, what `resolve` says of it (evaluated once per name).
    pub fn resolve<T>(&self, resolve: impl Fn(&str) -> T) -> Vec<T> {
        self.0.iter().map(|a| resolve(a)).collect()
    }

    /// Position of an `Arc` this interner handed out (pointer comparison, no string compare).
    pub fn position(&self, a: &Arc<str>) -> usize {
        self.0
            .iter()
            .position(|b| Arc::ptr_eq(a, b))
            .expect("interned name")
    }

    /// The shared `Arc` for `s`.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.iter().find(|a| &***a == s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.push(a.clone());
        a
    }
}

/// Jobs folded so far, the order in which they finished, the keys, the highest id.
pub struct Fold {
    /// Jobs in a Vec, found through a small id -> index map: growing the map moves 16-byte
    /// entries, not whole jobs.
    jobs: Vec<FoldJob>,
    index: IdMap<u32>,
    /// Ids of finished jobs in the order they finished.
    ended: Vec<u64>,
    /// Queue and kind names.
    pub names: Interner,
    /// Idempotency keys within their retention.
    pub keys: KeyIndex,
    /// Highest job id seen.
    pub max_id: u64,
    /// Records applied.
    pub records: u64,
    /// Finished jobs dropped beyond the history: (queue, how it is counted: a state index, or
    /// [`PURGED`]) -> how many.
    pub released: BTreeMap<(Arc<str>, u8), u64>,
    history_limit: usize,
    /// When the keys' retention is judged (ms).
    now: u64,
}

impl Fold {
    /// An empty fold. `now` judges the keys' retention.
    pub fn new(keys: KeyIndex, history_limit: usize, now: u64) -> Fold {
        Fold {
            jobs: Vec::new(),
            index: id_map(0),
            ended: Vec::new(),
            names: Interner::default(),
            keys,
            max_id: 0,
            records: 0,
            released: BTreeMap::new(),
            history_limit,
            now,
        }
    }

    /// When the keys' retention is judged.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Adds a job as a checkpoint holds it; `finished` ones join the history in the order given.
    pub fn restore(&mut self, job: FoldJob) {
        self.max_id = self.max_id.max(job.id);
        if job.finished() {
            self.ended.push(job.id);
        }
        self.index.insert(job.id, self.jobs.len() as u32);
        self.jobs.push(job);
    }

    /// Applies one record read from the log.
    pub fn apply(&mut self, r: &RecordView<'_>) {
        self.records += 1;
        // Sync marks are about the log, not a job.
        let Some(id) = r.record.job_id() else {
            return;
        };
        if let Record::Submit(s) = &r.record {
            self.max_id = self.max_id.max(s.id);
            if self.index.contains_key(&s.id) {
                log::error!(
                    "job {} submitted twice (LSN {}); keeping the first",
                    s.id,
                    r.lsn
                );
                return;
            }
            if let Some(k) = &s.key {
                self.keys.insert(k, s.id, r.lsn, s.submitted_at, self.now);
            }
            let (queue, kind) = (self.names.get(&s.queue), self.names.get(&s.kind));
            self.index.insert(s.id, self.jobs.len() as u32);
            self.jobs.push(FoldJob {
                id: s.id,
                queue,
                kind,
                payload: Some(s.payload.as_ref().into()),
                key: s.key.as_deref().map(Into::into),
                submitted_at: s.submitted_at,
                deadline: s.deadline,
                run_at: s.run_at,
                max_attempts: s.max_attempts,
                timeout_ms: s.timeout_ms,
                core: JobCore::new(s),
            });
            return;
        }
        let Some(j) = self.index.get(&id).map(|&i| &mut self.jobs[i as usize]) else {
            return;
        };
        match machine::apply(&mut j.core, &r.record) {
            Ok(Transition::Ended(State::Succeeded | State::Cancelled) | Transition::Purged) => {
                j.payload = None;
                self.ended.push(id);
                if self.ended.len() > 2 * self.history_limit + 4096 {
                    self.compact();
                }
            }
            Ok(_) => {}
            Err(stale @ Stale::NotCurrent { .. }) => log::warn!(
                "ignoring the {} of job {id} at LSN {}: {stale}",
                r.record.type_name(),
                r.lsn
            ),
            // A record after the job's end (a cancel racing a finish): nothing to do.
            Err(_) => {}
        }
    }

    /// Drops the finished jobs beyond the history (oldest first), counting them.
    fn compact(&mut self) {
        let drop_n = self.ended.len().saturating_sub(self.history_limit);
        if drop_n == 0 {
            return;
        }
        let gone: IdMap<()> = self.ended.drain(..drop_n).map(|id| (id, ())).collect();
        let released = &mut self.released;
        self.jobs.retain(|j| {
            let drop = gone.contains_key(&j.id);
            if drop {
                let how = if j.core.purged {
                    PURGED
                } else {
                    j.core.state.index() as u8
                };
                *released.entry((j.queue.clone(), how)).or_default() += 1;
            }
            !drop
        });
        self.index.clear();
        for (i, j) in self.jobs.iter().enumerate() {
            self.index.insert(j.id, i as u32);
        }
    }

    /// The jobs that have not finished (any order), and the history: the last `history_limit`
    /// finished jobs, oldest first.
    pub fn split(mut self) -> Folded {
        self.compact();
        let mut pos: IdMap<usize> = id_map(self.ended.len());
        for (p, id) in self.ended.iter().enumerate() {
            pos.insert(*id, p);
        }
        let mut live = Vec::with_capacity(self.jobs.len() - pos.len().min(self.jobs.len()));
        let mut history: Vec<(usize, FoldJob)> = Vec::with_capacity(pos.len());
        for j in self.jobs {
            match pos.get(&j.id) {
                Some(&p) if j.finished() => history.push((p, j)),
                _ => live.push(j),
            }
        }
        history.sort_unstable_by_key(|(p, _)| *p);
        Folded {
            live,
            history: history.into_iter().map(|(_, j)| j).collect(),
            names: self.names,
            keys: self.keys,
            max_id: self.max_id,
            released: self.released,
        }
    }
}

/// A fold taken apart: see [`Fold::split`].
pub struct Folded {
    /// Jobs not finished, in the order they were submitted (a checkpoint's order after that).
    pub live: Vec<FoldJob>,
    /// The last `history_limit` finished jobs, oldest first.
    pub history: Vec<FoldJob>,
    /// The names the jobs share.
    pub names: Interner,
    /// Idempotency keys within their retention.
    pub keys: KeyIndex,
    /// Highest job id seen.
    pub max_id: u64,
    /// Finished jobs dropped beyond the history, by queue and how they are counted.
    pub released: BTreeMap<(Arc<str>, u8), u64>,
}
