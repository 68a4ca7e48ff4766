//! duejob beside beanstalkd and Redis: same machine, same run, same client code for all three
//! (pipelined, one thread per connection, so the client is not the bottleneck; client and server
//! CPU are reported so the table can be trusted).
//!
//! `bash benches/peers/run.sh` (installs beanstalkd and redis-server if missing, then runs this).
//!
//! Workloads, 200-byte payloads: `put` (4 connections × 100 in flight; duejob jobs are delayed so
//! nothing runs, like a put nobody reserves), `cycle` (4 producers as above plus consumers:
//! beanstalkd reserve+delete, Redis BRPOP; duejob runs a no-op job and records its completion),
//! `cycle-drain` (the producers and consumers of `cycle` for the same time, then the producers
//! stop and the consumers go on until every acknowledged job is done: jobs ÷ the time until the
//! last one is done, the full cycle of every job, as `loadgen --mode cycle` counts it),
//! `latency` (one connection, one request at a time; duejob's jobs delayed as in `put`, since
//! nobody reserves the peers' jobs either) and `latency-run` (the same, with jobs taken as they
//! come: duejob runs each as a no-op and records its completion, beanstalkd and Redis have one
//! consumer as in `cycle`).
//! Durable: duejob sync always, beanstalkd `-b DIR -f 0`, Redis `appendfsync always`.
//! Weak: duejob sync never, beanstalkd without binlog, Redis without AOF.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The duejob binary.
    #[arg(long, default_value = "target/release/duejob")]
    duejob: PathBuf,
    /// Instead of the table: restart beanstalkd holding this many pending 200-byte jobs and
    /// report time to serve, RSS and binlog bytes per job (duejob's: `examples/recovery.rs`).
    #[arg(long)]
    recovery: Option<u64>,
    /// A second duejob binary (an earlier build) measured in the same run beside the first in
    /// every cell (after it in odd rounds, before it in even ones), for before/after ratios on
    /// equal terms.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Only these workloads (comma-separated: put, cycle, cycle-drain, latency, latency-run).
    #[arg(long, default_value = "put,cycle,cycle-drain,latency,latency-run")]
    workloads: String,
    /// Only durable (`durable`) or only weak (`weak`) cells; both by default.
    #[arg(long)]
    durability: Option<String>,
    /// Measure every cell this many times, the rounds one after another.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Duejob,
    Beanstalkd,
    Redis,
}

