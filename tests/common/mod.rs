//! Shared helpers for integration tests: the real `duejob` binary in a temp dir, talked to over
//! its socket. Every daemon a test starts is killed when its [`Daemon`] drops, also on panic.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_duejob");

/// A daemon process with its own data directory.
pub struct Daemon {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    extra: Vec<String>,
    /// Environment variables set for the daemon (beside `RUST_LOG`).
    pub envs: Vec<(String, String)>,
    /// A command the daemon is started through (its arguments follow), e.g. a shell setting a
    /// limit and exec'ing it.
    pub prefix: Vec<String>,
}

/// Numbers the log files of all daemons of this test binary (several may share a directory).
static LOGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Daemon {
    fn new(dir: &Path, extra: &[&str]) -> Daemon {
        Daemon {
            dir: dir.to_path_buf(),
            child: None,
            log: dir.join("daemon.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            envs: Vec::new(),
            prefix: Vec::new(),
        }
    }

    /// A daemon to be started with the open-file limit (soft and hard) set to `nofile`; not
    /// spawned yet.
    pub fn with_fd_limit(dir: &Path, extra: &[&str], nofile: u32) -> Daemon {
        let mut d = Daemon::new(dir, extra);
        d.prefix = vec![
            "sh".into(),
            "-c".into(),
            format!("ulimit -n {nofile} && exec \"$0\" \"$@\""),
        ];
        d
    }

    /// Like [`Daemon::start_in`], with the open-file limit (soft and hard) set to `nofile`.
    pub fn start_with_fd_limit(dir: &Path, extra: &[&str], nofile: u32) -> Daemon {
        let mut d = Daemon::with_fd_limit(dir, extra, nofile);
        d.restart();
        d
    }

    /// Like [`Daemon::start_in`], with extra environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::new(dir, extra);
        d.envs = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.restart();
        d
    }

    /// Starts a daemon in `dir` with `extra` serve arguments and waits until it serves.
    pub fn start_in(dir: &Path, extra: &[&str]) -> Daemon {
        let mut d = Daemon::new(dir, extra);
        d.restart();
        d
    }

    /// Spawns a daemon without waiting for it to serve (for daemons expected to fail or refuse).
    pub fn start_in_unchecked(dir: &Path, extra: &[&str]) -> Daemon {
        let mut d = Daemon::new(dir, extra);
        d.spawn();
        d
    }

    /// Waits until the socket accepts connections.
    pub fn wait_for_socket(&mut self) {
        let t = Instant::now();
        while UnixStream::connect(self.socket()).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no socket:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.data().join("duejob.sock")
    }

    /// Spawns the process without waiting for the socket.
    pub fn spawn(&mut self) -> &mut Child {
        assert!(self.child.is_none(), "daemon already running");
        let n = LOGS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.log = self.dir.join(format!("daemon-{n}.log"));
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("serve")
            .arg("--data")
            .arg(self.data())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start duejob");
        self.child = Some(child);
        self.child.as_mut().unwrap()
    }

    /// (Re)starts and waits until the socket answers `hello`.
    pub fn restart(&mut self) {
        self.spawn();
        let t = Instant::now();
        loop {
            if let Ok(mut c) = Conn::connect(&self.socket()) {
                // The socket is in place before recovery: a daemon that fails to start resets
                // the connections waiting on it, and the check below says why.
                if c.try_call(r#"{"op":"hello"}"#)
                    .is_some_and(|v| v["ok"] == true)
                {
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start ({st}):\n{}", self.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "daemon did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself (e.g. a failed start).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if t.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("daemon did not exit within {limit:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), sig).unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit(Duration::from_secs(60))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn conn(&self) -> Conn {
        Conn::connect(&self.socket()).expect("connect")
    }

    /// Polls `stats` until no job is scheduled, ready, running or retrying.
    pub fn wait_idle(&self, limit: Duration) -> Value {
        self.wait_until_none(&["scheduled", "ready", "running", "retrying"], limit)
    }

    /// Polls `stats` until no job is in any of `states`.
    pub fn wait_until_none(&self, states: &[&str], limit: Duration) -> Value {
        let mut c = self.conn();
        let t = Instant::now();
        loop {
            let s = c.call(r#"{"op":"stats"}"#);
            let t2 = &s["totals"];
            let busy: u64 = states.iter().map(|k| t2[k].as_u64().unwrap()).sum();
            if busy == 0 {
                return s;
            }
            assert!(t.elapsed() < limit, "still busy after {limit:?}: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Whether it was still running, and its log, tell why a failed test failed.
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        self.kill9();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- the daemon {} ({}); the last lines of its log:",
                self.dir.display(),
                match exited {
                    Some(st) => format!("had exited: {st}"),
                    None => "was running".into(),
                }
            );
            for l in tail.iter().rev() {
                eprintln!("    {l}");
            }
        }
    }
}

/// A raw protocol connection.
pub struct Conn {
    pub w: UnixStream,
    pub r: BufReader<UnixStream>,
}

impl Conn {
    pub fn connect(path: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    pub fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.r.read_line(&mut line).expect("read reply");
        assert!(n > 0, "connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
    }

    pub fn call(&mut self, line: &str) -> Value {
        self.send(line);
        self.recv()
    }

    /// [`Conn::call`], but `None` when the connection fails or closes instead of a panic (a
    /// daemon still starting, or one that just exited).
    pub fn try_call(&mut self, line: &str) -> Option<Value> {
        self.w.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut reply = String::new();
        match self.r.read_line(&mut reply) {
            Ok(n) if n > 0 => serde_json::from_str(&reply).ok(),
            _ => None,
        }
    }

    /// Submits one job (a JSON request line) and returns its id.
    pub fn submit(&mut self, line: &str) -> u64 {
        let v = self.call(line);
        v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("submit refused: {v}"))
    }

    /// A job's status (the `job` object).
    pub fn status(&mut self, id: u64) -> Value {
        self.call(&format!(r#"{{"op":"status","id":{id}}}"#))["job"].clone()
    }

    /// Polls `status` until the job is in `state`.
    pub fn wait_state(&mut self, id: u64, state: &str) -> Value {
        let t = Instant::now();
        loop {
            let j = self.status(id);
            if j["state"] == state {
                return j;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "job {id} never became {state}: {j}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True when the daemon closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

/// The daemon's `stats`.
pub fn stats(d: &Daemon) -> Value {
    d.conn().call(r#"{"op":"stats"}"#)
}

/// Polls `stats` until `done` says yes.
pub fn wait_stats(d: &Daemon, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s = stats(d);
        if done(&s) {
            return s;
        }
        assert!(t.elapsed() < limit, "not reached in {limit:?}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("duejob-test-")
        .tempdir()
        .unwrap()
}

/// Runs the CLI; returns (status, stdout, stderr).
pub fn cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("DUEJOB_SOCKET")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bytes of every file under `dir`, by path.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_file() {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// A Python 3 that can import `module` (`$DUEJOB_TEST_PYTHON`, `python3`, `/usr/bin/python3`);
/// panics with how to install it (CI's `.ci/run` does).
pub fn python_with(module: &str) -> String {
    let mut tried = Vec::new();
    let candidates = std::env::var("DUEJOB_TEST_PYTHON")
        .into_iter()
        .chain(["python3".to_string(), "/usr/bin/python3".to_string()]);
    for py in candidates {
        let ok = std::process::Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py;
        }
        tried.push(py);
    }
    panic!(
        "this test needs a Python with {module} (tried {tried:?}): `python3 -m pip install \
         {module}` (or Debian's python3-{module} and DUEJOB_TEST_PYTHON=/usr/bin/python3)"
    );
}

/// What an alert command that appends its stdin to `path` was given: one JSON object per line.
pub fn alert_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// Waits until the alert command has been given an event matching `f`; returns it.
pub fn wait_alert(path: &Path, f: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        if let Some(v) = alert_lines(path).into_iter().find(|v| f(v)) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no such alert: {:?}",
            alert_lines(path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
