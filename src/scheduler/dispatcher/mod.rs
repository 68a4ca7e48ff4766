//! The dispatcher thread: the one owner of job state.
//!
//! It receives durable jobs (from the WAL thread), finished attempts (from workers) and queries
//! (from connections) on one channel, and after each burst of messages it promotes due timers,
//! hands ready jobs to free workers, and sends its `start`/`finish`/`retry` records to the WAL in
//! batches (see `RECORDS_BATCH`). Nothing else touches job state, so nothing on this path takes
//! a lock.
//!
//! This file holds the thread, its loop, admission, timers, dispatch and completion;
//! `lifecycle.rs` failures, retries, death, cancellation, dead letters and the history;
//! `report.rs` what `status` and `stats` show.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::idmap::{id_map, IdMap};

mod lifecycle;
mod report;

pub(crate) use report::percentiles;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;

use super::handoff::{self, Handed, Handoff};
use super::lateness::{Lateness, Left};
use super::ready::{Limits, ReadySet};
use super::recent::Recent;
use super::table::JobTable;
use super::worker::{self, Task};
use super::{Done, Msg};
use crate::config::{Config, Order};
use crate::handlers::{JobError, Kinds, StopReason, StopSignal};
use crate::job::machine::{self, JobCore, Stale, Transition};
use crate::job::WalMsg;
use crate::job::{now_ms, JobRef, LiveSize, State};
use crate::wal::commit::{Ack, Append, Queue, RecordBatch};
use crate::wal::record::{Record, Start};
use crate::wal::WalError;
use crate::wire::JobInfo;

/// A non-terminal or dead job recovered from the WAL: `scheduled`, `ready`, `retrying` or
/// `dead` (recovery leaves no job `running`).
#[derive(Debug, Clone)]
pub struct LiveJob {
    /// The job.
    pub job: JobRef,
    /// Its progress.
    pub core: JobCore,
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
    /// Idempotency key.
    pub key: Option<Box<str>>,
    /// Its end state, when it ended, and its timeline.
    pub core: JobCore,
}

impl DoneJob {
    /// The terminal state.
    pub fn state(&self) -> State {
        self.core.state
    }

    fn info(&self) -> JobInfo {
        JobInfo {
            id: self.id,
            queue: self.queue.to_string(),
            kind: self.kind.to_string(),
            state: self.core.state,
            submitted_at: self.submitted_at,
            deadline: self.deadline,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            key: self.key.as_deref().map(Into::into),
            replay_of: crate::job::replay_of(self.key.as_deref()),
            next_attempt_at: None,
            finished_at: self.core.finished_at(),
            payload: None,
            attempts: self.core.attempts.clone(),
        }
    }
}

/// What recovery hands the dispatcher.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Non-terminal jobs.
    pub live: Vec<LiveJob>,
    /// Terminal jobs, oldest first.
    pub done: History,
    /// Per queue (by index): paused until then (ms; `u64::MAX`: until resumed).
    pub paused: Vec<Option<u64>>,
}

/// Finished jobs, oldest first, decoded when first needed: the dispatcher restores them after
/// the live jobs, so that a restart's time does not depend on the history.
#[derive(Default)]
pub struct History {
    decode: Option<Box<dyn FnOnce() -> Vec<DoneJob> + Send>>,
    jobs: Vec<DoneJob>,
}

impl History {
    /// The jobs `decode` gives, when first asked for.
    pub fn later(decode: impl FnOnce() -> Vec<DoneJob> + Send + 'static) -> History {
        History {
            decode: Some(Box::new(decode)),
            jobs: Vec::new(),
        }
    }

    /// The jobs (decoded now, if they were not yet).
    pub fn get(&mut self) -> &mut Vec<DoneJob> {
        if let Some(d) = self.decode.take() {
            self.jobs = d();
        }
        &mut self.jobs
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decode {
            Some(_) => f.write_str("History(not yet decoded)"),
            None => f.debug_tuple("History").field(&self.jobs).finish(),
        }
    }
}

/// How long a handler told to stop (timeout) may take before its attempt is given up.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// Restarts an attempt may be interrupted by before the job is ended `dead`.
pub const MAX_INTERRUPTIONS: u32 = 10;

/// `Entry::worker` of a job not on a worker.
const IDLE: u16 = u16::MAX;

