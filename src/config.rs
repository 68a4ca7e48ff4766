//! Daemon configuration: queues, workers, sync mode, socket access. Built from defaults
//! (docs/guarantees.md), optionally from a TOML file, then from command-line overrides.
//! Immutable once the runtime starts; every thread reads it through an `Arc`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::wal::SyncMode;

/// Dispatch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Earliest deadline first, with `max_workers`, `reserved` and lending (the default).
    Deadline,
    /// Plain arrival order across all queues, no reservations (for comparison).
    Fifo,
    /// Strict queue priority (most urgent `due_in` first), then arrival (for comparison).
    Priority,
}

impl Order {
    /// Parses `deadline`, `fifo` or `priority`.
    pub fn parse(s: &str) -> Result<Order, String> {
        match s {
            "deadline" => Ok(Order::Deadline),
            "fifo" => Ok(Order::Fifo),
            "priority" => Ok(Order::Priority),
            _ => Err(format!("unknown order {s:?} (deadline, fifo or priority)")),
        }
    }
    /// Name as accepted by [`Order::parse`].
    pub fn name(self) -> &'static str {
        match self {
            Order::Deadline => "deadline",
            Order::Fifo => "fifo",
            Order::Priority => "priority",
        }
    }
}

/// One queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Name.
    pub name: String,
    /// Deadline of a job = submit time + `due_in` (unless the job says otherwise).
    pub due_in: Duration,
    /// Most workers this queue's jobs may occupy at once.
    pub max_workers: usize,
    /// Workers kept for this queue.
    pub reserved: usize,
    /// Jobs expected to finish within this may borrow this queue's idle reserved workers.
    pub lend_limit: Duration,
    /// Failed attempts allowed per job (a job may override it).
    pub max_attempts: u32,
    /// Default per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Backoff before retry n: a uniformly random delay in [0, min(cap, base · 2^(n-1))]
    /// ("full jitter").
    pub backoff_base: Duration,
    /// Upper bound of the backoff.
    pub backoff_cap: Duration,
    /// Whether a retry may be scheduled after the job's deadline (otherwise the job dies).
    pub retry_past_deadline: bool,
    /// Alert `retrying` when retries per minute exceed this (0: any retry).
    pub alert_retries: u64,
    /// Alert `slack` when the most urgent ready job's slack falls under this (`None`: 10% of
    /// `due_in`).
    pub alert_slack: Option<Duration>,
    /// Alert `wait` when the most urgent ready job has waited longer than this (`None`:
    /// `due_in`).
    pub alert_wait: Option<Duration>,
    /// Alert `stall` when jobs are ready but no attempt ended for this long.
    pub alert_stall: Duration,
    /// What this queue's `exec` jobs start with: environment and working directory.
    pub exec: ExecDefaults,
}

/// A queue's `env`, `env_file` and `cwd`: the environment and working directory its `exec`
/// jobs start with (a job's payload adds to them and overrides them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExecDefaults {
    /// Variables: `env_file`'s, then the `env` table's (which wins).
    pub env: BTreeMap<String, String>,
    /// Absolute working directory.
    pub cwd: Option<PathBuf>,
}

/// Names only: the values may be secrets (an `env_file`'s are meant to be).
impl std::fmt::Debug for ExecDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecDefaults")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .finish()
    }
}

impl QueueConfig {
    /// A queue with the default limits for `workers` workers.
    pub fn new(name: &str, due_in: Duration, workers: usize, reserved: usize) -> QueueConfig {
        QueueConfig {
            name: name.to_string(),
            due_in,
            max_workers: workers,
            reserved,
            lend_limit: due_in / 100,
            max_attempts: 3,
            timeout: None,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            retry_past_deadline: false,
            alert_retries: 0,
            alert_slack: None,
            alert_wait: None,
            alert_stall: Duration::from_secs(60),
            exec: ExecDefaults::default(),
        }
    }
}

/// Alerts (docs/config.md, "Alerts").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// Run on every firing and resolve, with the alert as JSON on stdin (an argv, no shell).
    pub command: Option<Vec<String>>,
    /// The command is killed (its process group) after this.
    pub timeout: Duration,
    /// A firing alert resolves once its condition has been clear this long.
    pub clear: Duration,
    /// Alert `wal_sync` when the WAL's fsync p99 over the last 10 s exceeds this.
    pub fsync: Duration,
}

impl Default for AlertConfig {
    fn default() -> AlertConfig {
        AlertConfig {
            command: None,
            timeout: Duration::from_secs(10),
            clear: Duration::from_secs(30),
            fsync: Duration::from_millis(100),
        }
    }
}

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a relay on loopback or a trusted network only).
    None,
    /// Plain text upgraded with STARTTLS, which is required (default port 587).
    StartTls,
    /// TLS from the first byte ("implicit TLS", default port 465).
    Tls,
}

