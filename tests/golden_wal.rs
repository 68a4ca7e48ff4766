//! Golden WAL segments lock the on-disk format: `tests/golden/v1/` was written by format version 1
//! and must keep reading to the same records, and today's writer must produce the same bytes.
//! `tests/golden/v1-all/` holds every record type of version 1, those added later included
//! (`retry`, `revive`, `purge`, the `sync` mark, the `TimedOut` outcome), and beside it a
//! checkpoint (format version 1) of those records and two live jobs. `tests/golden/v1-more/`
//! holds the types added after that: `replay` (9) and `queue` (10).
//! Regenerate (only when deliberately changing the format, with a new version number):
//! `cargo test --test golden_wal -- --ignored`.

use std::path::PathBuf;
use std::sync::Arc;

use duejob::wal::appender::Appender;
use duejob::wal::io::{FileStorage, MemStorage};
use duejob::wal::reader::read_log;
use duejob::wal::record::{
    state_code, Cancel, Finish, JobEvent, Outcome, QueueSettings, Record, Replay, Retry, Start,
    Submit, SyncMark, SCHEMA,
};

const SEG: &str = "00000000000000000001.wal";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1/wal")
}

fn golden_all_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1-all/wal")
}

/// Every record type, in a plausible order: the first set, then a retry, a revive, a purge and
/// a sync mark.
fn all_records() -> Vec<Record<'static>> {
    let t = 1_764_000_000_000;
    let mut v = records();
    v.push(Record::Retry(Retry {
        id: 4,
        attempt: 1,
        at: t + 12,
        retry_at: t + 1012,
        outcome: Outcome::TimedOut {
            reason: "timed out after 200 ms; process group killed".into(),
            output_tail: "half done\n".into(),
        },
    }));
    v.push(Record::Revive(JobEvent { id: 3, at: t + 13 }));
    v.push(Record::Purge(JobEvent { id: 5, at: t + 14 }));
    v.push(Record::Sync(SyncMark {
        synced_lsn: 9,
        at: t + 15,
    }));
    v
}

/// The segment today's writer produces for `recs`.
fn written(recs: Vec<Record<'static>>) -> Vec<u8> {
    let mem = MemStorage::new();
    let scan = read_log(&mem, &mut |_| Ok(())).unwrap();
    let mut a = Appender::open(Arc::new(mem.clone()), &scan, 0, Arc::default()).unwrap();
    for r in recs {
        let mut body = Vec::new();
        r.encode_into(&mut body);
        a.push(r.rtype(), SCHEMA, &body).unwrap();
    }
    a.write().unwrap();
    a.sync().unwrap();
    mem.file_bytes(SEG).unwrap()
}

fn records() -> Vec<Record<'static>> {
    let t = 1_764_000_000_000;
    vec![
        Record::Submit(Submit {
            id: 1,
            queue: "notifications".into(),
            kind: "exec".into(),
            payload: r#"{"argv":["echo","hi"]}"#.into(),
            key: None,
            submitted_at: t,
            deadline: t + 30_000,
            run_at: None,
            max_attempts: 1,
            timeout_ms: Some(5000),
        }),
        Record::Submit(Submit {
            id: 2,
            queue: "bulk".into(),
            kind: "sleep".into(),
            payload: r#"{"ms":10}"#.into(),
            key: Some("sync-2026-11".into()),
            submitted_at: t + 1,
            deadline: t + 7_200_001,
            run_at: Some(t + 3_600_001),
            max_attempts: 3,
            timeout_ms: None,
        }),
        Record::Start(Start {
            id: 1,
            attempt: 1,
            at: t + 2,
        }),
        Record::Finish(Finish {
            id: 1,
            attempt: 1,
            at: t + 9,
            state: state_code::SUCCEEDED,
            outcome: Outcome::Succeeded,
        }),
        Record::Cancel(Cancel { id: 2, at: t + 10 }),
        Record::Finish(Finish {
            id: 3,
            attempt: 2,
            at: t + 11,
            state: state_code::DEAD,
            outcome: Outcome::Failed {
                reason: "exited with status 4".into(),
                exit_code: Some(4),
                output_tail: "oops\n".into(),
            },
        }),
    ]
}