struct Entry {
    job: JobRef,
    core: JobCore,
    /// Monotonic µs when it became ready.
    ready_at_us: u64,
    /// The worker running it, or [`IDLE`].
    worker: u16,
    /// Whether the running attempt's timeout fired.
    timed_out: bool,
    /// Whether it was counted as missed (ready past its deadline): once per job.
    missed: bool,
    /// Whether it came back from the log at start-up: its `start` records go to the WAL before
    /// it runs, not with the next batch, so that a job that crashes the daemon at once has its
    /// attempts counted (G3: ten interruptions end it).
    recovered: bool,
}

struct QueueFigures {
    wait_us: Histogram<u64>,
    run_us: Histogram<u64>,
    /// The last minute.
    recent: Recent,
    /// When misses were last logged.
    late_logged: Option<Instant>,
    failures: u64,
    retries: u64,
    timeouts: u64,
    borrowed: u64,
}

impl QueueFigures {
    fn new() -> QueueFigures {
        QueueFigures {
            wait_us: Histogram::new(3).expect("histogram"),
            run_us: Histogram::new(3).expect("histogram"),
            recent: Recent::default(),
            late_logged: None,
            failures: 0,
            retries: 0,
            timeouts: 0,
            borrowed: 0,
        }
    }
}

/// A queue's settings that an operator may change while the daemon runs.
#[derive(Debug, Clone, Copy)]
struct LiveQueue {
    limits: Limits,
    due_in: Duration,
    /// Paused until then (ms; `u64::MAX`: until resumed).
    paused_until: Option<u64>,
}

/// How often a queue's newly late jobs may be logged.
const LATE_LOG_EVERY: Duration = Duration::from_secs(10);

/// `-1.7s`.
fn signed_secs(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// Most messages handled before the dispatcher dispatches again.
const BURST: usize = 4096;

/// The dispatcher's own records (starts, ends, retries) go to the WAL, as one append, at the
/// end of a pass that leaves at least this many pending, or [`RECORDS_WAIT`] after the pass that
/// made the first of them (a deadline of its sleep), or before it handles a request (no reply
/// tells of a state whose record it still holds), or before a job recovered at start-up runs
/// again (the `start` records of that dispatch first), or when it stops: one wake-up and one write of the commit thread per batch
/// instead of one per pass.
const RECORDS_BATCH: usize = 512;

/// See [`RECORDS_BATCH`].
const RECORDS_WAIT: Duration = Duration::from_millis(1);

/// What a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A scheduled or retrying job becomes ready.
    Ready,
    /// A running attempt reaches its timeout: signal it.
    Timeout(u32),
    /// A signalled attempt did not stop within the grace: give it up.
    GiveUp(u32),
}

/// The dispatcher's state. Built by [`spawn`].
pub struct Dispatcher {
    cfg: Arc<Config>,
    kinds: Arc<Kinds>,
    queue_names: Vec<Arc<str>>,
    kind_names: Vec<Arc<str>>,
    /// Every non-terminal job, and dead jobs (which can be retried).
    jobs: JobTable<Entry>,
    history: IdMap<DoneJob>,
    history_order: VecDeque<u64>,
    ready: ReadySet,
    timers: BinaryHeap<Reverse<(u64, u64, Timer)>>,
    workers: Vec<Sender<Task>>,
    signals: Vec<Arc<StopSignal>>,
    /// The attempt serial each worker's signal is armed for.
    serials: Vec<u64>,
    worker_threads: Vec<JoinHandle<()>>,
    free: Vec<usize>,
    serial: u64,
    wal: Queue<JobRef>,
    records: RecordBatch,
    /// When the oldest record in `records` was put there (noticed at the end of a pass).
    records_since: Option<Instant>,
    /// The tasks of one `dispatch` call, sent once their records are on their way (kept for
    /// its allocation).
    tasks: Vec<(usize, Task)>,
    counts: Vec<Counts>,
    /// Per (queue × kinds + kind): submitted, succeeded, dead, retries since start-up.
    kind_counts: Vec<super::KindCounts>,
    /// Each queue's live settings (the config's, or the operator's changes).
    live_queues: Vec<LiveQueue>,
    lateness: Lateness,
    figures: Vec<QueueFigures>,
    expected_ms: HashMap<(u16, u16), f64>,
    priority_of: Vec<u64>,
    arrivals: u64,
    clock: Instant,
    rng: u64,
    draining: Option<(Instant, Sender<()>)>,
    /// Set once the WAL has failed: nothing can be recorded, so nothing more is started.
    wal_failed: Option<Arc<WalError>>,
    /// The size of `jobs`, for the checkpointer (counted when a job arrives and when it retires).
    live: Arc<LiveSize>,
    /// Durable jobs from the WAL (taken before every message and before every sleep).
    handoff: Arc<Handoff>,
    /// Jobs were taken since the dispatcher last woke: sleep at most [`handoff::LAZY`].
    took: bool,
}

