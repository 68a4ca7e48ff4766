//! Live queue control: `queue set` takes effect at the next dispatch, is checked like the config
//! file, survives a SIGKILL and the release of its segment; a paused queue takes jobs and holds
//! them ready until resumed (or its pause runs out).

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{cli, stats, tempdir, Daemon};

/// An exec job of `queue` that runs until `gate` exists.
fn gated(queue: &str, gate: &std::path::Path) -> Value {
    json!({"queue": queue, "kind": "exec",
           "payload": {"argv": ["/bin/sh", "-c",
               format!("while [ ! -f {} ]; do sleep 0.02; done", gate.display())]}})
}

fn batch(c: &mut crate::common::Conn, jobs: Vec<Value>) -> Vec<u64> {
    let r = c.call(&json!({"op": "submit_batch", "jobs": jobs}).to_string());
    r["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn queue_of(d: &Daemon, q: &str) -> Value {
    stats(d)["queues"][q].clone()
}

/// A queue's settings (not its figures).
fn settings(d: &Daemon, q: &str) -> Value {
    let s = queue_of(d, q);
    json!([
        s["due_in_ms"],
        s["max_workers"],
        s["reserved"],
        s["lend_limit_ms"],
        s.get("paused_until"),
        s.get("overridden")
    ])
}

#[test]
fn a_lowered_max_workers_holds_at_the_next_dispatch_and_a_raised_one_starts_the_rest() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "4"]);
    let mut c = d.conn();
    let r = c.call(r#"{"op":"queue_set","queue":"bulk","max_workers":1}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (r["max_workers"].as_u64(), &r["overridden"]),
        (Some(1), &json!(["max_workers"]))
    );
    let gate = dir.path().join("gate");
    // Three at once: were a second worker allowed, the same dispatch would start it.
    let ids = batch(&mut c, (0..3).map(|_| gated("bulk", &gate)).collect());
    c.wait_state(ids[0], "running");
    for &id in &ids[1..] {
        assert_eq!(c.status(id)["state"], "ready");
    }
    assert_eq!(queue_of(&d, "bulk")["states"]["running"], 1);
    let r = c.call(r#"{"op":"queue_set","queue":"bulk","max_workers":3}"#);
    assert_eq!(r["ok"], true, "{r}");
    for &id in &ids {
        c.wait_state(id, "running");
    }
    std::fs::write(&gate, "").unwrap();
    for &id in &ids {
        c.wait_state(id, "succeeded");
    }
    // `due_in` applies to the jobs submitted after it.
    let r = c.call(r#"{"op":"queue_set","queue":"default","due_in_ms":7000}"#);
    assert_eq!(r["due_in_ms"], 7000, "{r}");
    let id = c.submit(r#"{"op":"submit","queue":"default","kind":"noop","delay_ms":60000}"#);
    let j = c.status(id);
    let (sub, dl) = (
        j["submitted_at"].as_u64().unwrap(),
        j["deadline"].as_u64().unwrap(),
    );
    assert_eq!(dl - sub, 60_000 + 7000, "{j}");
}

#[test]
fn a_bad_change_is_refused_with_the_reason_and_changes_nothing() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "4"]);
    let mut c = d.conn();
    let before = settings(&d, "bulk");
    for (req, why) in [
        (
            r#"{"op":"queue_set","queue":"bulk","reserved":9}"#,
            "reserved exceeds max_workers",
        ),
        (
            r#"{"op":"queue_set","queue":"bulk","max_workers":0}"#,
            "max_workers must be at least 1",
        ),
        (
            r#"{"op":"queue_set","queue":"bulk","due_in_ms":0}"#,
            "due_in must be positive",
        ),
        (
            r#"{"op":"queue_set","queue":"bulk","reserved":4}"#,
            "queues reserve 5 workers but only 4 exist",
        ),
        (r#"{"op":"queue_set","queue":"bulk"}"#, "nothing to change"),
        (
            r#"{"op":"queue_set","queue":"bulk","workers":3}"#,
            "unknown field",
        ),
        (
            r#"{"op":"queue_pause","queue":"bulk","for_ms":0}"#,
            "for_ms must be at least 1",
        ),
    ] {
        let r = c.call(req);
        assert_eq!(r["error"]["code"], "bad_request", "{req}: {r}");
        let m = r["error"]["message"].as_str().unwrap();
        assert!(m.contains(why), "{req}: {m}");
    }
    let r = c.call(r#"{"op":"queue_resume","queue":"nope"}"#);
    assert_eq!(r["error"]["code"], "unknown_queue", "{r}");
    assert_eq!(settings(&d, "bulk"), before);
    // The CLI says why and exits non-zero.
    let sock = d.socket();
    let (st, _, err) = cli(&[
        "queue",
        "set",
        "bulk",
        "--reserved",
        "9",
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert!(
        !st.success() && err.contains("reserved exceeds max_workers"),
        "{err}"
    );
}

#[test]
fn live_settings_survive_sigkill_and_the_release_of_their_segment_and_reset_puts_the_file_back() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "workers = 4\nsegment_size_mib = 1\n").unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let mut c = d.conn();
    let r = c.call(r#"{"op":"queue_set","queue":"bulk","max_workers":2,"due_in_ms":7200000}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = c.call(r#"{"op":"queue_pause","queue":"notifications"}"#);
    assert_eq!(r["paused"], true, "{r}");
    // A checkpoint covers the segment holding the changes, which is then released.
    let r = c.call(r#"{"op":"checkpoint"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let wal: Vec<String> = std::fs::read_dir(d.data().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !wal.contains(&"00000000000000000001.wal".to_string()),
        "segment 1 released: {wal:?}"
    );
    d.kill9();
    d.restart();
    let bulk = queue_of(&d, "bulk");
    assert_eq!(bulk["max_workers"], 2, "{bulk}");
    assert_eq!(bulk["due_in_ms"], 7_200_000, "{bulk}");
    assert_eq!(
        bulk["overridden"],
        json!(["due_in", "max_workers"]),
        "{bulk}"
    );
    let n = queue_of(&d, "notifications");
    assert!(n["paused_until"].is_u64(), "still paused: {n}");
    let mut c = d.conn();
    let id = c.submit(r#"{"op":"submit","queue":"notifications","kind":"noop"}"#);
    assert_eq!(c.status(id)["state"], "ready");
    // `queue list` marks what was changed live.
    let sock = d.socket();
    let (st, text, err) = cli(&["queue", "list", "--socket", sock.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let row = text.lines().find(|l| l.starts_with("bulk")).unwrap();
    assert!(row.contains("2.0h*") && row.contains("2*"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("notifications"))
        .unwrap();
    assert!(row.contains("paused"), "{text}");
    // Reset: the config file's values again, also after a restart.
    let r = c.call(r#"{"op":"queue_set","queue":"bulk","reset":true}"#);
    assert_eq!(
        (r["max_workers"].as_u64(), &r["overridden"]),
        (Some(4), &json!([])),
        "{r}"
    );
    let r = c.call(r#"{"op":"queue_resume","queue":"notifications"}"#);
    assert_eq!(r["paused"], false, "{r}");
    c.wait_state(id, "succeeded");
    d.stop();
    d.restart();
    let bulk = queue_of(&d, "bulk");
    assert_eq!(
        (bulk["max_workers"].as_u64(), bulk.get("overridden")),
        (Some(4), None),
        "{bulk}"
    );
}

#[test]
fn a_paused_queue_takes_jobs_and_holds_them_ready_until_resumed_or_its_pause_runs_out() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "4"]);
    let mut c = d.conn();
    let sock = d.socket();
    let sock = sock.to_str().unwrap();
    let (st, text, err) = cli(&["queue", "pause", "bulk", "--socket", sock]);
    assert!(st.success(), "{err}");
    assert!(text.contains("paused until resumed"), "{text}");
    let ids = batch(
        &mut c,
        (0..5)
            .map(|_| json!({"queue": "bulk", "kind": "noop"}))
            .collect(),
    );
    // Other queues run meanwhile.
    let other = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    c.wait_state(other, "succeeded");
    for &id in &ids {
        assert_eq!(c.status(id)["state"], "ready");
    }
    let (st, text, _) = cli(&["stats", "--socket", sock]);
    assert!(
        st.success() && text.contains("paused (jobs held ready): bulk"),
        "{text}"
    );
    let (st, _, err) = cli(&["queue", "resume", "bulk", "--socket", sock]);
    assert!(st.success(), "{err}");
    for &id in &ids {
        c.wait_state(id, "succeeded");
    }
    // For a while: it resumes by itself.
    let (st, text, err) = cli(&["queue", "pause", "bulk", "--for", "500ms", "--socket", sock]);
    assert!(st.success(), "{err}");
    assert!(text.contains("paused until 20"), "{text}");
    let id = c.submit(r#"{"op":"submit","queue":"bulk","kind":"noop"}"#);
    c.wait_state(id, "succeeded");
    let t = std::time::Instant::now();
    while !d
        .log_text()
        .contains("queue bulk: its pause ran out; resumed")
    {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(queue_of(&d, "bulk").get("paused_until").is_none());
}
