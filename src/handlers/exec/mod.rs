//! The `exec` kind: runs an argv (never through a shell) with an explicit environment.
//!
//! Payload: `{"argv": ["prog", "arg"], "env": {"K": "V"}, "cwd": "/dir"}`, on top of the queue's
//! `env`, `env_file` and `cwd` ([`ExecDefaults`]; the payload's variables win). The child gets only
//! that environment, plus `PATH=/usr/local/bin:/usr/bin:/bin` unless it sets `PATH`, and
//! `DUEJOB_JOB_ID`, `DUEJOB_ATTEMPT`, `DUEJOB_QUEUE` (and `DUEJOB_REPLAY_OF` for a replay); nothing
//! of the daemon's own environment. A relative `cwd` is taken from the queue's `cwd`, a relative
//! program path (`./bill.sh`, one with a `/`) from the job's working directory; with neither
//! to take it from, the job is refused at submit (the daemon's own directory is nobody's
//! business). It runs in its own process group with stdin from /dev/null. Exit status 0 is success. On
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
pub mod output;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;

use super::{Admitted, Handler, JobContext, JobError};
use crate::config::{Config, ExecDefaults};
use output::OutputStore;
use journal::Journal;

/// Bytes of stdout and of stderr kept.
pub const TAIL_BYTES: usize = 2048;
/// Between SIGTERM and SIGKILL on timeout.
pub const KILL_GRACE: Duration = Duration::from_millis(500);
/// How long output is still read after the program exits (what it wrote before exiting is in
/// the pipe already; this only bounds the wait for a process that left the group and keeps the
/// pipe open).
pub const OUTPUT_DRAIN: Duration = Duration::from_millis(100);

/// Parsed `exec` payload. Its `Debug` names the environment's variables, not their values
/// (after [`ExecPayload::resolve`] they include the queue's `env_file`).
#[derive(Deserialize, PartialEq, Eq)]
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

