//! Load generator for the socket protocol.
//!
//! ```text
//! cargo run --release --example loadgen -- --mode submit --conns 4 --window 100
//! cargo run --release --example loadgen -- --mode submit --conns 4 --window 4 --batch 100
//! cargo run --release --example loadgen -- --mode latency
//! cargo run --release --example loadgen -- --mode cycle --conns 4 --window 100
//! ```
//!
//! Without `--socket` it starts a daemon (same code as `duejob serve`) in a temp dir on this
//! machine. Modes:
//! - `submit`: durable submits only (jobs are delayed an hour, so nothing runs);
//! - `cycle`: submit no-op jobs and count them through dispatch, run and the recorded completion;
//! - `latency`: one connection, one request at a time (the jobs run, unless `--delayed`).
//!
//! Payloads are `--payload` bytes of JSON (default 200). Prints jobs/s and latency percentiles
//! (per request: from write to reply).
//!
//! For checkpoints (the daemon this starts): `--checkpoints off` turns the automatic ones off,
//! `--checkpoint-loop` forces one after another for the whole run (with `--preload N` pending
//! jobs, each rewrites them all), `--archive-retention 0s` deletes released segments at once,
//! `--rate R` paces the load at R jobs/s, and `--watch S` prints the size of `wal/` and of the
//! whole data directory every S seconds (and their maximum at the end):
//!
//! ```text
//! cargo run --release --example loadgen -- --mode cycle --rate 60000 --seconds 600 --watch 10 --archive-retention 0s
//! cargo run --release --example loadgen -- --mode latency --preload 1000000 --checkpoint-loop
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// submit, cycle or latency.
    #[arg(long, default_value = "submit")]
    mode: String,
    /// Connections.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// Jobs per request (0 or 1: single `submit`; more: `submit_batch`).
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Payload bytes per job.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Talk to this daemon instead of starting one.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Sync mode of the daemon this starts.
    #[arg(long, default_value = "always")]
    sync: String,
    /// Workers of the daemon this starts.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// In latency mode, delay the jobs an hour so that nothing runs (a pure submit, like a put
    /// nobody reserves).
    #[arg(long)]
    delayed: bool,
    /// Automatic checkpoints of the daemon this starts: on or off.
    #[arg(long, default_value = "on")]
    checkpoints: String,
    /// Force checkpoints one after another while the load runs.
    #[arg(long)]
    checkpoint_loop: bool,
    /// Pending (delayed) jobs submitted before the load starts.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// `archive_retention` of the daemon this starts (e.g. 0s).
    #[arg(long)]
    archive_retention: Option<String>,
    /// Jobs per second, all connections together (0: as fast as replies come).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// The catalog of the daemon this starts: on or off.
    #[arg(long, default_value = "on")]
    catalog: String,
    /// Print the size of wal/ and of the data directory every this many seconds.
    #[arg(long, default_value_t = 0.0)]
    watch: f64,
}

/// Bytes and files in `dir` (one level) and in everything under it.
fn du(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn request(a: &Args) -> String {
    let pad_len = a.payload.saturating_sub(r#"{"pad":""}"#.len());
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad_len));
    let delay = if a.mode == "submit" || a.delayed {
        r#","delay_ms":3600000"#
    } else {
        ""
    };
    let job = format!(r#"{{"queue":"bulk","kind":"noop","payload":{payload}{delay}}}"#);
    if a.batch > 1 {
        let jobs = vec![job; a.batch].join(",");
        format!("{{\"op\":\"submit_batch\",\"jobs\":[{jobs}]}}\n")
    } else {
        format!("{{\"op\":\"submit\",{}\n", &job[1..])
    }
}

struct Outcome {
    jobs: u64,
    lat: Histogram<u64>,
    errors: u64,
}

/// Sends `line` with up to `window` requests in flight until `until`; with `per_sec` > 0, no
/// faster than that many requests per second.
fn drive(
    sock: PathBuf,
    line: String,
    window: usize,
    jobs_per_req: u64,
    until: Instant,
    per_sec: f64,
) -> Outcome {
    let s = UnixStream::connect(&sock).expect("connect");
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = std::io::BufWriter::new(s);
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let mut sent: std::collections::VecDeque<Instant> = Default::default();
    let (mut jobs, mut errors) = (0u64, 0u64);
    let mut reply = String::new();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let now = Instant::now();
        while sent.len() < window && now < until {
            if per_sec > 0.0 {
                let due = start + Duration::from_secs_f64(n as f64 / per_sec);
                if due > Instant::now() {
                    if !sent.is_empty() {
                        break;
                    }
                    w.flush().unwrap();
                    std::thread::sleep(due - Instant::now());
                }
            }
            w.write_all(line.as_bytes()).unwrap();
            sent.push_back(Instant::now());
            n += 1;
        }
        w.flush().unwrap();
        let Some(t) = sent.pop_front() else { break };
        reply.clear();
        if r.read_line(&mut reply).unwrap() == 0 {
            panic!("daemon closed the connection");
        }
        let _ = lat.record(t.elapsed().as_nanos() as u64);
        if reply.starts_with(r#"{"ok":true"#) {
            jobs += jobs_per_req;
        } else {
            errors += 1;
            if errors == 1 {
                eprintln!("error reply: {}", reply.trim());
            }
        }
    }
    Outcome { jobs, lat, errors }
}

