//! The run journal: one small file per exec process group running now, `DATA/run/<pgid>`,
//! holding `<pgid> <start> <session> <boot id> <job> <attempt>` (`start`: the group leader's start
//! time in clock ticks since boot, `session`: its session id, both from `/proc/<pid>/stat`). Written right after the program starts
//! (not fsync'd: after a power cut no process survives anyway), removed when its attempt ends.
//!
//! At start-up, before any job runs, a file still there names a group that a daemon which died
//! left behind: its leader was killed with the daemon, but descendants that stayed in the group
//! may still run, and the job is about to run again. Such a group is killed, once checked to be
//! the one written down and not another program that got the same number since:
//! - same boot (`/proc/sys/kernel/random/boot_id`);
//! - every member is in the session written down (the daemon's session when the job started:
//!   exec programs get a group of their own, not a session);
//! - the leader, if it still exists, has the start time written down (a reused pid has another);
//! - without a leader, every member started no earlier than it. (Linux never hands out a pid that
//!   is still some group's id; a group whose leader is gone is the same group unless the whole
//!   group died and its number was taken by a new group leader in the same session, who then
//!   exited too: that is what the start times guard against.)
//!
//! A process that left the group (`setsid`) is not found this way; see `docs/config.md`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::handlers::JobContext;

/// How long the clean-up waits for a killed group to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The run journal in a directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    boot: String,
}

/// A journal entry to remove when its attempt ends.
#[derive(Debug)]
pub struct Entry(i32);

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
    start: u64,
}

fn proc_stat(pid: i32) -> Option<Proc> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Proc {
        pid,
        zombie: *f.first()? == "Z",
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// Whether process `pid` runs (a zombie nobody reaped yet does not: PID 1 may never reap it).
#[cfg(any(test, feature = "internals"))]
pub fn process_running(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|p| !p.zombie)
}