impl std::fmt::Debug for ExecPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecPayload")
            .field("argv", &self.argv)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .finish()
    }
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
            crate::config::check_env_var(k, v).map_err(|e| format!("exec payload: {e}"))?;
        }
        if p.cwd
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.contains('\0'))
        {
            return Err("exec payload: cwd must be a non-empty path".into());
        }
        Ok(p)
    }

    /// Puts the queue's defaults under the payload (see the module doc): the environment
    /// merged, `cwd` and a relative program path made absolute.
    pub fn resolve(&mut self, defaults: Option<&ExecDefaults>) -> Result<(), String> {
        if let Some(d) = defaults {
            for (k, v) in &d.env {
                self.env.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let base = defaults.and_then(|d| d.cwd.as_deref());
        let cwd: Option<std::path::PathBuf> = match self.cwd.as_deref().map(Path::new) {
            Some(c) if c.is_absolute() => Some(c.to_path_buf()),
            Some(c) => Some(base.map(|b| b.join(c)).ok_or_else(|| {
                format!(
                    "exec payload: cwd {c:?} is relative and the queue has no cwd to take it \
                     from: give an absolute path (`duejob submit --cwd` sends one)"
                )
            })?),
            None => base.map(Path::to_path_buf),
        };
        let prog = Path::new(&self.argv[0]);
        if !prog.is_absolute() && self.argv[0].contains('/') {
            let dir = cwd.as_deref().ok_or_else(|| {
                format!(
                    "exec payload: program {:?} is a relative path and the job has no working \
                     directory to take it from: give an absolute path, a cwd, or the queue a cwd \
                     (`duejob submit` sends absolute paths)",
                    self.argv[0]
                )
            })?;
            self.argv[0] = dir.join(prog).to_string_lossy().into_owned();
        }
        self.cwd = cwd.map(|c| c.to_string_lossy().into_owned());
        Ok(())
    }
}

/// The `exec` handler. It remembers the process groups it has running, so that a shutdown can
/// end them ([`Handler::abort_running`]); the set is touched only when a program starts or ends.
/// With a data directory ([`Handler::start`]) it also keeps the run journal.
#[derive(Default)]
pub struct Exec {
    running: Mutex<HashSet<i32>>,
    journal: OnceLock<Journal>,
    /// Each queue's `env`, `env_file` and `cwd`, by queue name.
    queues: HashMap<String, ExecDefaults>,
    /// Where every attempt's output goes (`DATA/output/`), once started with a data directory.
    output: OnceLock<OutputStore>,
    /// Its budget (bytes) and retention.
    output_limits: (u64, Duration),
}

impl Exec {
    /// The handler with the queues' exec defaults and the output budget of `cfg`.
    pub fn configured(cfg: &Config) -> Exec {
        Exec {
            queues: cfg
                .queues
                .iter()
                .filter(|q| q.exec != ExecDefaults::default())
                .map(|q| (q.name.clone(), q.exec.clone()))
                .collect(),
            output_limits: (cfg.output_max_bytes, cfg.history_retention),
            ..Exec::default()
        }
    }

    /// The payload with its queue's defaults under it.
    fn resolved(&self, queue: &str, payload: &str) -> Result<ExecPayload, String> {
        let mut p = ExecPayload::parse(payload)?;
        p.resolve(self.queues.get(queue))?;
        Ok(p)
    }
}

impl Handler for Exec {
    fn validate(&self, payload: &str) -> Result<(), String> {
        ExecPayload::parse(payload).map(|_| ())
    }

    fn admit_in(&self, queue: &str, payload: &str) -> Result<Admitted, String> {
        self.resolved(queue, payload).map(|_| Admitted::default())
    }

    fn start(&self, data_dir: Option<&Path>) -> Result<(), String> {
        let Some(dir) = data_dir else {
            return Ok(());
        };
        let journal =
            Journal::open(&dir.join("run")).map_err(|e| format!("exec: run journal: {e}"))?;
        journal.kill_leftovers();
        let _ = self.journal.set(journal);
        let (budget, retention) = self.output_limits;
        match OutputStore::open(&dir.join("output"), budget, retention) {
            Ok(s) => {
                let _ = self.output.set(s);
            }
            // Jobs run all the same, without `duejob log` (G6).
            Err(e) => log::error!("exec: cannot keep job output in {}: {e}", dir.display()),
        }
        Ok(())
    }

    fn run(&self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        let mut p = self
            .resolved(ctx.queue, ctx.payload)
            .map_err(JobError::permanent)?;
        p.env.insert("DUEJOB_JOB_ID".into(), ctx.id.to_string());
        p.env.insert("DUEJOB_ATTEMPT".into(), ctx.attempt.to_string());
        p.env.insert("DUEJOB_QUEUE".into(), ctx.queue.to_string());
        if let Some(of) = ctx.replay_of {
            p.env.insert("DUEJOB_REPLAY_OF".into(), of.to_string());
        }
        let mut log = self.output.get().and_then(|s| s.attempt(ctx.id, ctx.attempt));
        let mut write = |b: &[u8]| {
            if let Some(l) = log.as_mut() {
                l.write(b);
            }
        };
        child::run(child::Run {
            payload: &p,
            timeout: ctx.timeout,
            ctx: Some(ctx),
            running: Some(&self.running),
            journal: self.journal.get(),
            stdin: None,
            output: Some(&mut write),
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
        output: None,
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
        output: None,
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
        let mut p = payload(&["true"]);
        p.cwd = Some("/nonexistent/dir".into());
        let e = run(&p, None).unwrap_err();
        assert_eq!(
            e.reason,
            "cannot start \"true\": its working directory \"/nonexistent/dir\" is not a directory"
        );
    }

    #[test]
    fn the_queue_defaults_go_under_the_payload_and_relative_paths_need_a_base() {
        let q = ExecDefaults {
            env: [("A", "queue"), ("B", "queue")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: Some("/srv/app".into()),
        };
        let mut p =
            ExecPayload::parse(r#"{"argv":["./bin/x","./arg"],"env":{"B":"job"},"cwd":"tmp"}"#)
                .unwrap();
        p.resolve(Some(&q)).unwrap();
        assert_eq!(p.argv, ["/srv/app/tmp/./bin/x", "./arg"], "only the program is resolved");
        assert_eq!(p.cwd.as_deref(), Some("/srv/app/tmp"));
        assert_eq!(p.env["A"], "queue");
        assert_eq!(p.env["B"], "job", "the payload wins");
        let mut p = ExecPayload::parse(r#"{"argv":["bin/x"],"cwd":"/abs"}"#).unwrap();
        p.resolve(Some(&q)).unwrap();
        assert_eq!((p.argv[0].as_str(), p.cwd.as_deref()), ("/abs/bin/x", Some("/abs")));
        let mut p = ExecPayload::parse(r#"{"argv":["sh"]}"#).unwrap();
        p.resolve(None).unwrap();
        assert_eq!((p.argv[0].as_str(), p.cwd.as_deref()), ("sh", None), "PATH lookup");
        let mut p = ExecPayload::parse(r#"{"argv":["./x"]}"#).unwrap();
        assert!(p.resolve(None).unwrap_err().contains("relative path"));
        let mut p = ExecPayload::parse(r#"{"argv":["x"],"cwd":"rel"}"#).unwrap();
        assert!(p.resolve(None).unwrap_err().contains("no cwd"));
    }

    #[test]
    fn long_output_keeps_only_the_tail() {
        let e = run(&payload(&["sh", "-c", "seq 1 100000; exit 1"]), None).unwrap_err();
        assert!(e.output_tail.len() <= TAIL_BYTES);
        assert!(e.output_tail.ends_with("99999\n100000\n"));
    }
}
