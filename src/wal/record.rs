//! WAL record bodies: one struct per record type, encoded with bincode 1.3.3.
//!
//! The writer encodes with [`encode_body`]; the one reader decodes with [`Record::decode`].
//! Each type has a schema version (today all 1); a future change adds a new schema number and
//! keeps decoding the old one.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Record type numbers (byte 8 of the record header).
pub mod rtype {
    /// A job was accepted.
    pub const SUBMIT: u8 = 1;
    /// An attempt started.
    pub const START: u8 = 2;
    /// An attempt ended.
    pub const FINISH: u8 = 3;
    /// A job was cancelled.
    pub const CANCEL: u8 = 4;
    /// An attempt failed and the job waits for its retry.
    pub const RETRY: u8 = 5;
    /// A dead job was put back with fresh attempts (`dead retry`).
    pub const REVIVE: u8 = 6;
    /// A dead job was removed from the dead letters (`dead purge`).
    pub const PURGE: u8 = 7;
    /// A sync mark: every record up to an LSN was durable before this one was written.
    pub const SYNC: u8 = 8;
    /// A replay (`duejob replay`) and what it did: about the log's jobs, not one job.
    pub const REPLAY: u8 = 9;
    /// A queue's live settings after an operator's change (`duejob queue set|pause|resume`).
    pub const QUEUE: u8 = 10;
    /// The highest type number this build knows.
    pub const MAX: u8 = QUEUE;
}

/// The schema version this build writes for every type.
pub const SCHEMA: u8 = 1;

/// State numbers stored in [`Finish::state`].
pub mod state_code {
    /// The job succeeded.
    pub const SUCCEEDED: u8 = 4;
    /// The job is dead.
    pub const DEAD: u8 = 5;
}

/// Body of a `submit` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit<'a> {
    /// Job id.
    pub id: u64,
    /// Queue name.
    #[serde(borrow)]
    pub queue: Cow<'a, str>,
    /// Kind name.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// Payload, as JSON text.
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
    /// Idempotency key.
    #[serde(borrow)]
    pub key: Option<Cow<'a, str>>,
    /// Acceptance time (ms since the epoch).
    pub submitted_at: u64,
    /// Deadline (ms since the epoch).
    pub deadline: u64,
    /// Earliest start for delayed jobs.
    pub run_at: Option<u64>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
}

/// Body of a `start` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    /// Job id.
    pub id: u64,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Start time (ms).
    pub at: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The handler reported success.
    Succeeded,
    /// The attempt failed.
    Failed {
        /// Human-readable reason (exit status, timeout, panic message, handler error).
        reason: String,
        /// Exit code of an exec job, when it exited normally.
        exit_code: Option<i32>,
        /// Last bytes of stdout and stderr.
        output_tail: String,
    },
    /// The attempt passed its timeout.
    TimedOut {
        /// What happened (e.g. "timed out after 200 ms; process group killed").
        reason: String,
        /// Last bytes of stdout and stderr.
        output_tail: String,
    },
}

/// Body of a `finish` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    /// Job id.
    pub id: u64,
    /// Attempt that ended.
    pub attempt: u32,
    /// End time (ms).
    pub at: u64,
    /// State the job entered ([`state_code`]).
    pub state: u8,
    /// What happened.
    pub outcome: Outcome,
}

/// Body of a `cancel` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// Job id.
    pub id: u64,
    /// Time (ms).
    pub at: u64,
}

/// Body of a `retry` record: attempt `attempt` failed; the job runs again at `retry_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Job id.
    pub id: u64,
    /// Attempt that failed.
    pub attempt: u32,
    /// Time of the failure (ms).
    pub at: u64,
    /// When the job becomes ready again (ms).
    pub retry_at: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// Body of a `revive` or `purge` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Job id.
    pub id: u64,
    /// Time (ms).
    pub at: u64,
}

/// Body of a `sync` record (a sync mark): every record with an LSN up to `synced_lsn` had been
/// made durable (fdatasync returned) before this record was written. Recovery uses it to tell a
/// write that a crash cut short (after the last sync) from damage to synced data
/// (`docs/wal-format.md`, "What recovery assumes about the disk").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMark {
    /// Every record with an LSN up to this one was durable.
    pub synced_lsn: u64,
    /// When the mark was written (ms).
    pub at: u64,
}

