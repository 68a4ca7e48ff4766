//! The daemon as a user meets it: socket permissions and the uid allow-list, signals, the CLI.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::common::{cli, tempdir, Daemon, BIN};
use serde_json::Value;

#[test]
fn socket_is_private_and_peers_are_checked_against_the_allow_list() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let dmode = std::fs::metadata(d.data()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dmode, 0o700, "data dir mode {dmode:o}");

    // Another uid cannot even connect (only checkable when the test runs as root). The binary is
    // copied somewhere that uid can reach, so the check does not depend on where the checkout is.
    if rustix::process::getuid().is_root() {
        let (_keep, bin) = shared_binary();
        match std::process::Command::new(&bin)
            .args(["stats", "--socket", d.socket().to_str().unwrap()])
            .uid(65534)
            .gid(65534)
            .output()
        {
            Ok(out) => {
                assert!(!out.status.success());
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("Permission denied"), "{err}");
            }
            Err(e) => eprintln!("skipped the other-uid check: cannot run as uid 65534 here ({e})"),
        }
    }

    // A daemon whose allow-list leaves us out answers `forbidden` and closes.
    let dir2 = tempdir();
    let cfg = dir2.path().join("duejob.toml");
    std::fs::write(&cfg, "allow_uids = [4242]\n").unwrap();
    let mut d2 = Daemon::start_in_unchecked(
        dir2.path(),
        &["--config", cfg.to_str().unwrap(), "--workers", "2"],
    );
    d2.wait_for_socket();
    let mut c = d2.conn();
    let v = c.recv();
    assert_eq!(v["error"]["code"], "forbidden", "{v}");
    assert!(c.closed());
    assert!(d2.log_text().contains("refused connection from uid"));
}

