//! The `exec` kind: runs an argv (never through a shell) with an explicit environment.
//!
//! Payload: `{"argv": ["prog", "arg"], "env": {"K": "V"}, "cwd": "/dir"}`. The child gets only the
//! given environment, plus `PATH=/usr/local/bin:/usr/bin:/bin` unless the payload sets `PATH`.
//! It runs in its own process group with stdin from /dev/null. Exit status 0 is success. On
//! timeout the whole group gets SIGTERM, then SIGKILL after [`KILL_GRACE`]. When the program
//! exits, whatever it left running in its group is killed too, so no job outlives its attempt.
//! The last [`TAIL_BYTES`] of stdout and of stderr are kept with the attempt.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use super::{Handler, JobContext, JobError, StopReason};

/// Bytes of stdout and of stderr kept.
pub const TAIL_BYTES: usize = 2048;
/// Between SIGTERM and SIGKILL on timeout.
pub const KILL_GRACE: Duration = Duration::from_millis(500);
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Parsed `exec` payload.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExecPayload {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment of the child (nothing else is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
}

impl ExecPayload {
    /// Parses and checks a payload.
    pub fn parse(payload: &str) -> Result<ExecPayload, String> {
        let p: ExecPayload =
            serde_json::from_str(payload).map_err(|e| format!("exec payload: {e}"))?;
        if p.argv.is_empty() || p.argv[0].is_empty() {
            return Err("exec payload: argv must name a program".into());
        }
        if p.argv.iter().any(|a| a.contains('\0')) {
            return Err("exec payload: argv must not contain NUL bytes".into());
        }
        for (k, v) in &p.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(format!("exec payload: invalid environment variable {k:?}"));
            }
        }
        if p.cwd
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.contains('\0'))
        {
            return Err("exec payload: cwd must be a non-empty path".into());
        }
        Ok(p)
    }
}

/// The `exec` handler. It remembers the process groups it has running, so that a shutdown can
/// end them ([`Handler::abort_running`]); the set is touched only when a program starts or ends.
#[derive(Default)]
pub struct Exec {
    running: Mutex<HashSet<i32>>,
}

impl Handler for Exec {
    fn validate(&self, payload: &str) -> Result<(), String> {
        ExecPayload::parse(payload).map(|_| ())
    }

    fn run(&self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        let p = ExecPayload::parse(ctx.payload)?;
        run_tracked(&p, ctx.timeout, Some(&self.running), Some(ctx))
    }

