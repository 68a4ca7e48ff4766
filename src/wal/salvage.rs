//! Salvage: copies every record of a damaged log that checks out into a new log, the way out
//! when the daemon refuses to start on damage before the tail (`duejob wal salvage`).
//!
//! - By default the copy stops at the first damage: it holds every job record up to that point,
//!   in order.
//! - Past damage ([`OnDamage::NextRecord`]) it goes on at the next record that checks out (in the
//!   damaged segment, or from the next segment's header) and reports every stretch it skipped. A
//!   job whose records were partly lost is recovered from what remains: a lost `finish` means the
//!   job runs again (at least once), a lost `submit` means its later records are ignored.
//!
//! The copy has LSNs of its own (1, 2, ...: a log has no gaps) and sync marks of its own: the
//! source's marks speak for the source's writes, not the copy's. It ends with a sync mark and a
//! durable point of its own, so it is a complete, durable log that recovery accepts.

use std::sync::Arc;

use super::appender::{Appender, DEFAULT_SEGMENT_SIZE};
use super::io::Storage;
use super::reader::{read_log, walk_log, LogScan, OnDamage};
use super::record::{Record, SCHEMA};
use super::WalError;

/// A stretch of LSNs the copy does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// First missing LSN.
    pub from: u64,
    /// Last missing LSN (inclusive); `None` when the next record read had a lower LSN (damaged
    /// numbering).
    pub to: Option<u64>,
}

/// What a salvage copied and what it found.
#[derive(Debug)]
pub struct Salvaged {
    /// Job records copied (sync marks are not copied).
    pub copied: u64,
    /// Stretches of the source's LSNs that were not read.
    pub gaps: Vec<Gap>,
    /// The source as read.
    pub scan: LogScan,
    /// Every damage found in the source.
    pub problems: Vec<WalError>,
}

/// Copies every record of `source` that checks out into `out`, which must hold no log yet.
/// `on_damage` says whether the copy stops at the first damage or goes on after it. An error is
/// about writing the copy; damage in the source is reported in [`Salvaged::problems`].
pub fn copy_log(
    source: &dyn Storage,
    out: Arc<dyn Storage>,
    on_damage: OnDamage,
) -> Result<Salvaged, WalError> {
    let empty = read_log(out.as_ref(), &mut |_| Ok(()))?;
    let mut app = Appender::open(out.clone(), &empty, DEFAULT_SEGMENT_SIZE, Arc::default())?;
    let mut copied = 0u64;
    let mut prev: Option<u64> = None;
    let mut gaps: Vec<Gap> = Vec::new();
    let mut write_error: Option<WalError> = None;
    let mut body = Vec::new();
    let (scan, problems) = walk_log(source, on_damage, &mut |r| {
        match prev {
            Some(p) if r.lsn > p + 1 => gaps.push(Gap {
                from: p + 1,
                to: Some(r.lsn - 1),
            }),
            Some(p) if r.lsn <= p => gaps.push(Gap {
                from: p + 1,
                to: None,
            }),
            _ => {}
        }
        prev = Some(r.lsn);
        if matches!(r.record, Record::Sync(_)) {
            return Ok(()); // it speaks for the source's writes; the copy gets marks of its own
        }
        body.clear();
        r.record.encode_into(&mut body);
        let pushed = app.push(r.record.rtype(), SCHEMA, &body).and_then(|_| {
            copied += 1;
            if copied % 1024 == 0 {
                app.write()
            } else {
                Ok(())
            }
        });
        pushed.map_err(|e| {
            write_error = Some(e);
            WalError::Closed // stops the walk; the real error is in write_error
        })
    });
    if let Some(e) = write_error {
        return Err(e);
    }
    app.write()?;
    app.sync()?;
    // A last sync mark, and the copy's own durable point: the copy is complete and durable.
    app.push_mark(crate::clock::now_ms())?;
    app.write()?;
    app.sync()?;
    super::durable::Writer::new(out).write(app.durable_lsn(), true)?;
    Ok(Salvaged {
        copied,
        gaps,
        scan,
        problems,
    })
}
