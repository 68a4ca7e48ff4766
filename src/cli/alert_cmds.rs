//! Seeing and steering the daemon live: `duejob alerts`, `duejob queue set|pause|resume`.

use std::io::Write;

use clap::Args;

use super::client_cmds::print_reply;
use super::fmt::{millis, time};
use super::{CliError, CliResult, ClientOpts};
use duejob::client::Client;
use duejob::config::parse_duration;
use duejob::wire::{QueueChange, QueueInfo};

/// `duejob alerts`: firing ones first, then those pending or ok.
pub fn alerts(opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let list = c.alerts()?;
    if opts.json {
        return print_reply(&list);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<16} {:<8} {:>12} {:>12}  since",
        "alert", "queue/kind", "state", "value", "threshold"
    )?;
    for a in &list.alerts {
        let fmt = |v: f64| match a.unit.as_str() {
            "ms" => millis(v),
            "µs fsync p99" => millis(v / 1000.0),
            _ => format!("{v}"),
        };
        writeln!(
            out,
            "{:<20} {:<16} {:<8} {:>12} {:>12}  {}",
            a.alert,
            a.queue.as_deref().or(a.kind.as_deref()).unwrap_or("-"),
            a.state,
            fmt(a.value),
            fmt(a.threshold),
            a.since.map(time).unwrap_or_default()
        )?;
    }
    let s = &list.summary;
    writeln!(
        out,
        "{} firing; since start {} fired, {} resolved; alert_command: {} runs, {} failed{}",
        s.firing,
        s.fired,
        s.resolved,
        s.command_runs,
        s.command_failures,
        s.last_command_error
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    )?;
    Ok(())
}

/// `queue set` arguments.
#[derive(Debug, Args)]
pub struct QueueSetArgs {
    /// The queue.
    queue: String,
    /// Deadline of a new job = ready time + this (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    due_in: Option<String>,
    /// Most workers the queue's jobs may occupy at once.
    #[arg(long)]
    max_workers: Option<u64>,
    /// Workers kept for the queue.
    #[arg(long)]
    reserved: Option<u64>,
    /// Idle reserved workers go to other jobs expected to finish within this (e.g. 300ms).
    #[arg(long, value_name = "DURATION")]
    lend_limit: Option<String>,
    /// First put every setting back to the config file's.
    #[arg(long)]
    reset: bool,
    #[command(flatten)]
    opts: ClientOpts,
}

fn ms(s: &Option<String>, what: &str) -> Result<Option<u64>, CliError> {
    s.as_deref()
        .map(|d| {
            parse_duration(d)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| CliError::usage(format!("--{what}: {e}")))
        })
        .transpose()
}

/// `duejob queue set`.
pub fn queue_set(a: &QueueSetArgs) -> CliResult {
    let change = QueueChange {
        queue: a.queue.as_str().into(),
        due_in_ms: ms(&a.due_in, "due-in")?,
        max_workers: a.max_workers,
        reserved: a.reserved,
        lend_limit_ms: ms(&a.lend_limit, "lend-limit")?,
        reset: a.reset,
    };
    let info = Client::connect(&a.opts.socket)?.queue_set(&change)?;
    print_queue(&info, a.opts.json)
}

/// `duejob queue pause`.
pub fn queue_pause(queue: &str, for_: Option<&str>, opts: &ClientOpts) -> CliResult {
    let for_ms = ms(&for_.map(String::from), "for")?;
    let info = Client::connect(&opts.socket)?.queue_pause(queue, for_ms)?;
    print_queue(&info, opts.json)
}

/// `duejob queue resume`.
pub fn queue_resume(queue: &str, opts: &ClientOpts) -> CliResult {
    let info = Client::connect(&opts.socket)?.queue_resume(queue)?;
    print_queue(&info, opts.json)
}

fn print_queue(q: &QueueInfo, json: bool) -> CliResult {
    if json {
        return print_reply(q);
    }
    let paused = match q.paused_until {
        Some(duejob::runtime::UNTIL_RESUMED) => ", paused until resumed".to_string(),
        Some(t) => format!(", paused until {}", time(t)),
        None => String::new(),
    };
    let changed = if q.overridden.is_empty() {
        "none changed from the config file".to_string()
    } else {
        format!("changed from the config file: {}", q.overridden.join(", "))
    };
    let _ = writeln!(
        std::io::stdout(),
        "queue {}: due_in {}, max_workers {}, reserved {}, lend_limit {}{paused} ({changed})",
        q.queue,
        millis(q.due_in_ms as f64),
        q.max_workers,
        q.reserved,
        millis(q.lend_limit_ms as f64)
    );
    Ok(())
}
