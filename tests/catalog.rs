//! The catalog and replay: `status` of jobs the daemon's memory forgot, `jobs`, `replay` with its
//! duplicate rules and a SIGKILL in the middle, `catalog rebuild`, and the catalog failing
//! without ever slowing the primary path (G6).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{cli, stats, tempdir, wait_stats, Daemon};

const FAR: u64 = 4_102_444_800_000; // 2100-01-01

/// Submits `n` noop jobs in batches; returns their ids.
fn noops(d: &Daemon, n: usize) -> Vec<u64> {
    noops_of(d, n, 10_000, json!({"queue": "default", "kind": "noop"}))
}

/// Submits `n` copies of `job` in batches of `per_batch`; returns their ids.
fn noops_of(d: &Daemon, n: usize, per_batch: usize, job: Value) -> Vec<u64> {
    let mut c = d.conn();
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_batch) {
        let jobs: Vec<Value> = chunk.iter().map(|_| job.clone()).collect();
        let r = c.call(&json!({"op": "submit_batch", "jobs": jobs}).to_string());
        assert_eq!(r["ok"], true, "{r}");
        ids.extend(
            r["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap()),
        );
    }
    ids
}

fn replay(d: &Daemon, extra: Value) -> Value {
    let mut req = json!({"op": "replay", "since": 0, "until": FAR});
    req.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = d.conn().call(&req.to_string());
    assert_eq!(r["ok"], true, "{r}");
    r
}

/// Every job the catalog lists (newest first).
/// `duejob catalog rebuild` on `d`'s data directory, without a daemon to ask.
fn offline_rebuild(d: &Daemon) -> (std::process::ExitStatus, String, String) {
    cli(&[
        "catalog",
        "rebuild",
        "--socket",
        "/nonexistent/sock",
        "--data",
        d.data().to_str().unwrap(),
    ])
}

fn all_jobs(d: &Daemon) -> Vec<Value> {
    let r = d.conn().call(r#"{"op":"jobs","limit":10000}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["more"], false, "{r}");
    r["jobs"].as_array().unwrap().clone()
}

#[test]
fn status_answers_for_a_job_the_memory_forgot_with_the_same_fields() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "history_limit = 1000\n").unwrap();
    let d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let mut c = d.conn();
    let first = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    let from_memory = c.wait_state(first, "succeeded");
    let ids = noops(&d, 300_000);
    d.wait_idle(Duration::from_secs(600));
    wait_stats(&d, Duration::from_secs(600), |s| {
        s["catalog"]["lag_records"] == 0
    });
    // Long gone from memory (1,000 finished jobs kept), answered by the catalog.
    let r = c.call(&json!({"op": "status", "id": first}).to_string());
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["job"], from_memory, "memory and catalog say the same");
    assert_eq!(r["job"]["attempts"][0]["outcome"], "succeeded", "{r}");
    let last = *ids.last().unwrap();
    let r = c.call(&json!({"op": "status", "id": last}).to_string());
    assert_eq!(r["job"]["state"], "succeeded", "{r}");
    // An id never given is still not found, at once.
    let r = c.call(&json!({"op": "status", "id": last + 10}).to_string());
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    let s = stats(&d);
    assert_eq!(s["catalog"]["failing"], false, "{s}");
    assert!(
        s["catalog"]["jobs_added"].as_u64().unwrap() >= 300_001,
        "{s}"
    );
}

