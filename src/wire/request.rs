//! Requests: one JSON object per line, `op` naming the operation (`docs/protocol.md`).
//!
//! The server parses a line in one pass of serde_json into a borrowed [`Request`]: strings
//! without escapes and the payload (kept as raw JSON text) are not copied until a job is built.
//! A client builds a [`Request`] and serializes it.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::{ErrorCode, Rejection, State};

/// Protocol version announced by `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Most jobs in one `submit_batch`.
pub const MAX_BATCH: usize = 10_000;

/// The fields of one job in `submit` or `submit_batch`. A client builds one with
/// [`Submit::new`] and its setters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit<'a> {
    /// Queue.
    #[serde(borrow)]
    pub queue: Cow<'a, str>,
    /// Kind.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// Payload (any JSON; `{}` when absent).
    #[serde(
        borrow,
        default,
        deserialize_with = "borrowed_raw",
        skip_serializing_if = "Option::is_none"
    )]
    pub payload: Option<Cow<'a, RawValue>>,
    /// Idempotency key.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Cow<'a, str>>,
    /// Deadline after becoming ready (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_in_ms: Option<u64>,
    /// Delay (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A payload borrowed from the request line (`Cow`'s own deserializer always copies).
fn borrowed_raw<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, RawValue>>, D::Error> {
    Option::<&'de RawValue>::deserialize(d).map(|p| p.map(Cow::Borrowed))
}

/// Whole milliseconds of `d` (saturating).
fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Submit<'static> {
    /// A job for `queue` and `kind`, with an empty object payload and the queue's defaults.
    pub fn new(queue: &str, kind: &str) -> Submit<'static> {
        Submit {
            queue: queue.to_string().into(),
            kind: kind.to_string().into(),
            payload: None,
            key: None,
            due_in_ms: None,
            delay_ms: None,
            max_attempts: None,
            timeout_ms: None,
        }
    }

    /// Sets the payload.
    pub fn payload(mut self, p: serde_json::Value) -> Submit<'static> {
        // A Value always serializes.
        let raw = serde_json::value::to_raw_value(&p).expect("JSON value");
        self.payload = Some(Cow::Owned(raw));
        self
    }

    /// Sets the idempotency key.
    pub fn key(mut self, key: &str) -> Submit<'static> {
        self.key = Some(key.to_string().into());
        self
    }
}

impl Submit<'_> {
    /// Sets the delay.
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = Some(ms);
        self
    }

    /// Sets the deadline (after the job becomes ready).
    pub fn due_in_ms(mut self, ms: u64) -> Self {
        self.due_in_ms = Some(ms);
        self
    }

    /// Sets the attempts allowed.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Runs no earlier than `d` from now.
    pub fn delay(self, d: std::time::Duration) -> Self {
        self.delay_ms(duration_ms(d))
    }

    /// Sets the deadline to `d` after the job becomes ready.
    pub fn due_in(self, d: std::time::Duration) -> Self {
        self.due_in_ms(duration_ms(d))
    }

    /// Sets the per-attempt timeout (at least 1 ms).
    pub fn timeout(self, d: std::time::Duration) -> Self {
        self.timeout_ms(duration_ms(d))
    }

    /// As the runtime takes it.
    pub fn spec(&self) -> JobSpec<'_> {
        JobSpec {
            queue: &self.queue,
            kind: &self.kind,
            payload: self.payload.as_deref().map(RawValue::get).unwrap_or("{}"),
            key: self.key.as_deref(),
            due_in_ms: self.due_in_ms,
            delay_ms: self.delay_ms,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
        }
    }
}

/// A job to submit, as the runtime takes it: the fields of the protocol's `submit`, with the
/// payload as JSON text ([`crate::Handle::submit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSpec<'a> {
    /// Queue name.
    pub queue: &'a str,
    /// Kind name.
    pub kind: &'a str,
    /// Payload as JSON text.
    pub payload: &'a str,
    /// Idempotency key.
    pub key: Option<&'a str>,
    /// Deadline relative to when the job becomes ready (default: the queue's `due_in`).
    pub due_in_ms: Option<u64>,
    /// Delay before the job becomes ready.
    pub delay_ms: Option<u64>,
    /// Attempts allowed (default: the queue's).
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (default: the queue's).
    pub timeout_ms: Option<u64>,
}