/// The segment today's writer produces for [`records`].
fn written_today() -> Vec<u8> {
    written(records())
}

#[test]
fn golden_v1_segment_still_reads() {
    let storage = FileStorage::new(golden_dir());
    let mut got = Vec::new();
    let scan = read_log(&storage, &mut |r| {
        got.push((r.lsn, r.record.clone().into_owned()));
        Ok(())
    })
    .expect("golden segment reads");
    let want: Vec<(u64, Record<'static>)> = records()
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i as u64 + 1, r))
        .collect();
    assert_eq!(got, want);
    assert_eq!(scan.next_lsn, 7);
    assert!(scan.torn_tail().is_none());
}

#[test]
fn todays_writer_produces_the_golden_bytes() {
    let golden = std::fs::read(golden_dir().join(SEG)).unwrap();
    assert_eq!(
        written_today(),
        golden,
        "the on-disk format changed: bump FORMAT_VERSION and add a new golden set"
    );
}

#[test]
fn golden_v1_segment_with_every_record_type_reads_and_is_what_todays_writer_writes() {
    let storage = FileStorage::new(golden_all_dir());
    let mut got = Vec::new();
    let scan = read_log(&storage, &mut |r| {
        got.push((r.lsn, r.record.clone().into_owned()));
        Ok(())
    })
    .expect("golden segment reads");
    let want: Vec<(u64, Record<'static>)> = all_records()
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i as u64 + 1, r))
        .collect();
    assert_eq!(got, want);
    assert_eq!(scan.marked_lsn, 9);
    let golden = std::fs::read(golden_all_dir().join(SEG)).unwrap();
    assert_eq!(written(all_records()), golden, "the on-disk format changed");
}

fn golden_more_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1-more/wal")
}

/// The record types added after `v1-all`.
fn more_records() -> Vec<Record<'static>> {
    let t = 1_764_000_000_000;
    vec![
        Record::Replay(Replay {
            at: t,
            since: t - 3_600_000,
            until: t - 60_000,
            queue: Some("notifications".into()),
            kind: None,
            states: vec![5],
            selected: 12,
            enqueued: 9,
            skipped_live: 1,
            skipped_duplicate: 2,
            skipped_unavailable: 0,
            first_id: 100,
            last_id: 108,
        }),
        Record::Queue(QueueSettings {
            at: t + 1,
            queue: "bulk".into(),
            due_in_ms: Some(7_200_000),
            max_workers: Some(2),
            reserved: None,
            lend_limit_ms: None,
            paused_until: Some(u64::MAX),
        }),
    ]
}

#[test]
fn golden_segment_of_the_later_record_types_reads_and_is_what_todays_writer_writes() {
    let storage = FileStorage::new(golden_more_dir());
    let mut got = Vec::new();
    read_log(&storage, &mut |r| {
        got.push(r.record.clone().into_owned());
        Ok(())
    })
    .expect("golden segment reads");
    assert_eq!(got, more_records());
    let golden = std::fs::read(golden_more_dir().join(SEG)).unwrap();
    assert_eq!(
        written(more_records()),
        golden,
        "the on-disk format changed"
    );
}

#[test]
#[ignore = "regenerates the golden files"]
fn regenerate() {
    std::fs::create_dir_all(golden_more_dir()).unwrap();
    std::fs::write(golden_more_dir().join(SEG), written(more_records())).unwrap();
    std::fs::create_dir_all(golden_dir()).unwrap();
    std::fs::write(golden_dir().join(SEG), written_today()).unwrap();
    std::fs::create_dir_all(golden_all_dir()).unwrap();
    std::fs::write(golden_all_dir().join(SEG), written(all_records())).unwrap();
    std::fs::write(golden_checkpoint(), checkpoint_today()).unwrap();
}

/// `tests/golden/v1-all/checkpoint`: a checkpoint of [`checkpoint_records`] (kept beside `wal/`,
/// not in it, where it would cover the golden segment).
fn golden_checkpoint() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1-all/checkpoint")
}

