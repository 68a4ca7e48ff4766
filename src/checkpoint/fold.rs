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
//! Finished jobs (succeeded, cancelled, purged) leave the live set for the history `status`
//! serves: beyond `history_limit` the oldest are dropped (counted in [`Fold::released`]), so
//! folding a log of any length takes memory for the live jobs and the history only. The history
//! a checkpoint holds stays in its encoded form ([`Hist::Raw`]): a restart does not decode it
//! before it accepts work (the dispatcher does, afterwards), and the next checkpoint copies it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::idmap::{id_map, IdMap};
use crate::job::machine::{self, JobCore, Stale, Transition};
use crate::job::State;
use crate::wal::keys::KeyIndex;
use crate::wal::reader::RecordView;
use crate::wal::record::{QueueSettings, Record};

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
    /// The job as `status` shows it (its payload, if it still has one).
    pub fn info(&self) -> crate::wire::JobInfo {
        crate::wire::JobInfo {
            id: self.id,
            queue: self.queue.to_string(),
            kind: self.kind.to_string(),
            state: self.core.state,
            submitted_at: self.submitted_at,
            deadline: self.deadline,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            key: self.key.as_deref().map(Into::into),
            replay_of: crate::job::replay_of(self.key.as_deref()),
            next_attempt_at: self.core.retry_at(),
            finished_at: self.core.finished_at(),
            payload: self
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
            attempts: self.core.attempts.clone(),
        }
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

/// A finished job of the history.
#[derive(Debug, Clone)]
pub enum Hist {
    /// Folded from the log.
    Job(FoldJob),
    /// As a checkpoint's `done` entry holds it: its body, in the history's raw arena at `at..at + len`.
    Raw {
        /// Job id.
        id: u64,
        /// Where its body starts.
        at: usize,
        /// Its length.
        len: usize,
    },
}

/// One entry of a [`History`], as [`History::iter`] hands it out.
pub enum HistRef<'a> {
    /// Folded from the log.
    Job(&'a FoldJob),
    /// A checkpoint's `done` entry body.
    Raw(&'a [u8]),
}

/// The last `history_limit` finished jobs, oldest first.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<Hist>,
    /// The bodies of the [`Hist::Raw`] entries.
    raw: Vec<u8>,
}

impl History {
    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = HistRef<'_>> {
        self.entries.iter().map(|h| match h {
            Hist::Job(j) => HistRef::Job(j),
            Hist::Raw { at, len, .. } => HistRef::Raw(&self.raw[*at..*at + *len]),
        })
    }

    /// Oldest first, each decoded (`decode` turns a raw body into a job, or says why not).
    pub fn into_jobs<E>(
        self,
        mut decode: impl FnMut(&[u8]) -> Result<FoldJob, E>,
    ) -> impl Iterator<Item = Result<FoldJob, (u64, E)>> {
        let raw = self.raw;
        self.entries.into_iter().map(move |h| match h {
            Hist::Job(j) => Ok(j),
            Hist::Raw { id, at, len } => decode(&raw[at..at + len]).map_err(|e| (id, e)),
        })
    }
}

/// Jobs not finished, in the order they were submitted.
#[derive(Debug, Default)]
pub struct Live {
    /// `None` where a job finished (compacted from time to time).
    jobs: Vec<Option<FoldJob>>,
    len: usize,
}

impl Live {
    /// How many.
    pub fn count(&self) -> usize {
        self.len
    }

    /// In submission order.
    pub fn iter(&self) -> impl Iterator<Item = &FoldJob> {
        self.jobs.iter().flatten()
    }
}

impl IntoIterator for Live {
    type Item = FoldJob;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Option<FoldJob>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.jobs.into_iter().flatten()
    }
}

/// Decodes a raw history entry, to count it when it is dropped.
pub type RawDecoder = fn(&[u8], &mut Interner) -> Result<FoldJob, String>;

