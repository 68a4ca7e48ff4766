//! The dispatcher thread: the one owner of job state.
//!
//! It receives durable jobs (from the WAL thread), finished attempts (from workers) and queries
//! (from connections) on one channel, and after each burst of messages it promotes due timers,
//! hands ready jobs to free workers, and sends the `start`/`finish` records of the burst to the
//! WAL as one append. Nothing else touches job state, so nothing on this path takes a lock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;

use super::info::{AttemptInfo, JobInfo, Percentiles, QueueStats, SchedStats};
use super::ready::{Limits, ReadySet};
use super::worker::{self, Task};
use super::{CancelRefused, Done, Msg};
use crate::config::{Config, Order};
use crate::handlers::Kinds;
use crate::job::{now_ms, JobRef, State};
use crate::wal::commit::{Append, RecordBatch, WalMsg};
use crate::wal::record::{state_code, Cancel, Finish, Outcome, Record, Start};

/// A live job recovered from the WAL.
#[derive(Debug, Clone)]
pub struct LiveJob {
    /// The job.
    pub job: JobRef,
    /// Attempts started so far.
    pub attempt: u32,
    /// Their timeline.
    pub attempts: Vec<AttemptInfo>,
}

/// A job in a terminal state, kept (without its payload) for `status`.
#[derive(Debug, Clone)]
pub struct DoneJob {
    /// Job id.
    pub id: u64,
    /// Queue name.
    pub queue: Arc<str>,
    /// Kind name.
    pub kind: Arc<str>,
    /// Terminal state.
    pub state: State,
    /// Acceptance time.
    pub submitted_at: u64,
    /// Deadline.
    pub deadline: u64,
    /// Delayed start.
    pub run_at: Option<u64>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Timeout.
    pub timeout_ms: Option<u64>,
    /// When it ended.
    pub finished_at: u64,
    /// Timeline.
    pub attempts: Vec<AttemptInfo>,
}

impl DoneJob {
    fn info(&self) -> JobInfo {
        JobInfo {
            id: self.id,
            queue: self.queue.to_string(),
            kind: self.kind.to_string(),
            state: self.state.name().into(),
            submitted_at: self.submitted_at,
            deadline: self.deadline,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            finished_at: Some(self.finished_at),
            payload: None,
            attempts: self.attempts.clone(),
        }
    }
}

/// What recovery hands the dispatcher.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Non-terminal jobs.
    pub live: Vec<LiveJob>,
    /// Terminal jobs, oldest first.
    pub done: Vec<DoneJob>,
}

struct Entry {
    job: JobRef,
    state: State,
    attempt: u32,
    attempts: Vec<AttemptInfo>,
    /// Monotonic µs when it became ready.
    ready_at_us: u64,
}

struct QueueFigures {
    wait_us: Histogram<u64>,
    run_us: Histogram<u64>,
    misses: u64,
    failures: u64,
    borrowed: u64,
}

