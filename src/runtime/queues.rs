//! Live queue control: `duejob queue set|pause|resume` change a queue while the daemon runs.
//!
//! A change is checked as the config file is (the whole configuration with it must pass
//! [`Config::validate`]: a bad value is refused with the reason and nothing changes), then
//! written to the WAL as a `queue` record (the queue's settings after the change) and, once that
//! is durable, applied: submits read `due_in` from an atomic, the dispatcher gets the new limits
//! and pause for its next pick. Checkpoints carry the latest record of each queue, so a change
//! survives restarts and the release of its segment; the config file gives the defaults (a
//! field the operator never set, or reset, is the file's). Changes are rare and take a lock of
//! their own, so two at once are ordered and each is validated against the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{closed, fate_rejection, Handle};
use crate::config::{Config, QueueConfig, MAX_DURATION_MS};
use crate::scheduler::ready::Limits;
use crate::scheduler::Msg;
use crate::wal::commit::{Fate, RecordBatch};
use crate::wal::record::{QueueSettings, Record};
use crate::wire::{ErrorCode, QueueChange, QueueInfo, Rejection};

/// Paused until resumed.
pub const UNTIL_RESUMED: u64 = u64::MAX;

/// The queues' live settings.
pub(super) struct QueueControl {
    /// The config file's queues: the defaults.
    base: Vec<QueueConfig>,
    /// Per queue, the operator's settings (its latest `queue` record, or none set).
    overrides: Mutex<Vec<QueueSettings<'static>>>,
    /// Per queue, `due_in` (ms) as submits read it.
    due_in_ms: Vec<AtomicU64>,
}

fn no_override(queue: &str) -> QueueSettings<'static> {
    QueueSettings {
        at: 0,
        queue: queue.to_string().into(),
        due_in_ms: None,
        max_workers: None,
        reserved: None,
        lend_limit_ms: None,
        paused_until: None,
    }
}

/// `base` with `o`'s settings.
fn effective(base: &QueueConfig, o: &QueueSettings<'_>) -> QueueConfig {
    let mut q = base.clone();
    if let Some(ms) = o.due_in_ms {
        q.due_in = Duration::from_millis(ms);
    }
    if let Some(n) = o.max_workers {
        q.max_workers = n as usize;
    }
    if let Some(n) = o.reserved {
        q.reserved = n as usize;
    }
    if let Some(ms) = o.lend_limit_ms {
        q.lend_limit = Duration::from_millis(ms);
    }
    q
}

