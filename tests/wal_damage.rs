//! A torn tail recovers with a warning naming segment and offset; a flipped byte mid-segment stops
//! start-up naming segment and offset; `wal verify|inspect|dump` report both, exit accordingly,
//! and never change a byte.

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use crate::common::{cli, snapshot, tempdir, Daemon};
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
    // Verify reads the last segment while the daemon appends to it: bytes it read as zeros may
    // hold records a moment later, vouched for by a fresh sync mark. None of that is damage.
    // (This broke once: a stale read of the end, then a fresh mark, was taken for corruption.)
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let sock = d.socket();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut c = crate::common::Conn::connect(&sock).unwrap();
            for _ in 0..40 {
                for _ in 0..50 {
                    c.send(r#"{"op":"submit","queue":"bulk","kind":"noop"}"#);
                }
                for _ in 0..50 {
                    assert_eq!(c.recv()["ok"], true);
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut runs = 0;
    while runs < 5 || !done.load(std::sync::atomic::Ordering::SeqCst) {
        let (st, _, err) = cli(&["wal", "verify", d.data().to_str().unwrap()]);
        assert!(st.success(), "verify during writes (run {runs}): {err}");
        runs += 1;
    }
    writer.join().unwrap();
}

/// The segment files of a data dir, in order.
fn segments(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// `duejob wal salvage DATA --to TO [--past-damage]`.
fn salvage(
    data: &std::path::Path,
    to: &std::path::Path,
    past_damage: bool,
) -> (std::process::ExitStatus, String, String) {
    let mut args = vec![
        "wal",
        "salvage",
        data.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ];
    if past_damage {
        args.push("--past-damage");
    }
    cli(&args)
}

/// `wal dump --json` of a data dir, one value per record.
fn dump(data: &std::path::Path) -> Vec<Value> {
    let (st, out, err) = cli(&["wal", "dump", "--json", data.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Spawns the daemon on a damaged log: it must refuse to start, name `segment` in its error
/// (once, not twice), and leave every file as it was.
fn refuses_to_start(d: &mut Daemon, segment: &str, offset: u64) {
    let before = snapshot(&d.data().join("wal"));
    d.spawn();
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(!st.success());
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("corrupt WAL"))
        .unwrap_or_else(|| panic!("no error naming the damage:\n{log}"));
    assert!(
        line.contains(segment) && line.contains(&format!("offset {offset}")),
        "{line}"
    );
    assert_eq!(
        line.matches("corrupt WAL").count(),
        1,
        "the error is printed once: {line}"
    );
    assert!(
        before == snapshot(&d.data().join("wal")),
        "refusing to start changed a file"
    );
}

#[test]
fn a_zeroed_header_on_the_last_segment_is_corruption_and_salvage_recovers_every_acknowledged_job() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "segment_size_mib = 1\n").unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let mut c = d.conn();
    let pad = "p".repeat(280);
    const N: u64 = 8000;
    let sender = {
        let mut w = c.w.try_clone().unwrap();
        let pad = pad.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut buf = Vec::new();
            for _ in 0..N {
                writeln!(
                    buf,
                    r#"{{"op":"submit","queue":"bulk","kind":"noop","delay_ms":3600000,"payload":{{"pad":"{pad}"}}}}"#
                )
                .unwrap();
            }
            w.write_all(&buf).unwrap();
        })
    };
    for i in 1..=N {
        assert_eq!(c.recv()["id"], i);
    }
    sender.join().unwrap();
    assert!(d.stop().success());
    let segs = segments(&d.data());
    assert!(segs.len() >= 3, "{segs:?}");
    let last = segs.last().unwrap().clone();
    let name = last.file_name().unwrap().to_str().unwrap().to_string();
    // `dd if=/dev/zero of=LAST bs=40 count=1 conv=notrunc`
    let mut bytes = std::fs::read(&last).unwrap();
    assert!(bytes[40..].iter().any(|&b| b != 0));
    bytes[..40].fill(0);
    std::fs::write(&last, &bytes).unwrap();

    let data = d.data();
    let (st, out, err) = cli(&["wal", "verify", data.to_str().unwrap()]);
    assert!(!st.success(), "verify must fail: {out}{err}");
    assert!(
        err.contains(&name) && err.contains("zeroed") && err.contains("offset 0"),
        "{err}"
    );
    // What was read before the damage is reported, not "0 segments, 0 records".
    assert!(!out.contains(" 0 records"), "{out}");
    refuses_to_start(&mut d, &name, 0);
    assert!(last.exists(), "the segment is never deleted");

    // The way out: a copy stops at the damage; with --past-damage it has every job.
    let copy = dir.path().join("copy");
    let (st, out, err) = salvage(&data, &copy, false);
    assert!(st.success(), "{err}");
    assert!(err.contains("stops at the first damage"), "{err}");
    assert!(out.contains("salvaged"), "{out}");
    // A daemon directory (its `data/` is the copy), to run on it afterwards.
    let root = dir.path().join("restored");
    let full = root.join("data");
    let (st, _, err) = salvage(&data, &full, true);
    assert!(st.success(), "{err}");
    let (st, out, err) = cli(&["wal", "inspect", "--json", full.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // Delayed an hour: scheduled, as the daemon shows them.
    assert_eq!(v["jobs_by_state"]["scheduled"], N, "{v}");
    let (st, _, err) = cli(&["wal", "verify", full.to_str().unwrap()]);
    assert!(st.success(), "the copy is sound: {err}");
    // Salvage never writes into a directory that holds something, nor inside the damaged one.
    let (st, _, err) = salvage(&data, &full, false);
    assert!(!st.success() && err.contains("not empty"), "{err}");
    let inside = data.join("wal").join("00000000000000000099.wal");
    let (st, _, err) = salvage(&data, &inside, false);
    assert!(!st.success() && err.contains("inside"), "{err}");
    assert!(
        !inside.exists(),
        "nothing was created inside the damaged log"
    );

    // The daemon runs on the copy: every job is there, and ids go on after the last one.
    let d2 = Daemon::start_in(&root, &[]);
    let mut c = d2.conn();
    let s = c.call(r#"{"op":"stats"}"#);
    assert_eq!(s["totals"]["scheduled"], N, "{s}");
    assert_eq!(c.status(N)["state"], "scheduled");
    let v = c.call(r#"{"op":"submit","queue":"bulk","kind":"noop"}"#);
    assert_eq!(v["id"], N + 1, "{v}");
}

/// Flips one byte in the body of the last record that is about a job; returns (segment name,
/// offset of that record).
fn flip_last_job_record(data: &std::path::Path) -> (String, u64) {
    let recs = dump(data);
    let last = recs
        .iter()
        .rev()
        .find(|r| r["type"] != "sync")
        .expect("a job record");
    let seg = data
        .join("wal")
        .join(format!("{:020}.wal", last["segment"].as_u64().unwrap()));
    let off = last["offset"].as_u64().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[off as usize + 20 + 2] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    (seg.file_name().unwrap().to_str().unwrap().to_string(), off)
}

#[test]
fn a_flipped_byte_in_the_last_record_is_corruption_not_a_torn_tail() {
    // After a clean stop: the last sync mark, and the durable point, vouch for every record.
    let (_dir, mut d, _) = stopped_with_jobs();
    let (name, off) = flip_last_job_record(&d.data());
    let (st, _, err) = cli(&["wal", "verify", d.data().to_str().unwrap()]);
    assert!(
        !st.success(),
        "a flipped byte in synced data is not a torn tail"
    );
    assert!(
        err.contains(&name)
            && err.contains(&format!("offset {off}"))
            && err.contains("not a torn write"),
        "{err}"
    );
    refuses_to_start(&mut d, &name, off);

    // After SIGKILL, once the log went idle: the mark written then vouches for it too.
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut c = d.conn();
    for _ in 0..5 {
        c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    }
    d.wait_idle(Duration::from_secs(60));
    // The exact event: a sync mark is the last record, and it speaks for every record before it.
    let t = std::time::Instant::now();
    loop {
        let recs = dump(&d.data());
        let last = recs.last().unwrap();
        let before = recs[recs.len() - 2]["lsn"].as_u64().unwrap();
        if last["type"] == "sync" && last["record"]["synced_lsn"].as_u64() == Some(before) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no idle mark: {last}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill9();
    let (name, off) = flip_last_job_record(&d.data());
    refuses_to_start(&mut d, &name, off);
}

/// A stopped daemon (segments of 1 MiB) holding delayed jobs submitted pipelined, 100 at a time:
/// at least `n`, and then, if `past_rotation`, until the log has rotated, plus one more hundred.
/// Returns (dir, daemon, segment files).
fn stopped_with_segments(
    n: u64,
    past_rotation: bool,
) -> (tempfile::TempDir, Daemon, Vec<std::path::PathBuf>) {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "segment_size_mib = 1\n").unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let mut c = d.conn();
    let line = format!(
        "{}\n",
        r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":3600000,"payload":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#
    );
    let mut sent = 0;
    let mut extra = 1;
    loop {
        c.send_raw(line.repeat(100).as_bytes());
        for _ in 0..100 {
            sent += 1;
            assert_eq!(c.recv()["id"], sent);
        }
        if sent < n {
            continue;
        }
        if !past_rotation || segments(&d.data()).len() >= 2 {
            if extra == 0 {
                break;
            }
            extra -= 1;
        }
    }
    assert!(d.stop().success());
    let segs = segments(&d.data());
    (dir, d, segs)
}

#[test]
fn a_wiped_last_block_after_a_clean_stop_is_damage_not_a_torn_tail() {
    // The block holding the last records also holds the marks after them: wiping it leaves no
    // mark in the log to vouch for them. The durable point (outside the log) still does.
    let (_dir, mut d, segs) = stopped_with_segments(3000, false);
    let last = segs.last().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap().to_string();
    let (st, out, _) = cli(&["wal", "inspect", "--json", d.data().to_str().unwrap()]);
    assert!(st.success());
    let v: Value = serde_json::from_str(&out).unwrap();
    let used = v["segments"].as_array().unwrap().last().unwrap()["bytes_used"]
        .as_u64()
        .unwrap();
    let block = (used - 1) / 4096 * 4096;
    // `dd if=/dev/zero of=LAST bs=4096 seek=BLOCK count=1 conv=notrunc`
    let mut bytes = std::fs::read(last).unwrap();
    bytes[block as usize..block as usize + 4096].fill(0);
    std::fs::write(last, &bytes).unwrap();
    let (st, _, err) = cli(&["wal", "verify", d.data().to_str().unwrap()]);
    assert!(
        !st.success(),
        "a wiped block of synced data is damage: {err}"
    );
    assert!(
        err.contains(&name) && err.contains("durable point"),
        "{err}"
    );
    let before = snapshot(&d.data().join("wal"));
    d.spawn();
    assert!(!d.wait_exit(Duration::from_secs(60)).success());
    assert!(d.log_text().contains("durable point"), "{}", d.log_text());
    assert!(
        before == snapshot(&d.data().join("wal")),
        "refusing changed a file"
    );
}

#[test]
fn a_last_segment_wiped_to_zeros_is_damage_not_a_segment_whose_creation_was_cut_short() {
    // Jobs until a rotation, then a few more: the last segment is small. Wiped to zeros, it looks
    // like a segment whose creation a crash cut short, but the durable point says otherwise.
    let (_dir, mut d, segs) = stopped_with_segments(100, true);
    assert!(segs.len() >= 2);
    let last = segs.last().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap().to_string();
    let len = std::fs::metadata(last).unwrap().len() as usize;
    std::fs::write(last, vec![0u8; len]).unwrap();
    let (st, _, err) = cli(&["wal", "verify", d.data().to_str().unwrap()]);
    assert!(!st.success(), "{err}");
    assert!(
        err.contains(&name) && err.contains("nothing but zeros"),
        "{err}"
    );
    d.spawn();
    assert!(!d.wait_exit(Duration::from_secs(60)).success());
    assert!(last.exists(), "the segment is never deleted");
}
