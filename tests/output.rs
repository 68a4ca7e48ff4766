//! Job output: every exec attempt's stdout and stderr kept under `DATA/output/`, shown by
//! `duejob log ID [--attempt N]`, followed live by `duejob log -f ID`.

use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::common::{cli, tempdir, Daemon, BIN};

/// A daemon whose queue `q` retries quickly, twice at most.
fn daemon(dir: &Path, extra: &str) -> Daemon {
    let cfg = dir.join("duejob.toml");
    std::fs::write(
        &cfg,
        format!(
            "{extra}\n[queues.q]\ndue_in = \"1m\"\nmax_attempts = 2\nbackoff = {{ base = \"10ms\", cap = \"10ms\" }}\n"
        ),
    )
    .unwrap();
    Daemon::start_in(dir, &["--config", cfg.to_str().unwrap()])
}

fn submit_sh(d: &Daemon, script: &str) -> u64 {
    let payload = serde_json::json!({"argv": ["sh", "-c", script]});
    d.conn().submit(&format!(
        r#"{{"op":"submit","queue":"q","kind":"exec","payload":{payload}}}"#
    ))
}

/// `duejob log -f ID`, started.
fn follow(d: &Daemon, id: u64) -> (Child, ChildStdout) {
    let mut f = Command::new(BIN)
        .args(["log", "-f", &id.to_string(), "--socket"])
        .arg(d.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = f.stdout.take().unwrap();
    (f, out)
}

/// Reads `out` into `seen` until `seen` ends with `end`.
fn read_until(out: &mut ChildStdout, seen: &mut Vec<u8>, end: &str) {
    let mut buf = [0u8; 256];
    while !seen.ends_with(end.as_bytes()) {
        let n = out.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "log -f ended early: {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

fn log(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let s = d.socket();
    let mut all = vec!["log", "--socket", s.to_str().unwrap()];
    all.extend_from_slice(args);
    let (st, out, err) = cli(&all);
    (st.code().unwrap(), out, err)
}

#[test]
fn log_follows_a_running_job_as_its_output_comes() {
    let dir = tempdir();
    let d = daemon(dir.path(), "");
    let go = dir.path().join("go");
    // The job prints, then waits for the test: it cannot end before the follower saw "started".
    let id = submit_sh(
        &d,
        &format!(
            "echo started; echo to-stderr >&2; while [ ! -e {} ]; do sleep 0.02; done; echo finished",
            go.display()
        ),
    );
    let (f, mut stdout) = follow(&d, id);
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, "to-stderr\n");
    // Still running: the follower saw the output while the job ran.
    assert_eq!(d.conn().status(id)["state"], "running");
    std::fs::write(&go, "").unwrap();
    stdout.read_to_end(&mut seen).unwrap();
    let out = f.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "started\nto-stderr\nfinished\n"
    );
    assert_eq!(d.conn().status(id)["state"], "succeeded");
}

#[test]
fn log_follow_prints_what_a_cancelled_job_says_while_it_is_killed() {
    let dir = tempdir();
    let d = daemon(dir.path(), "");
    // On SIGTERM (the cancel) it says goodbye: the job is already `cancelled` by then.
    let id = submit_sh(
        &d,
        "trap 'echo bye; exit 0' TERM; echo start; while :; do sleep 0.02; done",
    );
    let (f, mut stdout) = follow(&d, id);
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, "start\n");
    let r = d.conn().call(&format!(r#"{{"op":"cancel","id":{id}}}"#));
    assert_eq!(r["ok"], true, "{r}");
    stdout.read_to_end(&mut seen).unwrap();
    let out = f.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // (The shell may also report its killed `sleep` on stderr, before or after.)
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.starts_with("start\n") && seen.contains("bye\n"),
        "{seen:?}"
    );
}

#[test]
fn each_attempt_keeps_its_own_output_and_follow_goes_through_the_retries() {
    let dir = tempdir();
    let d = daemon(dir.path(), "");
    let id = submit_sh(&d, "echo \"attempt $DUEJOB_ATTEMPT\"; exit 1");
    d.conn().wait_state(id, "dead");
    assert_eq!(
        log(&d, &[&id.to_string()]),
        (0, "attempt 2\n".into(), String::new())
    );
    assert_eq!(
        log(&d, &[&id.to_string(), "--attempt", "1"]).1,
        "attempt 1\n"
    );
    let (code, _, err) = log(&d, &[&id.to_string(), "--attempt", "3"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no attempt 3"), "{err}");
    let (code, _, _) = log(&d, &["999999"]);
    assert_eq!(code, 3);
    // Following a job through its retries: attempt 1 prints, then waits for the test (so the
    // follower is on attempt 1 before it ends), fails; attempt 2 prints and succeeds.
    let go = dir.path().join("go");
    let id = submit_sh(
        &d,
        &format!(
            "echo \"try $DUEJOB_ATTEMPT\"; [ $DUEJOB_ATTEMPT = 2 ] && exit 0; \
             while [ ! -e {} ]; do sleep 0.02; done; exit 1",
            go.display()
        ),
    );
    let (f, mut stdout) = follow(&d, id);
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, "try 1\n");
    std::fs::write(&go, "").unwrap();
    stdout.read_to_end(&mut seen).unwrap();
    let out = f.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&seen), "try 1\ntry 2\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--- attempt 2 ---"),
        "{out:?}"
    );
    assert_eq!(d.conn().status(id)["state"], "succeeded");
    // A job without output, and a kind that has none: nothing, and no error.
    let noop = d
        .conn()
        .submit(r#"{"op":"submit","queue":"q","kind":"noop"}"#);
    d.conn().wait_state(noop, "succeeded");
    assert_eq!(
        log(&d, &[&noop.to_string()]),
        (0, String::new(), String::new())
    );
}

