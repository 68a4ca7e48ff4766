//! exec jobs never run twice at once across a crash, and never pin a worker: the program dies
//! with the daemon (SIGKILL, or a second SIGTERM), what it left in its process group is killed at
//! the next start before the job runs again, and a process that leaves the group does not hold
//! the attempt open.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{tempdir, Daemon};
use serde_json::json;

// Whether a pid runs (gone and zombie both count as not running: PID 1 may not reap).
use duejob::handlers::exec::journal::process_running as running;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Kills every pid listed in a file when dropped (what a test leaves running, also on panic).
struct KillListed(PathBuf);
impl Drop for KillListed {
    fn drop(&mut self) {
        for p in lines(&self.0) {
            if let Some(pid) = p.parse().ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// One exec job whose every attempt first notes which processes of earlier attempts still run
/// (`overlap`), then leaves a background `sleep` in its process group and waits. Returns
/// (state dir, request).
fn overlapping_job(dir: &Path) -> (PathBuf, String) {
    let s = dir.join("state");
    std::fs::create_dir_all(&s).unwrap();
    let script = format!(
        r#"for p in $(cat {s}/pids 2>/dev/null); do
             read -r _ _ st _ < /proc/$p/stat 2>/dev/null && [ "$st" != Z ] && echo "$p" >> {s}/overlap
           done
           sleep 600 & echo $! >> {s}/pids; echo $$ >> {s}/pids; echo $$ >> {s}/attempts
           wait"#,
        s = s.display()
    );
    let req = json!({"op":"submit","queue":"default","kind":"exec",
                     "payload":{"argv":["sh","-c",script]}});
    (s, req.to_string())
}

fn no_second_copy_after(kill: impl Fn(&mut Daemon)) {
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let (s, req) = overlapping_job(dir.path());
    let _cleanup = KillListed(s.join("pids"));
    let id = d.conn().submit(&req);
    wait_until("the first attempt runs", || {
        lines(&s.join("pids")).len() == 2
    });
    let pids = lines(&s.join("pids"));
    let (grandchild, program): (i32, i32) = (pids[0].parse().unwrap(), pids[1].parse().unwrap());

    kill(&mut d);
    // The program dies with the daemon; what it left in its group keeps running until restart.
    wait_until("the program dies with the daemon", || !running(program));
    assert!(running(grandchild), "the grandchild stayed in the group");
    assert_eq!(
        std::fs::read_dir(d.data().join("run")).unwrap().count(),
        1,
        "the run journal names the group"
    );

    d.restart();
    assert!(
        !running(grandchild),
        "the group left behind is killed before the daemon serves"
    );
    let log = d.log_text();
    assert!(
        log.contains("left running by job") && log.contains(&format!("job {id}")),
        "{log}"
    );
    wait_until("the job runs again", || {
        lines(&s.join("attempts")).len() == 2
    });
    assert_eq!(
        lines(&s.join("overlap")),
        Vec::<String>::new(),
        "two copies of the job ran at once"
    );
    let mut c = d.conn();
    assert_eq!(
        c.call(&format!(r#"{{"op":"cancel","id":{id}}}"#))["ok"],
        true
    );
    assert!(d.stop().success());
}

#[test]
fn an_exec_job_does_not_run_twice_at_once_after_a_sigkill() {
    no_second_copy_after(|d| d.kill9());
}

#[test]
fn an_exec_job_does_not_run_twice_at_once_after_a_second_sigterm() {
    no_second_copy_after(|d| {
        d.signal(rustix::process::Signal::TERM);
        // The exact event: the first signal is being handled (draining waits for the job).
        wait_until("the first signal is handled", || {
            d.log_text().contains("signal received")
        });
        d.signal(rustix::process::Signal::TERM);
        let st = d.wait_exit(Duration::from_secs(60));
        assert_eq!(st.code(), Some(130));
    });
}

#[test]
fn a_grandchild_that_leaves_the_process_group_does_not_pin_a_worker() {
    // The issue's case: 2 workers, jobs whose grandchild `setsid`s away holding the pipes, with a
    // timeout of 1 s; a noop behind them must not wait for the escaped processes.
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let escaped = dir.path().join("escaped");
    let _cleanup = KillListed(escaped.clone());
    let mut c = d.conn();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let script = format!(
            "setsid sh -c 'echo $$ >> {}; exec sleep 120' & sleep 0.3; exit 0",
            escaped.display()
        );
        let req = json!({"op":"submit","queue":"default","kind":"exec","timeout_ms":1000,
                         "payload":{"argv":["sh","-c",script]}});
        ids.push(c.submit(&req.to_string()));
    }
    let noop = c.submit(r#"{"op":"submit","queue":"default","kind":"noop"}"#);
    for id in ids {
        c.wait_state(id, "succeeded");
    }
    c.wait_state(noop, "succeeded");
    // Every attempt ended while its escaped process still ran: none waited for its output.
    let pids = lines(&escaped);
    assert_eq!(pids.len(), 4);
    for p in pids {
        assert!(running(p.parse().unwrap()), "an attempt waited for {p}");
    }
}
