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

use std::path::{Path, PathBuf};

use duejob::wal::io::FileStorage;
use duejob::wal::reader::{verify_log, Tail};

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
    let storage = FileStorage::new(&dir);
    let (scan, problems) = verify_log(&storage);
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
    println!(
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
