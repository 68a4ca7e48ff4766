//! The socket protocol: newline-delimited JSON, one request per line, one reply per line, in
//! order (see `docs/protocol.md`).
//!
//! Parsing is one pass of serde_json into a borrowed struct: strings without escapes and the
//! payload (kept as raw JSON text) are not copied until a job is built.

use std::borrow::Cow;
use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::runtime::{JobSpec, Rejection};

/// Protocol version announced by `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Most jobs in one `submit_batch`.
pub const MAX_BATCH: usize = 10_000;

/// Error codes. Stable: clients match on them.
pub mod code {
    /// The line is not JSON.
    pub const INVALID_JSON: &str = "invalid_json";
    /// JSON, but not a valid request (missing field, wrong type, unknown field, bad value).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The line is longer than the limit (1 MiB by default).
    pub const LINE_TOO_LONG: &str = "line_too_long";
    /// No such op.
    pub const UNKNOWN_OP: &str = "unknown_op";
    /// No such queue.
    pub const UNKNOWN_QUEUE: &str = "unknown_queue";
    /// No such kind.
    pub const UNKNOWN_KIND: &str = "unknown_kind";
    /// The payload does not suit the kind.
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    /// No such job.
    pub const NOT_FOUND: &str = "not_found";
    /// The job's state does not allow the operation (e.g. cancelling a finished job, retrying a
    /// job that is not dead).
    pub const WRONG_STATE: &str = "wrong_state";
    /// The WAL failed and the request was not recorded (certainly: safe to repeat once the
    /// daemon runs again); nothing more is accepted until restart.
    pub const WAL_FAILED: &str = "wal_failed";
    /// The WAL failed after writing the request, and could not remove it again: it may or may not
    /// be in the log after a restart (the reply's `id` names the job; its `status` tells).
    pub const WAL_UNCERTAIN: &str = "wal_uncertain";
    /// The daemon is stopping.
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// The peer's uid is not allowed.
    pub const FORBIDDEN: &str = "forbidden";
    /// Too many connections.
    pub const BUSY: &str = "busy";
}

/// The fields of one job in `submit` or `submit_batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitFields<'a> {
    /// Queue.
    #[serde(borrow)]
    pub queue: Cow<'a, str>,
    /// Kind.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// Payload (any JSON; default `{}`).
    #[serde(borrow, default)]
    pub payload: Option<&'a RawValue>,
    /// Idempotency key.
    #[serde(borrow, default)]
    pub key: Option<Cow<'a, str>>,
    /// Deadline after becoming ready.
    #[serde(default)]
    pub due_in_ms: Option<u64>,
    /// Delay.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Attempts.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Timeout.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl<'a> SubmitFields<'a> {
    /// As a [`JobSpec`].
    pub fn spec(&self) -> JobSpec<'_> {
        JobSpec {
            queue: &self.queue,
            kind: &self.kind,
            payload: self.payload.map(|p| p.get()).unwrap_or("{}"),
            key: self.key.as_deref(),
            due_in_ms: self.due_in_ms,
            delay_ms: self.delay_ms,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
        }
    }
}

/// One request line.
#[derive(Debug)]
pub enum Request<'a> {
    /// `hello`
    Hello,
    /// `submit`
    Submit(SubmitFields<'a>),
    /// `submit_batch`
    SubmitBatch(Vec<SubmitFields<'a>>),
    /// `status`
    Status(u64),
    /// `stats`
    Stats,
    /// `cancel`
    Cancel(u64),
    /// `dead_list`
    DeadList {
        /// Only this queue.
        queue: Option<Cow<'a, str>>,
        /// Only jobs dead since (ms).
        since: Option<u64>,
    },
    /// `dead_retry`: one job, or all (of a queue).
    DeadRetry(DeadSelect<'a>),
    /// `dead_purge`: one job, or all (of a queue, dead before a time).
    DeadPurge(DeadSelect<'a>),
}

/// Which dead jobs a `dead_retry` or `dead_purge` is about.
#[derive(Debug)]
pub struct DeadSelect<'a> {
    /// One job.
    pub id: Option<u64>,
    /// All dead jobs (with the filters).
    pub all: bool,
    /// Only this queue.
    pub queue: Option<Cow<'a, str>>,
    /// Only jobs dead before this time (ms; `dead_purge`).
    pub before: Option<u64>,
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
    jobs: Option<Vec<SubmitFields<'a>>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    all: Option<bool>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    client: Option<serde::de::IgnoredAny>,
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
            ("all", self.all.is_some()),
            ("since", self.since.is_some()),
            ("before", self.before.is_some()),
            ("client", self.client.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, here)| here.then_some(name))
    }

    /// Refuses fields the op does not take.
    fn only(&self, allowed: &[&str]) -> Result<(), Rejection> {
        match self.present().find(|f| !allowed.contains(f)) {
            Some(f) => Err(Rejection::new(
                code::BAD_REQUEST,
                format!("field `{f}` does not go with op {:?}", self.op),
            )),
            None => Ok(()),
        }
    }
}

