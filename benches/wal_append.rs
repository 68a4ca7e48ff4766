//! WAL append throughput against the disk's own fdatasync rate, measured in the same run.
//!
//! `cargo bench --bench wal_append`
//!
//! Baseline: 200-byte appends with one fdatasync each (what a log without group commit does).
//! Then the appender with groups of 1, 16, 128 and 1024 records of 200-byte bodies, one write and
//! one fdatasync per group. Prints records/s and the ratio to the baseline.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duejob::wal::appender::Appender;
use duejob::wal::io::FileStorage;
use duejob::wal::reader::read_log;
use duejob::wal::record::{rtype, SCHEMA};

const RUN: Duration = Duration::from_secs(2);

fn baseline(dir: &std::path::Path) -> f64 {
    let mut f = std::fs::File::create(dir.join("baseline")).unwrap();
    let rec = [7u8; 200];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < RUN {
        f.write_all(&rec).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn grouped(dir: &std::path::Path, group: usize) -> (f64, f64) {
    let wal = dir.join(format!("wal-{group}"));
    std::fs::create_dir_all(&wal).unwrap();
    let storage = FileStorage::new(&wal);
    let scan = read_log(&storage, &mut |_| Ok(())).unwrap();
    let mut a = Appender::open(Arc::new(storage), &scan, 256 << 20, Arc::default()).unwrap();
    let body = [9u8; 200];
    let t = Instant::now();
    let mut n = 0u64;
    let mut groups = 0u64;
    while t.elapsed() < RUN {
        for _ in 0..group {
            a.push(rtype::CANCEL, SCHEMA, &body).unwrap();
        }
        a.write().unwrap();
        a.sync().unwrap();
        n += group as u64;
        groups += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    (n as f64 / secs, groups as f64 / secs)
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("duejob-bench-")
        .tempdir_in(".")
        .unwrap();
    let base = baseline(dir.path());
    println!("baseline: 200-byte append + fdatasync: {base:.0}/s");
    for g in [1usize, 16, 128, 1024] {
        let (rps, gps) = grouped(dir.path(), g);
        println!(
            "group commit, {g:>4} records/group: {rps:>9.0} records/s ({gps:.0} fdatasync/s), {:.1}x baseline",
            rps / base
        );
    }
}
