//! What `status` and `stats` report.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::job::{AttemptInfo, AttemptOutcome, State};

/// A field that is `Some` whenever it is present, `null` included (`Option`'s own deserializer
/// reads `null` as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// A job's status and timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub id: u64,
    /// Queue name.
    pub queue: String,
    /// Kind name.
    pub kind: String,
    /// State.
    pub state: State,
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
    /// The job this one replays (`duejob replay`; its key is `replay:ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<u64>,
    /// When a `retrying` job runs again (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    /// When it reached its terminal state (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The payload (live jobs only; terminal jobs keep a summary).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
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
    /// Jobs by state (terminal counts since the data directory began, as far as memory goes).
    pub states: BTreeMap<State, u64>,
    /// Limit.
    pub max_workers: usize,
    /// Reserved workers.
    pub reserved: usize,
    /// Queue `due_in` (ms).
    pub due_in_ms: u64,
    /// Queue `lend_limit` (ms).
    #[serde(default)]
    pub lend_limit_ms: u64,
    /// Paused until then (ms since the epoch; 18446744073709551615: until resumed); absent when
    /// running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<u64>,
    /// The settings an operator changed (`queue set`), which override the config file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridden: Vec<String>,
    /// Age of the most urgent ready job (ms).
    pub oldest_ready_age_ms: Option<u64>,
    /// Time left until the most urgent ready job's deadline (ms; negative when late).
    pub slack_ms: Option<i64>,
    /// Ready jobs past their deadline now.
    #[serde(default)]
    pub late: u64,
    /// Jobs whose deadline passed while they were ready (each job once, the moment it passed,
    /// whether or not a worker took it since).
    pub deadline_misses: u64,
    /// Attempts that ended in failure (timeouts included).
    pub failures: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Jobs that ran on a worker lent from another queue's reservation.
    pub borrowed: u64,
    /// From ready to started, since start-up.
    pub wait_ms: Percentiles,
    /// Run time, since start-up.
    pub run_ms: Percentiles,
    /// The last minute.
    #[serde(default)]
    pub recent: RecentStats,
}

/// A queue's figures over the last minute (less just after start-up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentStats {
    /// The span covered (ms).
    pub window_ms: u64,
    /// From ready to started, for the jobs started in it.
    pub wait_ms: Percentiles,
    /// Run times of the attempts that ended in it.
    pub run_ms: Percentiles,
    /// Jobs that ended (succeeded or dead).
    pub done: u64,
    /// `done` per second.
    pub done_per_s: f64,
    /// Retries scheduled.
    pub retries: u64,
    /// Attempts that failed.
    pub failures: u64,
}

impl QueueStats {
    /// How many of the queue's jobs are in `state`.
    pub fn count(&self, state: State) -> u64 {
        self.states.get(&state).copied().unwrap_or(0)
    }
}

/// What the dispatcher reports for `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedStats {
    /// Jobs by state, all queues.
    pub totals: BTreeMap<State, u64>,
    /// Per queue, by name.
    pub queues: BTreeMap<String, QueueStats>,
    /// Worker threads.
    pub workers: usize,
    /// Workers running a job now.
    pub busy: usize,
    /// Dispatch order.
    pub order: String,
}

impl SchedStats {
    /// How many jobs of all queues are in `state`.
    pub fn total(&self, state: State) -> u64 {
        self.totals.get(&state).copied().unwrap_or(0)
    }
}

/// WAL figures for `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalReport {
    /// Sync mode in force.
    pub sync: String,
    /// Segments in `wal/`.
    pub segments: u64,
    /// Bytes appended since start.
    pub bytes: u64,
    /// Records appended since start (sync marks included).
    pub records: u64,
    /// Sync marks appended since start (records that say how far the log was durable).
    #[serde(default)]
    pub sync_marks: u64,
    /// Group commits since start.
    pub groups: u64,
    /// Mean records per group.
    pub mean_group: f64,
    /// Largest group.
    pub max_group: u64,
    /// fdatasync calls since start.
    pub fsyncs: u64,
    /// fdatasync latency upper bounds (µs): p50, p99.
    pub fsync_p50_us: u64,
    /// See `fsync_p50_us`.
    pub fsync_p99_us: u64,
    /// Idempotency keys known (inside `key_retention`).
    #[serde(default)]
    pub keys: u64,
    /// Keys forgotten before their retention ran out because the index was full (`max_keys`):
    /// while this is 0, every key inside the window deduplicates.
    #[serde(default)]
    pub keys_evicted: u64,
    /// Checkpoints and the archive.
    #[serde(default)]
    pub checkpoint: CheckpointReport,
}

