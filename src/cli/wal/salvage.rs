//! `duejob wal salvage DATA --to DIR [--past-damage]`: the way out of a damaged log.
//!
//! The daemon refuses to start on a log with damage before its tail (it cannot know what the
//! damaged records said, and guessing could run a job twice or drop one). Salvage copies every
//! record that checks out into a new data directory, for the operator to inspect and run on
//! knowingly: `duejob wal verify DIR` and `duejob wal inspect DIR` work on it, `duejob serve
//! --data DIR` runs it. The damaged log is only read.
//!
//! - By default the copy stops at the first damage: it holds every job record up to that point,
//!   in order.
//! - With `--past-damage` it goes on at the next record that checks out (in the damaged segment,
//!   or from the next segment's header) and reports every stretch it skipped. A job whose records
//!   were partly lost is recovered from what remains: a lost `finish` means the job runs again
//!   (at least once), a lost `submit` means its later records are ignored.
//!
//! The copy has LSNs of its own (1, 2, ...: a log has no gaps) and sync marks of its own: the
//! source's marks speak for the source's writes, not the copy's. The copying itself is the
//! library's ([`duejob::wal::salvage`]); this is its command line and its report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::wal_dir;
use crate::cli::CliResult;
use duejob::wal::io::{FileStorage, Storage};
use duejob::wal::reader::{list_segments, OnDamage, Tail};
use duejob::wal::salvage::{copy_log, Salvaged};

/// `wal salvage` arguments.
#[derive(Debug, Args)]
pub struct SalvageArgs {
    /// Data directory whose log is damaged (only read).
    pub data: PathBuf,
    /// New data directory for the copy (must not exist yet, or be empty).
    #[arg(long)]
    pub to: PathBuf,
    /// Go on after damage with the next record that checks out (otherwise the copy stops at the
    /// first damage).
    #[arg(long)]
    pub past_damage: bool,
}

/// `wal salvage`.
pub fn salvage(a: &SalvageArgs) -> CliResult {
    let src = wal_dir(&a.data)?;
    // The damaged data directory is only read: the copy may not go inside it (a directory named
    // like a segment in wal/ would itself be new damage).
    let (data, to) = (resolve(&a.data), resolve(&a.to));
    if to.starts_with(&data) || to.starts_with(resolve(&src)) {
        return Err(format!(
            "--to {} lies inside {}: salvage never writes into the damaged data directory",
            a.to.display(),
            a.data.display()
        )
        .into());
    }
    let dst = prepare_destination(&a.to)?;
    let source = FileStorage::new(&src);
    let out: Arc<dyn Storage> = Arc::new(FileStorage::new(&dst));
    let mode = if a.past_damage {
        OnDamage::NextRecord
    } else {
        OnDamage::Stop
    };
    let Salvaged {
        copied,
        gaps,
        scan,
        problems,
    } = copy_log(&source, out, mode)
        .map_err(|e| format!("writing the copy into {}: {e}", dst.display()))?;

    for p in &problems {
        eprintln!("damage: {p}");
    }
    let total_segments = list_segments(&source).map(|s| s.len()).unwrap_or(0);
    if !problems.is_empty() && !a.past_damage {
        let later = total_segments.saturating_sub(scan.segments.len());
        let rest = match later {
            0 => "the rest of that segment".to_string(),
            n => format!("the rest of that segment and {n} later segment(s)"),
        };
        eprintln!(
            "the copy stops at the first damage: {rest} was not copied; add --past-damage to go \
             on with the next record that checks out"
        );
    }
    for g in &gaps {
        match g.to {
            Some(to) => eprintln!(
                "skipped: LSN {}..{to} ({} record(s)) could not be read",
                g.from,
                to + 1 - g.from
            ),
            None => eprintln!(
                "skipped: from LSN {} on, the log went back to lower LSNs (damaged numbering)",
                g.from
            ),
        }
    }
    if let Some((name, off, reason)) = scan.torn_tail() {
        eprintln!(
            "left out: the incomplete record at the end of {} (offset {off}: {reason}); a write \
             that a crash cut short, never acknowledged",
            src.join(name).display()
        );
    }
    let damaged = scan
        .segments
        .iter()
        .filter(|s| matches!(s.tail, Tail::Damaged { .. }))
        .count();
    let _ = writeln!(
        std::io::stdout(),
        "salvaged {copied} job record(s) from {} into {} (with LSNs and sync marks of its own)",
        src.display(),
        dst.display()
    );
    if problems.is_empty() {
        let _ = writeln!(
            std::io::stdout(),
            "the log had no damage: the copy is complete"
        );
    } else {
        let _ = writeln!(
            std::io::stdout(),
            "{} problem(s) in {damaged} damaged segment(s); check the copy with `duejob wal \
             inspect {}`, then run it with `duejob serve --data {}` (or stop the daemon, move \
             {} aside and move {} in its place)",
            problems.len(),
            a.to.display(),
            a.to.display(),
            src.display(),
            dst.display()
        );
    }
    Ok(())
}

/// `p` made absolute with its existing part resolved (symbolic links included), for telling
/// whether one path lies inside another before the second exists.
fn resolve(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    out
}

/// Creates `DIR/wal` (mode 0700) for the copy; `DIR` must not exist or be empty.
fn prepare_destination(to: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    if to.exists() {
        let mut entries =
            std::fs::read_dir(to).map_err(|e| format!("--to {}: {e}", to.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "--to {} is not empty: salvage writes only into a new or empty directory",
                to.display()
            ));
        }
    }
    let wal = to.join("wal");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&wal)
        .map_err(|e| format!("cannot create {}: {e}", wal.display()))?;
    Ok(wal)
}
