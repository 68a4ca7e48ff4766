//! The scheduler: one dispatcher thread owns every job's in-memory state and the ready set;
//! worker threads run jobs. See `README.md` in this folder for how workers park and are woken.
//!
//! - [`ready`]: the ready set and the pick rule (deadline order, `max_workers`, `reserved`, lending).
//! - [`dispatcher`]: the thread and its state machine.
//! - [`table`]: the job table (a slab behind a small id map).
//! - [`worker`]: the worker threads.
//! - [`info`]: what `status` and `stats` report.

pub mod dispatcher;
pub mod info;
pub mod ready;
pub mod table;
pub mod worker;

use std::time::Duration;

use crossbeam_channel::Sender;

use crate::handlers::JobError;
use crate::job::JobRef;
use crate::wal::commit::Acked;

pub use info::{AttemptInfo, AttemptOutcome, JobInfo, SchedStats};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No such job (or forgotten from memory).
    NotFound,
    /// The job's state does not allow it (the state's name).
    WrongState(&'static str),
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
    /// Durable jobs, from the WAL thread.
    Jobs(Vec<JobRef>),
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
    /// `cancel ID`: `reply` says whether a cancel record was appended; if so `ack` hears when it
    /// is durable.
    Cancel {
        /// Job id.
        id: u64,
        /// Durability of the cancel record.
        ack: Sender<Acked>,
        /// The state the job was in, or why it was refused.
        reply: Sender<Result<&'static str, Refused>>,
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
    /// `dead retry`: put dead jobs back with fresh attempts. `reply` lists them; when any,
    /// `ack` hears when their records are durable.
    DeadRetry {
        /// Which.
        which: DeadFilter,
        /// Durability.
        ack: Sender<Acked>,
        /// Ids revived, or why not.
        reply: Sender<Result<Vec<u64>, Refused>>,
    },
    /// `dead purge`: forget dead jobs (their records stay in the WAL).
    DeadPurge {
        /// Which.
        which: DeadFilter,
        /// Durability.
        ack: Sender<Acked>,
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