impl SmtpTls {
    /// Parses `none`, `starttls` or `tls`.
    pub fn parse(s: &str) -> Result<SmtpTls, String> {
        match s {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" => Ok(SmtpTls::Tls),
            _ => Err(format!("unknown tls mode {s:?} (none, starttls or tls)")),
        }
    }
    /// The usual port of the mode.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

/// A secret (the SMTP password): its `Debug` never shows it, so it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself (to hand to the SMTP client, nothing else).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// SMTP settings of the built-in `email` kind (`[smtp]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Server host name (also the name its TLS certificate is checked against).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// User name for AUTH, if the server needs one.
    pub username: Option<String>,
    /// Password for AUTH.
    pub password: Option<Secret>,
    /// Timeout of each SMTP command (and of connecting).
    pub timeout: Duration,
    /// Connections kept open and reused; 0 opens a new connection for every email.
    pub pool_size: u32,
    /// Name sent in EHLO (default: this machine's host name).
    pub hello_name: Option<String>,
    /// A PEM file with one more trusted root certificate (a relay with a private CA), beside
    /// the built-in web PKI roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl SmtpConfig {
    /// Defaults for a server at `host`: port 25 without TLS, 30 s timeout, a pool of 4.
    pub fn new(host: &str) -> SmtpConfig {
        SmtpConfig {
            host: host.to_string(),
            port: SmtpTls::None.default_port(),
            tls: SmtpTls::None,
            username: None,
            password: None,
            timeout: Duration::from_secs(30),
            pool_size: 4,
            hello_name: None,
            ca_file: None,
        }
    }
}

/// Everything the runtime needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker threads.
    pub workers: usize,
    /// Queues, in id order.
    pub queues: Vec<QueueConfig>,
    /// WAL sync mode.
    pub sync: SyncMode,
    /// WAL segment size in bytes.
    pub segment_size: u64,
    /// Dispatch order.
    pub order: Order,
    /// Peer uids allowed on the socket.
    pub allow_uids: Vec<u32>,
    /// Longest accepted request line.
    pub max_line: usize,
    /// Most connections served at once; `None`: as many as the file descriptor limit allows, at
    /// most [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: Option<usize>,
    /// Group the socket is given (with mode `socket_mode`), so that members can connect.
    pub socket_group: Option<u32>,
    /// Mode of the socket: 0600, or 0660 with `socket_group`.
    pub socket_mode: u32,
    /// How long running jobs may finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Terminal jobs kept in memory for `status` (oldest forgotten first).
    pub history_limit: usize,
    /// How long an idempotency key stays known after its job was submitted.
    pub key_retention: Duration,
    /// Most keys kept; beyond it the oldest are forgotten early (logged, counted in `stats`).
    pub max_keys: usize,
    /// SMTP server of the `email` kind; without it, email jobs are refused at submit.
    pub smtp: Option<SmtpConfig>,
    /// Checkpoints and the archive.
    pub checkpoint: CheckpointConfig,
    /// The catalog of every job's history (`DATA/catalog/`): on by default (`catalog`).
    pub catalog: bool,
    /// How long the catalog keeps a job's history after its submission (`history_retention`).
    pub history_retention: Duration,
    /// Alerts: the command run on each, and the daemon-wide thresholds.
    pub alerts: AlertConfig,
    /// Most bytes of exec job output kept in `DATA/output/` (`output_max_mib`; 0: none).
    pub output_max_bytes: u64,
}

/// When checkpoints are taken, and how long released segments are kept (`docs/config.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Automatic checkpoints (`checkpoints`); `duejob wal checkpoint` works either way.
    pub auto: bool,
    /// A checkpoint is taken once the sealed log after the last one holds this many bytes
    /// (`checkpoint_after_mib`): bounds what a restart reads.
    pub after_bytes: u64,
    /// The current segment is sealed once its first record is this old (`seal_after`), so that
    /// an idle daemon releases its records too.
    pub seal_after: Duration,
    /// Released segments stay in `DATA/archive/` this long after their last write
    /// (`archive_retention`); zero deletes them at once.
    pub archive_retention: Duration,
    /// The archive is trimmed, oldest first, to this many bytes (`archive_max_mib`).
    pub archive_max_bytes: Option<u64>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            auto: true,
            after_bytes: 256 << 20,
            seal_after: Duration::from_secs(600),
            archive_retention: Duration::from_secs(7 * 86_400),
            archive_max_bytes: None,
        }
    }
}

/// Connections served at once when the config does not say (and the file descriptor limit
/// allows).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Most connections the config may ask for (each one costs two threads).
pub const MAX_CONNECTIONS: usize = 65_536;

/// Largest WAL segment (`segment_size_mib`), in MiB.
pub const MAX_SEGMENT_MIB: u64 = 1024;

/// Default `output_max_mib`: exec job output kept in `DATA/output/`.
pub const DEFAULT_OUTPUT_MAX_MIB: u64 = 1024;

/// Longest request line (`max_line_bytes`): keeps every WAL record well under the format's limit
/// (16 MiB) whatever a line holds.
pub const MAX_LINE_LIMIT: usize = 8 << 20;

/// Default worker count: CPU count, at least 4 (docs/guarantees.md).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(4)
}

