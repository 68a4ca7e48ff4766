//! Cut the power at every write/sync point of a short workload (through the WAL's storage seam);
//! recovery must yield exactly the acknowledged prefix, and with torn (partly persisted) writes
//! at least that prefix plus possibly the one in-flight job, never anything else, never an error.

use std::sync::Arc;

use duejob::config::Config;
use duejob::recovery::recover;
use duejob::wal::io::{Fault, MemStorage, Storage};
use duejob::{JobSpec, Runtime};

const JOBS: u64 = 12;

fn cfg() -> Config {
    let mut c = Config::with_workers(2);
    c.segment_size = 64 << 10;
    c
}

/// Submits JOBS delayed jobs one at a time (delayed, so no start/finish records interleave) and
/// returns the ids acknowledged.
fn workload(storage: &MemStorage) -> Vec<u64> {
    let rt = match Runtime::builder("/nonexistent-unused")
        .config(cfg())
        .storage(Arc::new(storage.clone()))
        .start()
    {
        Ok(rt) => rt,
        Err(_) => return Vec::new(), // the cut hit segment creation: nothing can be acknowledged
    };
    let mut acked = Vec::new();
    for _ in 0..JOBS {
        let spec = JobSpec {
            delay_ms: Some(3_600_000),
            ..JobSpec::new("default", "noop", "{}")
        };
        if let Ok(s) = rt.submit(&spec) {
            acked.push(s.id);
        }
    }
    rt.shutdown_within(std::time::Duration::ZERO);
    acked
}

fn recovered_ids(image: &MemStorage) -> Vec<u64> {
    let rec = recover(image, &cfg(), &duejob::handlers::Kinds::builtin())
        .unwrap_or_else(|e| panic!("recovery failed: {e}"));
    let mut ids: Vec<u64> = rec.recovered.live.iter().map(|l| l.job.id).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn recovery_yields_exactly_the_acknowledged_prefix_at_every_cut() {
    // Count the operations of an uninterrupted run.
    let clean = MemStorage::new();
    let all = workload(&clean);
    assert_eq!(all, (1..=JOBS).collect::<Vec<_>>());
    let total_ops = clean.ops();
    assert!(
        total_ops > 2 * JOBS,
        "expected a write and a sync per job, saw {total_ops} ops"
    );

    for cut in 0..=total_ops {
        let storage = MemStorage::with_fault(Fault::PowerCutAt(cut));
        let acked = workload(&storage);
        // Acknowledged jobs are a prefix: after the cut nothing more is acknowledged.
        assert_eq!(
            acked,
            (1..=acked.len() as u64).collect::<Vec<_>>(),
            "cut {cut}"
        );

        // Only synced bytes survive: exactly the acknowledged jobs come back.
        let image = storage.crash_image(0);
        assert_eq!(recovered_ids(&image), acked, "cut {cut}, synced bytes only");

        // Part of the unsynced write survives too: a torn tail, never an error, never a gap.
        for torn in [1usize, 7, 20, 33, 60, 4096] {
            let image = storage.crash_image(torn);
            let got = recovered_ids(&image);
            assert!(
                got.starts_with(&acked),
                "cut {cut} torn {torn}: lost acknowledged jobs: {got:?} vs {acked:?}"
            );
            assert!(
                got.len() <= acked.len() + 1,
                "cut {cut} torn {torn}: unexpected jobs {got:?}"
            );
            assert_eq!(
                got,
                (1..=got.len() as u64).collect::<Vec<_>>(),
                "cut {cut} torn {torn}"
            );
            // And the daemon starts on that image (the torn tail is truncated) and appends again.
            let rt = Runtime::builder("/nonexistent-unused")
                .config(cfg())
                .storage(Arc::new(image.clone()))
                .start()
                .unwrap_or_else(|e| panic!("cut {cut} torn {torn}: restart failed: {e}"));
            let s = rt
                .submit(&JobSpec {
                    delay_ms: Some(3_600_000),
                    ..JobSpec::new("default", "noop", "{}")
                })
                .unwrap();
            assert_eq!(s.id, got.len() as u64 + 1);
            rt.shutdown_within(std::time::Duration::ZERO);
            assert_eq!(recovered_ids(&image).len(), got.len() + 1);
            assert!(image.list().unwrap().iter().all(|n| n.ends_with(".wal")));
        }
    }
}

#[test]
fn a_failed_fsync_refuses_later_submits_with_a_clear_error() {
    let clean = MemStorage::new();
    let _ = workload(&clean);
    // Fail the 3rd job's sync with EIO (ops: 4 for segment creation, then write+sync per job).
    let storage = MemStorage::with_fault(Fault::IoErrorAt(4 + 2 * 2 + 1));
    let rt = Runtime::builder("/unused")
        .config(cfg())
        .storage(Arc::new(storage.clone()))
        .start()
        .unwrap();
    let spec = JobSpec {
        delay_ms: Some(3_600_000),
        ..JobSpec::new("default", "noop", "{}")
    };
    assert!(rt.submit(&spec).is_ok());
    assert!(rt.submit(&spec).is_ok());
    let e = rt.submit(&spec).unwrap_err();
    assert_eq!(e.code, "wal_failed", "{e}");
    // The storage works again, but the WAL must not trust it until restart.
    let e = rt.submit(&spec).unwrap_err();
    assert_eq!(e.code, "wal_failed");
    assert!(e.message.contains("restart"), "{}", e.message);
    rt.shutdown_within(std::time::Duration::ZERO);
}
