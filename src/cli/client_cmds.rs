//! Client subcommands: `submit`, `status`, `stats`, `cancel`, `queue list`.

use std::io::Write;

use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::fmt::{millis, parse_time, time};
use super::{CliError, CliResult, ClientOpts};
use duejob::client::{Client, DeadSelect, Submit};
use duejob::config::parse_duration;
use duejob::wire::State;

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
    /// An environment variable of the exec job, NAME=VALUE (repeatable; on top of the queue's
    /// env; nothing else of this shell's environment goes with the job).
    #[arg(long = "env", value_name = "NAME=VALUE", conflicts_with = "payload")]
    env: Vec<String>,
    /// Working directory of the exec job (a relative one is taken from here).
    #[arg(long, value_name = "DIR", conflicts_with = "payload")]
    cwd: Option<std::path::PathBuf>,
    /// Program and arguments for an exec job (after `--`); a relative program path with a `/`
    /// (`./bill.sh`) is taken from here.
    #[arg(last = true, id = "program")]
    program: Vec<String>,
    #[command(flatten)]
    opts: ClientOpts,
}

fn ms(arg: &Option<String>, name: &str) -> Result<Option<u64>, CliError> {
    arg.as_deref()
        .map(|s| {
            parse_duration(s)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| CliError::usage(format!("--{name}: {e}")))
        })
        .transpose()
}

pub(super) fn print_json(v: &impl Serialize) -> CliResult {
    // Through a Value: keys come out sorted, as the daemon sends them.
    let v = serde_json::to_value(v)?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &v)?;
    writeln!(out)?;
    Ok(())
}

/// Prints a reply as the daemon sent it: `"ok": true` with its fields.
pub(super) fn print_reply(v: &impl Serialize) -> CliResult {
    let mut v = serde_json::to_value(v)?;
    if let Value::Object(m) = &mut v {
        m.insert("ok".into(), true.into());
    }
    print_json(&v)
}

/// The exec payload of `submit -- PROGRAM ARGS`: relative paths made absolute from here (the
/// daemon runs elsewhere).
fn exec_payload(a: &SubmitArgs) -> Result<Value, CliError> {
    let here = || std::env::current_dir().map_err(|e| format!("the current directory: {e}"));
    let mut argv = a.program.clone();
    if argv[0].contains('/') && !std::path::Path::new(&argv[0]).is_absolute() {
        argv[0] = here()?.join(&argv[0]).to_string_lossy().into_owned();
    }
    let mut p = serde_json::json!({ "argv": argv });
    if !a.env.is_empty() {
        let mut env = serde_json::Map::new();
        for kv in &a.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| CliError::usage(format!("--env {kv:?}: expected NAME=VALUE")))?;
            duejob::config::check_env_var(k, v)
                .map_err(|e| CliError::usage(format!("--env: {e}")))?;
            env.insert(k.to_string(), v.into());
        }
        p["env"] = env.into();
    }
    if let Some(cwd) = &a.cwd {
        p["cwd"] = here()?.join(cwd).to_string_lossy().into_owned().into();
    }
    Ok(p)
}

pub fn submit(a: SubmitArgs) -> CliResult {
    let kind = match (&a.kind, a.program.is_empty()) {
        (Some(k), _) => k.clone(),
        (None, false) => "exec".into(),
        (None, true) => {
            return Err(CliError::usage(
                "give --kind, or a program after `--` for an exec job",
            ))
        }
    };
    let payload: Value = match (&a.payload, a.program.is_empty()) {
        (Some(p), _) => serde_json::from_str(p)
            .map_err(|e| CliError::usage(format!("--payload is not valid JSON: {e}")))?,
        (None, false) => exec_payload(&a)?,
        (None, true) if !a.env.is_empty() || a.cwd.is_some() => {
            return Err(CliError::usage(
                "--env and --cwd go with a program after `--`",
            ))
        }
        (None, true) => serde_json::json!({}),
    };
    let mut job = Submit::new(&a.queue, &kind).payload(payload);
    job.key = a.key.clone().map(Into::into);
    job.due_in_ms = ms(&a.due_in, "due-in")?;
    job.delay_ms = ms(&a.delay, "delay")?;
    job.timeout_ms = ms(&a.timeout, "timeout")?;
    job.max_attempts = a.max_attempts;
    let mut c = Client::connect(&a.opts.socket)?;
    let s = c.submit(&job)?;
    if a.opts.json {
        return print_reply(&s);
    }
    let mut out = std::io::stdout().lock();
    if s.duplicate {
        writeln!(out, "{} duplicate", s.id)?;
    } else {
        writeln!(out, "{}", s.id)?;
    }
    Ok(())
}

