//! The write-ahead log: the single source of truth of a data directory.
//!
//! Public, for reading a log offline:
//!
//! - [`io`]: the storage seam (real files, or memory with injected faults).
//! - [`record`]: record bodies (bincode 1.3.3).
//! - [`reader`]: the one decoder, shared by recovery and the offline tools.
//! - [`salvage`]: copies what checks out of a damaged log into a new one.
//!
//! Internal (public with the `internals` feature):
//!
//! - `format`: byte layout (documented in `docs/wal-format.md`).
//! - `appender`: appends records to segments, rotates, repairs a torn tail at open.
//! - `commit`: the group-commit thread that owns the appender.
//! - `durable`: the durable point (`wal/durable`), how far the log is known durable.
//! - `keys`: the idempotency-key index, owned by the group-commit thread.
//! - `stats`: the log's counters and fsync latency histogram.

pub mod io;
pub mod reader;
pub mod record;
pub mod salvage;

internal_mods! {
    mod appender;
    mod commit;
    mod durable;
    mod format;
    mod keys;
    mod stats;
}

use std::fmt;
use std::time::Duration;

/// When the WAL makes writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fdatasync every group before acknowledging it (default).
    Always,
    /// Acknowledge after write; fdatasync at most every given interval.
    Batch(Duration),
    /// Acknowledge after write; fdatasync only at segment rotation and shutdown.
    Never,
}

impl SyncMode {
    /// Parses `always`, `batch:MS` or `never`.
    pub fn parse(s: &str) -> Result<SyncMode, String> {
        match s {
            "always" => Ok(SyncMode::Always),
            "never" => Ok(SyncMode::Never),
            _ => {
                let ms = s.strip_prefix("batch:").ok_or_else(|| {
                    format!("unknown sync mode {s:?} (always, batch:MS or never)")
                })?;
                let ms: u64 = ms.parse().map_err(|_| {
                    format!("sync mode {s:?}: MS must be a whole number of milliseconds")
                })?;
                if ms == 0 || ms > 60_000 {
                    return Err(format!("sync mode {s:?}: MS must be between 1 and 60000"));
                }
                Ok(SyncMode::Batch(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncMode::Always => write!(f, "always"),
            SyncMode::Batch(d) => write!(f, "batch:{}", d.as_millis()),
            SyncMode::Never => write!(f, "never"),
        }
    }
}

/// WAL errors. Corruption is its own variant, never folded into I/O.
#[derive(Debug)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O error on a file.
    Io {
        /// File or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Bytes that do not form a valid log.
    Corrupt {
        /// Segment file.
        segment: String,
        /// Byte offset in the segment.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// Written by a newer duejob.
    NewerVersion {
        /// Segment (and offset) concerned.
        segment: String,
        /// What is newer.
        what: String,
    },
    /// An earlier write or sync failed; the WAL accepts nothing until restart.
    Failed(String),
    /// The WAL writer has stopped (shutdown).
    Closed,
}

impl WalError {
    pub(crate) fn io(path: String, source: std::io::Error) -> WalError {
        WalError::Io { path, source }
    }
    pub(crate) fn corrupt(segment: String, offset: u64, detail: String) -> WalError {
        WalError::Corrupt {
            segment,
            offset,
            detail,
        }
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { path, source } => write!(f, "I/O error on {path}: {source}"),
            WalError::Corrupt {
                segment,
                offset,
                detail,
            } => {
                write!(
                    f,
                    "corrupt WAL: segment {segment} at offset {offset}: {detail}"
                )
            }
            WalError::NewerVersion { segment, what } => write!(
                f,
                "WAL {segment} was written by a newer duejob ({what}); upgrade duejob to read it"
            ),
            WalError::Failed(why) => {
                write!(f, "the WAL stopped accepting writes after an I/O failure ({why}); restart the daemon")
            }
            WalError::Closed => write!(f, "the WAL is closed (shutting down)"),
        }
    }
}

/// Messages include their cause (the I/O error's text), so `source()` returns nothing: printing
/// the chain of causes never repeats one.
impl std::error::Error for WalError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_modes_parse() {
        assert_eq!(SyncMode::parse("always"), Ok(SyncMode::Always));
        assert_eq!(
            SyncMode::parse("batch:5"),
            Ok(SyncMode::Batch(Duration::from_millis(5)))
        );
        assert_eq!(SyncMode::parse("never"), Ok(SyncMode::Never));
        assert!(SyncMode::parse("batch:").is_err());
        assert!(SyncMode::parse("batch:0").is_err());
        assert!(SyncMode::parse("sometimes")
            .unwrap_err()
            .contains("unknown sync mode"));
        assert_eq!(SyncMode::parse("batch:20").unwrap().to_string(), "batch:20");
    }
}