/// Starts the workers and the dispatcher thread, which reads `rx` and takes durable jobs from
/// `handoff`.
pub fn spawn(
    cfg: Arc<Config>,
    kinds: Arc<Kinds>,
    recovered: Recovered,
    wal: Queue<JobRef>,
    tx: Sender<Msg>,
    (rx, handoff): (Receiver<Msg>, Arc<Handoff>),
    live: Arc<LiveSize>,
) -> JoinHandle<()> {
    let mut workers = Vec::new();
    let mut signals = Vec::new();
    let mut worker_threads = Vec::new();
    for i in 0..cfg.workers {
        let (w, sig, h) = worker::spawn(i, cfg.clone(), kinds.clone(), tx.clone());
        workers.push(w);
        signals.push(sig);
        worker_threads.push(h);
    }
    drop(tx);
    let limits: Vec<Limits> = cfg
        .queues
        .iter()
        .map(|q| Limits {
            max_workers: q.max_workers,
            reserved: q.reserved,
            lend_limit_ms: q.lend_limit.as_millis() as u64,
        })
        .collect();
    let now = now_ms();
    let live_queues: Vec<LiveQueue> = cfg
        .queues
        .iter()
        .zip(&limits)
        .enumerate()
        .map(|(i, (q, &limits))| LiveQueue {
            limits,
            due_in: q.due_in,
            paused_until: recovered.paused.get(i).copied().flatten().filter(|&t| t > now),
        })
        .collect();
    let mut ready = ReadySet::new(cfg.order, limits);
    for (i, q) in live_queues.iter().enumerate() {
        ready.set_paused(i as u16, q.paused_until.is_some());
    }
    let mut by_urgency: Vec<usize> = (0..cfg.queues.len()).collect();
    by_urgency.sort_by_key(|&i| cfg.queues[i].due_in);
    let mut priority_of = vec![0u64; cfg.queues.len()];
    for (rank, q) in by_urgency.into_iter().enumerate() {
        priority_of[q] = rank as u64;
    }
    let n = cfg.queues.len();
    let seed = now_ms() ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
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
        jobs: JobTable::with_capacity(recovered.live.len()),
        history: id_map(0),
        history_order: VecDeque::new(),
        ready,
        live_queues,
        timers: BinaryHeap::new(),
        free: (0..workers.len()).rev().collect(),
        workers,
        serials: vec![0; signals.len()],
        signals,
        worker_threads,
        serial: 0,
        wal,
        records: RecordBatch::new(),
        records_since: None,
        tasks: Vec::new(),
        counts: vec![[0; State::ALL.len()]; n],
        kind_counts: vec![[0; 4]; n * kinds.names().len()],
        lateness: Lateness::new(n, now_ms()),
        figures: (0..n).map(|_| QueueFigures::new()).collect(),
        expected_ms: HashMap::new(),
        priority_of,
        arrivals: 0,
        clock: Instant::now(),
        rng: seed | 1,
        handoff,
        took: false,
        draining: None,
        wal_failed: None,
        live,
        cfg,
        kinds,
    };
    // Restoring a large recovered state takes a while; it happens on the dispatcher's own thread,
    // so the daemon accepts submits meanwhile (they wait in the channel until it is done).
    std::thread::Builder::new()
        .name("duejob-dispatch".into())
        .spawn(move || {
            crate::fail_stop::fail_stop(|| {
                let t = Instant::now();
                let n = recovered.live.len();
                d.restore(recovered);
                if n > 0 {
                    log::info!(
                        "dispatcher restored {n} live jobs in {:.1} ms",
                        t.elapsed().as_secs_f64() * 1000.0
                    );
                }
                d.run(rx)
            })
        })
        .expect("spawn dispatcher")
}

impl Dispatcher {
    fn restore(&mut self, mut rec: Recovered) {
        let now = now_ms();
        for live in rec.live {
            self.insert(live.job, live.core, now, true);
        }
        let done = std::mem::take(rec.done.get());
        self.history.reserve(done.len().min(self.cfg.history_limit));
        for done in done {
            if let Some(q) = self.queue_names.iter().position(|n| *n == done.queue) {
                self.counts[q][done.state().index()] += 1;
            }
            self.remember(done);
        }
    }