/// Jobs folded so far, the history, the keys, the highest id.
pub struct Fold {
    /// Jobs not finished, in submission order, found through a small id -> index map: growing
    /// the map moves 16-byte entries, not whole jobs.
    live: Live,
    index: IdMap<u32>,
    /// Finished jobs, oldest first, and their ids (a job id is submitted once).
    history: History,
    history_ids: IdMap<()>,
    decode_raw: RawDecoder,
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
    /// Each queue's live settings, the latest `queue` record of each.
    pub queues: BTreeMap<String, QueueSettings<'static>>,
    history_limit: usize,
    /// When the keys' retention is judged (ms).
    now: u64,
}

impl Fold {
    /// An empty fold. `now` judges the keys' retention; `decode_raw` reads a checkpoint's
    /// history entry when it is dropped beyond `history_limit`.
    pub fn new(keys: KeyIndex, history_limit: usize, now: u64, decode_raw: RawDecoder) -> Fold {
        Fold {
            live: Live::default(),
            index: id_map(0),
            history: History::default(),
            history_ids: id_map(0),
            decode_raw,
            names: Interner::default(),
            keys,
            max_id: 0,
            records: 0,
            released: BTreeMap::new(),
            queues: BTreeMap::new(),
            history_limit,
            now,
        }
    }

    /// Makes room for `jobs` live jobs up front: growing the list and the index as a large fold
    /// goes means copying and freeing hundreds of MB at a time, which holds the process's memory
    /// map lock and with it every other thread that touches a new page.
    pub fn reserve(&mut self, jobs: usize) {
        self.live.jobs.reserve(jobs);
        self.index.reserve(jobs);
    }

    /// When the keys' retention is judged.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Adds a live job as a checkpoint holds it.
    pub fn restore(&mut self, job: FoldJob) {
        self.max_id = self.max_id.max(job.id);
        self.push_live(job);
    }

    /// Adds a finished job of a checkpoint's history, as its encoded `done` entry body; they
    /// come oldest first.
    pub fn restore_raw(&mut self, id: u64, body: &[u8]) {
        self.max_id = self.max_id.max(id);
        let at = self.history.raw.len();
        self.history.raw.extend_from_slice(body);
        self.push_history(
            id,
            Hist::Raw {
                id,
                at,
                len: body.len(),
            },
        );
    }

    fn push_live(&mut self, job: FoldJob) {
        self.index.insert(job.id, self.live.jobs.len() as u32);
        self.live.jobs.push(Some(job));
        self.live.len += 1;
    }

    /// Adds a finished job to the history, dropping the oldest beyond the limit.
    fn push_history(&mut self, id: u64, h: Hist) {
        self.history_ids.insert(id, ());
        self.history.entries.push_back(h);
        while self.history.entries.len() > self.history_limit {
            let Some(old) = self.history.entries.pop_front() else {
                break;
            };
            let job = match old {
                Hist::Job(j) => j,
                Hist::Raw { id, at, len } => {
                    match (self.decode_raw)(&self.history.raw[at..at + len], &mut self.names) {
                        Ok(j) => j,
                        Err(e) => {
                            log::error!("checkpoint: finished job {id} does not decode: {e}");
                            self.history_ids.remove(&id);
                            continue;
                        }
                    }
                }
            };
            self.history_ids.remove(&job.id);
            let how = if job.core.purged {
                PURGED
            } else {
                job.core.state.index() as u8
            };
            *self.released.entry((job.queue, how)).or_default() += 1;
        }
        if self.history.entries.is_empty() {
            self.history.raw.clear();
        }
    }

