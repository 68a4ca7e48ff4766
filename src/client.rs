//! [`Client`]: talks to a running daemon over its Unix socket, one typed method per request (the
//! command line uses it too).
//!
//! ```no_run
//! use duejob::client::{Client, Submit};
//!
//! let mut c = Client::connect("./duejob-data/duejob.sock")?;
//! let s = c.submit(&Submit::new("notifications", "exec")
//!     .payload(serde_json::json!({"argv": ["echo", "hi"]})))?;
//! println!("job {} at LSN {}", s.id, s.lsn);
//! let job = c.status(s.id)?;
//! println!("{} attempts so far; {}", job.attempts.len(), job.state);
//! # Ok::<(), duejob::client::ClientError>(())
//! ```
//!
//! Every submit option has a builder method; a job with a `key` can be resubmitted safely after
//! a lost reply (the daemon answers with the first job's id, `duplicate: true`):
//!
//! ```no_run
//! use std::time::Duration;
//! use duejob::client::{Client, Submit};
//!
//! let job = Submit::new("bulk", "exec")
//!     .payload(serde_json::json!({"argv": ["./sync.sh", "acct-42"], "cwd": "/srv/app"}))
//!     .key("sync-acct-42-2026-12-07")
//!     .max_attempts(5)
//!     .timeout(Duration::from_secs(300))
//!     .delay(Duration::from_secs(10))
//!     .due_in(Duration::from_secs(3600));
//! let mut c = Client::connect("./duejob-data/duejob.sock")?;
//! let first = c.submit(&job)?;
//! let again = c.submit(&job)?;
//! assert!(again.duplicate && again.id == first.id);
//! # Ok::<(), duejob::client::ClientError>(())
//! ```

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::wire::reply::ErrorReply;
use crate::wire::{
    AlertList, BatchSubmitted, Cancelled, CatalogRebuilt, CheckpointTaken, DeadJobs, ErrorCode,
    Hello, Ids, JobInfo, JobList, JobStatus, Rejection, Replayed, Request, Stats,
};
pub use crate::wire::{DeadSelect, Submit, Submitted};
pub use crate::wire::{JobsQuery, ReplaySpec};

