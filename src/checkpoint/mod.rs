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
            Entry::Key(..) => {}
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
    Ok(found.map(|j| JobInfo {
        id: j.id,
        queue: j.queue.to_string(),
        kind: j.kind.to_string(),
        state: j.core.state,
        submitted_at: j.submitted_at,
        deadline: j.deadline,
        run_at: j.run_at,
        max_attempts: j.max_attempts,
        timeout_ms: j.timeout_ms,
        key: j.key.as_deref().map(Into::into),
        next_attempt_at: j.core.retry_at(),
        finished_at: j.core.finished_at(),
        payload: j
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok()),
        attempts: j.core.attempts,
    }))
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

/// The checkpointer's duty cycle: on its thread, work is cut into slices of about a millisecond
/// with a rest after each, so that it takes at most a share of one core and of the memory bus and
/// the disk. On any other thread (recovery, the offline tools) pacing is off and [`pace`] costs a
/// counter.
mod pacing {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// This thread's pace.
    struct Pace {
        /// The share of the time it may work.
        duty: f64,
        /// When the current slice began.
        since: Instant,
        /// Calls in the current slice.
        n: u32,
        /// Once set, no more rests: a daemon stopping waits for a checkpoint at full speed.
        hurry: Arc<AtomicBool>,
    }

    thread_local! {
        static PACE: RefCell<Option<Pace>> = const { RefCell::new(None) };
    }

    /// Turns pacing on for this thread: it works `duty` of the time (0 < duty < 1; anything else
    /// leaves it off) until `hurry` is set.
    pub(crate) fn enable(duty: f64, hurry: Arc<AtomicBool>) {
        if duty > 0.0 && duty < 1.0 {
            PACE.with(|p| {
                *p.borrow_mut() = Some(Pace {
                    duty,
                    since: Instant::now(),
                    n: 0,
                    hurry,
                })
            });
        }
    }

    /// Called between small units of work (an entry folded, a chunk written): rests when the
    /// slice is over.
    pub(crate) fn pace() {
        PACE.with(|p| {
            let mut p = p.borrow_mut();
            let Some(p) = p.as_mut() else {
                return;
            };
            p.n += 1;
            if p.n < 256 {
                return;
            }
            p.n = 0;
            let worked = p.since.elapsed();
            if worked >= Duration::from_millis(1) && !p.hurry.load(Relaxed) {
                std::thread::sleep(worked.mul_f64((1.0 - p.duty) / p.duty));
                p.since = Instant::now();
            }
        });
    }
}
pub(crate) use pacing::{enable as enable_pacing, pace};
