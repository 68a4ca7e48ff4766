//! Checkpoints and the archive: a power cut at every step of a checkpoint and of the release of
//! the segments it covers; a long-delayed job whose segment is released; an idle daemon that
//! releases its log on the age trigger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duejob::config::Config;
use duejob::recovery::recover;
use duejob::wal::io::{Fault, MemStorage, Storage};
use duejob::wire::DeadSelect;
use duejob::{JobSpec, Runtime};
use serde_json::Value;

use crate::common::{cli, tempdir, wait_stats, Daemon};

const DAY_MS: u64 = 86_400_000;

fn cfg(retention_zero: bool) -> Config {
    let mut c = Config::with_workers(2);
    // Small segments: the workload spans several, so a checkpoint releases some.
    c.segment_size = 8 << 10;
    c.checkpoint.auto = false;
    if retention_zero {
        c.checkpoint.archive_retention = Duration::ZERO;
    }
    c
}

/// What a run acknowledged: ids submitted (with their keys), ids cancelled.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Acked {
    submitted: Vec<(u64, String)>,
    cancelled: Vec<u64>,
    checkpointed: bool,
}

fn delayed(key: &str, days: u64) -> JobSpec<'_> {
    JobSpec {
        delay_ms: Some(days * DAY_MS),
        key: Some(key),
        ..JobSpec::new(
            "bulk",
            "noop",
            r#"{"pad":"................................................................"}"#,
        )
    }
}

/// Delayed jobs with keys (the first for 30 days), some cancelled (they finish: their records are
/// dead), a forced checkpoint, then more jobs. Delayed jobs never start, so the sequence of
/// storage operations is the same in every run.
fn workload(storage: &MemStorage, retention_zero: bool) -> Acked {
    let mut acked = Acked::default();
    let Ok(rt) = Runtime::builder("/nonexistent-unused")
        .config(cfg(retention_zero))
        .storage(Arc::new(storage.clone()))
        .start()
    else {
        return acked;
    };
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let days = if i == 0 { 30 } else { 1 };
        if let Ok(s) = rt.submit(&delayed(k, days)) {
            acked.submitted.push((s.id, k.clone()));
        }
        if i % 3 == 2 {
            if let Some(&(id, _)) = acked.submitted.last() {
                if rt.cancel(id).is_ok() {
                    acked.cancelled.push(id);
                }
            }
        }
    }
    acked.checkpointed = rt.checkpoint().is_ok();
    for k in ["after-1", "after-2"] {
        if let Ok(s) = rt.submit(&delayed(k, 1)) {
            acked.submitted.push((s.id, k.to_string()));
        }
    }
    rt.shutdown_within(Duration::ZERO);
    acked
}

/// Recovers `image` and checks it holds exactly what was acknowledged: the live jobs, the
/// cancelled ones, and every key.
fn check_image(image: &MemStorage, acked: &Acked, retention_zero: bool, what: &str) {
    let c = cfg(retention_zero);
    let mut rec = recover(image, &c, &duejob::handlers::Kinds::builtin())
        .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
    let mut live: Vec<u64> = rec.recovered.live.iter().map(|l| l.job.id).collect();
    live.sort_unstable();
    let mut want: Vec<u64> = acked
        .submitted
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !acked.cancelled.contains(id))
        .collect();
    want.sort_unstable();
    assert_eq!(live, want, "{what}: live jobs");
    let mut done: Vec<u64> = rec.recovered.done.get().iter().map(|d| d.id).collect();
    done.sort_unstable();
    assert_eq!(done, acked.cancelled, "{what}: cancelled jobs");
    let now = duejob::clock::now_ms();
    for (id, k) in &acked.submitted {
        let e = rec
            .keys
            .get(k, now)
            .unwrap_or_else(|| panic!("{what}: key {k} forgotten"));
        assert_eq!(e.id, *id, "{what}: key {k}");
    }
}

