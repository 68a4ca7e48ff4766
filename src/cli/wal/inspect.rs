//! `duejob wal inspect DATA`: the checkpoint, the segments after it (LSN and time ranges, and
//! what keeps each: its records of live jobs, the oldest such job), the archive, records by type,
//! jobs by state and queue. The counts come from the checkpoint and the library's
//! [`duejob::Census`], which applies every record through the daemon's own job state machine:
//! they are what a restart would recover.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::open_log;
use crate::cli::fmt::time;
use crate::cli::CliResult;
use duejob::wal::io::Storage;
use duejob::wal::reader::{list_segments, read_log_after, After, RecordView, Tail};

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
    /// Records about jobs still live (not finished, or dead and not purged).
    live_records: u64,
    /// The oldest live job with a record here.
    oldest_live_job: Option<u64>,
    /// Why the segment is still in `wal/`.
    why: String,
}

#[derive(Debug, Default, Serialize)]
struct CheckpointSummary {
    covered_lsn: u64,
    covered_segment: u64,
    created_at: u64,
    bytes: u64,
    live_jobs: u64,
    finished_jobs: u64,
    keys: u64,
}

#[derive(Debug, Default, Serialize)]
struct ArchiveSummary {
    segments: u64,
    bytes: u64,
    first_segment: Option<u64>,
    last_segment: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
struct Inspection {
    checkpoint: Option<CheckpointSummary>,
    segments: Vec<SegmentSummary>,
    archive: ArchiveSummary,
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
    let (dir, storage) = open_log(data)?;
    let (mut census, summary) = duejob::checkpoint::census(&storage)?;
    let after = summary.as_ref().map_or(After::START, |s| s.after());
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut segs: BTreeMap<u64, SegmentSummary> = BTreeMap::new();
    // (segment, job) of every job record: which segments live jobs keep.
    let mut job_records: Vec<(u64, u64)> = Vec::new();
    let scan = read_log_after(&storage, after, &mut |r: &RecordView<'_>| {
        *by_type.entry(r.record.type_name().into()).or_default() += 1;
        let s = segs.entry(r.segment).or_default();
        s.records += 1;
        s.first_lsn.get_or_insert(r.lsn);
        s.last_lsn = Some(r.lsn);
        let t = r.record.time();
        s.first_time = Some(s.first_time.map_or(t, |f| f.min(t)));
        s.last_time = Some(s.last_time.map_or(t, |l| l.max(t)));
        if let Some(id) = r.record.job_id() {
            job_records.push((r.segment, id));
        }
        census.record(&r.record);
        Ok(())
    })?;
    for (seg, id) in job_records {
        if census.is_live(id) {
            let s = segs.entry(seg).or_default();
            s.live_records += 1;
            s.oldest_live_job = Some(s.oldest_live_job.map_or(id, |o| o.min(id)));
        }
    }
    let mut ins = Inspection {
        checkpoint: summary.as_ref().map(|s| CheckpointSummary {
            covered_lsn: s.covered_lsn,
            covered_segment: s.covered_seq,
            created_at: s.created_at,
            bytes: s.bytes,
            live_jobs: s.jobs,
            finished_jobs: s.done,
            keys: s.keys,
        }),
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
        let current = scan.segments.last().is_some_and(|l| l.seq == seg.seq);
        s.why = match (current, s.live_records, s.oldest_live_job) {
            (true, _, _) => "the current segment (being written)".into(),
            (false, 0, _) => "sealed; no live job's record: released at the next checkpoint".into(),
            (false, n, Some(j)) => format!(
                "sealed; {n} records of live jobs (oldest: job {j}) go into the next checkpoint, \
                 then it is released"
            ),
            (false, n, None) => format!("sealed; {n} records of live jobs"),
        };
        ins.segments.push(s);
    }
    if let Some(a) = storage.archive() {
        if let Ok(list) = list_segments(a.as_ref()) {
            ins.archive.segments = list.len() as u64;
            ins.archive.first_segment = list.first().map(|(s, _)| *s);
            ins.archive.last_segment = list.last().map(|(s, _)| *s);
            ins.archive.bytes = list
                .iter()
                .filter_map(|(_, n)| a.open(n, false).and_then(|f| f.size()).ok())
                .sum();
        }
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
        let mut v = serde_json::to_value(&ins)?;
        v["ok"] = true.into();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "WAL {}", dir.display())?;
    match &ins.checkpoint {
        Some(c) => writeln!(
            out,
            "  checkpoint  through LSN {} (segment {}), taken {}: {} live jobs, {} finished, {} \
             keys, {} bytes",
            c.covered_lsn,
            c.covered_segment,
            time(c.created_at),
            c.live_jobs,
            c.finished_jobs,
            c.keys,
            c.bytes
        )?,
        None => writeln!(out, "  no checkpoint yet: a restart reads every segment")?,
    }
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
        writeln!(out, "      {}", s.why)?;
    }
    let a = &ins.archive;
    match (a.first_segment, a.last_segment) {
        (Some(f), Some(l)) => writeln!(
            out,
            "archive: {} segments ({f}..{l}), {} bytes",
            a.segments, a.bytes
        )?,
        _ => writeln!(out, "archive: empty")?,
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
