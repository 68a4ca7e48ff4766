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

fn drive(sock: PathBuf, line: String, window: usize, jobs_per_req: u64, until: Instant) -> Outcome {
    let s = UnixStream::connect(&sock).expect("connect");
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = std::io::BufWriter::new(s);
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let mut sent: std::collections::VecDeque<Instant> = Default::default();
    let (mut jobs, mut errors) = (0u64, 0u64);
    let mut reply = String::new();
    loop {
        let now = Instant::now();
        while sent.len() < window && now < until {
            w.write_all(line.as_bytes()).unwrap();
            sent.push_back(Instant::now());
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
            let rt = duejob::Runtime::builder(dir.path())
                .config(cfg)
                .start()
                .unwrap();
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
    let handles: Vec<_> = (0..a.conns)
        .map(|_| {
            let (sock, line, window) = (sock.clone(), line.clone(), a.window);
            std::thread::spawn(move || drive(sock, line, window, per_req, until))
        })
        .collect();
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let (mut jobs, mut errors) = (0, 0);
    for h in handles {
        let o = h.join().unwrap();
        jobs += o.jobs;
        errors += o.errors;
        lat.add(&o.lat).unwrap();
    }
    let submit_secs = t0.elapsed().as_secs_f64();
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
    }
}
