//! Checkpoints: the log stays bounded, and a restart reads the checkpoint and the log after it.
//!
//! Public, for the offline tools: [`summary`], [`census`] and [`job`] read a data directory's
//! checkpoint (`wal/checkpoint`), checking every entry. The rest is internal:
//!
//! - `fold`: what the records leave of every job (shared with recovery).
//! - `file`: the checkpoint file, `wal/checkpoint` (layout in `docs/wal-format.md`).
//! - `worker`: the checkpointer thread: when to take one, taking it, releasing the segments it
//!   covers to `DATA/archive/`, and the archive's retention.

internal_mods! {
    mod file;
    mod fold;
    mod worker;
}

use std::sync::Arc;

use crate::job::census::{Census, Counted};
use crate::job::State;
use crate::wal::io::{SegmentFile, Storage};
use crate::wal::reader::After;
use crate::wal::WalError;
use crate::wire::JobInfo;
use file::{decode_done, Entry, Read};
use fold::{Fold, FoldJob, PURGED};

/// What a checkpoint holds, in figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The last segment it covers (released once it is in place).
    pub covered_seq: u64,
    /// The last LSN it covers.
    pub covered_lsn: u64,
    /// The first job id never used.
    pub next_id: u64,
    /// When it was taken (ms).
    pub created_at: u64,
    /// Its size.
    pub bytes: u64,
    /// Jobs that have not finished.
    pub jobs: u64,
    /// Finished jobs of the history.
    pub done: u64,
    /// Idempotency keys.
    pub keys: u64,
}

impl Summary {
    /// Where the log after it starts.
    pub fn after(&self) -> After {
        After {
            seq: self.covered_seq,
            lsn: self.covered_lsn,
        }
    }

    fn of(r: &Read) -> Summary {
        Summary {
            covered_seq: r.header.covered_seq,
            covered_lsn: r.header.covered_lsn,
            next_id: r.header.next_id,
            created_at: r.header.created_at,
            bytes: r.bytes,
            jobs: r.end.jobs,
            done: r.end.done,
            keys: r.end.keys,
        }
    }
}

/// Reads the checkpoint of the log in `storage`, if there is one, checking every entry.
pub fn summary(storage: &dyn Storage) -> Result<Option<Summary>, WalError> {
    let read = file::read(storage, &mut |n: &str| Arc::from(n), &mut |_| Ok(()))?;
    Ok(read.as_ref().map(Summary::of))
}

/// What the checkpoint says of every job, as a [`Census`] to feed the log after it.
pub fn census(storage: &dyn Storage) -> Result<(Census, Option<Summary>), WalError> {
    let mut census = Census::new();
    let mut names = |n: &str| Arc::from(n);
    let read = file::read(storage, &mut |n: &str| Arc::from(n), &mut |e| {
        match e {
            Entry::Job(j) => census.restore(j.id, &j.queue, j.core),
            Entry::Done { body, .. } => {
                let j = decode_done(body, &mut names)?;
                census.restore(j.id, &j.queue, j.core);
            }
            Entry::Key(..) | Entry::Queue(_) => {}
        }
        Ok(())
    })?;
    if let Some(r) = &read {
        for (q, how, n) in &r.end.released {
            let counted = match State::ALL.get(*how as usize) {
                Some(s) => Counted::State(*s),
                None if *how == PURGED => Counted::Purged,
                None => continue,
            };
            census.add_ended(q, counted, *n);
        }
    }
    Ok((census, read.as_ref().map(Summary::of)))
}

/// Job `id` as the checkpoint holds it (a finished job without its payload), if it does.
pub fn job(storage: &dyn Storage, id: u64) -> Result<Option<JobInfo>, WalError> {
    let mut found: Option<FoldJob> = None;
    let mut names = |n: &str| Arc::from(n);
    file::read(storage, &mut |n: &str| Arc::from(n), &mut |e| {
        match e {
            Entry::Job(j) if j.id == id => found = Some(j),
            Entry::Done { id: i, body } if i == id => found = Some(decode_done(body, &mut names)?),
            _ => {}
        }
        Ok(())
    })?;
    Ok(found.map(|j| j.info()))
}

/// How much of a file [`shrink_gradually`] frees at a time.
const FREE_STEP: u64 = 8 << 20;

