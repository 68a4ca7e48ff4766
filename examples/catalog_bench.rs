//! The catalog's store alone: rows written as the catalog thread writes them (batches of 20,000
//! jobs, a flush and the manifest once a second), its rate, memory and bytes per job.
//!
//! cargo run --release --example catalog_bench -- 3000000

use std::sync::Arc;
use std::time::Instant;

use duejob::catalog::store::{Order, Row, Store};
use duejob::checkpoint::fold::FoldJob;
use duejob::job::machine::JobCore;
use duejob::wal::reader::TailPos;

fn rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("catalog")).unwrap();
    let (q, k): (Arc<str>, Arc<str>) = ("default".into(), "noop".into());
    let now = 1_796_600_000_000u64;
    let t0 = Instant::now();
    let mut last_flush = Instant::now();
    let mut id = 1;
    while id <= n {
        let rows: Vec<Row> = (id..(id + 20_000).min(n + 1))
            .map(|i| Row {
                job: FoldJob {
                    id: i,
                    queue: q.clone(),
                    kind: k.clone(),
                    payload: None,
                    key: None,
                    submitted_at: now + i / 50,
                    deadline: now + i / 50 + 300_000,
                    run_at: None,
                    max_attempts: 3,
                    timeout_ms: None,
                    core: JobCore::with_run_at(None),
                },
                last_lsn: 3 * i,
                payload_at: (1, 40 + i * 100),
                replay_of: None,
            })
            .collect();
        let refs: Vec<(u64, &Row, bool)> =
            rows.iter().map(|r| (now / 86_400_000, r, true)).collect();
        store.put(&refs).unwrap();
        id += rows.len() as u64;
        if last_flush.elapsed().as_secs_f64() >= 1.0 {
            store
                .flush(TailPos {
                    seq: 1,
                    offset: 0,
                    lsn: 3 * id,
                })
                .unwrap();
            last_flush = Instant::now();
        }
        if id % 500_000 < 20_000 {
            println!(
                "{id:>9} jobs  {:>6.0} jobs/s  RSS {} MiB",
                id as f64 / t0.elapsed().as_secs_f64(),
                rss_mib()
            );
        }
    }
    store
        .flush(TailPos {
            seq: 1,
            offset: 0,
            lsn: 3 * id,
        })
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    // Queries as `jobs` runs them: the newest 100; the newest 100 of a state no job is in (the
    // whole index is read); a one-minute window in the middle; `status` by id.
    let time = |what: &str, since: u64, until: u64, dead_only: bool| {
        let t = Instant::now();
        let (mut seen, mut kept) = (0u64, 0u64);
        store
            .scan(since, until, Order::NewestFirst, &mut |ix| {
                seen += 1;
                if !dead_only || ix.state == duejob::wire::State::Dead {
                    kept += 1;
                }
                kept < 100
            })
            .unwrap();
        println!(
            "  query {what}: {kept} jobs, {seen} index entries read in {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    };
    time("newest 100", 0, u64::MAX, false);
    time("newest 100 dead (none is)", 0, u64::MAX, true);
    let mid = now + n / 100;
    time("a minute's window", mid, mid + 60_000, false);
    let t = Instant::now();
    for i in (1..=n).step_by((n / 1000).max(1) as usize) {
        store.get(i).unwrap().unwrap();
    }
    println!(
        "  status (get by id): {:.1} µs each (1000 spread over the ids)",
        t.elapsed().as_secs_f64() * 1e6 / 1000.0
    );
    let bytes = store.disk_bytes();
    println!(
        "{n} jobs in {secs:.1} s: {:.0} jobs/s; {} MiB on disk ({:.0} bytes/job); RSS {} MiB",
        n as f64 / secs,
        bytes >> 20,
        bytes as f64 / n as f64,
        rss_mib()
    );
}