/// Client errors.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Socket I/O.
    Io(std::io::Error),
    /// The daemon refused the request (its code, message, and what of it was recorded).
    Server(Rejection),
    /// The reply was not what the protocol promises.
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            // A code this client does not know is in the message already (see `check`).
            ClientError::Server(r) if r.code == ErrorCode::Unknown => write!(f, "{}", r.message),
            ClientError::Server(r) => write!(f, "{} ({})", r.message, r.code),
            ClientError::Protocol(m) => write!(f, "unexpected reply from the daemon: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A connection to a daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let s = UnixStream::connect(path).map_err(|e| {
            ClientError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot connect to {}: {e}", path.display()),
            ))
        })?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            line: String::new(),
        })
    }

    /// Sends one raw line (a newline is added) without waiting (pipelining).
    pub fn send_line(&mut self, line: &[u8]) -> Result<(), ClientError> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.writer.write_all(&buf)?;
        Ok(())
    }

    /// Sends a request without waiting for its reply (pipelining; read it with
    /// [`Client::read_reply`]).
    pub fn send(&mut self, req: &Request<'_>) -> Result<(), ClientError> {
        let line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send_line(&line)
    }

    /// Reads one reply line as JSON (whatever `ok` says).
    pub fn read_reply(&mut self) -> Result<Value, ClientError> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            )));
        }
        serde_json::from_str(&self.line)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", self.line.trim())))
    }

    /// Sends a request and returns its `ok: true` reply; an `ok: false` reply becomes
    /// [`ClientError::Server`].
    pub fn request(&mut self, req: &Request<'_>) -> Result<Value, ClientError> {
        self.send(req)?;
        check(self.read_reply()?)
    }

    /// Sends a request and reads its reply as `T`.
    fn call<T: DeserializeOwned>(&mut self, req: &Request<'_>) -> Result<T, ClientError> {
        let v = self.request(req)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `hello`: the protocol version, the daemon's version and its sync mode. `client` names this
    /// client in the daemon's log.
    pub fn hello(&mut self, client: Option<&str>) -> Result<Hello, ClientError> {
        self.call(&Request::Hello {
            client: client.map(Cow::Borrowed),
        })
    }

    /// Submits one job and waits until it is durable.
    pub fn submit(&mut self, job: &Submit<'_>) -> Result<Submitted, ClientError> {
        self.call(&Request::Submit(job.clone()))
    }

    /// Submits jobs atomically (all or none) and waits until they are durable.
    pub fn submit_batch(&mut self, jobs: &[Submit<'_>]) -> Result<BatchSubmitted, ClientError> {
        self.call(&Request::SubmitBatch {
            jobs: jobs.to_vec(),
        })
    }

    /// A job's status and timeline.
    pub fn status(&mut self, id: u64) -> Result<JobInfo, ClientError> {
        self.call(&Request::Status { id }).map(|s: JobStatus| s.job)
    }

    /// A piece of an attempt's output: attempt `attempt` (default: the latest) of job `id`, from
    /// byte `offset`. Follow a running attempt by asking again from the reply's `next`.
    pub fn log(
        &mut self,
        id: u64,
        attempt: Option<u32>,
        offset: u64,
    ) -> Result<crate::wire::JobLog, ClientError> {
        self.call(&Request::Log {
            id,
            attempt,
            offset: Some(offset),
        })
    }

    /// Figures per queue, for the WAL and for kinds with an outside service.
    pub fn stats(&mut self) -> Result<Stats, ClientError> {
        self.call(&Request::Stats)
    }

    /// Cancels a job that has not ended (a running exec job's process group is killed); returns
    /// once the cancel is durable.
    pub fn cancel(&mut self, id: u64) -> Result<Cancelled, ClientError> {
        self.call(&Request::Cancel { id })
    }

    /// Dead jobs with their last error, oldest death first; of one queue, dead since a time (ms).
    pub fn dead_list(
        &mut self,
        queue: Option<&str>,
        since: Option<u64>,
    ) -> Result<Vec<JobInfo>, ClientError> {
        self.call(&Request::DeadList {
            queue: queue.map(Cow::Borrowed),
            since,
        })
        .map(|d: DeadJobs| d.jobs)
    }

    /// Puts dead jobs back with fresh attempts; returns their ids once that is durable.
    pub fn dead_retry(&mut self, which: &DeadSelect<'_>) -> Result<Vec<u64>, ClientError> {
        self.call(&Request::DeadRetry(which.clone()))
            .map(|i: Ids| i.ids)
    }

    /// Removes dead jobs from the dead letters (their records stay in the WAL); returns their ids
    /// once that is durable.
    pub fn dead_purge(&mut self, which: &DeadSelect<'_>) -> Result<Vec<u64>, ClientError> {
        self.call(&Request::DeadPurge(which.clone()))
            .map(|i: Ids| i.ids)
    }
}

impl Client {
    /// Takes a checkpoint now (the daemon seals its current segment first), releasing the
    /// segments it covers; returns once it is in place.
    pub fn checkpoint(&mut self) -> Result<CheckpointTaken, ClientError> {
        self.call(&Request::Checkpoint)
    }

    /// Jobs by submission time, newest first, from the catalog.
    pub fn jobs(&mut self, q: &JobsQuery<'_>) -> Result<JobList, ClientError> {
        self.call(&Request::Jobs(q.clone()))
    }

    /// Submits the finished jobs of a window again, duplicates discarded (or, with `dry_run`,
    /// says what that would do).
    pub fn replay(&mut self, spec: &ReplaySpec<'_>) -> Result<Replayed, ClientError> {
        self.call(&Request::Replay(spec.clone()))
    }

    /// Changes a queue's settings while the daemon runs (`queue set`).
    pub fn queue_set(
        &mut self,
        c: &crate::wire::QueueChange<'_>,
    ) -> Result<crate::wire::QueueInfo, ClientError> {
        self.call(&Request::QueueSet(c.clone()))
    }

    /// Pauses a queue: its jobs are taken and held `ready` (for `for_ms`, or until resumed).
    pub fn queue_pause(
        &mut self,
        queue: &str,
        for_ms: Option<u64>,
    ) -> Result<crate::wire::QueueInfo, ClientError> {
        self.call(&Request::QueuePause {
            queue: Cow::Borrowed(queue),
            for_ms,
        })
    }

    /// Resumes a paused queue.
    pub fn queue_resume(&mut self, queue: &str) -> Result<crate::wire::QueueInfo, ClientError> {
        self.call(&Request::QueueResume {
            queue: Cow::Borrowed(queue),
        })
    }

    /// The alert rules and their state.
    pub fn alerts(&mut self) -> Result<AlertList, ClientError> {
        self.call(&Request::Alerts)
    }

    /// Rebuilds the catalog from the WAL and the archive; returns once it has caught up.
    pub fn catalog_rebuild(&mut self) -> Result<CatalogRebuilt, ClientError> {
        self.call(&Request::CatalogRebuild)
    }
}

/// Turns an `ok: false` reply into an error.
pub fn check(v: Value) -> Result<Value, ClientError> {
    if v["ok"] == Value::Bool(true) {
        return Ok(v);
    }
    match serde_json::from_value::<ErrorReply>(v.clone()) {
        Ok(e) => {
            let mut r = Rejection::from(e);
            if r.code == ErrorCode::Unknown {
                // A newer daemon's code: keep its name for the reader.
                let raw = v["error"]["code"].as_str().unwrap_or("?");
                r.message = format!("{} ({raw})", r.message);
            }
            Err(ClientError::Server(r))
        }
        Err(_) => Err(ClientError::Protocol(v.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_code_from_a_newer_daemon_keeps_its_name() {
        let v = serde_json::json!({"ok": false, "error": {"code": "quota_exceeded", "message": "too many"}});
        let e = check(v).unwrap_err();
        assert_eq!(e.to_string(), "too many (quota_exceeded)");
        let v =
            serde_json::json!({"ok": false, "error": {"code": "not_found", "message": "no job 9"}});
        let e = check(v).unwrap_err();
        assert!(matches!(&e, ClientError::Server(r) if r.code == ErrorCode::NotFound));
        assert_eq!(e.to_string(), "no job 9 (not_found)");
    }
}
