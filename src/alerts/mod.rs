//! Alerts: rules the daemon evaluates once a second over its own figures, so that an operator is
//! told of trouble without looking (SPEC §5, docs/config.md "Alerts").
//!
//! Per queue: `retrying` (retries per minute above `alert_retries`, default any), `deadline_missed`
//! (a ready job is past its deadline), `slack` (the most urgent ready job's slack under
//! `alert_slack`), `wait` (it has waited longer than `alert_wait`), `stall` (jobs ready but no
//! attempt ended for `alert_stall`). Daemon-wide: `wal_sync` (fsync p99 over the last 10 s above
//! `alert_fsync`), `checkpoint_failing`, `catalog_failing`, `kind_failing` (a kind's outside
//! service, e.g. the SMTP server, failed three attempts in a row).
//!
//! Each rule fires once its condition has held for its hold time, and resolves once its clear
//! condition (stricter than "not firing": a threshold with hysteresis) has held for
//! `alert_clear`, so it does not flap. Firing and resolving are logged (warn or error) and, with
//! `alert_command`, the command gets the alert as one JSON object on stdin ([`command`]).
//!
//! The evaluator is pure ([`Evaluator::tick`]: figures in, events out) and runs on a thread of its
//! own ([`spawn`]) that reads the figures as `stats` does; nothing here is on the path of a submit
//! or a dispatch (G6).

pub mod command;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::wire::{AlertInfo, AlertsReport, QueueStats, Stats};

/// Consecutive failures of a kind's outside service that fire `kind_failing`.
pub const KIND_FAILURES: u64 = 3;
/// The span over which `wal_sync` takes its fsync p99.
const FSYNC_SPAN: Duration = Duration::from_secs(10);
/// Fewest fsyncs in the span for a `wal_sync` verdict.
const FSYNC_MIN: u64 = 10;

/// A rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// The queue retries.
    Retrying,
    /// A ready job of the queue is past its deadline.
    DeadlineMissed,
    /// The most urgent ready job's slack is short.
    Slack,
    /// The most urgent ready job has waited long.
    Wait,
    /// Jobs are ready but no attempt ends.
    Stall,
    /// The WAL's fsyncs are slow.
    WalSync,
    /// Checkpoints fail.
    CheckpointFailing,
    /// The catalog fails.
    CatalogFailing,
    /// A kind's outside service fails.
    KindFailing,
}

impl Rule {
    /// Its name in logs, `alerts` and the command's JSON.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Retrying => "retrying",
            Rule::DeadlineMissed => "deadline_missed",
            Rule::Slack => "slack",
            Rule::Wait => "wait",
            Rule::Stall => "stall",
            Rule::WalSync => "wal_sync",
            Rule::CheckpointFailing => "checkpoint_failing",
            Rule::CatalogFailing => "catalog_failing",
            Rule::KindFailing => "kind_failing",
        }
    }

    /// How long the condition must hold before the rule fires.
    pub fn hold(self) -> Duration {
        match self {
            Rule::Slack | Rule::Wait => Duration::from_secs(2),
            Rule::WalSync => Duration::from_secs(5),
            _ => Duration::ZERO,
        }
    }

    /// Whether firing is logged as an error (else a warning).
    fn severe(self) -> bool {
        matches!(
            self,
            Rule::DeadlineMissed
                | Rule::Stall
                | Rule::CheckpointFailing
                | Rule::CatalogFailing
                | Rule::KindFailing
        )
    }

    /// What the value and threshold measure.
    fn unit(self) -> &'static str {
        match self {
            Rule::Retrying => "retries/min",
            Rule::DeadlineMissed => "jobs late",
            Rule::Slack | Rule::Wait | Rule::Stall => "ms",
            Rule::WalSync => "µs fsync p99",
            Rule::CheckpointFailing | Rule::CatalogFailing => "failing",
            Rule::KindFailing => "failures in a row",
        }
    }
}

