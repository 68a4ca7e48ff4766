//! [`Error`]: what can stop a runtime (or the daemon) from starting or running.

use std::path::PathBuf;

use crate::wal::WalError;

/// Runtime errors.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Configuration problem.
    Config(String),
    /// I/O on a path.
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    Locked(PathBuf),
    /// The WAL failed or is corrupt.
    Wal(WalError),
    /// The socket cannot be set up (another daemon listens there, the path holds something
    /// else, its group cannot be set).
    Socket(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) => write!(f, "configuration: {m}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Locked(p) => write!(
                f,
                "data directory {} is in use by another duejob process",
                p.display()
            ),
            Error::Wal(e) => write!(f, "{e}"),
            Error::Socket(m) => write!(f, "socket: {m}"),
        }
    }
}

/// Every message is complete in itself (it includes its cause), so `source()` returns nothing: a
/// caller that prints the chain of causes prints each cause once.
impl std::error::Error for Error {}

impl From<WalError> for Error {
    fn from(e: WalError) -> Error {
        Error::Wal(e)
    }
}
