//! The command line's errors: what each is called (`code`), its exit code, and a hint for the
//! common mistakes. `docs/cli.md` lists the exit codes; scripts tell the cases apart by them, or
//! by `error.code` in the `--json` envelope.

use std::borrow::Cow;

use duejob::client::ClientError;
use duejob::wire::ErrorCode;

/// Exit codes (`docs/cli.md`).
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// The daemon refused the request, or the command failed (a damaged WAL for `wal verify`,
    /// a job that did not succeed for `submit --wait`).
    pub const FAILED: i32 = 1;
    /// The command line is wrong (clap's own code for usage errors).
    pub const USAGE: i32 = 2;
    /// The job asked about does not exist (`not_found`).
    pub const NOT_FOUND: i32 = 3;
    /// The daemon cannot be reached: not running, wrong socket, no permission, busy, stopping,
    /// or the connection was lost.
    pub const UNREACHABLE: i32 = 4;
}

/// An error of a subcommand.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub exit: i32,
    /// `error.code` in the JSON envelope: the daemon's code, or `usage`, `unreachable`, `io`,
    /// `protocol`, `failed`.
    pub code: Cow<'static, str>,
    /// What went wrong.
    pub message: String,
    /// What to try, for the common mistakes.
    pub hint: Option<String>,
    /// Writing to stdout failed because the reader went away (`duejob jobs | head`): exit
    /// quietly.
    pub broken_pipe: bool,
}

impl CliError {
    fn new(exit: i32, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            code: code.into(),
            message: message.into(),
            hint: None,
            broken_pipe: false,
        }
    }

    /// A mistake on the command line that clap cannot see (`--env` without `=`).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(exit::USAGE, "usage", message)
    }

    /// The command failed (exit 1).
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError::new(exit::FAILED, "failed", message)
    }

    /// With a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// The JSON envelope of this error.
    pub fn envelope(&self) -> serde_json::Value {
        let mut e = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(h) = &self.hint {
            e["hint"] = h.as_str().into();
        }
        serde_json::json!({"ok": false, "error": e})
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for CliError {
    fn from(m: String) -> CliError {
        CliError::failed(m)
    }
}

impl From<&str> for CliError {
    fn from(m: &str) -> CliError {
        CliError::failed(m)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        let mut c = CliError::new(exit::FAILED, "io", e.to_string());
        c.broken_pipe = e.kind() == std::io::ErrorKind::BrokenPipe;
        c
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> CliError {
        // Printing JSON to a closed pipe comes back wrapped in serde_json's error.
        let mut c = CliError::new(exit::FAILED, "io", e.to_string());
        c.broken_pipe = e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe);
        c
    }
}

/// Errors that only fail the command (exit 1), named by their message.
macro_rules! failed_from {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> CliError {
                CliError::failed(e.to_string())
            }
        }
    )*};
}
failed_from!(duejob::Error, duejob::wal::WalError, ctrlc::Error);

impl From<Box<dyn std::error::Error>> for CliError {
    fn from(e: Box<dyn std::error::Error>) -> CliError {
        let e = match e.downcast::<ClientError>() {
            Ok(c) => return CliError::from(*c),
            Err(e) => e,
        };
        match e.downcast::<std::io::Error>() {
            Ok(io) => CliError::from(*io),
            Err(e) => CliError::failed(e.to_string()),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        match e {
            ClientError::Io(io) => unreachable_error(&io),
            ClientError::Server(r) => {
                let exit = match r.code {
                    ErrorCode::NotFound => exit::NOT_FOUND,
                    ErrorCode::Busy | ErrorCode::ShuttingDown => exit::UNREACHABLE,
                    _ => exit::FAILED,
                };
                let code = r.code.to_string();
                let hint = match r.code {
                    ErrorCode::Forbidden => Some(
                        "the daemon's allow_uids does not list your uid: add it to the daemon's \
                         config (docs/deploy.md)",
                    ),
                    ErrorCode::Busy => Some("the daemon is at max_connections: try again"),
                    ErrorCode::ShuttingDown => {
                        Some("the daemon is stopping: try again once it runs")
                    }
                    ErrorCode::CatalogUnavailable => {
                        Some("`duejob stats` shows the catalog's state; `duejob catalog rebuild`")
                    }
                    _ => None,
                };
                // A code this build does not know is named in the message already.
                let c = CliError::new(exit, code, r.message);
                match hint {
                    Some(h) => c.hint(h),
                    None => c,
                }
            }
            ClientError::Protocol(m) => CliError::new(
                exit::FAILED,
                "protocol",
                format!("unexpected reply from the daemon: {m}"),
            )
            .hint("is the daemon the same version as this duejob? (`duejob --version`)"),
            other => CliError::failed(other.to_string()),
        }
    }
}

/// An I/O error talking to the daemon: it cannot be reached, with a hint by cause.
fn unreachable_error(e: &std::io::Error) -> CliError {
    use std::io::ErrorKind::*;
    let hint = match e.kind() {
        NotFound => Some(
            "is the daemon running? Start it with `duejob serve` (its socket is DATA/duejob.sock, \
             ./duejob-data/duejob.sock by default), or point --socket or DUEJOB_SOCKET at the \
             socket of the one that runs",
        ),
        ConnectionRefused => Some(
            "the socket is there but no daemon listens on it: the daemon has stopped; start it \
             with `duejob serve`",
        ),
        PermissionDenied => Some(
            "the socket (mode 0600) belongs to the daemon's user: run as that user, or give the \
             daemon a socket_group you are in (docs/deploy.md)",
        ),
        UnexpectedEof | ConnectionReset | BrokenPipe => {
            Some("the daemon closed the connection: did it stop? (`duejob stats` tells)")
        }
        _ => None,
    };
    let c = CliError::new(exit::UNREACHABLE, "unreachable", e.to_string());
    match hint {
        Some(h) => c.hint(h),
        None => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_exit_code_and_json_code() {
        let io = |k| ClientError::Io(std::io::Error::new(k, "x"));
        let e = CliError::from(io(std::io::ErrorKind::NotFound));
        assert_eq!(
            (e.exit, e.code.as_ref()),
            (exit::UNREACHABLE, "unreachable")
        );
        assert!(e.hint.unwrap().contains("DUEJOB_SOCKET"));
        let e = CliError::from(io(std::io::ErrorKind::PermissionDenied));
        assert!(e.hint.unwrap().contains("socket_group"));
        let r = |code| ClientError::Server(duejob::wire::Rejection::new(code, "m"));
        let e = CliError::from(r(ErrorCode::NotFound));
        assert_eq!((e.exit, e.code.as_ref()), (exit::NOT_FOUND, "not_found"));
        let e = CliError::from(r(ErrorCode::UnknownQueue));
        assert_eq!((e.exit, e.code.as_ref()), (exit::FAILED, "unknown_queue"));
        assert_eq!(
            e.envelope(),
            serde_json::json!({"ok": false, "error": {"code": "unknown_queue", "message": "m"}})
        );
        let e = CliError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(e.broken_pipe);
        let json_err = serde_json::to_writer(Closed, &1).unwrap_err();
        assert!(CliError::from(json_err).broken_pipe);
    }

    struct Closed;
    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
