//! duejob: a single-binary job runner for one box.
//!
//! Every job is appended to an on-disk write-ahead log and fdatasync'd (group commit) before it is
//! acknowledged or dispatched; a dispatcher thread hands ready jobs to free workers earliest
//! deadline first, within per-queue limits; jobs arrive over a Unix socket (newline-delimited
//! JSON), from the CLI, or in-process.
//!
//! - [`wal`]: the write-ahead log (format, storage seam, reader, appender, group commit).
//! - [`recovery`]: replays the WAL at start-up.
//! - [`scheduler`]: the dispatcher, the ready set and the workers.
//! - [`handlers`]: job kinds (`noop`, `sleep`, `exec`, and your own).
//! - [`runtime`]: [`Runtime`], duejob embedded in a process.
//! - [`server`] and [`wire`]: the socket daemon and its protocol types.
//! - [`client`]: [`Client`], for talking to a daemon.
//! - [`waltool`]: the offline `wal verify|inspect|dump` tools.
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

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
mod datadir;
pub mod demo;
mod error;
pub mod handlers;
pub mod idmap;
pub mod job;
pub mod recovery;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod wal;
pub mod waltool;
pub mod wire;

pub use client::Client;
pub use config::Config;
pub use handlers::{Handler, JobContext, JobError};
pub use runtime::{Handle, Runtime};
pub use wire::{JobSpec, Submitted};