impl<'a> JobSpec<'a> {
    /// A job with defaults for everything but queue, kind and payload.
    pub fn new(queue: &'a str, kind: &'a str, payload: &'a str) -> JobSpec<'a> {
        JobSpec {
            queue,
            kind,
            payload,
            ..JobSpec::default()
        }
    }
}

/// One request.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request<'a> {
    /// `hello`: the protocol version; `client` names the client (free text, for the log).
    Hello {
        /// The client's name and version.
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<Cow<'a, str>>,
    },
    /// `submit`
    Submit(Submit<'a>),
    /// `submit_batch`: all or nothing.
    SubmitBatch {
        /// The jobs, 1 to [`MAX_BATCH`].
        jobs: Vec<Submit<'a>>,
    },
    /// `status`
    Status {
        /// Job id.
        id: u64,
    },
    /// `log`: a piece of an attempt's output.
    Log {
        /// Job id.
        id: u64,
        /// The attempt (default: the latest).
        #[serde(skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        /// From this offset in its output (default 0).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// `stats`
    Stats,
    /// `cancel`
    Cancel {
        /// Job id.
        id: u64,
    },
    /// `dead_list`
    DeadList {
        /// Only this queue.
        #[serde(skip_serializing_if = "Option::is_none")]
        queue: Option<Cow<'a, str>>,
        /// Only jobs dead since (ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// `dead_retry`: one job, or all (of a queue).
    DeadRetry(DeadSelect<'a>),
    /// `dead_purge`: one job, or all (of a queue, dead before a time).
    DeadPurge(DeadSelect<'a>),
    /// `checkpoint`: take a checkpoint now (sealing the current segment first).
    Checkpoint,
    /// `jobs`: jobs by submission time, newest first, from the catalog.
    Jobs(JobsQuery<'a>),
    /// `replay`: submit the finished jobs of a window again, duplicates discarded.
    Replay(ReplaySpec<'a>),
    /// `catalog_rebuild`: rebuild the catalog from the WAL and the archive.
    CatalogRebuild,
    /// `alerts`: the alert rules and their state.
    Alerts,
    /// `queue_set`: change a queue's settings while the daemon runs.
    QueueSet(QueueChange<'a>),
    /// `queue_pause`: hold a queue's jobs `ready` (for `for_ms`, or until resumed).
    QueuePause {
        /// The queue.
        queue: Cow<'a, str>,
        /// How long (ms); absent: until `queue_resume`.
        #[serde(skip_serializing_if = "Option::is_none")]
        for_ms: Option<u64>,
    },
    /// `queue_resume`: a paused queue's jobs start again.
    QueueResume {
        /// The queue.
        queue: Cow<'a, str>,
    },
}

/// A `queue_set` request: the settings to change (at least one, or `reset`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueChange<'a> {
    /// The queue.
    pub queue: Cow<'a, str>,
    /// `due_in` (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_in_ms: Option<u64>,
    /// `max_workers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u64>,
    /// `reserved`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
    /// `lend_limit` (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lend_limit_ms: Option<u64>,
    /// First put every setting back to the config file's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

/// Most jobs one `jobs` request lists.
pub const MAX_JOBS_LIMIT: usize = 10_000;
/// Jobs a `jobs` request lists without a `limit`.
pub const DEFAULT_JOBS_LIMIT: usize = 100;

/// A `jobs` request: which jobs (all filters optional; times in ms since the epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobsQuery<'a> {
    /// Only this queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Cow<'a, str>>,
    /// Only this kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Cow<'a, str>>,
    /// Only jobs in these states.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<State>,
    /// Submitted at or after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Submitted before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// At most this many (default [`DEFAULT_JOBS_LIMIT`], at most [`MAX_JOBS_LIMIT`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A `replay` request: the jobs submitted in `[since, until)` (ms since the epoch) that the
/// filters select.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySpec<'a> {
    /// Window start.
    pub since: u64,
    /// Window end (exclusive).
    pub until: u64,
    /// Only this queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Cow<'a, str>>,
    /// Only this kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Cow<'a, str>>,
    /// Only jobs in these states (default: all; live ones are skipped anyway).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<State>,
    /// Say what would happen; write nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Which dead jobs a `dead_retry` or `dead_purge` is about: one by `id`, or `all` (with filters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeadSelect<'a> {
    /// One job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// All dead jobs (with the filters).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Only this queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Cow<'a, str>>,
    /// Only jobs dead before this time (ms; `dead_purge`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

impl DeadSelect<'_> {
    /// Checks the selection's rules for `dead_retry` (`retry`) or `dead_purge`: either an `id` or
    /// `all`, and `queue` and `before` only with `all` (`before` only for a purge).
    pub fn check(&self, retry: bool) -> Result<(), Rejection> {
        if self.id.is_some() == self.all {
            return Err(Rejection::new(
                ErrorCode::BadRequest,
                "give either \"id\" or \"all\": true",
            ));
        }
        if self.id.is_some() && (self.queue.is_some() || self.before.is_some()) {
            return Err(Rejection::new(
                ErrorCode::BadRequest,
                "\"queue\" and \"before\" go with \"all\": true",
            ));
        }
        if retry && self.before.is_some() {
            return Err(Rejection::new(
                ErrorCode::BadRequest,
                "field `before` does not go with op \"dead_retry\"",
            ));
        }
        Ok(())
    }

    /// One job.
    pub fn one(id: u64) -> DeadSelect<'static> {
        DeadSelect {
            id: Some(id),
            ..DeadSelect::default()
        }
    }

    /// Every dead job, of one queue if given.
    pub fn all(queue: Option<&str>) -> DeadSelect<'_> {
        DeadSelect {
            all: true,
            queue: queue.map(Cow::Borrowed),
            ..DeadSelect::default()
        }
    }
}

/// Every field any op takes. A line is parsed once, into this; then the op's own rules apply
/// (which fields it takes, which it needs). Unknown fields are an error, so a typo is never
/// silently a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    queue: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(default)]
    due_in_ms: Option<u64>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(borrow, default)]
    jobs: Option<Vec<Submit<'a>>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    all: Option<bool>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    until: Option<u64>,
    #[serde(default)]
    states: Option<Vec<State>>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default)]
    max_workers: Option<u64>,
    #[serde(default)]
    reserved: Option<u64>,
    #[serde(default)]
    lend_limit_ms: Option<u64>,
    #[serde(default)]
    reset: Option<bool>,
    #[serde(default)]
    for_ms: Option<u64>,
    #[serde(borrow, default)]
    client: Option<&'a RawValue>,
}

impl Wire<'_> {
    /// Names of the fields present, besides `op`.
    fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("queue", self.queue.is_some()),
            ("kind", self.kind.is_some()),
            ("payload", self.payload.is_some()),
            ("key", self.key.is_some()),
            ("due_in_ms", self.due_in_ms.is_some()),
            ("delay_ms", self.delay_ms.is_some()),
            ("max_attempts", self.max_attempts.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("jobs", self.jobs.is_some()),
            ("id", self.id.is_some()),
            ("attempt", self.attempt.is_some()),
            ("offset", self.offset.is_some()),
            ("all", self.all.is_some()),
            ("since", self.since.is_some()),
            ("before", self.before.is_some()),
            ("until", self.until.is_some()),
            ("states", self.states.is_some()),
            ("limit", self.limit.is_some()),
            ("dry_run", self.dry_run.is_some()),
            ("max_workers", self.max_workers.is_some()),
            ("reserved", self.reserved.is_some()),
            ("lend_limit_ms", self.lend_limit_ms.is_some()),
            ("reset", self.reset.is_some()),
            ("for_ms", self.for_ms.is_some()),
            ("client", self.client.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, here)| here.then_some(name))
    }

    /// Refuses fields the op does not take.
    fn only(&self, allowed: &[&str]) -> Result<(), Rejection> {
        match self.present().find(|f| !allowed.contains(f)) {
            Some(f) => Err(Rejection::new(
                ErrorCode::BadRequest,
                format!("field `{f}` does not go with op {:?}", self.op),
            )),
            None => Ok(()),
        }
    }
}