impl Config {
    /// The default queues (docs/guarantees.md) for `workers` workers. (`workers` is kept as given: [`Config::validate`]
    /// refuses 0 rather than quietly running one.)
    pub fn with_workers(workers: usize) -> Config {
        let w = workers.max(1);
        Config {
            workers,
            queues: vec![
                QueueConfig::new("notifications", Duration::from_secs(30), w, 1.min(w - 1)),
                QueueConfig::new("default", Duration::from_secs(300), w, 0),
                QueueConfig::new("bulk", Duration::from_secs(3600), w, 0),
            ],
            sync: SyncMode::Always,
            segment_size: crate::wal::appender::DEFAULT_SEGMENT_SIZE,
            order: Order::Deadline,
            allow_uids: default_allow_uids(),
            max_line: 1 << 20,
            max_connections: None,
            socket_group: None,
            socket_mode: 0o600,
            shutdown_grace: Duration::from_secs(10),
            history_limit: 100_000,
            key_retention: Duration::from_secs(7 * 86_400),
            max_keys: 10_000_000,
            smtp: None,
            checkpoint: CheckpointConfig::default(),
            catalog: true,
            history_retention: Duration::from_secs(30 * 86_400),
            alerts: AlertConfig::default(),
            output_max_bytes: DEFAULT_OUTPUT_MAX_MIB << 20,
        }
    }