    /// Applies one record read from the log.
    pub fn apply(&mut self, r: &RecordView<'_>) {
        self.records += 1;
        if let Record::Queue(q) = &r.record {
            self.queues
                .insert(q.queue.to_string(), q.clone().into_owned());
            return;
        }
        // Sync marks and replays are about the log, not a job.
        let Some(id) = r.record.job_id() else {
            return;
        };
        if let Record::Submit(s) = &r.record {
            self.max_id = self.max_id.max(s.id);
            if self.index.contains_key(&s.id) || self.history_ids.contains_key(&s.id) {
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
            self.push_live(FoldJob {
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
        // A job not live is finished (or unknown): every record about it is stale.
        let Some(&i) = self.index.get(&id) else {
            return;
        };
        let slot = &mut self.live.jobs[i as usize];
        let j = slot.as_mut().expect("indexed job");
        match machine::apply(&mut j.core, &r.record) {
            Ok(Transition::Ended(State::Succeeded | State::Cancelled) | Transition::Purged) => {
                let mut j = slot.take().expect("indexed job");
                j.payload = None;
                self.index.remove(&id);
                self.live.len -= 1;
                self.push_history(id, Hist::Job(j));
                let holes = self.live.jobs.len() - self.live.len;
                if holes > self.live.len + 4096 {
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

    /// Closes the gaps finished jobs left in the live list.
    fn compact(&mut self) {
        self.live.jobs.retain(Option::is_some);
        self.index.clear();
        for (i, j) in self.live.iter().enumerate() {
            self.index.insert(j.id, i as u32);
        }
    }

    /// The jobs that have not finished, and the history.
    pub fn split(self) -> Folded {
        Folded {
            live: self.live,
            history: self.history,
            names: self.names,
            keys: self.keys,
            max_id: self.max_id,
            released: self.released,
            queues: self.queues,
        }
    }
}

impl Folded {
    /// Frees it a piece at a time, pausing between pieces: freeing the live jobs of a large fold
    /// at once (hundreds of MB) stalled the daemon's other threads for 10-30 ms (measured), as
    /// the kernel takes back that much memory in one go.
    pub fn free_gradually(self) {
        const STEP: usize = 32_768;
        let mut jobs = self.live.jobs;
        while jobs.len() > STEP {
            jobs.truncate(jobs.len() - STEP);
            jobs.shrink_to_fit();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// A fold taken apart: see [`Fold::split`].
pub struct Folded {
    /// Jobs not finished, in the order they were submitted (a checkpoint's order after that).
    pub live: Live,
    /// The last `history_limit` finished jobs, oldest first.
    pub history: History,
    /// The names the jobs share.
    pub names: Interner,
    /// Idempotency keys within their retention.
    pub keys: KeyIndex,
    /// Highest job id seen.
    pub max_id: u64,
    /// Finished jobs dropped beyond the history, by queue and how they are counted.
    pub released: BTreeMap<(Arc<str>, u8), u64>,
    /// Each queue's live settings (the latest `queue` record of each).
    pub queues: BTreeMap<String, QueueSettings<'static>>,
}

#[cfg(test)]
mod tests {
    use super::super::file::{self, Header};
    use super::*;
    use crate::wal::io::MemStorage;
    use crate::wal::record::sample::{finish, submit};
    use crate::wal::record::{state_code, Start};

    fn view(lsn: u64, record: Record<'static>) -> RecordView<'static> {
        RecordView {
            segment: 1,
            offset: 0,
            lsn,
            size: 0,
            record,
        }
    }

    /// Jobs `ids` submitted, started and succeeded, in order.
    fn run(fold: &mut Fold, ids: std::ops::Range<u64>, lsn: &mut u64) {
        for id in ids {
            for r in [
                submit(id, "default"),
                Record::Start(Start { id, attempt: 1, at: 3 }),
                finish(id, 1, state_code::SUCCEEDED),
            ] {
                *lsn += 1;
                fold.apply(&view(*lsn, r));
            }
        }
    }

    fn history_ids(folded: &Folded) -> Vec<u64> {
        folded
            .history
            .iter()
            .map(|h| match h {
                HistRef::Job(j) => j.id,
                HistRef::Raw(b) => u64::from_le_bytes(b[..8].try_into().unwrap()),
            })
            .collect()
    }

    fn fold() -> Fold {
        super::super::new_fold(KeyIndex::new(1000, 100), 3, 0)
    }

    fn write(mem: &MemStorage, folded: &Folded, lsn: u64) {
        let h = Header {
            covered_seq: 1,
            covered_lsn: lsn,
            next_id: folded.max_id + 1,
            created_at: 5,
            job_bytes: 0,
        };
        file::write(mem, &h, folded).unwrap();
    }

    #[test]
    fn the_history_keeps_the_last_finished_jobs_across_checkpoints_and_counts_the_rest() {
        let mem = MemStorage::new();
        let mut lsn = 0;
        let mut a = fold();
        run(&mut a, 1..6, &mut lsn);
        // Job 6 stays live.
        lsn += 1;
        a.apply(&view(lsn, submit(6, "bulk")));
        let folded = a.split();
        assert_eq!(folded.live.count(), 1);
        assert_eq!(history_ids(&folded), [3, 4, 5]);
        assert_eq!(folded.released[&("default".into(), 4)], 2);
        write(&mem, &folded, lsn);

        // The next fold starts from that checkpoint: its history stays encoded, and two more
        // finished jobs push the oldest two out, counted as they go.
        let mut b = fold();
        super::super::load(&mem, &mut b).unwrap();
        run(&mut b, 7..9, &mut lsn);
        // A submit reusing a finished job's id is refused, even for an encoded one.
        lsn += 1;
        b.apply(&view(lsn, submit(5, "default")));
        let folded = b.split();
        assert_eq!(history_ids(&folded), [5, 7, 8]);
        assert!(matches!(folded.history.iter().next(), Some(HistRef::Raw(_))));
        assert_eq!(folded.released[&("default".into(), 4)], 4);
        assert_eq!(folded.live.iter().map(|j| j.id).collect::<Vec<_>>(), [6]);
        let first = file::read(&mem, &mut |n: &str| Arc::from(n), &mut |_| Ok(()))
            .unwrap()
            .unwrap();
        write(&mem, &folded, lsn);

        // Copied, the encoded entry decodes to the same job.
        let mut c = fold();
        super::super::load(&mem, &mut c).unwrap();
        let jobs: Vec<FoldJob> = c
            .split()
            .history
            .into_jobs(|b| file::decode_done(b, &mut |n: &str| Arc::from(n)))
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [5, 7, 8]);
        assert_eq!(jobs[0].core.state, State::Succeeded);
        assert_eq!(jobs[0].core.attempts.len(), 1);
        assert!(jobs[0].payload.is_none());
        assert_eq!(first.end.done, 3);
    }

    #[test]
    fn the_latest_queue_settings_of_each_queue_are_folded_and_a_checkpoint_carries_them() {
        let settings = |queue: &str, at: u64, max_workers: Option<u32>| QueueSettings {
            at,
            queue: queue.to_string().into(),
            due_in_ms: Some(60_000),
            max_workers,
            reserved: None,
            lend_limit_ms: None,
            paused_until: Some(u64::MAX),
        };
        let mut a = fold();
        a.apply(&view(1, Record::Queue(settings("bulk", 1, Some(2)))));
        a.apply(&view(2, Record::Queue(settings("default", 2, None))));
        a.apply(&view(3, Record::Queue(settings("bulk", 3, Some(1)))));
        let folded = a.split();
        let want = vec![settings("bulk", 3, Some(1)), settings("default", 2, None)];
        assert_eq!(folded.queues.values().cloned().collect::<Vec<_>>(), want);
        let mem = MemStorage::new();
        write(&mem, &folded, 3);
        // Read back into a fresh fold, as recovery and the next checkpoint do.
        let mut b = fold();
        super::super::load(&mem, &mut b).unwrap();
        assert_eq!(b.queues.values().cloned().collect::<Vec<_>>(), want);
    }

    #[test]
    fn a_long_fold_of_finished_jobs_keeps_memory_for_the_live_ones_only() {
        let mut f = fold();
        let mut lsn = 0;
        lsn += 1;
        f.apply(&view(lsn, submit(1, "bulk")));
        run(&mut f, 2..20_000, &mut lsn);
        // The gaps were closed as they grew: the live list holds about the live jobs.
        assert!(f.live.jobs.len() <= 4096 + 2, "{}", f.live.jobs.len());
        lsn += 1;
        f.apply(&view(lsn, finish(1, 0, state_code::SUCCEEDED)));
        let folded = f.split();
        assert_eq!(folded.live.count(), 1, "job 1 never started: its finish is stale");
        assert_eq!(history_ids(&folded), [19_997, 19_998, 19_999]);
    }
}