/// Where a rule instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ok,
    /// Its condition holds since then (ms), not yet for its hold time.
    Pending(u64),
    /// Firing since then; `clear_since`: its clear condition holds since then.
    Firing {
        since: u64,
        clear_since: Option<u64>,
    },
}

/// One evaluation of a rule instance.
#[derive(Debug, Clone, Copy)]
struct Check {
    active: bool,
    clear: bool,
    value: f64,
    threshold: f64,
}

#[derive(Debug, Clone)]
struct Instance {
    phase: Phase,
    value: f64,
    threshold: f64,
}

/// Which instance: the rule, and its queue or kind.
type Key = (Rule, Option<String>);

/// A firing or a resolve.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// The rule's name.
    pub alert: &'static str,
    /// Its queue (per-queue rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Its kind (`kind_failing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// The figure the rule watches, now.
    pub value: f64,
    /// The rule's threshold.
    pub threshold: f64,
    /// What both measure.
    pub unit: &'static str,
    /// When it started firing (ms since the epoch).
    pub since: u64,
    /// Now (ms since the epoch).
    pub at: u64,
    /// One line for people.
    pub message: String,
    /// The queue's figures (per-queue rules), as `stats` shows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figures: Option<QueueStats>,
    /// Logged as an error when it fires (else a warning).
    #[serde(skip)]
    pub severe: bool,
}

/// The rules' state over time.
pub struct Evaluator {
    cfg: Arc<Config>,
    rules: BTreeMap<Key, Instance>,
    prev: Option<Stats>,
    /// Per queue: when an attempt last ended, or nothing was waiting (ms).
    progress: HashMap<String, u64>,
    /// fsync latency bucket counts, sampled each tick, for the last [`FSYNC_SPAN`].
    fsyncs: VecDeque<(u64, Vec<u64>)>,
}

impl Evaluator {
    /// No rule firing.
    pub fn new(cfg: Arc<Config>) -> Evaluator {
        Evaluator {
            cfg,
            rules: BTreeMap::new(),
            prev: None,
            progress: HashMap::new(),
            fsyncs: VecDeque::new(),
        }
    }

