//! Start-up recovery: replays the WAL (through the one reader) into the dispatcher's starting
//! state.
//!
//! - `submit` creates a job; `start` counts an attempt; `finish` of the current attempt ends it
//!   (a `finish` of any other attempt is stale and ignored: fencing); `cancel` cancels it.
//! - Jobs that were running come back ready; their interrupted attempt stays counted.
//! - A live job whose queue or kind no longer exists is not dropped: it is ended `dead` with a
//!   `finish` record saying why (returned in [`Recovery::orphans`] for the caller to append).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::handlers::Kinds;
use crate::idmap::{id_map, IdMap};
use crate::job::{Job, State};
use crate::scheduler::dispatcher::{
    apply_finish, apply_retry, DoneJob, LiveJob, Recovered, MAX_INTERRUPTIONS,
};
use crate::scheduler::{AttemptInfo, AttemptOutcome};
use crate::wal::commit::RecordBatch;
use crate::wal::io::Storage;
use crate::wal::keys::KeyIndex;
use crate::wal::reader::{read_log, LogScan};
use crate::wal::record::{state_code, Finish, Outcome, Record};
use crate::wal::WalError;

/// The result of replaying the log.
#[derive(Debug)]
pub struct Recovery {
    /// What the reader found (segments, torn tail, next LSN).
    pub scan: LogScan,
    /// State for the dispatcher.
    pub recovered: Recovered,
    /// Idempotency keys still within their retention.
    pub keys: KeyIndex,
    /// First unused job id.
    pub next_id: u64,
    /// `finish` records to append for jobs that cannot run any more.
    pub orphans: RecordBatch,
    /// Records replayed.
    pub records: u64,
    /// Time spent.
    pub elapsed: Duration,
}

struct RJob {
    id: u64,
    queue: Arc<str>,
    kind: Arc<str>,
    payload: Option<Box<str>>,
    key: Option<Box<str>>,
    submitted_at: u64,
    deadline: u64,
    run_at: Option<u64>,
    max_attempts: u32,
    timeout_ms: Option<u64>,
    state: State,
    attempt: u32,
    failures: u32,
    interrupted: u32,
    retry_at: Option<u64>,
    attempts: Vec<AttemptInfo>,
    finished_at: u64,
    /// A dead job removed from the dead letters.
    purged: bool,
}

impl RJob {
    /// A `start` while already running means the previous attempt was cut short by a restart.
    fn interrupt_running(&mut self) {
        if self.state == State::Running {
            self.interrupted += 1;
            if let Some(a) = self.attempts.last_mut() {
                a.outcome = Some(AttemptOutcome::Interrupted);
            }
        }
    }
}

/// Shares one `Arc<str>` per queue or kind name. A handful of names: a linear scan beats hashing
/// the name of every record.
#[derive(Default)]
struct Interner(Vec<Arc<str>>);

impl Interner {
    /// For each interned name, in order, what `resolve` says of it (evaluated once per name).
    fn resolve<T>(&self, resolve: impl Fn(&str) -> T) -> Vec<T> {
        self.0.iter().map(|a| resolve(a)).collect()
    }

    /// Position of an `Arc` this interner handed out (pointer comparison, no string compare).
    fn position(&self, a: &Arc<str>) -> usize {
        self.0
            .iter()
            .position(|b| Arc::ptr_eq(a, b))
            .expect("interned name")
    }

    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.iter().find(|a| &***a == s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.push(a.clone());
        a
    }
}