/// Checkpoints and the archive, in `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointReport {
    /// Whether checkpoints are taken automatically (`checkpoints` in the config).
    pub auto: bool,
    /// Bytes of log a restart reads after the checkpoint (sealed segments and the current one).
    pub bytes_since: u64,
    /// Checkpoints taken since start.
    pub checkpoints: u64,
    /// When the checkpoint in place was taken (ms), if there is one.
    pub last_at: Option<u64>,
    /// The last LSN it covers.
    pub last_lsn: u64,
    /// How long the last one (since start) took (ms).
    pub last_ms: u64,
    /// Size of the checkpoint in place.
    pub last_bytes: u64,
    /// Failed attempts since start.
    pub failures: u64,
    /// The last failure, until a checkpoint succeeds again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Segments released since start.
    pub released: u64,
    /// Segments in `DATA/archive/`.
    pub archive_segments: u64,
    /// Bytes in `DATA/archive/`.
    pub archive_bytes: u64,
}

/// How a kind that talks to an outside service is faring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindHealth {
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed in a way a retry may mend (server down, 4xx).
    pub temporary_failures: u64,
    /// Attempts that failed for good (5xx).
    pub permanent_failures: u64,
    /// Temporary failures since the last success or permanent rejection (0: the service
    /// answers).
    pub consecutive_failures: u64,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// When it happened (ms since the epoch).
    pub last_error_at: Option<u64>,
}

/// Everything `stats` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Scheduler figures.
    #[serde(flatten)]
    pub sched: SchedStats,
    /// WAL figures.
    pub wal: WalReport,
    /// Kinds that depend on an outside service (`email`: the SMTP server), by name.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindHealth>,
    /// The catalog, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogReport>,
    /// Alerts, when the alert thread runs (the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsReport>,
}

/// Alert figures for `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsReport {
    /// Rule instances firing now.
    pub firing: u64,
    /// Firings since start.
    pub fired: u64,
    /// Resolves since start.
    pub resolved: u64,
    /// `alert_command` runs started.
    pub command_runs: u64,
    /// Runs that failed (non-zero exit, timeout, could not start).
    pub command_failures: u64,
    /// Events replaced by a newer one of the same instance while its command ran.
    pub command_superseded: u64,
    /// Runs going on now.
    pub command_running: u64,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command_error: Option<String>,
}

/// One alert rule instance, for `alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertInfo {
    /// The rule.
    pub alert: String,
    /// Its queue (per-queue rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Its kind (`kind_failing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `ok`, `pending` (its condition holds, not yet for its hold time) or `firing`.
    pub state: String,
    /// Since when it is pending or firing (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The figure it watches, at the last evaluation.
    pub value: f64,
    /// Its threshold.
    pub threshold: f64,
    /// What both measure.
    pub unit: String,
    /// How long the condition must hold before it fires (ms).
    pub hold_ms: u64,
    /// How long its clear condition must hold before it resolves (ms).
    pub clear_ms: u64,
}

/// Catalog figures for `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogReport {
    /// Its directory.
    pub dir: String,
    /// LSN of the last record applied.
    pub applied_lsn: u64,
    /// Durable records not applied yet.
    pub lag_records: u64,
    /// How long since it was last caught up with the durable log (ms), 0 when it is.
    pub behind_ms: u64,
    /// Records applied since start.
    pub records: u64,
    /// Jobs added since start.
    pub jobs_added: u64,
    /// Records about jobs submitted before its history began.
    pub orphans: u64,
    /// Segments gone before it read them (history lost; 0 unless the archive was trimmed).
    pub missed_segments: u64,
    /// Places of damage in sealed segments read past (the records in between are not in the
    /// history; 0 unless a file was damaged).
    #[serde(default)]
    pub damage_skipped: u64,
    /// Daily partitions.
    pub partitions: u64,
    /// Flushes of the store (each several fsyncs) since start: at most one a second.
    #[serde(default)]
    pub flushes: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Whether it is failing now.
    pub failing: bool,
    /// Failures since start.
    pub failures: u64,
    /// The last failure, while failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_maps_and_null_payloads_round_trip() {
        let mut states = BTreeMap::new();
        states.insert(State::Ready, 3);
        states.insert(State::Dead, 1);
        let v = serde_json::to_value(&states).unwrap();
        assert_eq!(v, serde_json::json!({"dead": 1, "ready": 3}));
        let back: BTreeMap<State, u64> = serde_json::from_value(v).unwrap();
        assert_eq!(back, states);
        let job = serde_json::json!({"id": 1, "queue": "q", "kind": "k", "state": "ready",
            "submitted_at": 1, "deadline": 2, "max_attempts": 1, "payload": null, "attempts": []});
        let info: JobInfo = serde_json::from_value(job.clone()).unwrap();
        assert_eq!(info.payload, Some(serde_json::Value::Null));
        assert_eq!(serde_json::to_value(&info).unwrap(), job);
    }
}