    /// Adds a job to the table, counts it by state (its size in [`LiveSize`] is the caller's:
    /// the runtime counts the recovered ones before the threads start), and starts it on its way: to the ready set, or to the
    /// timers if it waits for its `run_at` or its retry.
    fn insert(&mut self, job: JobRef, core: JobCore, now: u64, recovered: bool) {
        let (id, q) = (job.id, job.queue as usize);
        self.counts[q][core.state.index()] += 1;
        let entry = Entry {
            job,
            core,
            ready_at_us: 0,
            worker: IDLE,
            timed_out: false,
            missed: false,
            recovered,
        };
        self.jobs.insert(id, entry);
        let e = &self.jobs[&id];
        match e.core.state {
            State::Scheduled => match e.job.run_at {
                Some(at) if at > now => self.timers.push(Reverse((at, id, Timer::Ready))),
                _ => self.wake(id),
            },
            State::Retrying => self.timers.push(Reverse((e.core.at, id, Timer::Ready))),
            State::Ready => self.push_ready(id),
            _ => {}
        }
    }

    /// Applies a record the dispatcher built (or had recorded) to a job, keeping the counts by
    /// state.
    fn apply(&mut self, id: u64, rec: &Record<'_>) -> Result<Transition, Stale> {
        let e = self.jobs.get_mut(&id).expect("live job");
        apply_counted(&mut self.counts, &mut self.lateness, e, rec)
    }

    /// A scheduled or retrying job's time came: it goes to the ready set.
    fn wake(&mut self, id: u64) {
        let e = self.jobs.get_mut(&id).expect("live job");
        let from = e.core.state;
        if e.core.wake() {
            recount(&mut self.counts, e, from);
            self.push_ready(id);
        }
    }

