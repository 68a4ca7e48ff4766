//! Cut the power at every write/sync point of a short workload (through the WAL's storage seam);
//! recovery must yield exactly the acknowledged prefix, and with torn (partly persisted) writes
//! at least that prefix plus possibly the one in-flight job, never anything else, never an error.
//! Real disks also persist the sectors of unsynced writes out of order: a scrambled image (any
//! subset, any version of each sector written since the last sync) must recover too, with every
//! acknowledged job and nothing that was never submitted.

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
            assert!(image
                .list()
                .unwrap()
                .iter()
                .all(|n| n.ends_with(".wal") || n == duejob::wal::durable::FILE));
        }
    }
}

#[test]
fn a_failed_fsync_refuses_later_submits_with_a_clear_error() {
    let clean = MemStorage::new();
    let _ = workload(&clean);
    // Fail the 3rd job's sync with EIO (sync 0 creates the segment, then one sync per job).
    let storage = MemStorage::with_fault(Fault::SyncFailsAt(3));
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
    assert_eq!(e.code, duejob::wire::ErrorCode::WalFailed, "{e}");
    // The storage works again, but the WAL must not trust it until restart.
    let e = rt.submit(&spec).unwrap_err();
    assert_eq!(e.code, duejob::wire::ErrorCode::WalFailed);
    assert!(e.message.contains("restart"), "{}", e.message);
    rt.shutdown_within(std::time::Duration::ZERO);
}

/// Submits batches of delayed jobs with ~700-byte payloads (1, 3, 7, 2, 5, 1 jobs: groups that
/// span several 512-byte sectors, and segments of 16 KiB so that the log rotates), waiting for
/// each batch's acknowledgement. Returns (ids acknowledged, ids offered).
fn batch_workload(storage: &MemStorage) -> (Vec<u64>, Vec<u64>) {
    let mut c = cfg();
    c.segment_size = 16 << 10;
    let Ok(rt) = Runtime::builder("/nonexistent-unused")
        .config(c)
        .storage(Arc::new(storage.clone()))
        .start()
    else {
        return (Vec::new(), Vec::new());
    };
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(690));
    let (mut acked, mut offered) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for n in [1usize, 3, 7, 2, 5, 1] {
            let spec = JobSpec {
                delay_ms: Some(3_600_000 + round),
                ..JobSpec::new("bulk", "noop", &payload)
            };
            let Ok((ids, rx)) = rt.append_specs(&vec![spec; n]) else {
                continue;
            };
            offered.extend(&ids);
            if let Ok(ack) = rx.recv() {
                for (id, fate) in ids.into_iter().zip(ack.fates()) {
                    if matches!(fate, duejob::wal::commit::Fate::Recorded(_)) {
                        acked.push(id);
                    }
                }
            }
        }
    }
    rt.shutdown_within(std::time::Duration::ZERO);
    (acked, offered)
}

#[test]
fn recovery_never_refuses_and_never_loses_a_synced_record_when_unsynced_sectors_persist_in_any_order(
) {
    let clean = MemStorage::new();
    let (all, _) = batch_workload(&clean);
    assert_eq!(all.len(), 3 * 19);
    let total_ops = clean.ops();
    let mut images = 0;
    for cut in 0..=total_ops {
        let storage = MemStorage::with_fault(Fault::PowerCutAt(cut));
        let (acked, offered) = batch_workload(&storage);
        for seed in 0..6 {
            let image = storage.crash_image_scrambled(cut * 1000 + seed, 512);
            images += 1;
            let rec = recover(&image, &cfg(), &duejob::handlers::Kinds::builtin())
                .unwrap_or_else(|e| panic!("cut {cut} seed {seed}: recovery refused: {e}"));
            let got: std::collections::BTreeSet<u64> =
                rec.recovered.live.iter().map(|l| l.job.id).collect();
            for id in &acked {
                assert!(
                    got.contains(id),
                    "cut {cut} seed {seed}: lost acknowledged job {id}"
                );
            }
            for id in &got {
                assert!(
                    offered.contains(id),
                    "cut {cut} seed {seed}: job {id} from nowhere"
                );
            }
            // The daemon starts on the image (truncating whatever was torn) and appends again.
            let mut c = cfg();
            c.segment_size = 16 << 10;
            let rt = Runtime::builder("/nonexistent-unused")
                .config(c)
                .storage(Arc::new(image.clone()))
                .start()
                .unwrap_or_else(|e| panic!("cut {cut} seed {seed}: restart failed: {e}"));
            let s = rt
                .submit(&JobSpec {
                    delay_ms: Some(3_600_000),
                    ..JobSpec::new("default", "noop", "{}")
                })
                .unwrap();
            rt.shutdown_within(std::time::Duration::ZERO);
            let again = recover(&image, &cfg(), &duejob::handlers::Kinds::builtin())
                .unwrap_or_else(|e| panic!("cut {cut} seed {seed}: second recovery: {e}"));
            let ids: std::collections::BTreeSet<u64> =
                again.recovered.live.iter().map(|l| l.job.id).collect();
            assert!(
                ids.contains(&s.id) && got.is_subset(&ids),
                "cut {cut} seed {seed}"
            );
        }
    }
    assert!(images > 100, "only {images} images");
}
