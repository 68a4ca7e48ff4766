//! Exec jobs that run real app code: a queue's `env`, `env_file` and `cwd`, `submit --env` and
//! `--cwd`, relative paths, and nothing leaking from the daemon's environment.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::{cli, tempdir, Daemon};

/// An executable script at `path`.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const SECRET: &str = "s3cr3t-value-never-logged";

/// A Rails-style app directory with a `bin/job` that writes what it sees to `seen`.
fn rails_app(root: &Path) -> std::path::PathBuf {
    let app = root.join("app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    script(
        &app.join("bin/job"),
        "printf 'pwd=%s\\nenv=%s\\nhome=%s\\nsecret=%s\\nbundle=%s\\nleak=%s\\nid=%s\\nargs=%s\\n' \
         \"$(pwd)\" \"$RAILS_ENV\" \"$HOME\" \"$SECRET_KEY_BASE\" \"$BUNDLE_GEMFILE\" \
         \"$DAEMON_ONLY\" \"$DUEJOB_JOB_ID\" \"$*\" > seen",
    );
    app
}

#[test]
fn a_rails_style_job_runs_from_the_queue_config_alone() {
    let dir = tempdir();
    let app = rails_app(dir.path());
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // The env file sits beside the config and is named relative to it.
    std::fs::write(
        dir.path().join("app.env"),
        format!(
            "# production secrets\nexport SECRET_KEY_BASE='{SECRET}'\nHOME=\"{}\"\n\nBUNDLE_GEMFILE = {}/Gemfile\n",
            home.display(),
            app.display()
        ),
    )
    .unwrap();
    let cfg = dir.path().join("duejob.toml");
    std::fs::write(
        &cfg,
        format!(
            "[queues.rails]\ndue_in = \"1m\"\nenv_file = \"app.env\"\ncwd = \"{}\"\n\
             [queues.rails.env]\nRAILS_ENV = \"production\"\n",
            app.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with_env(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[("DAEMON_ONLY", "from-the-daemon"), ("RUST_LOG", "debug")],
    );
    let mut c = d.conn();
    // The program path is relative: taken from the queue's cwd.
    let id = c.submit(
        r#"{"op":"submit","queue":"rails","kind":"exec","payload":{"argv":["./bin/job","acct-42"]}}"#,
    );
    let j = c.wait_state(id, "succeeded");
    assert_eq!(j["state"], "succeeded", "{j}");
    let seen = std::fs::read_to_string(app.join("seen")).unwrap();
    // The job's `pwd` is the real path (the temp dir may sit behind a symlink).
    let app = std::fs::canonicalize(&app).unwrap();
    assert_eq!(
        seen,
        format!(
            "pwd={}\nenv=production\nhome={}\nsecret={SECRET}\nbundle={}/Gemfile\nleak=\n\
             id={id}\nargs=acct-42\n",
            app.display(),
            home.display(),
            app.display()
        )
    );
    // The payload's variables win over the queue's; its relative cwd is taken from the queue's.
    std::fs::create_dir(app.join("tmp")).unwrap();
    let id = c.submit(
        r#"{"op":"submit","queue":"rails","kind":"exec","payload":{"argv":["../bin/job"],"cwd":"tmp","env":{"RAILS_ENV":"staging"}}}"#,
    );
    c.wait_state(id, "succeeded");
    let seen = std::fs::read_to_string(app.join("tmp/seen")).unwrap();
    assert!(
        seen.starts_with(&format!("pwd={}/tmp\nenv=staging\n", app.display())),
        "{seen}"
    );
    // Secrets never reach the log, even at debug level.
    drop(c);
    let mut d = d;
    d.stop();
    let log = d.log_text();
    assert!(!log.contains(SECRET), "the secret is in the log:\n{log}");
}

#[test]
fn relative_paths_with_nothing_to_take_them_from_are_refused_at_submit() {
    let dir = tempdir();
    let d = Daemon::start_in(dir.path(), &[]);
    let mut c = d.conn();
    let r = c.call(
        r#"{"op":"submit","queue":"default","kind":"exec","payload":{"argv":["./bill.sh"]}}"#,
    );
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    let m = r["error"]["message"].as_str().unwrap();
    assert!(m.contains("\"./bill.sh\" is a relative path"), "{m}");
    assert!(!m.contains("  "), "one space between words: {m}");
    let r = c.call(
        r#"{"op":"submit","queue":"default","kind":"exec","payload":{"argv":["true"],"cwd":"sub"}}"#,
    );
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cwd \"sub\" is relative"),
        "{r}"
    );
    // A bare program name is looked up in PATH, as always.
    let id =
        c.submit(r#"{"op":"submit","queue":"default","kind":"exec","payload":{"argv":["true"]}}"#);
    c.wait_state(id, "succeeded");
}

#[test]
fn the_cli_sends_relative_paths_from_where_it_runs_with_env_and_cwd() {
    let dir = tempdir();
    let app = rails_app(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let d = Daemon::start_in(dir.path(), &[]);
    let sock = d.socket();
    // Run the CLI from the app directory: `./bin/job` and `--cwd ../work` are taken from there.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duejob"))
        .current_dir(&app)
        .env("DUEJOB_SOCKET", &sock)
        .env("DAEMON_ONLY", "from-the-cli-shell")
        .args([
            "submit",
            "-q",
            "default",
            "--env",
            "RAILS_ENV=test",
            "--env",
            "HOME=/nowhere",
            "--cwd",
            "../work",
            "--",
            "./bin/job",
            "x",
            "y",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let mut c = d.conn();
    c.wait_state(id, "succeeded");
    let seen = std::fs::read_to_string(work.join("seen")).unwrap();
    let work = std::fs::canonicalize(&work).unwrap();
    assert!(
        seen.starts_with(&format!(
            "pwd={}\nenv=test\nhome=/nowhere\n",
            work.display()
        )),
        "{seen}"
    );
    assert!(seen.contains("\nleak=\n"), "the CLI's shell leaked: {seen}");
    assert!(seen.ends_with("args=x y\n"), "{seen}");
    // A malformed --env is a usage mistake, told before anything is sent.
    let (st, _, err) = cli(&[
        "submit",
        "--socket",
        sock.to_str().unwrap(),
        "-q",
        "default",
        "--env",
        "NOVALUE",
        "--",
        "true",
    ]);
    assert!(!st.success());
    assert!(
        err.contains("--env \"NOVALUE\": expected NAME=VALUE"),
        "{err}"
    );
}

/// Starts `serve` with the config `text`; returns its stderr once it has refused to start.
fn refused_start(dir: &Path, text: &str) -> String {
    let cfg = dir.join("duejob.toml");
    std::fs::write(&cfg, text).unwrap();
    let data = dir.join("d");
    let (st, _, err) = cli(&[
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!st.success(), "started with {text:?}");
    err
}

#[test]
fn a_bad_env_file_or_cwd_stops_the_start_naming_the_line_not_the_value() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("bad.env"),
        format!("OK=1\nTOKEN {SECRET}\n"),
    )
    .unwrap();
    let err = refused_start(dir.path(), "[queues.q]\nenv_file = \"bad.env\"\n");
    assert!(err.contains("queue q: env_file"), "{err}");
    assert!(
        err.contains("bad.env: line 2: expected NAME=value"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    let err = refused_start(dir.path(), "[queues.q]\nenv_file = \"missing.env\"\n");
    assert!(err.contains("missing.env: No such file"), "{err}");
    let err = refused_start(dir.path(), "[queues.q]\ncwd = \"/nonexistent/dir\"\n");
    assert!(
        err.contains("queue q: cwd /nonexistent/dir is not a directory"),
        "{err}"
    );
}