/// Cuts `file` down to `to` bytes a step at a time, pausing between steps. Freeing a large file
/// at once (a removal, or a rename over it) puts all of its blocks into one transaction of the
/// file system's journal, which the log's next fdatasync then waits for (measured: 50-60 ms for
/// a 400 MB checkpoint on ext4); in steps, each commit carries a few MiB.
pub(crate) fn shrink_gradually(file: &dyn SegmentFile, to: u64) -> std::io::Result<()> {
    let mut len = file.size()?;
    while len > to {
        len = len.saturating_sub(FREE_STEP).max(to);
        file.set_len(len)?;
        if len > to {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    Ok(())
}

/// Removes `name` from `storage`, freeing its blocks gradually first ([`shrink_gradually`]).
pub(crate) fn remove_gradually(storage: &dyn Storage, name: &str) -> std::io::Result<()> {
    if let Ok(f) = storage.open(name, true) {
        shrink_gradually(f.as_ref(), 0)?;
    }
    storage.remove(name)
}

/// A fold with the checkpoint's decoder for its history.
pub(crate) fn new_fold(keys: crate::wal::keys::KeyIndex, history_limit: usize, now: u64) -> Fold {
    Fold::new(keys, history_limit, now, file::decode_done_interned)
}

/// Reads the checkpoint, if any, into `fold`, and says where the log after it starts.
pub(crate) fn load(
    storage: &dyn Storage,
    fold: &mut Fold,
) -> Result<(After, Option<Read>), WalError> {
    let now = fold.now();
    let mut names = std::mem::take(&mut fold.names);
    let mut keys = std::mem::take(&mut fold.keys);
    let read = file::read(
        storage,
        &mut |n: &str| -> Arc<str> { names.get(n) },
        &mut |e| {
            match e {
                Entry::Job(j) => fold.restore(j),
                Entry::Done { id, body } => fold.restore_raw(id, body),
                Entry::Key(k, e) => keys.restore(&k, e, now),
                Entry::Queue(q) => {
                    fold.queues.insert(q.queue.to_string(), q);
                }
            }
            pace();
            Ok(())
        },
    );
    fold.names = names;
    fold.keys = keys;
    let read = read?;
    let after = match &read {
        Some(r) => {
            fold.max_id = fold.max_id.max(r.header.next_id.saturating_sub(1));
            for (q, how, n) in &r.end.released {
                let q = fold.names.get(q);
                *fold.released.entry((q, *how)).or_default() += n;
            }
            After {
                seq: r.header.covered_seq,
                lsn: r.header.covered_lsn,
            }
        }
        None => After::START,
    };
    Ok((after, read))
}

/// The checkpointer's duty cycle: on its thread, work is cut into slices of about 100 µs with a
/// rest after each, so that it takes only a share of one core, of the memory bus and of the disk,
/// and a primary-path thread woken on its core never waits behind a long slice (the scheduler lets
/// a running thread, even at niceness 19, finish a slice of a few ms). The share follows the log
/// ([`duty_for`]). While the checkpointer keeps up, a slice is measured on the wall clock, the
/// waits for a core included, so that on a busy machine it rests more: it takes what is idle.
/// Once the log not yet covered outgrows its limit, a slice is measured in the thread's CPU time,
/// so that it gets its share however busy the machine is, and the share grows with the backlog.
/// On any other thread (recovery, the offline tools) pacing is off and [`pace`] costs a
/// thread-local lookup.
mod pacing {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// How long a slice of work lasts before a rest.
    const SLICE: Duration = Duration::from_micros(100);
    /// The most of one slice's wall-clock time counted as work while within the limit.
    const WAIT_COUNTED: Duration = Duration::from_micros(400);
    /// Calls to [`pace`] between looks at the clock (each call an entry or a record: well under
    /// a µs to a few µs).
    const EVERY: u32 = 32;

    /// The share of the time to work: `base` while `backlog` (the log not yet covered by a
    /// checkpoint) is at most `limit`, then growing with the square of how far past it the
    /// backlog is, up to all of it: twice the limit, four times `base`; past about
    /// `limit × √(1 / base)`, full speed. So a checkpointer that keeps up stays out of the way,
    /// and one that falls behind catches up before the log grows far past its limit.
    pub(crate) fn duty_for(base: f64, backlog: u64, limit: u64) -> f64 {
        if backlog <= limit || limit == 0 {
            return base;
        }
        let over = backlog as f64 / limit as f64;
        (base * over * over).min(1.0)
    }

    /// What the current checkpoint follows: the log not yet covered, and its limit.
    pub(crate) struct Follow {
        pub backlog: Box<dyn Fn() -> u64>,
        pub limit: u64,
    }

    /// This thread's pace.
    struct Pace {
        /// The share of the time it may work while it keeps up.
        base: f64,
        /// The log it follows, during a checkpoint.
        follow: Option<Follow>,
        /// The largest share it took since [`take_peak`].
        peak: f64,
        /// When the current slice began, on the wall clock and in this thread's CPU time.
        wall: Instant,
        cpu: Duration,
        /// Calls since the last look at the clock.
        n: u32,
        /// Once set, no more rests: a daemon stopping waits for a checkpoint at full speed.
        hurry: Arc<AtomicBool>,
    }

    thread_local! {
        static PACE: RefCell<Option<Pace>> = const { RefCell::new(None) };
    }

    /// Turns pacing on for this thread: it works `base` of the time (0 < base < 1; anything
    /// else leaves it off) until `hurry` is set.
    pub(crate) fn enable(base: f64, hurry: Arc<AtomicBool>) {
        if base > 0.0 && base < 1.0 {
            PACE.with(|p| {
                *p.borrow_mut() = Some(Pace {
                    base,
                    follow: None,
                    peak: base,
                    wall: Instant::now(),
                    cpu: cpu_time(),
                    n: 0,
                    hurry,
                })
            });
        }
    }

    /// From now on (`Some`) the share follows this log ([`duty_for`]); `None`: the base share.
    pub(crate) fn follow(f: Option<Follow>) {
        PACE.with(|p| {
            if let Some(p) = p.borrow_mut().as_mut() {
                p.follow = f;
            }
        });
    }

    /// The largest share this thread worked at since the last call (0 if pacing is off).
    pub(crate) fn take_peak() -> f64 {
        PACE.with(|p| {
            p.borrow_mut().as_mut().map_or(0.0, |p| {
                let peak = p.peak;
                p.peak = p.base;
                peak
            })
        })
    }

    /// Called between small units of work (an entry folded or written, a record applied):
    /// rests when the slice is over.
    pub(crate) fn pace() {
        PACE.with(|p| {
            let mut p = p.borrow_mut();
            let Some(p) = p.as_mut() else {
                return;
            };
            p.n += 1;
            if p.n < EVERY {
                return;
            }
            p.n = 0;
            // The wall clock first: it is cheap, and never behind the CPU time.
            let wall = p.wall.elapsed();
            if wall < SLICE {
                return;
            }
            let (behind, duty) = match &p.follow {
                Some(f) => {
                    let backlog = (f.backlog)();
                    (backlog > f.limit, duty_for(p.base, backlog, f.limit))
                }
                None => (false, p.base),
            };
            let cpu = cpu_time();
            let worked = if behind {
                cpu.saturating_sub(p.cpu)
            } else {
                // A long wait for a core counts, but only up to a few slices: on a machine
                // saturated by other work, resting in proportion to every wait (each wake-up at
                // niceness 19 waits milliseconds) would leave a checkpoint someone waits for
                // (`duejob wal checkpoint`) almost nothing.
                wall.min(WAIT_COUNTED)
            };
            if worked < SLICE {
                return;
            }
            if !p.hurry.load(Relaxed) {
                p.peak = p.peak.max(duty);
                if duty < 1.0 {
                    std::thread::sleep(worked.mul_f64((1.0 - duty) / duty));
                }
            }
            p.wall = Instant::now();
            p.cpu = cpu;
        });
    }

    /// The CPU time this thread has used: work done, not the time spent waiting for a core (on a
    /// busy machine a thread at niceness 19 waits milliseconds for one).
    fn cpu_time() -> Duration {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_share_stays_at_its_base_until_the_backlog_passes_its_limit_then_grows_to_all() {
            assert_eq!(duty_for(0.1, 0, 100), 0.1);
            assert_eq!(duty_for(0.1, 100, 100), 0.1);
            assert!((duty_for(0.1, 200, 100) - 0.4).abs() < 1e-9);
            assert!((duty_for(0.1, 300, 100) - 0.9).abs() < 1e-9);
            assert_eq!(duty_for(0.1, 400, 100), 1.0);
            assert_eq!(duty_for(0.1, u64::MAX, 100), 1.0);
            assert_eq!(duty_for(0.1, 5, 0), 0.1);
            // Never less as the backlog grows.
            let mut last = 0.0;
            for b in (0..1000).step_by(7) {
                let d = duty_for(0.1, b, 100);
                assert!(d >= last, "{b}: {d} < {last}");
                last = d;
            }
        }

        #[test]
        fn a_thread_without_pacing_is_not_paced() {
            follow(Some(Follow {
                backlog: Box::new(|| u64::MAX),
                limit: 1,
            }));
            for _ in 0..1000 {
                pace();
            }
            assert_eq!(take_peak(), 0.0);
        }

        #[test]
        fn a_paced_thread_reports_the_share_the_backlog_asked_for() {
            std::thread::spawn(|| {
                enable(0.5, Arc::new(AtomicBool::new(false)));
                follow(Some(Follow {
                    backlog: Box::new(|| 150),
                    limit: 100,
                }));
                // Until this thread has worked 2 ms of CPU time (however busy the machine): a
                // slice of 100 µs must have ended in that.
                let c0 = cpu_time();
                while cpu_time().saturating_sub(c0) < Duration::from_millis(2) {
                    pace();
                }
                // 0.5 × 1.5² ≥ 1: full speed, no rest.
                assert_eq!(take_peak(), 1.0);
                assert_eq!(take_peak(), 0.5, "the peak starts again from the base");
            })
            .join()
            .unwrap();
        }
    }
}
pub(crate) use pacing::{enable as enable_pacing, follow, pace, take_peak, Follow};