impl QueueFigures {
    fn new() -> QueueFigures {
        QueueFigures {
            wait_us: Histogram::new(3).expect("histogram"),
            run_us: Histogram::new(3).expect("histogram"),
            misses: 0,
            failures: 0,
            borrowed: 0,
        }
    }
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
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

/// Most messages handled before the dispatcher dispatches again.
const BURST: usize = 4096;

/// The dispatcher's state. Built by [`spawn`].
pub struct Dispatcher {
    cfg: Arc<Config>,
    kinds: Arc<Kinds>,
    queue_names: Vec<Arc<str>>,
    kind_names: Vec<Arc<str>>,
    jobs: HashMap<u64, Entry>,
    history: HashMap<u64, DoneJob>,
    history_order: VecDeque<u64>,
    ready: ReadySet,
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    workers: Vec<Sender<Task>>,
    worker_threads: Vec<JoinHandle<()>>,
    free: Vec<usize>,
    wal: Sender<WalMsg>,
    records: RecordBatch,
    counts: Vec<[u64; 7]>,
    figures: Vec<QueueFigures>,
    expected_ms: HashMap<(u16, u16), f64>,
    priority_of: Vec<u64>,
    arrivals: u64,
    clock: Instant,
    draining: Option<(Instant, Sender<()>)>,
}

/// Starts the workers and the dispatcher thread.
pub fn spawn(
    cfg: Arc<Config>,
    kinds: Arc<Kinds>,
    recovered: Recovered,
    wal: Sender<WalMsg>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
) -> JoinHandle<()> {
    let mut workers = Vec::new();
    let mut worker_threads = Vec::new();
    for i in 0..cfg.workers {
        let (w, h) = worker::spawn(i, cfg.clone(), kinds.clone(), tx.clone());
        workers.push(w);
        worker_threads.push(h);
    }
    drop(tx);
    let limits = cfg
        .queues
        .iter()
        .map(|q| Limits {
            max_workers: q.max_workers,
            reserved: q.reserved,
            lend_limit_ms: q.lend_limit.as_millis() as u64,
        })
        .collect();
    let mut by_urgency: Vec<usize> = (0..cfg.queues.len()).collect();
    by_urgency.sort_by_key(|&i| cfg.queues[i].due_in);
    let mut priority_of = vec![0u64; cfg.queues.len()];
    for (rank, q) in by_urgency.into_iter().enumerate() {
        priority_of[q] = rank as u64;
    }
    let n = cfg.queues.len();
    let mut d = Dispatcher {
        queue_names: cfg
            .queues
            .iter()
            .map(|q| Arc::from(q.name.as_str()))
            .collect(),
        kind_names: kinds
            .names()
            .iter()
            .map(|k| Arc::from(k.as_str()))
            .collect(),
        jobs: HashMap::new(),
        history: HashMap::new(),
        history_order: VecDeque::new(),
        ready: ReadySet::new(cfg.order, limits),
        timers: BinaryHeap::new(),
        free: (0..workers.len()).rev().collect(),
        workers,
        worker_threads,
        wal,
        records: RecordBatch::new(),
        counts: vec![[0; 7]; n],
        figures: (0..n).map(|_| QueueFigures::new()).collect(),
        expected_ms: HashMap::new(),
        priority_of,
        arrivals: 0,
        clock: Instant::now(),
        draining: None,
        cfg,
        kinds,
    };
    d.restore(recovered);
    std::thread::Builder::new()
        .name("duejob-dispatch".into())
        .spawn(move || d.run(rx))
        .expect("spawn dispatcher")
}

impl Dispatcher {
    fn restore(&mut self, rec: Recovered) {
        for done in rec.done {
            if let Some(q) = self.queue_names.iter().position(|n| *n == done.queue) {
                self.counts[q][done.state.index()] += 1;
            }
            self.remember(done);
        }
        let now = now_ms();
        for live in rec.live {
            self.admit(live.job, live.attempt, live.attempts, now);
        }
    }

