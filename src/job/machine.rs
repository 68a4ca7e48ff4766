//! The job state machine: how each WAL record changes a job, with the fencing rules in one place.
//!
//! [`apply`] is pure: it changes a [`JobCore`] and says what happened ([`Transition`]), or leaves
//! it alone and says why the record does not apply ([`Stale`]). The dispatcher builds a record,
//! applies it and appends it; recovery and `wal inspect` only apply what they read. So the daemon
//! before a restart, the daemon after it, and the offline tools agree on every job.
//!
//! The rules (`docs/guarantees.md`, "Job states"):
//!
//! - `submit` creates the job ([`JobCore::new`]): `scheduled` when it has a `run_at`, otherwise
//!   `ready`.
//! - `start` begins an attempt of an open job. A `start` while an attempt is `running` means a
//!   restart cut that attempt short: it is marked `interrupted` and counted.
//! - `finish` and `retry` apply to the job's current attempt only, while it runs: a record about
//!   any other attempt is stale (fencing). The one exception: a `finish` that ends the current
//!   attempt's job `dead` while it waits (recovery ends a job that can no longer run: its queue or
//!   kind is gone).
//! - `cancel` ends any open job; a running attempt ends `cancelled`.
//! - `revive` and `purge` apply to dead jobs only, and not after a purge.
//! - Nothing else changes a job that has ended.
//!
//! Two changes come from the clock, not from records: [`JobCore::wake`] (a scheduled or retrying
//! job's time came) and [`JobCore::interrupt_running`] (recovery found an attempt that a restart
//! cut short).

use super::{AttemptInfo, AttemptOutcome, State};
use crate::wal::record::{state_code, Outcome, Record, Submit};

/// What every owner of a job keeps about its progress: the state, the attempt counters and the
/// timeline. 48 bytes plus the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCore {
    /// The state.
    pub state: State,
    /// A dead job removed from the dead letters (`dead purge`): it takes no more records.
    pub purged: bool,
    /// Attempts that restarts cut short since the job was submitted or revived.
    pub interrupted: u32,
    /// Attempts started so far (the current attempt's number).
    pub attempt: u32,
    /// Attempts that failed since the job was submitted or revived (what `max_attempts` bounds).
    pub failures: u32,
    /// When a `retrying` job runs again, or when a terminal job ended (ms); 0 otherwise.
    pub at: u64,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptInfo>,
}

/// What a record did to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// An attempt started. `interrupted`: it cut short an attempt that was still running (a
    /// restart came between them).
    Started {
        /// Whether a running attempt was interrupted.
        interrupted: bool,
    },
    /// The attempt failed; the job waits for its retry time.
    Retrying,
    /// The job reached a terminal state.
    Ended(State),
    /// A dead job was put back, ready, with fresh attempts.
    Revived,
    /// A dead job left the dead letters (it stays dead).
    Purged,
}

/// Why a record does not apply to a job (it changes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The job had ended in this state (a late `finish`, a `cancel` after the end).
    Ended(State),
    /// The record is about attempt `attempt`, but the job is `state` at attempt `current`: that
    /// attempt was already given up (timeout, cancel or restart).
    NotCurrent {
        /// The record's attempt.
        attempt: u32,
        /// The job's current attempt.
        current: u32,
        /// The job's state.
        state: State,
    },
    /// A `revive` or `purge` of a job that is not dead.
    NotDead(State),
    /// A `revive` or `purge` of a dead job that was purged.
    Purged,
    /// A second `submit` of the job's id.
    Resubmitted,
    /// The record is about no job (a sync mark).
    NotAJob,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::Ended(s) => write!(f, "the job had already ended {s}"),
            Stale::NotCurrent {
                attempt,
                current,
                state,
            } => write!(
                f,
                "attempt {attempt} is not the job's running attempt (the job is {state} at attempt {current})"
            ),
            Stale::NotDead(s) => write!(f, "the job is {s}, not dead"),
            Stale::Purged => f.write_str("the job was purged"),
            Stale::Resubmitted => f.write_str("the job's id was submitted before"),
            Stale::NotAJob => f.write_str("the record is about no job"),
        }
    }
}

impl JobCore {
    /// A job as its `submit` record leaves it.
    pub fn new(submit: &Submit<'_>) -> JobCore {
        JobCore::with_run_at(submit.run_at)
    }

    /// A just-submitted job with this `run_at`.
    pub fn with_run_at(run_at: Option<u64>) -> JobCore {
        JobCore {
            state: if run_at.is_some() {
                State::Scheduled
            } else {
                State::Ready
            },
            purged: false,
            interrupted: 0,
            attempt: 0,
            failures: 0,
            at: 0,
            attempts: Vec::new(),
        }
    }

