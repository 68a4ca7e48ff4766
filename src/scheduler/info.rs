//! What `status` and `stats` report (serialized as JSON by the protocol).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::job::{AttemptInfo, AttemptOutcome};

/// A job's status and timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub id: u64,
    /// Queue name.
    pub queue: String,
    /// Kind name.
    pub kind: String,
    /// State name (SPEC §2).
    pub state: String,
    /// Acceptance time (ms).
    pub submitted_at: u64,
    /// Deadline (ms).
    pub deadline: u64,
    /// Earliest start of a delayed job (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<u64>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When a `retrying` job runs again (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    /// When it reached its terminal state (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The payload (live jobs only; terminal jobs keep a summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptInfo>,
}

/// Percentiles of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Per-queue figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Jobs by state name (terminal counts since the data directory began, as far as memory goes).
    pub states: BTreeMap<String, u64>,
    /// Limit.
    pub max_workers: usize,
    /// Reserved workers.
    pub reserved: usize,
    /// Queue `due_in` (ms).
    pub due_in_ms: u64,
    /// Age of the most urgent ready job (ms).
    pub oldest_ready_age_ms: Option<u64>,
    /// Time left until the most urgent ready job's deadline (ms; negative when late).
    pub slack_ms: Option<i64>,
    /// Jobs started after their deadline.
    pub deadline_misses: u64,
    /// Attempts that ended in failure (timeouts included).
    pub failures: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Jobs that ran on a worker lent from another queue's reservation.
    pub borrowed: u64,
    /// From ready to started.
    pub wait_ms: Percentiles,
    /// Run time.
    pub run_ms: Percentiles,
}

/// What the dispatcher reports for `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedStats {
    /// Jobs by state name, all queues.
    pub totals: BTreeMap<String, u64>,
    /// Per queue, by name.
    pub queues: BTreeMap<String, QueueStats>,
    /// Worker threads.
    pub workers: usize,
    /// Workers running a job now.
    pub busy: usize,
    /// Dispatch order.
    pub order: String,
}
