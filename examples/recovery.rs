//! Recovery time: fill a WAL with N pending jobs (200-byte payloads, delayed so they stay
//! pending), stop, and time how long a restart takes until it accepts again; report RSS and WAL
//! bytes per job.
//!
//! `cargo run --release --example recovery -- 100000`

use std::time::Instant;

use duejob::{Config, JobSpec, Runtime};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = env_logger::try_init();
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--recover" {
        return recover(std::path::Path::new(&args[2]), args[3].parse()?);
    }
    let n: u64 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    // `recovery N --keep DIR`: fill DIR and keep it (to profile `recovery --recover DIR N`).
    let kept = (args.len() == 4 && args[2] == "--keep").then(|| std::path::PathBuf::from(&args[3]));
    let tmp = tempfile::Builder::new()
        .prefix("duejob-recovery-")
        .tempdir()?;
    let dir = kept.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let cfg = Config::with_workers(4);
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(190));
    assert_eq!(payload.len(), 200);
    {
        let rt = Runtime::builder(&dir).config(cfg.clone()).start()?;
        let spec = JobSpec {
            delay_ms: Some(24 * 3_600_000),
            ..JobSpec::new("bulk", "noop", &payload)
        };
        let mut left = n;
        while left > 0 {
            let k = left.min(10_000);
            let (_, rx) = rt.append_specs(&vec![spec.clone(); k as usize])?;
            if let Some(f) = rx.recv()?.failure {
                return Err(f.error.to_string().into());
            }
            left -= k;
        }
        rt.shutdown();
    }
    let storage = duejob::wal::io::FileStorage::new(dir.join("wal"));
    let scan = duejob::wal::reader::read_log(&storage, &mut |_| Ok(()))?;
    let wal_bytes: u64 = scan.segments.iter().map(|s| s.end).sum();
    println!(
        "WAL: {:.0} bytes per 200-byte job ({} segments)",
        wal_bytes as f64 / n as f64,
        scan.segments.len()
    );
    if kept.is_some() {
        return Ok(());
    }
    // Measure the restart in a fresh process, so nothing of the fill run is counted.
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["--recover", dir.to_str().unwrap(), &n.to_string()])
        .status()?;
    assert!(status.success());
    Ok(())
}

fn recover(dir: &std::path::Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
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
    let used = stats.sched.queues["bulk"].states[&duejob::wire::State::Scheduled];
    println!(
        "{n} pending jobs (200-byte payloads): accepting again after {:.0} ms, fully restored after {:.0} ms; RSS +{:.0} bytes/job ({:.0} beyond the payload); {} recovered",
        accepting.as_secs_f64() * 1000.0,
        restored.as_secs_f64() * 1000.0,
        rss as f64 / n as f64,
        rss as f64 / n as f64 - 200.0,
        used
    );
    rt.shutdown_within(std::time::Duration::ZERO);
    Ok(())
}
