//! Command-line conventions (docs/cli.md): one exit code per cause, one `--json` envelope for
//! every command (errors included, on stdout), hints for the common mistakes, a broken pipe
//! ending quietly, completions and the man page.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{cli, tempdir, Daemon, BIN};

/// Runs the CLI with `--json` and returns (exit code, the one JSON value on stdout, stderr).
fn json(args: &[&str]) -> (i32, Value, String) {
    // Before a `--` (what follows it is a program's).
    let mut all = args.to_vec();
    let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
    all.insert(at, "--json");
    let (st, out, err) = cli(&all);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON value ({e}): {out:?}"));
    (st.code().expect("exited"), v, err)
}

#[test]
fn each_exit_code_means_one_thing() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &[]);
    let s = d.socket();
    let s = s.to_str().unwrap();
    let code = |args: &[&str]| cli(args).0.code().unwrap();
    // 0: done.
    assert_eq!(code(&["stats", "--socket", s]), 0);
    // 1: the daemon refused it.
    assert_eq!(
        code(&["submit", "--socket", s, "-q", "nope", "-k", "noop"]),
        1
    );
    assert_eq!(
        code(&[
            "queue",
            "set",
            "default",
            "--socket",
            s,
            "--max-workers",
            "0"
        ]),
        1
    );
    // 2: the command line is wrong (clap's and ours).
    assert_eq!(code(&["submit", "--socket", s]), 2);
    assert_eq!(code(&["status", "--socket", s, "not-a-number"]), 2);
    assert_eq!(
        code(&["submit", "--socket", s, "-q", "default", "--env", "X", "--", "true"]),
        2
    );
    assert_eq!(
        code(&[
            "submit",
            "--socket",
            s,
            "-q",
            "default",
            "--delay",
            "5 parsecs",
            "-k",
            "noop"
        ]),
        2
    );
    // 3: no such job.
    assert_eq!(code(&["status", "--socket", s, "999999"]), 3);
    assert_eq!(code(&["cancel", "--socket", s, "999999"]), 3);
    // 4: no daemon there.
    let gone = dir.path().join("gone.sock");
    assert_eq!(code(&["stats", "--socket", gone.to_str().unwrap()]), 4);
    // A socket file nobody listens on (a daemon that was SIGKILLed leaves one).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (st, _, err) = cli(&["stats", "--socket", stale.to_str().unwrap()]);
    assert_eq!(st.code(), Some(4));
    assert!(
        err.contains("hint: the socket is there but no daemon listens"),
        "{err}"
    );
    // --help and --version are not errors.
    assert_eq!(code(&["--version"]), 0);
    assert_eq!(code(&["submit", "--help"]), 0);
}

#[test]
fn a_missing_daemon_gets_a_hint_naming_serve_and_duejob_socket() {
    let dir = tempdir();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_remove("DUEJOB_SOCKET")
        .arg("stats")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("duejob: error: cannot connect to ./duejob-data/duejob.sock"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("  hint: is the daemon running?"),
        "{err}"
    );
    assert!(
        lines[1].contains("duejob serve") && lines[1].contains("DUEJOB_SOCKET"),
        "{err}"
    );
}