#[test]
fn a_long_output_keeps_its_last_64_kib_and_says_what_went() {
    let dir = tempdir();
    let mut d = daemon(dir.path(), "");
    // 588,895 bytes.
    let id = submit_sh(&d, "seq 1 100000");
    d.conn().wait_state(id, "succeeded");
    let (code, out, err) = log(&d, &[&id.to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with("99999\n100000\n"),
        "{}",
        &out[out.len() - 20..]
    );
    assert!(
        out.len() >= 32 << 10 && out.len() <= 64 << 10,
        "{}",
        out.len()
    );
    assert!(
        err.contains("earlier bytes of attempt 1 are no longer kept"),
        "{err}"
    );
    let s = d.socket();
    let (st, json, _) = cli(&[
        "log",
        "--socket",
        s.to_str().unwrap(),
        "--json",
        &id.to_string(),
    ]);
    assert!(st.success());
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["next"], 588_895, "{v}");
    assert_eq!(v["running"], false);
    assert_eq!(
        v["skipped"].as_u64().unwrap() + v["output"].as_str().unwrap().len() as u64,
        588_895
    );
    // The output is on disk: it is still there after a restart (SIGKILL even).
    d.kill9();
    d.restart();
    assert_eq!(log(&d, &[&id.to_string()]).1, out);
}

#[test]
fn the_output_budget_drops_the_oldest_jobs_output_first() {
    let dir = tempdir();
    let d = daemon(dir.path(), "output_max_mib = 1");
    // Twenty jobs of 64 KiB each: 1.25 MiB, over the 1 MiB budget.
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = submit_sh(&d, "head -c 65536 /dev/zero | tr '\\0' x");
        d.conn().wait_state(id, "succeeded");
        ids.push(id);
    }
    // The sweeper runs on its own thread once an attempt ends over budget: wait for it.
    let out = d.data().join("output");
    let t = std::time::Instant::now();
    while disk_use(&out) > 1 << 20 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "{} bytes kept",
            disk_use(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kept: Vec<bool> = ids
        .iter()
        .map(|id| !log(&d, &[&id.to_string()]).1.is_empty())
        .collect();
    assert!(!kept[0], "the oldest job's output went: {kept:?}");
    assert!(kept[19], "the newest stays: {kept:?}");
    // Whatever went, went from the oldest: no gaps among what is kept.
    let first_kept = kept.iter().position(|k| *k).unwrap();
    assert!(kept[first_kept..].iter().all(|k| *k), "{kept:?}");
}

/// What `output_max_mib` counts under `p`: 4 KiB blocks of each file, and a block per
/// directory.
/// (The sweeper may remove what it lists meanwhile: what is gone counts nothing.)
fn disk_use(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?, e)))
        .map(|(m, e)| {
            if m.is_dir() {
                4096 + disk_use(&e.path())
            } else {
                m.len().div_ceil(4096) * 4096
            }
        })
        .sum()
}