    /// Reads a TOML config file (see `docs/config.md`).
    pub fn from_file(path: &Path, workers_override: Option<usize>) -> Result<Config, String> {
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Config::from_toml_in(&text, workers_override, base.unwrap_or(Path::new(".")))
            .map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses TOML config text; relative paths in it (a queue's `env_file` and `cwd`) are taken
    /// from the current directory.
    pub fn from_toml(text: &str, workers_override: Option<usize>) -> Result<Config, String> {
        Config::from_toml_in(text, workers_override, Path::new("."))
    }

    /// Parses TOML config text; relative paths in it are taken from `base` (the config file's
    /// directory).
    pub fn from_toml_in(
        text: &str,
        workers_override: Option<usize>,
        base: &Path,
    ) -> Result<Config, String> {
        let f: FileConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let workers = workers_override
            .or(f.workers)
            .unwrap_or_else(default_workers);
        let mut c = Config::with_workers(workers);
        if let Some(s) = &f.sync {
            c.sync = SyncMode::parse(s)?;
        }
        if let Some(o) = &f.order {
            c.order = Order::parse(o)?;
        }
        if let Some(u) = f.allow_uids {
            c.allow_uids = u;
        }
        if let Some(n) = f.max_line_bytes {
            c.max_line = n;
        }
        c.max_connections = f.max_connections;
        if let Some(g) = &f.socket_group {
            c.socket_group = Some(g.gid()?);
            c.socket_mode = 0o660;
        }
        if let Some(m) = &f.socket_mode {
            c.socket_mode = m.bits()?;
        }
        if let Some(g) = &f.shutdown_grace {
            c.shutdown_grace = parse_duration(g)?;
        }
        if let Some(s) = f.segment_size_mib {
            if !(1..=MAX_SEGMENT_MIB).contains(&s) {
                return Err(format!(
                    "segment_size_mib must be between 1 and {MAX_SEGMENT_MIB} (MiB), not {s}"
                ));
            }
            c.segment_size = s << 20;
        }
        if let Some(h) = f.history_limit {
            c.history_limit = h;
        }
        if let Some(k) = &f.key_retention {
            c.key_retention = parse_duration(k).map_err(|e| format!("key_retention: {e}"))?;
        }
        if let Some(m) = f.max_keys {
            c.max_keys = m;
        }
        if let Some(b) = f.checkpoints {
            c.checkpoint.auto = b;
        }
        if let Some(m) = f.checkpoint_after_mib {
            if m == 0 || m > 1 << 20 {
                return Err(format!(
                    "checkpoint_after_mib must be between 1 and 1048576 (MiB), not {m}"
                ));
            }
            c.checkpoint.after_bytes = m << 20;
        }
        if let Some(d) = &f.seal_after {
            c.checkpoint.seal_after = parse_duration(d).map_err(|e| format!("seal_after: {e}"))?;
            if c.checkpoint.seal_after.is_zero() {
                return Err("seal_after must be longer than 0s".into());
            }
        }
        if let Some(d) = &f.archive_retention {
            c.checkpoint.archive_retention =
                parse_duration(d).map_err(|e| format!("archive_retention: {e}"))?;
        }
        if let Some(m) = f.archive_max_mib {
            c.checkpoint.archive_max_bytes = Some(m.saturating_mul(1 << 20));
        }
        if let Some(b) = f.catalog {
            c.catalog = b;
        }
        if let Some(d) = &f.history_retention {
            c.history_retention =
                parse_duration(d).map_err(|e| format!("history_retention: {e}"))?;
            if c.history_retention < Duration::from_secs(86_400) {
                return Err(format!(
                    "history_retention must be at least 1d (the catalog keeps history in daily \
                     partitions), not {d}"
                ));
            }
        }
        if let Some(m) = f.output_max_mib {
            c.output_max_bytes = m.saturating_mul(1 << 20);
        }
        if let Some(smtp) = f.smtp {
            c.smtp = Some(smtp.build(&|name| std::env::var(name).ok())?);
        }
        c.alerts.command = f.alert_command;
        let dur = |v: &Option<String>, key: &str| -> Result<Option<Duration>, String> {
            v.as_deref()
                .map(|d| parse_duration(d).map_err(|e| format!("{key}: {e}")))
                .transpose()
        };
        if let Some(d) = dur(&f.alert_timeout, "alert_timeout")? {
            c.alerts.timeout = d;
        }
        if let Some(d) = dur(&f.alert_clear, "alert_clear")? {
            c.alerts.clear = d;
        }
        if let Some(d) = dur(&f.alert_fsync, "alert_fsync")? {
            c.alerts.fsync = d;
        }
        if !f.queues.is_empty() {
            c.queues = Vec::new();
            for (name, q) in f.queues {
                let due_in = parse_duration(q.due_in.as_deref().unwrap_or("5m"))
                    .map_err(|e| format!("queue {name}: due_in: {e}"))?;
                let mut qc = QueueConfig::new(&name, due_in, c.workers, q.reserved.unwrap_or(0));
                if let Some(m) = q.max_workers {
                    qc.max_workers = m;
                }
                if let Some(l) = &q.lend_limit {
                    qc.lend_limit =
                        parse_duration(l).map_err(|e| format!("queue {name}: lend_limit: {e}"))?;
                }
                if let Some(a) = q.max_attempts {
                    qc.max_attempts = a;
                }
                if let Some(t) = &q.timeout {
                    qc.timeout =
                        Some(parse_duration(t).map_err(|e| format!("queue {name}: timeout: {e}"))?);
                }
                if let Some(b) = &q.backoff {
                    qc.backoff_base = parse_duration(&b.base)
                        .map_err(|e| format!("queue {name}: backoff.base: {e}"))?;
                    if let Some(cap) = &b.cap {
                        qc.backoff_cap = parse_duration(cap)
                            .map_err(|e| format!("queue {name}: backoff.cap: {e}"))?;
                    }
                }
                if let Some(r) = q.retry_past_deadline {
                    qc.retry_past_deadline = r;
                }
                if let Some(r) = q.alert_retries {
                    qc.alert_retries = r;
                }
                let qdur = |v: &Option<String>, key: &str| dur(v, &format!("queue {name}: {key}"));
                qc.alert_slack = qdur(&q.alert_slack, "alert_slack")?;
                qc.alert_wait = qdur(&q.alert_wait, "alert_wait")?;
                if let Some(d) = qdur(&q.alert_stall, "alert_stall")? {
                    qc.alert_stall = d;
                }
                qc.exec = exec_defaults(&name, &q, base)?;
                c.queues.push(qc);
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> Result<(), String> {
        if self.workers == 0 || self.workers > 4096 {
            return Err(format!(
                "workers must be between 1 and 4096, not {}",
                self.workers
            ));
        }
        if self.queues.is_empty() {
            return Err("at least one queue is needed".into());
        }
        if self.queues.len() > u16::MAX as usize {
            return Err("too many queues".into());
        }
        let mut reserved = 0;
        for q in &self.queues {
            if q.name.is_empty()
                || q.name.len() > 64
                || !q
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "queue name {:?}: use 1-64 letters, digits, '_' or '-'",
                    q.name
                ));
            }
            if q.max_workers == 0 {
                return Err(format!("queue {}: max_workers must be at least 1", q.name));
            }
            if q.reserved > q.max_workers {
                return Err(format!("queue {}: reserved exceeds max_workers", q.name));
            }
            if q.max_attempts == 0 || q.max_attempts > 1000 {
                return Err(format!(
                    "queue {}: max_attempts must be between 1 and 1000",
                    q.name
                ));
            }
            if q.backoff_base.is_zero() || q.backoff_cap < q.backoff_base {
                return Err(format!("queue {}: backoff needs 0 < base <= cap", q.name));
            }
            if q.timeout.is_some_and(|t| t.is_zero()) {
                return Err(format!("queue {}: timeout must be positive", q.name));
            }
            if q.due_in.is_zero() {
                return Err(format!(
                    "queue {}: due_in must be positive (every job would be late at once)",
                    q.name
                ));
            }
            if q.alert_stall.is_zero() {
                return Err(format!("queue {}: alert_stall must be positive", q.name));
            }
            reserved += q.reserved;
        }
        if reserved > self.workers {
            return Err(format!(
                "queues reserve {reserved} workers but only {} exist",
                self.workers
            ));
        }
        if let Some(cmd) = &self.alerts.command {
            if cmd.is_empty() || cmd[0].is_empty() {
                return Err(
                    "alert_command needs a program: [\"/path/to/program\", \"arg\", ...]".into(),
                );
            }
        }
        if self.alerts.timeout.is_zero() {
            return Err("alert_timeout must be positive".into());
        }
        if let Some(s) = &self.smtp {
            if s.host.is_empty() {
                return Err("smtp.host must not be empty".into());
            }
            if s.port == 0 {
                return Err("smtp.port must not be 0".into());
            }
            if s.timeout.is_zero() {
                return Err("smtp.timeout must be positive".into());
            }
            if s.password.is_some() && s.username.is_none() {
                return Err("smtp: a password needs a username".into());
            }
            if s.pool_size > 1024 {
                return Err(format!(
                    "smtp.pool_size must be at most 1024 (connections kept open), not {}",
                    s.pool_size
                ));
            }
        }
        if !(1024..=MAX_LINE_LIMIT).contains(&self.max_line) {
            return Err(format!(
                "max_line_bytes must be between 1024 and {MAX_LINE_LIMIT}, not {}",
                self.max_line
            ));
        }
        if self.allow_uids.is_empty() {
            return Err(
                "allow_uids is empty: nobody could connect, not even the daemon's own \
                        user; leave it out for the default (the daemon's uid and root)"
                    .into(),
            );
        }
        if let Some(n) = self
            .max_connections
            .filter(|n| !(1..=MAX_CONNECTIONS).contains(n))
        {
            return Err(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}, not {n}"
            ));
        }
        let mode = self.socket_mode;
        if mode & 0o600 != 0o600 || mode & !0o660 != 0 {
            return Err(format!(
                "socket_mode {mode:04o}: the owner needs read and write (0600), and only the \
                 group may get more (0660); others never (use socket_group)"
            ));
        }
        let min_segment = (crate::wal::format::SEGMENT_HEADER_LEN + 4096) as u64;
        if !(min_segment..=MAX_SEGMENT_MIB << 20).contains(&self.segment_size) {
            return Err(format!(
                "the WAL segment size must be between {min_segment} bytes and {MAX_SEGMENT_MIB} MiB"
            ));
        }
        if self.max_keys == 0 {
            return Err("max_keys must be at least 1".into());
        }
        Ok(())
    }

