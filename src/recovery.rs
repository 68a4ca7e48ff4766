//! Start-up recovery: replays the WAL (through the one reader) into the dispatcher's starting
//! state.
//!
//! - Every record is applied through the job state machine ([`crate::job::machine`]), the same
//!   rules the dispatcher followed when it wrote them: a record about an attempt that was given
//!   up is stale and ignored (fencing).
//! - Jobs that were running come back ready; their interrupted attempt stays counted, and a job
//!   interrupted by [`MAX_INTERRUPTIONS`] restarts is not run again.
//! - A live job whose queue or kind no longer exists is not dropped: it is ended `dead` with a
//!   `finish` record saying why (returned in [`Recovery::orphans`] for the caller to append). The
//!   record is applied here too, so the next recovery, which reads it, sees the same job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::handlers::Kinds;
use crate::checkpoint::{self, fold::FoldJob, fold::Folded};
use crate::job::machine;
use crate::job::{Job, State};
use crate::scheduler::dispatcher::{DoneJob, History, LiveJob, Recovered, MAX_INTERRUPTIONS};
use crate::wal::commit::RecordBatch;
use crate::wal::io::Storage;
use crate::wal::keys::KeyIndex;
use crate::wal::reader::{read_log_after, LogScan};
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
    /// The checkpoint recovery started from, if any.
    pub checkpoint: Option<crate::checkpoint::file::Read>,
    /// Records replayed (after the checkpoint).
    pub records: u64,
    /// Each queue's live settings, as the operator last left them (`queue` records).
    pub queues: Vec<crate::wal::record::QueueSettings<'static>>,
    /// Time spent.
    pub elapsed: Duration,
}

/// Replays the log in `storage`.
pub fn recover(storage: &dyn Storage, cfg: &Config, kinds: &Kinds) -> Result<Recovery, WalError> {
    let t = Instant::now();
    let now = crate::job::now_ms();
    let keys = KeyIndex::new(cfg.key_retention.as_millis() as u64, cfg.max_keys);
    let mut fold = checkpoint::new_fold(keys, cfg.history_limit, now);
    let (after, checkpoint) = checkpoint::load(storage, &mut fold)?;
    let scan = read_log_after(storage, after, &mut |r| {
        fold.apply(r);
        Ok(())
    })?;
    let records = fold.records;
    let Folded {
        live: jobs,
        history: finished,
        mut names,
        keys,
        max_id,
        queues,
        ..
    } = fold.split();
    let mut recovered = Recovered::default();
    let mut orphans = RecordBatch::new();
    // Queue and kind ids, looked up once per distinct name rather than once per job.
    let queue_ids = names.resolve(|n| cfg.queue_id(n));
    let kind_ids = names.resolve(|n| kinds.id(n));
    let mut gone = Vec::new();
    recovered.live.reserve(jobs.count());
    // One pass, moving each job once.
    for mut j in jobs {
        let id = j.id;
        let queue = queue_ids[names.position(&j.queue)];
        let kind = kind_ids[names.position(&j.kind)];
        // A running attempt was cut short by the restart: one more interruption.
        let interruptions = j.core.interrupted + u32::from(j.core.state == State::Running);
        let cannot_run = match (queue, kind) {
            (None, _) => Some(format!("queue {:?} is not configured any more", &*j.queue)),
            (_, None) => Some(format!("kind {:?} is not registered", &*j.kind)),
            _ if interruptions >= MAX_INTERRUPTIONS => Some(format!(
                "interrupted by {interruptions} daemon restarts; not run again"
            )),
            _ => None,
        };
        match cannot_run {
            Some(reason) if j.core.state != State::Dead => {
                log::error!("recovery: job {id} cannot run: {reason}; ending it dead");
                let end = Record::Finish(Finish {
                    id,
                    attempt: j.core.attempt,
                    at: now,
                    state: state_code::DEAD,
                    outcome: Outcome::Failed {
                        reason,
                        exit_code: None,
                        output_tail: String::new(),
                    },
                });
                // Applied as the next recovery will apply it, after the records before it.
                if let Err(stale) = machine::apply(&mut j.core, &end) {
                    log::error!("recovery: job {id}: its end does not apply: {stale}");
                }
                orphans.push(&end);
            }
            _ => {
                j.core.interrupt_running();
            }
        }
        if queue.is_none() || kind.is_none() {
            j.payload = None;
            gone.push(done_job(j));
            continue;
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
            core: j.core,
        });
    }
    // The history is decoded by the dispatcher, once it has restored the live jobs: a restart
    // accepts work before it (the time it takes depends on the live jobs, not the history).
    recovered.done = History::later(move || {
        let mut done: Vec<DoneJob> = finished
            .into_jobs(|body| checkpoint::file::decode_done_interned(body, &mut names))
            .filter_map(|r| match r {
                Ok(j) => Some(done_job(j)),
                Err((id, e)) => {
                    log::error!("recovery: finished job {id} of the checkpoint does not decode ({e}); `status {id}` will not find it");
                    None
                }
            })
            .collect();
        done.extend(gone);
        done
    });
    Ok(Recovery {
        scan,
        recovered,
        keys,
        next_id: max_id + 1,
        orphans,
        checkpoint,
        records,
        elapsed: t.elapsed(),
        queues: queues.into_values().collect(),
    })
}

