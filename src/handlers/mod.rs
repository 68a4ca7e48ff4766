//! Job kinds: the [`Handler`] trait, the registry of kinds, and the built-in kinds
//! (`noop`, `sleep`, [`exec`], [`email`]).
//!
//! A handler validates a payload at submit time (so a bad payload is rejected before it is
//! acknowledged) and runs a job on a worker thread.

pub mod email;
pub mod exec;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::wire::KindHealth;
use serde::Deserialize;

/// Why a running attempt is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The attempt passed its timeout.
    TimedOut,
    /// The job was cancelled.
    Cancelled,
}

/// Tells a running attempt to stop. One per worker, reused for every attempt it runs: the word
/// holds the attempt's serial number and a reason, so a stop meant for an earlier attempt can
/// never reach a later one. The dispatcher raises it; the handler checks it.
#[derive(Debug, Default)]
pub struct StopSignal {
    word: AtomicU64,
}

impl StopSignal {
    /// A signal not yet armed.
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    /// Arms the signal for attempt `serial` (before the attempt starts).
    pub fn arm(&self, serial: u64) {
        self.word.store(serial << 2, Ordering::Release);
    }

    /// Asks attempt `serial` to stop; false if another attempt runs by now.
    pub fn raise(&self, serial: u64, why: StopReason) -> bool {
        let code = match why {
            StopReason::TimedOut => 1,
            StopReason::Cancelled => 2,
        };
        self.word
            .compare_exchange(
                serial << 2,
                (serial << 2) | code,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Whether attempt `serial` was asked to stop, and why.
    pub fn check(&self, serial: u64) -> Option<StopReason> {
        let w = self.word.load(Ordering::Acquire);
        if w >> 2 != serial {
            return None;
        }
        match w & 3 {
            1 => Some(StopReason::TimedOut),
            2 => Some(StopReason::Cancelled),
            _ => None,
        }
    }
}

/// What a handler gets to run one attempt.
#[derive(Debug)]
pub struct JobContext<'a> {
    /// Job id.
    pub id: u64,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Queue name.
    pub queue: &'a str,
    /// JSON payload text.
    pub payload: &'a str,
    /// Per-attempt timeout, if any.
    pub timeout: Option<Duration>,
    /// The job this one replays (`duejob replay`), if it is a replay.
    pub replay_of: Option<u64>,
    /// The stop signal of this attempt (see [`JobContext::should_stop`]).
    pub(crate) stop: &'a StopSignal,
    /// This attempt's serial number for `stop`.
    pub(crate) serial: u64,
}

/// The stop signal of a [`JobContext`] built by [`JobContext::new`]: never raised.
static NEVER: StopSignal = StopSignal {
    word: AtomicU64::new(0),
};

impl<'a> JobContext<'a> {
    /// A context for running a handler outside the runtime (its unit tests, say): attempt
    /// `attempt` of job `id`, with a stop signal that is never raised.
    pub fn new(id: u64, attempt: u32, queue: &'a str, payload: &'a str) -> JobContext<'a> {
        JobContext {
            id,
            attempt,
            queue,
            payload,
            timeout: None,
            replay_of: None,
            stop: &NEVER,
            serial: 0,
        }
    }