    /// Evaluates every rule at `now` (ms) over `s` (and the WAL's fsync latency bucket counts,
    /// cumulative, bucket i holding fsyncs of at most 2^i µs); returns what fired or resolved.
    pub fn tick(&mut self, now: u64, s: &Stats, fsync_buckets: &[u64]) -> Vec<Event> {
        // The queue's figures are cloned only into the events that happen.
        let mut checks: Vec<(Key, Check, Option<&QueueStats>)> = Vec::new();
        let prev = self.prev.take();
        for qc in &self.cfg.queues {
            let Some(q) = s.sched.queues.get(&qc.name) else {
                continue;
            };
            let p = prev.as_ref().and_then(|p| p.sched.queues.get(&qc.name));
            let ready = q.count(crate::job::State::Ready);
            let key = |r: Rule| (r, Some(qc.name.clone()));
            // retrying
            let rate = q.recent.retries as f64 * 60_000.0 / q.recent.window_ms.max(1) as f64;
            let new_retries = p.map_or(q.retries, |p| q.retries.saturating_sub(p.retries));
            let t = qc.alert_retries as f64;
            checks.push((
                key(Rule::Retrying),
                // With the default threshold (any retry), a retry since the last tick fires it
                // and a quiet tick counts towards clearing; with a rate, the last minute's.
                Check {
                    active: if qc.alert_retries == 0 {
                        new_retries > 0
                    } else {
                        rate > t
                    },
                    clear: if qc.alert_retries == 0 {
                        new_retries == 0
                    } else {
                        rate <= t
                    },
                    value: round1(rate),
                    threshold: t,
                },
                Some(q),
            ));
            // deadline_missed
            let new_misses = p.map_or(q.deadline_misses, |p| {
                q.deadline_misses.saturating_sub(p.deadline_misses)
            });
            checks.push((
                key(Rule::DeadlineMissed),
                Check {
                    active: q.late > 0 || new_misses > 0,
                    clear: q.late == 0 && new_misses == 0,
                    value: (q.late.max(new_misses)) as f64,
                    threshold: 0.0,
                },
                Some(q),
            ));
            // slack
            // Defaults follow `due_in` as it is now (`queue set` may have changed it).
            let t = qc
                .alert_slack
                .map_or(q.due_in_ms as f64 / 10.0, |d| d.as_millis() as f64);
            let slack = q.slack_ms.filter(|_| ready > 0).map(|v| v as f64);
            checks.push((
                key(Rule::Slack),
                Check {
                    active: slack.is_some_and(|v| v < t),
                    clear: slack.is_none_or(|v| v >= 2.0 * t),
                    value: slack.unwrap_or(0.0),
                    threshold: t,
                },
                Some(q),
            ));
            // wait
            let t = qc
                .alert_wait
                .map_or(q.due_in_ms as f64, |d| d.as_millis() as f64);
            let age = q
                .oldest_ready_age_ms
                .filter(|_| ready > 0)
                .map(|v| v as f64);
            checks.push((
                key(Rule::Wait),
                Check {
                    active: age.is_some_and(|v| v > t),
                    clear: age.is_none_or(|v| v <= t / 2.0),
                    value: age.unwrap_or(0.0),
                    threshold: t,
                },
                Some(q),
            ));
            // stall
            let ended = p.is_none_or(|p| q.run_ms.count != p.run_ms.count);
            let last = self.progress.entry(qc.name.clone()).or_insert(now);
            if ended || ready == 0 {
                *last = now;
            }
            let stalled = now.saturating_sub(*last);
            let t = qc.alert_stall.as_millis() as f64;
            checks.push((
                key(Rule::Stall),
                Check {
                    active: stalled as f64 >= t,
                    clear: stalled == 0,
                    value: stalled as f64,
                    threshold: t,
                },
                Some(q),
            ));
        }
        // wal_sync: the p99 of the fsyncs of the last span.
        self.fsyncs.push_back((now, fsync_buckets.to_vec()));
        while self
            .fsyncs
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > FSYNC_SPAN.as_millis() as u64)
        {
            self.fsyncs.pop_front();
        }
        let oldest = &self.fsyncs.front().expect("just pushed").1;
        let delta: Vec<u64> = fsync_buckets
            .iter()
            .zip(oldest.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let p99 = quantile_upper(&delta, 0.99);
        let t = self.cfg.alerts.fsync.as_micros() as f64;
        checks.push((
            (Rule::WalSync, None),
            Check {
                active: p99.is_some_and(|v| v as f64 > t),
                clear: p99.is_none_or(|v| v as f64 <= t / 2.0),
                value: p99.unwrap_or(0) as f64,
                threshold: t,
            },
            None,
        ));
        let failing = s.wal.checkpoint.last_error.is_some();
        checks.push(((Rule::CheckpointFailing, None), flag(failing), None));
        if let Some(c) = &s.catalog {
            checks.push(((Rule::CatalogFailing, None), flag(c.failing), None));
        }
        for (kind, h) in &s.kinds {
            let n = h.consecutive_failures;
            checks.push((
                (Rule::KindFailing, Some(kind.clone())),
                Check {
                    active: n >= KIND_FAILURES,
                    clear: n == 0,
                    value: n as f64,
                    threshold: KIND_FAILURES as f64,
                },
                None,
            ));
        }
        let mut events = Vec::new();
        for (key, check, figures) in checks {
            if let Some(e) = self.step(now, &key, check) {
                let (queue, kind) = match key.0 {
                    Rule::KindFailing => (None, key.1.clone()),
                    _ => (key.1.clone(), None),
                };
                events.push(Event {
                    message: message(key.0, &key.1, e.0, check, self.cfg.alerts.clear),
                    alert: key.0.name(),
                    queue,
                    kind,
                    state: e.0,
                    value: check.value,
                    threshold: check.threshold,
                    unit: key.0.unit(),
                    since: e.1,
                    at: now,
                    figures: figures.cloned(),
                    severe: key.0.severe(),
                });
            }
        }
        self.prev = Some(s.clone());
        events
    }

