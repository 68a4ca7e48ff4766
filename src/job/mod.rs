//! The job model: a job as accepted ([`Job`]), its states ([`State`]) and attempts
//! ([`AttemptInfo`]), and [`machine`], the one set of rules for how a job's WAL records change it.
//!
//! This layer sits on the WAL's record types and below everything that runs or reports jobs: the
//! dispatcher, recovery and `wal inspect` all apply records through [`machine::apply`].

pub mod census;
pub mod machine;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

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

/// The prefix of the idempotency key of a replay (`duejob replay`): `replay:ID` names the job
/// replayed. Clients may not use it.
pub const REPLAY_KEY_PREFIX: &str = "replay:";

/// The key of the replay of job `id`.
pub fn replay_key(id: u64) -> String {
    format!("{REPLAY_KEY_PREFIX}{id}")
}

/// The job a job with this key replays.
pub fn replay_of(key: Option<&str>) -> Option<u64> {
    key?.strip_prefix(REPLAY_KEY_PREFIX)?.parse().ok()
}

/// Shared handle to a job.
pub type JobRef = Arc<Job>;

/// The size of the live set, as the dispatcher keeps it: every job in its table (not finished,
/// or dead and not purged), and the bytes of their payloads and keys. Written by the dispatcher
/// alone; the checkpointer reads it to judge what a checkpoint would write.
#[derive(Debug, Default)]
pub struct LiveSize {
    /// Jobs.
    pub jobs: std::sync::atomic::AtomicU64,
    /// Bytes of their payloads and keys.
    pub bytes: std::sync::atomic::AtomicU64,
}

impl LiveSize {
    /// Counts `job` in (`sign` 1) or out (`sign` -1).
    pub fn add(&self, job: &Job, sign: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let b = (job.payload.len() + job.key.as_ref().map_or(0, |k| k.len())) as u64;
        if sign > 0 {
            self.jobs.fetch_add(1, Relaxed);
            self.bytes.fetch_add(b, Relaxed);
        } else {
            self.jobs.fetch_sub(1, Relaxed);
            self.bytes.fetch_sub(b, Relaxed);
        }
    }
}

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

/// A job's state (`docs/guarantees.md`, "Job states"). The serde names (`"scheduled"`, ...) are
/// the protocol's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

    /// Index into [`State::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether no further change can happen (but a dead job's revive or purge).
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Dead | State::Cancelled)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The handler succeeded.
    Succeeded,
    /// The handler failed.
    Failed,
    /// It ran past its timeout.
    TimedOut,
    /// The job was cancelled while it ran.
    Cancelled,
    /// The daemon stopped while it ran.
    Interrupted,
}

/// The protocol name of a unit variant, from its serde name (one source of truth for names).
pub(crate) fn serde_name<T: Serialize>(v: &T, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => f.write_str(&s),
        _ => Err(std::fmt::Error),
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        serde_name(self, f)
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        serde_name(self, f)
    }
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptInfo {
    /// Attempt number, from 1.
    pub number: u32,
    /// Start (ms since the epoch).
    pub started_at: u64,
    /// End (ms), when it ended.
    pub ended_at: Option<u64>,
    /// How it ended; null while running.
    pub outcome: Option<AttemptOutcome>,
    /// Failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Exit code of an exec job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Tail of the output of a failed exec job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    /// When the failure scheduled the next attempt (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<u64>,
}

impl AttemptInfo {
    /// A just-started attempt.
    pub fn started(number: u32, at: u64) -> AttemptInfo {
        AttemptInfo {
            number,
            started_at: at,
            ended_at: None,
            outcome: None,
            error: None,
            exit_code: None,
            output_tail: None,
            retry_at: None,
        }
    }
}