    /// Adds a live job, ready or (if delayed) scheduled.
    fn admit(&mut self, job: JobRef, attempt: u32, attempts: Vec<AttemptInfo>, now: u64) {
        let (id, q, run_at) = (job.id, job.queue, job.run_at);
        self.counts[q as usize][State::Ready.index()] += 1;
        self.jobs.insert(
            id,
            Entry {
                job,
                state: State::Ready,
                attempt,
                attempts,
                ready_at_us: 0,
            },
        );
        match run_at {
            Some(at) if at > now => {
                self.set_state(id, State::Scheduled);
                self.timers.push(Reverse((at, id)));
            }
            _ => self.push_ready(id),
        }
    }

    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    fn run(mut self, rx: Receiver<Msg>) {
        // Recovered jobs are runnable before any message arrives.
        self.promote_timers();
        self.dispatch();
        self.flush_records();
        loop {
            let wake = self.next_wake();
            let first = match wake {
                Some(at) => match rx.recv_deadline(at) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
            };
            if let Some(m) = first {
                self.handle(m);
                for m in rx.try_iter().take(BURST) {
                    self.handle(m);
                }
            }
            self.promote_timers();
            self.dispatch();
            self.flush_records();
            if let Some((deadline, _)) = &self.draining {
                let busy = self.workers.len() - self.free.len();
                if busy == 0 || Instant::now() >= *deadline {
                    if busy > 0 {
                        log::warn!("shutdown: {busy} job(s) still running after the grace period; ending them (they run again after restart)");
                        self.kinds.abort_running();
                    }
                    break;
                }
            }
        }
        self.flush_records();
        let reply = self.draining.take().map(|(_, r)| r);
        // Closing the task channels lets idle workers exit; busy ones exit after their job.
        self.workers.clear();
        let busy = self.free.len() < self.worker_threads.len();
        if !busy {
            for h in self.worker_threads.drain(..) {
                let _ = h.join();
            }
        }
        if let Some(r) = reply {
            let _ = r.send(());
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| {
            Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
        });
        let drain = self.draining.as_ref().map(|(d, _)| *d);
        match (timer, drain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Jobs(jobs) => {
                let now = now_ms();
                for job in jobs {
                    self.admit(job, 0, Vec::new(), now);
                }
            }
            Msg::Done(d) => self.finished(d),
            Msg::Status { id, reply } => {
                let _ = reply.send(self.status(id));
            }
            Msg::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Msg::Cancel { id, ack, reply } => {
                let _ = reply.send(self.cancel(id, ack));
            }
            Msg::Shutdown { grace, reply } => {
                log::info!("dispatcher: draining (grace {} ms)", grace.as_millis());
                self.draining = Some((Instant::now() + grace, reply));
            }
        }
    }

    fn set_state(&mut self, id: u64, to: State) {
        let e = self.jobs.get_mut(&id).expect("live job");
        let q = e.job.queue as usize;
        self.counts[q][e.state.index()] -= 1;
        self.counts[q][to.index()] += 1;
        e.state = to;
    }

    fn push_ready(&mut self, id: u64) {
        let now_us = self.now_us();
        let order = self.cfg.order;
        let e = self.jobs.get_mut(&id).expect("live job");
        e.ready_at_us = now_us;
        let q = e.job.queue;
        let rank = match order {
            Order::Deadline => e.job.deadline,
            Order::Fifo => {
                self.arrivals += 1;
                self.arrivals
            }
            Order::Priority => {
                self.arrivals += 1;
                (self.priority_of[q as usize] << 48) | self.arrivals
            }
        };
        self.ready.push(q, rank, id);
    }

    fn promote_timers(&mut self) {
        let now = now_ms();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self
                .jobs
                .get(&id)
                .is_some_and(|e| e.state == State::Scheduled)
            {
                self.set_state(id, State::Ready);
                self.push_ready(id);
            }
        }
    }

    fn dispatch(&mut self) {
        if self.draining.is_some() {
            return;
        }
        while !self.free.is_empty() {
            let jobs = &self.jobs;
            let expected = &self.expected_ms;
            let pick = self.ready.pick(
                self.free.len(),
                &mut |id| jobs.get(&id).is_some_and(|e| e.state == State::Ready),
                &mut |q, id| {
                    let kind = jobs.get(&id)?.job.kind;
                    expected.get(&(q, kind)).map(|&ms| ms.ceil() as u64)
                },
            );
            let Some(pick) = pick else { break };
            let worker = self.free.pop().expect("free worker");
            let now = now_ms();
            let now_us = self.now_us();
            self.set_state(pick.id, State::Running);
            let e = self.jobs.get_mut(&pick.id).expect("picked job");
            e.attempt += 1;
            e.attempts.push(AttemptInfo {
                number: e.attempt,
                started_at: now,
                ended_at: None,
                outcome: None,
                error: None,
                exit_code: None,
                output_tail: None,
            });
            let fig = &mut self.figures[pick.queue as usize];
            let _ = fig.wait_us.record(now_us.saturating_sub(e.ready_at_us));
            if now > e.job.deadline {
                fig.misses += 1;
            }
            if pick.borrowed {
                fig.borrowed += 1;
            }
            self.records.push(&Record::Start(Start {
                id: pick.id,
                attempt: e.attempt,
                at: now,
            }));
            let task = Task {
                job: e.job.clone(),
                attempt: e.attempt,
            };
            // A free worker's channel is empty, so this never blocks.
            if self.workers[worker].send(task).is_err() {
                log::error!("worker {worker} is gone");
            }
        }
    }

