//! The job lifecycle inside the dispatcher: success, failure and retry with backoff, death,
//! cancellation, the dead letters, and the bounded history of finished jobs.

use std::time::Duration;

use super::{Dispatcher, DoneJob, State, IDLE};
use crate::handlers::{JobError, StopReason};
use crate::job::machine::outcome_reason;
use crate::job::now_ms;
use crate::scheduler::{DeadFilter, Refused};
use crate::wal::commit::{Ack, Fate, RecordBatch};
use crate::wal::record::{state_code, Cancel, Finish, JobEvent, Outcome, Record, Retry};
use crate::wire::JobInfo;

/// Failure texts come from programs and remote servers: their NUL bytes become U+FFFD, so that no
/// record body ever holds a run of outside bytes with NULs in it (what a forged sync mark would
/// need; docs/wal-format.md).
fn without_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s
    }
}

impl Dispatcher {
    pub(super) fn succeeded(&mut self, id: u64) {
        let rec = Record::Finish(Finish {
            id,
            attempt: self.jobs[&id].core.attempt,
            at: now_ms(),
            state: state_code::SUCCEEDED,
            outcome: Outcome::Succeeded,
        });
        self.record(id, rec);
        let now_us = self.now_us();
        let (q, k) = (self.jobs[&id].job.queue, self.jobs[&id].job.kind);
        self.figures[q as usize].recent.done(now_us);
        self.count_kind(q, k, crate::scheduler::KindCount::Succeeded);
        self.retire(id);
    }

    /// Applies a record the dispatcher built to its job and queues it for the WAL (it goes out
    /// with the dispatcher's next batch: `RECORDS_BATCH` in mod.rs).
    fn record(&mut self, id: u64, rec: Record<'_>) {
        if let Err(stale) = self.apply(id, &rec) {
            // The dispatcher checked the job's state before building the record.
            debug_assert!(false, "job {id}: {stale}");
            log::error!(
                "job {id}: a {} the dispatcher built does not apply: {stale}",
                rec.type_name()
            );
            return;
        }
        self.records.push(&rec);
    }

    /// The current attempt failed: retry after a backoff, or end the job dead.
    pub(super) fn attempt_failed(&mut self, id: u64, err: JobError, timed_out: bool) {
        let now = now_ms();
        let now_us = self.now_us();
        let e = self.jobs.get_mut(&id).expect("live job");
        e.worker = IDLE;
        // The failure this attempt adds (its record, applied below, counts it).
        let failures = e.core.failures + 1;
        let q = &self.cfg.queues[e.job.queue as usize];
        let fig = &mut self.figures[e.job.queue as usize];
        fig.failures += 1;
        if timed_out {
            fig.timeouts += 1;
        }
        let outcome = |reason: String| match timed_out {
            true => Outcome::TimedOut {
                reason: without_nul(reason),
                output_tail: without_nul(err.output_tail.clone()),
            },
            false => Outcome::Failed {
                reason: without_nul(reason),
                exit_code: err.exit_code,
                output_tail: without_nul(err.output_tail.clone()),
            },
        };
        let attempt = e.core.attempt;
        let mut dead_reason = None;
        if err.permanent {
            dead_reason = Some(format!("{} (permanent: not retried)", err.reason));
        } else if failures >= e.job.max_attempts {
            dead_reason = Some(format!(
                "{} (attempt {} of {})",
                err.reason, failures, e.job.max_attempts
            ));
        }
        let retry_at = now + backoff(&mut self.rng, q.backoff_base, q.backoff_cap, failures);
        if dead_reason.is_none() && !q.retry_past_deadline && retry_at > e.job.deadline {
            dead_reason = Some(format!(
                "{}; not retried: the next attempt would start after the deadline",
                err.reason
            ));
        }
        match dead_reason {
            Some(reason) => {
                fig.recent.failed(now_us, false);
                fig.recent.done(now_us);
                let outcome = outcome(reason);
                log::warn!("job {id} is dead: {}", outcome_reason(&outcome));
                let rec = Finish {
                    id,
                    attempt,
                    at: now,
                    state: state_code::DEAD,
                    outcome,
                };
                self.record(id, Record::Finish(rec));
                let (q, k) = (self.jobs[&id].job.queue, self.jobs[&id].job.kind);
                self.count_kind(q, k, crate::scheduler::KindCount::Dead);
            }
            None => {
                fig.retries += 1;
                fig.recent.failed(now_us, true);
                let rec = Retry {
                    id,
                    attempt,
                    at: now,
                    retry_at,
                    outcome: outcome(err.reason.clone()),
                };
                self.record(id, Record::Retry(rec));
                let (q, k) = (self.jobs[&id].job.queue, self.jobs[&id].job.kind);
                self.count_kind(q, k, crate::scheduler::KindCount::Retries);
                self.timers
                    .push(std::cmp::Reverse((retry_at, id, super::Timer::Ready)));
            }
        }
    }

