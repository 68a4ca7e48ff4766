//! The integration tests, in one test binary (`autotests = false` in Cargo.toml): one module
//! per area, each in its own file beside this one, sharing `common/` (the real `duejob` binary in
//! a temp dir, talked to over its socket). Every test uses its own temp dir and socket, so they
//! run in parallel; `cargo test NAME` picks tests by name as before (e.g. `cargo test crash::`).

mod common;

mod bad_input;
mod catalog;
mod checkpoint;
mod cli;
mod clients;
mod crash;
mod daemon;
mod deploy;
mod email;
mod embedded;
mod exec_containment;
mod exec_env;
mod golden_wal;
mod layering;
mod lifecycle;
mod metrics;
mod model;
mod observe;
mod ordering;
mod output;
mod power_cut;
mod protocol_doc;
mod queue_control;
mod readme;
mod server;
mod top;
mod wal_damage;
mod wal_faults;