/// Replays the log in `storage`.
pub fn recover(storage: &dyn Storage, cfg: &Config, kinds: &Kinds) -> Result<Recovery, WalError> {
    let t = Instant::now();
    let now = crate::job::now_ms();
    // Jobs in a Vec, found through a small id -> index map: growing the map moves 16-byte
    // entries, not whole jobs.
    let mut jobs: Vec<RJob> = Vec::new();
    let mut index: IdMap<u32> = id_map(0);
    let mut ended: Vec<u64> = Vec::new();
    let mut names = Interner::default();
    let mut keys = KeyIndex::new(cfg.key_retention.as_millis() as u64, cfg.max_keys);
    let mut max_id = 0u64;
    let mut records = 0u64;
    let scan = read_log(storage, &mut |r| {
        records += 1;
        // Sync marks are about the log, not a job.
        let Some(id) = r.record.job_id() else {
            return Ok(());
        };
        if let Record::Submit(s) = &r.record {
            max_id = max_id.max(s.id);
            if index.contains_key(&s.id) {
                log::error!(
                    "recovery: job {} submitted twice (LSN {}); keeping the first",
                    s.id,
                    r.lsn
                );
                return Ok(());
            }
            if let Some(k) = &s.key {
                keys.insert(k, s.id, r.lsn, s.submitted_at, now);
            }
            index.insert(s.id, jobs.len() as u32);
            jobs.push(RJob {
                id: s.id,
                queue: names.get(&s.queue),
                kind: names.get(&s.kind),
                payload: Some(s.payload.as_ref().into()),
                key: s.key.as_deref().map(Into::into),
                submitted_at: s.submitted_at,
                deadline: s.deadline,
                run_at: s.run_at,
                max_attempts: s.max_attempts,
                timeout_ms: s.timeout_ms,
                state: State::Ready,
                attempt: 0,
                failures: 0,
                interrupted: 0,
                retry_at: None,
                attempts: Vec::new(),
                finished_at: 0,
                purged: false,
            });
            return Ok(());
        }
        let Some(j) = index.get(&id).map(|&i| &mut jobs[i as usize]) else {
            return Ok(());
        };
        // Dead jobs can be revived or purged; other terminal jobs take no more records.
        let open = !j.state.is_terminal();
        let dead = j.state == State::Dead && !j.purged;
        match &r.record {
            Record::Submit(_) | Record::Sync(_) => {}
            Record::Start(s) if open => {
                j.interrupt_running();
                j.attempt = s.attempt;
                j.state = State::Running;
                j.retry_at = None;
                j.attempts.reserve_exact(1);
                j.attempts.push(AttemptInfo::started(s.attempt, s.at));
            }
            Record::Finish(f) if open => {
                if f.attempt != j.attempt || j.state != State::Running {
                    log::warn!(
                        "recovery: ignoring stale finish of job {} attempt {}",
                        f.id,
                        f.attempt
                    );
                    return Ok(());
                }
                if let Some(a) = j.attempts.last_mut().filter(|a| a.number == f.attempt) {
                    apply_finish(a, f);
                }
                if f.state == state_code::SUCCEEDED {
                    j.state = State::Succeeded;
                    j.payload = None;
                } else {
                    j.state = State::Dead;
                    j.failures += 1;
                }
                j.finished_at = f.at;
                ended.push(f.id);
            }
            Record::Retry(rt) if open => {
                if rt.attempt != j.attempt || j.state != State::Running {
                    log::warn!(
                        "recovery: ignoring stale retry of job {} attempt {}",
                        rt.id,
                        rt.attempt
                    );
                    return Ok(());
                }
                if let Some(a) = j.attempts.last_mut().filter(|a| a.number == rt.attempt) {
                    apply_retry(a, rt);
                }
                j.state = State::Retrying;
                j.failures += 1;
                j.retry_at = Some(rt.retry_at);
            }
            Record::Cancel(c) if open => {
                if j.state == State::Running {
                    if let Some(a) = j.attempts.last_mut() {
                        a.ended_at = Some(c.at);
                        a.outcome = Some(AttemptOutcome::Cancelled);
                    }
                }
                j.state = State::Cancelled;
                j.payload = None;
                j.finished_at = c.at;
                ended.push(c.id);
            }
            Record::Revive(_) if dead => {
                j.state = State::Ready;
                j.failures = 0;
                j.interrupted = 0;
                j.finished_at = 0;
            }
            Record::Purge(p) if dead => {
                j.payload = None;
                j.purged = true;
                // It leaves the dead letters for the history, as of now.
                ended.push(p.id);
            }
            _ => {}
        }
        Ok(())
    })?;

    let mut recovered = Recovered::default();
    let mut orphans = RecordBatch::new();
    // Terminal jobs for the history: each id once, at its last ending, oldest first.
    let mut last_end: IdMap<usize> = id_map(ended.len());
    for (pos, id) in ended.iter().enumerate() {
        last_end.insert(*id, pos);
    }
    drop(index);
    // Queue and kind ids, looked up once per distinct name rather than once per job.
    let queue_ids = names.resolve(|n| cfg.queue_id(n));
    let kind_ids = names.resolve(|n| kinds.id(n));
    let mut history: Vec<(usize, DoneJob)> = Vec::new();
    let mut gone = Vec::new();
    recovered
        .live
        .reserve(jobs.len() - last_end.len().min(jobs.len()));
    // One pass, moving each job once: into the history or straight into the live set.
    for mut j in jobs {
        let id = j.id;
        let finished = j.purged || matches!(j.state, State::Succeeded | State::Cancelled);
        if finished {
            if let Some(&pos) = last_end.get(&id) {
                history.push((pos, done_job(id, j)));
                continue;
            }
        }
        if j.state == State::Running {
            j.interrupt_running();
            j.state = State::Ready;
        }
        let queue = queue_ids[names.position(&j.queue)];
        let kind = kind_ids[names.position(&j.kind)];
        let cannot_run = match (queue, kind) {
            (None, _) => Some(format!("queue {:?} is not configured any more", &*j.queue)),
            (_, None) => Some(format!("kind {:?} is not registered", &*j.kind)),
            _ if j.interrupted >= MAX_INTERRUPTIONS && j.state != State::Dead => Some(format!(
                "interrupted by {} daemon restarts; not run again",
                j.interrupted
            )),
            _ => None,
        };
        if let Some(reason) = cannot_run {
            if j.state != State::Dead {
                log::error!("recovery: job {id} cannot run: {reason}; ending it dead");
                let f = Finish {
                    id,
                    attempt: j.attempt,
                    at: now,
                    state: state_code::DEAD,
                    outcome: Outcome::Failed {
                        reason,
                        exit_code: None,
                        output_tail: String::new(),
                    },
                };
                orphans.push(&Record::Finish(f));
                j.finished_at = now;
            }
            if queue.is_none() || kind.is_none() {
                j.state = State::Dead;
                j.payload = None;
                gone.push(done_job(id, j));
                continue;
            }
            j.state = State::Dead;
        }
        let job = Job {
            id,
            queue: queue.expect("known queue"),
            kind: kind.expect("known kind"),
            payload: j.payload.take().unwrap_or_default(),
            key: j.key.take(),
            submitted_at: j.submitted_at,
            deadline: j.deadline,
            run_at: j.run_at,
            max_attempts: j.max_attempts,
            timeout_ms: j.timeout_ms,
        };
        recovered.live.push(LiveJob {
            job: Arc::new(job),
            state: j.state,
            attempt: j.attempt,
            failures: j.failures,
            retry_at: j.retry_at,
            finished_at: j.finished_at,
            attempts: j.attempts,
        });
    }
    history.sort_unstable_by_key(|(pos, _)| *pos);
    let skip = history.len().saturating_sub(cfg.history_limit);
    recovered.done = history.into_iter().skip(skip).map(|(_, d)| d).collect();
    recovered.done.extend(gone);
    Ok(Recovery {
        scan,
        recovered,
        keys,
        next_id: max_id + 1,
        orphans,
        records,
        elapsed: t.elapsed(),
    })
}

