//! `duejob wal dump DATA`: every record, one per line (text or JSON), filtered by job or time:
//! the archive's segments first, then the log after the checkpoint. With `--job`, a job the
//! checkpoint holds is shown as it holds it too (its records may be past the archive's
//! retention).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{open_log, read_history};
use crate::cli::fmt::{parse_time, time};
use crate::cli::CliResult;
use duejob::wal::record::Record;

/// `wal dump` arguments.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Data directory.
    data: PathBuf,
    /// Only records of this job.
    #[arg(long)]
    job: Option<u64>,
    /// Only records at or after this time (ms since the epoch, 2026-01-31 or 2026-01-31T12:00:00Z).
    #[arg(long, value_parser = parse_time)]
    since: Option<u64>,
    /// Only records before this time.
    #[arg(long, value_parser = parse_time)]
    until: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DumpLine {
    segment: u64,
    offset: u64,
    lsn: u64,
    #[serde(rename = "type")]
    rtype: &'static str,
    time: u64,
    record: serde_json::Value,
}

fn record_json(r: &Record<'_>) -> serde_json::Value {
    let v = match r {
        Record::Submit(s) => serde_json::to_value(s),
        Record::Start(s) => serde_json::to_value(s),
        Record::Finish(f) => serde_json::to_value(f),
        Record::Cancel(c) => serde_json::to_value(c),
        Record::Retry(r) => serde_json::to_value(r),
        Record::Revive(e) | Record::Purge(e) => serde_json::to_value(e),
        Record::Sync(m) => serde_json::to_value(m),
        Record::Replay(r) => serde_json::to_value(r),
        Record::Queue(q) => serde_json::to_value(q),
    };
    v.unwrap_or(serde_json::Value::Null)
}

/// `wal dump`.
pub fn dump(a: &DumpArgs) -> CliResult {
    let (_, storage) = open_log(&a.data)?;
    let summary = duejob::checkpoint::summary(&storage)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let (Some(id), Some(s)) = (a.job, &summary) {
        if let Some(job) = duejob::checkpoint::job(&storage, id)? {
            if a.json {
                let line = serde_json::json!({"checkpoint": s.covered_lsn, "job": job});
                serde_json::to_writer(&mut out, &line)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "checkpoint through LSN {}: job {id} {}",
                    s.covered_lsn,
                    serde_json::to_string(&job)?
                )?;
            }
        }
    }
    let mut io_err: Option<std::io::Error> = None;
    let scan = read_history(&storage, summary.as_ref(), &mut |r| {
        let t = r.record.time();
        if a.job.is_some_and(|j| Some(j) != r.record.job_id())
            || a.since.is_some_and(|s| t < s)
            || a.until.is_some_and(|u| t >= u)
        {
            return Ok(());
        }
        let res = if a.json {
            let line = DumpLine {
                segment: r.segment,
                offset: r.offset,
                lsn: r.lsn,
                rtype: r.record.type_name(),
                time: t,
                record: record_json(&r.record),
            };
            serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .and_then(|_| writeln!(out))
        } else {
            writeln!(
                out,
                "seg {} off {:>10} lsn {:>10} {} {:<6} {} {}",
                r.segment,
                r.offset,
                r.lsn,
                time(t),
                r.record.type_name(),
                r.record
                    .job_id()
                    .map_or_else(|| "log".to_string(), |id| format!("job {id}")),
                record_json(&r.record)
            )
        };
        if let Err(e) = res {
            io_err.get_or_insert(e);
            // Stop reading: stdout is gone (e.g. a closed pipe).
            return Err(duejob::wal::WalError::Closed);
        }
        Ok(())
    });
    if let Some(e) = io_err {
        return Err(e.into());
    }
    let (_, scan) = scan?;
    out.flush()?;
    if let Some((name, off, reason)) = scan.torn_tail() {
        eprintln!("note: segment {name} ends with an incomplete record at offset {off} ({reason})");
    }
    Ok(())
}