/// Body of a `replay` record: a replay that enqueued jobs (a dry run writes nothing). Written
/// after the new jobs' `submit` records, each of which carries the key `replay:ID` of the job it
/// replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay<'a> {
    /// When it ran (ms).
    pub at: u64,
    /// The window: jobs submitted at or after (ms)...
    pub since: u64,
    /// ... and before (ms).
    pub until: u64,
    /// Only this queue.
    #[serde(borrow)]
    pub queue: Option<Cow<'a, str>>,
    /// Only this kind.
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
    /// Only these states (state numbers, 0 scheduled .. 6 cancelled; empty: all).
    pub states: Vec<u8>,
    /// Jobs of the window the filters selected.
    pub selected: u64,
    /// New jobs enqueued.
    pub enqueued: u64,
    /// Skipped: still live.
    pub skipped_live: u64,
    /// Skipped: replayed before.
    pub skipped_duplicate: u64,
    /// Skipped: the payload's record is gone (past archive retention).
    pub skipped_unavailable: u64,
    /// The first and last new job ids (0 if none).
    pub first_id: u64,
    /// See `first_id`.
    pub last_id: u64,
}

/// Body of a `queue` record: one queue's settings as the operator left them after a change
/// (`duejob queue set`, `pause`, `resume`). Each field overrides the config file's value until
/// changed again (`None`: the file's); the latest record of a queue wins, and checkpoints carry
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings<'a> {
    /// When it was changed (ms).
    pub at: u64,
    /// The queue.
    #[serde(borrow)]
    pub queue: Cow<'a, str>,
    /// `due_in` (ms).
    pub due_in_ms: Option<u64>,
    /// `max_workers`.
    pub max_workers: Option<u32>,
    /// `reserved`.
    pub reserved: Option<u32>,
    /// `lend_limit` (ms).
    pub lend_limit_ms: Option<u64>,
    /// Paused until then (ms; `u64::MAX`: until resumed); `None`: not paused.
    pub paused_until: Option<u64>,
}

impl QueueSettings<'_> {
    /// A copy that borrows nothing.
    pub fn into_owned(self) -> QueueSettings<'static> {
        QueueSettings {
            queue: Cow::Owned(self.queue.into_owned()),
            ..self
        }
    }
}

/// Encoded size of a [`SyncMark`] body.
pub const SYNC_MARK_LEN: u32 = 16;