    /// When a `retrying` job runs again.
    pub fn retry_at(&self) -> Option<u64> {
        (self.state == State::Retrying).then_some(self.at)
    }

    /// When a terminal job ended (a purged dead job: when it died).
    pub fn finished_at(&self) -> Option<u64> {
        self.state.is_terminal().then_some(self.at)
    }

    /// A scheduled or retrying job's time came: it is ready. False (nothing changed) in any other
    /// state.
    pub fn wake(&mut self) -> bool {
        if matches!(self.state, State::Scheduled | State::Retrying) {
            self.state = State::Ready;
            self.at = 0;
            true
        } else {
            false
        }
    }

    /// A running attempt was cut short by a restart: it ends `interrupted` (and counts), and the
    /// job is ready again. False (nothing changed) when no attempt was running.
    pub fn interrupt_running(&mut self) -> bool {
        if self.state != State::Running {
            return false;
        }
        self.interrupted += 1;
        if let Some(a) = self.attempts.last_mut() {
            a.outcome = Some(AttemptOutcome::Interrupted);
        }
        self.state = State::Ready;
        true
    }

    /// The current attempt's entry in the timeline.
    fn current_attempt(&mut self) -> Option<&mut AttemptInfo> {
        let n = self.attempt;
        self.attempts.last_mut().filter(|a| a.number == n)
    }
}

/// Applies one record to a job: the job changes and the transition says how, or the record is
/// stale and the job is left exactly as it was.
pub fn apply(job: &mut JobCore, rec: &Record<'_>) -> Result<Transition, Stale> {
    match rec {
        Record::Submit(_) => Err(Stale::Resubmitted),
        Record::Sync(_) | Record::Replay(_) | Record::Queue(_) => Err(Stale::NotAJob),
        Record::Revive(_) | Record::Purge(_) => {
            if job.state != State::Dead {
                return Err(Stale::NotDead(job.state));
            }
            if job.purged {
                return Err(Stale::Purged);
            }
            if let Record::Purge(_) = rec {
                job.purged = true;
                return Ok(Transition::Purged);
            }
            job.state = State::Ready;
            job.failures = 0;
            job.interrupted = 0;
            job.at = 0;
            Ok(Transition::Revived)
        }
        _ if job.state.is_terminal() => Err(Stale::Ended(job.state)),
        Record::Start(s) => {
            let interrupted = job.interrupt_running();
            job.attempt = s.attempt;
            job.state = State::Running;
            job.at = 0;
            // Exact capacity: most jobs have one attempt, and the list outlives the job.
            job.attempts.reserve_exact(1);
            job.attempts.push(AttemptInfo::started(s.attempt, s.at));
            Ok(Transition::Started { interrupted })
        }
        Record::Finish(f) => {
            let current = f.attempt == job.attempt;
            let running = job.state == State::Running;
            let dead = f.state != state_code::SUCCEEDED;
            if !current || !(running || dead) {
                return Err(not_current(job, f.attempt));
            }
            if running {
                if let Some(a) = job.current_attempt() {
                    end_attempt(a, f.at, &f.outcome);
                }
            }
            job.state = if dead {
                job.failures += u32::from(running);
                State::Dead
            } else {
                State::Succeeded
            };
            job.at = f.at;
            Ok(Transition::Ended(job.state))
        }
        Record::Retry(r) => {
            if r.attempt != job.attempt || job.state != State::Running {
                return Err(not_current(job, r.attempt));
            }
            if let Some(a) = job.current_attempt() {
                end_attempt(a, r.at, &r.outcome);
                a.retry_at = Some(r.retry_at);
            }
            job.failures += 1;
            job.state = State::Retrying;
            job.at = r.retry_at;
            Ok(Transition::Retrying)
        }
        Record::Cancel(c) => {
            if job.state == State::Running {
                if let Some(a) = job.current_attempt() {
                    a.ended_at = Some(c.at);
                    a.outcome = Some(AttemptOutcome::Cancelled);
                }
            }
            job.state = State::Cancelled;
            job.at = c.at;
            Ok(Transition::Ended(State::Cancelled))
        }
    }
}

fn not_current(job: &JobCore, attempt: u32) -> Stale {
    Stale::NotCurrent {
        attempt,
        current: job.attempt,
        state: job.state,
    }
}