#[test]
fn power_cut_at_every_step_of_a_checkpoint_and_release_keeps_every_acknowledged_job_and_key() {
    for retention_zero in [false, true] {
        let clean = MemStorage::new();
        let all = workload(&clean, retention_zero);
        assert!(all.checkpointed);
        assert_eq!(all.submitted.len(), 42);
        // The checkpoint released segments: the log no longer starts at segment 1.
        let names = clean.list().unwrap();
        assert!(names.iter().any(|n| n == "checkpoint"), "{names:?}");
        assert!(
            !names.iter().any(|n| n == "00000000000000000001.wal"),
            "{names:?}"
        );
        let archived = clean.archive().unwrap().list().unwrap();
        assert_eq!(archived.is_empty(), retention_zero, "{archived:?}");
        check_image(&clean.crash_image(0), &all, retention_zero, "clean");
        let total = clean.ops();
        for cut in 0..=total {
            let storage = MemStorage::with_fault(Fault::PowerCutAt(cut));
            let acked = workload(&storage, retention_zero);
            let what = format!("retention 0: {retention_zero}, cut {cut}/{total}");
            check_image(&storage.crash_image(0), &acked, retention_zero, &what);
            // The daemon starts on the image, finishes any release the cut interrupted, and a
            // key submitted before the cut still deduplicates.
            let image = storage.crash_image(0);
            let rt = Runtime::builder("/nonexistent-unused")
                .config(cfg(retention_zero))
                .storage(Arc::new(image.clone()))
                .start()
                .unwrap_or_else(|e| panic!("{what}: restart failed: {e}"));
            if let Some((id, k)) = acked.submitted.first() {
                let s = rt.submit(&delayed(k, 1)).unwrap();
                assert!(s.duplicate && s.id == *id, "{what}: {s:?}");
            }
            rt.checkpoint()
                .unwrap_or_else(|e| panic!("{what}: checkpoint after restart: {e}"));
            rt.shutdown_within(Duration::ZERO);
            check_image(
                &image,
                &acked,
                retention_zero,
                &format!("{what}, restarted"),
            );
            // Only the checkpoint, the durable point and segments after it remain in wal/.
            for n in image.list().unwrap() {
                assert!(
                    n == "checkpoint" || n == "durable" || n.ends_with(".wal"),
                    "{what}: stray file {n}"
                );
            }
        }
    }
}

#[test]
fn a_dead_job_and_its_key_survive_a_checkpoint_and_it_can_still_be_retried() {
    let mem = MemStorage::new();
    let mut c = cfg(false);
    c.queues[1].max_attempts = 1;
    let start = || {
        Runtime::builder("/nonexistent-unused")
            .config(c.clone())
            .storage(Arc::new(mem.clone()))
            .register("fail", |_: &duejob::JobContext<'_>| {
                Err(duejob::JobError::new("no database"))
            })
            .start()
            .unwrap()
    };
    let rt = start();
    let spec = JobSpec {
        key: Some("once"),
        ..JobSpec::new("default", "fail", "{}")
    };
    let id = rt.submit(&spec).unwrap().id;
    let t = Instant::now();
    while rt.status(id).unwrap().unwrap().state != duejob::job::State::Dead {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
    }
    let taken = rt.checkpoint().unwrap();
    assert_eq!(taken.jobs, 1, "the dead job is live: it can be revived");
    assert_eq!(taken.keys, 1);
    rt.shutdown();
    let rt = start();
    assert!(rt.submit(&spec).unwrap().duplicate);
    let info = rt.status(id).unwrap().unwrap();
    assert_eq!(info.state, duejob::job::State::Dead);
    assert_eq!(info.attempts.len(), 1);
    assert_eq!(rt.dead_retry(&DeadSelect::one(id)).unwrap(), vec![id]);
    rt.shutdown();
}

fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".wal"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_job_delayed_for_30_days_is_carried_by_checkpoints_while_its_segment_is_released() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "segment_size_mib = 1\ncheckpoint_after_mib = 1\n").unwrap();
    let mut d = Daemon::start_in(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "--workers", "2"],
    );
    let mut c = d.conn();
    let month = c.submit(r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":2592000000,"key":"monthly-invoice"}"#);
    let soon = c.submit(r#"{"op":"submit","queue":"bulk","kind":"noop","delay_ms":4000}"#);
    // Short jobs through: several segments fill, checkpoints take them.
    let pad = "x".repeat(400);
    for chunk in 0..40 {
        let jobs: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    r#"{{"queue":"default","kind":"noop","payload":{{"n":{},"pad":"{pad}"}}}}"#,
                    chunk * 200 + i
                )
            })
            .collect();
        let v = c.call(&format!(
            r#"{{"op":"submit_batch","jobs":[{}]}}"#,
            jobs.join(",")
        ));
        assert_eq!(v["ok"], true, "{v}");
    }
    let s = wait_stats(&d, Duration::from_secs(60), |s| {
        s["wal"]["checkpoint"]["released"].as_u64().unwrap() >= 2
    });
    assert!(
        s["wal"]["checkpoint"]["checkpoints"].as_u64().unwrap() >= 1,
        "{s}"
    );
    let wal = segments(&d.data().join("wal"));
    assert!(
        !wal.contains(&"00000000000000000001.wal".to_string()),
        "segment 1 (the delayed job's submit) was released: {wal:?}"
    );
    assert!(segments(&d.data().join("archive")).contains(&"00000000000000000001.wal".to_string()));
    d.stop();
    d.restart();
    let mut c = d.conn();
    assert_eq!(c.status(month)["state"], "scheduled");
    let dup = c.call(r#"{"op":"submit","queue":"bulk","kind":"noop","key":"monthly-invoice"}"#);
    assert_eq!(
        (dup["id"].as_u64(), &dup["duplicate"]),
        (Some(month), &Value::Bool(true))
    );
    // The job delayed by seconds, whose submit was released too, runs at its time.
    c.wait_state(soon, "succeeded");
    d.stop();
    // `wal dump --job` shows the month-long job's history from the archive and the checkpoint.
    let data = d.data();
    let (st, out, err) = cli(&[
        "wal",
        "dump",
        "--json",
        "--job",
        &month.to_string(),
        data.to_str().unwrap(),
    ]);
    assert!(st.success(), "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["job"]["state"] == "scheduled"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "submit" && l["segment"] == 1),
        "{out}"
    );
    let (st, out, err) = cli(&["wal", "verify", data.to_str().unwrap()]);
    assert!(st.success(), "{out}{err}");
    let (st, out, err) = cli(&["wal", "inspect", "--json", data.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let ins: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ins["jobs_by_state"]["scheduled"], 1, "{out}");
    assert_eq!(ins["jobs_by_state"]["succeeded"], 8001, "{out}");
    assert!(ins["archive"]["segments"].as_u64().unwrap() >= 2, "{out}");
}

#[test]
fn an_idle_daemon_releases_its_old_segments_within_the_age_trigger() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "seal_after = \"1s\"\narchive_retention = \"0s\"\n").unwrap();
    let d = Daemon::start_in(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "--workers", "2"],
    );
    let mut c = d.conn();
    let ids: Vec<u64> = (0..5)
        .map(|_| c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#))
        .collect();
    for id in &ids {
        c.wait_state(*id, "succeeded");
    }
    // Nothing more arrives: the segment is sealed after 1 s, its records are all dead, and the
    // age trigger takes a checkpoint that releases it (deleted at once: retention 0s).
    // The catalog keeps it in the archive until it has read it, then it goes.
    let s = wait_stats(&d, Duration::from_secs(30), |s| {
        s["wal"]["checkpoint"]["released"].as_u64().unwrap() >= 1
            && s["wal"]["checkpoint"]["archive_segments"] == 0
    });
    assert_eq!(s["wal"]["checkpoint"]["archive_segments"], 0, "{s}");
    let wal = segments(&d.data().join("wal"));
    assert_eq!(wal.len(), 1, "{wal:?}");
    assert_ne!(wal[0], "00000000000000000001.wal");
    assert!(segments(&d.data().join("archive")).is_empty());
    // Finished jobs are still known after a restart (the checkpoint holds the history).
    drop(c);
    let mut d = d;
    d.stop();
    d.restart();
    let mut c = d.conn();
    for id in &ids {
        assert_eq!(c.status(*id)["state"], "succeeded");
    }
}
