//! One function per request: each turns a parsed [`Request`] into its reply slot.
//!
//! Submits only encode their records into the connection's burst (the WAL acknowledges the
//! whole burst at once, and the writer fills in their replies then); every other op is answered
//! here, in order. `cancel`, `dead_retry` and `dead_purge` flush the burst first: their records
//! must follow the submits before them in the log.

use std::sync::Arc;

use super::conn::{flush, Burst, Out, Slot};
use crate::job::{now_ms, Job};
use crate::runtime::Handle;
use crate::wire::reply::{self, write_error, write_ok_with};
use crate::wire::{
    AlertList, Cancelled, CatalogRebuilt, DeadJobs, DeadSelect, ErrorCode, Hello, Ids, JobList,
    JobStatus, Rejection, Request, State, Submit, PROTOCOL_VERSION,
};

/// What a request works with: the runtime, the burst being built, and where bursts go.
pub(super) struct Cx<'a, 'b> {
    pub handle: &'a Handle,
    pub burst: &'a mut Burst,
    pub out: &'a Out<'b>,
}

impl Cx<'_, '_> {
    /// Sends the burst so far (its records reach the log before anything recorded after).
    fn flush(&mut self) {
        flush(self.burst, self.handle, self.out);
    }
}

/// Parses one line and queues its reply.
pub(super) fn handle_line(line: &[u8], cx: &mut Cx<'_, '_>) {
    let slot = match Request::parse(line) {
        Ok(req) => handle(req, cx),
        Err(e) => error_slot(&e),
    };
    cx.burst.slots.push(slot);
}

fn handle(req: Request<'_>, cx: &mut Cx<'_, '_>) -> Slot {
    match req {
        Request::Hello { client } => hello(client.as_deref(), cx),
        Request::Submit(job) => submit(&job, cx),
        Request::SubmitBatch { jobs } => submit_batch(&jobs, cx),
        Request::Status { id } => status(id, cx),
        Request::Log {
            id,
            attempt,
            offset,
        } => ok_or_error(cx.handle.log(id, attempt, offset.unwrap_or(0))),
        Request::Stats => ok_or_error(cx.handle.stats()),
        Request::Cancel { id } => cancel(id, cx),
        Request::DeadList { queue, since } => ok_or_error(
            cx.handle
                .dead_list(queue.as_deref(), since)
                .map(|jobs| DeadJobs { jobs }),
        ),
        Request::DeadRetry(sel) => dead_change(&sel, true, cx),
        Request::DeadPurge(sel) => dead_change(&sel, false, cx),
        Request::Checkpoint => {
            // It covers what this connection submitted before.
            cx.flush();
            ok_or_error(cx.handle.checkpoint())
        }
        Request::Jobs(q) => {
            cx.flush();
            ok_or_error(
                cx.handle
                    .jobs(&crate::catalog::Query::from(&q))
                    .map(|(jobs, more)| JobList { jobs, more }),
            )
        }
        Request::Replay(spec) => {
            cx.flush();
            ok_or_error(cx.handle.replay(&spec))
        }
        Request::QueueSet(c) => ok_or_error(cx.handle.queue_set(&c)),
        Request::QueuePause { queue, for_ms } => ok_or_error(cx.handle.queue_pause(&queue, for_ms)),
        Request::QueueResume { queue } => ok_or_error(cx.handle.queue_resume(&queue)),
        Request::Alerts => ok_or_error(Ok::<_, Rejection>(AlertList {
            alerts: cx.handle.alerts(),
            summary: cx.handle.alert_summary(),
        })),
        Request::CatalogRebuild => {
            ok_or_error(cx.handle.catalog_rebuild().map(|r| CatalogRebuilt {
                records: r.records,
                jobs: r.jobs,
                ms: r.ms,
            }))
        }
    }
}

pub(super) fn error_slot(r: &Rejection) -> Slot {
    let mut out = Vec::with_capacity(128);
    write_error(&mut out, r);
    Slot::Ready(out)
}