#[test]
fn a_window_is_replayed_once_live_jobs_never_and_a_dry_run_writes_nothing() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "4"]);
    let mut c = d.conn();
    let marker = dir.path().join("database-is-back");
    let out = dir.path().join("replay-of");
    // Fails until the "database" is back; then writes the job it replays.
    let script = format!(
        "test -f {m} && echo $DUEJOB_REPLAY_OF > {o}",
        m = marker.display(),
        o = out.display()
    );
    let ok = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    let dead = c.submit(
        &json!({"op": "submit", "queue": "default", "kind": "exec", "max_attempts": 1,
                "payload": {"argv": ["/bin/sh", "-c", script]}})
        .to_string(),
    );
    let cancelled = c.submit(r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":3600000}"#);
    let live = c.submit(r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":3600000}"#);
    assert_eq!(
        c.call(&json!({"op": "cancel", "id": cancelled}).to_string())["ok"],
        true
    );
    c.wait_state(ok, "succeeded");
    c.wait_state(dead, "dead");

    // A dry run: the counts, and not a byte written.
    // Every record but the sync marks (about the log: an idle daemon writes one after its last
    // group, and `wal/durable` catches up within a second), as `wal dump` prints them.
    let records = || {
        let (st, text, err) = cli(&["wal", "dump", d.data().to_str().unwrap()]);
        assert!(st.success(), "{err}");
        text.lines()
            .filter(|l| !l.contains(" sync "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let before = records();
    let r = replay(&d, json!({"dry_run": true}));
    assert_eq!(r["selected"], 4, "{r}");
    assert_eq!(r["enqueued"], 3, "{r}");
    assert_eq!(r["skipped"]["live"], 1, "{r}");
    assert_eq!(r["samples"]["live"], json!([live]), "{r}");
    assert_eq!(
        r["by_queue"]["bulk"],
        json!({"cancelled": 1, "scheduled": 1}),
        "{r}"
    );
    assert_eq!(
        r["by_queue"]["default"],
        json!({"succeeded": 1, "dead": 1}),
        "{r}"
    );
    assert_eq!(r["ids"], json!([]), "{r}");
    assert_eq!(records(), before, "a dry run wrote to the WAL");
    // The CLI says the same.
    let sock = d.socket();
    let (st, text, err) = cli(&[
        "replay",
        "--socket",
        sock.to_str().unwrap(),
        "--since",
        "-1h",
        "--until",
        "now",
        "--dry-run",
    ]);
    assert!(st.success(), "{err}");
    assert!(text.contains("would enqueue 3"), "{text}");
    assert!(text.contains("skipped live: 1"), "{text}");

    // The database is back: replay the dead ones.
    std::fs::write(&marker, "").unwrap();
    let r = replay(&d, json!({"states": ["dead"]}));
    assert_eq!(r["selected"], 1, "{r}");
    assert_eq!(r["enqueued"], 1, "{r}");
    let new = r["ids"][0].as_u64().unwrap();
    let j = c.wait_state(new, "succeeded");
    assert_eq!(j["replay_of"], dead, "{j}");
    assert_eq!(j["key"], format!("replay:{dead}"), "{j}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        dead.to_string()
    );

    // The same command again: nothing new.
    let r = replay(&d, json!({"states": ["dead"]}));
    assert_eq!(r["enqueued"], 0, "{r}");
    assert_eq!(r["skipped"]["duplicate"], 1, "{r}");
    // Everything: the live job is skipped, the replayed one and its replay are duplicates.
    let r = replay(&d, json!({}));
    assert_eq!(r["skipped"]["live"], 1, "{r}");
    assert_eq!(r["skipped"]["duplicate"], 2, "{r}");
    assert_eq!(r["enqueued"], 2, "the succeeded and the cancelled job: {r}");
    for id in r["ids"].as_array().unwrap() {
        c.wait_state(id.as_u64().unwrap(), "succeeded");
    }
    let jobs = all_jobs(&d);
    let replays_of = |id: u64| jobs.iter().filter(|j| j["replay_of"] == id).count();
    assert_eq!(replays_of(live), 0, "a live job is never duplicated");
    for id in [ok, dead, cancelled] {
        assert_eq!(replays_of(id), 1, "job {id}: {jobs:?}");
    }
    // A client cannot forge a replay.
    let r = c.call(r#"{"op":"submit","queue":"default","kind":"noop","key":"replay:1"}"#);
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // `wal dump` shows the replays.
    let (st, text, err) = cli(&["wal", "dump", d.data().to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert_eq!(text.matches(" replay ").count(), 3, "{text}");
}

#[test]
fn sigkill_in_the_middle_of_a_replay_then_again_each_job_is_replayed_once() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    // One worker: the replay waits for the queue to drain between chunks, so it is still going
    // when the daemon is killed.
    std::fs::write(
        &cfg,
        "workers = 2\n[queues.slow]\nmax_workers = 1\n[queues.default]\n",
    )
    .unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let n = 1000;
    let mut c = d.conn();
    let job = json!({"queue": "slow", "kind": "exec", "max_attempts": 1,
                     "payload": {"argv": ["/bin/sh", "-c", "exit 1"]}});
    let jobs: Vec<Value> = (0..n).map(|_| job.clone()).collect();
    let r = c.call(&json!({"op": "submit_batch", "jobs": jobs}).to_string());
    let originals: Vec<u64> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    d.wait_idle(Duration::from_secs(300));
    let next = originals.last().unwrap() + 1;
    // The replay, on its own connection; killed once its first jobs are in.
    let mut rc = d.conn();
    rc.send(&json!({"op": "replay", "since": 0, "until": FAR}).to_string());
    let t = Instant::now();
    loop {
        if c.call(&json!({"op": "status", "id": next}).to_string())["ok"] == true {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no replay started");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.kill9();
    d.restart();
    let replayed: Vec<u64> = all_jobs(&d)
        .iter()
        .filter_map(|j| j["replay_of"].as_u64())
        .collect();
    assert!(
        !replayed.is_empty() && replayed.len() < n,
        "killed in the middle: {} replayed",
        replayed.len()
    );
    let r = replay(&d, json!({"states": ["dead"]}));
    assert_eq!(
        r["enqueued"].as_u64().unwrap() as usize + replayed.len(),
        n,
        "{r}"
    );
    d.wait_idle(Duration::from_secs(300));
    let mut counts = std::collections::BTreeMap::new();
    for j in all_jobs(&d) {
        if let Some(of) = j["replay_of"].as_u64() {
            *counts.entry(of).or_insert(0) += 1;
        }
    }
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), originals);
}

#[test]
fn jobs_lists_by_window_queue_state_and_kind_newest_first() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "4"]);
    let mut c = d.conn();
    let a = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    let b = c.submit(r#"{"op":"submit","queue":"bulk","kind":"noop"}"#);
    let s = c.submit(
        r#"{"op":"submit","queue":"bulk","kind":"sleep","delay_ms":3600000,"payload":{"ms":1}}"#,
    );
    c.wait_state(a, "succeeded");
    c.wait_state(b, "succeeded");
    let ids = |r: &Value| -> Vec<u64> {
        assert_eq!(r["ok"], true, "{r}");
        r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&c.call(r#"{"op":"jobs"}"#)), [s, b, a]);
    assert_eq!(ids(&c.call(r#"{"op":"jobs","queue":"bulk"}"#)), [s, b]);
    assert_eq!(ids(&c.call(r#"{"op":"jobs","states":["scheduled"]}"#)), [s]);
    assert_eq!(
        ids(&c.call(r#"{"op":"jobs","kind":"noop","queue":"bulk"}"#)),
        [b]
    );
    let r = c.call(r#"{"op":"jobs","limit":2}"#);
    assert_eq!(ids(&r), [s, b]);
    assert_eq!(r["more"], true);
    // A one-millisecond window: exactly the jobs submitted in it, newest first.
    let sub = c.status(b)["submitted_at"].as_u64().unwrap();
    let r = c.call(&json!({"op": "jobs", "since": sub, "until": sub + 1}).to_string());
    let expect: Vec<u64> = [s, b, a]
        .into_iter()
        .filter(|&id| c.status(id)["submitted_at"] == sub)
        .collect();
    assert_eq!(ids(&r), expect, "{r}");
    assert_eq!(
        ids(&c.call(&json!({"op": "jobs", "until": 1}).to_string())),
        Vec::<u64>::new()
    );
    let r = c.call(r#"{"op":"jobs","states":["flying"]}"#);
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = c.call(r#"{"op":"jobs","limit":0}"#);
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // The CLI: relative times, a state list.
    let sock = d.socket();
    let (st, text, err) = cli(&[
        "jobs",
        "--socket",
        sock.to_str().unwrap(),
        "--since",
        "-1h",
        "--state",
        "succeeded,scheduled",
        "--queue",
        "bulk",
    ]);
    assert!(st.success(), "{err}");
    assert!(text.contains("2 job(s)"), "{text}");
}

#[test]
fn a_catalog_that_cannot_write_or_is_corrupt_never_stops_jobs_and_rebuild_restores_it() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "history_limit = 10\n").unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let first = noops(&d, 100);
    d.wait_idle(Duration::from_secs(60));
    let cat = d.data().join("catalog");
    wait_stats(&d, Duration::from_secs(30), |s| {
        s["catalog"]["lag_records"] == 0
    });
    // The catalog's directory gives way to a file: nothing can be written there (as root, a
    // mode would not stop it).
    let aside = d.data().join("catalog.aside");
    std::fs::rename(&cat, &aside).unwrap();
    std::fs::write(&cat, "not a directory").unwrap();
    let during = noops(&d, 500);
    d.wait_idle(Duration::from_secs(60));
    let s = wait_stats(&d, Duration::from_secs(30), |s| {
        s["catalog"]["failing"] == true
    });
    assert!(
        s["catalog"]["last_error"]
            .as_str()
            .unwrap()
            .contains("catalog"),
        "{s}"
    );
    assert_eq!(s["totals"]["succeeded"], 600, "jobs ran: {s}");
    let mut c = d.conn();
    let r = c.call(r#"{"op":"jobs"}"#);
    assert_eq!(r["error"]["code"], "catalog_unavailable", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("catalog rebuild"),
        "{r}"
    );
    assert!(d.log_text().contains("catalog:"), "the log says so");
    // Restored: rebuilt from the WAL, with the jobs run while it failed.
    std::fs::remove_file(&cat).unwrap();
    let r = c.call(r#"{"op":"catalog_rebuild"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["jobs"], 600, "{r}");
    let r = c.call(&json!({"op": "status", "id": during[0]}).to_string());
    assert_eq!(r["job"]["state"], "succeeded", "{r}");
    assert_eq!(stats(&d)["catalog"]["failing"], false);

    // A corrupt manifest, found at start: the daemon runs, the catalog says so.
    d.stop();
    std::fs::write(cat.join("manifest"), "{ garbage").unwrap();
    d.restart();
    let s = wait_stats(&d, Duration::from_secs(30), |s| {
        s["catalog"]["failing"] == true
    });
    assert!(
        s["catalog"]["last_error"]
            .as_str()
            .unwrap()
            .contains("manifest"),
        "{s}"
    );
    let mut c = d.conn();
    let id = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    c.wait_state(id, "succeeded");
    // The offline rebuild refuses while the daemon runs; the daemon's does it.
    let (st, _, err) = offline_rebuild(&d);
    assert!(!st.success() && err.contains("a daemon runs"), "{err}");
    let sock = d.socket();
    let (st, text, err) = cli(&["catalog", "rebuild", "--socket", sock.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(text.contains("601 jobs"), "{text}");
    let r = c.call(&json!({"op": "status", "id": first[0]}).to_string());
    assert_eq!(r["job"]["state"], "succeeded", "{r}");
    // Offline, with the daemon stopped: the same answers.
    let live_built = all_jobs(&d);
    d.stop();
    let (st, text, err) = offline_rebuild(&d);
    assert!(st.success(), "{err}");
    assert!(text.contains("601 jobs"), "{text}");
    d.restart();
    assert_eq!(all_jobs(&d), live_built);
}

#[test]
fn an_offline_rebuild_after_checkpoints_released_segments_reads_the_whole_log() {
    // wal/ no longer starts at LSN 1 (checkpoints moved its first segments to the archive): the
    // rebuild still reads every archived segment, every sealed one and the current one.
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(
        &cfg,
        "segment_size_mib = 1\ncheckpoint_after_mib = 1\nhistory_limit = 10\n",
    )
    .unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let pad = "x".repeat(400);
    let mut ids = noops_of(
        &d,
        6000,
        200,
        json!({"queue": "default", "kind": "noop", "payload": {"pad": pad}}),
    );
    d.wait_idle(Duration::from_secs(60));
    wait_stats(&d, Duration::from_secs(60), |s| {
        s["wal"]["checkpoint"]["released"].as_u64().unwrap() >= 2
    });
    // And a few in the current segment.
    let mut c = d.conn();
    for _ in 0..5 {
        ids.push(c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#));
    }
    c.wait_state(*ids.last().unwrap(), "succeeded");
    d.stop();
    let (st, text, err) = offline_rebuild(&d);
    assert!(st.success(), "{err}");
    assert!(text.contains(&format!("{} jobs", ids.len())), "{text}");
    // The daemon, started on the rebuilt catalog, knows every one of them.
    d.restart();
    let mut c = d.conn();
    for &id in ids.iter().step_by(97).chain(ids.last()) {
        let r = c.call(&json!({"op": "status", "id": id}).to_string());
        assert_eq!(r["job"]["state"], "succeeded", "job {id}: {r}");
    }
    d.stop();
}

#[test]
fn a_stalled_catalog_is_never_awaited_on_the_submit_path() {
    use duejob::{JobSpec, Runtime};
    let dir = tempdir();
    let rt = Runtime::builder(dir.path().join("data"))
        .workers(2)
        .start()
        .unwrap();
    rt.catalog_hold(true).expect("the catalog is on");
    let spec = JobSpec::new("default", "noop", "{}");
    let ids: Vec<u64> = (0..2000).map(|_| rt.submit(&spec).unwrap().id).collect();
    let t = Instant::now();
    for &id in &ids {
        while rt.status(id).unwrap().unwrap().state != duejob::wire::State::Succeeded {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "job {id} did not run"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Every job acknowledged and run while the catalog applied nothing of them.
    let held = rt.catalog_hold(true).unwrap();
    assert!(held.lag_records >= 3 * 2000, "{held:?}");
    rt.catalog_hold(false);
    let t = Instant::now();
    while rt.catalog_hold(false).unwrap().lag_records > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the catalog never caught up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let q = duejob::catalog::Query {
        limit: 10_000,
        ..Default::default()
    };
    let (jobs, more) = rt.jobs(&q).unwrap();
    assert_eq!((jobs.len(), more), (2000, false));
    rt.shutdown();
}

#[test]
fn a_damaged_archived_segment_is_read_past_loudly_and_the_catalog_goes_on() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    let base = "segment_size_mib = 1\ncheckpoint_after_mib = 1\nhistory_limit = 10\n";
    std::fs::write(&cfg, format!("{base}catalog = false\n")).unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--config", cfg.to_str().unwrap()]);
    // Several segments of finished jobs, released to the archive by checkpoints.
    let pad = "x".repeat(400);
    let ids = noops_of(
        &d,
        6000,
        200,
        json!({"queue": "default", "kind": "noop", "payload": {"pad": pad}}),
    );
    d.wait_idle(Duration::from_secs(60));
    wait_stats(&d, Duration::from_secs(60), |s| {
        s["wal"]["checkpoint"]["released"].as_u64().unwrap() >= 2
    });
    d.stop();
    // One flipped byte in the body of segment 1's first record (header 40 bytes, record header
    // 20): the submit of the first job.
    let seg = d.data().join("archive").join("00000000000000000001.wal");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[62] ^= 0x5a;
    std::fs::write(&seg, bytes).unwrap();
    // Segment 2 zeroed whole (its size kept): nothing in it checks out.
    let seg2 = d.data().join("archive").join("00000000000000000002.wal");
    let len = std::fs::metadata(&seg2).unwrap().len() as usize;
    std::fs::write(&seg2, vec![0u8; len]).unwrap();
    // A catalog built from scratch meets the damage: it counts it, logs it, reads on.
    std::fs::write(&cfg, base).unwrap();
    d.restart();
    let s = wait_stats(&d, Duration::from_secs(60), |s| {
        s["catalog"]["lag_records"] == 0 && s["catalog"]["jobs_added"].as_u64() > Some(0)
    });
    assert_eq!(s["catalog"]["damage_skipped"], 2, "{s}");
    assert_eq!(s["catalog"]["failing"], false, "{s}");
    let log = d.log_text();
    assert!(
        log.contains("00000000000000000001.wal is damaged at offset 40"),
        "{log}"
    );
    assert!(
        log.contains("00000000000000000002.wal is damaged at offset 0")
            && log.contains("going on with segment 3"),
        "{log}"
    );
    // The first job's submit is lost to the history, and segment 2's records; the jobs of the
    // segments after it are there, finished.
    let mut c = d.conn();
    let r = c.call(&json!({"op": "status", "id": ids[0]}).to_string());
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    let r = c.call(&json!({"op": "status", "id": ids[1]}).to_string());
    assert_eq!(r["job"]["state"], "succeeded", "{r}");
    for &id in &ids[ids.len() - 500..] {
        let r = c.call(&json!({"op": "status", "id": id}).to_string());
        assert_eq!(r["job"]["state"], "succeeded", "job {id}: {r}");
    }
    // The daemon's own jobs never needed the archive.
    let id = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    c.wait_state(id, "succeeded");
    d.stop();
}

#[test]
fn a_replay_of_many_chunks_selects_each_job_of_the_window_once_and_never_its_own() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let n = 2000; // eight chunks
    noops(&d, n);
    d.wait_idle(Duration::from_secs(60));
    let caught_up = || {
        wait_stats(&d, Duration::from_secs(60), |s| {
            s["catalog"]["lag_records"] == 0
        })
    };
    caught_up();
    // The window reaches into the future: the replay's own jobs, submitted while it reads the
    // window, are not part of it.
    let r = replay(&d, json!({}));
    let brief = json!([r["selected"], r["enqueued"], r["skipped"]]);
    assert_eq!(
        brief,
        json!([n, n, {"live": 0, "duplicate": 0, "payload_unavailable": 0, "refused": 0}])
    );
    let ids: Vec<u64> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), n);
    d.wait_idle(Duration::from_secs(60));
    caught_up();
    // Oldest first: the replays' ids follow their originals' order.
    let jobs = all_jobs(&d);
    let mut of: Vec<(u64, u64)> = jobs
        .iter()
        .filter_map(|j| Some((j["id"].as_u64()?, j["replay_of"].as_u64()?)))
        .collect();
    of.sort_unstable();
    assert!(of.windows(2).all(|w| w[0].1 < w[1].1), "replays in order");
    let r = replay(&d, json!({"dry_run": true}));
    assert_eq!(r["selected"], 2 * n, "{r}");
    assert_eq!(r["enqueued"], 0, "{r}");
    assert_eq!(r["skipped"]["duplicate"], 2 * n, "{r}");
}

/// Issue 15: the catalog flushed (sled flush, manifest write, two fsyncs) each time it caught up,
/// so under a lone client it fsynced after nearly every record, on the disk the WAL's own
/// fdatasync waits for. Now it flushes at most once a second whatever the load.
#[test]
fn a_caught_up_catalog_does_not_flush_after_every_record_of_a_lone_client() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &[]);
    let mut c = d.conn();
    let started = Instant::now();
    let mut last = 0;
    for _ in 0..40 {
        last = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
        // Longer than the catalog's idle wait: it catches up between two submits.
        std::thread::sleep(Duration::from_millis(30));
    }
    // Caught up with the last one (it holds the job): the catalog saw every record.
    let s = wait_stats(&d, Duration::from_secs(60), |s| {
        s["catalog"]["lag_records"] == 0 && s["catalog"]["jobs_added"].as_u64().unwrap() >= 40
    });
    let secs = started.elapsed().as_secs_f64();
    let flushes = s["catalog"]["flushes"].as_u64().unwrap();
    assert!(
        (flushes as f64) <= secs + 2.0,
        "{flushes} flushes in {secs:.1}s for 40 lone submits (job {last}): {s}"
    );
}
