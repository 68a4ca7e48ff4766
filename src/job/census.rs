//! Jobs by queue and state as a log's records leave them: what `wal inspect` counts. Every record
//! goes through the same state machine as in the daemon and in recovery, so a stale record
//! (about an attempt that was given up) is ignored here as it is there.
//!
//! Only open and dead jobs are kept by id (a dead one can be revived); jobs that succeed, are
//! cancelled or are purged are counted and forgotten, so memory follows the live set, not the log.
//! (So a second `submit` of an ended job's id, which only damage could write, is counted as a new
//! job here while recovery ignores it, and logs it.)

use std::collections::{BTreeMap, HashMap};

use super::machine::{self, JobCore, Transition};
use super::State;
use crate::wal::record::Record;

/// What a job is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counted {
    /// In this state.
    State(State),
    /// Dead, and purged from the dead letters.
    Purged,
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Counted::State(s) => s.fmt(f),
            Counted::Purged => f.write_str("purged"),
        }
    }
}

/// The count under construction. Feed it every record in log order with [`Census::record`].
#[derive(Debug, Default)]
pub struct Census {
    /// Queue names, by first appearance.
    queues: Vec<String>,
    /// Open and dead jobs: queue index and progress.
    jobs: HashMap<u64, (u16, JobCore)>,
    /// Jobs that ended for good, by queue and how.
    ended: BTreeMap<(u16, Counted), u64>,
    /// Records that did not apply to their job (stale: fenced off).
    stale: u64,
}

impl Census {
    /// An empty count.
    pub fn new() -> Census {
        Census::default()
    }

    /// Applies one record.
    pub fn record(&mut self, rec: &Record<'_>) {
        let Some(id) = rec.job_id() else {
            return; // a sync mark: about no job
        };
        if let Record::Submit(s) = rec {
            if self.jobs.contains_key(&id) {
                self.stale += 1;
                return;
            }
            let q = self.queue_index(&s.queue);
            self.jobs.insert(id, (q, JobCore::new(s)));
            return;
        }
        let Some((q, core)) = self.jobs.get_mut(&id) else {
            return;
        };
        let q = *q;
        let gone = match machine::apply(core, rec) {
            Ok(Transition::Ended(s @ (State::Succeeded | State::Cancelled))) => Counted::State(s),
            Ok(Transition::Purged) => Counted::Purged,
            Ok(_) => return,
            Err(_) => {
                self.stale += 1;
                return;
            }
        };
        self.jobs.remove(&id);
        *self.ended.entry((q, gone)).or_default() += 1;
    }

    fn queue_index(&mut self, queue: &str) -> u16 {
        match self.queues.iter().position(|n| n == queue) {
            Some(i) => i as u16,
            None => {
                self.queues.push(queue.to_string());
                (self.queues.len() - 1) as u16
            }
        }
    }

    /// Adds a job as a checkpoint holds it.
    pub(crate) fn restore(&mut self, id: u64, queue: &str, core: JobCore) {
        let q = self.queue_index(queue);
        let counted = match core.state {
            _ if core.purged => Counted::Purged,
            s @ (State::Succeeded | State::Cancelled) => Counted::State(s),
            _ => {
                self.jobs.insert(id, (q, core));
                return;
            }
        };
        *self.ended.entry((q, counted)).or_default() += 1;
    }

    /// Adds `n` jobs that ended for good, as a checkpoint counts them.
    pub(crate) fn add_ended(&mut self, queue: &str, counted: Counted, n: u64) {
        let q = self.queue_index(queue);
        *self.ended.entry((q, counted)).or_default() += n;
    }

    /// Whether job `id` is live as far as the records so far say: not finished (a dead job is
    /// live until purged: it can be revived).
    pub fn is_live(&self, id: u64) -> bool {
        self.jobs.contains_key(&id)
    }

    /// Records that did not apply to a job kept by id (stale, or a second submit of an open job).
    pub fn stale_records(&self) -> u64 {
        self.stale
    }

    /// Jobs by queue name and how they are counted (zero counts left out).
    pub fn by_queue(&self) -> BTreeMap<String, BTreeMap<Counted, u64>> {
        let mut out: BTreeMap<String, BTreeMap<Counted, u64>> = BTreeMap::new();
        let mut add = |q: u16, c: Counted, n: u64| {
            *out.entry(self.queues[q as usize].clone())
                .or_default()
                .entry(c)
                .or_default() += n;
        };
        for (q, core) in self.jobs.values() {
            add(*q, Counted::State(core.state), 1);
        }
        for (&(q, c), &n) in &self.ended {
            add(q, c, n);
        }
        out
    }

    /// Jobs by how they are counted, all queues.
    pub fn by_state(&self) -> BTreeMap<Counted, u64> {
        let mut out = BTreeMap::new();
        for states in self.by_queue().into_values() {
            for (c, n) in states {
                *out.entry(c).or_default() += n;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::sample::{finish, submit};
    use crate::wal::record::{state_code, JobEvent, Start};

    #[test]
    fn a_stale_finish_does_not_end_a_job() {
        let mut c = Census::new();
        let start = |id, attempt| Record::Start(Start { id, attempt, at: 5 });
        for r in [
            submit(1, "bulk"),
            start(1, 1),
            start(1, 2),
            // Attempt 1 was given up: its late finish must not end the job (recovery ignores
            // it too).
            finish(1, 1, state_code::SUCCEEDED),
            submit(2, "bulk"),
            start(2, 1),
            finish(2, 1, state_code::DEAD),
            Record::Purge(JobEvent { id: 2, at: 10 }),
            Record::Revive(JobEvent { id: 2, at: 11 }),
            submit(3, "mail"),
        ] {
            c.record(&r);
        }
        // The late finish; the revive after the purge is about a job no longer kept.
        assert_eq!(c.stale_records(), 1);
        let by_queue = c.by_queue();
        assert_eq!(
            by_queue["bulk"],
            BTreeMap::from([(Counted::State(State::Running), 1), (Counted::Purged, 1)])
        );
        assert_eq!(
            by_queue["mail"],
            BTreeMap::from([(Counted::State(State::Ready), 1)])
        );
        assert_eq!(c.by_state().values().sum::<u64>(), 3);
    }
}
