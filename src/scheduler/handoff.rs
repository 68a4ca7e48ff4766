//! Durable jobs on their way from the WAL to the dispatcher, waking it only when it must act.
//!
//! Every durable job goes into one queue, in log order (the WAL hands them on under its lock),
//! and so does the WAL's failure, in the order the WAL reports it (so no job handed on after the
//! failure is started before the dispatcher knows of it).
//! The dispatcher never blocks on that queue: it drains it before every message it handles and
//! before it goes to sleep, so a job is in its table before any request sent after the job's
//! acknowledgement is answered (`status`, `cancel`, `stats`: all are messages). The WAL wakes it
//! (a [`Msg::Wake`]) only when a job needs it before it would wake by itself: a job that may run
//! now or comes due before the dispatcher's next timer, or when that timer is more than [`LAZY`]
//! away. After a wake for jobs that did not need it at once, the dispatcher sleeps at most
//! [`LAZY`], so that a stream of delayed jobs (reminders, scheduled work) costs it one wake-up per
//! [`LAZY`] instead of one per job, and no job waits longer than that to be counted (`LiveSize`,
//! the checkpointer's figure, is the only thing that reads the dispatcher's counts without a
//! message).
//!
//! No wake-up is lost: the WAL sends, then reads `sleeping_until`; the dispatcher
//! publishes it, then looks at the queue once more before it sleeps; both with `SeqCst` fences,
//! so at least one of them sees the other's write (the WAL wakes it, or it drains the job).

use std::sync::atomic::{fence, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::Msg;
use crate::job::{now_ms, JobRef};
use crate::wal::WalError;

/// The longest a job that needs nothing at once may wait before the dispatcher takes it in.
pub const LAZY: Duration = Duration::from_millis(5);

/// `sleeping_until` while the dispatcher is awake: it drains the queue before it sleeps.
const AWAKE: u64 = 0;

/// What the WAL hands on, in the order it happened.
pub(crate) enum Handed {
    /// Durable jobs, in log order.
    Jobs(Vec<JobRef>),
    /// The WAL failed: nothing more can be recorded.
    Failed(std::sync::Arc<WalError>),
}

/// The queue of durable jobs, shared by the WAL (sender) and the dispatcher (receiver).
pub struct Handoff {
    tx: Sender<Handed>,
    rx: Receiver<Handed>,
    /// When the dispatcher next wakes by itself, in ms since the epoch: [`AWAKE`] while it runs,
    /// `u64::MAX` while it sleeps with no timer.
    sleeping_until: AtomicU64,
}

impl Default for Handoff {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Handoff {
            tx,
            rx,
            sleeping_until: AtomicU64::new(AWAKE),
        }
    }
}

impl Handoff {
    /// Hands `jobs` (durable, in log order) to the dispatcher, waking it through `wake` when one
    /// of them needs it before it would wake by itself.
    pub fn hand_on(&self, jobs: Vec<JobRef>, wake: &Sender<Msg>) {
        if jobs.is_empty() {
            return;
        }
        let due = jobs
            .iter()
            .map(|j| j.run_at.unwrap_or(0))
            .min()
            .unwrap_or(0);
        // The receiver lives in `self`: the send cannot fail.
        let _ = self.tx.send(Handed::Jobs(jobs));
        fence(SeqCst);
        let until = self.sleeping_until.load(SeqCst);
        if needs_wake(due, until, now_ms()) {
            let _ = wake.send(Msg::Wake);
        }
    }

    /// The WAL failed: tells the dispatcher (after every job handed on before) and wakes it.
    pub fn failed(&self, e: std::sync::Arc<WalError>, wake: &Sender<Msg>) {
        let _ = self.tx.send(Handed::Failed(e));
        let _ = wake.send(Msg::Wake);
    }

    /// The dispatcher: the next thing handed on, in order.
    pub(crate) fn take_one(&self) -> Option<Handed> {
        self.rx.try_recv().ok()
    }

    /// The dispatcher, before it sleeps: says until when (ms since the epoch; `None`: no timer).
    /// Returns false when jobs came meanwhile: take them instead of sleeping.
    pub(crate) fn sleep_until(&self, at: Option<u64>) -> bool {
        self.sleeping_until
            .store(at.unwrap_or(u64::MAX).max(1), SeqCst);
        fence(SeqCst);
        self.rx.is_empty()
    }

    /// The dispatcher, once awake.
    pub(crate) fn awake(&self) {
        self.sleeping_until.store(AWAKE, SeqCst);
    }
}

/// Whether a job due at `due` (ms; 0: now) must wake a dispatcher sleeping until `until`.
fn needs_wake(due: u64, until: u64, now: u64) -> bool {
    until != AWAKE && (due < until || until > now.saturating_add(LAZY.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_wakes_the_dispatcher_only_when_it_would_not_wake_soon_enough_by_itself() {
        let now = 1_000_000;
        // Awake: it drains before it sleeps.
        assert!(!needs_wake(0, AWAKE, now));
        // A job that may run now, or is due before the next timer.
        assert!(needs_wake(0, now + 3, now));
        assert!(needs_wake(now + 2, now + 3, now));
        // Due at or after a timer at most LAZY away: that timer takes it in.
        assert!(!needs_wake(now + 3, now + 3, now));
        assert!(!needs_wake(now + 3_600_000, now + 5, now));
        // The next timer is far, or there is none: woken, so the job is counted soon.
        assert!(needs_wake(now + 3_600_000, now + 6, now));
        assert!(needs_wake(now + 3_600_000, u64::MAX, now));
    }

    #[test]
    fn a_job_handed_on_while_the_dispatcher_goes_to_sleep_is_never_left_behind() {
        // Either the sender sees the dispatcher asleep (and wakes it) or the dispatcher sees the
        // job before it sleeps: over many races, never neither.
        let h = std::sync::Arc::new(Handoff::default());
        let (wtx, wrx) = crossbeam_channel::unbounded();
        let job: JobRef = std::sync::Arc::new(crate::job::Job {
            id: 1,
            queue: 0,
            kind: 0,
            payload: "{}".into(),
            key: None,
            submitted_at: 0,
            deadline: 0,
            run_at: Some(u64::MAX / 2),
            max_attempts: 1,
            timeout_ms: None,
        });
        for _ in 0..2_000 {
            h.awake();
            let h2 = h.clone();
            let (j, w) = (job.clone(), wtx.clone());
            let t = std::thread::spawn(move || h2.hand_on(vec![j], &w));
            let saw_job = !h.sleep_until(None);
            t.join().unwrap();
            let woken = wrx.try_recv().is_ok();
            assert!(saw_job || woken, "the job was neither seen nor did it wake");
            assert!(h.take_one().is_some() && h.take_one().is_none());
        }
    }
}
