//! Which ready jobs are past their deadline, counted the moment it passes.
//!
//! Each queue keeps its ready jobs' deadlines in buckets of [`BUCKET_MS`] (a count per bucket,
//! no ids): `pending` for buckets still to come, `late` for buckets already passed. A sweep, run
//! by the dispatcher whenever a bucket ends (it wakes for it), moves the buckets that have
//! passed from `pending` to `late` and counts their jobs as missed. A job leaving the ready set
//! (it starts, or is cancelled) takes itself out of its bucket, and counts as missed then if its
//! deadline passed within the bucket not swept yet. So each ready job past its deadline is
//! counted once, within [`BUCKET_MS`] of the moment, whether or not a worker ever takes it.
//!
//! The cost on the dispatch path: one map update when a job becomes ready and one when it
//! leaves (a few thousand buckets at most: deadlines spread over an hour make 36,000 only if
//! every 100 ms holds one).

use std::collections::BTreeMap;

/// Width of a deadline bucket (ms).
pub const BUCKET_MS: u64 = 100;

#[derive(Debug, Default, Clone)]
struct QueueLate {
    /// Bucket → ready jobs whose deadline falls in it, for buckets not yet passed.
    pending: BTreeMap<u64, u32>,
    /// The same for buckets passed: the jobs late now.
    late: BTreeMap<u64, u32>,
    late_jobs: u64,
    misses: u64,
    /// Misses not yet reported in the log.
    unlogged: u64,
}

/// Lateness of every queue's ready jobs.
#[derive(Debug, Clone)]
pub struct Lateness {
    queues: Vec<QueueLate>,
    /// Buckets below this one have passed (swept).
    swept: u64,
}

/// What a job's leaving the ready set meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// It left in time.
    OnTime,
    /// It left past its deadline (counted as missed, now or before).
    Late,
}

impl Lateness {
    /// No ready jobs in `queues` queues; buckets before `now` (ms) count as passed.
    pub fn new(queues: usize, now: u64) -> Lateness {
        Lateness {
            queues: vec![QueueLate::default(); queues],
            swept: now / BUCKET_MS,
        }
    }

    /// A job of `queue` with `deadline` became ready. `counted`: it was counted as missed
    /// before (an earlier time it was ready); it is not counted again. Returns whether it is
    /// late already.
    pub fn entered(&mut self, queue: u16, deadline: u64, counted: bool) -> bool {
        let b = deadline / BUCKET_MS;
        let q = &mut self.queues[queue as usize];
        if b < self.swept {
            *q.late.entry(b).or_default() += 1;
            q.late_jobs += 1;
            if !counted {
                q.misses += 1;
                q.unlogged += 1;
            }
            true
        } else {
            *q.pending.entry(b).or_default() += 1;
            false
        }
    }

    /// A job of `queue` with `deadline` left the ready set at `now` (started or cancelled).
    /// `counted` as in [`Lateness::entered`].
    pub fn left(&mut self, queue: u16, deadline: u64, now: u64, counted: bool) -> Left {
        let b = deadline / BUCKET_MS;
        let q = &mut self.queues[queue as usize];
        if b < self.swept {
            take(&mut q.late, b);
            q.late_jobs -= 1;
            Left::Late
        } else {
            take(&mut q.pending, b);
            if now > deadline {
                if !counted {
                    q.misses += 1;
                }
                Left::Late
            } else {
                Left::OnTime
            }
        }
    }

    /// Moves the buckets that passed by `now` to `late`, counting their jobs as missed.
    pub fn sweep(&mut self, now: u64) {
        let s = now / BUCKET_MS;
        if s <= self.swept {
            return;
        }
        self.swept = s;
        for q in &mut self.queues {
            while let Some(entry) = q.pending.first_entry() {
                if *entry.key() >= s {
                    break;
                }
                let (b, n) = entry.remove_entry();
                *q.late.entry(b).or_default() += n;
                q.late_jobs += u64::from(n);
                q.misses += u64::from(n);
                q.unlogged += u64::from(n);
            }
        }
    }

