//! `duejob wal verify|inspect|dump DATA`: offline, read-only WAL tools.
//!
//! They read through the same reader as recovery ([`crate::wal::reader`]), open every file
//! read-only, stream segment by segment (a 1 GB log is never held in memory), and work while a
//! daemon is appending: a partly written last record is reported as an incomplete tail, not as
//! corruption.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use crate::cli::fmt::{parse_time, time};
use crate::cli::CliResult;
use crate::wal::io::FileStorage;
use crate::wal::reader::{read_log, verify_log, RecordView, Tail};
use crate::wal::record::{state_code, Record};

/// The `wal/` directory of a data directory (or the directory itself if it holds segments).
pub fn wal_dir(data: &Path) -> Result<PathBuf, String> {
    let wal = data.join("wal");
    if wal.is_dir() {
        return Ok(wal);
    }
    if data.is_dir() {
        let has_segments = std::fs::read_dir(data)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            })
            .unwrap_or(false);
        if has_segments {
            return Ok(data.to_path_buf());
        }
    }
    Err(format!(
        "{} holds no WAL (expected {}/wal)",
        data.display(),
        data.display()
    ))
}

/// `wal verify`: prints a summary, every problem (segment and offset) on stderr; returns the exit
/// code: 0 when sound (an incomplete tail is noted, not an error), 1 otherwise.
pub fn verify(data: &Path) -> i32 {
    let dir = match wal_dir(data) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("duejob: error: {e}");
            return 1;
        }
    };
    let storage = FileStorage::new(&dir);
    let (scan, problems) = verify_log(&storage);
    let records: u64 = scan.segments.iter().map(|s| s.records).sum();
    for p in &problems {
        eprintln!("duejob: {p}");
    }
    if let Some((name, off, reason)) = scan.torn_tail() {
        eprintln!(
            "note: segment {} ends with an incomplete record at offset {off} ({reason}): a crash cut it short or a daemon is writing it; recovery truncates it",
            dir.join(name).display()
        );
    }
    let last = scan
        .segments
        .iter()
        .rev()
        .find_map(|s| s.last_lsn)
        .unwrap_or(0);
    println!(
        "{}: {} segments, {} records, last LSN {last}, {} problem(s)",
        dir.display(),
        scan.segments.len(),
        records,
        problems.len()
    );
    if problems.is_empty() {
        0
    } else {
        1
    }
}

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
}

/// Job counts while reading the log. Only live and dead jobs are kept by id (dead ones can be
/// revived); other terminal jobs are just counted, so memory follows the live set, not the log.
#[derive(Default)]
struct Tally {
    live: HashMap<u64, (u16, &'static str)>,
    dead: HashMap<u64, u16>,
    done: BTreeMap<(u16, &'static str), u64>,
}

impl Tally {
    fn set(&mut self, id: u64, state: &'static str) {
        if let Some(e) = self.live.get_mut(&id) {
            e.1 = state;
        }
    }
    fn end(&mut self, id: u64, state: &'static str) {
        if let Some((q, _)) = self.live.remove(&id) {
            *self.done.entry((q, state)).or_default() += 1;
            if state == "dead" {
                self.dead.insert(id, q);
            }
        }
    }
    fn revive(&mut self, id: u64) {
        if let Some(q) = self.dead.remove(&id) {
            *self.done.entry((q, "dead")).or_default() -= 1;
            self.live.insert(id, (q, "ready"));
        }
    }
    fn purge(&mut self, id: u64) {
        if let Some(q) = self.dead.remove(&id) {
            *self.done.entry((q, "dead")).or_default() -= 1;
            *self.done.entry((q, "purged")).or_default() += 1;
        }
    }
}

/// `wal inspect`.
pub fn inspect(data: &Path, json: bool) -> CliResult {
    let dir = wal_dir(data)?;
    let storage = FileStorage::new(&dir);
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut segs: BTreeMap<u64, SegmentSummary> = BTreeMap::new();
    let mut queues: Vec<String> = Vec::new();
    let mut tally = Tally::default();
    let scan = read_log(&storage, &mut |r: &RecordView<'_>| {
        *by_type.entry(r.record.type_name().into()).or_default() += 1;
        let s = segs.entry(r.segment).or_default();
        s.records += 1;
        s.first_lsn.get_or_insert(r.lsn);
        s.last_lsn = Some(r.lsn);
        let t = r.record.time();
        s.first_time = Some(s.first_time.map_or(t, |f| f.min(t)));
        s.last_time = Some(s.last_time.map_or(t, |l| l.max(t)));
        let id = r.record.job_id();
        match &r.record {
            Record::Submit(sub) => {
                let q = match queues.iter().position(|n| *n == *sub.queue) {
                    Some(i) => i,
                    None => {
                        queues.push(sub.queue.to_string());
                        queues.len() - 1
                    }
                };
                tally.live.insert(id, (q as u16, "ready"));
            }
            Record::Start(_) => tally.set(id, "running"),
            Record::Retry(_) => tally.set(id, "retrying"),
            Record::Finish(f) => match f.state {
                state_code::SUCCEEDED => tally.end(id, "succeeded"),
                _ => tally.end(id, "dead"),
            },
            Record::Cancel(_) => tally.end(id, "cancelled"),
            Record::Revive(_) => tally.revive(id),
            Record::Purge(_) => tally.purge(id),
        }
        Ok(())
    })?;
    let mut ins = Inspection {
        records_by_type: by_type,
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
        };
        ins.segments.push(s);
    }
    let mut add = |q: u16, state: &str, n: u64| {
        *ins.jobs_by_state.entry(state.into()).or_default() += n;
        *ins.jobs_by_queue
            .entry(queues[q as usize].clone())
            .or_default()
            .entry(state.into())
            .or_default() += n;
    };
    for (q, state) in tally.live.values() {
        add(*q, state, 1);
    }
    for ((q, state), n) in tally.done {
        if n > 0 {
            add(q, state, n);
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
    Ok(())
}

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
    };
    v.unwrap_or(serde_json::Value::Null)
}

/// `wal dump`.
pub fn dump(a: &DumpArgs) -> CliResult {
    let dir = wal_dir(&a.data)?;
    let storage = FileStorage::new(&dir);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut io_err: Option<std::io::Error> = None;
    let scan = read_log(&storage, &mut |r| {
        let t = r.record.time();
        if a.job.is_some_and(|j| j != r.record.job_id())
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
                "seg {} off {:>10} lsn {:>10} {} {:<6} job {} {}",
                r.segment,
                r.offset,
                r.lsn,
                time(t),
                r.record.type_name(),
                r.record.job_id(),
                record_json(&r.record)
            )
        };
        if let Err(e) = res {
            io_err.get_or_insert(e);
            // Stop reading: stdout is gone (e.g. a closed pipe).
            return Err(crate::wal::WalError::Closed);
        }
        Ok(())
    });
    if let Some(e) = io_err {
        return Err(e.into());
    }
    let scan = scan?;
    out.flush()?;
    if let Some((name, off, reason)) = scan.torn_tail() {
        eprintln!("note: segment {name} ends with an incomplete record at offset {off} ({reason})");
    }
    Ok(())
}