fn done_job(j: FoldJob) -> DoneJob {
    DoneJob {
        id: j.id,
        queue: j.queue,
        kind: j.kind,
        submitted_at: j.submitted_at,
        deadline: j.deadline,
        run_at: j.run_at,
        max_attempts: j.max_attempts,
        timeout_ms: j.timeout_ms,
        key: j.key,
        core: j.core,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::machine::JobCore;
    use crate::wal::reader::read_log;
    use crate::job::AttemptOutcome;
    use crate::wal::appender::Appender;
    use crate::wal::io::MemStorage;
    use crate::wal::record::sample::{finish, submit};
    use crate::wal::record::{Cancel, Start, SCHEMA};

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
        let mut rec = recover(&mem, &cfg, &Kinds::builtin()).unwrap();
        assert_eq!(rec.next_id, 8);
        assert_eq!(rec.records, 12);
        let live: Vec<(u64, u32)> = rec
            .recovered
            .live
            .iter()
            .map(|l| (l.job.id, l.core.attempt))
            .collect();
        assert_eq!(live, [(2, 2), (7, 0)]);
        let two = &rec.recovered.live[0];
        assert_eq!(
            two.core.attempts.last().unwrap().outcome,
            Some(AttemptOutcome::Interrupted)
        );
        let done: Vec<(u64, State)> = rec
            .recovered
            .done
            .get()
            .iter()
            .map(|d| (d.id, d.state()))
            .collect();
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

    /// Replays `mem` plus the ends recovery wrote, as the next start-up would.
    fn recover_twice(mem: &MemStorage, cfg: &Config) -> (Recovery, Recovery) {
        let mut first = recover(mem, cfg, &Kinds::builtin()).unwrap();
        let mut a =
            Appender::open(Arc::new(mem.clone()), &first.scan, 1 << 16, Arc::default()).unwrap();
        for (rtype, body) in first.orphans.iter() {
            a.push(rtype, SCHEMA, body).unwrap();
        }
        a.write().unwrap();
        a.sync().unwrap();
        drop(a);
        let mut second = recover(mem, cfg, &Kinds::builtin()).unwrap();
        first.recovered.done.get();
        second.recovered.done.get();
        (first, second)
    }

    fn live_and_done(r: &mut Recovery) -> Vec<(u64, JobCore)> {
        let mut v: Vec<(u64, JobCore)> = r
            .recovered
            .live
            .iter()
            .map(|l| (l.job.id, l.core.clone()))
            .chain(r.recovered.done.get().iter().map(|d| (d.id, d.core.clone())))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    #[test]
    fn a_job_interrupted_by_every_restart_ends_dead_and_stays_the_same_after_the_next() {
        let mut recs = vec![submit(1, "default")];
        for attempt in 1..=MAX_INTERRUPTIONS {
            recs.push(Record::Start(Start {
                id: 1,
                attempt,
                at: 5,
            }));
        }
        let mem = log_of(&recs);
        let cfg = Config::with_workers(2);
        let (mut first, mut second) = recover_twice(&mem, &cfg);
        assert_eq!(first.orphans.len(), 1);
        let job = &first.recovered.live[0].core;
        assert_eq!(
            (job.state, job.interrupted),
            (State::Dead, MAX_INTERRUPTIONS - 1)
        );
        let last = job.attempts.last().unwrap();
        assert_eq!(last.outcome, Some(AttemptOutcome::Failed));
        assert!(
            last.error.as_deref().unwrap().contains("interrupted by 10"),
            "{last:?}"
        );
        // The next start-up reads the end it wrote and sees exactly the same job.
        assert_eq!(second.orphans.len(), 0);
        assert_eq!(live_and_done(&mut first), live_and_done(&mut second));
    }

    #[test]
    fn a_waiting_job_whose_queue_went_is_ended_once_not_at_every_restart() {
        let mem = log_of(&[submit(1, "vanished"), submit(2, "default")]);
        let cfg = Config::with_workers(2);
        let (mut first, mut second) = recover_twice(&mem, &cfg);
        assert_eq!(first.orphans.len(), 1);
        assert_eq!(second.orphans.len(), 0, "the end was recorded already");
        assert_eq!(live_and_done(&mut first), live_and_done(&mut second));
        let gone = &second.recovered.done.get()[0];
        assert_eq!((gone.id, gone.state()), (1, State::Dead));
        // If the queue comes back, the job stays dead (a dead job can be put back; it does not
        // run behind the operator's back).
        let mut back = Config::with_workers(2);
        back.queues.push(crate::config::QueueConfig {
            name: "vanished".into(),
            ..back.queues[0].clone()
        });
        let rec = recover(&mem, &back, &Kinds::builtin()).unwrap();
        let job = rec.recovered.live.iter().find(|l| l.job.id == 1).unwrap();
        assert_eq!(job.core.state, State::Dead);
    }
}