/// `log` arguments.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Job id.
    id: u64,
    /// This attempt (default: the latest).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    attempt: Option<u32>,
    /// Follow: print output as it comes, through the job's retries, until it ends.
    #[arg(short, long, conflicts_with = "json")]
    follow: bool,
    #[command(flatten)]
    opts: ClientOpts,
}

/// How often `log -f` asks for more.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a cancelled exec job may still write: its kill grace (500 ms) and the output
/// drain (100 ms), with room.
const CANCEL_DRAIN: std::time::Duration = std::time::Duration::from_millis(1000);

pub fn log(a: &LogArgs) -> CliResult {
    let mut c = Client::connect(&a.opts.socket)?;
    let mut attempt = a.attempt;
    let mut offset = 0;
    let mut cancel_drained = false;
    let mut out = std::io::stdout().lock();
    loop {
        let r = c.log(a.id, attempt, offset)?;
        if a.opts.json {
            return print_reply(&r);
        }
        if r.skipped > 0 {
            eprintln!(
                "duejob: ({} earlier bytes of attempt {} are no longer kept)",
                r.skipped,
                r.attempt.unwrap_or(0)
            );
        }
        out.write_all(r.output.as_bytes())?;
        out.flush()?;
        offset = r.next;
        if attempt.is_none() && r.attempt.is_some() {
            attempt = r.attempt;
        }
        if !a.follow {
            // One read holds all that is kept (at most 64 KiB); what comes after is for -f.
            if r.attempt.is_none() {
                eprintln!("duejob: job {} has not started yet ({})", a.id, r.state);
            }
            return Ok(());
        }
        if !r.output.is_empty() {
            continue; // more may be there already
        }
        if r.running {
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        // This attempt has ended and is read to its end: on to the next, if there is one
        // (the job may have ended since, with more attempts than this follower saw).
        if a.attempt.is_some() {
            return Ok(());
        }
        let current = attempt.unwrap_or(0);
        if r.attempts > current {
            attempt = Some(current + 1);
            offset = 0;
            eprintln!("duejob: --- attempt {} ---", current + 1);
            continue;
        }
        if r.state.is_terminal() {
            if r.state == State::Cancelled && !cancel_drained {
                // A cancelled job is terminal at once, while its process gets SIGTERM and
                // up to KILL_GRACE to write its last words: read once more after that.
                cancel_drained = true;
                std::thread::sleep(CANCEL_DRAIN);
                continue;
            }
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

pub fn status(id: u64, opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let j = c.status(id)?;
    if opts.json {
        return print_reply(&serde_json::json!({ "job": j }));
    }
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
    if let Some(k) = &j.key {
        writeln!(out, "  key       {k}")?;
    }
    if let Some(r) = j.replay_of {
        writeln!(out, "  replay of job {r}")?;
    }
    if let Some(n) = j.next_attempt_at {
        writeln!(out, "  next attempt at {}", time(n))?;
    }
    for a in &j.attempts {
        let end = a.ended_at.map(time).unwrap_or_else(|| "-".into());
        let outcome = a
            .outcome
            .map_or_else(|| "running".to_string(), |o| o.to_string());
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
        if let Some(r) = a.retry_at {
            writeln!(out, "    retry at {}", time(r))?;
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

/// The per-queue table of `duejob stats`: what is ready, late, waiting and running, and how it
/// went over the last minute (waits, done/s, retries) and since start-up (misses, totals).
fn write_queue_table(out: &mut dyn Write, s: &duejob::wire::SchedStats) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<14} {:>7} {:>5} {:>6} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>5} {:>6} {:>9} {:>5}",
        "queue",
        "ready",
        "late",
        "sched",
        "retry",
        "running",
        "oldest",
        "slack",
        "wait50",
        "wait99",
        "done/s",
        "rt/m",
        "missed",
        "succeeded",
        "dead"
    )?;
    let dur = |ms: Option<f64>| ms.map_or_else(|| "-".into(), millis);
    for (name, q) in &s.queues {
        let st = |s: State| q.count(s);
        let r = &q.recent;
        let per_min = r.retries as f64 * 60_000.0 / r.window_ms.max(1) as f64;
        writeln!(
            out,
            "{:<14} {:>7} {:>5} {:>6} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7.1} {:>5.0} {:>6} {:>9} {:>5}",
            name,
            st(State::Ready),
            q.late,
            st(State::Scheduled),
            st(State::Retrying),
            format!("{}/{}", st(State::Running), q.max_workers),
            dur(q.oldest_ready_age_ms.map(|v| v as f64)),
            dur(q.slack_ms.map(|v| v as f64)),
            dur((r.wait_ms.count > 0).then_some(r.wait_ms.p50)),
            dur((r.wait_ms.count > 0).then_some(r.wait_ms.p99)),
            r.done_per_s,
            per_min,
            q.deadline_misses,
            st(State::Succeeded),
            st(State::Dead),
        )?;
    }
    let paused: Vec<&str> = s
        .queues
        .iter()
        .filter(|(_, q)| q.paused_until.is_some())
        .map(|(n, _)| n.as_str())
        .collect();
    if !paused.is_empty() {
        writeln!(out, "paused (jobs held ready): {}", paused.join(", "))?;
    }
    writeln!(
        out,
        "(wait50/99, done/s, rt/m (retries a minute): the last {} s; missed: since start-up; succeeded, dead: kept in memory)",
        s.queues.values().next().map_or(60, |q| q.recent.window_ms.div_ceil(1000))
    )
}

pub fn stats(opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let s = c.stats()?;
    if opts.json {
        return print_reply(&s);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "workers {} (busy {}), order {}",
        s.sched.workers, s.sched.busy, s.sched.order
    )?;
    write_queue_table(&mut out, &s.sched)?;
    let w = &s.wal;
    writeln!(
        out,
        "WAL: sync {}, {} segments, {} records, {} bytes, {} fsyncs (p50 ≤{}µs, p99 ≤{}µs), {:.1} records/group",
        w.sync, w.segments, w.records, w.bytes, w.fsyncs, w.fsync_p50_us, w.fsync_p99_us, w.mean_group
    )?;
    let c = &w.checkpoint;
    let last = match c.last_at {
        Some(at) => format!(
            "last at {} (LSN {}, {} bytes, took {} ms)",
            crate::cli::fmt::time(at),
            c.last_lsn,
            c.last_bytes,
            c.last_ms
        ),
        None => "none yet".into(),
    };
    writeln!(
        out,
        "checkpoint: {last}; {} bytes of log since; archive {} segments, {} bytes{}",
        c.bytes_since,
        c.archive_segments,
        c.archive_bytes,
        if c.auto {
            ""
        } else {
            "; automatic checkpoints off"
        }
    )?;
    if c.failures > 0 {
        writeln!(
            out,
            "  checkpoint failures: {}{}",
            c.failures,
            c.last_error
                .as_deref()
                .map(|e| format!(", failing now: {e}"))
                .unwrap_or_default()
        )?;
    }
    if let Some(a) = s.alerts.as_ref().filter(|a| a.firing > 0) {
        writeln!(out, "alerts: {} firing (duejob alerts)", a.firing)?;
    }
    for (kind, h) in &s.kinds {
        let state = match h.consecutive_failures {
            0 => "ok".to_string(),
            n => format!("FAILING ({n} attempts in a row)"),
        };
        writeln!(
            out,
            "{kind}: {state}; {} sent, {} temporary failures, {} permanent",
            h.succeeded, h.temporary_failures, h.permanent_failures
        )?;
        if let (Some(e), Some(at)) = (&h.last_error, h.last_error_at) {
            writeln!(out, "  last error at {}: {e}", crate::cli::fmt::time(at))?;
        }
    }
    Ok(())
}

pub fn cancel(id: u64, opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let reply = c.cancel(id)?;
    if opts.json {
        return print_reply(&reply);
    }
    writeln!(
        std::io::stdout().lock(),
        "{id} cancelled (was {})",
        reply.was
    )?;
    Ok(())
}

/// `wal checkpoint`.
pub fn checkpoint(opts: &ClientOpts) -> CliResult {
    let mut c = Client::connect(&opts.socket)?;
    let r = c.checkpoint()?;
    if opts.json {
        return print_reply(&r);
    }
    writeln!(
        std::io::stdout().lock(),
        "checkpoint through LSN {} (segment {}): {} live jobs, {} keys, {} bytes in {} ms; \
         released {} segments",
        r.lsn,
        r.segment,
        r.jobs,
        r.keys,
        r.bytes,
        r.ms,
        r.released
    )?;
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
                        "reserved": q.reserved, "lend_limit_ms": q.lend_limit_ms,
                        "paused": q.paused_until.is_some(), "paused_until": q.paused_until,
                        "overridden": q.overridden, "states": q.states}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        return print_reply(&serde_json::json!({ "queues": v }));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<16} {:>8} {:>12} {:>9} {:>10} {:>8} {:>8}  live",
        "queue", "due_in", "max_workers", "reserved", "lend_limit", "ready", "running"
    )?;
    for (name, q) in &s.sched.queues {
        let st = |s: State| q.count(s);
        // A `*` marks a setting changed live (`queue set`), which overrides the config file.
        let mark = |field: &str, v: String| match q.overridden.iter().any(|o| o == field) {
            true => format!("{v}*"),
            false => v,
        };
        let live = match q.paused_until {
            Some(duejob::runtime::UNTIL_RESUMED) => "paused".to_string(),
            Some(t) => format!("paused until {}", time(t)),
            None => String::new(),
        };
        writeln!(
            out,
            "{:<16} {:>8} {:>12} {:>9} {:>10} {:>8} {:>8}  {}",
            name,
            mark("due_in", millis(q.due_in_ms as f64)),
            mark("max_workers", q.max_workers.to_string()),
            mark("reserved", q.reserved.to_string()),
            mark("lend_limit", millis(q.lend_limit_ms as f64)),
            st(State::Ready),
            st(State::Running),
            live
        )?;
    }
    if s.sched.queues.values().any(|q| !q.overridden.is_empty()) {
        writeln!(out, "(* changed live with `duejob queue set`: overrides the config file; `queue set Q --reset` puts it back)")?;
    }
    Ok(())
}

