//! A torn tail recovers with a warning naming segment and offset; a flipped byte mid-segment stops
//! start-up naming segment and offset; `wal verify|inspect|dump` report both, exit accordingly,
//! and never change a byte.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use common::{cli, snapshot, tempdir, Daemon};
use serde_json::Value;

const SEG: &str = "00000000000000000001.wal";

/// A stopped daemon's data dir holding 30 finished noop jobs; returns (daemon, bytes used).
fn stopped_with_jobs() -> (tempfile::TempDir, Daemon, u64) {
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut c = d.conn();
    for i in 0..30 {
        let v = c.call(&format!(
            r#"{{"op":"submit","queue":"default","kind":"noop","payload":{{"n":{i}}}}}"#
        ));
        assert_eq!(v["ok"], true, "{v}");
    }
    d.wait_idle(Duration::from_secs(60));
    assert!(d.stop().success());
    let (st, out, err) = cli(&["wal", "inspect", "--json", d.data().to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["jobs_by_state"]["succeeded"], 30, "{v}");
    let used = v["segments"][0]["bytes_used"].as_u64().unwrap();
    (dir, d, used)
}

fn wal_tools_leave_files_alone(data: &std::path::Path) -> (bool, String) {
    let wal = data.join("wal");
    let before = snapshot(&wal);
    let d = data.to_str().unwrap();
    let (verify, _, verify_err) = cli(&["wal", "verify", d]);
    let _ = cli(&["wal", "inspect", d]);
    let _ = cli(&["wal", "dump", "--json", d]);
    let _ = cli(&["wal", "dump", "--job", "3", d]);
    assert!(before == snapshot(&wal), "a WAL tool changed a file");
    (verify.success(), verify_err)
}

#[test]
fn torn_tail_is_truncated_with_a_warning_and_nothing_acknowledged_is_lost() {
    let (_dir, mut d, used) = stopped_with_jobs();
    let seg = d.data().join("wal").join(SEG);
    // A record header promising 500 bytes, followed by only 9: a write cut short.
    let mut f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.seek(SeekFrom::Start(used)).unwrap();
    f.write_all(&[
        0xf4, 0x01, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 1, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0,
    ])
    .unwrap();
    f.write_all(b"truncated").unwrap();
    drop(f);

    // Offline, the tools note the incomplete tail but call the log sound.
    let (ok, err) = wal_tools_leave_files_alone(&d.data());
    assert!(ok, "verify must accept a torn tail: {err}");
    assert!(err.contains(&format!("offset {used}")), "{err}");

    d.restart();
    let log = d.log_text();
    assert!(
        log.contains("torn tail") && log.contains(SEG) && log.contains(&format!("offset {used}")),
        "{log}"
    );
    let mut c = d.conn();
    let s = c.call(r#"{"op":"stats"}"#);
    assert_eq!(s["totals"]["succeeded"], 30, "{s}");
    // The log is whole again: a new job goes in right where the torn record was.
    let v = c.call(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    assert_eq!(v["id"], 31, "{v}");
    d.wait_idle(Duration::from_secs(30));
    assert!(d.stop().success());
    let (st, _, err) = cli(&["wal", "verify", d.data().to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(!err.contains("incomplete"), "tail was repaired: {err}");
}

#[test]
fn flipped_byte_mid_segment_refuses_to_start_and_verify_fails() {
    let (_dir, mut d, _) = stopped_with_jobs();
    let seg = d.data().join("wal").join(SEG);
    let mut bytes = std::fs::read(&seg).unwrap();
    // Inside the body of the first record (segment header 40 bytes + record header 20).
    bytes[40 + 20 + 3] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();

    let (ok, err) = wal_tools_leave_files_alone(&d.data());
    assert!(!ok, "verify must fail on a flipped byte");
    assert!(
        err.contains(SEG) && err.contains("offset 40") && err.contains("checksum"),
        "{err}"
    );

    d.spawn();
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(!st.success());
    let log = d.log_text();
    assert!(
        log.contains("corrupt WAL") && log.contains(SEG) && log.contains("offset 40"),
        "{log}"
    );
    // Refusing to start changed nothing either.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[test]
fn verify_is_clean_on_a_sound_log_and_dump_filters_by_job() {
    let (_dir, d, _) = stopped_with_jobs();
    let data = d.data();
    let (ok, err) = wal_tools_leave_files_alone(&data);
    assert!(ok, "{err}");
    let (st, out, _) = cli(&[
        "wal",
        "dump",
        "--job",
        "3",
        "--json",
        data.to_str().unwrap(),
    ]);
    assert!(st.success());
    let types: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .inspect(|v| assert_eq!(v["record"]["id"], 3))
        .map(|v| v["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["submit", "start", "finish"]);
    let (st, out, _) = cli(&[
        "wal",
        "dump",
        "--since",
        "2000-01-01",
        "--until",
        "2000-01-02",
        data.to_str().unwrap(),
    ]);
    assert!(st.success() && out.is_empty(), "{out}");
    let (st, _, err) = cli(&["wal", "verify", "/nonexistent/dir"]);
    assert!(!st.success() && err.contains("holds no WAL"), "{err}");
}

#[test]
fn tools_read_a_log_while_the_daemon_writes_it() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let sock = d.socket();
    let writer = std::thread::spawn(move || {
        let mut c = common::Conn::connect(&sock).unwrap();
        for _ in 0..300 {
            c.send(r#"{"op":"submit","queue":"bulk","kind":"noop"}"#);
        }
        for _ in 0..300 {
            assert_eq!(c.recv()["ok"], true);
        }
    });
    for _ in 0..5 {
        let (st, _, err) = cli(&["wal", "verify", d.data().to_str().unwrap()]);
        assert!(st.success(), "verify during writes: {err}");
    }
    writer.join().unwrap();
}