fn ready_slot(write: impl FnOnce(&mut Vec<u8>)) -> Slot {
    let mut out = Vec::with_capacity(256);
    write(&mut out);
    Slot::Ready(out)
}

/// The reply for a result: `ok: true` with its fields, or the rejection.
fn ok_or_error<T: serde::Serialize>(r: Result<T, Rejection>) -> Slot {
    match r {
        Ok(v) => ready_slot(|out| write_ok_with(out, &v)),
        Err(e) => error_slot(&e),
    }
}

fn hello(client: Option<&str>, cx: &mut Cx<'_, '_>) -> Slot {
    if let Some(c) = client {
        log::info!("client says hello: {}", c.escape_debug());
    }
    ok_or_error(Ok(Hello {
        protocol: PROTOCOL_VERSION,
        server: concat!("duejob ", env!("CARGO_PKG_VERSION")).into(),
        sync: cx.handle.config().sync.to_string(),
    }))
}

fn submit(job: &Submit<'_>, cx: &mut Cx<'_, '_>) -> Slot {
    match cx.handle.prepare(&job.spec(), now_ms()) {
        Ok(job) => push_jobs(cx, std::iter::once(job), false),
        Err(e) => error_slot(&e),
    }
}

/// All or nothing: every job is validated before any is encoded.
fn submit_batch(jobs: &[Submit<'_>], cx: &mut Cx<'_, '_>) -> Slot {
    let now = now_ms();
    let mut built = Vec::with_capacity(jobs.len());
    for (i, f) in jobs.iter().enumerate() {
        match cx.handle.prepare(&f.spec(), now) {
            Ok(j) => built.push(j),
            Err(e) => {
                return error_slot(&Rejection::new(e.code, format!("jobs[{i}]: {}", e.message)))
            }
        }
    }
    push_jobs(cx, built.into_iter(), true)
}

/// Gives valid jobs their ids, encodes their records into the burst, and returns the slot their
/// reply takes once the WAL acknowledges the burst.
fn push_jobs(cx: &mut Cx<'_, '_>, jobs: impl ExactSizeIterator<Item = Job>, batch: bool) -> Slot {
    let first = cx.handle.reserve_ids(jobs.len() as u64);
    let mut ids = Vec::with_capacity(if batch { jobs.len() } else { 0 });
    for (i, mut job) in jobs.enumerate() {
        job.id = first + i as u64;
        if batch {
            ids.push(job.id);
        }
        cx.handle.encode_submit(&job, &mut cx.burst.records);
        cx.burst.jobs.push(Arc::new(job));
    }
    if batch {
        Slot::Batch(ids)
    } else {
        Slot::Submit(first)
    }
}

fn status(id: u64, cx: &mut Cx<'_, '_>) -> Slot {
    match cx.handle.status(id) {
        Ok(Some(job)) => ok_or_error(Ok(JobStatus { job })),
        Ok(None) => error_slot(&Rejection::new(ErrorCode::NotFound, format!("no job {id}"))),
        Err(e) => error_slot(&e),
    }
}

fn cancel(id: u64, cx: &mut Cx<'_, '_>) -> Slot {
    cx.flush();
    match cx.handle.cancel(id) {
        Ok(was) => ready_slot(|out| {
            reply::write_cancelled(
                out,
                Cancelled {
                    id,
                    state: State::Cancelled,
                    was,
                },
            )
        }),
        Err(e) => error_slot(&e),
    }
}

/// `dead_retry` (`retry`) or `dead_purge`.
fn dead_change(sel: &DeadSelect<'_>, retry: bool, cx: &mut Cx<'_, '_>) -> Slot {
    cx.flush();
    let result = if retry {
        cx.handle.dead_retry(sel)
    } else {
        cx.handle.dead_purge(sel)
    };
    ok_or_error(result.map(|ids| Ids { ids }))
}
