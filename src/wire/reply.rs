//! Replies: one JSON object per line, `"ok": true` with the op's fields, or `"ok": false` with an
//! `error` (`docs/protocol.md`). The server writes them with the `write_*` functions (the ones
//! on the submit path format by hand, without serde); a client reads them into the structs here.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{ErrorCode, JobInfo, Rejection, State};

/// `hello`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version ([`super::PROTOCOL_VERSION`]).
    pub protocol: u32,
    /// The daemon's name and version.
    pub server: String,
    /// The WAL's sync mode.
    pub sync: String,
}

/// `submit`'s reply: the job is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// Job id (for a duplicate key: the first job's id).
    pub id: u64,
    /// LSN of its WAL record (for a duplicate: the first job's).
    pub lsn: u64,
    /// Whether the key was already known, so nothing was enqueued.
    #[serde(default)]
    pub duplicate: bool,
}

/// `submit_batch`'s reply: every job is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSubmitted {
    /// Ids in request order (a duplicate's is the first job's).
    pub ids: Vec<u64>,
    /// LSN of the first record written.
    pub lsn: u64,
    /// Indexes (in `ids`) of the jobs whose keys were already known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<u32>,
}

/// `jobs`' reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// The jobs, newest first.
    pub jobs: Vec<JobInfo>,
    /// Whether more jobs matched than the limit.
    pub more: bool,
}

/// The reply of `queue_set`, `queue_pause` and `queue_resume`: the queue's settings now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The queue.
    pub queue: String,
    /// `due_in` (ms).
    pub due_in_ms: u64,
    /// `max_workers`.
    pub max_workers: usize,
    /// `reserved`.
    pub reserved: usize,
    /// `lend_limit` (ms).
    pub lend_limit_ms: u64,
    /// Whether it is paused.
    pub paused: bool,
    /// Paused until then (ms; 18446744073709551615: until resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<u64>,
    /// The settings that override the config file's.
    pub overridden: Vec<String>,
}

/// `alerts`' reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertList {
    /// Every rule instance, firing ones first.
    pub alerts: Vec<crate::wire::AlertInfo>,
    /// The alert command's figures.
    pub summary: crate::wire::AlertsReport,
}

/// `replay`'s reply (and, with `dry_run`, what a replay would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Jobs of the window the filters selected.
    pub selected: u64,
    /// New jobs enqueued (a dry run: that would be).
    pub enqueued: u64,
    /// Selected jobs not replayed, by reason: `live` (not finished: it runs anyway),
    /// `duplicate` (replayed before, or a replay itself), `payload_unavailable` (its records are
    /// past archive retention), `refused` (its queue or kind is gone, or it no longer validates).
    pub skipped: std::collections::BTreeMap<String, u64>,
    /// The new jobs' ids (a dry run: none).
    pub ids: Vec<u64>,
    /// Selected jobs, by queue and state.
    pub by_queue: std::collections::BTreeMap<String, std::collections::BTreeMap<State, u64>>,
    /// A few ids for each reason skipped, and under `enqueue` of the jobs replayed.
    pub samples: std::collections::BTreeMap<String, Vec<u64>>,
}

/// `catalog_rebuild`'s reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRebuilt {
    /// Records read.
    pub records: u64,
    /// Jobs in the catalog.
    pub jobs: u64,
    /// How long it took (ms).
    pub ms: u64,
}

/// `status`'s reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub job: JobInfo,
}

/// `log`'s reply: a piece of one attempt's output (stdout and stderr as they came).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLog {
    /// The job.
    pub id: u64,
    /// The attempt read (`None`: it has none yet).
    pub attempt: Option<u32>,
    /// Attempts the job has had so far.
    pub attempts: u32,
    /// The job's state.
    pub state: State,
    /// Whether this attempt is still running (more output may come).
    pub running: bool,
    /// Offset in the attempt's output of the first byte of `output`.
    pub start: u64,
    /// Offset to ask for next (`offset`).
    pub next: u64,
    /// Bytes before `start` (from the offset asked for) that are no longer kept.
    pub skipped: u64,
    /// The output (invalid UTF-8 replaced).
    pub output: String,
}

/// `cancel`'s reply: the job is cancelled (durably).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    /// Job id.
    pub id: u64,
    /// Always `cancelled`.
    pub state: State,
    /// The state it was in.
    pub was: State,
}

/// `dead_list`'s reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadJobs {
    /// Dead jobs, oldest death first.
    pub jobs: Vec<JobInfo>,
}

/// `dead_retry`'s and `dead_purge`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// The jobs put back, or purged.
    pub ids: Vec<u64>,
}

/// `checkpoint`'s reply: what the checkpoint covers and what it released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointTaken {
    /// The last LSN it covers.
    pub lsn: u64,
    /// The last segment it covers.
    pub segment: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Live jobs it holds.
    pub jobs: u64,
    /// Idempotency keys it holds.
    pub keys: u64,
    /// Segments released to the archive (or deleted, with `archive_retention = "0s"`).
    pub released: u64,
    /// How long it took (ms).
    pub ms: u64,
}

/// An `ok: false` reply, as a client reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorReply {
    /// The job it is about (an uncertain submit).
    #[serde(default)]
    pub id: Option<u64>,
    /// Jobs for which the request was recorded before the WAL failed.
    #[serde(default)]
    pub recorded_ids: Option<Vec<u64>>,
    /// What went wrong.
    pub(crate) error: ErrorBody,
}

/// The `error` of an `ok: false` reply.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
}

impl From<ErrorReply> for Rejection {
    fn from(e: ErrorReply) -> Rejection {
        Rejection {
            code: e.error.code,
            message: e.error.message,
            id: e.id,
            recorded_ids: e.recorded_ids,
        }
    }
}

