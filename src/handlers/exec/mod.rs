//! The `exec` kind: runs an argv (never through a shell) with an explicit environment.
//!
//! Payload: `{"argv": ["prog", "arg"], "env": {"K": "V"}, "cwd": "/dir"}`. The child gets only the
//! given environment, plus `PATH=/usr/local/bin:/usr/bin:/bin` unless the payload sets `PATH`.
//! It runs in its own process group with stdin from /dev/null. Exit status 0 is success. On
//! timeout (or cancel) the whole group gets SIGTERM, then SIGKILL after [`KILL_GRACE`]. When the
//! program exits, whatever it left running in its group is killed too, and the attempt ends: output
//! still held open by a process that left the group is not waited for (beyond [`OUTPUT_DRAIN`]).
//! The last [`TAIL_BYTES`] of stdout and of stderr are kept with the attempt.
//!
//! No job process outlives the daemon: the program gets SIGKILL when the daemon dies (also by
//! SIGKILL), and every running process group is written down in the run journal (`DATA/run/`,
//! [`journal`]); at the next start, before any job runs, groups still there (descendants that
//! stayed in the group) are killed, once checked to be the ones the journal names.
//!
//! - [`child`]: spawning and the one loop that waits for exit, output, timeout and stop signal.
//! - [`journal`]: the run journal and the clean-up at start.

pub mod child;
pub mod journal;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;

use super::{Handler, JobContext, JobError};
use journal::Journal;

/// Bytes of stdout and of stderr kept.
pub const TAIL_BYTES: usize = 2048;
/// Between SIGTERM and SIGKILL on timeout.
pub const KILL_GRACE: Duration = Duration::from_millis(500);
/// How long output is still read after the program exits (what it wrote before exiting is in
/// the pipe already; this only bounds the wait for a process that left the group and keeps the
/// pipe open).
pub const OUTPUT_DRAIN: Duration = Duration::from_millis(100);

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
/// With a data directory ([`Handler::start`]) it also keeps the run journal.
#[derive(Default)]
pub struct Exec {
    running: Mutex<HashSet<i32>>,
    journal: OnceLock<Journal>,
}

impl Handler for Exec {
    fn validate(&self, payload: &str) -> Result<(), String> {
        ExecPayload::parse(payload).map(|_| ())
    }

    fn start(&self, data_dir: Option<&Path>) -> Result<(), String> {
        let Some(dir) = data_dir else {
            return Ok(());
        };
        let journal =
            Journal::open(&dir.join("run")).map_err(|e| format!("exec: run journal: {e}"))?;
        journal.kill_leftovers();
        let _ = self.journal.set(journal);
        Ok(())
    }

    fn run(&self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        let mut p = ExecPayload::parse(ctx.payload)?;
        if let Some(of) = ctx.replay_of {
            p.env.insert("DUEJOB_REPLAY_OF".into(), of.to_string());
        }
        child::run(child::Run {
            payload: &p,
            timeout: ctx.timeout,
            ctx: Some(ctx),
            running: Some(&self.running),
            journal: self.journal.get(),
            stdin: None,
        })
    }

    fn abort_running(&self) {
        let groups: Vec<i32> = self
            .running
            .lock()
            .map(|g| g.iter().copied().collect())
            .unwrap_or_default();
        for pgid in groups {
            log::warn!("killing process group {pgid} of an exec job still running at shutdown");
            child::signal_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

/// Runs the program outside a runtime (no stop signal, no journal), for the unit tests.
#[cfg(test)]
fn run(p: &ExecPayload, timeout: Option<Duration>) -> Result<(), JobError> {
    child::run(child::Run {
        payload: p,
        timeout,
        ctx: None,
        running: None,
        journal: None,
        stdin: None,
    })
}

/// Runs `argv` (no shell) with `input` on its stdin and the daemon's environment, in its own
/// process group, killed after `timeout` (the alert command). Exit status 0 is success.
pub fn run_command(argv: &[String], input: &[u8], timeout: Duration) -> Result<(), JobError> {
    let p = ExecPayload {
        argv: argv.to_vec(),
        env: std::env::vars().collect(),
        cwd: None,
    };
    child::run(child::Run {
        payload: &p,
        timeout: Some(timeout),
        ctx: None,
        running: None,
        journal: None,
        stdin: Some(input),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn payload(argv: &[&str]) -> ExecPayload {
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
}