    /// Queue id by name.
    pub fn queue_id(&self, name: &str) -> Option<u16> {
        self.queues
            .iter()
            .position(|q| q.name == name)
            .map(|i| i as u16)
    }
}

/// The daemon's uid and root.
pub fn default_allow_uids() -> Vec<u32> {
    let me = rustix::process::getuid().as_raw();
    if me == 0 {
        vec![0]
    } else {
        vec![me, 0]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    workers: Option<usize>,
    sync: Option<String>,
    order: Option<String>,
    allow_uids: Option<Vec<u32>>,
    max_line_bytes: Option<usize>,
    max_connections: Option<usize>,
    socket_group: Option<GroupName>,
    socket_mode: Option<Mode>,
    shutdown_grace: Option<String>,
    segment_size_mib: Option<u64>,
    history_limit: Option<usize>,
    key_retention: Option<String>,
    max_keys: Option<usize>,
    checkpoints: Option<bool>,
    checkpoint_after_mib: Option<u64>,
    seal_after: Option<String>,
    archive_retention: Option<String>,
    archive_max_mib: Option<u64>,
    catalog: Option<bool>,
    history_retention: Option<String>,
    alert_command: Option<Vec<String>>,
    alert_timeout: Option<String>,
    alert_clear: Option<String>,
    alert_fsync: Option<String>,
    output_max_mib: Option<u64>,
    #[serde(default)]
    queues: BTreeMap<String, FileQueue>,
    smtp: Option<FileSmtp>,
}

/// `socket_group`: a group name (from /etc/group) or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum GroupName {
    Id(u32),
    Name(String),
}

impl GroupName {
    fn gid(&self) -> Result<u32, String> {
        match self {
            GroupName::Id(g) => Ok(*g),
            GroupName::Name(n) => {
                if let Ok(g) = n.parse() {
                    return Ok(g);
                }
                let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
                groups
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split(':');
                        Some((f.next()?, f.nth(1)?))
                    })
                    .find(|(name, _)| name == n)
                    .and_then(|(_, gid)| gid.parse().ok())
                    .ok_or_else(|| {
                        format!(
                            "socket_group: no group {n:?} in /etc/group (give its number instead)"
                        )
                    })
            }
        }
    }
}

/// `socket_mode`: an integer (TOML `0o660`) or an octal string (`"0660"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Mode {
    Bits(u32),
    Octal(String),
}