/// A decoded record body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// `submit`
    Submit(Submit<'a>),
    /// `start`
    Start(Start),
    /// `finish`
    Finish(Finish),
    /// `cancel`
    Cancel(Cancel),
    /// `retry`
    Retry(Retry),
    /// `revive`
    Revive(JobEvent),
    /// `purge`
    Purge(JobEvent),
    /// `sync`: a sync mark (about the log, not about a job)
    Sync(SyncMark),
    /// `replay`: a replay ran (about many jobs)
    Replay(Replay<'a>),
    /// `queue`: a queue's live settings changed
    Queue(QueueSettings<'a>),
}

/// Why a body did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeProblem {
    /// Type or schema this build does not know (written by a newer version).
    Unknown {
        /// Record type.
        rtype: u8,
        /// Schema version.
        schema: u8,
    },
    /// The bytes are not a valid body of that type.
    Invalid(String),
}

fn decode_exact<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeProblem> {
    use bincode::Options;
    // Same encoding as bincode::serialize (fixint, little-endian), but trailing bytes are an error
    // and a length prefix can never make it allocate more than the body holds.
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(body.len() as u64)
        .deserialize(body)
        .map_err(|e| DecodeProblem::Invalid(e.to_string()))
}

impl<'a> Record<'a> {
    /// Decodes a body of the given type and schema.
    pub fn decode(rtype: u8, schema: u8, body: &'a [u8]) -> Result<Record<'a>, DecodeProblem> {
        if schema != SCHEMA {
            return Err(DecodeProblem::Unknown { rtype, schema });
        }
        match rtype {
            rtype::SUBMIT => decode_exact(body).map(Record::Submit),
            rtype::START => decode_exact(body).map(Record::Start),
            rtype::FINISH => decode_exact(body).map(Record::Finish),
            rtype::CANCEL => decode_exact(body).map(Record::Cancel),
            rtype::RETRY => decode_exact(body).map(Record::Retry),
            rtype::REVIVE => decode_exact(body).map(Record::Revive),
            rtype::PURGE => decode_exact(body).map(Record::Purge),
            rtype::SYNC => decode_exact(body).map(Record::Sync),
            rtype::REPLAY => decode_exact(body).map(Record::Replay),
            rtype::QUEUE => decode_exact(body).map(Record::Queue),
            _ => Err(DecodeProblem::Unknown { rtype, schema }),
        }
    }

    /// The record type number.
    pub fn rtype(&self) -> u8 {
        match self {
            Record::Submit(_) => rtype::SUBMIT,
            Record::Start(_) => rtype::START,
            Record::Finish(_) => rtype::FINISH,
            Record::Cancel(_) => rtype::CANCEL,
            Record::Retry(_) => rtype::RETRY,
            Record::Revive(_) => rtype::REVIVE,
            Record::Purge(_) => rtype::PURGE,
            Record::Sync(_) => rtype::SYNC,
            Record::Replay(_) => rtype::REPLAY,
            Record::Queue(_) => rtype::QUEUE,
        }
    }

    /// The job the record is about (`None` for a sync mark).
    pub fn job_id(&self) -> Option<u64> {
        match self {
            Record::Submit(s) => Some(s.id),
            Record::Start(s) => Some(s.id),
            Record::Finish(f) => Some(f.id),
            Record::Cancel(c) => Some(c.id),
            Record::Retry(r) => Some(r.id),
            Record::Revive(e) | Record::Purge(e) => Some(e.id),
            Record::Sync(_) | Record::Replay(_) | Record::Queue(_) => None,
        }
    }

    /// The record's time (ms since the epoch).
    pub fn time(&self) -> u64 {
        match self {
            Record::Submit(s) => s.submitted_at,
            Record::Start(s) => s.at,
            Record::Finish(f) => f.at,
            Record::Cancel(c) => c.at,
            Record::Retry(r) => r.at,
            Record::Revive(e) | Record::Purge(e) => e.at,
            Record::Sync(m) => m.at,
            Record::Replay(r) => r.at,
            Record::Queue(q) => q.at,
        }
    }

    /// Type name as used by the tools.
    pub fn type_name(&self) -> &'static str {
        type_name(self.rtype())
    }

    /// A copy that borrows nothing.
    pub fn into_owned(self) -> Record<'static> {
        match self {
            Record::Submit(s) => Record::Submit(Submit {
                id: s.id,
                queue: s.queue.into_owned().into(),
                kind: s.kind.into_owned().into(),
                payload: s.payload.into_owned().into(),
                key: s.key.map(|k| k.into_owned().into()),
                submitted_at: s.submitted_at,
                deadline: s.deadline,
                run_at: s.run_at,
                max_attempts: s.max_attempts,
                timeout_ms: s.timeout_ms,
            }),
            Record::Start(s) => Record::Start(s),
            Record::Finish(f) => Record::Finish(f),
            Record::Cancel(c) => Record::Cancel(c),
            Record::Retry(r) => Record::Retry(r),
            Record::Revive(e) => Record::Revive(e),
            Record::Purge(e) => Record::Purge(e),
            Record::Sync(m) => Record::Sync(m),
            Record::Replay(r) => Record::Replay(Replay {
                queue: r.queue.map(|q| q.into_owned().into()),
                kind: r.kind.map(|k| k.into_owned().into()),
                states: r.states,
                ..r
            }),
            Record::Queue(q) => Record::Queue(q.into_owned()),
        }
    }

    /// Appends the encoded body to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Record::Submit(s) => encode_body(out, s),
            Record::Start(s) => encode_body(out, s),
            Record::Finish(f) => encode_body(out, f),
            Record::Cancel(c) => encode_body(out, c),
            Record::Retry(r) => encode_body(out, r),
            Record::Revive(e) | Record::Purge(e) => encode_body(out, e),
            Record::Sync(m) => encode_body(out, m),
            Record::Replay(r) => encode_body(out, r),
            Record::Queue(q) => encode_body(out, q),
        }
    }
}

/// Name of a record type number.
pub fn type_name(rtype: u8) -> &'static str {
    match rtype {
        rtype::SUBMIT => "submit",
        rtype::START => "start",
        rtype::FINISH => "finish",
        rtype::CANCEL => "cancel",
        rtype::RETRY => "retry",
        rtype::REVIVE => "revive",
        rtype::PURGE => "purge",
        rtype::SYNC => "sync",
        rtype::REPLAY => "replay",
        rtype::QUEUE => "queue",
        _ => "unknown",
    }
}

/// Appends the bincode 1.3.3 encoding of `v` to `out`.
pub fn encode_body<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    // Serializing plain structs into a Vec cannot fail.
    bincode::serialize_into(out, v).expect("bincode into Vec");
}

/// Records for the crate's unit tests (recovery's, the census's): a `submit` of a `noop` job
/// with attempt budget 1, and a `finish` of one of its attempts.
#[cfg(test)]
pub(crate) mod sample {
    use super::{Finish, Outcome, Record, Submit};