#[test]
fn every_command_s_json_is_one_envelope_and_errors_come_as_json_on_stdout() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &[]);
    let s = d.socket();
    let s = s.to_str().unwrap();
    let (c, v, _) = json(&["submit", "--socket", s, "-q", "default", "-k", "noop"]);
    assert_eq!((c, &v["ok"]), (0, &Value::Bool(true)), "{v}");
    let id = v["id"].as_u64().unwrap();
    d.conn().wait_state(id, "succeeded");
    let data = d.data();
    let id_s = id.to_string();
    for (args, field) in [
        (vec!["status", "--socket", s, &id_s], "job"),
        (vec!["stats", "--socket", s], "queues"),
        (vec!["queue", "list", "--socket", s], "queues"),
        (vec!["alerts", "--socket", s], "alerts"),
        (vec!["jobs", "--socket", s], "jobs"),
        (vec!["dead", "list", "--socket", s], "jobs"),
        (vec!["wal", "inspect", data.to_str().unwrap()], "segments"),
    ] {
        let (c, v, err) = json(&args);
        assert_eq!(c, 0, "{args:?}: {err}");
        assert_eq!(v["ok"], true, "{args:?}: {v}");
        assert!(!v[field].is_null(), "{args:?} has no {field}: {v}");
    }
    // Errors: the envelope on stdout, nothing on stderr, the exit code of the cause.
    for (args, want_code, want_error) in [
        (vec!["status", "--socket", s, "999999"], 3, "not_found"),
        (vec!["cancel", "--socket", s, &id_s], 1, "wrong_state"),
        (
            vec!["submit", "--socket", s, "-q", "nope", "-k", "noop"],
            1,
            "unknown_queue",
        ),
        (vec!["submit", "--socket", s], 2, "usage"),
        (
            vec![
                "submit", "--socket", s, "-q", "x", "--env", "X", "--", "true",
            ],
            2,
            "usage",
        ),
        (
            vec!["stats", "--socket", "/nonexistent/x.sock"],
            4,
            "unreachable",
        ),
    ] {
        let (c, v, err) = json(&args);
        assert_eq!(
            (c, v["ok"].as_bool()),
            (want_code, Some(false)),
            "{args:?}: {v}"
        );
        assert_eq!(v["error"]["code"], want_error, "{args:?}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(err.is_empty(), "{args:?}: stderr {err:?}");
    }
    let (_, v, _) = json(&["stats", "--socket", "/nonexistent/x.sock"]);
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("duejob serve"),
        "{v}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_listing_quietly() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &[]);
    let mut c = d.conn();
    // Enough jobs that the listing outgrows the pipe's buffer.
    let jobs: Vec<String> = (0..1500)
        .map(|_| r#"{"queue":"default","kind":"noop"}"#.to_string())
        .collect();
    let r = c.call(&format!(
        r#"{{"op":"submit_batch","jobs":[{}]}}"#,
        jobs.join(",")
    ));
    assert_eq!(r["ok"], true, "{r}");
    d.wait_idle(std::time::Duration::from_secs(60));
    for args in [
        vec!["jobs", "--limit", "1500"],
        vec!["jobs", "--limit", "1500", "--json"],
    ] {
        let mut child = Command::new(BIN)
            .args(&args)
            .arg("--socket")
            .arg(d.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -1`: read one line, then close the pipe.
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The completion generator and the man page too: their output fits a pipe's buffer, so the
    // pipe is closed before they start (their first write fails).
    for args in [vec!["completions", "bash"], vec!["man"]] {
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        drop(read_end);
        let child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions() {
    let (st, bash, _) = cli(&["completions", "bash"]);
    assert!(st.success());
    for sub in [
        "submit",
        "status",
        "replay",
        "queue",
        "completions",
        "--socket",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    // It is valid bash.
    let dir = tempdir();
    let f = dir.path().join("duejob.bash");
    std::fs::write(&f, &bash).unwrap();
    let st = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(st.success(), "bash -n rejects the completion script");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (st, out, _) = cli(&["completions", shell]);
        assert!(st.success() && out.contains("submit"), "{shell}");
    }
    let (st, _, err) = cli(&["completions", "tcsh"]);
    assert_eq!(st.code(), Some(2), "{err}");
    let (st, man, _) = cli(&["man"]);
    assert!(st.success());
    assert!(
        man.contains(".TH duejob 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    let pages = tempdir();
    let (st, _, err) = cli(&["man", "--dir", pages.path().to_str().unwrap()]);
    assert!(st.success(), "{err}");
    for page in [
        "duejob.1",
        "duejob-submit.1",
        "duejob-queue-set.1",
        "duejob-wal-verify.1",
    ] {
        let text = std::fs::read_to_string(pages.path().join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let top = std::fs::read_to_string(pages.path().join("duejob.1")).unwrap();
    assert_eq!(top, man, "the top page is the one `duejob man` prints");
    for s in [
        ".SH SUBCOMMANDS",
        ".SH \"EXIT STATUS\"",
        "DUEJOB_SOCKET",
        "daemon cannot be reached",
    ] {
        assert!(man.contains(s), "the man page lacks {s}");
    }
}
