//! Client subcommands: `submit`, `status`, `stats`, `cancel`, `queue list`.

use std::io::Write;

use clap::Args;
use serde_json::Value;

use super::fmt::{millis, time};
use super::{CliResult, ClientOpts};
use crate::client::{Client, Submit};
use crate::config::parse_duration;

/// `submit` arguments.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Queue.
    #[arg(long, short)]
    queue: String,
    /// Kind (`exec` when a program follows `--`).
    #[arg(long, short)]
    kind: Option<String>,
    /// Idempotency key.
    #[arg(long)]
    key: Option<String>,
    /// Deadline after the job becomes ready (e.g. 30s, 5m); default: the queue's due_in.
    #[arg(long)]
    due_in: Option<String>,
    /// Run no earlier than this from now (e.g. 10s).
    #[arg(long)]
    delay: Option<String>,
    /// Attempts allowed.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Per-attempt timeout (e.g. 500ms).
    #[arg(long)]
    timeout: Option<String>,
    /// Payload as JSON.
    #[arg(long, conflicts_with = "program")]
    payload: Option<String>,
    /// Program and arguments for an exec job (after `--`).
    #[arg(last = true, id = "program")]
    program: Vec<String>,
    #[command(flatten)]
    opts: ClientOpts,
}

fn ms(arg: &Option<String>, name: &str) -> Result<Option<u64>, String> {
    arg.as_deref()
        .map(|s| {
            parse_duration(s)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| format!("--{name}: {e}"))
        })
        .transpose()
}

fn print_json(v: &Value) -> CliResult {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn submit(a: SubmitArgs) -> CliResult {
    let kind = match (&a.kind, a.program.is_empty()) {
        (Some(k), _) => k.clone(),
        (None, false) => "exec".into(),
        (None, true) => return Err("give --kind, or a program after `--` for an exec job".into()),
    };
    let payload: Value = match (&a.payload, a.program.is_empty()) {
        (Some(p), _) => {
            serde_json::from_str(p).map_err(|e| format!("--payload is not valid JSON: {e}"))?
        }
        (None, false) => serde_json::json!({ "argv": a.program }),
        (None, true) => serde_json::json!({}),
    };
    let mut job = Submit::new(&a.queue, &kind).payload(payload);
    job.key = a.key.clone();
    job.due_in_ms = ms(&a.due_in, "due-in")?;
    job.delay_ms = ms(&a.delay, "delay")?;
    job.timeout_ms = ms(&a.timeout, "timeout")?;
    job.max_attempts = a.max_attempts;
    let mut c = Client::connect(&a.opts.socket)?;
    let reply = c.request(&job.to_request())?;
    if a.opts.json {
        return print_json(&reply);
    }
    let mut out = std::io::stdout().lock();
    if reply["duplicate"] == Value::Bool(true) {
        writeln!(out, "{} duplicate", reply["id"])?;
    } else {
        writeln!(out, "{}", reply["id"])?;
    }
    Ok(())
}

pub fn status(id: u64, opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let reply = c.request(&serde_json::json!({"op": "status", "id": id}))?;
    if opts.json {
        return print_json(&reply["job"]);
    }
    let j: crate::scheduler::JobInfo = serde_json::from_value(reply["job"].clone())?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "job {}  queue {}  kind {}  state {}",
        j.id, j.queue, j.kind, j.state
    )?;
    writeln!(out, "  submitted {}", time(j.submitted_at))?;
    if let Some(r) = j.run_at {
        writeln!(out, "  run at    {}", time(r))?;
    }
    writeln!(out, "  deadline  {}", time(j.deadline))?;
    for a in &j.attempts {
        let end = a.ended_at.map(time).unwrap_or_else(|| "-".into());
        let outcome = a.outcome.as_deref().unwrap_or("running");
        writeln!(
            out,
            "  attempt {}: {} .. {}  {}",
            a.number,
            time(a.started_at),
            end,
            outcome
        )?;
        if let Some(e) = &a.error {
            writeln!(out, "    error: {e}")?;
        }
        if let Some(t) = &a.output_tail {
            for line in t.lines() {
                writeln!(out, "    | {line}")?;
            }
        }
    }
    if let Some(f) = j.finished_at {
        writeln!(out, "  finished  {}  ({})", time(f), j.state)?;
    }
    Ok(())
}

pub fn stats(opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let reply = c.request(&serde_json::json!({"op": "stats"}))?;
    if opts.json {
        return print_json(&reply);
    }
    let s: crate::runtime::Stats = serde_json::from_value(reply)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "workers {} (busy {}), order {}",
        s.sched.workers, s.sched.busy, s.sched.order
    )?;
    writeln!(
        out,
        "{:<16} {:>8} {:>8} {:>8} {:>10} {:>6} {:>9} {:>9} {:>9} {:>7}",
        "queue",
        "ready",
        "running",
        "sched",
        "succeeded",
        "dead",
        "wait p50",
        "wait p99",
        "slack",
        "missed"
    )?;
    for (name, q) in &s.sched.queues {
        let st = |k: &str| q.states.get(k).copied().unwrap_or(0);
        writeln!(
            out,
            "{:<16} {:>8} {:>8} {:>8} {:>10} {:>6} {:>9} {:>9} {:>9} {:>7}",
            name,
            st("ready"),
            st("running"),
            st("scheduled"),
            st("succeeded"),
            st("dead"),
            millis(q.wait_ms.p50),
            millis(q.wait_ms.p99),
            q.slack_ms
                .map(|s| millis(s as f64))
                .unwrap_or_else(|| "-".into()),
            q.deadline_misses
        )?;
    }
    let w = &s.wal;
    writeln!(
        out,
        "WAL: sync {}, {} segments, {} records, {} bytes, {} fsyncs (p50 ≤{}µs, p99 ≤{}µs), {:.1} records/group",
        w.sync, w.segments, w.records, w.bytes, w.fsyncs, w.fsync_p50_us, w.fsync_p99_us, w.mean_group
    )?;
    Ok(())
}

pub fn cancel(id: u64, opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let reply = c.request(&serde_json::json!({"op": "cancel", "id": id}))?;
    if opts.json {
        return print_json(&reply);
    }
    writeln!(std::io::stdout().lock(), "{id} cancelled")?;
    Ok(())
}

pub fn queue_list(opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let s = c.stats()?;
    if opts.json {
        let v: Value = s
            .sched
            .queues
            .iter()
            .map(|(n, q)| {
                (
                    n.clone(),
                    serde_json::json!({"due_in_ms": q.due_in_ms, "max_workers": q.max_workers,
                        "reserved": q.reserved, "states": q.states}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        return print_json(&v);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<16} {:>8} {:>12} {:>9} {:>8} {:>8}",
        "queue", "due_in", "max_workers", "reserved", "ready", "running"
    )?;
    for (name, q) in &s.sched.queues {
        let st = |k: &str| q.states.get(k).copied().unwrap_or(0);
        writeln!(
            out,
            "{:<16} {:>8} {:>12} {:>9} {:>8} {:>8}",
            name,
            millis(q.due_in_ms as f64),
            q.max_workers,
            q.reserved,
            st("ready"),
            st("running")
        )?;
    }
    Ok(())
}