    /// A `submit` of job `id` into `queue`.
    pub(crate) fn submit(id: u64, queue: &'static str) -> Record<'static> {
        Record::Submit(Submit {
            id,
            queue: queue.into(),
            kind: "noop".into(),
            payload: "{}".into(),
            key: None,
            submitted_at: 1,
            deadline: 2,
            run_at: None,
            max_attempts: 1,
            timeout_ms: None,
        })
    }

    /// A `finish` of attempt `attempt` of job `id`, ending it in `state` (a `state_code`).
    pub(crate) fn finish(id: u64, attempt: u32, state: u8) -> Record<'static> {
        Record::Finish(Finish {
            id,
            attempt,
            at: 9,
            state,
            outcome: Outcome::Succeeded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Succeeded),
            (".{0,40}", proptest::option::of(any::<i32>()), ".{0,40}").prop_map(
                |(reason, exit_code, output_tail)| Outcome::Failed {
                    reason,
                    exit_code,
                    output_tail
                }
            ),
            (".{0,40}", ".{0,40}").prop_map(|(reason, output_tail)| Outcome::TimedOut {
                reason,
                output_tail
            }),
        ]
    }

    proptest! {
        #[test]
        fn submit_round_trips(id in any::<u64>(), q in "[a-z]{1,12}", k in "[a-z]{1,8}",
                              payload in ".{0,200}", key in proptest::option::of(".{0,30}"),
                              t in any::<u64>(), d in any::<u64>(), r in proptest::option::of(any::<u64>()),
                              m in any::<u32>(), to in proptest::option::of(any::<u64>())) {
            let rec = Record::Submit(Submit { id, queue: q.into(), kind: k.into(), payload: payload.into(),
                key: key.map(Into::into), submitted_at: t, deadline: d, run_at: r, max_attempts: m, timeout_ms: to });
            let mut buf = Vec::new();
            rec.encode_into(&mut buf);
            prop_assert_eq!(Record::decode(rtype::SUBMIT, SCHEMA, &buf).unwrap(), rec);
        }

        #[test]
        fn finish_round_trips(id in any::<u64>(), a in any::<u32>(), at in any::<u64>(), st in any::<u8>(), o in arb_outcome()) {
            let rec = Record::Finish(Finish { id, attempt: a, at, state: st, outcome: o });
            let mut buf = Vec::new();
            rec.encode_into(&mut buf);
            prop_assert_eq!(Record::decode(rtype::FINISH, SCHEMA, &buf).unwrap(), rec);
        }

        #[test]
        fn retry_round_trips(id in any::<u64>(), a in any::<u32>(), at in any::<u64>(), r in any::<u64>(), o in arb_outcome()) {
            let rec = Record::Retry(Retry { id, attempt: a, at, retry_at: r, outcome: o });
            let mut buf = Vec::new();
            rec.encode_into(&mut buf);
            prop_assert_eq!(Record::decode(rtype::RETRY, SCHEMA, &buf).unwrap(), rec);
        }

        #[test]
        fn garbage_never_panics(t in 0u8..10, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Record::decode(t, SCHEMA, &body);
        }
    }

    #[test]
    fn start_layout_matches_the_doc() {
        let mut buf = Vec::new();
        Record::Start(Start {
            id: 7,
            attempt: 1,
            at: 1_700_000_000_000,
        })
        .encode_into(&mut buf);
        assert_eq!(
            buf,
            [7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x00, 0x68, 0xE5, 0xCF, 0x8B, 0x01, 0, 0]
        );
    }

    #[test]
    fn sync_mark_has_its_fixed_size() {
        let mut buf = Vec::new();
        Record::Sync(SyncMark {
            synced_lsn: 41,
            at: 1_700_000_000_000,
        })
        .encode_into(&mut buf);
        assert_eq!(buf.len(), SYNC_MARK_LEN as usize);
        assert_eq!(
            Record::decode(rtype::SYNC, SCHEMA, &buf).unwrap(),
            Record::Sync(SyncMark {
                synced_lsn: 41,
                at: 1_700_000_000_000
            })
        );
    }

    #[test]
    fn trailing_bytes_and_unknown_types_are_rejected() {
        let mut buf = Vec::new();
        Record::Cancel(Cancel { id: 1, at: 2 }).encode_into(&mut buf);
        buf.push(0);
        assert!(matches!(
            Record::decode(rtype::CANCEL, SCHEMA, &buf),
            Err(DecodeProblem::Invalid(_))
        ));
        assert_eq!(
            Record::decode(rtype::MAX + 1, SCHEMA, &buf),
            Err(DecodeProblem::Unknown {
                rtype: rtype::MAX + 1,
                schema: 1
            })
        );
        assert_eq!(
            Record::decode(1, 2, &buf),
            Err(DecodeProblem::Unknown {
                rtype: 1,
                schema: 2
            })
        );
    }
}