    /// Moves one instance on; returns (`firing` | `resolved`, since) when that happened.
    fn step(&mut self, now: u64, key: &Key, c: Check) -> Option<(&'static str, u64)> {
        let clear_for = self.cfg.alerts.clear.as_millis() as u64;
        let hold = key.0.hold().as_millis() as u64;
        let inst = self.rules.entry(key.clone()).or_insert(Instance {
            phase: Phase::Ok,
            value: 0.0,
            threshold: c.threshold,
        });
        inst.value = c.value;
        inst.threshold = c.threshold;
        let (phase, event) = match inst.phase {
            Phase::Ok | Phase::Pending(_) if !c.active => (Phase::Ok, None),
            Phase::Ok | Phase::Pending(_) => {
                let since = match inst.phase {
                    Phase::Pending(s) => s,
                    _ => now,
                };
                if now.saturating_sub(since) >= hold {
                    (
                        Phase::Firing {
                            since: now,
                            clear_since: None,
                        },
                        Some(("firing", now)),
                    )
                } else {
                    (Phase::Pending(since), None)
                }
            }
            Phase::Firing { since, clear_since } => {
                if !c.clear {
                    (
                        Phase::Firing {
                            since,
                            clear_since: None,
                        },
                        None,
                    )
                } else {
                    let cs = clear_since.unwrap_or(now);
                    if now.saturating_sub(cs) >= clear_for {
                        (Phase::Ok, Some(("resolved", since)))
                    } else {
                        (
                            Phase::Firing {
                                since,
                                clear_since: Some(cs),
                            },
                            None,
                        )
                    }
                }
            }
        };
        inst.phase = phase;
        event
    }

    /// Every rule instance and where it stands, firing first.
    pub fn list(&self) -> Vec<AlertInfo> {
        let mut out: Vec<AlertInfo> = self
            .rules
            .iter()
            .map(|((rule, who), inst)| {
                let (state, since) = match inst.phase {
                    Phase::Ok => ("ok", None),
                    Phase::Pending(s) => ("pending", Some(s)),
                    Phase::Firing { since, .. } => ("firing", Some(since)),
                };
                let (queue, kind) = match rule {
                    Rule::KindFailing => (None, who.clone()),
                    _ => (who.clone(), None),
                };
                AlertInfo {
                    alert: rule.name().into(),
                    queue,
                    kind,
                    state: state.into(),
                    since,
                    value: inst.value,
                    threshold: inst.threshold,
                    unit: rule.unit().into(),
                    hold_ms: rule.hold().as_millis() as u64,
                    clear_ms: self.cfg.alerts.clear.as_millis() as u64,
                }
            })
            .collect();
        let rank = |s: &str| match s {
            "firing" => 0,
            "pending" => 1,
            _ => 2,
        };
        out.sort_by(|a, b| {
            (rank(&a.state), a.queue.is_none(), &a.queue, &a.kind).cmp(&(
                rank(&b.state),
                b.queue.is_none(),
                &b.queue,
                &b.kind,
            ))
        });
        out
    }
}

