//! The job model shared by the protocol, the WAL, the scheduler and the workers.

use std::sync::Arc;

pub use crate::clock::now_ms;

use crate::wal::record::Submit;

/// A job as accepted: immutable once built. Shared (`Arc`) between the dispatcher and the worker
/// running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Unique per data directory.
    pub id: u64,
    /// Queue index into the config's queues.
    pub queue: u16,
    /// Kind index into the runtime's kinds.
    pub kind: u16,
    /// JSON payload text.
    pub payload: Box<str>,
    /// Idempotency key.
    pub key: Option<Box<str>>,
    /// Acceptance time (ms since the epoch).
    pub submitted_at: u64,
    /// Deadline (ms since the epoch).
    pub deadline: u64,
    /// Earliest start (delayed jobs).
    pub run_at: Option<u64>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
}

/// Shared handle to a job.
pub type JobRef = Arc<Job>;

/// The WAL's message type for jobs: what connections and the dispatcher send the commit thread.
pub type WalMsg = crate::wal::commit::WalMsg<JobRef>;

impl crate::wal::commit::Keyed for JobRef {
    fn id(&self) -> u64 {
        self.id
    }
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    fn submitted_at(&self) -> u64 {
        self.submitted_at
    }
}

impl Job {
    /// The WAL body for this job, given its queue and kind names.
    pub fn to_record<'a>(&'a self, queue: &'a str, kind: &'a str) -> Submit<'a> {
        Submit {
            id: self.id,
            queue: queue.into(),
            kind: kind.into(),
            payload: (&*self.payload).into(),
            key: self.key.as_deref().map(Into::into),
            submitted_at: self.submitted_at,
            deadline: self.deadline,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
        }
    }
}

/// Job states (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting for `run_at`.
    Scheduled,
    /// Waiting for a worker.
    Ready,
    /// On a worker.
    Running,
    /// Waiting for its retry time.
    Retrying,
    /// Terminal: success.
    Succeeded,
    /// Terminal: attempts or deadline exhausted.
    Dead,
    /// Terminal: cancelled.
    Cancelled,
}

impl State {
    /// All states, in display order.
    pub const ALL: [State; 7] = [
        State::Scheduled,
        State::Ready,
        State::Running,
        State::Retrying,
        State::Succeeded,
        State::Dead,
        State::Cancelled,
    ];

    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Ready => "ready",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Succeeded => "succeeded",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
        }
    }

    /// Index into [`State::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether no further change can happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Dead | State::Cancelled)
    }
}