    /// `Some(reason)` once the attempt has timed out or the job was cancelled: a long-running
    /// handler should check this and return early. Whatever it returns then, the attempt counts as
    /// timed out (or the job stays cancelled).
    pub fn should_stop(&self) -> Option<StopReason> {
        self.stop.check(self.serial)
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// Human-readable reason.
    pub reason: String,
    /// Exit code (exec jobs).
    pub exit_code: Option<i32>,
    /// Last bytes of output.
    pub output_tail: String,
    /// Retrying cannot help (an SMTP server's 5xx rejection, say): the job ends `dead` at once,
    /// whatever attempts it has left.
    pub permanent: bool,
}

impl JobError {
    /// A failure with just a reason; the job is retried while it has attempts left.
    pub fn new(reason: impl Into<String>) -> JobError {
        JobError {
            reason: reason.into(),
            exit_code: None,
            output_tail: String::new(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot mend: the job ends `dead` now.
    pub fn permanent(reason: impl Into<String>) -> JobError {
        JobError {
            permanent: true,
            ..JobError::new(reason)
        }
    }
}

/// What a kind makes of a payload at submit time, beyond accepting it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// The payload to store instead of the one submitted (completed, e.g. with a generated
    /// Message-ID, so that every attempt and every replay sends the same thing).
    pub payload: Option<String>,
    /// The job's idempotency key when the submit gives none (an email's Message-ID).
    pub default_key: Option<String>,
}

impl From<String> for JobError {
    fn from(reason: String) -> JobError {
        JobError::new(reason)
    }
}

impl From<&str> for JobError {
    fn from(reason: &str) -> JobError {
        JobError::new(reason)
    }
}

/// A job kind.
pub trait Handler: Send + Sync + 'static {
    /// Checks a payload at submit time; the error text goes back to the client.
    fn validate(&self, _payload: &str) -> Result<(), String> {
        Ok(())
    }
    /// Checks a payload at submit time and may complete it (see [`Admitted`]). The default
    /// calls [`Handler::validate`] and keeps the payload as it is.
    fn admit(&self, payload: &str) -> Result<Admitted, String> {
        self.validate(payload).map(|()| Admitted::default())
    }
    /// [`Handler::admit`] for a job of `queue` (`exec` puts the queue's `env` and `cwd` under
    /// the payload). The default ignores the queue.
    fn admit_in(&self, _queue: &str, payload: &str) -> Result<Admitted, String> {
        self.admit(payload)
    }
    /// How the outside service this kind depends on is faring, if it has one.
    fn health(&self) -> Option<KindHealth> {
        None
    }
    /// Called once when the runtime starts, after recovery and before any job runs, with the
    /// data directory (`None` when the runtime has none: custom storage). A kind may keep state
    /// under it and clean up after a daemon that died (`exec` kills the process groups it left
    /// running). An error stops the start.
    fn start(&self, _data_dir: Option<&std::path::Path>) -> Result<(), String> {
        Ok(())
    }
    /// Runs one attempt. A panic counts as a failed attempt; the worker survives.
    fn run(&self, ctx: &JobContext<'_>) -> Result<(), JobError>;
    /// Called when the daemon stops while attempts of this kind still run after the grace
    /// period: end them now (`exec` kills their process groups). They run again after restart.
    fn abort_running(&self) {}
}

impl<F> Handler for F
where
    F: Fn(&JobContext<'_>) -> Result<(), JobError> + Send + Sync + 'static,
{
    fn run(&self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        self(ctx)
    }
}

/// Registered kinds, by index (the index is what jobs carry in memory).
#[derive(Clone, Default)]
pub struct Kinds {
    names: Vec<String>,
    handlers: Vec<Arc<dyn Handler>>,
}

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.names).finish()
    }
}

impl Kinds {
    /// No kinds.
    pub fn empty() -> Kinds {
        Kinds::default()
    }

    /// The built-in kinds: `noop`, `sleep`, `exec`, and `email` (which refuses jobs until an SMTP
    /// server is configured: [`Kinds::configure_email`]).
    pub fn builtin() -> Kinds {
        let mut k = Kinds::empty();
        k.register("noop", Arc::new(Noop));
        k.register("sleep", Arc::new(Sleep));
        k.register("exec", Arc::new(exec::Exec::default()));
        k.register("email", Arc::new(email::Email::unconfigured()));
        k
    }

    /// Gives the built-in `exec` kind the queues' `env`, `env_file` and `cwd`, and its output
    /// budget.
    pub fn configure_exec(&mut self, cfg: &crate::config::Config) {
        self.register("exec", Arc::new(exec::Exec::configured(cfg)));
    }

    /// Points the built-in `email` kind at an SMTP server.
    pub fn configure_email(&mut self, smtp: &crate::config::SmtpConfig) -> Result<(), String> {
        self.register("email", Arc::new(email::Email::new(smtp)?));
        Ok(())
    }

    /// Health of every kind that reports one, by name.
    pub fn health(&self) -> std::collections::BTreeMap<String, KindHealth> {
        self.names
            .iter()
            .zip(&self.handlers)
            .filter_map(|(n, h)| Some((n.clone(), h.health()?)))
            .collect()
    }

