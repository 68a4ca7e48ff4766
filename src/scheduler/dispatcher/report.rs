//! What the dispatcher reports: a job's status and timeline, and the `stats` figures.

use hdrhistogram::Histogram;

use super::Dispatcher;
use crate::job::{now_ms, State};
use crate::wire::{JobInfo, Percentiles, QueueStats, SchedStats};

pub(crate) fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
    }
}

/// Bucket bounds of the wait and run time histograms (seconds).
const BOUNDS_S: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// `h` (µs) as cumulative buckets in seconds.
fn buckets(h: &Histogram<u64>) -> crate::scheduler::Buckets {
    crate::scheduler::Buckets {
        le: BOUNDS_S
            .iter()
            .map(|&b| (b, h.count_between(0, (b * 1e6) as u64)))
            .collect(),
        count: h.len(),
        sum: h.mean() * h.len() as f64 / 1e6,
    }
}

impl Dispatcher {
    /// The state of job `id`, if memory holds it (cheaper than [`Self::status`]).
    pub(super) fn state_of(&self, id: u64) -> Option<State> {
        match self.history.get(&id) {
            Some(d) => Some(d.core.state),
            None => self.jobs.get(&id).map(|e| e.core.state),
        }
    }

    pub(super) fn status(&self, id: u64) -> Option<JobInfo> {
        if let Some(d) = self.history.get(&id) {
            return Some(d.info());
        }
        let e = self.jobs.get(&id)?;
        let j = &e.job;
        Some(JobInfo {
            id,
            queue: self.queue_names[j.queue as usize].to_string(),
            kind: self.kind_names[j.kind as usize].to_string(),
            state: e.core.state,
            submitted_at: j.submitted_at,
            deadline: j.deadline,
            run_at: j.run_at,
            max_attempts: j.max_attempts,
            timeout_ms: j.timeout_ms,
            key: j.key.as_deref().map(Into::into),
            replay_of: crate::job::replay_of(j.key.as_deref()),
            next_attempt_at: e.core.retry_at(),
            finished_at: e.core.finished_at(),
            payload: serde_json::from_str(&j.payload).ok(),
            attempts: e.core.attempts.clone(),
        })
    }

    pub(super) fn metrics(&self) -> crate::scheduler::Metrics {
        let mut kinds = Vec::new();
        for (q, qn) in self.queue_names.iter().enumerate() {
            for (k, kn) in self.kind_names.iter().enumerate() {
                let c = self.kind_counts[q * self.kind_names.len() + k];
                if c != [0; 4] {
                    kinds.push((qn.to_string(), kn.to_string(), c));
                }
            }
        }
        let per_queue = |h: &dyn Fn(&super::QueueFigures) -> &Histogram<u64>| {
            self.queue_names
                .iter()
                .zip(&self.figures)
                .map(|(n, f)| (n.to_string(), buckets(h(f))))
                .collect()
        };
        crate::scheduler::Metrics {
            kinds,
            wait: per_queue(&|f| &f.wait_us),
            run: per_queue(&|f| &f.run_us),
        }
    }

    pub(super) fn stats(&mut self) -> SchedStats {
        let now = now_ms();
        let now_us = self.now_us();
        let mut totals: std::collections::BTreeMap<State, u64> =
            State::ALL.iter().map(|&s| (s, 0)).collect();
        let mut queues = std::collections::BTreeMap::new();
        for (q, qc) in self.cfg.queues.iter().enumerate() {
            let mut states = std::collections::BTreeMap::new();
            for s in State::ALL {
                let c = self.counts[q][s.index()];
                states.insert(s, c);
                *totals.entry(s).or_default() += c;
            }
            let jobs = &self.jobs;
            let head = self
                .ready
                .head(q as u16, &mut |id| {
                    jobs.get(&id).is_some_and(|e| e.core.state == State::Ready)
                })
                .and_then(|(_, id)| jobs.get(&id));
            let fig = &self.figures[q];
            let live = &self.live_queues[q];
            queues.insert(
                qc.name.clone(),
                QueueStats {
                    states,
                    max_workers: live.limits.max_workers,
                    reserved: live.limits.reserved,
                    due_in_ms: live.due_in.as_millis() as u64,
                    lend_limit_ms: live.limits.lend_limit_ms,
                    paused_until: live.paused_until,
                    overridden: Vec::new(),
                    oldest_ready_age_ms: head.map(|e| now_us.saturating_sub(e.ready_at_us) / 1000),
                    slack_ms: head.map(|e| e.job.deadline as i64 - now as i64),
                    late: self.lateness.late(q as u16),
                    deadline_misses: self.lateness.misses(q as u16),
                    failures: fig.failures,
                    retries: fig.retries,
                    timeouts: fig.timeouts,
                    borrowed: fig.borrowed,
                    wait_ms: percentiles(&fig.wait_us),
                    run_ms: percentiles(&fig.run_us),
                    recent: fig.recent.report(now_us),
                },
            );
        }
        SchedStats {
            totals,
            queues,
            workers: self.workers.len(),
            busy: self.workers.len() - self.free.len(),
            order: self.cfg.order.name().into(),
        }
    }
}
