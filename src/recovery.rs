//! Start-up recovery: replays the WAL (through the one reader) into the dispatcher's starting
//! state.
//!
//! - `submit` creates a job; `start` counts an attempt; `finish` of the current attempt ends it
//!   (a `finish` of any other attempt is stale and ignored: fencing); `cancel` cancels it.
//! - Jobs that were running come back ready; their interrupted attempt stays counted.
//! - A live job whose queue or kind no longer exists is not dropped: it is ended `dead` with a
//!   `finish` record saying why (returned in [`Recovery::orphans`] for the caller to append).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::handlers::Kinds;
use crate::job::{Job, State};
use crate::scheduler::dispatcher::{apply_finish, DoneJob, LiveJob, Recovered};
use crate::scheduler::AttemptInfo;
use crate::wal::commit::RecordBatch;
use crate::wal::io::Storage;
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
    attempts: Vec<AttemptInfo>,
    finished_at: u64,
}

#[derive(Default)]
struct Interner(HashMap<String, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.to_string(), a.clone());
        a
    }
}

/// Replays the log in `storage`.
pub fn recover(storage: &dyn Storage, cfg: &Config, kinds: &Kinds) -> Result<Recovery, WalError> {
    let t = Instant::now();
    let mut jobs: HashMap<u64, RJob> = HashMap::new();
    let mut ended: Vec<u64> = Vec::new();
    let mut names = Interner::default();
    let mut max_id = 0u64;
    let mut records = 0u64;
    let scan = read_log(storage, &mut |r| {
        records += 1;
        match &r.record {
            Record::Submit(s) => {
                max_id = max_id.max(s.id);
                if jobs.contains_key(&s.id) {
                    log::error!(
                        "recovery: job {} submitted twice (LSN {}); keeping the first",
                        s.id,
                        r.lsn
                    );
                    return Ok(());
                }
                jobs.insert(
                    s.id,
                    RJob {
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
                        attempts: Vec::new(),
                        finished_at: 0,
                    },
                );
            }
            Record::Start(s) => {
                if let Some(j) = jobs.get_mut(&s.id).filter(|j| !j.state.is_terminal()) {
                    j.attempt = s.attempt;
                    j.state = State::Running;
                    j.attempts.push(AttemptInfo {
                        number: s.attempt,
                        started_at: s.at,
                        ended_at: None,
                        outcome: None,
                        error: None,
                        exit_code: None,
                        output_tail: None,
                    });
                }
            }
            Record::Finish(f) => {
                if let Some(j) = jobs.get_mut(&f.id).filter(|j| !j.state.is_terminal()) {
                    if f.attempt != j.attempt {
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
                    j.state = match f.state {
                        state_code::SUCCEEDED => State::Succeeded,
                        state_code::RETRYING => State::Retrying,
                        _ => State::Dead,
                    };
                    if j.state.is_terminal() {
                        j.payload = None;
                        j.finished_at = f.at;
                        ended.push(f.id);
                    }
                }
            }
            Record::Cancel(c) => {
                if let Some(j) = jobs.get_mut(&c.id).filter(|j| !j.state.is_terminal()) {
                    j.state = State::Cancelled;
                    j.payload = None;
                    j.finished_at = c.at;
                    ended.push(c.id);
                }
            }
        }
        Ok(())
    })?;

    let mut recovered = Recovered::default();
    let mut orphans = RecordBatch::new();
    let keep_from = ended.len().saturating_sub(cfg.history_limit);
    for id in ended.drain(..).skip(keep_from) {
        if let Some(j) = jobs.remove(&id) {
            recovered.done.push(done_job(id, j));
        }
    }
    let mut live: Vec<(u64, RJob)> = jobs
        .into_iter()
        .filter(|(_, j)| !j.state.is_terminal())
        .collect();
    live.sort_unstable_by_key(|(id, _)| *id);
    let now = crate::job::now_ms();
    for (id, mut j) in live {
        if j.state == State::Running {
            if let Some(a) = j.attempts.last_mut() {
                a.outcome = Some("interrupted".into());
            }
        }
        let (queue, kind) = (cfg.queue_id(&j.queue), kinds.id(&j.kind));
        let (Some(queue), Some(kind)) = (queue, kind) else {
            let reason = match queue {
                None => format!("queue {:?} is not configured any more", &*j.queue),
                Some(_) => format!("kind {:?} is not registered", &*j.kind),
            };
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
            j.state = State::Dead;
            j.finished_at = now;
            recovered.done.push(done_job(id, j));
            continue;
        };
        let job = Job {
            id,
            queue,
            kind,
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
            attempt: j.attempt,
            attempts: j.attempts,
        });
    }
    Ok(Recovery {
        scan,
        recovered,
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
            two.attempts.last().unwrap().outcome.as_deref(),
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