fn missing(field: &str) -> Rejection {
    Rejection::new(code::BAD_REQUEST, format!("missing field `{field}`"))
}

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
        Category::Syntax | Category::Eof | Category::Io => code::INVALID_JSON,
        Category::Data => code::BAD_REQUEST,
    };
    Rejection::new(code, e.to_string())
}

impl<'a> Request<'a> {
    /// Parses one line (without its newline).
    pub fn parse(line: &'a [u8]) -> Result<Request<'a>, Rejection> {
        let w: Wire<'a> = serde_json::from_slice(line).map_err(json_error)?;
        match &*w.op {
            "hello" | "stats" => {
                w.only(&["client"])?;
                Ok(if w.op == "hello" { Request::Hello } else { Request::Stats })
            }
            "status" | "cancel" => {
                w.only(&["id"])?;
                let id = w.id.ok_or_else(|| missing("id"))?;
                Ok(if w.op == "status" { Request::Status(id) } else { Request::Cancel(id) })
            }
            "submit" => {
                w.only(SUBMIT_FIELDS)?;
                Ok(Request::Submit(SubmitFields {
                    queue: w.queue.ok_or_else(|| missing("queue"))?,
                    kind: w.kind.ok_or_else(|| missing("kind"))?,
                    payload: w.payload,
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
                        code::BAD_REQUEST,
                        format!("jobs must hold 1 to {MAX_BATCH} jobs, not {}", jobs.len()),
                    ));
                }
                Ok(Request::SubmitBatch(jobs))
            }
            "dead_list" => {
                w.only(&["queue", "since"])?;
                Ok(Request::DeadList { queue: w.queue, since: w.since })
            }
            "dead_retry" | "dead_purge" => {
                let retry = w.op == "dead_retry";
                w.only(if retry { &["id", "all", "queue"] } else { &["id", "all", "queue", "before"] })?;
                let all = w.all.unwrap_or(false);
                if w.id.is_some() == all {
                    return Err(Rejection::new(code::BAD_REQUEST, "give either \"id\" or \"all\": true"));
                }
                if w.id.is_some() && (w.queue.is_some() || w.before.is_some()) {
                    return Err(Rejection::new(
                        code::BAD_REQUEST,
                        "\"queue\" and \"before\" go with \"all\": true",
                    ));
                }
                let sel = DeadSelect { id: w.id, all, queue: w.queue, before: w.before };
                Ok(if retry { Request::DeadRetry(sel) } else { Request::DeadPurge(sel) })
            }
            other => Err(Rejection::new(
                code::UNKNOWN_OP,
                format!("unknown op {other:?} (hello, submit, submit_batch, status, stats, cancel, dead_list, dead_retry, dead_purge)"),
            )),
        }
    }
}

/// Appends `{"ok":false,"error":{"code":..,"message":..}}\n`, with the rejection's `id` and
/// `recorded_ids` when it has them.
pub fn write_error(out: &mut Vec<u8>, r: &Rejection) {
    #[derive(Serialize)]
    struct E<'a> {
        code: &'a str,
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

/// Appends a `submit` reply.
pub fn write_submitted(out: &mut Vec<u8>, id: u64, lsn: u64, duplicate: bool) {
    let _ = writeln!(
        out,
        r#"{{"ok":true,"id":{id},"lsn":{lsn},"duplicate":{duplicate}}}"#
    );
}

/// Appends a `submit_batch` reply: ids in request order (a duplicate's id is the first job's),
/// `lsn` of the first record written, and the indexes of duplicates when there are any.
pub fn write_batch(out: &mut Vec<u8>, ids: &[u64], lsn: u64, duplicates: &[u32]) {
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

/// Appends `{"ok":true, ...fields of v}\n` for a struct `v` that serializes to an object.
pub fn write_ok_with<T: Serialize>(out: &mut Vec<u8>, v: &T) {
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
            &Rejection::new(code::BAD_REQUEST, "internal: reply is not an object"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(line: &str) -> &'static str {
        Request::parse(line.as_bytes()).unwrap_err().code
    }

    #[test]
    fn parses_each_op() {
        assert!(matches!(
            Request::parse(br#"{"op":"hello"}"#),
            Ok(Request::Hello)
        ));
        assert!(matches!(
            Request::parse(br#"{"op":"status","id":7}"#),
            Ok(Request::Status(7))
        ));
        let Ok(Request::Submit(s)) = Request::parse(
            br#"{"op":"submit","queue":"bulk","kind":"sleep","payload":{"ms":5},"delay_ms":10}"#,
        ) else {
            panic!("submit")
        };
        assert_eq!(s.spec().payload, r#"{"ms":5}"#);
        assert_eq!(s.delay_ms, Some(10));
        let Ok(Request::SubmitBatch(b)) =
            Request::parse(br#"{"op":"submit_batch","jobs":[{"queue":"a","kind":"noop"},{"queue":"b","kind":"noop"}]}"#)
        else {
            panic!("batch")
        };
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].spec().payload, "{}");
    }

    #[test]
    fn errors_have_specific_codes() {
        assert_eq!(code_of("not json"), code::INVALID_JSON);
        assert_eq!(code_of("{\"op\":"), code::INVALID_JSON);
        assert_eq!(code_of("\u{1}\u{2}garbage"), code::INVALID_JSON);
        assert_eq!(code_of(r#"{"op":"fly"}"#), code::UNKNOWN_OP);
        assert_eq!(code_of(r#"{"id":1}"#), code::BAD_REQUEST);
        assert_eq!(
            code_of(r#"{"op":"status","id":"seven"}"#),
            code::BAD_REQUEST
        );
        assert_eq!(code_of(r#"{"op":"status","id":-1}"#), code::BAD_REQUEST);
        assert_eq!(code_of(r#"{"op":"submit","queue":"q"}"#), code::BAD_REQUEST);
        assert_eq!(
            code_of(r#"{"op":"submit","queue":"q","kind":"k","dealy_ms":5}"#),
            code::BAD_REQUEST
        );
        assert_eq!(
            code_of(r#"{"op":"submit_batch","jobs":[]}"#),
            code::BAD_REQUEST
        );
        assert_eq!(code_of(r#"[1,2]"#), code::BAD_REQUEST);
        assert_eq!(code_of(r#"{"op":"dead_retry"}"#), code::BAD_REQUEST);
        assert_eq!(
            code_of(r#"{"op":"dead_retry","id":1,"all":true}"#),
            code::BAD_REQUEST
        );
        assert_eq!(
            code_of(r#"{"op":"dead_retry","all":true,"before":5}"#),
            code::BAD_REQUEST
        );
        assert_eq!(
            code_of(r#"{"op":"dead_purge","id":1,"queue":"q"}"#),
            code::BAD_REQUEST
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
                code::BAD_REQUEST,
                "field `queue` does not go with op \"status\""
            )
        );
        assert_eq!(
            code_of(r#"{"op":"submit_batch","jobs":[{"queue":"a","kind":"noop"}],"queue":"a"}"#),
            code::BAD_REQUEST
        );
        assert_eq!(code_of(r#"{"op":"dead_list","id":3}"#), code::BAD_REQUEST);
        assert_eq!(code_of(r#"{"op":"cancel"}"#), code::BAD_REQUEST);
        assert_eq!(
            Request::parse(br#"{"op":"cancel"}"#).unwrap_err().message,
            "missing field `id`"
        );
        assert!(matches!(
            Request::parse(br#"{"op":"hello","client":"my-app 1.2"}"#),
            Ok(Request::Hello)
        ));
        assert!(matches!(
            Request::parse(br#"{"op":"dead_retry","all":true,"queue":"bulk"}"#),
            Ok(Request::DeadRetry(_))
        ));
    }

    #[test]
    fn replies_are_single_json_lines() {
        let mut out = Vec::new();
        write_submitted(&mut out, 7, 42, false);
        write_batch(&mut out, &[1, 2], 9, &[]);
        write_batch(&mut out, &[1, 5], 9, &[1]);
        write_error(
            &mut out,
            &Rejection::new(code::BAD_REQUEST, "a \"quoted\"\nthing"),
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["id"], 7);
        assert_eq!(lines[0]["duplicate"], false);
        assert_eq!(lines[1]["ids"][1], 2);
        assert_eq!(lines[2]["duplicates"][0], 1);
        assert_eq!(lines[3]["error"]["code"], "bad_request");
        assert_eq!(lines.len(), 4);
    }
}