/// Every process in group `pgrp`.
fn members(pgrp: i32) -> Vec<Proc> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .filter(|p| p.pgrp == pgrp)
        .collect()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Journal {
    /// The journal in `dir` (created, mode 0700, if missing; an existing one must be this
    /// user's and not writable by others: an entry written by someone else would have the
    /// daemon kill a process group of their choosing).
    pub fn open(dir: &Path) -> Result<Journal, String> {
        crate::datadir::private_dir(dir).map_err(|e| e.to_string())?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            boot: boot_id(),
        })
    }

    /// Writes down process group `pgid` (just started) for the attempt in `ctx`.
    pub fn record(&self, pgid: i32, ctx: Option<&JobContext<'_>>) -> Option<Entry> {
        let leader = proc_stat(pgid)?;
        let (job, attempt) = ctx.map_or((0, 0), |c| (c.id, c.attempt));
        let line = format!(
            "{pgid} {} {} {} {job} {attempt}\n",
            leader.start, leader.session, self.boot
        );
        match std::fs::write(self.dir.join(pgid.to_string()), line) {
            Ok(()) => Some(Entry(pgid)),
            Err(e) => {
                log::warn!(
                    "exec: cannot write the run journal in {} ({e}): if the daemon dies, job \
                     {job}'s leftover processes are not cleaned up at restart",
                    self.dir.display()
                );
                None
            }
        }
    }

    /// Removes an entry (its attempt ended and its group was killed).
    pub fn remove(&self, e: Entry) {
        let _ = std::fs::remove_file(self.dir.join(e.0.to_string()));
    }

    /// Kills every group the journal still names (left by a daemon that died). An entry goes once
    /// its group is gone (killed, or found gone or not ours), never before: a daemon that dies in
    /// the middle of this leaves the rest for the next start. Returns the groups killed.
    pub fn kill_leftovers(&self) -> Vec<i32> {
        use std::os::unix::fs::MetadataExt;
        let mut killed = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return killed;
        };
        let own_group = rustix::process::getpgrp().as_raw_nonzero().get();
        let me = rustix::process::geteuid().as_raw();
        for e in rd.flatten() {
            let path = e.path();
            // Only entries this user wrote are acted on (the directory is checked too).
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && m.uid() == me => {}
                _ => {
                    log::warn!(
                        "exec: ignoring {path:?} in the run journal: not a file of this user"
                    );
                    continue;
                }
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let f: Vec<&str> = text.split_whitespace().collect();
            let parsed = (|| {
                Some((
                    f.first()?.parse::<i32>().ok()?,
                    f.get(1)?.parse::<u64>().ok()?,
                    f.get(2)?.parse::<i32>().ok()?,
                    *f.get(3)?,
                    f.get(4)?.parse::<u64>().ok()?,
                    f.get(5)?.parse::<u32>().ok()?,
                ))
            })();
            let Some((pgid, start, session, boot, job, attempt)) = parsed else {
                log::warn!("exec: removing a run journal entry that does not parse: {path:?}");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if self.kill_group(pgid, start, session, boot, job, attempt, own_group) {
                killed.push(pgid);
            }
            if members(pgid).iter().all(|p| p.zombie) || !self.still_ours(pgid, start, session) {
                let _ = std::fs::remove_file(&path);
            }
        }
        killed
    }

    /// Whether group `pgid` still holds running processes that match the entry.
    fn still_ours(&self, pgid: i32, start: u64, session: i32) -> bool {
        let procs = members(pgid);
        procs.iter().any(|p| !p.zombie)
            && procs.iter().all(|p| p.session == session)
            && match procs.iter().find(|p| p.pid == pgid) {
                Some(leader) => leader.start == start,
                None => procs.iter().all(|p| p.start >= start),
            }
    }

    /// Kills the group an entry names if it is the one written down; waits until it is gone.
    /// Returns whether it killed it.
    #[allow(clippy::too_many_arguments)]
    fn kill_group(
        &self,
        pgid: i32,
        start: u64,
        session: i32,
        boot: &str,
        job: u64,
        attempt: u32,
        own_group: i32,
    ) -> bool {
        if boot != self.boot || pgid <= 1 || pgid == own_group {
            return false; // a reboot ended it; or not a group we may touch
        }
        if !self.still_ours(pgid, start, session) {
            if members(pgid).iter().any(|p| !p.zombie) {
                log::info!("exec: process group {pgid} of job {job} is gone; its number now belongs to another program, left alone");
            }
            return false;
        }
        let n = members(pgid).iter().filter(|p| !p.zombie).count();
        log::warn!(
            "exec: killing process group {pgid}: {n} process(es) left running by job {job} \
             attempt {attempt} when the daemon died (before the job runs again)"
        );
        super::child::signal_group(pgid, rustix::process::Signal::KILL);
        let t = Instant::now();
        while members(pgid).iter().any(|p| !p.zombie) {
            if t.elapsed() > KILL_WAIT {
                log::error!("exec: process group {pgid} of job {job} still runs after SIGKILL (another user's process, or stuck in the kernel); its entry stays for the next start");
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A process group of a shell and a background sleep, as a job would leave it; killed when
    /// dropped.
    struct Group(std::process::Child);
    impl Group {
        fn start() -> Group {
            let c = std::process::Command::new("sh")
                .args(["-c", "sleep 600 & exec sleep 600"])
                .process_group(0)
                .spawn()
                .unwrap();
            let g = Group(c);
            // Wait until both processes are there.
            let t = Instant::now();
            while members(g.pgid()).iter().filter(|p| !p.zombie).count() < 2 {
                assert!(t.elapsed() < Duration::from_secs(30));
                std::thread::sleep(Duration::from_millis(5));
            }
            g
        }
        fn pgid(&self) -> i32 {
            self.0.id() as i32
        }
        fn running(&self) -> usize {
            members(self.pgid()).iter().filter(|p| !p.zombie).count()
        }
    }
    impl Drop for Group {
        fn drop(&mut self) {
            super::super::child::signal_group(self.pgid(), rustix::process::Signal::KILL);
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_group_left_behind_is_killed_and_a_reused_number_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("run")).unwrap();
        let left = Group::start();
        let _ = j.record(left.pgid(), None).unwrap();
        // Same number, another program: written down with another start time; and one written
        // down in another session.
        let other = Group::start();
        let p = proc_stat(other.pgid()).unwrap();
        std::fs::write(
            dir.path().join("run").join(other.pgid().to_string()),
            format!(
                "{} {} {} {} 7 1\n",
                other.pgid(),
                p.start + 1,
                p.session,
                j.boot
            ),
        )
        .unwrap();
        let third = Group::start();
        let p = proc_stat(third.pgid()).unwrap();
        std::fs::write(
            dir.path().join("run").join(third.pgid().to_string()),
            format!(
                "{} {} {} {} 8 1\n",
                third.pgid(),
                p.start,
                p.session + 1,
                j.boot
            ),
        )
        .unwrap();
        assert_eq!(j.kill_leftovers(), vec![left.pgid()]);
        assert_eq!(left.running(), 0, "the group left behind is gone");
        assert_eq!(other.running(), 2, "another program's group is left alone");
        assert_eq!(
            third.running(),
            2,
            "a group of another session is left alone"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("run")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_group_whose_leader_died_is_still_killed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("run")).unwrap();
        let mut g = Group::start();
        let _ = j.record(g.pgid(), None).unwrap();
        // The leader goes (as with the daemon's death); its background child stays in the group.
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(g.pgid()).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let _ = g.0.wait();
        assert_eq!(g.running(), 1);
        assert_eq!(j.kill_leftovers(), vec![g.pgid()]);
        assert_eq!(g.running(), 0);
    }

    #[test]
    fn a_journal_someone_else_could_write_to_is_refused_or_closed_and_their_entries_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
        let j = Journal::open(&run).unwrap();
        let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "write permission for others removed");
        if !rustix::process::getuid().is_root() {
            return; // the rest needs a file of another user
        }
        // An entry that another user wrote, naming a group that matches in every way: ignored.
        let victim = Group::start();
        let _ = j.record(victim.pgid(), None).unwrap();
        let entry = run.join(victim.pgid().to_string());
        rustix::fs::chown(&entry, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        assert!(j.kill_leftovers().is_empty());
        assert_eq!(victim.running(), 2);
        // A journal directory owned by another user is refused outright.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        rustix::fs::chown(&theirs, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        let e = Journal::open(&theirs).unwrap_err();
        assert!(e.contains("belongs to uid 65534"), "{e}");
    }
}
