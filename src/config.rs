//! Daemon configuration: queues, workers, sync mode, socket access. Built from defaults (SPEC §2),
//! optionally from a TOML file, then from command-line overrides. Immutable once the runtime
//! starts; every thread reads it through an `Arc`.

use std::collections::BTreeMap;
use std::path::Path;
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
}

impl QueueConfig {
    /// A queue with SPEC defaults for `workers` workers.
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
    /// How long running jobs may finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Terminal jobs kept in memory for `status` (oldest forgotten first).
    pub history_limit: usize,
    /// How long an idempotency key stays known after its job was submitted.
    pub key_retention: Duration,
    /// Most keys kept; beyond it the oldest are forgotten early (logged, counted in `stats`).
    pub max_keys: usize,
}

/// Default worker count: CPU count, at least 4 (SPEC §2).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(4)
}

impl Config {
    /// SPEC §2 defaults for `workers` workers.
    pub fn with_workers(workers: usize) -> Config {
        let w = workers.max(1);
        Config {
            workers: w,
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
            shutdown_grace: Duration::from_secs(10),
            history_limit: 100_000,
            key_retention: Duration::from_secs(7 * 86_400),
            max_keys: 10_000_000,
        }
    }

    /// Reads a TOML config file (see `docs/config.md`).
    pub fn from_file(path: &Path, workers_override: Option<usize>) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Config::from_toml(&text, workers_override)
            .map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses TOML config text.
    pub fn from_toml(text: &str, workers_override: Option<usize>) -> Result<Config, String> {
        let f: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
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
        if let Some(g) = &f.shutdown_grace {
            c.shutdown_grace = parse_duration(g)?;
        }
        if let Some(s) = f.segment_size_mib {
            c.segment_size = s.clamp(1, 4096) << 20;
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
            reserved += q.reserved;
        }
        if reserved > self.workers {
            return Err(format!(
                "queues reserve {reserved} workers but only {} exist",
                self.workers
            ));
        }
        if self.max_line < 1024 {
            return Err("max_line_bytes must be at least 1024".into());
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
    shutdown_grace: Option<String>,
    segment_size_mib: Option<u64>,
    history_limit: Option<usize>,
    key_retention: Option<String>,
    max_keys: Option<usize>,
    #[serde(default)]
    queues: BTreeMap<String, FileQueue>,
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
}