    fn abort_running(&self) {
        let groups: Vec<i32> = self
            .running
            .lock()
            .map(|g| g.iter().copied().collect())
            .unwrap_or_default();
        for pgid in groups {
            log::warn!("killing process group {pgid} of an exec job still running at shutdown");
            signal_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

fn tail_of(mut r: impl Read) -> Vec<u8> {
    let mut keep = Vec::with_capacity(TAIL_BYTES * 2);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > TAIL_BYTES * 2 {
                    keep.drain(..keep.len() - TAIL_BYTES);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if keep.len() > TAIL_BYTES {
        keep.drain(..keep.len() - TAIL_BYTES);
    }
    keep
}

fn signal_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Runs the program; see the module doc.
pub fn run(p: &ExecPayload, timeout: Option<Duration>) -> Result<(), JobError> {
    run_tracked(p, timeout, None, None)
}

/// How often the watchdog looks at the stop signal while it waits.
const STOP_POLL: Duration = Duration::from_millis(20);

fn run_tracked(
    p: &ExecPayload,
    timeout: Option<Duration>,
    running: Option<&Mutex<HashSet<i32>>>,
    ctx: Option<&JobContext<'_>>,
) -> Result<(), JobError> {
    let mut cmd = Command::new(&p.argv[0]);
    cmd.args(&p.argv[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !p.env.contains_key("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(&p.env);
    if let Some(cwd) = &p.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| JobError::new(format!("cannot start {:?}: {e}", p.argv[0])))?;
    let pgid = child.id() as i32;
    let track = |add: bool| {
        if let Some(Ok(mut set)) = running.map(|m| m.lock()) {
            if add {
                set.insert(pgid);
            } else {
                set.remove(&pgid);
            }
        }
    };
    track(true);
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let stopped: Mutex<Option<StopReason>> = Mutex::new(None);
    let started = std::time::Instant::now();
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let (status, out, err) = std::thread::scope(|s| {
        let out = s.spawn(|| tail_of(stdout));
        let err = s.spawn(|| tail_of(stderr));
        if timeout.is_some() || ctx.is_some() {
            let stopped = &stopped;
            s.spawn(move || {
                let deadline = timeout.map(|t| started + t);
                loop {
                    let mut wait = STOP_POLL;
                    if let Some(d) = deadline {
                        wait = wait.min(d.saturating_duration_since(std::time::Instant::now()));
                    }
                    if !done_rx.recv_timeout(wait).is_err_and(|e| e.is_timeout()) {
                        return; // the program ended
                    }
                    let why = if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        Some(StopReason::TimedOut)
                    } else {
                        ctx.and_then(|c| c.should_stop())
                    };
                    if let Some(why) = why {
                        if let Ok(mut s) = stopped.lock() {
                            *s = Some(why);
                        }
                        signal_group(pgid, rustix::process::Signal::TERM);
                        if done_rx
                            .recv_timeout(KILL_GRACE)
                            .is_err_and(|e| e.is_timeout())
                        {
                            signal_group(pgid, rustix::process::Signal::KILL);
                        }
                        return;
                    }
                }
            });
        }
        let status = child.wait();
        drop(done_tx);
        // Whatever the program left behind in its group goes with it (and closes the pipes).
        signal_group(pgid, rustix::process::Signal::KILL);
        track(false);
        (
            status,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    });
    let status = status.map_err(|e| JobError::new(format!("waiting for the program: {e}")))?;
    let mut tail = String::from_utf8_lossy(&out).into_owned();
    if !err.is_empty() {
        if !tail.is_empty() && !tail.ends_with('\n') {
            tail.push('\n');
        }
        tail.push_str("--- stderr ---\n");
        tail.push_str(&String::from_utf8_lossy(&err));
    }
    let stopped = stopped.lock().map(|s| *s).unwrap_or(None);
    if let Some(why) = stopped {
        let reason = match why {
            StopReason::TimedOut => {
                let ms = timeout
                    .or(ctx.and_then(|c| c.timeout))
                    .map(|t| t.as_millis())
                    .unwrap_or(0);
                format!("timed out after {ms} ms; process group killed")
            }
            StopReason::Cancelled => "cancelled; process group killed".to_string(),
        };
        return Err(JobError {
            reason,
            exit_code: status.code(),
            output_tail: tail,
            permanent: false,
        });
    }
    if status.success() {
        return Ok(());
    }
    let reason = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended abnormally".to_string(),
    };
    Err(JobError {
        reason,
        exit_code: status.code(),
        output_tail: tail,
        permanent: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(argv: &[&str]) -> ExecPayload {
        ExecPayload {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
        }
    }

    #[test]
    fn payload_validation() {
        assert!(ExecPayload::parse(r#"{"argv":["true"]}"#).is_ok());
        assert!(ExecPayload::parse(r#"{"argv":[]}"#)
            .unwrap_err()
            .contains("name a program"));
        assert!(ExecPayload::parse(r#"{"argv":"true"}"#)
            .unwrap_err()
            .contains("invalid type"));
        assert!(ExecPayload::parse(r#"{"argv":["a"],"env":{"A=B":"c"}}"#).is_err());
        assert!(ExecPayload::parse(r#"{"argv":["a"],"shell":true}"#)
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn exit_status_env_and_output_tail() {
        assert_eq!(run(&payload(&["true"]), None), Ok(()));
        let e = run(
            &payload(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            None,
        )
        .unwrap_err();
        assert_eq!(e.exit_code, Some(3));
        assert_eq!(e.reason, "exited with status 3");
        assert_eq!(e.output_tail, "out\n--- stderr ---\nerr\n");
        let mut p = payload(&["sh", "-c", "test \"$FOO\" = bar && test -z \"$HOME\""]);
        p.env.insert("FOO".into(), "bar".into());
        assert_eq!(run(&p, None), Ok(()), "explicit environment only");
        let e = run(&payload(&["/nonexistent/prog"]), None).unwrap_err();
        assert!(e.reason.contains("cannot start"), "{}", e.reason);
    }

    #[test]
    fn long_output_keeps_only_the_tail() {
        let e = run(&payload(&["sh", "-c", "seq 1 100000; exit 1"]), None).unwrap_err();
        assert!(e.output_tail.len() <= TAIL_BYTES);
        assert!(e.output_tail.ends_with("99999\n100000\n"));
    }

    #[test]
    fn timeout_kills_the_group() {
        let t0 = std::time::Instant::now();
        let e = run(
            &payload(&["sh", "-c", "sleep 30 & sleep 30"]),
            Some(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(
            e.reason.starts_with("timed out after 200 ms"),
            "{}",
            e.reason
        );
        // Outcome, not timing: the grandchild holding the pipe is gone, or we would still wait.
        assert!(t0.elapsed() < Duration::from_secs(25));
    }
}