    fn finished(&mut self, d: Done) {
        self.free.push(d.worker);
        let Some(e) = self.jobs.get(&d.id) else {
            log::warn!(
                "ignoring completion of job {} attempt {}: job no longer live",
                d.id,
                d.attempt
            );
            return;
        };
        if e.state != State::Running || e.attempt != d.attempt {
            log::warn!(
                "ignoring stale completion of job {} attempt {} (current attempt {}, {})",
                d.id,
                d.attempt,
                e.attempt,
                e.state.name()
            );
            return;
        }
        let (q, kind) = (e.job.queue, e.job.kind);
        self.ready.finished(q);
        let run_ms = d.run_us as f64 / 1000.0;
        let fig = &mut self.figures[q as usize];
        let _ = fig.run_us.record(d.run_us);
        let ewma = self.expected_ms.entry((q, kind)).or_insert(run_ms);
        *ewma = 0.8 * *ewma + 0.2 * run_ms;
        let now = now_ms();
        let (state, outcome) = match d.result {
            Ok(()) => (State::Succeeded, Outcome::Succeeded),
            Err(err) => {
                fig.failures += 1;
                (
                    State::Dead,
                    Outcome::Failed {
                        reason: err.reason,
                        exit_code: err.exit_code,
                        output_tail: err.output_tail,
                    },
                )
            }
        };
        let code = if state == State::Succeeded {
            state_code::SUCCEEDED
        } else {
            state_code::DEAD
        };
        let rec = Finish {
            id: d.id,
            attempt: d.attempt,
            at: now,
            state: code,
            outcome,
        };
        self.records.push(&Record::Finish(rec.clone()));
        let e = self.jobs.get_mut(&d.id).expect("live job");
        if let Some(a) = e.attempts.last_mut() {
            apply_finish(a, &rec);
        }
        self.set_state(d.id, state);
        self.retire(d.id, now);
    }

    /// Moves a job that reached a terminal state from the live table into the history.
    fn retire(&mut self, id: u64, now: u64) {
        let e = self.jobs.remove(&id).expect("live job");
        let j = &e.job;
        self.remember(DoneJob {
            id,
            queue: self.queue_names[j.queue as usize].clone(),
            kind: self.kind_names[j.kind as usize].clone(),
            state: e.state,
            submitted_at: j.submitted_at,
            deadline: j.deadline,
            run_at: j.run_at,
            max_attempts: j.max_attempts,
            timeout_ms: j.timeout_ms,
            finished_at: now,
            attempts: e.attempts,
        });
    }

    fn remember(&mut self, done: DoneJob) {
        if self.cfg.history_limit == 0 {
            return;
        }
        while self.history_order.len() >= self.cfg.history_limit {
            if let Some(old) = self.history_order.pop_front() {
                self.history.remove(&old);
            }
        }
        self.history_order.push_back(done.id);
        self.history.insert(done.id, done);
    }