/// The names of the settings `o` overrides.
fn overridden(o: &QueueSettings<'_>) -> Vec<String> {
    [
        ("due_in", o.due_in_ms.is_some()),
        ("max_workers", o.max_workers.is_some()),
        ("reserved", o.reserved.is_some()),
        ("lend_limit", o.lend_limit_ms.is_some()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| n.to_string())
    .collect()
}

fn limits(q: &QueueConfig) -> Limits {
    Limits {
        max_workers: q.max_workers,
        reserved: q.reserved,
        lend_limit_ms: q.lend_limit.as_millis() as u64,
    }
}

impl QueueControl {
    /// The control for `file` (the config as given), with the settings recovered from the log
    /// applied where they still fit it (one that does not, say after the file lowered
    /// `workers`, is dropped with a warning: the file wins). Returns it, the configuration in
    /// force, and each queue's pause.
    pub(super) fn start(
        file: &Config,
        recovered: Vec<QueueSettings<'static>>,
    ) -> (QueueControl, Config, Vec<Option<u64>>) {
        let mut cfg = file.clone();
        let mut overrides: Vec<QueueSettings<'static>> =
            file.queues.iter().map(|q| no_override(&q.name)).collect();
        for o in recovered {
            let Some(i) = file.queue_id(&o.queue).map(usize::from) else {
                log::warn!(
                    "queue {}: settings changed while it was configured; it is not any more",
                    o.queue
                );
                continue;
            };
            let mut next = cfg.clone();
            next.queues[i] = effective(&file.queues[i], &o);
            match next.validate() {
                Ok(()) => {
                    if !overridden(&o).is_empty() || o.paused_until.is_some() {
                        log::info!(
                            "queue {}: live settings from the log: {}{}",
                            o.queue,
                            describe(&next.queues[i], &o),
                            match o.paused_until {
                                Some(UNTIL_RESUMED) => ", paused".to_string(),
                                Some(t) if t > crate::job::now_ms() => {
                                    format!(", paused until {t}")
                                }
                                _ => String::new(),
                            }
                        );
                    }
                    cfg = next;
                    overrides[i] = o;
                }
                Err(e) => log::warn!(
                    "queue {}: the settings changed live ({}) no longer fit the config file \
                     ({e}); using the file's",
                    o.queue,
                    describe(&next.queues[i], &o)
                ),
            }
        }
        let paused = overrides.iter().map(|o| o.paused_until).collect();
        let due_in_ms = cfg
            .queues
            .iter()
            .map(|q| AtomicU64::new(q.due_in.as_millis() as u64))
            .collect();
        (
            QueueControl {
                base: file.queues.clone(),
                overrides: Mutex::new(overrides),
                due_in_ms,
            },
            cfg,
            paused,
        )
    }

    /// Queue `q`'s `due_in` now.
    pub(super) fn due_in_ms(&self, q: u16) -> u64 {
        self.due_in_ms[q as usize].load(Ordering::Relaxed)
    }

    /// The settings each queue's operator changed.
    pub(super) fn overridden(&self) -> Vec<Vec<String>> {
        let ov = self.overrides.lock().expect("queue control");
        ov.iter().map(overridden).collect()
    }
}

/// `due_in 30s, max_workers 2`: the overridden settings' values.
fn describe(q: &QueueConfig, o: &QueueSettings<'_>) -> String {
    let mut parts = Vec::new();
    if o.due_in_ms.is_some() {
        parts.push(format!("due_in {} ms", q.due_in.as_millis()));
    }
    if o.max_workers.is_some() {
        parts.push(format!("max_workers {}", q.max_workers));
    }
    if o.reserved.is_some() {
        parts.push(format!("reserved {}", q.reserved));
    }
    if o.lend_limit_ms.is_some() {
        parts.push(format!("lend_limit {} ms", q.lend_limit.as_millis()));
    }
    if parts.is_empty() {
        "none overridden".into()
    } else {
        parts.join(", ")
    }
}

fn bad(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::BadRequest, msg)
}

impl Handle {
    /// `queue set`: changes a queue's `due_in`, `max_workers`, `reserved` or `lend_limit` (or,
    /// with `reset`, puts them back to the config file's first).
    pub fn queue_set(&self, c: &QueueChange<'_>) -> Result<QueueInfo, Rejection> {
        for (name, v) in [
            ("due_in_ms", c.due_in_ms),
            ("lend_limit_ms", c.lend_limit_ms),
        ] {
            if v.is_some_and(|ms| ms > MAX_DURATION_MS) {
                return Err(bad(format!(
                    "{name} must be at most {MAX_DURATION_MS} (10 years)"
                )));
            }
        }
        let to_u32 = |name: &str, v: Option<u64>| -> Result<Option<u32>, Rejection> {
            v.map(|n| u32::try_from(n).map_err(|_| bad(format!("{name} {n} is too large"))))
                .transpose()
        };
        let max_workers = to_u32("max_workers", c.max_workers)?;
        let reserved = to_u32("reserved", c.reserved)?;
        if !c.reset
            && c.due_in_ms.is_none()
            && max_workers.is_none()
            && reserved.is_none()
            && c.lend_limit_ms.is_none()
        {
            return Err(bad(
                "nothing to change: give due_in_ms, max_workers, reserved, lend_limit_ms or reset",
            ));
        }
        self.change_queue(&c.queue, "set", |o| {
            if c.reset {
                o.due_in_ms = None;
                o.max_workers = None;
                o.reserved = None;
                o.lend_limit_ms = None;
            }
            o.due_in_ms = c.due_in_ms.or(o.due_in_ms);
            o.max_workers = max_workers.or(o.max_workers);
            o.reserved = reserved.or(o.reserved);
            o.lend_limit_ms = c.lend_limit_ms.or(o.lend_limit_ms);
        })
    }

