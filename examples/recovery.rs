//! Recovery time: fill a WAL with N pending jobs (200-byte payloads, delayed so they stay
//! pending), optionally after M jobs of history run to completion first, stop, and time how long
//! a restart takes until it accepts again; report RSS and WAL bytes per job.
//!
//! ```text
//! cargo run --release --example recovery -- 1000000                      # 1M pending
//! cargo run --release --example recovery -- 1000000 --history 10000000   # the same after 10M done
//! cargo run --release --example recovery -- 1000000 --keep DIR           # fill DIR, keep it
//! cargo run --release --example recovery -- 1000000 --recover DIR        # restart on DIR
//! ```
//!
//! The restart runs in a fresh process, so nothing of the fill is counted. With `--history`, the
//! jobs of the history run through the daemon's own workers (no-op kind) with checkpoints on as
//! by default, so the log the restart reads is the one a long-running daemon leaves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use duejob::wire::State;
use duejob::{Config, JobSpec, Runtime};

#[derive(Parser, Debug)]
struct Args {
    /// Pending jobs.
    #[arg(default_value_t = 100_000)]
    pending: u64,
    /// Jobs run to completion before the pending ones are submitted.
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// Fill this directory and keep it (no restart).
    #[arg(long, conflicts_with = "recover")]
    keep: Option<PathBuf>,
    /// Only restart on this directory (filled by `--keep`).
    #[arg(long)]
    recover: Option<PathBuf>,
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn dir_bytes(dir: &Path) -> (u64, usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(b, n), m| (b + m.len(), n + 1))
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let _ = env_logger::try_init();
    let a = Args::parse();
    if let Some(dir) = &a.recover {
        return recover(dir, a.pending);
    }
    let tmp = tempfile::Builder::new()
        .prefix("duejob-recovery-")
        .tempdir()?;
    let dir = a.keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    fill(&dir, a.history, a.pending)?;
    if a.keep.is_some() {
        return Ok(());
    }
    // Measure the restart in a fresh process, so nothing of the fill run is counted.
    let status = std::process::Command::new(std::env::current_exe()?)
        .args([&a.pending.to_string(), "--recover", dir.to_str().unwrap()])
        .status()?;
    assert!(status.success());
    Ok(())
}

/// Sends `n` copies of `spec` in groups of 10,000, each waited for.
fn append(rt: &Runtime, spec: &JobSpec<'_>, n: u64) -> Res<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(10_000);
        let (_, rx) = rt.append_specs(&vec![spec.clone(); k as usize])?;
        if let Some(f) = rx.recv()?.failure {
            return Err(f.error.to_string().into());
        }
        left -= k;
    }
    Ok(())
}

fn fill(dir: &Path, history: u64, pending: u64) -> Res<()> {
    let cfg = Config::with_workers(4);
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(190));
    assert_eq!(payload.len(), 200);
    let rt = Runtime::builder(dir).config(cfg).start()?;
    if history > 0 {
        let t = Instant::now();
        let spec = JobSpec::new("bulk", "noop", &payload);
        let mut sent = 0;
        let mut last = Instant::now();
        while sent < history {
            let k = (history - sent).min(100_000);
            append(&rt, &spec, k)?;
            sent += k;
            // Keep at most ~300k jobs waiting: the history is run, not queued.
            loop {
                let done = rt.stats()?.sched.total(State::Succeeded);
                if done + 300_000 >= sent || done == history {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if last.elapsed() >= Duration::from_secs(10) {
                last = Instant::now();
                let (b, n) = dir_bytes(&dir.join("wal"));
                eprintln!(
                    "  history: {sent} of {history} submitted after {:.0} s; wal/ {n} files, {} MB",
                    t.elapsed().as_secs_f64(),
                    b >> 20
                );
            }
        }
        while rt.stats()?.sched.total(State::Succeeded) < history {
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = rt.stats()?.wal.checkpoint;
        println!(
            "history: {history} jobs run in {:.1} s; {} checkpoints, {} segments released",
            t.elapsed().as_secs_f64(),
            s.checkpoints,
            s.released
        );
    }
    let spec = JobSpec {
        delay_ms: Some(24 * 3_600_000),
        ..JobSpec::new("bulk", "noop", &payload)
    };
    append(&rt, &spec, pending)?;
    rt.shutdown();
    let storage = duejob::wal::io::FileStorage::new(dir.join("wal"));
    let ckpt = duejob::checkpoint::summary(&storage)?;
    let scan = duejob::wal::reader::read_log_after(
        &storage,
        ckpt.as_ref()
            .map(|c| c.after())
            .unwrap_or(duejob::wal::reader::After::START),
        &mut |_| Ok(()),
    )?;
    let tail: u64 = scan.segments.iter().map(|s| s.end).sum();
    let (wal, files) = dir_bytes(&dir.join("wal"));
    let (archive, archived) = dir_bytes(&dir.join("archive"));
    println!(
        "WAL: {:.0} bytes per pending 200-byte job; wal/ {files} files, {} MB (checkpoint {} MB \
         of {} live jobs, tail {} MB in {} segments); archive {archived} segments, {} MB",
        (ckpt.as_ref().map_or(0, |c| c.bytes) + tail) as f64 / pending.max(1) as f64,
        wal >> 20,
        ckpt.as_ref().map_or(0, |c| c.bytes) >> 20,
        ckpt.as_ref().map_or(0, |c| c.jobs),
        tail >> 20,
        scan.segments.len(),
        archive >> 20
    );
    Ok(())
}

fn recover(dir: &Path, n: u64) -> Res<()> {
    let cfg = Config::with_workers(4);
    let rss0 = rss_bytes();
    let t = Instant::now();
    let rt = Runtime::builder(dir).config(cfg).start()?;
    // Accepting again: a submit is acknowledged (the dispatcher may still be restoring).
    rt.submit(&JobSpec::new("notifications", "noop", "{}"))?;
    let accepting = t.elapsed();
    // Fully restored: `stats` is answered by the dispatcher once its state is rebuilt.
    let stats = rt.stats()?;
    let restored = t.elapsed();
    let rss = rss_bytes().saturating_sub(rss0);
    let used = stats.sched.queues["bulk"].count(State::Scheduled);
    println!(
        "{n} pending jobs (200-byte payloads): accepting again after {:.0} ms, fully restored after {:.0} ms; RSS +{:.0} bytes/job ({:.0} beyond the payload); {} recovered",
        accepting.as_secs_f64() * 1000.0,
        restored.as_secs_f64() * 1000.0,
        rss as f64 / n as f64,
        rss as f64 / n as f64 - 200.0,
        used
    );
    rt.shutdown_within(Duration::ZERO);
    Ok(())
}