/// `dead` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeadCommand {
    /// List dead jobs with their last error, oldest death first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs dead since this time (ms since the epoch, 2026-01-31 or 2026-01-31T12:00:00Z).
        #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
        since: Option<u64>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Put dead jobs back with fresh attempts: one by id, or `--all` (of a `--queue`).
    Retry {
        /// Job id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Every dead job.
        #[arg(long)]
        all: bool,
        /// With --all: only this queue.
        #[arg(long, requires = "all")]
        queue: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Forget dead jobs (their records stay in the WAL): one by id, or all (dead `--before` T).
    Purge {
        /// Job id (default: every dead job).
        #[arg(conflicts_with_all = ["before", "queue"])]
        id: Option<u64>,
        /// Only jobs dead before this time.
        #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
        before: Option<u64>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

pub fn dead(cmd: DeadCommand) -> CliResult {
    match cmd {
        DeadCommand::List { queue, since, opts } => {
            let mut c = Client::connect(&opts.socket)?;
            let jobs = c.dead_list(queue.as_deref(), since)?;
            if opts.json {
                return print_reply(&serde_json::json!({ "jobs": jobs }));
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:>8}  {:<16} {:<8} {:>8}  {:<24}  last error",
                "id", "queue", "kind", "attempts", "died"
            )?;
            for j in &jobs {
                let err = j
                    .attempts
                    .iter()
                    .rev()
                    .find_map(|a| a.error.as_deref())
                    .unwrap_or("-");
                let died = j.finished_at.map(time).unwrap_or_default();
                writeln!(
                    out,
                    "{:>8}  {:<16} {:<8} {:>8}  {:<24}  {}",
                    j.id,
                    j.queue,
                    j.kind,
                    j.attempts.len(),
                    died,
                    err
                )?;
            }
            writeln!(out, "{} dead job(s)", jobs.len())?;
            Ok(())
        }
        DeadCommand::Retry {
            id,
            all,
            queue,
            opts,
        } => {
            let which = match id {
                Some(id) => DeadSelect::one(id),
                None => DeadSelect {
                    all,
                    ..DeadSelect::all(queue.as_deref())
                },
            };
            let mut c = Client::connect(&opts.socket)?;
            ids_reply(&opts, c.dead_retry(&which)?, "put back")
        }
        DeadCommand::Purge {
            id,
            before,
            queue,
            opts,
        } => {
            let which = match id {
                Some(id) => DeadSelect::one(id),
                None => DeadSelect {
                    before,
                    ..DeadSelect::all(queue.as_deref())
                },
            };
            let mut c = Client::connect(&opts.socket)?;
            ids_reply(&opts, c.dead_purge(&which)?, "purged")
        }
    }
}

fn ids_reply(opts: &ClientOpts, ids: Vec<u64>, verb: &str) -> CliResult {
    if opts.json {
        return print_reply(&duejob::wire::Ids { ids });
    }
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    writeln!(
        std::io::stdout().lock(),
        "{} job(s) {verb}: {}",
        ids.len(),
        list.join(" ")
    )?;
    Ok(())
}
