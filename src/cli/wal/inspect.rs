//! `duejob wal inspect DATA`: segments, LSN and time ranges, records by type, jobs by state and
//! queue. The counts come from the library's [`duejob::Census`], which applies every record
//! through the daemon's own job state machine: they are what a restart would recover.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::wal_dir;
use crate::cli::fmt::time;
use crate::cli::CliResult;
use duejob::wal::io::FileStorage;
use duejob::wal::reader::{read_log, RecordView, Tail};
use duejob::Census;

#[derive(Debug, Default, Serialize)]
struct SegmentSummary {
    name: String,
    records: u64,
    first_lsn: Option<u64>,
    last_lsn: Option<u64>,
    first_time: Option<u64>,
    last_time: Option<u64>,
    bytes_used: u64,
    file_len: u64,
    tail: String,
}

#[derive(Debug, Default, Serialize)]
struct Inspection {
    segments: Vec<SegmentSummary>,
    records_by_type: BTreeMap<String, u64>,
    jobs_by_state: BTreeMap<String, u64>,
    jobs_by_queue: BTreeMap<String, BTreeMap<String, u64>>,
    /// Records about a job still open or dead that the daemon ignores too (a `finish` for an
    /// attempt that is not the current one, a second `submit`). Records about jobs that ended or
    /// were never submitted are skipped without a count, as recovery skips them.
    stale_records: u64,
}

/// `wal inspect`.
pub fn inspect(data: &Path, json: bool) -> CliResult {
    let dir = wal_dir(data)?;
    let storage = FileStorage::new(&dir);
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut segs: BTreeMap<u64, SegmentSummary> = BTreeMap::new();
    let mut census = Census::new();
    let scan = read_log(&storage, &mut |r: &RecordView<'_>| {
        *by_type.entry(r.record.type_name().into()).or_default() += 1;
        let s = segs.entry(r.segment).or_default();
        s.records += 1;
        s.first_lsn.get_or_insert(r.lsn);
        s.last_lsn = Some(r.lsn);
        let t = r.record.time();
        s.first_time = Some(s.first_time.map_or(t, |f| f.min(t)));
        s.last_time = Some(s.last_time.map_or(t, |l| l.max(t)));
        census.record(&r.record);
        Ok(())
    })?;
    let mut ins = Inspection {
        records_by_type: by_type,
        stale_records: census.stale_records(),
        ..Default::default()
    };
    for seg in &scan.segments {
        let mut s = segs.remove(&seg.seq).unwrap_or_default();
        s.name = seg.name.clone();
        s.bytes_used = seg.end;
        s.file_len = seg.file_len;
        s.tail = match &seg.tail {
            Tail::Clean => "clean".into(),
            Tail::Torn { offset, reason } => {
                format!("incomplete record at offset {offset}: {reason}")
            }
            Tail::EmptySegment => "header not yet written".into(),
            Tail::Damaged { offset } => format!("damaged at offset {offset}"),
        };
        ins.segments.push(s);
    }
    for (queue, states) in census.by_queue() {
        let counts = ins.jobs_by_queue.entry(queue).or_default();
        for (state, n) in states {
            *counts.entry(state.to_string()).or_default() += n;
            *ins.jobs_by_state.entry(state.to_string()).or_default() += n;
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &ins)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "WAL {}", dir.display())?;
    for s in &ins.segments {
        let lsns = match (s.first_lsn, s.last_lsn) {
            (Some(a), Some(b)) => format!("LSN {a}..{b}"),
            _ => "no records".into(),
        };
        let times = match (s.first_time, s.last_time) {
            (Some(a), Some(b)) => format!("{} .. {}", time(a), time(b)),
            _ => String::new(),
        };
        writeln!(
            out,
            "  {}  {} records  {lsns}  {times}  {}/{} bytes  tail {}",
            s.name, s.records, s.bytes_used, s.file_len, s.tail
        )?;
    }
    writeln!(out, "records by type:")?;
    for (t, n) in &ins.records_by_type {
        writeln!(out, "  {t:<8} {n}")?;
    }
    writeln!(out, "jobs by state:")?;
    for (st, n) in &ins.jobs_by_state {
        writeln!(out, "  {st:<10} {n}")?;
    }
    writeln!(out, "jobs by queue:")?;
    for (q, states) in &ins.jobs_by_queue {
        let parts: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        writeln!(out, "  {q:<16} {}", parts.join(", "))?;
    }
    if ins.stale_records > 0 {
        writeln!(
            out,
            "stale records (ignored, as recovery ignores them): {}",
            ins.stale_records
        )?;
    }
    Ok(())
}
