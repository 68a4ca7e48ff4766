//! Fail-stop for the threads of the primary path.
//!
//! The commit thread, the durable-point keeper, the dispatcher, the workers' loops and the accept
//! loop each own a part of the primary path that no other thread can take over. A panic in one of
//! them is a bug (bad input gets an error, never a panic), and unwinding out of it would leave a
//! process that looks alive and is not: a log mutex poisoned for every later writer, submits
//! acknowledged whose jobs never run, or a socket nobody accepts on. So these threads run their
//! whole life inside [`fail_stop`], which stops the process at once with `abort` instead. What was
//! acknowledged is in the log, and a restart recovers it (the systemd unit in `deploy/` restarts
//! on failure).
//!
//! Job handlers are not under this rule: a panicking handler fails its attempt (the worker catches
//! it), and the worker goes on. Neither are the secondary parts (catalog, checkpointer, metrics,
//! alerts) nor one connection's threads: a panic there ends that thread only.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body`, the whole life of the calling thread of the primary path; if it panics, writes
/// why to stderr (naming the thread by the name it was spawned with) and aborts the process.
pub(crate) fn fail_stop<T>(body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(p) => {
            let current = std::thread::current();
            let thread = current.name().unwrap_or("unnamed");
            // Straight to stderr: a logger may not be set up (duejob embedded), and nothing after
            // this line runs.
            eprintln!(
                "duejob: thread {thread} panicked ({}), a bug: stopping the process now; a restart recovers every acknowledged job from the log",
                panic_message(p.as_ref())
            );
            std::process::abort();
        }
    }
}

/// The message a panic was raised with.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Running a test in a child process of its own: for the tests whose point is that the process
/// dies.
#[cfg(test)]
pub(crate) mod child {
    use std::process::{Command, Output};

    /// Set in the child's environment.
    const VAR: &str = "DUEJOB_FAIL_STOP_CHILD";

    /// Whether this process is the child of [`run`]: the ignored test that `run` names does its
    /// work only then. In the child, turns core files off for the abort it is about to make.
    pub fn enter() -> bool {
        if std::env::var_os(VAR).is_none() {
            return false;
        }
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Core);
        limit.current = Some(0);
        let _ = setrlimit(Resource::Core, limit);
        true
    }

    /// Runs the ignored test `name` (its full path) in a child process of this test binary and
    /// returns how it ended (the child's [`enter`] turns its core file off).
    pub fn run(name: &str) -> Output {
        Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                name,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(VAR, "1")
            .output()
            .expect("run the test binary")
    }

    /// Asserts that the child was killed by `SIGABRT` and said why, naming `thread` and `why`.
    pub fn assert_aborted(out: &Output, thread: &str, why: &str) {
        use std::os::unix::process::ExitStatusExt;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(rustix::process::Signal::ABORT.as_raw()),
            "the child was not aborted ({}):\n{stderr}",
            out.status
        );
        let line = format!("duejob: thread {thread} panicked (");
        assert!(
            stderr.contains(&line) && stderr.contains(why),
            "the child did not say that {thread} panicked with {why:?}:\n{stderr}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_thread_of_the_primary_path_aborts_the_process() {
        let out = child::run("fail_stop::tests::child_panics_in_a_fail_stop_thread");
        child::assert_aborted(&out, "duejob-test", "the bug under test");
    }

    /// Run by the test above, in a child process.
    #[test]
    #[ignore = "run in a child process by a_panic_in_a_thread_of_the_primary_path_aborts_the_process"]
    fn child_panics_in_a_fail_stop_thread() {
        if !child::enter() {
            return;
        }
        let t = std::thread::Builder::new()
            .name("duejob-test".into())
            .spawn(|| fail_stop(|| panic!("the bug under test")))
            .unwrap();
        let _ = t.join();
        // Not reached: the join above never returns.
        std::process::exit(0);
    }

    #[test]
    fn without_a_panic_the_body_s_value_is_returned() {
        assert_eq!(fail_stop(|| 7), 7);
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        let s: Box<dyn Any + Send> = Box::new("a str");
        assert_eq!(panic_message(s.as_ref()), "a str");
        let s: Box<dyn Any + Send> = Box::new(String::from("a string"));
        assert_eq!(panic_message(s.as_ref()), "a string");
        let s: Box<dyn Any + Send> = Box::new(3u8);
        assert_eq!(panic_message(s.as_ref()), "non-string panic");
    }
}
