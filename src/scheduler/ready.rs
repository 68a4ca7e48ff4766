//! The ready set and the rule that picks the next job for a free worker.
//!
//! Each queue keeps a min-heap of `(rank, id)`. The rank is the deadline (order `deadline`),
//! the arrival number (`fifo`), or the queue's priority then arrival (`priority`). Picking compares
//! the heads of the queues that may take another worker, so one pick costs O(queues + log n).
//!
//! Limits under order `deadline` (G4, docs/guarantees.md):
//! - a queue never runs more than `max_workers` jobs at once;
//! - `reserved` workers stay free for their queue: a job of another queue may take a free worker
//!   only while the free workers outnumber the reservations still unmet;
//! - lending: while a reserving queue has nothing ready, another queue's job may borrow one of its
//!   reserved workers if that job is expected (from its queue and kind's measured run times) to
//!   finish within the reserving queue's `lend_limit`. A job with no measurement never borrows.
//!
//! Cancelled jobs are deleted lazily: the caller says which ids are still live when they surface.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::config::Order;

/// Limits of one queue, in the scheduler's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most workers at once.
    pub max_workers: usize,
    /// Workers kept for this queue.
    pub reserved: usize,
    /// Longest expected run time (ms) that may borrow this queue's idle reserved workers.
    pub lend_limit_ms: u64,
}

#[derive(Debug, Default)]
struct QueueSet {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    running: usize,
    /// Paused: its jobs stay ready, none is picked (its reservation counts as idle).
    paused: bool,
}

/// Ready jobs of every queue plus running counts.
#[derive(Debug)]
pub struct ReadySet {
    order: Order,
    limits: Vec<Limits>,
    queues: Vec<QueueSet>,
}

/// What a pick decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Queue of the job.
    pub queue: u16,
    /// Job id.
    pub id: u64,
    /// Whether it runs on a worker borrowed from another queue's reservation.
    pub borrowed: bool,
}

impl ReadySet {
    /// An empty set for queues with these limits.
    pub fn new(order: Order, limits: Vec<Limits>) -> ReadySet {
        let queues = limits.iter().map(|_| QueueSet::default()).collect();
        ReadySet {
            order,
            limits,
            queues,
        }
    }

    /// Adds a ready job with its rank (see the module doc).
    pub fn push(&mut self, queue: u16, rank: u64, id: u64) {
        self.queues[queue as usize].heap.push(Reverse((rank, id)));
    }

    /// Entries in a queue's heap (cancelled ones included until they surface).
    #[cfg(test)]
    pub fn queued(&self, queue: u16) -> usize {
        self.queues[queue as usize].heap.len()
    }

    /// Jobs of a queue on workers.
    #[cfg(test)]
    pub fn running(&self, queue: u16) -> usize {
        self.queues[queue as usize].running
    }

    /// The head (rank, id) of a queue, skipping dead entries.
    pub fn head(&mut self, queue: u16, live: &mut dyn FnMut(u64) -> bool) -> Option<(u64, u64)> {
        let q = &mut self.queues[queue as usize];
        while let Some(&Reverse((rank, id))) = q.heap.peek() {
            if live(id) {
                return Some((rank, id));
            }
            q.heap.pop();
        }
        None
    }

    /// A queue's limits from now on (`queue set`): the next pick follows them; running jobs
    /// beyond a lowered `max_workers` finish.
    pub fn set_limits(&mut self, queue: u16, limits: Limits) {
        self.limits[queue as usize] = limits;
    }

    /// Pauses or resumes a queue.
    pub fn set_paused(&mut self, queue: u16, paused: bool) {
        self.queues[queue as usize].paused = paused;
    }

    /// Records that a job of `queue` left its worker.
    pub fn finished(&mut self, queue: u16) {
        let q = &mut self.queues[queue as usize];
        q.running = q.running.saturating_sub(1);
    }

