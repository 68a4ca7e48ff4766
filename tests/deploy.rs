//! Deployment: the systemd unit in `deploy/` is valid (systemd-analyze), is the one
//! docs/deploy.md shows, stops within its own limits, and its ExecStart and ExecStartPost work
//! as written (their paths moved into a temp dir).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{tempdir, BIN};

const UNIT: &str = include_str!("../deploy/duejob.service");

/// The value of `key=` in the unit (the first one).
fn value(key: &str) -> &'static str {
    UNIT.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_is_the_one_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploy.md")).unwrap();
    assert!(
        doc.contains(UNIT),
        "docs/deploy.md does not show deploy/duejob.service as it is"
    );
    // systemd-analyze checks the binary exists: point it at this build.
    let dir = tempdir();
    let unit = dir.path().join("duejob.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/duejob", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian: apt-get install systemd) checks the unit");
    let err = String::from_utf8_lossy(&out.stderr);
    // It exits 0 on unknown keys and bad values too, only saying so: nothing may be said.
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
    // The stop sequence fits: SIGTERM to the daemon alone, and time for the grace period.
    assert_eq!(value("KillMode"), "mixed");
    assert_eq!(value("KillSignal"), "SIGTERM");
    let stop = duejob::config::parse_duration(value("TimeoutStopSec")).unwrap();
    let grace = duejob::config::Config::with_workers(4).shutdown_grace;
    assert!(
        stop > grace + Duration::from_secs(5),
        "TimeoutStopSec {stop:?} vs shutdown_grace {grace:?}"
    );
}

#[test]
fn the_unit_s_commands_start_serve_and_stop_as_written() {
    let dir = tempdir();
    let root = dir.path();
    // What systemd makes before ExecStart: the state, runtime and configuration directories.
    let moved = |s: &str| {
        s.replace("/usr/local/bin/duejob", BIN)
            .replace("/var/lib/duejob", root.join("state").to_str().unwrap())
            .replace("/run/duejob", root.join("run").to_str().unwrap())
            .replace("/etc/duejob", root.join("etc").to_str().unwrap())
    };
    for (d, mode) in [
        ("state", value("StateDirectoryMode")),
        ("run", value("RuntimeDirectoryMode")),
        ("etc", "0755"),
    ] {
        let p = root.join(d);
        std::fs::create_dir(&p).unwrap();
        let mode = u32::from_str_radix(mode, 8).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let gid = rustix::process::getgid().as_raw();
    std::fs::write(
        root.join("etc/duejob.toml"),
        format!("socket_group = {gid}\n"),
    )
    .unwrap();
    let exec = moved(value("ExecStart"));
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let mut daemon = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(moved(value("WorkingDirectory")))
        .env_clear()
        .env(
            "RUST_LOG",
            value("Environment").trim_start_matches("RUST_LOG="),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut daemon);
    // ExecStartPost returns once the socket is there.
    let post = moved(value("ExecStartPost"));
    let script = post
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .expect("ExecStartPost=/bin/sh -c '...'");
    let mut wait = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while wait.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "ExecStartPost never returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = root.join("run/duejob.sock");
    let m = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (m.mode() & 0o777, m.gid()),
        (0o660, gid),
        "the socket for socket_group"
    );
    let out = Command::new(BIN)
        .args(["submit", "-q", "default", "--", "true"])
        .env("DUEJOB_SOCKET", &sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // systemctl stop: SIGTERM, exit 0 well within TimeoutStopSec.
    let pid = rustix::process::Pid::from_child(guard.0);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = guard.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st}");
    assert!(!sock.exists(), "the socket is removed at exit");
}
