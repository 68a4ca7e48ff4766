//! The scheduler: one dispatcher thread owns every job's in-memory state and the ready set;
//! worker threads run jobs. See `README.md` in this folder for how workers park and are woken.
//!
//! - [`ready`]: the ready set and the pick rule (deadline order, `max_workers`, `reserved`, lending).
//! - [`lateness`]: which ready jobs are past their deadline, counted the moment it passes.
//! - [`recent`]: a queue's figures over the last minute.
//! - [`dispatcher`]: the thread and its state machine.
//! - [`table`]: the job table (a slab behind a small id map).
//! - [`worker`]: the worker threads.

pub mod dispatcher;
pub mod handoff;
pub mod lateness;
pub mod ready;
pub mod recent;
pub mod table;
pub mod worker;

use std::time::Duration;

use crossbeam_channel::Sender;

use std::sync::Arc;

use crate::handlers::JobError;
use crate::wal::WalError;

use crate::wire::{JobInfo, SchedStats};

/// Per (queue, kind) counters since start-up, indexed by [`KindCount`].
pub type KindCounts = [u64; 4];

/// What a [`KindCounts`] entry counts.
#[derive(Debug, Clone, Copy)]
pub enum KindCount {
    /// Jobs accepted (durable).
    Submitted = 0,
    /// Jobs that ended `succeeded`.
    Succeeded = 1,
    /// Jobs that ended `dead`.
    Dead = 2,
    /// Retries scheduled.
    Retries = 3,
}

/// A cumulative histogram: (upper bound, observations at most that), the count and the sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// (upper bound, cumulative count), increasing.
    pub le: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Their sum (from the histogram: to 3 significant digits).
    pub sum: f64,
}

/// What the dispatcher gives `/metrics`: counters since start-up.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// (queue, kind, counts).
    pub kinds: Vec<(String, String, KindCounts)>,
    /// Per queue: wait for a worker (seconds).
    pub wait: Vec<(String, Buckets)>,
    /// Per queue: run time (seconds).
    pub run: Vec<(String, Buckets)>,
}

/// A finished attempt, from a worker.
#[derive(Debug)]
pub struct Done {
    /// Worker index.
    pub worker: usize,
    /// Job id.
    pub id: u64,
    /// The job's queue (the worker counts against it until it reports).
    pub queue: u16,
    /// Attempt number.
    pub attempt: u32,
    /// Outcome.
    pub result: Result<(), JobError>,
    /// Run time in microseconds.
    pub run_us: u64,
}

/// Why an operation on a job was refused.
#[derive(Debug, Clone)]
pub enum Refused {
    /// No such job (or forgotten from memory).
    NotFound,
    /// The job's state does not allow it.
    WrongState(crate::job::State),
    /// The job is dead, but purged from the dead letters.
    Purged,
    /// The WAL failed, so the change was not recorded, and not made. For an operation on many
    /// jobs, `applied` lists those whose records did reach the log before the failure: for them
    /// the change was made.
    Wal {
        /// The WAL's error.
        error: Arc<WalError>,
        /// Whether the records not applied are certainly not in the log (otherwise they may be
        /// there after a restart).
        certain: bool,
        /// Jobs the change was recorded and made for.
        applied: Vec<u64>,
    },
}

/// Which dead jobs an operation is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadFilter {
    /// One job.
    Id(u64),
    /// All dead jobs, optionally of one queue, optionally dead before a time.
    All {
        /// Queue index.
        queue: Option<u16>,
        /// Only jobs that died before this time (ms).
        before: Option<u64>,
    },
}

/// Messages to the dispatcher.
pub enum Msg {
    /// Durable jobs wait in the [`handoff::Handoff`] that need the dispatcher before it would wake
    /// by itself (from the thread that made them durable).
    Wake,
    /// An attempt ended.
    Done(Done),
    /// `status ID`.
    Status {
        /// Job id.
        id: u64,
        /// Reply.
        reply: Sender<Option<JobInfo>>,
    },
    /// `stats`.
    Stats {
        /// Reply.
        reply: Sender<SchedStats>,
    },
    /// Counters and histograms for `/metrics`.
    Metrics {
        /// Reply.
        reply: Sender<Metrics>,
    },
    /// The states of jobs, from memory (a replay's freshest view).
    States {
        /// Job ids.
        ids: Vec<u64>,
        /// Reply: the state of each, where the dispatcher's memory holds the job.
        reply: Sender<Vec<Option<crate::job::State>>>,
    },
    /// A queue's live settings changed (`queue set|pause|resume`, already in the log).
    QueueSettings {
        /// Queue index.
        queue: u16,
        /// Its limits from now on.
        limits: ready::Limits,
        /// Its `due_in` (for `stats`; submits read it themselves).
        due_in: Duration,
        /// Paused until then (ms; `u64::MAX`: until resumed), or running.
        paused_until: Option<u64>,
    },
    /// How many jobs of a queue are ready (a replay paces itself on it).
    Ready {
        /// Queue index.
        queue: u16,
        /// Reply.
        reply: Sender<u64>,
    },
    /// `cancel ID`: answered once the cancel record is durable (the job is cancelled only then).
    Cancel {
        /// Job id.
        id: u64,
        /// The state the job was in, or why it was refused.
        reply: Sender<Result<crate::job::State, Refused>>,
    },
    /// `dead list`: dead jobs, oldest death first.
    DeadList {
        /// Only this queue.
        queue: Option<u16>,
        /// Only jobs that died at or after this time (ms).
        since: Option<u64>,
        /// Reply.
        reply: Sender<Vec<JobInfo>>,
    },
    /// `dead retry`: put dead jobs back with fresh attempts, once their records are durable.
    DeadRetry {
        /// Which.
        which: DeadFilter,
        /// Ids revived, or why not.
        reply: Sender<Result<Vec<u64>, Refused>>,
    },
    /// `dead purge`: forget dead jobs (their records stay in the WAL), once the purge records
    /// are durable.
    DeadPurge {
        /// Which.
        which: DeadFilter,
        /// Ids purged, or why not.
        reply: Sender<Result<Vec<u64>, Refused>>,
    },
    /// Stop dispatching, let running jobs finish within `grace`, write their records, reply.
    Shutdown {
        /// How long running jobs may take.
        grace: Duration,
        /// Sent when the dispatcher is done.
        reply: Sender<()>,
    },
}
