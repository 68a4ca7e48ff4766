//! The socket protocol's types, in one place: [`Request`]s (what a line asks), replies (what the
//! daemon answers), [`JobInfo`] and [`Stats`] (what `status` and `stats` report), and the error
//! codes. The server, the [`crate::Client`], the [`crate::Runtime`] and the command line all use
//! these, so the protocol has one definition. `docs/protocol.md` describes it for other
//! languages.

mod error;
mod info;
pub(crate) mod reply;
mod request;

pub use error::{ErrorCode, Rejection};
pub use info::{
    AlertInfo, AlertsReport, AttemptInfo, AttemptOutcome, CatalogReport, CheckpointReport, JobInfo,
    KindHealth, Percentiles, QueueStats, RecentStats, SchedStats, State, Stats, WalReport,
};
pub use reply::{
    AlertList, BatchSubmitted, Cancelled, CatalogRebuilt, CheckpointTaken, DeadJobs, Hello, Ids,
    JobList, JobLog, JobStatus, QueueInfo, Replayed, Submitted,
};
pub use request::{
    DeadSelect, JobSpec, JobsQuery, QueueChange, ReplaySpec, Request, Submit, DEFAULT_JOBS_LIMIT,
    MAX_BATCH, MAX_JOBS_LIMIT, PROTOCOL_VERSION,
};
