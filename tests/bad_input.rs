//! Bad input gets a specific error, the connection stays usable, other clients are unaffected, and
//! nothing reaches the WAL for a rejected request.

use crate::common::{tempdir, Conn, Daemon};
use serde_json::Value;

/// Records about jobs appended since the daemon started (sync marks are about the log).
fn wal_records(c: &mut Conn) -> u64 {
    let s = c.call(r#"{"op":"stats"}"#);
    s["wal"]["records"].as_u64().unwrap() - s["wal"]["sync_marks"].as_u64().unwrap()
}

fn code(v: &Value) -> &str {
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v["error"]["code"].as_str().unwrap()
}

#[test]
fn every_kind_of_bad_request_gets_its_own_error_and_writes_nothing() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut c = d.conn();
    let before = wal_records(&mut c);

    c.send_raw(b"\x00\x01\xff\xfe garbage \x80\n");
    assert_eq!(code(&c.recv()), "invalid_json");
    assert_eq!(code(&c.call("{\"op\": \"submit\", ")), "invalid_json");
    assert_eq!(code(&c.call("[1,2,3]")), "bad_request");
    assert_eq!(code(&c.call(r#"{"queue":"bulk"}"#)), "bad_request");
    assert_eq!(code(&c.call(r#"{"op":"explode"}"#)), "unknown_op");
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"nope","kind":"noop"}"#)),
        "unknown_queue"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"nope"}"#)),
        "unknown_kind"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"exec","payload":{"argv":[]}}"#)),
        "invalid_payload"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"exec","payload":"ls"}"#)),
        "invalid_payload"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"sleep","payload":{"ms":"5"}}"#)),
        "invalid_payload"
    );
    let v = c.call(r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":"soon"}"#);
    assert_eq!(code(&v), "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{v}"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":-5}"#)),
        "bad_request"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":999999999999999}"#)),
        "bad_request"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"noop","timeout_ms":0}"#)),
        "bad_request"
    );
    // A key with a NUL (or any control character): a key is an identifier, and no client string
    // in a record may carry NUL bytes (they could spell a forged sync mark).
    // A payload nested deeper than `status` could show back.
    let deep = format!(
        r#"{{"op":"submit","queue":"bulk","kind":"noop","payload":{}{}}}"#,
        "[".repeat(150),
        "]".repeat(150)
    );
    let v = c.call(&deep);
    assert_eq!(code(&v), "invalid_payload", "{v}");
    let v = c.call(r#"{"op":"submit","queue":"bulk","kind":"noop","key":"a\u0000b"}"#);
    assert_eq!(code(&v), "bad_request");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("control"),
        "{v}"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"noop","max_attempts":0}"#)),
        "bad_request"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"submit","queue":"bulk","kind":"noop","priority":9}"#)),
        "bad_request"
    );
    assert_eq!(
        code(&c.call(r#"{"op":"status","id":"seven"}"#)),
        "bad_request"
    );
    assert_eq!(code(&c.call(r#"{"op":"status","id":424242}"#)), "not_found");
    assert_eq!(
        code(&c.call(r#"{"op":"submit_batch","jobs":[]}"#)),
        "bad_request"
    );
    // A batch is all or nothing: one bad job rejects it whole, naming the job.
    let v = c.call(r#"{"op":"submit_batch","jobs":[{"queue":"bulk","kind":"noop"},{"queue":"zzz","kind":"noop"}]}"#);
    assert_eq!(code(&v), "unknown_queue");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("jobs[1]"),
        "{v}"
    );

    // A 2 MiB line: rejected without buffering it, and the next line is served.
    let mut big = br#"{"op":"submit","queue":"bulk","kind":"noop","payload":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 2 << 20));
    big.extend_from_slice(b"\"}\n");
    c.send_raw(&big);
    assert_eq!(code(&c.recv()), "line_too_long");
    assert_eq!(c.call(r#"{"op":"hello"}"#)["ok"], true);

    // Blank lines are skipped without a reply.
    c.send_raw(b"\n   \n");
    assert_eq!(c.call(r#"{"op":"hello"}"#)["protocol"], 1);

    assert_eq!(
        wal_records(&mut c),
        before,
        "a rejected request reached the WAL"
    );

    // A connection closed mid-line is dropped cleanly; others are served.
    let mut half = d.conn();
    half.send_raw(br#"{"op":"submit","queue":"bulk","ki"#);
    drop(half);
    let mut other = d.conn();
    let v = other.call(r#"{"op":"submit","queue":"bulk","kind":"noop"}"#);
    assert_eq!(v["ok"], true, "{v}");
    d.wait_idle(std::time::Duration::from_secs(30));
    // The finish record follows the job's completion by one group commit.
    let t = std::time::Instant::now();
    while wal_records(&mut c) < before + 3 && t.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        wal_records(&mut c),
        before + 1 + 2,
        "only the good submit (and its start/finish) was written"
    );
}

#[test]
fn pipelined_requests_get_replies_in_order() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut c = d.conn();
    let mut expect = Vec::new();
    let mut lines = String::new();
    for i in 0..500 {
        match i % 4 {
            0 => {
                lines.push_str(r#"{"op":"submit","queue":"bulk","kind":"noop"}"#);
                expect.push("submit");
            }
            1 => {
                lines.push_str(r#"{"op":"bogus"}"#);
                expect.push("error");
            }
            2 => {
                lines.push_str(r#"{"op":"submit_batch","jobs":[{"queue":"bulk","kind":"noop"},{"queue":"default","kind":"noop"}]}"#);
                expect.push("batch");
            }
            _ => {
                lines.push_str(r#"{"op":"hello"}"#);
                expect.push("hello");
            }
        }
        lines.push('\n');
    }
    c.send_raw(lines.as_bytes());
    let mut last_lsn = 0;
    let mut ids = std::collections::HashSet::new();
    for e in expect {
        let v = c.recv();
        match e {
            "submit" => {
                assert_eq!(v["ok"], true, "{v}");
                let lsn = v["lsn"].as_u64().unwrap();
                assert!(lsn > last_lsn, "LSNs grow in request order");
                last_lsn = lsn;
                assert!(ids.insert(v["id"].as_u64().unwrap()));
            }
            "error" => assert_eq!(v["error"]["code"], "unknown_op"),
            "batch" => {
                let b = v["ids"].as_array().unwrap();
                assert_eq!(b.len(), 2, "{v}");
                for id in b {
                    assert!(ids.insert(id.as_u64().unwrap()));
                }
                last_lsn = v["lsn"].as_u64().unwrap() + 1;
            }
            _ => assert_eq!(v["protocol"], 1, "{v}"),
        }
    }
}
