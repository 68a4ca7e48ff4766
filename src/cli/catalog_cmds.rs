//! `duejob jobs`, `duejob replay` and `duejob catalog rebuild`: the commands that read the
//! catalog (every job's history within `history_retention`).

use std::io::Write;
use std::path::PathBuf;

use duejob::client::{JobsQuery, ReplaySpec};
use duejob::wire::State;
use duejob::Client;

use super::client_cmds::print_reply;
use super::fmt::{parse_time, time};
use super::{CliError, CliResult, ClientOpts};

/// States given as `dead,cancelled`.
#[derive(Debug, Clone)]
struct States(Vec<State>);

/// Parses `dead,cancelled` into states.
fn parse_states(s: &str) -> Result<States, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            serde_json::from_value(serde_json::Value::String(p.trim().into())).map_err(|_| {
                let names: Vec<String> = State::ALL.iter().map(|s| s.to_string()).collect();
                format!("unknown state {p:?} (known: {})", names.join(", "))
            })
        })
        .collect::<Result<_, _>>()
        .map(States)
}

/// `duejob jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs in these states (comma-separated: succeeded,dead,...).
    #[arg(long, value_parser = parse_states)]
    state: Option<States>,
    /// Only this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Submitted at or after (-2h, now, 2026-01-31T12:00:00Z, 2026-01-31, ms since the epoch).
    #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
    since: Option<u64>,
    /// Submitted before (same forms as --since).
    #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
    until: Option<u64>,
    /// At most this many (1 to 10000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    opts: ClientOpts,
}

pub fn jobs(a: JobsArgs) -> CliResult {
    let mut c = Client::connect(&a.opts.socket)?;
    let list = c.jobs(&JobsQuery {
        queue: a.queue.as_deref().map(Into::into),
        kind: a.kind.as_deref().map(Into::into),
        states: a.state.map(|s| s.0).unwrap_or_default(),
        since: a.since,
        until: a.until,
        limit: Some(a.limit),
    })?;
    if a.opts.json {
        return print_reply(&list);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>10}  {:<24}  {:<14} {:<8} {:<10} {:>8}  last error",
        "id", "submitted", "queue", "kind", "state", "attempts"
    )?;
    for j in &list.jobs {
        let err = j
            .attempts
            .iter()
            .rev()
            .find_map(|a| a.error.as_deref())
            .unwrap_or("-");
        writeln!(
            out,
            "{:>10}  {:<24}  {:<14} {:<8} {:<10} {:>8}  {}",
            j.id,
            time(j.submitted_at),
            j.queue,
            j.kind,
            j.state.to_string(),
            j.attempts.len(),
            err
        )?;
    }
    writeln!(
        out,
        "{} job(s){}",
        list.jobs.len(),
        if list.more {
            " (more match: raise --limit or narrow the window)"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// `duejob replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Window start: jobs submitted at or after (-2h, 2026-01-31T12:00:00Z, ...).
    #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
    since: u64,
    /// Window end: jobs submitted before.
    #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
    until: u64,
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs in these states (comma-separated, e.g. dead or dead,cancelled).
    #[arg(long, value_parser = parse_states)]
    state: Option<States>,
    /// Print what would happen; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    opts: ClientOpts,
}

pub fn replay(a: ReplayArgs) -> CliResult {
    if a.since >= a.until {
        return Err(CliError::usage(format!(
            "--since ({}) must be before --until ({})",
            time(a.since),
            time(a.until)
        )));
    }
    let mut c = Client::connect(&a.opts.socket)?;
    let r = c.replay(&ReplaySpec {
        since: a.since,
        until: a.until,
        queue: a.queue.as_deref().map(Into::into),
        kind: a.kind.as_deref().map(Into::into),
        states: a.state.map(|s| s.0).unwrap_or_default(),
        dry_run: a.dry_run,
    })?;
    if a.opts.json {
        return print_reply(&r);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}jobs submitted {} .. {}: {} selected",
        if r.dry_run {
            "dry run (nothing written): "
        } else {
            ""
        },
        time(a.since),
        time(a.until),
        r.selected
    )?;
    for (q, states) in &r.by_queue {
        let parts: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        writeln!(out, "  {q:<16} {}", parts.join(", "))?;
    }
    let sample = |k: &str| {
        r.samples
            .get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                let ids: Vec<String> = v.iter().map(|i| i.to_string()).collect();
                format!("  (e.g. {})", ids.join(" "))
            })
            .unwrap_or_default()
    };
    writeln!(
        out,
        "{} {}{}",
        if r.dry_run {
            "would enqueue"
        } else {
            "enqueued"
        },
        r.enqueued,
        sample("enqueue")
    )?;
    for (reason, n) in &r.skipped {
        writeln!(out, "skipped {reason}: {n}{}", sample(reason))?;
    }
    if !r.ids.is_empty() {
        let (first, last) = (r.ids[0], r.ids[r.ids.len() - 1]);
        writeln!(out, "new jobs: {first} .. {last}")?;
    }
    Ok(())
}

/// `duejob catalog` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog from the WAL and the archive: through the running daemon, or, when
    /// none answers on the socket, offline in --data.
    Rebuild {
        /// Data directory, for an offline rebuild (no daemon running).
        #[arg(long, default_value = "./duejob-data")]
        data: PathBuf,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

pub fn catalog(cmd: CatalogCommand) -> CliResult {
    let CatalogCommand::Rebuild { data, opts } = cmd;
    let r = match Client::connect(&opts.socket) {
        Ok(mut c) => c.catalog_rebuild()?,
        Err(duejob::client::ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            eprintln!(
                "no daemon answers on {}: rebuilding {} offline",
                opts.socket.display(),
                data.join("catalog").display()
            );
            let r = duejob::catalog::rebuild_offline(&data)?;
            duejob::wire::CatalogRebuilt {
                records: r.records,
                jobs: r.jobs,
                ms: r.ms,
            }
        }
        Err(e) => return Err(e.into()),
    };
    if opts.json {
        return print_reply(&r);
    }
    writeln!(
        std::io::stdout().lock(),
        "catalog rebuilt: {} records, {} jobs in {} ms",
        r.records,
        r.jobs,
        r.ms
    )?;
    Ok(())
}