/// Appends `{"ok":false,"error":{"code":..,"message":..}}\n`, with the rejection's `id` and
/// `recorded_ids` when it has them.
pub(crate) fn write_error(out: &mut Vec<u8>, r: &Rejection) {
    #[derive(Serialize)]
    struct E<'a> {
        code: ErrorCode,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct R<'a> {
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recorded_ids: Option<&'a [u64]>,
        error: E<'a>,
    }
    let _ = serde_json::to_writer(
        &mut *out,
        &R {
            ok: false,
            id: r.id,
            recorded_ids: r.recorded_ids.as_deref(),
            error: E {
                code: r.code,
                message: &r.message,
            },
        },
    );
    out.push(b'\n');
}

/// Appends a `submit` reply ([`Submitted`]).
pub(crate) fn write_submitted(out: &mut Vec<u8>, s: Submitted) {
    let Submitted { id, lsn, duplicate } = s;
    let _ = writeln!(
        out,
        r#"{{"ok":true,"id":{id},"lsn":{lsn},"duplicate":{duplicate}}}"#
    );
}

/// Appends a `submit_batch` reply ([`BatchSubmitted`]): ids in request order (a duplicate's id is
/// the first job's), `lsn` of the first record written, and the indexes of duplicates when there
/// are any.
pub(crate) fn write_batch(out: &mut Vec<u8>, ids: &[u64], lsn: u64, duplicates: &[u32]) {
    fn list(out: &mut Vec<u8>, items: impl Iterator<Item = u64>) {
        for (i, v) in items.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "{v}");
        }
    }
    out.extend_from_slice(br#"{"ok":true,"ids":["#);
    list(out, ids.iter().copied());
    let _ = write!(out, r#"],"lsn":{lsn}"#);
    if !duplicates.is_empty() {
        out.extend_from_slice(br#","duplicates":["#);
        list(out, duplicates.iter().map(|&d| u64::from(d)));
        out.push(b']');
    }
    out.extend_from_slice(b"}\n");
}

/// Appends a `cancel` reply ([`Cancelled`]).
pub(crate) fn write_cancelled(out: &mut Vec<u8>, c: Cancelled) {
    let _ = writeln!(
        out,
        r#"{{"ok":true,"id":{},"state":"{}","was":"{}"}}"#,
        c.id, c.state, c.was
    );
}

/// Appends `{"ok":true, ...fields of v}\n` for a reply `v` that serializes to an object.
pub(crate) fn write_ok_with<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(mut m)) => {
            let mut o = serde_json::Map::new();
            o.insert("ok".into(), true.into());
            o.append(&mut m);
            let _ = serde_json::to_writer(&mut *out, &o);
            out.push(b'\n');
        }
        _ => write_error(
            out,
            &Rejection::new(ErrorCode::BadRequest, "internal: reply is not an object"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn replies_are_single_json_lines() {
        let mut out = Vec::new();
        write_submitted(
            &mut out,
            Submitted {
                id: 7,
                lsn: 42,
                duplicate: false,
            },
        );
        write_batch(&mut out, &[1, 2], 9, &[]);
        write_batch(&mut out, &[1, 5], 9, &[1]);
        write_error(
            &mut out,
            &Rejection::new(ErrorCode::BadRequest, "a \"quoted\"\nthing"),
        );
        let lines = lines(&out);
        assert_eq!(lines[0]["id"], 7);
        assert_eq!(lines[0]["duplicate"], false);
        assert_eq!(lines[1]["ids"][1], 2);
        assert_eq!(lines[2]["duplicates"][0], 1);
        assert_eq!(lines[3]["error"]["code"], "bad_request");
        assert_eq!(lines.len(), 4);
    }

    /// The hand-formatted replies read back into the structs a client uses.
    #[test]
    fn hand_written_replies_are_what_clients_read() {
        let s = Submitted {
            id: 3,
            lsn: 10,
            duplicate: true,
        };
        let b = BatchSubmitted {
            ids: vec![4, 3],
            lsn: 11,
            duplicates: vec![1],
        };
        let c = Cancelled {
            id: 5,
            state: State::Cancelled,
            was: State::Running,
        };
        let mut r = Rejection::new(ErrorCode::WalUncertain, "disk");
        r.id = Some(6);
        r.recorded_ids = Some(vec![1, 2]);
        let mut out = Vec::new();
        write_submitted(&mut out, s);
        write_batch(&mut out, &b.ids, b.lsn, &b.duplicates);
        write_cancelled(&mut out, c);
        write_error(&mut out, &r);
        let v = lines(&out);
        assert_eq!(
            serde_json::from_value::<Submitted>(v[0].clone()).unwrap(),
            s
        );
        assert_eq!(
            serde_json::from_value::<BatchSubmitted>(v[1].clone()).unwrap(),
            b
        );
        assert_eq!(
            serde_json::from_value::<Cancelled>(v[2].clone()).unwrap(),
            c
        );
        let e: ErrorReply = serde_json::from_value(v[3].clone()).unwrap();
        assert_eq!(v[3]["ok"], false);
        assert_eq!(Rejection::from(e), r);
        // And the typed structs serialize to the same objects (but for `ok`).
        for (typed, line) in [
            (serde_json::to_value(s).unwrap(), &v[0]),
            (serde_json::to_value(&b).unwrap(), &v[1]),
            (serde_json::to_value(c).unwrap(), &v[2]),
        ] {
            let mut line = line.clone();
            line.as_object_mut().unwrap().remove("ok");
            assert_eq!(typed, line);
        }
    }
}
