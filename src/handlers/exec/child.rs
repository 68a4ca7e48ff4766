//! One exec attempt: spawn the program in its own process group, then wait on the worker's own
//! thread for everything at once (its exit, its output on two pipes, its timeout, its stop
//! signal) with one `poll` over the two pipes and a pidfd. No helper thread, and the attempt ends
//! when the program exits: a process that left the group (`setsid`) and keeps the pipes open is
//! not waited for beyond [`OUTPUT_DRAIN`].
//!
//! The child is made to die with the daemon: `PR_SET_PDEATHSIG` (SIGKILL) is set between fork
//! and exec. This is the crate's one `unsafe` block (`Command::pre_exec` requires it).

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::Signal;

use super::journal::Journal;
use super::{ExecPayload, KILL_GRACE, OUTPUT_DRAIN, TAIL_BYTES};
use crate::handlers::{JobContext, JobError, StopReason};

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How often the loop looks at the stop signal while the program runs.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Without a pidfd (kernels before 5.3) the exit is noticed by polling this often.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// Takes the program's output as it comes.
pub type OutputSink<'a> = dyn FnMut(&[u8]) + 'a;

/// What one attempt needs.
pub struct Run<'a> {
    /// The program.
    pub payload: &'a ExecPayload,
    /// Its timeout.
    pub timeout: Option<Duration>,
    /// The attempt (for its stop signal), when run by a worker.
    pub ctx: Option<&'a JobContext<'a>>,
    /// The handler's set of running process groups.
    pub running: Option<&'a Mutex<HashSet<i32>>>,
    /// The run journal, when there is a data directory.
    pub journal: Option<&'a Journal>,
    /// Written to the program's stdin (then closed); without it, stdin is `/dev/null`.
    pub stdin: Option<&'a [u8]>,
    /// Where the output goes as it comes (`duejob log`), besides the tails kept with the
    /// attempt.
    pub output: Option<&'a mut OutputSink<'a>>,
}

