//! Error codes and the refusal that carries one ([`Rejection`]).

use serde::{Deserialize, Serialize};

/// Why a request was refused. The serde names (`"invalid_json"`, ...) are the protocol's, stable:
/// clients match on them (`docs/protocol.md`, "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The line is not JSON.
    InvalidJson,
    /// JSON, but not a valid request (missing field, wrong type, unknown field, bad value).
    BadRequest,
    /// The line is longer than the limit (1 MiB by default).
    LineTooLong,
    /// No such op.
    UnknownOp,
    /// No such queue.
    UnknownQueue,
    /// No such kind.
    UnknownKind,
    /// The payload does not suit the kind.
    InvalidPayload,
    /// No such job.
    NotFound,
    /// The job's state does not allow the operation (cancelling a finished job, retrying a job
    /// that is not dead).
    WrongState,
    /// The WAL failed and the request was not recorded (certainly: safe to repeat once the
    /// daemon runs again); nothing more is accepted until restart.
    WalFailed,
    /// The WAL failed after writing the request, and could not remove it again: it may or may not
    /// be in the log after a restart (the reply's `id` names the job; its `status` tells).
    WalUncertain,
    /// The daemon is stopping.
    ShuttingDown,
    /// The peer's uid is not allowed.
    Forbidden,
    /// Too many connections.
    Busy,
    /// A checkpoint could not be taken (the message says why); the daemon goes on, and retries
    /// automatic checkpoints with a backoff.
    CheckpointFailed,
    /// The catalog is off or failing (the message says which, and how to restore it); jobs are
    /// accepted and run all the same.
    CatalogUnavailable,
    /// A code this build does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::job::serde_name(self, f)
    }
}

/// A refused request: an error code and a message, and for a request the WAL failed on, what of
/// it is in the log all the same. The `ok: false` reply of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable error code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// The job the rejection is about, when the client could not know its id otherwise (a
    /// submit whose fate is uncertain: `status ID` tells after a restart).
    pub id: Option<u64>,
    /// Jobs of a request on many jobs (a batch, `dead retry --all`) for which the request was
    /// recorded before the WAL failed: for them it took effect.
    pub recorded_ids: Option<Vec<u64>>,
}

impl Rejection {
    /// A rejection.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            id: None,
            recorded_ids: None,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_protocol_names_and_unknown_ones_are_kept_apart() {
        assert_eq!(ErrorCode::WalUncertain.to_string(), "wal_uncertain");
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"line_too_long\"").unwrap(),
            ErrorCode::LineTooLong
        );
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"from_the_future\"").unwrap(),
            ErrorCode::Unknown
        );
    }
}
