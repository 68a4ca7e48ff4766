//! `duejob wal verify|inspect|dump|salvage DATA`: offline WAL tools.
//!
//! They read through the same reader as recovery ([`duejob::wal::reader`]), open every file of
//! the log read-only, stream segment by segment (a 1 GB log is never held in memory), and work
//! while a daemon is appending: a partly written last record is reported as an incomplete tail,
//! not as corruption. `salvage` writes only into a new directory it is given.
//!
//! One file per subcommand: `verify` here, [`mod@inspect`], [`mod@dump`], [`mod@salvage`].

pub mod dump;
pub mod inspect;
pub mod salvage;

use std::io::Write;
use std::path::{Path, PathBuf};

use duejob::checkpoint::Summary;
use duejob::wal::io::{FileStorage, Storage};
use duejob::wal::reader::{
    list_segments, read_log_after, walk_log_after, After, LogScan, OnDamage, RecordView, Tail,
};
use duejob::wal::WalError;

pub use dump::{dump, DumpArgs};
pub use inspect::inspect;
pub use salvage::{salvage, SalvageArgs};

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

/// The log of a data directory, with its archive (or a bare directory of segments, without).
pub fn open_log(data: &Path) -> Result<(PathBuf, FileStorage), String> {
    let dir = wal_dir(data)?;
    let storage = if dir == data.join("wal") {
        FileStorage::data_dir(data)
    } else {
        FileStorage::new(&dir)
    };
    Ok((dir, storage))
}

/// Reads what the data directory holds of its history, in log order: every archived segment,
/// then the log after the checkpoint. Returns the archive's scan (if it has segments) and the
/// log's.
pub fn read_history(
    storage: &FileStorage,
    summary: Option<&Summary>,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> Result<(Option<LogScan>, LogScan), WalError> {
    let archived = match storage.archive() {
        Some(a) if a.list().is_ok() => {
            let segs = list_segments(a.as_ref())?;
            match segs.first() {
                Some((first, _)) => {
                    let (scan, mut problems) = walk_log_after(
                        a.as_ref(),
                        After::from_segment(*first),
                        OnDamage::Stop,
                        visit,
                    );
                    if !problems.is_empty() {
                        return Err(problems.swap_remove(0));
                    }
                    Some(scan)
                }
                None => None,
            }
        }
        _ => None,
    };
    let after = summary.map_or(After::START, Summary::after);
    let scan = read_log_after(storage, after, visit)?;
    Ok((archived, scan))
}

/// `wal verify`: prints a summary on stdout, every problem (segment and offset) and what was
/// read before it on stderr; returns the exit code: 0 when sound (an incomplete tail is noted, not
/// an error), 1 otherwise.
pub fn verify(data: &Path) -> i32 {
    let dir = match wal_dir(data) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("duejob: error: {e}");
            return 1;
        }
    };
    let storage = match open_log(data) {
        Ok((_, s)) => s,
        Err(e) => {
            eprintln!("duejob: error: {e}");
            return 1;
        }
    };
    let mut problems = Vec::new();
    let summary = match duejob::checkpoint::summary(&storage) {
        Ok(s) => s,
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let after = summary.as_ref().map_or(After::START, Summary::after);
    let (scan, more) = walk_log_after(&storage, after, OnDamage::NextSegment, &mut |_| Ok(()));
    problems.extend(more);
    let mut archived = (0, 0);
    if let Some(a) = storage.archive() {
        if let Ok(segs) = list_segments(a.as_ref()) {
            if let Some((first, _)) = segs.first() {
                let (ascan, aproblems) = walk_log_after(
                    a.as_ref(),
                    After::from_segment(*first),
                    OnDamage::NextSegment,
                    &mut |_| Ok(()),
                );
                archived = (ascan.segments.len(), ascan.records());
                problems.extend(aproblems);
            }
        }
    }
    if let Some(s) = &summary {
        let _ =
            writeln!(std::io::stdout(),
            "checkpoint: through LSN {} (segment {}): {} live jobs, {} finished, {} keys, {} bytes",
            s.covered_lsn, s.covered_seq, s.jobs, s.done, s.keys, s.bytes
        );
    }
    if archived.0 > 0 {
        let _ = writeln!(
            std::io::stdout(),
            "archive: {} segments, {} records",
            archived.0,
            archived.1
        );
    }
    for p in &problems {
        eprintln!("duejob: {p}");
    }
    for s in &scan.segments {
        if let Tail::Damaged { offset } = s.tail {
            let lsns = match (s.records, s.last_lsn) {
                (0, _) | (_, None) => String::new(),
                (_, Some(l)) => format!(" (LSN {}..{l})", l + 1 - s.records),
            };
            eprintln!(
                "  segment {}: {} sound record(s) before the damage at offset {offset}{lsns}",
                dir.join(&s.name).display(),
                s.records
            );
        }
    }
    if let Some((name, off, reason)) = scan.torn_tail() {
        eprintln!(
            "note: segment {} ends with an incomplete record at offset {off} ({reason}): a crash cut it short or a daemon is writing it; recovery truncates it",
            dir.join(name).display()
        );
    }
    let last = scan.last_lsn().unwrap_or(0);
    let _ = writeln!(
        std::io::stdout(),
        "{}: {} segments, {} records, last LSN {last}, {} problem(s)",
        dir.display(),
        scan.segments.len(),
        scan.records(),
        problems.len()
    );
    if problems.is_empty() {
        0
    } else {
        eprintln!(
            "the daemon will not start on this log; `duejob wal salvage {} --to NEWDIR` copies \
             every record that checks out (add --past-damage to go on after the damage)",
            data.display()
        );
        1
    }
}
