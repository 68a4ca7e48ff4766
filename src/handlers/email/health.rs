//! How the SMTP server is faring, for `stats` ([`crate::handlers::Handler::health`]): atomics on
//! the success path; the mutex only on failure and when `stats` reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::handlers::{JobError, KindHealth};

/// Counters behind [`crate::handlers::Handler::health`].
#[derive(Default)]
pub(super) struct Health {
    succeeded: AtomicU64,
    temporary: AtomicU64,
    permanent: AtomicU64,
    consecutive: AtomicU64,
    last_error: Mutex<Option<(String, u64)>>,
}

impl Health {
    /// Counts an attempt's result, and logs when sending starts failing (then at 2, 4, 8, ...
    /// failures in a row) and when the server (named by `server`, only then) accepts mail again.
    pub(super) fn record(&self, server: impl FnOnce() -> String, id: u64, r: &Result<(), JobError>) {
        match r {
            Ok(()) => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                let was = self.consecutive.swap(0, Ordering::Relaxed);
                if was > 0 {
                    log::info!(
                        "email: SMTP server {} accepts mail again after {was} failed attempts",
                        server()
                    );
                }
            }
            Err(e) => {
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some((e.reason.clone(), crate::job::now_ms()));
                }
                if e.permanent {
                    // A 5xx is about this message: the server is up and answering.
                    self.permanent.fetch_add(1, Ordering::Relaxed);
                    self.consecutive.store(0, Ordering::Relaxed);
                    log::warn!("email job {id}: {}", e.reason);
                } else {
                    self.temporary.fetch_add(1, Ordering::Relaxed);
                    let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        log::error!(
                            "email job {id}: {} ({n} failed attempts in a row)",
                            e.reason
                        );
                    }
                }
            }
        }
    }

    /// The figures `stats` shows.
    pub(super) fn snapshot(&self) -> KindHealth {
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        KindHealth {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            temporary_failures: self.temporary.load(Ordering::Relaxed),
            permanent_failures: self.permanent.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            last_error_at: last.as_ref().map(|l| l.1),
            last_error: last.map(|l| l.0),
        }
    }
}
