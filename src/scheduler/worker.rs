//! Worker threads. Each worker parks on its own bounded(1) channel; the dispatcher sends it a job
//! only when it is free, and the worker reports back on the dispatcher's channel.
//!
//! A handler panic is caught: the attempt counts as failed and the worker lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{Done, Msg};
use crate::config::Config;
use crate::fail_stop::{fail_stop, panic_message};
use crate::handlers::{JobContext, JobError, Kinds, StopSignal};
use crate::job::JobRef;

/// One job to run.
pub struct Task {
    /// The job.
    pub job: JobRef,
    /// Attempt number.
    pub attempt: u32,
    /// Serial number of the attempt for the worker's stop signal (already armed).
    pub serial: u64,
}

/// Starts worker `index`; returns its task sender, its stop signal and its thread.
pub fn spawn(
    index: usize,
    config: Arc<Config>,
    kinds: Arc<Kinds>,
    done: Sender<Msg>,
) -> (Sender<Task>, Arc<StopSignal>, JoinHandle<()>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let stop = Arc::new(StopSignal::new());
    let signal = stop.clone();
    let h = std::thread::Builder::new()
        .name(format!("duejob-worker-{index}"))
        .spawn(move || fail_stop(|| work(index, rx, &config, &kinds, &done, &signal)))
        .expect("spawn worker");
    (tx, stop, h)
}

fn work(
    index: usize,
    rx: Receiver<Task>,
    config: &Config,
    kinds: &Kinds,
    done: &Sender<Msg>,
    stop: &StopSignal,
) {
    while let Ok(task) = rx.recv() {
        let job = &task.job;
        let ctx = JobContext {
            id: job.id,
            attempt: task.attempt,
            queue: &config.queues[job.queue as usize].name,
            payload: &job.payload,
            timeout: job.timeout_ms.map(Duration::from_millis),
            replay_of: crate::job::replay_of(job.key.as_deref()),
            stop,
            serial: task.serial,
        };
        let t = Instant::now();
        let result = match catch_unwind(AssertUnwindSafe(|| kinds.handler(job.kind).run(&ctx))) {
            Ok(r) => r,
            Err(p) => Err(JobError::new(format!(
                "handler panicked: {}",
                panic_message(p.as_ref())
            ))),
        };
        let msg = Msg::Done(Done {
            worker: index,
            id: job.id,
            queue: job.queue,
            attempt: task.attempt,
            result,
            run_us: t.elapsed().as_micros() as u64,
        });
        if done.send(msg).is_err() {
            return;
        }
    }
}