    /// Moves a job that reached `succeeded` or `cancelled` (or a purged dead job) from the live
    /// table into the bounded history.
    pub(super) fn retire(&mut self, id: u64) {
        let e = self.jobs.remove(&id).expect("live job");
        let j = &e.job;
        self.live.add(j, -1);
        self.remember(DoneJob {
            id,
            queue: self.queue_names[j.queue as usize].clone(),
            kind: self.kind_names[j.kind as usize].clone(),
            submitted_at: j.submitted_at,
            deadline: j.deadline,
            run_at: j.run_at,
            max_attempts: j.max_attempts,
            timeout_ms: j.timeout_ms,
            key: j.key.clone(),
            core: e.core,
        });
    }

    pub(super) fn remember(&mut self, done: DoneJob) {
        if self.cfg.history_limit == 0 {
            return;
        }
        while self.history_order.len() >= self.cfg.history_limit {
            if let Some(old) = self.history_order.pop_front() {
                self.history.remove(&old);
            }
        }
        self.history_order.push_back(done.id);
        self.history.insert(done.id, done);
    }

    /// Cancels a job that is not yet terminal, once its `cancel` record is durable: a cancel the
    /// WAL could not record changes nothing. A running attempt is then told to stop (an exec
    /// job's process group is killed); whatever it reports later is ignored.
    pub(super) fn cancel(&mut self, id: u64) -> Result<State, Refused> {
        let Some(e) = self.jobs.get(&id) else {
            return match self.history.get(&id) {
                Some(d) => Err(Refused::WrongState(d.state())),
                None => Err(Refused::NotFound),
            };
        };
        let was = e.core.state;
        if was.is_terminal() {
            return Err(Refused::WrongState(was));
        }
        self.check_wal()?;
        let rec = Record::Cancel(Cancel { id, at: now_ms() });
        let mut batch = RecordBatch::new();
        batch.push(&rec);
        let ack = self.record_and_wait(batch);
        if !matches!(ack.fates().next(), Some(Fate::Recorded(_))) {
            return Err(wal_refusal(&ack, 1, Vec::new()));
        }
        // In the log: now make it so. (Nothing else ran while the dispatcher waited.)
        let e = self.jobs.get_mut(&id).expect("live job");
        if e.worker != IDLE {
            let w = e.worker as usize;
            e.worker = IDLE;
            self.signals[w].raise(self.serials[w], StopReason::Cancelled);
        }
        // Heap and timer entries are dropped lazily: they no longer point at a live job.
        if let Err(stale) = self.apply(id, &rec) {
            log::error!("job {id}: its recorded cancel does not apply: {stale}");
        }
        self.retire(id);
        Ok(was)
    }

    /// Refuses a change up front when the WAL has failed (it could not be recorded).
    fn check_wal(&self) -> Result<(), Refused> {
        match &self.wal_failed {
            Some(e) => Err(Refused::Wal {
                error: e.clone(),
                certain: true,
                applied: Vec::new(),
            }),
            None => Ok(()),
        }
    }

    /// Records one `revive` or `purge` per id, waits, and applies `change` to each job whose
    /// record is in the log. Refused with the ids applied when not all of them are.
    fn change_dead(
        &mut self,
        ids: Vec<u64>,
        record: fn(JobEvent) -> Record<'static>,
        mut change: impl FnMut(&mut Self, u64),
    ) -> Result<Vec<u64>, Refused> {
        if ids.is_empty() {
            return Ok(ids);
        }
        self.check_wal()?;
        let now = now_ms();
        let mut batch = RecordBatch::new();
        for &id in &ids {
            batch.push(&record(JobEvent { id, at: now }));
        }
        let ack = self.record_and_wait(batch);
        let mut applied = Vec::with_capacity(ids.len());
        for (&id, fate) in ids.iter().zip(ack.fates()) {
            if matches!(fate, Fate::Recorded(_)) {
                match self.apply(id, &record(JobEvent { id, at: now })) {
                    Ok(_) => change(self, id),
                    Err(stale) => {
                        log::error!("job {id}: its recorded change does not apply: {stale}")
                    }
                }
                applied.push(id);
            }
        }
        if ack.is_ok() {
            Ok(applied)
        } else {
            Err(wal_refusal(&ack, ids.len(), applied))
        }
    }