    /// `queue pause`: the queue takes jobs and holds them `ready`, none starts, until resumed
    /// (or for `for_ms`).
    pub fn queue_pause(&self, queue: &str, for_ms: Option<u64>) -> Result<QueueInfo, Rejection> {
        let until = match for_ms {
            None => UNTIL_RESUMED,
            Some(0) => return Err(bad("for_ms must be at least 1")),
            Some(ms) if ms > MAX_DURATION_MS => {
                return Err(bad(format!(
                    "for_ms must be at most {MAX_DURATION_MS} (10 years)"
                )))
            }
            Some(ms) => crate::job::now_ms() + ms,
        };
        self.change_queue(queue, "pause", |o| o.paused_until = Some(until))
    }

    /// `queue resume`: a paused queue's jobs start again.
    pub fn queue_resume(&self, queue: &str) -> Result<QueueInfo, Rejection> {
        self.change_queue(queue, "resume", |o| o.paused_until = None)
    }

    fn change_queue(
        &self,
        name: &str,
        what: &str,
        change: impl FnOnce(&mut QueueSettings<'static>),
    ) -> Result<QueueInfo, Rejection> {
        let cfg = &self.inner.cfg;
        let q = cfg.queue_id(name).ok_or_else(|| {
            Rejection::new(
                ErrorCode::UnknownQueue,
                format!("no queue {name:?} (configured: {})", queue_names(cfg)),
            )
        })?;
        let i = q as usize;
        let ctl = &self.inner.queues;
        let mut ov = ctl.overrides.lock().expect("queue control");
        let mut next = ov[i].clone();
        change(&mut next);
        next.at = crate::job::now_ms();
        // The whole configuration, this change in it, must pass the file's checks.
        let mut eff = (**cfg).clone();
        for (j, b) in ctl.base.iter().enumerate() {
            eff.queues[j] = effective(b, if j == i { &next } else { &ov[j] });
        }
        eff.validate().map_err(bad)?;
        let mut batch = RecordBatch::new();
        batch.push(&Record::Queue(next.clone()));
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.append(batch, Vec::new(), tx)?;
        let ack = rx.recv().map_err(|_| closed())?;
        if !ack.is_ok() {
            let f = ack.fates().next().unwrap_or(Fate::NotRecorded);
            return Err(fate_rejection(&ack, f, 0));
        }
        let qc = &eff.queues[i];
        ctl.due_in_ms[i].store(qc.due_in.as_millis() as u64, Ordering::Relaxed);
        let now = crate::job::now_ms();
        let paused_until = next.paused_until.filter(|&t| t > now);
        self.inner
            .sched_tx
            .send(Msg::QueueSettings {
                queue: q,
                limits: limits(qc),
                due_in: qc.due_in,
                paused_until,
            })
            .map_err(|_| closed())?;
        log::info!(
            "queue {name}: {what}: {}{}",
            describe(qc, &next),
            match paused_until {
                Some(UNTIL_RESUMED) => "; paused".to_string(),
                Some(t) => format!("; paused for {} ms more", t - now),
                None => String::new(),
            }
        );
        let info = QueueInfo {
            queue: name.to_string(),
            due_in_ms: qc.due_in.as_millis() as u64,
            max_workers: qc.max_workers,
            reserved: qc.reserved,
            lend_limit_ms: qc.lend_limit.as_millis() as u64,
            paused: paused_until.is_some(),
            paused_until,
            overridden: overridden(&next),
        };
        ov[i] = next;
        Ok(info)
    }
}

fn queue_names(cfg: &Config) -> String {
    cfg.queues
        .iter()
        .map(|q| q.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