fn flag(on: bool) -> Check {
    Check {
        active: on,
        clear: !on,
        value: f64::from(u8::from(on)),
        threshold: 0.0,
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The upper bound (µs) of the bucket holding quantile `q` of `counts` (bucket i: at most 2^i
/// µs); `None` with fewer than [`FSYNC_MIN`] samples.
fn quantile_upper(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total < FSYNC_MIN {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(1u64 << i);
        }
    }
    Some(1u64 << (counts.len() - 1))
}

fn message(rule: Rule, who: &Option<String>, state: &str, c: Check, clear: Duration) -> String {
    let whose = match (rule, who) {
        (Rule::KindFailing, Some(k)) => format!("kind {k}"),
        (_, Some(q)) => format!("queue {q}"),
        (_, None) => "daemon".into(),
    };
    let ms = |v: f64| format!("{:.1}s", v / 1000.0);
    let what = match rule {
        Rule::Retrying => format!("{} retries/min (threshold {})", c.value, c.threshold as u64),
        Rule::DeadlineMissed => format!("{} job(s) past their deadline", c.value as u64),
        Rule::Slack => format!(
            "the most urgent job's slack is {} (threshold {})",
            ms(c.value),
            ms(c.threshold)
        ),
        Rule::Wait => format!(
            "the most urgent job has waited {} (threshold {})",
            ms(c.value),
            ms(c.threshold)
        ),
        Rule::Stall => format!(
            "jobs are ready but no attempt ended for {} (threshold {})",
            ms(c.value),
            ms(c.threshold)
        ),
        Rule::WalSync => format!(
            "WAL fsync p99 up to {} µs over the last 10 s (threshold {} µs)",
            c.value, c.threshold
        ),
        Rule::CheckpointFailing => "checkpoints fail".into(),
        Rule::CatalogFailing => "the catalog fails".into(),
        Rule::KindFailing => format!("{} failed attempts in a row", c.value as u64),
    };
    match state {
        "firing" => format!("alert {} firing for {whose}: {what}", rule.name()),
        _ => format!(
            "alert {} resolved for {whose}: clear for {:.0} s",
            rule.name(),
            clear.as_secs_f64()
        ),
    }
}

/// What the alert thread shares with `alerts` and `stats`.
#[derive(Default)]
pub struct Shared {
    list: Mutex<Vec<AlertInfo>>,
    /// The command runner's figures.
    pub commands: command::Counters,
}

impl Shared {
    /// The rules and their state, as of the last tick.
    pub fn list(&self) -> Vec<AlertInfo> {
        self.list.lock().expect("alerts").clone()
    }

    /// The figures `stats` shows.
    pub fn report(&self) -> AlertsReport {
        let list = self.list.lock().expect("alerts");
        let mut r = self.commands.report();
        r.firing = list.iter().filter(|a| a.state == "firing").count() as u64;
        r
    }
}

/// The alert thread.
pub struct Alerts {
    /// Shared with readers.
    pub shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the thread reads each tick: the figures and the fsync latency buckets, or `None` once
/// the runtime is gone.
pub type Source = Box<dyn Fn() -> Option<(Stats, Vec<u64>)> + Send>;

/// Starts the thread: a tick a second.
pub fn spawn(cfg: Arc<Config>, shared: Arc<Shared>, source: Source) -> Alerts {
    let stop = Arc::new(AtomicBool::new(false));
    let (sh, st) = (shared.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("duejob-alerts".into())
        .spawn(move || {
            let runner = command::Runner::new(cfg.alerts.clone(), sh.clone());
            let mut ev = Evaluator::new(cfg);
            while !st.load(Ordering::Relaxed) {
                let Some((stats, fsyncs)) = source() else {
                    break;
                };
                for e in ev.tick(crate::clock::now_ms(), &stats, &fsyncs) {
                    if e.severe && e.state == "firing" {
                        log::error!("{}", e.message);
                    } else {
                        log::warn!("{}", e.message);
                    }
                    runner.send(&e);
                }
                *sh.list.lock().expect("alerts") = ev.list();
                // Sleep a second, in steps, so that a stop is quick.
                for _ in 0..10 {
                    if st.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .expect("spawn the alert thread");
    Alerts {
        shared,
        stop,
        thread: Some(thread),
    }
}

impl Alerts {
    /// Stops the thread (a command still running goes on to its timeout on its own thread).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Alerts {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
