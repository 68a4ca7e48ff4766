//! `alert_command`: run on each firing and resolve, the alert as one JSON object on stdin.
//!
//! Each run goes on a thread of its own, under `alert_timeout` (then its process group is
//! killed), through the exec kind's runner (its own process group, no shell, killed with the
//! daemon). Never more than one run at a time per rule instance: an event for an instance whose
//! command still runs waits, and a newer one replaces it (the command always learns the latest
//! state). A command that fails or hangs is logged and counted (`stats.alerts`); nothing waits
//! for it but its own thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::{Event, Shared};
use crate::config::AlertConfig;
use crate::wire::AlertsReport;

/// The runner's figures.
#[derive(Default)]
pub struct Counters {
    fired: AtomicU64,
    resolved: AtomicU64,
    runs: AtomicU64,
    failures: AtomicU64,
    superseded: AtomicU64,
    running: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    /// As `stats` shows them (`firing` is filled in by the caller).
    pub fn report(&self) -> AlertsReport {
        AlertsReport {
            firing: 0,
            fired: self.fired.load(Relaxed),
            resolved: self.resolved.load(Relaxed),
            command_runs: self.runs.load(Relaxed),
            command_failures: self.failures.load(Relaxed),
            command_superseded: self.superseded.load(Relaxed),
            command_running: self.running.load(Relaxed),
            last_command_error: self.last_error.lock().expect("alerts").clone(),
        }
    }
}

/// An instance's command: whether one runs, and the event waiting for it.
#[derive(Default)]
struct Slot {
    running: bool,
    waiting: Option<Vec<u8>>,
}

/// Starts the command for each event.
pub struct Runner {
    cfg: AlertConfig,
    shared: Arc<Shared>,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl Runner {
    /// A runner for `cfg.command` (none: events are only counted).
    pub fn new(cfg: AlertConfig, shared: Arc<Shared>) -> Runner {
        Runner {
            cfg,
            shared,
            slots: Arc::default(),
        }
    }

    /// Runs the command for `e` now, or once the instance's previous run has ended.
    pub fn send(&self, e: &Event) {
        let c = &self.shared.commands;
        match e.state {
            "firing" => c.fired.fetch_add(1, Relaxed),
            _ => c.resolved.fetch_add(1, Relaxed),
        };
        let Some(argv) = self.cfg.command.clone() else {
            return;
        };
        let json = match serde_json::to_vec(e) {
            Ok(mut j) => {
                j.push(b'\n');
                j
            }
            Err(err) => {
                log::error!("alert {}: cannot encode it: {err}", e.alert);
                return;
            }
        };
        let key = format!(
            "{}/{}",
            e.alert,
            e.queue.as_deref().or(e.kind.as_deref()).unwrap_or("")
        );
        {
            let mut slots = self.slots.lock().expect("alert slots");
            let slot = slots.entry(key.clone()).or_default();
            if slot.running {
                if slot.waiting.replace(json).is_some() {
                    c.superseded.fetch_add(1, Relaxed);
                }
                return;
            }
            slot.running = true;
        }
        let (slots, shared, timeout) = (self.slots.clone(), self.shared.clone(), self.cfg.timeout);
        let k = key.clone();
        let spawned = std::thread::Builder::new()
            .name("duejob-alert-cmd".into())
            .spawn(move || {
                let mut next = Some(json);
                while let Some(input) = next.take() {
                    run_once(&argv, &input, timeout, &k, &shared.commands);
                    let mut slots = slots.lock().expect("alert slots");
                    let slot = slots.entry(k.clone()).or_default();
                    next = slot.waiting.take();
                    if next.is_none() {
                        slot.running = false;
                    }
                }
            });
        if let Err(err) = spawned {
            log::error!("alert_command: cannot start a thread for it: {err}");
            if let Some(s) = self.slots.lock().expect("alert slots").get_mut(&key) {
                s.running = false;
            }
        }
    }
}

fn run_once(argv: &[String], input: &[u8], timeout: std::time::Duration, key: &str, c: &Counters) {
    c.runs.fetch_add(1, Relaxed);
    c.running.fetch_add(1, Relaxed);
    let r = crate::handlers::exec::run_command(argv, input, timeout);
    c.running.fetch_sub(1, Relaxed);
    match r {
        Ok(()) => log::debug!("alert_command for {key}: done"),
        Err(e) => {
            c.failures.fetch_add(1, Relaxed);
            let msg = format!("{key}: {}", e.reason);
            log::error!(
                "alert_command failed for {key}: {}{}",
                e.reason,
                if e.output_tail.is_empty() {
                    String::new()
                } else {
                    format!("; output: {}", e.output_tail.trim_end())
                }
            );
            *c.last_error.lock().expect("alerts") = Some(msg);
        }
    }
}