    /// When the next pending bucket ends (ms): the dispatcher wakes then to sweep.
    pub fn next_sweep(&self) -> Option<u64> {
        self.queues
            .iter()
            .filter_map(|q| q.pending.keys().next())
            .min()
            .map(|b| (b + 1) * BUCKET_MS)
    }

    /// Ready jobs of `queue` past their deadline now.
    pub fn late(&self, queue: u16) -> u64 {
        self.queues[queue as usize].late_jobs
    }

    /// Jobs of `queue` that were ready past their deadline, each counted once.
    pub fn misses(&self, queue: u16) -> u64 {
        self.queues[queue as usize].misses
    }

    /// The earliest deadline among `queue`'s late jobs (to the bucket).
    pub fn worst(&self, queue: u16) -> Option<u64> {
        self.queues[queue as usize]
            .late
            .keys()
            .next()
            .map(|b| b * BUCKET_MS)
    }

    /// Misses of `queue` since the last call (for the log).
    pub fn take_unlogged(&mut self, queue: u16) -> u64 {
        std::mem::take(&mut self.queues[queue as usize].unlogged)
    }
}

fn take(m: &mut BTreeMap<u64, u32>, b: u64) {
    if let std::collections::btree_map::Entry::Occupied(mut e) = m.entry(b) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    } else {
        debug_assert!(false, "bucket {b} holds no job");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_job_is_late_the_moment_its_deadline_passes_and_counted_once() {
        let mut l = Lateness::new(2, 1_000);
        assert!(!l.entered(0, 1_550, false));
        assert!(!l.entered(0, 5_000, false));
        assert_eq!(l.next_sweep(), Some(1_600));
        l.sweep(1_599);
        assert_eq!((l.late(0), l.misses(0)), (0, 0));
        l.sweep(1_600);
        assert_eq!((l.late(0), l.misses(0)), (1, 1));
        assert_eq!(l.worst(0), Some(1_500));
        assert_eq!(l.take_unlogged(0), 1);
        assert_eq!(l.take_unlogged(0), 0);
        // Sweeping again counts nothing twice.
        l.sweep(2_000);
        assert_eq!(l.misses(0), 1);
        // It starts late: no longer late, still one miss.
        assert_eq!(l.left(0, 1_550, 2_100, false), Left::Late);
        assert_eq!((l.late(0), l.misses(0)), (0, 1));
        // It fails and is ready again, past its deadline: late, not a second miss.
        assert!(l.entered(0, 1_550, true));
        assert_eq!((l.late(0), l.misses(0)), (1, 1));
        assert_eq!(l.left(0, 1_550, 2_200, true), Left::Late);
        // The other job leaves in time.
        assert_eq!(l.left(0, 5_000, 2_300, false), Left::OnTime);
        assert_eq!(l.next_sweep(), None);
        assert_eq!((l.late(1), l.misses(1)), (0, 0));
    }

    #[test]
    fn a_job_started_late_within_its_bucket_is_a_miss_and_one_ready_past_its_deadline_is_late_at_once() {
        let mut l = Lateness::new(1, 1_000);
        l.entered(0, 1_020, false);
        // Its deadline passed, the bucket has not ended: counted when it starts.
        assert_eq!(l.left(0, 1_020, 1_050, false), Left::Late);
        assert_eq!((l.late(0), l.misses(0)), (0, 1));
        l.sweep(1_100);
        assert_eq!(l.misses(0), 1, "its bucket was empty when swept");
        // Ready with its deadline long gone (a retry becoming ready): late at once.
        assert!(l.entered(0, 500, false));
        assert_eq!((l.late(0), l.misses(0)), (1, 2));
        assert_eq!(l.left(0, 500, 1_200, false), Left::Late);
        assert_eq!((l.late(0), l.misses(0)), (0, 2));
    }
}