impl Mode {
    fn bits(&self) -> Result<u32, String> {
        match self {
            Mode::Bits(b) => Ok(*b),
            Mode::Octal(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .map_err(|_| format!("socket_mode {s:?}: not an octal mode like \"0660\"")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSmtp {
    host: String,
    port: Option<u16>,
    tls: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    timeout: Option<String>,
    pool_size: Option<u32>,
    hello_name: Option<String>,
    ca_file: Option<std::path::PathBuf>,
}

impl FileSmtp {
    /// The settings, reading the password from the environment when `password_env` names it.
    fn build(self, env: &dyn Fn(&str) -> Option<String>) -> Result<SmtpConfig, String> {
        let mut c = SmtpConfig::new(&self.host);
        if let Some(t) = &self.tls {
            c.tls = SmtpTls::parse(t).map_err(|e| format!("smtp.tls: {e}"))?;
        }
        c.port = self.port.unwrap_or(c.tls.default_port());
        c.username = self.username;
        c.password = match (self.password, self.password_env) {
            (Some(_), Some(_)) => {
                return Err("smtp: give password or password_env, not both".into())
            }
            (Some(p), None) => Some(Secret::new(p)),
            (None, Some(var)) => Some(Secret::new(env(&var).ok_or_else(|| {
                format!("smtp.password_env: environment variable {var} is not set")
            })?)),
            (None, None) => None,
        };
        if let Some(t) = &self.timeout {
            c.timeout = parse_duration(t).map_err(|e| format!("smtp.timeout: {e}"))?;
        }
        if let Some(n) = self.pool_size {
            c.pool_size = n;
        }
        c.hello_name = self.hello_name;
        c.ca_file = self.ca_file;
        Ok(c)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQueue {
    due_in: Option<String>,
    max_workers: Option<usize>,
    reserved: Option<usize>,
    lend_limit: Option<String>,
    max_attempts: Option<u32>,
    timeout: Option<String>,
    backoff: Option<FileBackoff>,
    retry_past_deadline: Option<bool>,
    alert_retries: Option<u64>,
    alert_slack: Option<String>,
    alert_wait: Option<String>,
    alert_stall: Option<String>,
    env: Option<BTreeMap<String, String>>,
    env_file: Option<PathBuf>,
    cwd: Option<PathBuf>,
}

/// A TOML error as `line L, column C: what`, without the quoted source line toml would add: that
/// line may hold a secret (an `env` value, a password).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

/// A queue's `env_file`, `env` and `cwd`, paths taken from `base`. Errors name the file, the
/// line and the variable, never a value.
fn exec_defaults(queue: &str, q: &FileQueue, base: &Path) -> Result<ExecDefaults, String> {
    let abs = |p: &Path| -> Result<PathBuf, String> {
        let p = base.join(p);
        std::path::absolute(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut d = ExecDefaults::default();
    if let Some(file) = &q.env_file {
        let path = abs(file).map_err(|e| format!("queue {queue}: env_file {e}"))?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("queue {queue}: env_file {}: {e}", path.display()))?;
        d.env = parse_env_file(&text)
            .map_err(|e| format!("queue {queue}: env_file {}: {e}", path.display()))?;
    }
    for (k, v) in q.env.iter().flatten() {
        d.env.insert(k.clone(), v.clone());
    }
    for (k, v) in &d.env {
        if let Err(e) = check_env_var(k, v) {
            return Err(format!("queue {queue}: env: {e}"));
        }
    }
    if let Some(cwd) = &q.cwd {
        let path = abs(cwd).map_err(|e| format!("queue {queue}: cwd {e}"))?;
        if !path.is_dir() {
            return Err(format!(
                "queue {queue}: cwd {} is not a directory",
                path.display()
            ));
        }
        d.cwd = Some(path);
    }
    Ok(d)
}

/// Checks one environment variable of an exec job: a name without `=` or NUL, a value without
/// NUL. The message names the variable, never its value.
pub fn check_env_var(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(format!("invalid environment variable name {name:?}"));
    }
    if value.contains('\0') {
        return Err(format!("the value of {name} contains a NUL byte"));
    }
    Ok(())
}

/// Parses an `env_file`: `NAME=value` lines (an `export ` before the name is allowed; a name of
/// letters, digits and `_`, not starting with a digit), blank lines and `#` comments skipped; a
/// value in single quotes is taken as it is, one in double quotes with `\"`, `\\`, `\n`
/// unescaped; otherwise the value is the rest of the line, trimmed, up to a ` #` comment.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {n}: expected NAME=value"));
        };
        let name = name.trim();
        let good_name = name
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if name.is_empty() || !good_name {
            return Err(format!(
                "line {n}: invalid variable name (letters, digits and _, not starting with a \
                 digit)"
            ));
        }
        let value = env_value(value.trim()).map_err(|e| format!("line {n}: {name}: {e}"))?;
        check_env_var(name, &value).map_err(|e| format!("line {n}: {e}"))?;
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

/// One `env_file` value (see [`parse_env_file`]). Errors say what is wrong, never the value.
fn env_value(v: &str) -> Result<String, String> {
    let (value, rest) = if let Some(body) = v.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unclosed single quote")?;
        (body[..end].to_string(), &body[end + 1..])
    } else if let Some(body) = v.strip_prefix('"') {
        let mut out = String::with_capacity(body.len());
        let mut chars = body.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, c)) => out.push(c),
                    None => out.push('\\'),
                },
                c => out.push(c),
            }
        }
        let end = end.ok_or("unclosed double quote")?;
        (out, &body[end + 1..])
    } else {
        // Unquoted: up to a comment that follows whitespace.
        let cut = v
            .char_indices()
            .find(|&(i, c)| c == '#' && i > 0 && v[..i].ends_with([' ', '\t']))
            .map_or(v.len(), |(i, _)| i);
        return Ok(v[..cut].trim_end().to_string());
    };
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err("text after the closing quote (quote the whole value)".into());
    }
    Ok(value)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackoff {
    base: String,
    cap: Option<String>,
}

