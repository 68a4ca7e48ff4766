//! duejob: a single-binary job runner for one box.
//!
//! Every job is appended to an on-disk write-ahead log and fdatasync'd (group commit) before it is
//! acknowledged or dispatched; a dispatcher thread hands ready jobs to free workers earliest
//! deadline first, within per-queue limits; jobs arrive over a Unix socket (newline-delimited
//! JSON), from the CLI, or in-process.
//!
//! The public API:
//!
//! - [`Runtime`] (built with [`RuntimeBuilder`]; [`Handle`] for other threads): duejob embedded
//!   in a process. Your own job kinds implement [`Handler`].
//! - [`server`]: the Unix-socket daemon around a runtime; [`Client`] talks to one; [`wire`] holds
//!   every request, reply and error code of the protocol (`docs/protocol.md`).
//! - [`config`]: the configuration file's types.
//! - [`wal`]: reading, verifying and salvaging a write-ahead log offline ([`wal::reader`],
//!   [`wal::record`], [`wal::salvage`]), and [`Census`], what a log says about every job.
//!
//! The guarantees the library keeps are in `docs/guarantees.md`; the design in
//! `ARCHITECTURE.md`. The crate's internals (the group commit, the scheduler, recovery, the job
//! state machine) are public only with the `internals` feature, which the crate's own tests and
//! benches use; they are not a stable API.
//!
//! ```no_run
//! use duejob::{JobContext, JobError, JobSpec, Runtime};
//!
//! let rt = Runtime::builder(std::env::temp_dir().join("duejob-doc"))
//!     .register("hello", |ctx: &JobContext<'_>| -> Result<(), JobError> {
//!         println!("job {} says hello", ctx.id);
//!         Ok(())
//!     })
//!     .start()?;
//! rt.submit(&JobSpec::new("notifications", "hello", "{}"))?;
//! rt.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// One `unsafe` block, allowed where it is (`handlers/exec/child.rs`: `pre_exec`, to make exec
// jobs die with the daemon); everything else is safe code.
#![deny(unsafe_code)]
#![deny(missing_docs)]

/// Declares modules that are public with the `internals` feature and private to the crate
/// without it. The tests, benches and examples turn the feature on (the crate is its own
/// dev-dependency with it); the binary and every other user of the library see only the public
/// API.
macro_rules! internal_mods {
    ($($(#[$m:meta])* mod $name:ident;)*) => {$(
        #[cfg(feature = "internals")]
        $(#[$m])* pub mod $name;
        #[cfg(not(feature = "internals"))]
        $(#[$m])* pub(crate) mod $name;
    )*};
}

pub mod alerts;
pub mod catalog;
pub mod checkpoint;
pub mod client;
pub mod config;
pub mod runtime;
pub mod server;
pub mod wal;
pub mod wire;

internal_mods! {
    mod clock;
    mod handlers;
    mod idmap;
    mod job;
    mod recovery;
    mod scheduler;
}
mod datadir;
mod error;
mod fail_stop;
mod replay;

pub use client::Client;
pub use config::Config;
pub use handlers::{Admitted, Handler, JobContext, JobError, StopReason};
pub use job::census::{Census, Counted};
pub use runtime::{Error, Handle, Runtime, RuntimeBuilder};
pub use wire::{JobSpec, Submitted};