fn succeeded(sock: &PathBuf) -> u64 {
    let mut c = duejob::Client::connect(sock).unwrap();
    let s = c.stats().unwrap();
    s.sched.totals[&duejob::wire::State::Succeeded]
}

fn main() {
    let mut a = Args::parse();
    if a.mode == "latency" {
        a.conns = 1;
        a.window = 1;
    }
    let dir = tempfile::Builder::new()
        .prefix("duejob-loadgen-")
        .tempdir()
        .unwrap();
    let mut _daemon = None;
    let sock = match &a.socket {
        Some(s) => s.clone(),
        None => {
            let mut cfg = duejob::Config::with_workers(a.workers);
            cfg.sync = duejob::wal::SyncMode::parse(&a.sync).unwrap();
            cfg.checkpoint.auto = a.checkpoints == "on";
            cfg.catalog = a.catalog == "on";
            if let Some(r) = &a.archive_retention {
                cfg.checkpoint.archive_retention = duejob::config::parse_duration(r).unwrap();
            }
            let rt = duejob::Runtime::builder(dir.path())
                .config(cfg)
                .start()
                .unwrap();
            if a.preload > 0 {
                let pad = format!(r#"{{"pad":"{}"}}"#, "x".repeat(190));
                let spec = duejob::JobSpec {
                    delay_ms: Some(24 * 3_600_000),
                    ..duejob::JobSpec::new("bulk", "noop", &pad)
                };
                let mut left = a.preload;
                while left > 0 {
                    let k = left.min(10_000);
                    let (_, rx) = rt.append_specs(&vec![spec.clone(); k as usize]).unwrap();
                    assert!(rx.recv().unwrap().failure.is_none());
                    left -= k;
                }
                if a.checkpoints == "on" || a.checkpoint_loop {
                    rt.checkpoint().unwrap();
                }
            }
            let sock = dir.path().join("duejob.sock");
            let srv = duejob::server::serve(rt.handle(), &sock).unwrap();
            _daemon = Some((rt, srv));
            sock
        }
    };
    let line = request(&a);
    let per_req = a.batch.max(1) as u64;
    let before = if a.mode == "cycle" {
        succeeded(&sock)
    } else {
        0
    };
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(a.seconds);
    let per_conn = a.rate / per_req as f64 / a.conns as f64;
    let handles: Vec<_> = (0..a.conns)
        .map(|_| {
            let (sock, line, window) = (sock.clone(), line.clone(), a.window);
            std::thread::spawn(move || drive(sock, line, window, per_req, until, per_conn))
        })
        .collect();
    // Side tasks: forced checkpoints, the size of the data directory.
    let side_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = (a.checkpoint_loop && a.socket.is_none()).then(|| {
        let handle = _daemon.as_ref().unwrap().0.handle();
        let stop = side_stop.clone();
        std::thread::spawn(move || {
            let mut taken = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match handle.checkpoint() {
                    Ok(c) => taken.push(c.ms),
                    Err(e) => panic!("checkpoint: {e}"),
                }
            }
            taken
        })
    });
    let watcher = (a.watch > 0.0 && a.socket.is_none()).then(|| {
        let data = dir.path().to_path_buf();
        let sock = sock.clone();
        let (every, stop) = (Duration::from_secs_f64(a.watch), side_stop.clone());
        std::thread::spawn(move || {
            let (mut max_wal, mut max_all) = (0u64, 0u64);
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if Instant::now() >= next {
                    let (wal, all) = (du(&data.join("wal")), du(&data));
                    max_wal = max_wal.max(wal);
                    max_all = max_all.max(all);
                    let cat = duejob::Client::connect(&sock)
                        .and_then(|mut c| c.stats())
                        .ok()
                        .and_then(|s| s.catalog)
                        .map(|c| {
                            format!(
                                ", catalog lag {} records ({} ms behind), {} MiB",
                                c.lag_records,
                                c.behind_ms,
                                c.bytes >> 20
                            )
                        })
                        .unwrap_or_default();
                    eprintln!(
                        "  t={:>4.0}s wal/ {:>5} MiB, data dir {:>6} MiB{cat}",
                        t0.elapsed().as_secs_f64(),
                        wal >> 20,
                        all >> 20
                    );
                    next += every;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (max_wal, max_all)
        })
    });
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let (mut jobs, mut errors) = (0, 0);
    for h in handles {
        let o = h.join().unwrap();
        jobs += o.jobs;
        errors += o.errors;
        lat.add(&o.lat).unwrap();
    }
    let submit_secs = t0.elapsed().as_secs_f64();
    side_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(l) = looper {
        let mut ms = l.join().unwrap();
        ms.sort_unstable();
        let _ = writeln!(
            std::io::stdout(),
            "  {} forced checkpoints during the run, {} to {} ms each (median {} ms)",
            ms.len(),
            ms.first().unwrap_or(&0),
            ms.last().unwrap_or(&0),
            ms.get(ms.len() / 2).unwrap_or(&0)
        );
    }
    if let Some(w) = watcher {
        let (wal, all) = w.join().unwrap();
        let _ = writeln!(
            std::io::stdout(),
            "  largest seen: wal/ {} MiB, data dir {} MiB",
            wal >> 20,
            all >> 20
        );
    }
    let us = |q: f64| lat.value_at_quantile(q) as f64 / 1000.0;
    let (rate, what) = if a.mode == "cycle" {
        // Full cycle: wait until every acknowledged job has run and its completion is recorded.
        let target = before + jobs;
        while succeeded(&sock) < target {
            std::thread::sleep(Duration::from_millis(20));
        }
        (jobs as f64 / t0.elapsed().as_secs_f64(), "full cycles/s")
    } else {
        (jobs as f64 / submit_secs, "durable submits/s")
    };
    let _ = writeln!(
        std::io::stdout(),
        "mode {} sync {} conns {} window {} batch {} payload {}B: {:.0} {what}; request latency p50 {:.0}µs p99 {:.0}µs max {:.0}µs; {} errors",
        a.mode, a.sync, a.conns, a.window, per_req, a.payload, rate, us(0.5), us(0.99), lat.max() as f64 / 1000.0, errors
    );
    if a.socket.is_none() {
        let mut c = duejob::Client::connect(&sock).unwrap();
        let w = c.stats().unwrap().wal;
        let _ = writeln!(
        std::io::stdout(),
            "  WAL: {} records in {} groups (mean {:.1}, max {}), {} fsyncs, fsync p50 ≤{}µs p99 ≤{}µs, {:.0} bytes/record",
            w.records, w.groups, w.mean_group, w.max_group, w.fsyncs, w.fsync_p50_us, w.fsync_p99_us,
            w.bytes as f64 / w.records.max(1) as f64
        );
        if let Some(cat) = c.stats().unwrap().catalog {
            // Let it catch up, then measure it.
            let t = Instant::now();
            let end_lag = cat.lag_records;
            let mut lag = end_lag;
            while lag > 0 && t.elapsed() < Duration::from_secs(600) {
                std::thread::sleep(Duration::from_millis(100));
                lag = c.stats().unwrap().catalog.unwrap().lag_records;
            }
            let cat = c.stats().unwrap().catalog.unwrap();
            let bytes = du(&dir.path().join("catalog"));
            let _ = writeln!(
                std::io::stdout(),
                "  catalog: lag at the end of the load {} records, caught up {:.1} s later; {} jobs, {} MiB on disk ({:.0} bytes/job), {} failures",
                end_lag,
                t.elapsed().as_secs_f64(),
                cat.jobs_added,
                bytes >> 20,
                bytes as f64 / cat.jobs_added.max(1) as f64,
                cat.failures
            );
        }
        let c = &w.checkpoint;
        let _ = writeln!(
            std::io::stdout(),
            "  checkpoints: {} ({} failed), {} segments released, the last {} bytes in {} ms",
            c.checkpoints,
            c.failures,
            c.released,
            c.last_bytes,
            c.last_ms
        );
    }
}