/// Sends `sig` to process group `pgid`.
pub fn signal_group(pgid: i32, sig: Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// The last bytes of a stream.
#[derive(Default)]
struct TailBuf(Vec<u8>);

impl TailBuf {
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > TAIL_BYTES * 2 {
            self.0.drain(..self.0.len() - TAIL_BYTES);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        if self.0.len() > TAIL_BYTES {
            self.0.drain(..self.0.len() - TAIL_BYTES);
        }
        self.0
    }
}

fn spawn(p: &ExecPayload, stdin: bool) -> std::io::Result<Child> {
    let mut cmd = Command::new(&p.argv[0]);
    cmd.args(&p.argv[1..])
        .env_clear()
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !p.env.contains_key("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(&p.env);
    if let Some(cwd) = &p.cwd {
        cmd.current_dir(cwd);
    }
    let parent = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is allowed: it makes two system calls (prctl and getppid) and builds an io::Error
    // from an errno (no allocation); it takes no lock and touches no shared state.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the daemon, whatever kills it (SIGKILL included).
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The daemon may have died between fork and prctl: then go now.
            if rustix::process::getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Why the program did not start: the working directory, when that is what is missing (the
/// error of a failed `chdir` in the child reads like a missing program).
fn spawn_error(p: &ExecPayload, e: &std::io::Error) -> String {
    match p.cwd.as_deref() {
        Some(cwd) if !std::path::Path::new(cwd).is_dir() => {
            format!("cannot start {:?}: its working directory {cwd:?} is not a directory", p.argv[0])
        }
        _ => format!("cannot start {:?}: {e}", p.argv[0]),
    }
}

/// Runs one attempt; see the module doc.
pub fn run(mut r: Run<'_>) -> Result<(), JobError> {
    let mut child = spawn(r.payload, r.stdin.is_some())
        .map_err(|e| JobError::new(spawn_error(r.payload, &e)))?;
    let pgid = child.id() as i32;
    if let (Some(data), Some(mut pipe)) = (r.stdin, child.stdin.take()) {
        // On a thread of its own: a program that never reads its stdin cannot hold the attempt
        // beyond its timeout (the write fails once the group is killed).
        let data = data.to_vec();
        let _ = std::thread::Builder::new()
            .name("duejob-exec-stdin".into())
            .spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&data);
            });
    }
    if let Some(Ok(mut set)) = r.running.map(|m| m.lock()) {
        set.insert(pgid);
    }
    let entry = r.journal.and_then(|j| j.record(pgid, r.ctx));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let waited = wait(&mut child, pgid, stdout, stderr, &mut r);
    // Whatever the program left behind in its group goes with it.
    signal_group(pgid, Signal::KILL);
    if let Some(Ok(mut set)) = r.running.map(|m| m.lock()) {
        set.remove(&pgid);
    }
    if let (Some(j), Some(e)) = (r.journal, entry) {
        j.remove(e);
    }
    let (status, stopped, out, err) = waited;
    let status = status.map_err(|e| JobError::new(format!("waiting for the program: {e}")))?;
    outcome(status, stopped, out, err, &r)
}

type Waited = (
    std::io::Result<ExitStatus>,
    Option<StopReason>,
    Vec<u8>,
    Vec<u8>,
);

/// Waits for the program's exit while reading its output and enforcing its timeout and stop
/// signal. Returns its status, why it was stopped (if it was), and the output tails.
fn wait(
    child: &mut Child,
    pgid: i32,
    stdout: ChildStdout,
    stderr: ChildStderr,
    r: &mut Run<'_>,
) -> Waited {
    let started = Instant::now();
    let deadline = r.timeout.map(|t| started + t);
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(child),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    let mut pipes = [
        Some(File::from(OwnedFd::from(stdout))),
        Some(File::from(OwnedFd::from(stderr))),
    ];
    let mut tails = [TailBuf::default(), TailBuf::default()];
    let mut status: Option<ExitStatus> = None;
    let mut stopped: Option<StopReason> = None;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let now = Instant::now();
        if status.is_none() {
            match child.try_wait() {
                Ok(Some(st)) => {
                    status = Some(st);
                    // The group goes with the program; the pipes close unless someone left it.
                    signal_group(pgid, Signal::KILL);
                    drain_until = Some(now + OUTPUT_DRAIN);
                }
                Ok(None) => {}
                Err(e) => {
                    let [out, err] = std::mem::take(&mut tails);
                    return (Err(e), stopped, out.finish(), err.finish());
                }
            }
        }
        if let Some(until) = drain_until {
            if pipes.iter().all(Option::is_none) {
                break;
            }
            if now >= until {
                log::warn!(
                    "exec job{}: the program exited, but a process it started left its process \
                     group and still holds its output open; not waiting for it",
                    r.ctx
                        .map(|c| format!(" {} attempt {}", c.id, c.attempt))
                        .unwrap_or_default()
                );
                break;
            }
        } else if stopped.is_none() {
            let why = if deadline.is_some_and(|d| now >= d) {
                Some(StopReason::TimedOut)
            } else {
                r.ctx.and_then(|c| c.should_stop())
            };
            if let Some(why) = why {
                stopped = Some(why);
                signal_group(pgid, Signal::TERM);
                kill_at = Some(now + KILL_GRACE);
            }
        } else if kill_at.is_some_and(|k| now >= k) {
            signal_group(pgid, Signal::KILL);
            kill_at = None;
        }
        // Sleep until something happens or the next check is due.
        let mut wait = match drain_until {
            Some(until) => until.saturating_duration_since(now),
            None => STOP_POLL,
        };
        if status.is_none() {
            for t in [deadline.filter(|_| stopped.is_none()), kill_at]
                .into_iter()
                .flatten()
            {
                wait = wait.min(t.saturating_duration_since(now));
            }
            if pidfd.is_none() {
                wait = wait.min(EXIT_POLL);
            }
        }
        let ready = poll(&pipes, pidfd.as_ref().filter(|_| status.is_none()), wait);
        for (i, readable) in ready.into_iter().enumerate() {
            if !readable {
                continue;
            }
            let Some(p) = pipes[i].as_mut() else { continue };
            match p.read(&mut buf) {
                Ok(0) => pipes[i] = None,
                Ok(n) => {
                    tails[i].push(&buf[..n]);
                    if let Some(out) = r.output.as_mut() {
                        out(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => pipes[i] = None,
            }
        }
    }
    let [out, err] = tails;
    (
        Ok(status.expect("loop ends after the exit")),
        stopped,
        out.finish(),
        err.finish(),
    )
}

/// Waits up to `wait` for output on the pipes still open, or for the pidfd (the exit); returns
/// which pipes can be read (at their end of file too).
fn poll(pipes: &[Option<File>; 2], pidfd: Option<&OwnedFd>, wait: Duration) -> [bool; 2] {
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
    let mut which = [usize::MAX; 2];
    for (i, p) in pipes.iter().enumerate() {
        if let Some(f) = p {
            which[i] = fds.len();
            fds.push(PollFd::new(f, PollFlags::IN));
        }
    }
    if let Some(fd) = pidfd {
        fds.push(PollFd::new(fd, PollFlags::IN));
    }
    let timeout = rustix::event::Timespec::try_from(wait).unwrap_or(rustix::event::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    });
    if fds.is_empty() {
        std::thread::sleep(wait);
        return [false; 2];
    }
    if rustix::event::poll(&mut fds, Some(&timeout)).is_err() {
        return [false; 2]; // EINTR: look again
    }
    let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
    which.map(|i| i != usize::MAX && fds[i].revents().intersects(ready))
}

/// The attempt's result from the program's status.
fn outcome(
    status: ExitStatus,
    stopped: Option<StopReason>,
    out: Vec<u8>,
    err: Vec<u8>,
    r: &Run<'_>,
) -> Result<(), JobError> {
    let mut tail = String::from_utf8_lossy(&out).into_owned();
    if !err.is_empty() {
        if !tail.is_empty() && !tail.ends_with('\n') {
            tail.push('\n');
        }
        tail.push_str("--- stderr ---\n");
        tail.push_str(&String::from_utf8_lossy(&err));
    }
    if let Some(why) = stopped {
        let reason = match why {
            StopReason::TimedOut => {
                let ms = r
                    .timeout
                    .or(r.ctx.and_then(|c| c.timeout))
                    .map(|t| t.as_millis())
                    .unwrap_or(0);
                format!("timed out after {ms} ms; process group killed")
            }
            StopReason::Cancelled => "cancelled; process group killed".to_string(),
        };
        return Err(JobError {
            reason,
            exit_code: status.code(),
            output_tail: tail,
            permanent: false,
        });
    }
    if status.success() {
        return Ok(());
    }
    let reason = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended abnormally".to_string(),
    };
    Err(JobError {
        reason,
        exit_code: status.code(),
        output_tail: tail,
        permanent: false,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::payload;
    use super::*;

    use super::super::journal::process_running as alive;

    fn pid_in(path: &std::path::Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Kills a process this test left running, also when the test fails.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(p) = rustix::process::Pid::from_raw(self.0) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
    }

    #[test]
    fn a_grandchild_that_leaves_the_group_does_not_pin_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("escaped");
        // The escaped process keeps stdout and stderr open for 30 s: were the attempt to wait for
        // it, this test would fail after 30 s (not hang).
        let script = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 30' & sleep 0.3; echo done; exit 0",
            pidfile.display()
        );
        let r = super::super::run(
            &payload(&["sh", "-c", &script]),
            Some(Duration::from_secs(60)),
        );
        let escaped = pid_in(&pidfile);
        let _reap = Reap(escaped);
        assert_eq!(r, Ok(()));
        // The attempt ended while the escaped process still ran (had we waited for the pipes,
        // it would be gone by now).
        assert!(alive(escaped), "the attempt waited for the escaped process");
    }

    #[test]
    fn a_timeout_ends_the_attempt_even_when_an_escaped_process_holds_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("escaped");
        let script = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 30' & sleep 30",
            pidfile.display()
        );
        let r = super::super::run(
            &payload(&["sh", "-c", &script]),
            Some(Duration::from_millis(300)),
        );
        let escaped = pid_in(&pidfile);
        let _reap = Reap(escaped);
        let e = r.unwrap_err();
        assert!(
            e.reason.starts_with("timed out after 300 ms"),
            "{}",
            e.reason
        );
        assert!(alive(escaped));
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg");
        let script = format!("sleep 600 & echo $! > {}; sleep 600", pidfile.display());
        let e = super::super::run(
            &payload(&["sh", "-c", &script]),
            Some(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(
            e.reason.starts_with("timed out after 200 ms"),
            "{}",
            e.reason
        );
        let bg = pid_in(&pidfile);
        let _reap = Reap(bg);
        // SIGKILL was sent to the group before run() returned; the kernel may still be tearing
        // the process down: wait for exactly that.
        let t = Instant::now();
        while alive(bg) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the background process survived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_program_dies_with_the_thread_that_started_it() {
        // PR_SET_PDEATHSIG fires when the spawning thread ends (the daemon's death ends them
        // all): a program started by a thread that is gone is killed.
        let mut child = std::thread::spawn(|| spawn(&payload(&["sleep", "600"]), false).unwrap())
            .join()
            .unwrap();
        let _reap = Reap(child.id() as i32);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
}