    /// Counts one event of a job of `queue` and `kind`.
    fn count_kind(&mut self, queue: u16, kind: u16, what: super::KindCount) {
        let i = queue as usize * self.kind_names.len() + kind as usize;
        if let Some(c) = self.kind_counts.get_mut(i) {
            c[what as usize] += 1;
        }
    }

    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    fn run(mut self, rx: Receiver<Msg>) {
        // Recovered jobs are runnable before any message arrives.
        self.fire_timers();
        self.dispatch();
        self.flush_records();
        loop {
            let mut wake = self.next_wake();
            if let Some(t) = self.records_since {
                let due = t + RECORDS_WAIT;
                wake = Some(wake.map_or(due, |w| w.min(due)));
            }
            if self.took {
                // Jobs are coming in: take the next ones soon even if none wakes us.
                let cap = Instant::now() + handoff::LAZY;
                wake = Some(wake.map_or(cap, |w| w.min(cap)));
            }
            let first = if self.handoff.sleep_until(wake.map(epoch_ms_at)) {
                let m = match wake {
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
                self.handoff.awake();
                m
            } else {
                // Jobs came while it was about to sleep: take them, and the channel's next
                // message too (a stream of jobs must not keep completions and requests waiting).
                self.handoff.awake();
                match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(crossbeam_channel::TryRecvError::Empty) => None,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                }
            };
            self.took = false;
            self.take_jobs();
            if let Some(m) = first {
                self.handle(m);
                for m in rx.try_iter().take(BURST) {
                    // Jobs handed on before the message was sent are in the table first.
                    self.take_jobs();
                    self.handle(m);
                }
            }
            self.resume_due();
            self.fire_timers();
            self.dispatch();
            self.flush_records_due();
            self.sweep_late();
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
        let timer = self.timers.peek().map(|Reverse((at, _, _))| {
            Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
        });
        let drain = self.draining.as_ref().map(|(d, _)| *d);
        let sweep = self.lateness.next_sweep().map(|at| {
            Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
        });
        let resume = self
            .live_queues
            .iter()
            .filter_map(|q| q.paused_until)
            .filter(|&t| t != u64::MAX)
            .min()
            .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms())));
        [timer, drain, sweep, resume].into_iter().flatten().min()
    }

    /// Resumes the queues whose pause (`queue pause --for`) has run out.
    fn resume_due(&mut self) {
        let now = now_ms();
        for (i, q) in self.live_queues.iter_mut().enumerate() {
            if q.paused_until.is_some_and(|t| t <= now) {
                q.paused_until = None;
                self.ready.set_paused(i as u16, false);
                log::info!("queue {}: its pause ran out; resumed", self.queue_names[i]);
            }
        }
    }

    /// Counts the ready jobs whose deadline just passed as late, and says so in the log (at
    /// most once per [`LATE_LOG_EVERY`] per queue).
    fn sweep_late(&mut self) {
        let now = now_ms();
        self.lateness.sweep(now);
        for q in 0..self.figures.len() {
            let fig = &mut self.figures[q];
            if fig.late_logged.is_some_and(|t| t.elapsed() < LATE_LOG_EVERY) {
                continue;
            }
            let newly = self.lateness.take_unlogged(q as u16);
            if newly == 0 {
                continue;
            }
            fig.late_logged = Some(Instant::now());
            let late = self.lateness.late(q as u16);
            let worst = self
                .lateness
                .worst(q as u16)
                .map(|d| format!(", worst {}", signed_secs(d as i64 - now as i64)))
                .unwrap_or_default();
            log::warn!(
                "queue {}: {newly} more job(s) past their deadline; {late} ready and late now{worst}",
                self.queue_names[q]
            );
        }
    }

    /// Takes in every job the WAL has handed on, in log order, and its failure.
    fn take_jobs(&mut self) {
        while let Some(handed) = self.handoff.take_one() {
            match handed {
                Handed::Jobs(jobs) => {
                    self.took = true;
                    let now = now_ms();
                    for job in jobs {
                        let core = JobCore::with_run_at(job.run_at);
                        self.live.add(&job, 1);
                        self.count_kind(job.queue, job.kind, super::KindCount::Submitted);
                        self.insert(job, core, now, false);
                    }
                }
                Handed::Failed(e) => {
                    let running = self.workers.len() - self.free.len();
                    log::error!("the WAL failed ({e}): no job is started until the daemon restarts; {running} running job(s) finish, but their ends cannot be recorded (they run again after the restart)");
                    self.wal_failed = Some(e);
                }
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        if !matches!(m, Msg::Wake | Msg::Done(_) | Msg::QueueSettings { .. }) {
            // No reply tells of a state whose records are still here: they are in the commit
            // thread's queue before the reply goes out (written once it takes them).
            self.flush_records();
        }
        match m {
            Msg::Wake => {}
            Msg::Done(d) => self.finished(d),
            Msg::Status { id, reply } => {
                let _ = reply.send(self.status(id));
            }
            Msg::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            Msg::States { ids, reply } => {
                let _ = reply.send(ids.iter().map(|&id| self.state_of(id)).collect());
            }
            Msg::QueueSettings {
                queue,
                limits,
                due_in,
                paused_until,
            } => {
                let now = now_ms();
                let q = &mut self.live_queues[queue as usize];
                q.limits = limits;
                q.due_in = due_in;
                q.paused_until = paused_until.filter(|&t| t > now);
                self.ready.set_limits(queue, limits);
                self.ready.set_paused(queue, q.paused_until.is_some());
            }
            Msg::Ready { queue, reply } => {
                let n = self
                    .counts
                    .get(queue as usize)
                    .map_or(0, |c| c[crate::job::State::Ready.index()]);
                let _ = reply.send(n);
            }
            Msg::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Msg::Cancel { id, reply } => {
                let _ = reply.send(self.cancel(id));
            }
            Msg::DeadList {
                queue,
                since,
                reply,
            } => {
                let _ = reply.send(self.dead_list(queue, since));
            }
            Msg::DeadRetry { which, reply } => {
                let _ = reply.send(self.dead_retry(&which));
            }
            Msg::DeadPurge { which, reply } => {
                let _ = reply.send(self.dead_purge(&which));
            }
            Msg::Shutdown { grace, reply } => {
                log::info!("dispatcher: draining (grace {} ms)", grace.as_millis());
                self.draining = Some((Instant::now() + grace, reply));
            }
        }
    }

    /// Puts a `ready` job into the ready set.
    fn push_ready(&mut self, id: u64) {
        let now_us = self.now_us();
        let order = self.cfg.order;
        let e = self.jobs.get_mut(&id).expect("live job");
        debug_assert_eq!(e.core.state, State::Ready);
        e.ready_at_us = now_us;
        let q = e.job.queue;
        if self.lateness.entered(q, e.job.deadline, e.missed) {
            e.missed = true;
        }
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

    /// Runs every timer that is due: ready-ups, timeouts, give-ups.
    fn fire_timers(&mut self) {
        let now = now_ms();
        while let Some(&Reverse((at, id, what))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(e) = self.jobs.get_mut(&id) else {
                continue;
            };
            match what {
                Timer::Ready => {
                    let due = match e.core.state {
                        State::Scheduled => true,
                        State::Retrying => e.core.at == at,
                        _ => false,
                    };
                    if due {
                        self.wake(id);
                    }
                }
                Timer::Timeout(attempt) => {
                    if e.core.state != State::Running
                        || e.core.attempt != attempt
                        || e.worker == IDLE
                        || e.timed_out
                    {
                        continue;
                    }
                    e.timed_out = true;
                    let w = e.worker as usize;
                    self.signals[w].raise(self.serials[w], StopReason::TimedOut);
                    log::warn!("job {id} attempt {attempt} timed out; told its handler to stop");
                    let give_up = now + TIMEOUT_GRACE.as_millis() as u64;
                    self.timers
                        .push(Reverse((give_up, id, Timer::GiveUp(attempt))));
                }
                Timer::GiveUp(attempt) => {
                    if e.core.state == State::Running && e.core.attempt == attempt {
                        let ms = e.job.timeout_ms.unwrap_or(0);
                        log::error!("job {id} attempt {attempt}: the handler did not stop after its timeout; giving the attempt up (its worker stays busy until it returns)");
                        let err = JobError::new(format!(
                            "timed out after {ms} ms; the handler did not stop within {} ms",
                            TIMEOUT_GRACE.as_millis()
                        ));
                        self.attempt_failed(id, err, true);
                    }
                }
            }
        }
    }

    fn dispatch(&mut self) {
        if self.draining.is_some() || self.wal_failed.is_some() {
            return;
        }
        let mut tasks = std::mem::take(&mut self.tasks);
        let mut recovered_any = false;
        while !self.free.is_empty() {
            let jobs = &self.jobs;
            let expected = &self.expected_ms;
            let pick = self.ready.pick(
                self.free.len(),
                &mut |id| jobs.get(&id).is_some_and(|e| e.core.state == State::Ready),
                &mut |q, id| {
                    let kind = jobs.get(&id)?.job.kind;
                    expected.get(&(q, kind)).map(|&ms| ms.ceil() as u64)
                },
            );
            let Some(pick) = pick else { break };
            let worker = self.free.pop().expect("free worker");
            let now = now_ms();
            let now_us = self.now_us();
            self.serial += 1;
            let serial = self.serial;
            let e = self.jobs.get_mut(&pick.id).expect("picked job");
            let start = Record::Start(Start {
                id: pick.id,
                attempt: e.core.attempt + 1,
                at: now,
            });
            let started = apply_counted(&mut self.counts, &mut self.lateness, e, &start);
            debug_assert!(started.is_ok(), "{started:?}");
            e.worker = worker as u16;
            e.timed_out = false;
            self.serials[worker] = serial;
            let fig = &mut self.figures[pick.queue as usize];
            let waited = now_us.saturating_sub(e.ready_at_us);
            let _ = fig.wait_us.record(waited);
            fig.recent.wait(now_us, waited);
            if pick.borrowed {
                fig.borrowed += 1;
            }
            let attempt = e.core.attempt;
            if let Some(t) = e.job.timeout_ms {
                self.timers
                    .push(Reverse((now + t, pick.id, Timer::Timeout(attempt))));
            }
            let recovered = e.recovered;
            let task = Task {
                job: e.job.clone(),
                attempt,
                serial,
            };
            self.records.push(&start);
            recovered_any |= recovered;
            self.signals[worker].arm(serial);
            tasks.push((worker, task));
        }
        if recovered_any {
            // A job that ran before a restart: its start goes to the WAL before it runs again,
            // so that a job that crashes the daemon at once is counted (G3).
            self.flush_records();
        }
        for (worker, task) in tasks.drain(..) {
            // A free worker's channel is empty, so this never blocks.
            if self.workers[worker].send(task).is_err() {
                log::error!("worker {worker} is gone");
            }
        }
        self.tasks = tasks;
    }

    fn finished(&mut self, d: Done) {
        let now_us = self.now_us();
        // Whatever became of the job, this worker is free now and no longer counts for its queue.
        self.free.push(d.worker);
        self.ready.finished(d.queue);
        let current = self.jobs.get(&d.id).and_then(|e| {
            (e.worker != IDLE && e.core.state == State::Running && e.core.attempt == d.attempt)
                .then_some(e.timed_out)
        });
        let Some(timed_out) = current else {
            log::warn!(
                "ignoring the late completion of job {} attempt {}: the attempt was already given up (timeout, cancel or restart)",
                d.id,
                d.attempt
            );
            return;
        };
        let e = self.jobs.get_mut(&d.id).expect("live job");
        e.worker = IDLE;
        // A handler that enforces the timeout itself (exec's watchdog) may report before the
        // dispatcher's timer fires: a failure after the full timeout is a timeout either way.
        let timed_out = timed_out
            || (d.result.is_err() && e.job.timeout_ms.is_some_and(|t| d.run_us >= t * 1000));
        let (q, kind) = (e.job.queue, e.job.kind);
        let run_ms = d.run_us as f64 / 1000.0;
        let fig = &mut self.figures[q as usize];
        let _ = fig.run_us.record(d.run_us);
        fig.recent.run(now_us, d.run_us);
        let ewma = self.expected_ms.entry((q, kind)).or_insert(run_ms);
        *ewma = 0.8 * *ewma + 0.2 * run_ms;
        match (d.result, timed_out) {
            (Ok(()), false) => self.succeeded(d.id),
            (Ok(()), true) => {
                let ms = e.job.timeout_ms.unwrap_or(0);
                self.attempt_failed(
                    d.id,
                    JobError::new(format!("timed out after {ms} ms")),
                    true,
                )
            }
            (Err(err), t) => self.attempt_failed(d.id, err, t),
        }
    }

    /// Sends the pending records if enough are pending, or the oldest has waited long enough.
    fn flush_records_due(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let since = *self.records_since.get_or_insert_with(Instant::now);
        if self.records.len() >= RECORDS_BATCH || since.elapsed() >= RECORDS_WAIT {
            self.flush_records();
        }
    }

    fn flush_records(&mut self) {
        self.records_since = None;
        if !self.records.is_empty() {
            let batch = std::mem::take(&mut self.records);
            self.send_records(batch, None);
        }
    }

    /// Appends `records` (after the pending ones) and waits until the WAL says what became of
    /// them: for operations that change a job only once their records are durable (cancel,
    /// dead retry and purge). The dispatcher blocks for one group commit; the WAL thread never
    /// waits on the dispatcher, so this cannot deadlock.
    fn record_and_wait(&mut self, records: RecordBatch) -> Ack {
        self.flush_records();
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send_records(records, Some(tx));
        rx.recv()
            .unwrap_or_else(|_| Ack::not_recorded(Arc::new(WalError::Closed)))
    }

    fn send_records(&mut self, records: RecordBatch, ack: Option<Sender<Ack>>) {
        let msg = WalMsg::Append(Append {
            records,
            jobs: Vec::new(),
            ack,
        });
        if self.wal.send(msg).is_err() {
            log::error!("dispatcher: the WAL has stopped; state changes are no longer recorded");
        }
    }
}

/// `at` in ms since the epoch, rounded up (a job due before it wakes the dispatcher; one due at
/// or after it is taken in when the dispatcher wakes, at most about 1 ms after it: `now_ms` is
/// rounded down).
fn epoch_ms_at(at: Instant) -> u64 {
    let d = at.saturating_duration_since(Instant::now());
    now_ms() + d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0)
}

/// One queue's jobs by state, indexed by [`State::index`].
type Counts = [u64; State::ALL.len()];

/// Applies `rec` to a job through the state machine and moves it between the counts by state;
/// a job leaving `ready` (started, cancelled) leaves its deadline bucket at the record's time
/// (`push_ready` puts a job entering it in; only records make a job leave it).
fn apply_counted(
    counts: &mut [Counts],
    late: &mut Lateness,
    e: &mut Entry,
    rec: &Record<'_>,
) -> Result<Transition, Stale> {
    let from = e.core.state;
    let t = machine::apply(&mut e.core, rec);
    recount(counts, e, from);
    if from == State::Ready
        && e.core.state != State::Ready
        && late.left(e.job.queue, e.job.deadline, rec.time(), e.missed) == Left::Late
    {
        e.missed = true;
    }
    t
}

/// Moves a job whose state was `from` to the count of its state now.
fn recount(counts: &mut [Counts], e: &Entry, from: State) {
    let to = e.core.state;
    if to != from {
        let q = e.job.queue as usize;
        counts[q][from.index()] -= 1;
        counts[q][to.index()] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::commit::{queue, WalMsg};
    use crate::wal::record::SCHEMA;

    fn test_job(id: u64, kind: u16) -> JobRef {
        Arc::new(crate::job::Job {
            id,
            queue: 0,
            kind,
            payload: "{}".into(),
            key: None,
            submitted_at: now_ms(),
            deadline: now_ms() + 30_000,
            run_at: None,
            max_attempts: 3,
            timeout_ms: None,
        })
    }

    /// Calls `f` with every record the dispatcher has sent to the WAL so far.
    fn take_records(inbox: &crate::wal::commit::Inbox<JobRef>, f: &mut dyn FnMut(Record<'_>)) {
        while let Some(m) = inbox.try_recv() {
            let WalMsg::Append(a) = m else { continue };
            for (rtype, body) in a.records.iter() {
                if let Ok(r) = Record::decode(rtype, SCHEMA, body) {
                    f(r);
                }
            }
        }
    }

    fn shut_down(tx: &Sender<Msg>, thread: JoinHandle<()>) {
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        tx.send(Msg::Shutdown {
            grace: Duration::from_secs(5),
            reply: rtx,
        })
        .unwrap();
        rrx.recv().unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn the_dispatchers_records_reach_the_wal_before_a_reply_tells_of_them_and_by_themselves_when_idle() {
        // The dispatcher batches its records (up to RECORDS_WAIT), but never past a reply that
        // tells of them: when a status says succeeded, the finish record is in the WAL's queue.
        let cfg = Arc::new(Config::with_workers(2));
        let kinds = Arc::new(Kinds::builtin());
        let noop = kinds.id("noop").unwrap();
        let (wal, inbox) = queue::<JobRef>(None);
        let (tx, rx) = crossbeam_channel::unbounded();
        let handoff = Arc::new(Handoff::default());
        let thread = spawn(
            cfg,
            kinds,
            Recovered::default(),
            wal,
            tx.clone(),
            (rx, handoff.clone()),
            Arc::default(),
        );
        let mut finished = std::collections::HashSet::new();
        let take_finished = |finished: &mut std::collections::HashSet<u64>| {
            take_records(&inbox, &mut |r| {
                if let Record::Finish(f) = r {
                    finished.insert(f.id);
                }
            })
        };
        let job = |id| test_job(id, noop);
        for id in 1..=50u64 {
            handoff.hand_on(vec![job(id)], &tx);
            loop {
                let (rtx, rrx) = crossbeam_channel::bounded(1);
                tx.send(Msg::Status { id, reply: rtx }).unwrap();
                let info = rrx.recv().unwrap();
                if info.is_some_and(|i| i.state == crate::wire::State::Succeeded) {
                    break;
                }
            }
            take_finished(&mut finished);
            assert!(
                finished.contains(&id),
                "job {id}: status said succeeded before its finish record went to the WAL"
            );
        }
        // Nobody asks: the batch still goes out by itself (RECORDS_WAIT), the dispatcher idle.
        handoff.hand_on(vec![job(51)], &tx);
        let give_up = Instant::now() + Duration::from_secs(30);
        while !finished.contains(&51) {
            assert!(Instant::now() < give_up, "job 51's finish record never went to the WAL");
            std::thread::sleep(Duration::from_millis(1));
            take_finished(&mut finished);
        }
        shut_down(&tx, thread);
    }

    #[test]
    fn a_recovered_job_runs_again_only_after_its_start_record_went_to_the_wal() {
        // A job that crashes the daemon the moment it runs must have each attempt counted (ten
        // end it), so its start cannot wait in the dispatcher's batch while it runs.
        let (ran_tx, ran_rx) = crossbeam_channel::bounded::<u64>(1);
        let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
        let mut kinds = Kinds::empty();
        kinds.register(
            "probe",
            Arc::new(move |ctx: &crate::handlers::JobContext<'_>| {
                let _ = ran_tx.send(ctx.id);
                let _ = go_rx.recv();
                Ok(())
            }),
        );
        let (wal, inbox) = queue::<JobRef>(None);
        let (tx, rx) = crossbeam_channel::unbounded();
        // One worker: job 7 runs in the first pass, job 8 in a later one, once 7 is done.
        let recovered = Recovered {
            live: [7, 8]
                .map(|id| LiveJob {
                    job: test_job(id, 0),
                    core: JobCore::with_run_at(None),
                })
                .into(),
            ..Recovered::default()
        };
        let thread = spawn(
            Arc::new(Config::with_workers(1)),
            Arc::new(kinds),
            recovered,
            wal,
            tx.clone(),
            (rx, Arc::new(Handoff::default())),
            Arc::default(),
        );
        let mut started = std::collections::HashSet::new();
        for _ in 0..2 {
            let id = ran_rx.recv().unwrap();
            // The handler runs: its start record is in the WAL's queue already.
            take_records(&inbox, &mut |r| {
                if let Record::Start(st) = r {
                    started.insert(st.id);
                }
            });
            assert!(
                started.contains(&id),
                "recovered job {id} ran before its start record went to the WAL"
            );
            go_tx.send(()).unwrap();
        }
        shut_down(&tx, thread);
    }

}