struct Server {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(sys: System, durable: bool, duejob: &Path) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("duejob-peers-")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("s.sock");
    let d = dir.path().to_str().unwrap().to_string();
    let s = sock.to_str().unwrap().to_string();
    let mut cmd = match sys {
        System::Duejob => {
            let mut c = Command::new(duejob);
            c.args([
                "serve",
                "--data",
                &d,
                "--socket",
                &s,
                "--workers",
                "4",
                "--sync",
                if durable { "always" } else { "never" },
            ]);
            c
        }
        System::Beanstalkd => {
            let mut c = Command::new("beanstalkd");
            c.args(["-l", &format!("unix:{s}")]);
            if durable {
                c.args(["-b", &d, "-f", "0"]);
            }
            c
        }
        System::Redis => {
            let mut c = Command::new("redis-server");
            c.args(["--port", "0", "--unixsocket", &s, "--dir", &d, "--save", ""]);
            c.args([
                "--appendonly",
                if durable { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ]);
            c
        }
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {sys:?}: {e}"));
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{sys:?} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        sock,
        _dir: dir,
    }
}

fn payload() -> String {
    "x".repeat(200)
}

/// One put request.
fn put(sys: System, delayed: bool) -> Vec<u8> {
    let p = payload();
    match sys {
        System::Duejob => {
            let delay = if delayed {
                r#","delay_ms":3600000"#
            } else {
                ""
            };
            format!("{{\"op\":\"submit\",\"queue\":\"bulk\",\"kind\":\"noop\",\"payload\":\"{}\"{delay}}}\n", &p[..188]).into_bytes()
        }
        System::Beanstalkd => format!("put 0 0 60 {}\r\n{p}\r\n", p.len()).into_bytes(),
        System::Redis => {
            format!("*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n${}\r\n{p}\r\n", p.len()).into_bytes()
        }
    }
}

/// Reads one put reply; true if it says success.
fn put_reply(sys: System, r: &mut BufReader<UnixStream>, line: &mut String) -> bool {
    line.clear();
    if r.read_line(line).unwrap_or(0) == 0 {
        panic!("{sys:?} closed the connection");
    }
    match sys {
        System::Duejob => line.starts_with(r#"{"ok":true"#),
        System::Beanstalkd => line.starts_with("INSERTED"),
        System::Redis => line.starts_with(':'),
    }
}

struct Drive {
    ops: u64,
    lat: Histogram<u64>,
    errors: u64,
}

/// Pipelined puts on one connection until `until`.
fn drive_puts(sys: System, sock: &Path, window: usize, delayed: bool, until: Instant) -> Drive {
    let s = UnixStream::connect(sock).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = std::io::BufWriter::new(s);
    let req = put(sys, delayed);
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let mut sent = std::collections::VecDeque::new();
    let (mut ops, mut errors) = (0, 0);
    let mut line = String::new();
    loop {
        while sent.len() < window && Instant::now() < until {
            w.write_all(&req).unwrap();
            sent.push_back(Instant::now());
        }
        w.flush().unwrap();
        let Some(t) = sent.pop_front() else { break };
        if put_reply(sys, &mut r, &mut line) {
            ops += 1;
        } else {
            errors += 1;
        }
        let _ = lat.record(t.elapsed().as_nanos() as u64);
    }
    Drive { ops, lat, errors }
}

/// A consumer taking jobs until `stop`: beanstalkd reserve+delete, Redis BRPOP.
fn consume(sys: System, sock: &Path, stop: &AtomicBool, done: &AtomicU64) {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    let mut body = vec![0u8; 202];
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match sys {
            System::Beanstalkd => {
                w.write_all(b"reserve-with-timeout 1\r\n").unwrap();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let Some(rest) = line.strip_prefix("RESERVED ") else {
                    continue;
                };
                let id = rest.split_whitespace().next().unwrap().to_string();
                r.read_exact(&mut body).unwrap();
                w.write_all(format!("delete {id}\r\n").as_bytes()).unwrap();
                line.clear();
                let _ = r.read_line(&mut line);
                if line.starts_with("DELETED") {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            System::Redis => {
                w.write_all(b"*3\r\n$5\r\nBRPOP\r\n$1\r\nq\r\n$1\r\n1\r\n")
                    .unwrap();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                if line.starts_with("*2") {
                    // $1 q, $200 payload
                    for _ in 0..4 {
                        line.clear();
                        let _ = r.read_line(&mut line);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            System::Duejob => unreachable!("duejob runs its own consumers"),
        }
    }
}

fn duejob_succeeded(sock: &Path) -> u64 {
    let mut c = duejob::Client::connect(sock).unwrap();
    c.stats().unwrap().sched.totals[&duejob::wire::State::Succeeded]
}

/// (utime + stime) of a process in seconds.
fn cpu_secs(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

struct Row {
    sys: System,
    /// Set on the rows of the `--baseline` binary.
    base: bool,
    round: usize,
    durable: bool,
    mode: &'static str,
    rate: f64,
    p50: f64,
    p99: f64,
    server_cpu: f64,
    client_cpu: f64,
    errors: u64,
}

fn measure(sys: System, durable: bool, mode: &'static str, a: &Args, bin: &Path) -> Row {
    let server = start(sys, durable, bin);
    let pid = server.child.id().to_string();
    let lone = mode.starts_with("latency");
    let (conns, window) = if lone { (1, 1) } else { (4, 100) };
    // Jobs nobody takes (duejob: delayed, so nothing runs), or taken as they come.
    let delayed = mode == "put" || mode == "latency";
    let takers = match mode {
        "cycle" | "cycle-drain" => 4,
        "latency-run" => 1,
        _ => 0,
    };
    let (s0, c0) = (cpu_secs(&pid), cpu_secs("self"));
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(a.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let consumers: Vec<_> = if sys != System::Duejob {
        (0..takers)
            .map(|_| {
                let (sock, stop, done) = (server.sock.clone(), stop.clone(), done.clone());
                std::thread::spawn(move || consume(sys, &sock, &stop, &done))
            })
            .collect()
    } else {
        Vec::new()
    };
    let cycle = mode.starts_with("cycle");
    let before = if cycle && sys == System::Duejob {
        duejob_succeeded(&server.sock)
    } else {
        0
    };
    let producers: Vec<_> = (0..conns)
        .map(|_| {
            let sock = server.sock.clone();
            std::thread::spawn(move || drive_puts(sys, &sock, window, delayed, until))
        })
        .collect();
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let (mut ops, mut errors) = (0, 0);
    for p in producers {
        let d = p.join().unwrap();
        ops += d.ops;
        errors += d.errors;
        lat.add(&d.lat).unwrap();
    }
    let completed = || {
        if sys == System::Duejob {
            duejob_succeeded(&server.sock) - before
        } else {
            done.load(Ordering::Relaxed)
        }
    };
    let rate = if mode == "cycle" {
        // Count completions over the same window (cycles finished by the time puts stopped).
        completed() as f64 / t0.elapsed().as_secs_f64()
    } else if mode == "cycle-drain" {
        // Every acknowledged job through to its end (at most a minute more).
        let give_up = Instant::now() + Duration::from_secs(60);
        while completed() < ops && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(5));
        }
        let n = completed();
        if n < ops {
            eprintln!("  {sys:?} {mode}: only {n} of {ops} jobs done after a minute");
            errors += ops - n;
        }
        n as f64 / t0.elapsed().as_secs_f64()
    } else {
        ops as f64 / t0.elapsed().as_secs_f64()
    };
    let secs = t0.elapsed().as_secs_f64();
    let (s1, c1) = (cpu_secs(&pid), cpu_secs("self"));
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        let _ = c.join();
    }
    Row {
        sys,
        base: false,
        round: 0,
        durable,
        mode,
        rate,
        p50: lat.value_at_quantile(0.5) as f64 / 1000.0,
        p99: lat.value_at_quantile(0.99) as f64 / 1000.0,
        server_cpu: (s1 - s0) / secs * 100.0,
        client_cpu: (c1 - c0) / secs * 100.0,
        errors,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Exactly `n` pipelined puts (window `window`); returns how many succeeded.
fn drive_puts_n(sys: System, sock: &Path, window: usize, n: u64) -> u64 {
    let s = UnixStream::connect(sock).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = std::io::BufWriter::new(s);
    let req = put(sys, false);
    let (mut sent, mut ok, mut in_flight, mut line) = (0u64, 0u64, 0usize, String::new());
    loop {
        while in_flight < window && sent < n {
            w.write_all(&req).unwrap();
            sent += 1;
            in_flight += 1;
        }
        w.flush().unwrap();
        if in_flight == 0 {
            return ok;
        }
        if put_reply(sys, &mut r, &mut line) {
            ok += 1;
        }
        in_flight -= 1;
    }
}

/// beanstalkd's restart with `n` pending 200-byte jobs in its binlog (default fsync policy for
/// the fill, which does not change what the restart reads).
fn beanstalkd_recovery(n: u64) {
    let dir = tempfile::Builder::new()
        .prefix("duejob-peers-")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("s.sock");
    let spawn = || {
        Command::new("beanstalkd")
            .args([
                "-l",
                &format!("unix:{}", sock.display()),
                "-b",
                dir.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_serving = |child: &mut Child| loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut line = String::new();
            if w.write_all(b"stats-tube default\r\n").is_ok()
                && r.read_line(&mut line).is_ok()
                && line.starts_with("OK")
            {
                return;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "beanstalkd exited");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut child = spawn();
    wait_serving(&mut child);
    let per = n / 4;
    let fill: Vec<_> = (0..4)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                assert_eq!(drive_puts_n(System::Beanstalkd, &sock, 100, per), per)
            })
        })
        .collect();
    for f in fill {
        f.join().unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    let binlog: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("binlog"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let t = Instant::now();
    let mut child = spawn();
    wait_serving(&mut child);
    let took = t.elapsed();
    let rss = rss_kib(child.id());
    let jobs = (per * 4) as f64;
    println!(
        "beanstalkd 1.12 with {} pending 200-byte jobs: serving again after {:.0} ms; RSS {:.0} bytes/job; binlog {:.0} bytes/job (preallocated files included)",
        per * 4,
        took.as_secs_f64() * 1000.0,
        rss as f64 * 1024.0 / jobs,
        binlog as f64 / jobs
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let a = Args::parse();
    if let Some(n) = a.recovery {
        beanstalkd_recovery(n);
        return;
    }
    assert!(
        a.duejob.exists(),
        "build duejob first: cargo build --release"
    );
    let mut rows = Vec::new();
    let modes: Vec<&'static str> = ["put", "cycle", "cycle-drain", "latency", "latency-run"]
        .into_iter()
        .filter(|m| a.workloads.split(',').any(|w| w.trim() == *m))
        .collect();
    let durabilities: Vec<bool> = [true, false]
        .into_iter()
        .filter(|d| match a.durability.as_deref() {
            Some("durable") => *d,
            Some("weak") => !*d,
            _ => true,
        })
        .collect();
    for round in 1..=a.rounds {
        for &durable in &durabilities {
            for &mode in &modes {
                let mut runs = vec![(System::Duejob, false, a.duejob.clone())];
                if let Some(b) = &a.baseline {
                    // The first duejob slot of a cell measured 4-22% slower than the second with
                    // the same binary in both (BENCHMARKS.md, issue 15, fourth session), so even
                    // rounds measure the baseline first.
                    let slot = if round % 2 == 0 { 0 } else { 1 };
                    runs.insert(slot, (System::Duejob, true, b.clone()));
                }
                runs.push((System::Beanstalkd, false, a.duejob.clone()));
                runs.push((System::Redis, false, a.duejob.clone()));
                for (sys, base, bin) in runs {
                    let mut r = measure(sys, durable, mode, &a, &bin);
                    r.base = base;
                    r.round = round;
                    eprintln!(
                        "  round {round} {:?}{} {} {}: {:.0}/s",
                        r.sys,
                        if base { " (baseline)" } else { "" },
                        if durable { "durable" } else { "weak" },
                        r.mode,
                        r.rate
                    );
                    rows.push(r);
                }
            }
        }
    }
    println!(
        "| round | durability | workload | system | jobs/s | p50 µs | p99 µs | duejob ÷ this | server CPU | client CPU |"
    );
    println!("|---:|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let dj = rows
            .iter()
            .find(|o| {
                o.sys == System::Duejob
                    && !o.base
                    && o.round == r.round
                    && o.durable == r.durable
                    && o.mode == r.mode
            })
            .unwrap();
        let name = match (r.sys, r.durable) {
            (System::Duejob, true) if r.base => "duejob baseline (sync always)",
            (System::Duejob, false) if r.base => "duejob baseline (sync never)",
            (System::Duejob, true) => "duejob (sync always)",
            (System::Duejob, false) => "duejob (sync never)",
            (System::Beanstalkd, true) => "beanstalkd 1.12 (-b -f 0)",
            (System::Beanstalkd, false) => "beanstalkd 1.12 (no binlog)",
            (System::Redis, true) => "Redis 7 (appendfsync always)",
            (System::Redis, false) => "Redis 7 (no AOF)",
        };
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.0}% | {:.0}%{} |",
            r.round,
            if r.durable { "durable" } else { "weak" },
            r.mode,
            name,
            r.rate,
            r.p50,
            r.p99,
            dj.rate / r.rate.max(1e-9),
            r.server_cpu,
            r.client_cpu,
            if r.errors > 0 {
                format!(" ({} errors)", r.errors)
            } else {
                String::new()
            }
        );
    }
}