/// Fills in an attempt's end from the outcome its record carries.
fn end_attempt(a: &mut AttemptInfo, at: u64, o: &Outcome) {
    a.ended_at = Some(at);
    match o {
        Outcome::Succeeded => a.outcome = Some(AttemptOutcome::Succeeded),
        Outcome::Failed {
            reason,
            exit_code,
            output_tail,
        } => {
            a.outcome = Some(AttemptOutcome::Failed);
            a.error = Some(reason.clone());
            a.exit_code = *exit_code;
            a.output_tail = (!output_tail.is_empty()).then(|| output_tail.clone());
        }
        Outcome::TimedOut {
            reason,
            output_tail,
        } => {
            a.outcome = Some(AttemptOutcome::TimedOut);
            a.error = Some(reason.clone());
            a.output_tail = (!output_tail.is_empty()).then(|| output_tail.clone());
        }
    }
}

/// The reason text of an outcome.
pub fn outcome_reason(o: &Outcome) -> &str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed { reason, .. } | Outcome::TimedOut { reason, .. } => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{Cancel, Finish, JobEvent, Retry, Start, SyncMark};
    use proptest::prelude::*;

    fn start(attempt: u32) -> Record<'static> {
        Record::Start(Start {
            id: 1,
            attempt,
            at: 10 * u64::from(attempt),
        })
    }

    fn finish(attempt: u32, state: u8) -> Record<'static> {
        Record::Finish(Finish {
            id: 1,
            attempt,
            at: 100,
            state,
            outcome: if state == state_code::SUCCEEDED {
                Outcome::Succeeded
            } else {
                Outcome::Failed {
                    reason: "boom".into(),
                    exit_code: Some(3),
                    output_tail: String::new(),
                }
            },
        })
    }

    fn retry(attempt: u32) -> Record<'static> {
        Record::Retry(Retry {
            id: 1,
            attempt,
            at: 50,
            retry_at: 70,
            outcome: Outcome::TimedOut {
                reason: "slow".into(),
                output_tail: "tail".into(),
            },
        })
    }

    fn ev(purge: bool) -> Record<'static> {
        let e = JobEvent { id: 1, at: 200 };
        if purge {
            Record::Purge(e)
        } else {
            Record::Revive(e)
        }
    }

    #[test]
    fn a_job_runs_fails_retries_and_succeeds() {
        let mut j = JobCore::with_run_at(None);
        assert_eq!(j.state, State::Ready);
        assert_eq!(
            apply(&mut j, &start(1)),
            Ok(Transition::Started { interrupted: false })
        );
        assert_eq!(apply(&mut j, &retry(1)), Ok(Transition::Retrying));
        assert_eq!(
            (j.state, j.retry_at(), j.failures),
            (State::Retrying, Some(70), 1)
        );
        let a = &j.attempts[0];
        assert_eq!(a.outcome, Some(AttemptOutcome::TimedOut));
        assert_eq!(
            (a.retry_at, a.output_tail.as_deref()),
            (Some(70), Some("tail"))
        );
        assert!(j.wake());
        assert_eq!(j.state, State::Ready);
        apply(&mut j, &start(2)).unwrap();
        assert_eq!(
            apply(&mut j, &finish(2, state_code::SUCCEEDED)),
            Ok(Transition::Ended(State::Succeeded))
        );
        assert_eq!((j.finished_at(), j.attempts.len()), (Some(100), 2));
        assert_eq!(j.attempts[1].outcome, Some(AttemptOutcome::Succeeded));
    }

    #[test]
    fn records_about_an_attempt_given_up_are_fenced() {
        let mut j = JobCore::with_run_at(None);
        apply(&mut j, &start(1)).unwrap();
        // A restart: attempt 2 starts while the log still shows 1 running.
        assert_eq!(
            apply(&mut j, &start(2)),
            Ok(Transition::Started { interrupted: true })
        );
        assert_eq!(j.attempts[0].outcome, Some(AttemptOutcome::Interrupted));
        assert_eq!(j.interrupted, 1);
        let before = j.clone();
        for late in [
            finish(1, state_code::SUCCEEDED),
            finish(1, state_code::DEAD),
            retry(1),
        ] {
            assert_eq!(
                apply(&mut j, &late),
                Err(Stale::NotCurrent {
                    attempt: 1,
                    current: 2,
                    state: State::Running
                })
            );
            assert_eq!(j, before, "a stale record changes nothing");
        }
        // Not running: a success or a retry of the current attempt is stale too.
        apply(&mut j, &retry(2)).unwrap();
        let before = j.clone();
        assert!(apply(&mut j, &finish(2, state_code::SUCCEEDED)).is_err());
        assert!(apply(&mut j, &retry(2)).is_err());
        assert_eq!(j, before);
    }

    #[test]
    fn a_job_that_can_no_longer_run_ends_dead_while_it_waits() {
        let mut j = JobCore::with_run_at(Some(5));
        assert_eq!(j.state, State::Scheduled);
        assert_eq!(
            apply(&mut j, &finish(0, state_code::DEAD)),
            Ok(Transition::Ended(State::Dead))
        );
        assert_eq!((j.failures, j.finished_at()), (0, Some(100)));
        assert!(j.attempts.is_empty());
    }

    #[test]
    fn nothing_but_revive_or_purge_changes_an_ended_job() {
        for (end, state) in [
            (finish(1, state_code::SUCCEEDED), State::Succeeded),
            (Record::Cancel(Cancel { id: 1, at: 9 }), State::Cancelled),
            (finish(1, state_code::DEAD), State::Dead),
        ] {
            let mut j = JobCore::with_run_at(None);
            apply(&mut j, &start(1)).unwrap();
            apply(&mut j, &end).unwrap();
            assert_eq!(j.state, state);
            let before = j.clone();
            for r in [
                start(2),
                finish(1, state_code::SUCCEEDED),
                retry(1),
                Record::Cancel(Cancel { id: 1, at: 9 }),
            ] {
                assert_eq!(apply(&mut j, &r), Err(Stale::Ended(state)));
            }
            if state != State::Dead {
                assert_eq!(apply(&mut j, &ev(false)), Err(Stale::NotDead(state)));
                assert_eq!(apply(&mut j, &ev(true)), Err(Stale::NotDead(state)));
            }
            assert_eq!(j, before);
        }
    }

    #[test]
    fn a_cancel_ends_the_running_attempt_cancelled() {
        let mut j = JobCore::with_run_at(None);
        apply(&mut j, &start(1)).unwrap();
        apply(&mut j, &Record::Cancel(Cancel { id: 1, at: 9 })).unwrap();
        assert_eq!(j.attempts[0].outcome, Some(AttemptOutcome::Cancelled));
        assert_eq!((j.state, j.finished_at()), (State::Cancelled, Some(9)));
    }

    #[test]
    fn dead_jobs_revive_with_fresh_attempts_until_purged() {
        let mut j = JobCore::with_run_at(None);
        apply(&mut j, &start(1)).unwrap();
        apply(&mut j, &finish(1, state_code::DEAD)).unwrap();
        assert_eq!(j.failures, 1);
        assert_eq!(apply(&mut j, &ev(false)), Ok(Transition::Revived));
        assert_eq!((j.state, j.failures, j.at), (State::Ready, 0, 0));
        apply(&mut j, &start(2)).unwrap();
        apply(&mut j, &finish(2, state_code::DEAD)).unwrap();
        assert_eq!(apply(&mut j, &ev(true)), Ok(Transition::Purged));
        assert_eq!((j.state, j.purged), (State::Dead, true));
        assert_eq!(apply(&mut j, &ev(false)), Err(Stale::Purged));
        assert_eq!(apply(&mut j, &ev(true)), Err(Stale::Purged));
        assert_eq!(
            apply(
                &mut j,
                &Record::Sync(SyncMark {
                    synced_lsn: 1,
                    at: 1
                })
            ),
            Err(Stale::NotAJob)
        );
    }

    fn arb_record() -> impl Strategy<Value = Record<'static>> {
        prop_oneof![
            (0u32..4).prop_map(start),
            (
                0u32..4,
                prop_oneof![
                    Just(state_code::SUCCEEDED),
                    Just(state_code::DEAD),
                    Just(9u8)
                ]
            )
                .prop_map(|(a, s)| finish(a, s)),
            (0u32..4).prop_map(retry),
            Just(Record::Cancel(Cancel { id: 1, at: 9 })),
            any::<bool>().prop_map(ev),
        ]
    }

    proptest! {
        /// Under any sequence of records: a stale record changes nothing, terminal states change
        /// only by revive or purge, a running job's current attempt is the last in the timeline,
        /// and the counters follow the timeline.
        #[test]
        fn any_record_sequence_keeps_the_invariants(
            run_at in proptest::option::of(1u64..5),
            recs in proptest::collection::vec(arb_record(), 0..40),
            wakes in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let mut j = JobCore::with_run_at(run_at);
            for (r, wake) in recs.iter().zip(wakes) {
                let before = j.clone();
                match apply(&mut j, r) {
                    Err(_) => prop_assert_eq!(&j, &before),
                    Ok(t) => {
                        if before.state.is_terminal() {
                            prop_assert!(matches!(t, Transition::Revived | Transition::Purged));
                        }
                        prop_assert_eq!(t == Transition::Purged, j.purged && !before.purged);
                    }
                }
                if j.state == State::Running {
                    prop_assert_eq!(j.attempts.last().map(|a| a.number), Some(j.attempt));
                    prop_assert_eq!(j.attempts.last().and_then(|a| a.outcome), None);
                }
                prop_assert!(j.failures as usize <= j.attempts.len());
                prop_assert!(!j.purged || j.state == State::Dead);
                if wake {
                    j.wake();
                }
            }
        }
    }
}
