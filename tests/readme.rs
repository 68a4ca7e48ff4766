//! The README's "Use it" runs in order as written: each line through `sh` in a fresh directory
//! where `./target/release/duejob` is this build, the daemon started by its line and stopped by
//! `kill %1`, waiting between lines only as a person typing would (for the jobs so far to end).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::{tempdir, Conn, BIN};

/// The daemon started by the README, killed if the test fails.
struct Background(Option<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The commands of the README's "Use it" block, comments removed.
fn use_it_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Use it").expect("a Use it section")..];
    let start = section.find("```sh\n").expect("a sh block") + 6;
    let block = &section[start..start + section[start..].find("```").unwrap()];
    block
        .lines()
        .map(|l| match l.find("  #") {
            Some(i) => l[..i].trim().to_string(),
            None => l.trim().to_string(),
        })
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Waits until no job is ready, running or retrying (what a person typing the next line would
/// find done).
fn settle(sock: &Path) {
    let mut c = Conn::connect(sock).unwrap();
    let t = Instant::now();
    loop {
        let s = c.call(r#"{"op":"stats"}"#);
        let busy: u64 = ["ready", "running", "retrying"]
            .iter()
            .map(|k| s["totals"][k].as_u64().unwrap_or(0))
            .sum();
        if busy == 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "jobs never settled: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_readme_use_it_section_runs_in_order_as_written() {
    let lines = use_it_lines();
    assert!(lines.len() > 15, "{lines:?}");
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    symlink(BIN, dir.path().join("target/release/duejob")).unwrap();
    let sock = dir.path().join("duejob-data/duejob.sock");
    let mut daemon = Background(None);
    let mut outputs = Vec::new();
    for line in &lines {
        if line.starts_with("cargo build") {
            continue; // this build is the one under test
        }
        if line == "kill %1" {
            let c = daemon.0.as_mut().expect("kill %1 after the daemon started");
            rustix::process::kill_process(
                rustix::process::Pid::from_child(c),
                rustix::process::Signal::TERM,
            )
            .unwrap();
            let st = c.wait().unwrap();
            daemon.0 = None;
            assert!(st.success(), "the daemon stopped with {st}");
            continue;
        }
        if let Some(bg) = line.strip_suffix('&') {
            assert!(daemon.0.is_none(), "one background command");
            daemon.0 = Some(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("exec {bg}"))
                    .current_dir(dir.path())
                    .env_remove("DUEJOB_SOCKET")
                    .env_remove("RUST_LOG")
                    .spawn()
                    .unwrap(),
            );
            let t = Instant::now();
            while Conn::connect(&sock).is_err() {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "the daemon never served"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        settle(&sock);
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(dir.path())
            .env_remove("DUEJOB_SOCKET")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README line failed: {line}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((
            line.clone(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
    }
    assert!(daemon.0.is_none(), "the README stops its daemon");
    // What the prose around the block says.
    let out = |prefix: &str| -> &str {
        &outputs
            .iter()
            .find(|(l, _)| l.contains(prefix))
            .unwrap_or_else(|| panic!("no line {prefix}"))
            .1
    };
    assert_eq!(out("duejob log 1"), "hello from job 1\n");
    assert_eq!(out("invoice-42 -- sh"), "3 duplicate\n");
    assert!(
        out("dead list").contains("exited with status 3 (attempt 2 of 2)"),
        "{}",
        out("dead list")
    );
}