    /// Picks the next job for one of `free` free workers, removes it from the set and counts it as
    /// running. `live(id)` says whether a heap entry is still ready; `expected_ms(queue, id)` is
    /// the job's expected run time, if measured.
    pub fn pick(
        &mut self,
        free: usize,
        live: &mut dyn FnMut(u64) -> bool,
        expected_ms: &mut dyn FnMut(u16, u64) -> Option<u64>,
    ) -> Option<Pick> {
        if free == 0 {
            return None;
        }
        let n = self.queues.len();
        let heads: Vec<Option<(u64, u64)>> = (0..n as u16)
            .map(|q| match self.queues[q as usize].paused {
                true => None,
                false => self.head(q, live),
            })
            .collect();
        let mut best: Option<(u64, u64, u16, bool)> = None;
        let enforce_reservations = self.order == Order::Deadline;
        let unmet =
            |s: &ReadySet, r: usize| s.limits[r].reserved.saturating_sub(s.queues[r].running);
        let total_unmet: usize = if enforce_reservations {
            (0..n).map(|r| unmet(self, r)).sum()
        } else {
            0
        };
        for q in 0..n {
            let Some((rank, id)) = heads[q] else { continue };
            if self.queues[q].running >= self.limits[q].max_workers {
                continue;
            }
            if let Some((br, bi, _, _)) = best {
                if (rank, id) >= (br, bi) {
                    continue;
                }
            }
            let mut borrowed = false;
            if enforce_reservations && unmet(self, q) == 0 && free <= total_unmet {
                // Every free worker is spoken for by another queue's reservation. Borrow only
                // from reserving queues with nothing ready, and only for a short job.
                let exp = expected_ms(q as u16, id);
                let lendable = (0..n).filter(|&r| r != q && unmet(self, r) > 0).all(|r| {
                    heads[r].is_none() && exp.is_some_and(|e| e <= self.limits[r].lend_limit_ms)
                });
                if !lendable {
                    continue;
                }
                borrowed = true;
            }
            best = Some((rank, id, q as u16, borrowed));
        }
        let (_, id, queue, borrowed) = best?;
        let q = &mut self.queues[queue as usize];
        q.heap.pop();
        q.running += 1;
        Some(Pick {
            queue,
            id,
            borrowed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn lim(max_workers: usize, reserved: usize, lend_limit_ms: u64) -> Limits {
        Limits {
            max_workers,
            reserved,
            lend_limit_ms,
        }
    }

    /// notifications (reserved 1, lend 300 ms), default, bulk, on 4 workers.
    fn spec_set() -> ReadySet {
        ReadySet::new(
            Order::Deadline,
            vec![lim(4, 1, 300), lim(4, 0, 3000), lim(4, 0, 36_000)],
        )
    }

    fn all_live(_: u64) -> bool {
        true
    }

    #[test]
    fn earliest_deadline_wins_across_queues() {
        let mut s = spec_set();
        for i in 0..1000 {
            s.push(2, 3_600_000 + i, i);
        }
        s.push(0, 30_000 + 999, 5000);
        let p = s.pick(4, &mut all_live, &mut |_, _| None).unwrap();
        assert_eq!((p.queue, p.id), (0, 5000));
        // An old bulk job whose deadline has come beats a fresh notification.
        let mut s = spec_set();
        s.push(0, 30_000 + 100_000, 1);
        s.push(2, 99_000, 2);
        let p = s.pick(4, &mut all_live, &mut |_, _| None).unwrap();
        assert_eq!((p.queue, p.id), (2, 2));
    }

    #[test]
    fn reserved_worker_is_kept_then_lent_to_short_jobs_only() {
        let mut s = spec_set();
        for i in 0..10 {
            s.push(2, 3_600_000 + i, i);
        }
        // Unmeasured bulk jobs fill the 3 unreserved workers, not the 4th.
        let mut free = 4;
        let mut picked = 0;
        while let Some(p) = s.pick(free, &mut all_live, &mut |_, _| None) {
            assert!(!p.borrowed);
            free -= 1;
            picked += 1;
        }
        assert_eq!((picked, free), (3, 1));
        // Long jobs (2 s > 300 ms) still do not borrow it.
        assert!(s.pick(1, &mut all_live, &mut |_, _| Some(2000)).is_none());
        // Short ones (10 ms) do, while notifications has nothing ready.
        let p = s.pick(1, &mut all_live, &mut |_, _| Some(10)).unwrap();
        assert!(p.borrowed);
        // Once a notification is ready, its reservation holds again.
        s.finished(2);
        s.push(0, 40_000, 77);
        let p = s.pick(1, &mut all_live, &mut |_, _| Some(10)).unwrap();
        assert_eq!((p.queue, p.id, p.borrowed), (0, 77, false));
    }

    #[test]
    fn cancelled_entries_are_skipped() {
        let mut s = spec_set();
        s.push(1, 10, 1);
        s.push(1, 20, 2);
        let p = s.pick(4, &mut |id| id != 1, &mut |_, _| None).unwrap();
        assert_eq!(p.id, 2);
        assert_eq!(s.queued(1), 0);
    }

    #[test]
    fn fifo_ignores_reservations_and_queues() {
        let mut s = ReadySet::new(Order::Fifo, vec![lim(4, 1, 300), lim(4, 0, 0)]);
        s.push(1, 1, 10);
        s.push(0, 2, 11);
        s.push(1, 3, 12);
        let order: Vec<u64> =
            std::iter::from_fn(|| s.pick(4, &mut all_live, &mut |_, _| None).map(|p| p.id))
                .collect();
        assert_eq!(order, [10, 11, 12]);
    }

    proptest! {
        /// Under a random flood and random completions, `max_workers` and `reserved` always hold,
        /// and a free worker never idles while some job could legally run on it.
        #[test]
        fn limits_hold_under_a_flood(
            workers in 1usize..9,
            q_limits in proptest::collection::vec((1usize..9, 0usize..3), 1..4),
            ops in proptest::collection::vec((0u8..3, 0usize..4, 0u64..1000), 1..400),
        ) {
            let limits: Vec<Limits> = q_limits.iter().map(|&(m, r)| lim(m.min(workers), r.min(m).min(workers), 0)).collect();
            let total_reserved: usize = limits.iter().map(|l| l.reserved).sum();
            prop_assume!(total_reserved <= workers);
            let nq = limits.len();
            let mut s = ReadySet::new(Order::Deadline, limits.clone());
            let mut running: Vec<(u16, u64)> = Vec::new();
            let mut next_id = 0u64;
            let mut ready: HashSet<u64> = HashSet::new();
            for (op, q, rank) in ops {
                let q = (q % nq) as u16;
                match op {
                    0 | 1 => { s.push(q, rank, next_id); ready.insert(next_id); next_id += 1; }
                    _ => if !running.is_empty() {
                        let (rq, _) = running.remove(rank as usize % running.len());
                        s.finished(rq);
                    }
                }
                // Dispatch as the dispatcher does: while a worker is free and a pick exists.
                while let Some(p) = s.pick(workers - running.len(), &mut |id| ready.contains(&id), &mut |_, _| None) {
                    prop_assert!(ready.remove(&p.id));
                    prop_assert!(!p.borrowed);
                    running.push((p.queue, p.id));
                }
                let per_q = |qq: usize| running.iter().filter(|r| r.0 as usize == qq).count();
                let free = workers - running.len();
                let unmet: usize = (0..nq).map(|r| limits[r].reserved.saturating_sub(per_q(r))).sum();
                for (qq, l) in limits.iter().enumerate() {
                    prop_assert!(per_q(qq) <= l.max_workers, "max_workers broken");
                }
                // Reservations: the free workers always cover every unmet reservation.
                prop_assert!(free >= unmet, "reservation broken: free {} unmet {}", free, unmet);
                // Work conservation: no queue with ready jobs could have taken a free worker.
                for (qq, l) in limits.iter().enumerate() {
                    let has_ready = s.head(qq as u16, &mut |id| ready.contains(&id)).is_some();
                    let own_unmet = l.reserved.saturating_sub(per_q(qq));
                    let could = has_ready && per_q(qq) < l.max_workers && free > 0 && (own_unmet > 0 || free > unmet);
                    prop_assert!(!could, "queue {} idles with a free worker", qq);
                }
            }
        }
    }
}