#[test]
fn sigterm_lets_running_jobs_finish_and_exits_zero() {
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut c = d.conn();
    // The job runs until the test lets it go: after the signal, inside the grace period.
    let go = dir.path().join("go");
    let gate = serde_json::json!({"op":"submit","queue":"default","kind":"exec","payload":{"argv":
        ["sh","-c",format!("while [ ! -e {} ]; do sleep 0.01; done", go.display())]}});
    let id = c.submit(&gate.to_string());
    c.wait_state(id, "running");
    d.signal(rustix::process::Signal::TERM);
    let t = std::time::Instant::now();
    while !d.log_text().contains("signal received") {
        assert!(t.elapsed() < Duration::from_secs(60), "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&go, "").unwrap();
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "exit {st}: {}", d.log_text());
    assert!(!d.socket().exists(), "socket removed on exit");
    d.restart();
    let v = d.conn().call(&format!(r#"{{"op":"status","id":{id}}}"#));
    assert_eq!(
        v["job"]["state"], "succeeded",
        "finished within the grace period: {v}"
    );
    assert_eq!(v["job"]["attempts"].as_array().unwrap().len(), 1);
}

#[test]
fn second_signal_exits_at_once_and_the_interrupted_job_runs_again() {
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut c = d.conn();
    let id = c.submit(r#"{"op":"submit","queue":"default","kind":"sleep","payload":{"ms":60000}}"#);
    c.wait_state(id, "running");
    d.signal(rustix::process::Signal::TERM);
    std::thread::sleep(Duration::from_millis(200));
    d.signal(rustix::process::Signal::INT);
    let st = d.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(130), "{}", d.log_text());
    d.restart();
    let j = d.conn().call(&format!(r#"{{"op":"status","id":{id}}}"#))["job"].clone();
    // The interrupted attempt is counted, and the job runs again.
    assert_eq!(j["attempts"][0]["outcome"], "interrupted", "{j}");
    assert!(j["state"] == "running" || j["state"] == "ready", "{j}");
}

#[test]
fn cli_submit_status_stats_queue_list_and_errors() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let sock = d.socket();
    let s = sock.to_str().unwrap();
    let marker = dir.path().join("ran.txt");
    let (st, out, err) = cli(&[
        "submit",
        "--socket",
        s,
        "--queue",
        "notifications",
        "--",
        "sh",
        "-c",
        &format!("echo hi > {}", marker.display()),
    ]);
    assert!(st.success(), "{err}");
    let id: u64 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("submit prints the id: {out:?}"));
    d.wait_idle(Duration::from_secs(30));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hi\n");
    let (st, out, _) = cli(&["status", "--socket", s, &id.to_string()]);
    assert!(st.success());
    assert!(
        out.contains("state succeeded") && out.contains("attempt 1"),
        "{out}"
    );
    let (st, out, _) = cli(&["status", "--socket", s, "--json", &id.to_string()]);
    assert!(st.success());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["ok"], &v["job"]["kind"]),
        (&true.into(), &"exec".into()),
        "{v}"
    );

    // A failing program ends dead with its exit status and output tail.
    let (_, out, _) = cli(&[
        "submit",
        "--socket",
        s,
        "--queue",
        "default",
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 4",
    ]);
    let bad: u64 = out.trim().parse().unwrap();
    d.wait_idle(Duration::from_secs(30));
    let (_, out, _) = cli(&["status", "--socket", s, "--json", &bad.to_string()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let v = &v["job"];
    assert_eq!(v["state"], "dead");
    assert_eq!(v["attempts"][0]["exit_code"], 4);
    assert_eq!(v["attempts"][0]["output_tail"], "--- stderr ---\noops\n");

    let (st, out, _) = cli(&["stats", "--socket", s]);
    assert!(
        st.success() && out.contains("notifications") && out.contains("WAL: sync always"),
        "{out}"
    );
    let (st, out, _) = cli(&["queue", "list", "--socket", s]);
    assert!(
        st.success() && out.contains("bulk") && out.contains("reserved"),
        "{out}"
    );
    let (st, out, _) = cli(&[
        "submit", "--socket", s, "--queue", "bulk", "--kind", "noop", "--delay", "1h", "--json",
    ]);
    assert!(st.success());
    let v: Value = serde_json::from_str(&out).unwrap();
    let (st, out, _) = cli(&["cancel", "--socket", s, &v["id"].to_string()]);
    assert!(st.success() && out.contains("cancelled"), "{out}");

    // Errors: one clear line on stderr (and a hint line for the common mistakes), each cause its
    // documented exit code.
    for (args, needle, code) in [
        (
            vec!["submit", "--socket", s, "--queue", "nope", "--kind", "noop"],
            "unknown queue",
            1,
        ),
        (
            vec![
                "submit",
                "--socket",
                s,
                "--queue",
                "bulk",
                "--kind",
                "noop",
                "--delay",
                "5 parsecs",
            ],
            "--delay",
            2,
        ),
        (
            vec![
                "submit",
                "--socket",
                s,
                "--queue",
                "bulk",
                "--kind",
                "noop",
                "--payload",
                "{oops",
            ],
            "--payload",
            2,
        ),
        (vec!["status", "--socket", s, "99999"], "no job 99999", 3),
        (
            vec!["stats", "--socket", "/nonexistent/duejob.sock"],
            "cannot connect",
            4,
        ),
    ] {
        let (st, _, err) = cli(&args);
        assert_eq!(st.code(), Some(code), "{args:?}");
        assert!(
            err.starts_with("duejob: error: ")
                && err.contains(needle)
                && (err.trim().lines().count() == 1
                    || err.trim().lines().nth(1).unwrap().starts_with("  hint: ")),
            "{args:?}: {err}"
        );
    }
    // DUEJOB_SOCKET is honoured.
    let out = std::process::Command::new(BIN)
        .args(["stats", "--json"])
        .env("DUEJOB_SOCKET", s)
        .output()
        .unwrap();
    assert!(out.status.success());
    for sub in [
        &["serve"][..],
        &["submit"],
        &["status"],
        &["stats"],
        &["cancel"],
        &["queue", "list"],
        &["wal", "verify"],
        &["wal", "inspect"],
        &["wal", "dump"],
        &["demo"],
        &["alerts"],
        &["top"],
        &["queue", "set"],
        &["queue", "pause"],
        &["queue", "resume"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let (st, out, _) = cli(&args);
        assert!(st.success() && out.contains("Usage"), "{args:?}");
    }
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let dir = tempdir();
    let _d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mut d2 = Daemon::start_in_unchecked(dir.path(), &["--workers", "2"]);
    let st = d2.wait_exit(Duration::from_secs(30));
    assert!(!st.success());
    // The socket is checked first (before anything runs), so that is what it says; had the
    // socket been elsewhere, the data dir's lock would have said "in use".
    let log = d2.log_text();
    assert!(
        log.contains("another daemon is listening") || log.contains("in use by another duejob"),
        "{log}"
    );
}

/// True once `pid` has exited (gone, or a zombie nobody has reaped yet).
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_for_file(path: &std::path::Path) -> String {
    let t = std::time::Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return s.trim().to_string();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn exec_timeout_kills_the_whole_process_group() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display());
    let req = serde_json::json!({"op":"submit","queue":"default","kind":"exec","timeout_ms":200,
        "payload":{"argv":["sh","-c",script]}});
    let mut c = d.conn();
    let id = c.call(&req.to_string())["id"].as_u64().unwrap();
    let grandchild = wait_for_file(&pidfile);
    d.wait_idle(Duration::from_secs(30));
    let j = c.call(&format!(r#"{{"op":"status","id":{id}}}"#))["job"].clone();
    assert_eq!(j["state"], "dead", "{j}");
    let err = j["attempts"][0]["error"].as_str().unwrap();
    assert!(err.starts_with("timed out after 200 ms"), "{err}");
    assert_eq!(j["attempts"][0]["outcome"], "timed_out", "{j}");
    let t = std::time::Instant::now();
    while !process_gone(&grandchild) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "process {grandchild} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn shutdown_after_the_grace_period_ends_running_exec_jobs() {
    let dir = tempdir();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, "shutdown_grace = \"300ms\"\n").unwrap();
    let mut d = Daemon::start_in(
        dir.path(),
        &["--workers", "2", "--config", cfg.to_str().unwrap()],
    );
    let pidfile = dir.path().join("job.pid");
    let req = serde_json::json!({"op":"submit","queue":"default","kind":"exec",
        "payload":{"argv":["sh","-c", format!("echo $$ > {}; exec sleep 60", pidfile.display())]}});
    let id = d.conn().call(&req.to_string())["id"].as_u64().unwrap();
    let pid = wait_for_file(&pidfile);
    let st = d.stop();
    assert!(st.success(), "{}", d.log_text());
    assert!(
        d.log_text()
            .contains("still running after the grace period"),
        "{}",
        d.log_text()
    );
    let t = std::time::Instant::now();
    while !process_gone(&pid) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "exec job process {pid} outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // It was not finished, so it runs again after restart (at least once).
    let _ = std::fs::remove_file(&pidfile);
    d.restart();
    wait_for_file(&pidfile);
    let j = d.conn().call(&format!(r#"{{"op":"status","id":{id}}}"#))["job"].clone();
    assert_eq!(j["attempts"][0]["outcome"], "interrupted", "{j}");
    assert_eq!(j["attempts"].as_array().unwrap().len(), 2, "{j}");
}

/// Regression: recovered jobs used to wait for the next message to reach the dispatcher, so after a
/// restart with no new traffic they never ran.
#[test]
fn recovered_jobs_run_after_restart_without_new_traffic() {
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let marker = dir.path().join("ran.txt");
    // Delayed by 1.5 s, so it is still pending when the daemon is killed.
    let req = serde_json::json!({"op":"submit","queue":"default","kind":"exec","delay_ms":1500,
        "payload":{"argv":["sh","-c", format!("echo ran > {}", marker.display())]}});
    assert_eq!(d.conn().call(&req.to_string())["ok"], true);
    d.kill9();
    std::thread::sleep(Duration::from_millis(1600));
    d.restart();
    // No request at all reaches the dispatcher from here on: the job must run by itself.
    assert_eq!(wait_for_file(&marker), "ran");
}

/// A copy of the binary that any uid can run (the checkout may sit under a private directory).
fn shared_binary() -> (tempfile::TempDir, std::path::PathBuf) {
    let shared = tempfile::Builder::new()
        .prefix("duejob-bin-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = shared.path().join("duejob");
    // Copied by `cp`, not here: while this process held the copy open for writing, a process
    // another test forked at that moment inherited the descriptor until its exec, and running
    // the copy then failed with "Text file busy" (ETXTBSY).
    let st = std::process::Command::new("cp")
        .arg(BIN)
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success(), "cp {BIN}: {st}");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (shared, bin)
}

#[test]
fn socket_group_lets_a_member_of_that_group_connect_and_no_one_else() {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: needs root to run clients as other users");
        return;
    }
    // uid 65534 is allowed by the daemon; whether it gets in depends on its group.
    const GROUP: u32 = 54321;
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(
        &cfg,
        format!("socket_group = {GROUP}\nallow_uids = [0, 65534]\n"),
    )
    .unwrap();
    let d = Daemon::start_in(
        dir.path(),
        &["--workers", "2", "--config", cfg.to_str().unwrap()],
    );
    use std::os::unix::fs::MetadataExt;
    let sock = std::fs::metadata(d.socket()).unwrap();
    assert_eq!((sock.mode() & 0o777, sock.gid()), (0o660, GROUP));
    let data = std::fs::metadata(d.data()).unwrap();
    assert_eq!(
        (data.mode() & 0o777, data.gid()),
        (0o710, GROUP),
        "members may only pass through"
    );
    let (_keep, bin) = shared_binary();
    let as_user = |gid: u32| {
        std::process::Command::new(&bin)
            .args(["stats", "--socket", d.socket().to_str().unwrap()])
            .uid(65534)
            .gid(gid)
            .output()
            .unwrap()
    };
    let member = as_user(GROUP);
    assert!(
        member.status.success(),
        "a member of the socket's group: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    let outsider = as_user(65534);
    assert!(!outsider.status.success());
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn a_data_dir_open_to_others_is_closed_and_one_owned_by_another_user_is_refused() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "write permission for group and others removed");
    assert!(d
        .log_text()
        .contains("was writable by its group and every user"));
    drop(d);

    if rustix::process::getuid().is_root() {
        let dir = tempdir();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        rustix::fs::chown(&data, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        let mut d = Daemon::start_in_unchecked(dir.path(), &["--workers", "2"]);
        assert!(!d.wait_exit(Duration::from_secs(60)).success());
        assert!(
            d.log_text().contains("belongs to uid 65534"),
            "{}",
            d.log_text()
        );
    }
}

#[test]
fn workers_0_on_the_command_line_is_refused_not_run_as_1() {
    let dir = tempdir();
    let mut d = Daemon::start_in_unchecked(dir.path(), &["--workers", "0"]);
    assert!(!d.wait_exit(Duration::from_secs(60)).success());
    assert!(
        d.log_text().contains("workers must be between 1 and 4096"),
        "{}",
        d.log_text()
    );
}

#[test]
fn socket_group_leaves_a_socket_directory_outside_the_data_dir_alone() {
    let dir = tempdir();
    let elsewhere = dir.path().join("sockets");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    let gid = rustix::process::getgid().as_raw();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(&cfg, format!("socket_group = {gid}\n")).unwrap();
    let sock = elsewhere.join("d.sock");
    let mut d = Daemon::start_in_unchecked(
        dir.path(),
        &[
            "--workers",
            "2",
            "--config",
            cfg.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ],
    );
    let t = std::time::Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&elsewhere).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o700,
        "a directory that is not the data dir is not changed"
    );
    assert!(
        d.log_text().contains("leaves it as it is"),
        "{}",
        d.log_text()
    );
    d.kill9();
}

#[test]
fn the_demo_s_incident_fires_the_alert_the_operator_pauses_bulk_and_every_notification_goes_once() {
    let (st, out, err) = cli(&["demo", "--incident-only", "--workers", "2"]);
    assert!(st.success(), "{out}{err}");
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{out}"))
    };
    // In this order: the alert, the operator's pause, the gateway's return, the resolve.
    let steps = [
        at("ALERT retrying firing for queue notifications"),
        at("operator: duejob queue pause bulk"),
        at("the gateway is back"),
        at("alert resolved: 20/20 notifications sent"),
    ];
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert!(
        out.contains("Every notification sent once: 20 of 20 (the gateway counted 20)"),
        "{out}"
    );
}

#[test]
fn a_job_that_kills_the_daemon_as_it_starts_ends_dead_instead_of_crashing_it_forever() {
    // G3: ten interrupted attempts end a job. The job SIGKILLs the daemon the moment it runs, so
    // its `start` record must reach the log before it does (the dispatcher's batching sends the
    // records of a recovered job's dispatch at the end of that pass).
    let dir = tempdir();
    let mut d = Daemon::start_in(dir.path(), &["--workers", "2"]);
    // The dispatcher hears of a durable job before its submitter does, so the job can kill the
    // daemon before the reply is written: then the same submit again (its key) names the job.
    let submit = r#"{"op":"submit","queue":"default","kind":"exec","key":"the-killer","payload":{"argv":["sh","-c","kill -9 $PPID"]}}"#;
    let mut id = None;
    // Ten counted crashes end it; a start the commit thread had not written yet when the kill
    // came (it was in an fdatasync, or not scheduled) leaves a crash uncounted: room for those.
    let mut crashes = 0;
    let job = loop {
        // Either the job kills this daemon, or (once it is dead) the daemon stays up and says so.
        let child = d.child.as_mut().expect("running");
        if child.try_wait().unwrap().is_some() {
            d.child = None;
            crashes += 1;
            assert!(
                crashes <= 40,
                "job {id:?} killed the daemon {crashes} times:\n{}",
                d.log_text()
            );
            d.spawn();
            continue;
        }
        if let Ok(mut c) = crate::common::Conn::connect(&d.socket()) {
            match id {
                None => id = c.try_call(submit).and_then(|v| v["id"].as_u64()),
                Some(id) => {
                    if let Some(v) = c.try_call(&format!(r#"{{"op":"status","id":{id}}}"#)) {
                        if v["job"]["state"] == "dead" {
                            break v["job"].clone();
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // One job, however many times it was submitted.
    let mut c = d.conn();
    let again = c.call(submit);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], job["id"], "{again}");
    assert!(crashes >= 10, "dead after {crashes} crashes: {job}");
    // Ten attempts, each cut by a crash: nine shown interrupted, the tenth ended by recovery.
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 10, "{job}");
    assert!(
        attempts[..9].iter().all(|a| a["outcome"] == "interrupted"),
        "{job}"
    );
    assert!(
        attempts[9]["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted by 10 daemon restarts")),
        "{job}"
    );
    d.stop();
}