    pub(super) fn dead_ids(&self, which: &DeadFilter) -> Result<Vec<u64>, Refused> {
        match which {
            DeadFilter::Id(id) => match self.jobs.get(id).map(|e| e.core.state) {
                Some(State::Dead) => Ok(vec![*id]),
                Some(s) => Err(Refused::WrongState(s)),
                None => match self.history.get(id) {
                    // A dead job in the history was purged from the dead letters.
                    Some(d) if d.state() == State::Dead => Err(Refused::Purged),
                    Some(d) => Err(Refused::WrongState(d.state())),
                    None => Err(Refused::NotFound),
                },
            },
            DeadFilter::All { queue, before } => {
                let mut ids: Vec<(u64, u64)> = self
                    .jobs
                    .iter()
                    .filter(|(_, e)| e.core.state == State::Dead)
                    .filter(|(_, e)| queue.is_none_or(|q| e.job.queue == q))
                    .filter(|(_, e)| before.is_none_or(|b| e.core.at < b))
                    .map(|(id, e)| (e.core.at, *id))
                    .collect();
                ids.sort_unstable();
                Ok(ids.into_iter().map(|(_, id)| id).collect())
            }
        }
    }

    pub(super) fn dead_list(&self, queue: Option<u16>, since: Option<u64>) -> Vec<JobInfo> {
        let ids = self
            .dead_ids(&DeadFilter::All {
                queue,
                before: None,
            })
            .unwrap_or_default();
        ids.into_iter()
            .filter(|id| since.is_none_or(|s| self.jobs[id].core.at >= s))
            .filter_map(|id| self.status(id))
            .collect()
    }

    pub(super) fn dead_retry(&mut self, which: &DeadFilter) -> Result<Vec<u64>, Refused> {
        let ids = self.dead_ids(which)?;
        self.change_dead(ids, Record::Revive, |d, id| d.push_ready(id))
    }

    pub(super) fn dead_purge(&mut self, which: &DeadFilter) -> Result<Vec<u64>, Refused> {
        let ids = self.dead_ids(which)?;
        self.change_dead(ids, Record::Purge, |d, id| d.retire(id))
    }
}

/// The refusal for a change whose records (the first `n` of `ack`'s append) did not all reach
/// the log; `applied` lists the jobs whose records did.
fn wal_refusal(ack: &Ack, n: usize, applied: Vec<u64>) -> Refused {
    let certain = !ack.fates().take(n).any(|f| f == Fate::Unknown);
    let error = match &ack.failure {
        Some(f) => f.error.clone(),
        None => std::sync::Arc::new(crate::wal::WalError::Closed),
    };
    Refused::Wal {
        error,
        certain,
        applied,
    }
}

/// Backoff before the next attempt after `failures` failures: uniformly random in
/// `[0, min(cap, base * 2^(failures-1))]` ms ("full jitter").
pub fn backoff(rng: &mut u64, base: Duration, cap: Duration, failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(40);
    let ceiling = (base.as_millis() as u64)
        .saturating_mul(1u64 << shift)
        .min(cap.as_millis() as u64);
    // xorshift64*: plenty for spreading retries, and no dependency.
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    let r = rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
    r % (ceiling + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_full_jitter_bounds() {
        let mut rng = 12345;
        let (base, cap) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut seen_max = [0u64; 6];
        for _ in 0..2000 {
            for f in 1..=6u32 {
                let d = backoff(&mut rng, base, cap, f);
                let bound = (100u64 << (f - 1)).min(1000);
                assert!(d <= bound, "failure {f}: {d} > {bound}");
                seen_max[f as usize - 1] = seen_max[f as usize - 1].max(d);
            }
        }
        // Spread: the draws reach close to each bound.
        assert!(seen_max[0] > 90 && seen_max[5] > 900, "{seen_max:?}");
        assert!(
            backoff(&mut rng, base, cap, 400) <= 1000,
            "huge failure counts saturate"
        );
    }
}