/// Every record type, then two jobs that stay live: one delayed by 30 days with a key, one
/// started.
fn checkpoint_records() -> Vec<Record<'static>> {
    let t = 1_764_000_000_000;
    let mut v = all_records();
    v.push(Record::Submit(Submit {
        id: 6,
        queue: "bulk".into(),
        kind: "exec".into(),
        payload: r#"{"argv":["./invoice.sh"]}"#.into(),
        key: Some("monthly-invoice".into()),
        submitted_at: t + 16,
        deadline: t + 2_595_600_016,
        run_at: Some(t + 2_592_000_016),
        max_attempts: 5,
        timeout_ms: Some(60_000),
    }));
    v.push(Record::Submit(Submit {
        id: 7,
        queue: "default".into(),
        kind: "noop".into(),
        payload: "{}".into(),
        key: None,
        submitted_at: t + 17,
        deadline: t + 300_017,
        run_at: None,
        max_attempts: 3,
        timeout_ms: None,
    }));
    v.push(Record::Start(Start {
        id: 7,
        attempt: 1,
        at: t + 18,
    }));
    v
}

/// The checkpoint today's code writes of [`checkpoint_records`]: folded through the one state
/// machine, at a fixed time, with a history of 2 and keys kept a year.
fn checkpoint_today() -> Vec<u8> {
    use duejob::checkpoint::file::{self, Header};
    use duejob::checkpoint::fold::Fold;
    use duejob::wal::keys::KeyIndex;
    let t = 1_764_000_000_000;
    let seg = tempfile::tempdir().unwrap();
    std::fs::write(seg.path().join(SEG), written(checkpoint_records())).unwrap();
    let keys = KeyIndex::new(365 * 86_400_000, 100);
    let mut fold = Fold::new(keys, 2, t + 100, file::decode_done_interned);
    let mut last = 0;
    read_log(&FileStorage::new(seg.path()), &mut |r| {
        fold.apply(r);
        last = r.lsn;
        Ok(())
    })
    .unwrap();
    let folded = fold.split();
    let header = Header {
        covered_seq: 1,
        covered_lsn: last,
        next_id: folded.max_id + 1,
        created_at: t + 100,
        job_bytes: 0,
    };
    let mem = MemStorage::new();
    file::write(&mem, &header, &folded).unwrap();
    mem.file_bytes("checkpoint").unwrap()
}

#[test]
fn the_golden_checkpoint_reads_and_todays_writer_produces_its_bytes() {
    use duejob::checkpoint::file::{self, Entry};
    let golden = std::fs::read(golden_checkpoint()).unwrap();
    assert_eq!(
        checkpoint_today(),
        golden,
        "the checkpoint format changed: bump its version and keep reading this one"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("checkpoint"), &golden).unwrap();
    let (mut jobs, mut done, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    let read = file::read(
        &FileStorage::new(dir.path()),
        &mut |n: &str| -> Arc<str> { n.into() },
        &mut |e| {
            match e {
                Entry::Job(j) => jobs.push(j.id),
                Entry::Done { id, body } => {
                    let j = file::decode_done(body, &mut |n: &str| n.into())?;
                    assert_eq!(j.id, id);
                    done.push(id);
                }
                Entry::Key(k, e) => keys.push((k.to_string(), e.id)),
                Entry::Queue(q) => panic!("the golden log changes no queue: {q:?}"),
            }
            Ok(())
        },
    )
    .unwrap()
    .expect("a checkpoint");
    assert_eq!(read.header.covered_seq, 1);
    assert_eq!(read.header.covered_lsn, 13);
    assert_eq!(read.header.next_id, 8);
    // 6 and 7 are live (scheduled, running); 1 succeeded and 2 was cancelled: the history of 2;
    // the records of 3, 4 and 5 name jobs never submitted, and change nothing.
    assert_eq!(jobs, vec![6, 7]);
    assert_eq!(done, vec![1, 2]);
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("monthly-invoice".to_string(), 6),
            ("sync-2026-11".to_string(), 2)
        ]
    );
    assert_eq!((read.end.jobs, read.end.done, read.end.keys), (2, 2, 2));
}