    fn cancel(
        &mut self,
        id: u64,
        ack: Sender<crate::wal::commit::Acked>,
    ) -> Result<(), CancelRefused> {
        let state = match self.jobs.get(&id) {
            Some(e) => e.state,
            None => {
                return match self.history.get(&id) {
                    Some(d) => Err(CancelRefused::NotCancellable(d.state.name())),
                    None => Err(CancelRefused::NotFound),
                }
            }
        };
        if !matches!(state, State::Scheduled | State::Ready) {
            return Err(CancelRefused::NotCancellable(state.name()));
        }
        let now = now_ms();
        // The heap and timer entries are dropped lazily: they no longer point at a live job.
        self.set_state(id, State::Cancelled);
        self.retire(id, now);
        let mut batch = std::mem::take(&mut self.records);
        batch.push(&Record::Cancel(Cancel { id, at: now }));
        self.send_records(batch, Some(ack));
        Ok(())
    }

    fn flush_records(&mut self) {
        if !self.records.is_empty() {
            let batch = std::mem::take(&mut self.records);
            self.send_records(batch, None);
        }
    }

    fn send_records(
        &mut self,
        records: RecordBatch,
        ack: Option<Sender<crate::wal::commit::Acked>>,
    ) {
        let msg = WalMsg::Append(Append {
            records,
            jobs: Vec::new(),
            ack,
        });
        if self.wal.send(msg).is_err() {
            log::error!("dispatcher: the WAL has stopped; state changes are no longer recorded");
        }
    }

    fn status(&self, id: u64) -> Option<JobInfo> {
        if let Some(d) = self.history.get(&id) {
            return Some(d.info());
        }
        let e = self.jobs.get(&id)?;
        let j = &e.job;
        Some(JobInfo {
            id,
            queue: self.queue_names[j.queue as usize].to_string(),
            kind: self.kind_names[j.kind as usize].to_string(),
            state: e.state.name().into(),
            submitted_at: j.submitted_at,
            deadline: j.deadline,
            run_at: j.run_at,
            max_attempts: j.max_attempts,
            timeout_ms: j.timeout_ms,
            finished_at: None,
            payload: serde_json::from_str(&j.payload).ok(),
            attempts: e.attempts.clone(),
        })
    }

    fn stats(&mut self) -> SchedStats {
        let now = now_ms();
        let now_us = self.now_us();
        let mut totals: std::collections::BTreeMap<String, u64> = State::ALL
            .iter()
            .map(|s| (s.name().to_string(), 0))
            .collect();
        let mut queues = std::collections::BTreeMap::new();
        for (q, qc) in self.cfg.queues.iter().enumerate() {
            let mut states = std::collections::BTreeMap::new();
            for s in State::ALL {
                let c = self.counts[q][s.index()];
                states.insert(s.name().to_string(), c);
                *totals.get_mut(s.name()).expect("state") += c;
            }
            let jobs = &self.jobs;
            let head = self
                .ready
                .head(q as u16, &mut |id| {
                    jobs.get(&id).is_some_and(|e| e.state == State::Ready)
                })
                .and_then(|(_, id)| jobs.get(&id));
            let fig = &self.figures[q];
            queues.insert(
                qc.name.clone(),
                QueueStats {
                    states,
                    max_workers: qc.max_workers,
                    reserved: qc.reserved,
                    due_in_ms: qc.due_in.as_millis() as u64,
                    oldest_ready_age_ms: head.map(|e| now_us.saturating_sub(e.ready_at_us) / 1000),
                    slack_ms: head.map(|e| e.job.deadline as i64 - now as i64),
                    deadline_misses: fig.misses,
                    failures: fig.failures,
                    borrowed: fig.borrowed,
                    wait_ms: percentiles(&fig.wait_us),
                    run_ms: percentiles(&fig.run_us),
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

/// Fills in an attempt's end from its `finish` record.
pub fn apply_finish(a: &mut AttemptInfo, f: &Finish) {
    a.ended_at = Some(f.at);
    match &f.outcome {
        Outcome::Succeeded => a.outcome = Some("succeeded".into()),
        Outcome::Failed {
            reason,
            exit_code,
            output_tail,
        } => {
            a.outcome = Some("failed".into());
            a.error = Some(reason.clone());
            a.exit_code = *exit_code;
            a.output_tail = (!output_tail.is_empty()).then(|| output_tail.clone());
        }
    }
}
