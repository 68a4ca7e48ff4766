//! Emails per second to a local SMTP server (aiosmtpd, `tests/smtp/server.py`), with connection
//! pooling on (`pool_size` 4) and off (a new connection per email), through the embedded
//! runtime with 4 workers and sync `always`.
//!
//! `cargo run --release --example email_bench -- [N] [ROUNDS]` (default 2000 emails, 3 rounds;
//! needs a Python with aiosmtpd: `python3 -m pip install aiosmtpd`).
//!
//! Each round submits N emails from 4 threads and times from the first submit until the last one
//! has succeeded. The SMTP server (Python, one thread) shares the 2 cores, so its CPU time is
//! printed too: when it is near the elapsed time, the server is the bottleneck, not duejob.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duejob::config::SmtpConfig;
use duejob::{Config, JobSpec, Runtime};

fn python() -> String {
    std::env::var("DUEJOB_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The SMTP server process, killed when dropped (also on an early error).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16, store: &std::path::Path) -> Server {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/server.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(["--port", &port.to_string()])
        .arg("--dir")
        .arg(store)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tests/smtp/server.py (needs python3 with aiosmtpd)");
    let out = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert!(
        line.starts_with("READY"),
        "SMTP server did not start: {line:?}"
    );
    server
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn round(port: u16, pool_size: u32, n: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::with_workers(4);
    let mut smtp = SmtpConfig::new("127.0.0.1");
    smtp.port = port;
    smtp.pool_size = pool_size;
    cfg.smtp = Some(smtp);
    let rt = Runtime::builder(dir.path()).config(cfg).start()?;
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..4 {
            let h = rt.handle();
            s.spawn(move || {
                for i in (w..n).step_by(4) {
                    let payload = format!(
                        r#"{{"from":"bench@example.com","to":"user{i}@example.org","subject":"bench {i}","text":"{}"}}"#,
                        "x".repeat(200)
                    );
                    h.submit(&JobSpec::new("notifications", "email", &payload))
                        .expect("submit");
                }
            });
        }
    });
    loop {
        let st = rt.stats()?;
        let ok = st.sched.total(duejob::wire::State::Succeeded);
        let dead = st.sched.total(duejob::wire::State::Dead);
        if ok + dead >= n as u64 {
            assert_eq!(dead, 0, "emails died: {:?}", st.kinds);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = t.elapsed().as_secs_f64();
    rt.shutdown();
    Ok(secs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let store = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = start_server(port, store.path());
    let mut rows = Vec::new();
    for r in 0..rounds {
        for (label, pool) in [("pool on (4)", 4), ("pool off", 0)] {
            let c0 = cpu_secs(server.0.id());
            let secs = round(port, pool, n)?;
            let server_cpu = cpu_secs(server.0.id()) - c0;
            println!(
                "round {}: {label:<12} {n} emails in {secs:.2} s = {:.0} emails/s (SMTP server CPU {:.0}% of the elapsed time)",
                r + 1,
                n as f64 / secs,
                100.0 * server_cpu / secs
            );
            rows.push((label, n as f64 / secs));
        }
    }
    let stored = std::fs::read_dir(store.path())?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    println!(
        "{stored} messages stored by the server (expected {})",
        n * rounds * 2
    );
    drop(server);
    Ok(())
}