/// Parses a duration: a number with a unit `ms`, `s`, `m`, `h` or `d` (`250ms`, `30s`, `5m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a number and a unit, like 30s"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => {
            return Err(format!(
                "invalid duration {s:?}: add a unit (ms, s, m, h or d)"
            ))
        }
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (ms, s, m, h or d)"
            ))
        }
    };
    let ms = n
        .checked_mul(ms_per)
        .filter(|&ms| ms <= MAX_DURATION_MS)
        .ok_or_else(|| format!("invalid duration {s:?}: longer than 10 years"))?;
    Ok(Duration::from_millis(ms))
}

/// Longest accepted duration anywhere (10 years).
pub const MAX_DURATION_MS: u64 = 10 * 365 * 86_400_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(text: &str, env: &[(&str, &str)]) -> Result<SmtpConfig, String> {
        #[derive(Deserialize)]
        struct Only {
            smtp: FileSmtp,
        }
        let f: Only = toml::from_str(text).map_err(|e| e.to_string())?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        f.smtp
            .build(&|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn smtp_settings_ports_follow_the_tls_mode_and_secrets_stay_hidden() {
        let c = smtp("[smtp]\nhost = \"mail.example.com\"\n", &[]).unwrap();
        assert_eq!((c.port, c.tls, c.pool_size), (25, SmtpTls::None, 4));
        assert_eq!(c.timeout, Duration::from_secs(30));
        let c = smtp("[smtp]\nhost = \"h\"\ntls = \"starttls\"\n", &[]).unwrap();
        assert_eq!((c.port, c.tls), (587, SmtpTls::StartTls));
        let c = smtp(
            "[smtp]\nhost = \"h\"\ntls = \"tls\"\nport = 2465\npool_size = 0\ntimeout = \"5s\"\n\
             username = \"u\"\npassword_env = \"PW\"\n",
            &[("PW", "hunter2")],
        )
        .unwrap();
        assert_eq!((c.port, c.tls, c.pool_size), (2465, SmtpTls::Tls, 0));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("hunter2"));
        assert_eq!(c.ca_file, None);
        let with_ca = smtp("[smtp]\nhost = \"h\"\nca_file = \"/etc/ca.pem\"\n", &[]).unwrap();
        assert_eq!(
            with_ca.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
        let e = smtp("[smtp]\nhost = \"h\"\npassword_env = \"MISSING\"\n", &[]).unwrap_err();
        assert!(e.contains("MISSING is not set"), "{e}");
        let e = smtp(
            "[smtp]\nhost = \"h\"\npassword = \"a\"\npassword_env = \"B\"\n",
            &[("B", "b")],
        )
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = smtp("[smtp]\nhost = \"h\"\ntls = \"ssl\"\n", &[]).unwrap_err();
        assert!(e.contains("none, starttls or tls"), "{e}");
        let e = smtp("[smtp]\nhost = \"h\"\nuser = \"x\"\n", &[]).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        // Whole-config checks.
        let e = Config::from_toml("[smtp]\nhost = \"\"\n", None).unwrap_err();
        assert!(e.contains("smtp.host"), "{e}");
        let e = Config::from_toml("[smtp]\nhost = \"h\"\npassword = \"p\"\n", None).unwrap_err();
        assert!(e.contains("needs a username"), "{e}");
        let c = Config::from_toml("[smtp]\nhost = \"h\"\nport = 2525\n", None).unwrap();
        assert_eq!(c.smtp.map(|s| s.port), Some(2525));
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::with_workers(4);
        let names: Vec<_> = c.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["notifications", "default", "bulk"]);
        assert_eq!(c.queues[0].reserved, 1);
        assert_eq!(c.queues[0].lend_limit, Duration::from_millis(300));
        assert_eq!(c.queues[2].due_in, Duration::from_secs(3600));
        assert_eq!(c.sync, SyncMode::Always);
        c.validate().unwrap();
    }

    #[test]
    fn toml_queues_and_errors() {
        let c = Config::from_toml(
            "workers = 6\nsync = \"batch:5\"\n[queues.mail]\ndue_in = \"10s\"\nreserved = 2\n[queues.sync]\ndue_in = \"2h\"\nmax_workers = 2\n",
            None,
        )
        .unwrap();
        assert_eq!(c.workers, 6);
        assert_eq!(c.queue_id("mail"), Some(0));
        assert_eq!(c.queues[1].max_workers, 2);
        assert_eq!(c.queues[0].lend_limit, Duration::from_millis(100));
        assert!(Config::from_toml("bogus = 1", None)
            .unwrap_err()
            .contains("unknown field"));
        assert!(
            Config::from_toml("workers = 2\n[queues.a]\nreserved = 3\n", None)
                .unwrap_err()
                .contains("reserved exceeds")
        );
        assert!(Config::from_toml("[queues.a]\ndue_in = \"10 parsecs\"\n", None).is_err());
        assert!(Config::from_toml("[queues.\"a b\"]\n", None)
            .unwrap_err()
            .contains("queue name"));
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../docs/config.md");
        let start = doc.find("```toml\n").expect("toml block") + 8;
        let end = start + doc[start..].find("```").expect("block end");
        let c = Config::from_toml(&doc[start..end], None).unwrap();
        assert_eq!(c.workers, 8);
        assert_eq!(c.queues.len(), 2);
        assert_eq!(c.queues[1].name, "notifications");
        assert_eq!(c.queues[1].timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.allow_uids, [1000, 0]);
        assert_eq!((c.socket_group, c.socket_mode), (Some(1000), 0o660));
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_reason_never_clamped() {
        let bad = [
            ("workers = 0", "workers must be between 1 and 4096"),
            (
                "segment_size_mib = 0",
                "segment_size_mib must be between 1 and 1024",
            ),
            (
                "segment_size_mib = 1000000000",
                "segment_size_mib must be between 1 and 1024",
            ),
            ("allow_uids = []", "nobody could connect"),
            (
                "max_line_bytes = 104857600",
                "max_line_bytes must be between 1024",
            ),
            ("max_connections = 0", "max_connections must be between 1"),
            ("socket_mode = \"0666\"", "others never"),
            ("socket_mode = 0o400", "the owner needs read and write"),
            ("socket_mode = \"rw\"", "not an octal mode"),
            ("socket_group = \"no-such-group-here\"", "no group"),
            ("max_keys = 0", "max_keys must be at least 1"),
            (
                "[smtp]\nhost = \"h\"\npool_size = 100000000",
                "smtp.pool_size must be at most 1024",
            ),
            ("[queues.q]\ndue_in = \"0s\"", "due_in must be positive"),
        ];
        for (text, why) in bad {
            let e = Config::from_toml(text, None).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // A command-line --workers 0 too.
        assert!(Config::from_toml("", Some(0))
            .unwrap_err()
            .contains("workers must be"));
        assert!(Config::with_workers(0).validate().is_err());
        // And the good ones are taken as written.
        let c = Config::from_toml(
            "segment_size_mib = 1\nsocket_group = 54321\nsocket_mode = \"0660\"\nmax_connections = 10\n",
            None,
        )
        .unwrap();
        assert_eq!(c.segment_size, 1 << 20);
        assert_eq!((c.socket_group, c.socket_mode), (Some(54321), 0o660));
        assert_eq!(c.max_connections, Some(10));
        let c = Config::from_toml("socket_group = \"root\"\n", None).unwrap();
        assert_eq!((c.socket_group, c.socket_mode), (Some(0), 0o660));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5").unwrap_err().contains("add a unit"));
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("4000d").unwrap_err().contains("10 years"));
    }

    #[test]
    fn env_files_parse_like_a_shell_would_read_them_and_errors_name_no_value() {
        let v = parse_env_file(
            "# c\n\nA=1\nexport B = two words \nC='x \"y\" $z'\nD=\"a\\\"b\\nc\"\nE=\nF=g=h\n\
             G=1 # a note\nH=\"#x\" # note\nI='a#b'\nJ=a#b\n",
        )
        .unwrap();
        let want: BTreeMap<String, String> = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "x \"y\" $z"),
            ("D", "a\"b\nc"),
            ("E", ""),
            ("F", "g=h"),
            ("G", "1"),
            ("H", "#x"),
            ("I", "a#b"),
            ("J", "a#b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(v, want);
        for (text, err) in [
            ("A=1\nnoequals\n", "line 2: expected NAME=value"),
            ("K='open\n", "line 1: K: unclosed single quote"),
            ("K=\"open\n", "line 1: K: unclosed double quote"),
            (
                "=secret\n",
                "line 1: invalid variable name (letters, digits and _, not starting with a digit)",
            ),
            (
                "TOK secret=1\n",
                "line 1: invalid variable name (letters, digits and _, not starting with a digit)",
            ),
            (
                "K=\"open\" secret\n",
                "line 1: K: text after the closing quote (quote the whole value)",
            ),
        ] {
            let e = parse_env_file(text).unwrap_err();
            assert_eq!(e, err);
            assert!(!e.contains("secret") && !e.contains("open"));
        }
        // A TOML mistake on a line with a secret names the line, not the secret.
        let e = Config::from_toml("[queues.q]\nenv = { TOKEN = hunter2 }\n", None).unwrap_err();
        assert!(e.starts_with("line 2, column "), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // The values stay out of the config's Debug form (it may be logged).
        let mut d = ExecDefaults::default();
        d.env.insert("TOKEN".into(), "hunter2".into());
        let dbg = format!("{d:?}");
        assert!(dbg.contains("TOKEN") && !dbg.contains("hunter2"), "{dbg}");
    }
}
