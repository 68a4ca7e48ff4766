//! The scheduler: one dispatcher thread owns every job's in-memory state and the ready set;
//! worker threads run jobs. See `README.md` in this folder for how workers park and are woken.
//!
//! - [`ready`]: the ready set and the pick rule (deadline order, `max_workers`, `reserved`, lending).
//! - [`dispatcher`]: the thread and its state machine.
//! - [`worker`]: the worker threads.
//! - [`info`]: what `status` and `stats` report.

pub mod dispatcher;
pub mod info;
pub mod ready;
pub mod worker;

use std::time::Duration;

use crossbeam_channel::Sender;

use crate::handlers::JobError;
use crate::job::JobRef;
use crate::wal::commit::Acked;

pub use info::{AttemptInfo, JobInfo, SchedStats};

/// A finished attempt, from a worker.
#[derive(Debug)]
pub struct Done {
    /// Worker index.
    pub worker: usize,
    /// Job id.
    pub id: u64,
    /// Attempt number.
    pub attempt: u32,
    /// Outcome.
    pub result: Result<(), JobError>,
    /// Run time in microseconds.
    pub run_us: u64,
}

/// Why a cancel was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRefused {
    /// No such job (or forgotten from memory).
    NotFound,
    /// The job is in a state that cannot be cancelled.
    NotCancellable(&'static str),
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
        /// Accepted or refused.
        reply: Sender<Result<(), CancelRefused>>,
    },
    /// Stop dispatching, let running jobs finish within `grace`, write their records, reply.
    Shutdown {
        /// How long running jobs may take.
        grace: Duration,
        /// Sent when the dispatcher is done.
        reply: Sender<()>,
    },
}