fn missing(field: &str) -> Rejection {
    Rejection::new(ErrorCode::BadRequest, format!("missing field `{field}`"))
}

/// Every op, for the error about an unknown one.
const OPS: &str = "hello, submit, submit_batch, status, log, stats, cancel, dead_list, \
                   dead_retry, dead_purge, checkpoint, jobs, replay, catalog_rebuild, alerts, \
                   queue_set, queue_pause, queue_resume";

const SUBMIT_FIELDS: &[&str] = &[
    "queue",
    "kind",
    "payload",
    "key",
    "due_in_ms",
    "delay_ms",
    "max_attempts",
    "timeout_ms",
];

fn json_error(e: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    let code = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ErrorCode::InvalidJson,
        Category::Data => ErrorCode::BadRequest,
    };
    Rejection::new(code, e.to_string())
}

impl<'a> Request<'a> {
    /// Parses one line (without its newline).
    pub fn parse(line: &'a [u8]) -> Result<Request<'a>, Rejection> {
        let w: Wire<'a> = serde_json::from_slice(line).map_err(json_error)?;
        match &*w.op {
            "hello" => {
                w.only(&["client"])?;
                // Free text for the log; any JSON is accepted, a string is kept.
                let client = w
                    .client
                    .and_then(|c| serde_json::from_str::<String>(c.get()).ok());
                Ok(Request::Hello {
                    client: client.map(Cow::Owned),
                })
            }
            "stats" => {
                w.only(&["client"])?;
                Ok(Request::Stats)
            }
            "checkpoint" => {
                w.only(&[])?;
                Ok(Request::Checkpoint)
            }
            "catalog_rebuild" => {
                w.only(&[])?;
                Ok(Request::CatalogRebuild)
            }
            "alerts" => {
                w.only(&[])?;
                Ok(Request::Alerts)
            }
            "queue_set" => {
                w.only(&[
                    "queue",
                    "due_in_ms",
                    "max_workers",
                    "reserved",
                    "lend_limit_ms",
                    "reset",
                ])?;
                Ok(Request::QueueSet(QueueChange {
                    queue: w.queue.ok_or_else(|| missing("queue"))?,
                    due_in_ms: w.due_in_ms,
                    max_workers: w.max_workers,
                    reserved: w.reserved,
                    lend_limit_ms: w.lend_limit_ms,
                    reset: w.reset.unwrap_or(false),
                }))
            }
            "queue_pause" => {
                w.only(&["queue", "for_ms"])?;
                Ok(Request::QueuePause {
                    queue: w.queue.ok_or_else(|| missing("queue"))?,
                    for_ms: w.for_ms,
                })
            }
            "queue_resume" => {
                w.only(&["queue"])?;
                Ok(Request::QueueResume {
                    queue: w.queue.ok_or_else(|| missing("queue"))?,
                })
            }
            "jobs" => {
                w.only(&["queue", "kind", "states", "since", "until", "limit"])?;
                if let Some(l) = w.limit.filter(|l| *l == 0 || *l > MAX_JOBS_LIMIT) {
                    return Err(Rejection::new(
                        ErrorCode::BadRequest,
                        format!("limit must be 1 to {MAX_JOBS_LIMIT}, not {l}"),
                    ));
                }
                Ok(Request::Jobs(JobsQuery {
                    queue: w.queue,
                    kind: w.kind,
                    states: w.states.unwrap_or_default(),
                    since: w.since,
                    until: w.until,
                    limit: w.limit,
                }))
            }
            "replay" => {
                w.only(&["queue", "kind", "states", "since", "until", "dry_run"])?;
                let since = w.since.ok_or_else(|| missing("since"))?;
                let until = w.until.ok_or_else(|| missing("until"))?;
                if since >= until {
                    return Err(Rejection::new(
                        ErrorCode::BadRequest,
                        format!("since ({since}) must be before until ({until})"),
                    ));
                }
                Ok(Request::Replay(ReplaySpec {
                    since,
                    until,
                    queue: w.queue,
                    kind: w.kind,
                    states: w.states.unwrap_or_default(),
                    dry_run: w.dry_run.unwrap_or(false),
                }))
            }
            "log" => {
                w.only(&["id", "attempt", "offset"])?;
                let id = w.id.ok_or_else(|| missing("id"))?;
                if w.attempt == Some(0) {
                    return Err(Rejection::new(
                        ErrorCode::BadRequest,
                        "attempt numbers start at 1",
                    ));
                }
                Ok(Request::Log {
                    id,
                    attempt: w.attempt,
                    offset: w.offset,
                })
            }
            "status" | "cancel" => {
                w.only(&["id"])?;
                let id = w.id.ok_or_else(|| missing("id"))?;
                Ok(if w.op == "status" {
                    Request::Status { id }
                } else {
                    Request::Cancel { id }
                })
            }
            "submit" => {
                w.only(SUBMIT_FIELDS)?;
                Ok(Request::Submit(Submit {
                    queue: w.queue.ok_or_else(|| missing("queue"))?,
                    kind: w.kind.ok_or_else(|| missing("kind"))?,
                    payload: w.payload.map(Cow::Borrowed),
                    key: w.key,
                    due_in_ms: w.due_in_ms,
                    delay_ms: w.delay_ms,
                    max_attempts: w.max_attempts,
                    timeout_ms: w.timeout_ms,
                }))
            }
            "submit_batch" => {
                w.only(&["jobs"])?;
                let jobs = w.jobs.ok_or_else(|| missing("jobs"))?;
                if jobs.is_empty() || jobs.len() > MAX_BATCH {
                    return Err(Rejection::new(
                        ErrorCode::BadRequest,
                        format!("jobs must hold 1 to {MAX_BATCH} jobs, not {}", jobs.len()),
                    ));
                }
                Ok(Request::SubmitBatch { jobs })
            }
            "dead_list" => {
                w.only(&["queue", "since"])?;
                Ok(Request::DeadList {
                    queue: w.queue,
                    since: w.since,
                })
            }
            "dead_retry" | "dead_purge" => {
                let retry = w.op == "dead_retry";
                w.only(if retry {
                    &["id", "all", "queue"]
                } else {
                    &["id", "all", "queue", "before"]
                })?;
                let all = w.all.unwrap_or(false);
                let sel = DeadSelect {
                    id: w.id,
                    all,
                    queue: w.queue,
                    before: w.before,
                };
                sel.check(retry)?;
                Ok(if retry {
                    Request::DeadRetry(sel)
                } else {
                    Request::DeadPurge(sel)
                })
            }
            other => Err(Rejection::new(
                ErrorCode::UnknownOp,
                format!("unknown op {other:?} ({OPS})"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(line: &str) -> ErrorCode {
        Request::parse(line.as_bytes()).unwrap_err().code
    }

    #[test]
    fn the_submit_builder_sets_every_option_as_the_protocol_names_it() {
        use std::time::Duration;
        let s = Submit::new("bulk", "exec")
            .payload(serde_json::json!({"argv": ["true"]}))
            .key("k-1")
            .max_attempts(5)
            .timeout(Duration::from_millis(1500))
            .delay(Duration::from_secs(10))
            .due_in(Duration::from_secs(3600));
        let v = serde_json::to_value(Request::Submit(s)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "submit", "queue": "bulk", "kind": "exec",
                "payload": {"argv": ["true"]}, "key": "k-1", "max_attempts": 5,
                "timeout_ms": 1500, "delay_ms": 10000, "due_in_ms": 3600000})
        );
        // What it sends parses back as the same request.
        let line = serde_json::to_vec(&v).unwrap();
        let Ok(Request::Submit(back)) = Request::parse(&line) else {
            panic!("parses")
        };
        assert_eq!(back.timeout_ms, Some(1500));
        assert_eq!(back.key.as_deref(), Some("k-1"));
    }

    #[test]
    fn parses_each_op() {
        assert!(matches!(
            Request::parse(br#"{"op":"hello"}"#),
            Ok(Request::Hello { client: None })
        ));
        assert!(matches!(
            Request::parse(br#"{"op":"status","id":7}"#),
            Ok(Request::Status { id: 7 })
        ));
        let Ok(Request::Submit(s)) = Request::parse(
            br#"{"op":"submit","queue":"bulk","kind":"sleep","payload":{"ms":5},"delay_ms":10}"#,
        ) else {
            panic!("submit")
        };
        assert_eq!(s.spec().payload, r#"{"ms":5}"#);
        assert_eq!(s.delay_ms, Some(10));
        let Ok(Request::SubmitBatch { jobs: b }) =
            Request::parse(br#"{"op":"submit_batch","jobs":[{"queue":"a","kind":"noop"},{"queue":"b","kind":"noop"}]}"#)
        else {
            panic!("batch")
        };
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].spec().payload, "{}");
    }

    #[test]
    fn errors_have_specific_codes() {
        assert_eq!(code_of("not json"), ErrorCode::InvalidJson);
        assert_eq!(code_of("{\"op\":"), ErrorCode::InvalidJson);
        assert_eq!(code_of("\u{1}\u{2}garbage"), ErrorCode::InvalidJson);
        assert_eq!(code_of(r#"{"op":"fly"}"#), ErrorCode::UnknownOp);
        assert_eq!(code_of(r#"{"id":1}"#), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"{"op":"status","id":"seven"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code_of(r#"{"op":"status","id":-1}"#), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"{"op":"submit","queue":"q"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"op":"submit","queue":"q","kind":"k","dealy_ms":5}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"op":"submit_batch","jobs":[]}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code_of(r#"[1,2]"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"op":"dead_retry"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"{"op":"dead_retry","id":1,"all":true}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"op":"dead_retry","all":true,"before":5}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"op":"dead_purge","id":1,"queue":"q"}"#),
            ErrorCode::BadRequest
        );
        assert!(matches!(
            Request::parse(br#"{"op":"dead_purge","all":true,"before":5}"#),
            Ok(Request::DeadPurge(_))
        ));
        assert!(matches!(
            Request::parse(br#"{"op":"dead_list","queue":"bulk"}"#),
            Ok(Request::DeadList { .. })
        ));
        let msg = Request::parse(br#"{"op":"status","id":"x"}"#)
            .unwrap_err()
            .message;
        assert!(msg.contains("invalid type"), "{msg}");
    }

    proptest::proptest! {
        #[test]
        fn garbage_lines_get_an_error_not_a_panic(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Err(e) = Request::parse(&line) {
                proptest::prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn mangled_requests_never_panic(cut in 0usize..120, flip in 0usize..120, byte in proptest::prelude::any::<u8>()) {
            let mut line = br#"{"op":"submit_batch","jobs":[{"queue":"bulk","kind":"noop","payload":{"a":[1,2,{"b":null}]},"delay_ms":5}]}"#.to_vec();
            let flip = flip % line.len();
            line[flip] = byte;
            line.truncate(cut.max(1).min(line.len()));
            let _ = Request::parse(&line);
        }
    }

    #[test]
    fn fields_must_belong_to_their_op() {
        let e = Request::parse(br#"{"op":"status","id":1,"queue":"bulk"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::BadRequest,
                "field `queue` does not go with op \"status\""
            )
        );
        assert_eq!(
            code_of(r#"{"op":"submit_batch","jobs":[{"queue":"a","kind":"noop"}],"queue":"a"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"op":"dead_list","id":3}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code_of(r#"{"op":"cancel"}"#), ErrorCode::BadRequest);
        assert_eq!(
            Request::parse(br#"{"op":"cancel"}"#).unwrap_err().message,
            "missing field `id`"
        );
        assert!(matches!(
            Request::parse(br#"{"op":"hello","client":"my-app 1.2"}"#),
            Ok(Request::Hello { client: Some(c) }) if c == "my-app 1.2"
        ));
        assert!(matches!(
            Request::parse(br#"{"op":"hello","client":{"any":"json"}}"#),
            Ok(Request::Hello { client: None })
        ));
        assert!(matches!(
            Request::parse(br#"{"op":"dead_retry","all":true,"queue":"bulk"}"#),
            Ok(Request::DeadRetry(_))
        ));
    }

    #[test]
    fn requests_a_client_builds_parse_back_the_same() {
        let requests = [
            Request::Hello {
                client: Some("duejob 0.1".into()),
            },
            Request::Hello { client: None },
            Request::Submit(
                Submit::new("bulk", "noop")
                    .payload(serde_json::json!({"a": [1, {"b": null}]}))
                    .key("k-1")
                    .delay_ms(5)
                    .due_in_ms(6)
                    .max_attempts(2)
                    .timeout_ms(7),
            ),
            Request::SubmitBatch {
                jobs: vec![Submit::new("a", "noop"), Submit::new("b", "sleep")],
            },
            Request::Status { id: 3 },
            Request::Stats,
            Request::Cancel { id: 4 },
            Request::DeadList {
                queue: Some("q".into()),
                since: Some(9),
            },
            Request::DeadList {
                queue: None,
                since: None,
            },
            Request::DeadRetry(DeadSelect::one(5)),
            Request::DeadRetry(DeadSelect::all(Some("bulk"))),
            Request::DeadPurge(DeadSelect {
                before: Some(7),
                ..DeadSelect::all(None)
            }),
            Request::Alerts,
            Request::QueueSet(QueueChange {
                queue: "bulk".into(),
                max_workers: Some(2),
                due_in_ms: Some(60_000),
                ..QueueChange::default()
            }),
            Request::QueueSet(QueueChange {
                queue: "bulk".into(),
                reset: true,
                ..QueueChange::default()
            }),
            Request::QueuePause {
                queue: "bulk".into(),
                for_ms: Some(1000),
            },
            Request::QueuePause {
                queue: "bulk".into(),
                for_ms: None,
            },
            Request::QueueResume {
                queue: "bulk".into(),
            },
        ];
        for r in &requests {
            let line = serde_json::to_string(r).unwrap();
            let parsed = Request::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(serde_json::to_string(&parsed).unwrap(), line);
        }
    }
}
