//! [`Client`]: talks to a running daemon over its Unix socket (the CLI uses it too).
//!
//! ```no_run
//! let mut c = duejob::Client::connect("./duejob-data/duejob.sock")?;
//! let s = c.submit(&duejob::client::Submit::new("notifications", "exec")
//!     .payload(serde_json::json!({"argv": ["echo", "hi"]})))?;
//! println!("job {} at LSN {}", s.id, s.lsn);
//! # Ok::<(), duejob::client::ClientError>(())
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::runtime::Stats;
use crate::scheduler::JobInfo;

/// Client errors.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Socket I/O.
    Io(std::io::Error),
    /// The daemon answered with an error.
    Server {
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The reply was not what the protocol promises.
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Server { code, message } => write!(f, "{message} ({code})"),
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

/// A job to submit.
#[derive(Debug, Clone, Serialize)]
pub struct Submit {
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// Payload.
    pub payload: Value,
    /// Idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Deadline after becoming ready (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_in_ms: Option<u64>,
    /// Delay (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Timeout (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Submit {
    /// A job with an empty object payload.
    pub fn new(queue: &str, kind: &str) -> Submit {
        Submit {
            queue: queue.into(),
            kind: kind.into(),
            payload: Value::Object(Default::default()),
            key: None,
            due_in_ms: None,
            delay_ms: None,
            max_attempts: None,
            timeout_ms: None,
        }
    }
    /// Sets the payload.
    pub fn payload(mut self, p: Value) -> Submit {
        self.payload = p;
        self
    }
    /// Sets the delay.
    pub fn delay_ms(mut self, ms: u64) -> Submit {
        self.delay_ms = Some(ms);
        self
    }
    /// Sets the deadline.
    pub fn due_in_ms(mut self, ms: u64) -> Submit {
        self.due_in_ms = Some(ms);
        self
    }
    /// The request line for this job.
    pub fn to_request(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("submit serializes");
        v["op"] = "submit".into();
        v
    }
}

/// Reply to a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Submitted {
    /// Job id (the first job's id for a duplicate key).
    pub id: u64,
    /// LSN of the record.
    pub lsn: u64,
    /// Whether the key was already known.
    #[serde(default)]
    pub duplicate: bool,
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

    /// Sends a request and returns the reply; an `ok: false` reply becomes [`ClientError::Server`].
    pub fn request(&mut self, req: &Value) -> Result<Value, ClientError> {
        self.send_line(req.to_string().as_bytes())?;
        check(self.read_reply()?)
    }

    /// `hello`: the protocol version.
    pub fn hello(&mut self) -> Result<Value, ClientError> {
        self.request(&serde_json::json!({"op": "hello"}))
    }

    /// Submits one job and waits until it is durable.
    pub fn submit(&mut self, job: &Submit) -> Result<Submitted, ClientError> {
        let v = self.request(&job.to_request())?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Submits jobs atomically (all or none); returns their ids.
    pub fn submit_batch(&mut self, jobs: &[Submit]) -> Result<Vec<u64>, ClientError> {
        let v = self.request(&serde_json::json!({"op": "submit_batch", "jobs": jobs}))?;
        serde_json::from_value(v["ids"].clone()).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A job's status and timeline.
    pub fn status(&mut self, id: u64) -> Result<JobInfo, ClientError> {
        let v = self.request(&serde_json::json!({"op": "status", "id": id}))?;
        serde_json::from_value(v["job"].clone()).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Figures per queue and for the WAL.
    pub fn stats(&mut self) -> Result<Stats, ClientError> {
        let v = self.request(&serde_json::json!({"op": "stats"}))?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Cancels a scheduled or ready job.
    pub fn cancel(&mut self, id: u64) -> Result<(), ClientError> {
        self.request(&serde_json::json!({"op": "cancel", "id": id}))
            .map(|_| ())
    }
}

/// Turns an `ok: false` reply into an error.
pub fn check(v: Value) -> Result<Value, ClientError> {
    if v["ok"] == Value::Bool(true) {
        return Ok(v);
    }
    let e = &v["error"];
    match (e["code"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => Err(ClientError::Server {
            code: c.into(),
            message: m.into(),
        }),
        _ => Err(ClientError::Protocol(v.to_string())),
    }
}