fn done_job(id: u64, j: RJob) -> DoneJob {
    DoneJob {
        id,
        queue: j.queue,
        kind: j.kind,
        state: j.state,
        submitted_at: j.submitted_at,
        deadline: j.deadline,
        run_at: j.run_at,
        max_attempts: j.max_attempts,
        timeout_ms: j.timeout_ms,
        key: j.key,
        finished_at: j.finished_at,
        attempts: j.attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::appender::Appender;
    use crate::wal::io::MemStorage;
    use crate::wal::record::{Cancel, Start, Submit, SCHEMA};

    fn submit(id: u64, queue: &'static str) -> Record<'static> {
        Record::Submit(Submit {
            id,
            queue: queue.into(),
            kind: "noop".into(),
            payload: "{}".into(),
            key: None,
            submitted_at: 1,
            deadline: 2,
            run_at: None,
            max_attempts: 1,
            timeout_ms: None,
        })
    }

    fn finish(id: u64, attempt: u32, state: u8) -> Record<'static> {
        Record::Finish(Finish {
            id,
            attempt,
            at: 9,
            state,
            outcome: Outcome::Succeeded,
        })
    }

    fn log_of(records: &[Record<'_>]) -> MemStorage {
        let mem = MemStorage::new();
        let scan = read_log(&mem, &mut |_| Ok(())).unwrap();
        let mut a = Appender::open(Arc::new(mem.clone()), &scan, 1 << 16, Arc::default()).unwrap();
        for r in records {
            let mut b = Vec::new();
            r.encode_into(&mut b);
            a.push(r.rtype(), SCHEMA, &b).unwrap();
        }
        a.write().unwrap();
        a.sync().unwrap();
        mem
    }

    #[test]
    fn replay_fences_stale_completions_and_requeues_interrupted_jobs() {
        let start = |id, attempt| Record::Start(Start { id, attempt, at: 5 });
        let mem = log_of(&[
            submit(1, "default"),
            start(1, 1),
            finish(1, 1, state_code::SUCCEEDED),
            submit(2, "default"),
            start(2, 1),
            start(2, 2),
            // A late completion of attempt 1 (already given up): must not end the job.
            finish(2, 1, state_code::SUCCEEDED),
            submit(3, "bulk"),
            Record::Cancel(Cancel { id: 3, at: 6 }),
            // A completion after the cancel: must not resurrect or flip it.
            finish(3, 0, state_code::SUCCEEDED),
            submit(4, "vanished"),
            submit(7, "notifications"),
        ]);
        let cfg = Config::with_workers(4);
        let rec = recover(&mem, &cfg, &Kinds::builtin()).unwrap();
        assert_eq!(rec.next_id, 8);
        assert_eq!(rec.records, 12);
        let live: Vec<(u64, u32)> = rec
            .recovered
            .live
            .iter()
            .map(|l| (l.job.id, l.attempt))
            .collect();
        assert_eq!(live, [(2, 2), (7, 0)]);
        let two = &rec.recovered.live[0];
        assert_eq!(
            two.attempts
                .last()
                .unwrap()
                .outcome
                .map(AttemptOutcome::name),
            Some("interrupted")
        );
        let done: Vec<(u64, State)> = rec.recovered.done.iter().map(|d| (d.id, d.state)).collect();
        assert_eq!(
            done,
            [
                (1, State::Succeeded),
                (3, State::Cancelled),
                (4, State::Dead)
            ]
        );
        // The job whose queue vanished is ended with a record saying why.
        assert_eq!(rec.orphans.len(), 1);
    }
}