    /// Adds or replaces a kind.
    pub fn register(&mut self, name: &str, handler: Arc<dyn Handler>) {
        match self.id(name) {
            Some(i) => self.handlers[i as usize] = handler,
            None => {
                self.names.push(name.to_string());
                self.handlers.push(handler);
            }
        }
    }

    /// Kind index by name.
    pub fn id(&self, name: &str) -> Option<u16> {
        self.names.iter().position(|n| n == name).map(|i| i as u16)
    }

    /// Name of a kind index.
    pub fn name(&self, id: u16) -> &str {
        &self.names[id as usize]
    }

    /// Handler of a kind index.
    pub fn handler(&self, id: u16) -> &Arc<dyn Handler> {
        &self.handlers[id as usize]
    }

    /// Calls every kind's [`Handler::start`].
    pub fn start(&self, data_dir: Option<&std::path::Path>) -> Result<(), String> {
        self.handlers.iter().try_for_each(|h| h.start(data_dir))
    }

    /// Tells every kind to end its running attempts (shutdown after the grace period).
    pub fn abort_running(&self) {
        for h in &self.handlers {
            h.abort_running();
        }
    }

    /// All names, in index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// `noop`: succeeds at once (benchmarks).
struct Noop;

impl Handler for Noop {
    fn run(&self, _: &JobContext<'_>) -> Result<(), JobError> {
        Ok(())
    }
}

/// `sleep`: payload `{"ms": N}`, sleeps N ms (demos and benchmarks).
struct Sleep;

/// Longest `sleep` job.
const MAX_SLEEP_MS: u64 = 24 * 3_600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    ms: u64,
}

fn sleep_ms(payload: &str) -> Result<u64, String> {
    let p: SleepPayload =
        serde_json::from_str(payload).map_err(|e| format!("sleep payload: {e}"))?;
    if p.ms > MAX_SLEEP_MS {
        return Err(format!("sleep payload: ms must be at most {MAX_SLEEP_MS}"));
    }
    Ok(p.ms)
}

impl Handler for Sleep {
    fn validate(&self, payload: &str) -> Result<(), String> {
        sleep_ms(payload).map(|_| ())
    }
    fn run(&self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        // Sleeps in slices, so that a timeout or a cancel ends it within 10 ms.
        let until = std::time::Instant::now() + Duration::from_millis(sleep_ms(ctx.payload)?);
        loop {
            if let Some(why) = ctx.should_stop() {
                return Err(JobError::new(match why {
                    StopReason::TimedOut => "stopped at its timeout",
                    StopReason::Cancelled => "stopped: cancelled",
                }));
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_payloads() {
        assert_eq!(sleep_ms(r#"{"ms":5}"#), Ok(5));
        assert!(sleep_ms(r#"{"ms":-5}"#).is_err());
        assert!(sleep_ms(r#"{"ms":"5"}"#).is_err());
        assert!(sleep_ms(r#"{"ms":5,"x":1}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(sleep_ms(r#"{"ms":999999999999}"#)
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn stop_signals_reach_only_their_attempt() {
        let s = StopSignal::new();
        s.arm(7);
        assert_eq!(s.check(7), None);
        assert!(s.raise(7, StopReason::TimedOut));
        assert_eq!(s.check(7), Some(StopReason::TimedOut));
        assert!(!s.raise(7, StopReason::Cancelled), "first reason wins");
        s.arm(8);
        assert_eq!(s.check(7), None);
        assert!(
            !s.raise(7, StopReason::Cancelled),
            "a stale stop does not reach attempt 8"
        );
        assert_eq!(s.check(8), None);
    }

    #[test]
    fn registry_by_name_and_index() {
        let mut k = Kinds::builtin();
        assert_eq!(k.id("exec"), Some(2));
        assert_eq!(k.name(1), "sleep");
        k.register(
            "mine",
            Arc::new(|_: &JobContext<'_>| -> Result<(), JobError> { Err("no".into()) }),
        );
        let id = k.id("mine").unwrap();
        let stop = StopSignal::new();
        let ctx = JobContext {
            id: 1,
            attempt: 1,
            queue: "q",
            payload: "{}",
            timeout: None,
            replay_of: None,
            stop: &stop,
            serial: 1,
        };
        assert_eq!(k.handler(id).run(&ctx), Err(JobError::new("no")));
        assert_eq!(k.id("missing"), None);
    }
}
