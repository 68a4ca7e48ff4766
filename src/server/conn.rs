//! One connection: a reader thread (this one) and a writer thread.
//!
//! The reader parses every complete line it has buffered before it reads again. Submits in that
//! burst become one WAL append (one message to the commit thread, so 100 pipelined submits cost
//! one channel send and share one fdatasync). The burst's replies, in request order, go to the
//! writer as one `Group`; the writer sends a group's replies once the WAL acknowledges it, and
//! groups strictly in order, so replies always match request order.
//!
//! Requests answered by the dispatcher (`status`, `stats`, `cancel`) are answered synchronously by
//! the reader and slot into the group in order.

use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};

use super::lines::{Line, LineReader};
use crate::job::{now_ms, JobRef};
use crate::protocol::{self, code, Request};
use crate::runtime::{wal_rejection, Handle, Rejection};
use crate::scheduler::DeadFilter;
use crate::wal::commit::{Acked, RecordBatch};

/// Flush a burst to the WAL once it holds this many encoded bytes.
const BURST_BYTES: usize = 1 << 20;

/// A reply slot.
enum Slot {
    /// A finished reply line.
    Ready(Vec<u8>),
    /// A submit awaiting the WAL.
    Submit(u64),
    /// A batch awaiting the WAL.
    Batch(Vec<u64>),
}

/// The replies of one burst; `awaits_wal` says whether it awaits a WAL acknowledgement.
struct Group {
    slots: Vec<Slot>,
    awaits_wal: bool,
}

/// The reader's burst under construction.
#[derive(Default)]
struct Burst {
    slots: Vec<Slot>,
    records: RecordBatch,
    jobs: Vec<JobRef>,
}

pub(crate) fn serve_connection(stream: UnixStream, handle: Handle) {
    let write_half = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("connection: cannot clone socket: {e}");
            return;
        }
    };
    let (group_tx, group_rx) = crossbeam_channel::unbounded::<Group>();
    let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<Acked>();
    let writer = std::thread::Builder::new()
        .name("duejob-conn-w".into())
        .spawn(move || write_replies(write_half, group_rx, ack_rx));
    let Ok(writer) = writer else {
        log::error!("connection: cannot start writer thread");
        return;
    };
    read_requests(stream, &handle, &group_tx, &ack_tx);
    drop(group_tx);
    drop(ack_tx);
    let _ = writer.join();
}

fn read_requests(
    mut stream: UnixStream,
    handle: &Handle,
    groups: &Sender<Group>,
    ack: &Sender<Acked>,
) {
    let mut lines = LineReader::new(handle.config().max_line);
    let mut burst = Burst::default();
    loop {
        match lines.next_line() {
            Line::Complete(range) => {
                let line = &lines.buf()[range];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                handle_line(line, handle, &mut burst, groups, ack);
                if burst.records.byte_len() >= BURST_BYTES {
                    flush(&mut burst, handle, groups, ack);
                }
            }
            Line::TooLong => {
                let max = handle.config().max_line;
                burst.slots.push(error_slot(&Rejection::new(
                    code::LINE_TOO_LONG,
                    format!("request line longer than {max} bytes; skipped to the next newline"),
                )));
            }
            Line::NeedMore => {
                flush(&mut burst, handle, groups, ack);
                match lines.fill(&mut stream) {
                    Ok(0) => {
                        if lines.pending() > 0 {
                            log::debug!(
                                "connection closed mid-line ({} bytes dropped)",
                                lines.pending()
                            );
                        }
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        log::debug!("connection read error: {e}");
                        return;
                    }
                }
            }
        }
    }
}

fn error_slot(r: &Rejection) -> Slot {
    let mut out = Vec::with_capacity(128);
    protocol::write_error(&mut out, r);
    Slot::Ready(out)
}

fn ready_slot(write: impl FnOnce(&mut Vec<u8>)) -> Slot {
    let mut out = Vec::with_capacity(256);
    write(&mut out);
    Slot::Ready(out)
}

fn handle_line(
    line: &[u8],
    handle: &Handle,
    burst: &mut Burst,
    groups: &Sender<Group>,
    ack: &Sender<Acked>,
) {
    let req = match Request::parse(line) {
        Ok(r) => r,
        Err(e) => {
            burst.slots.push(error_slot(&e));
            return;
        }
    };
    match req {
        Request::Hello => burst.slots.push(ready_slot(|out| {
            #[derive(serde::Serialize)]
            struct Hello<'a> {
                protocol: u32,
                server: &'a str,
                sync: String,
            }
            protocol::write_ok_with(
                out,
                &Hello {
                    protocol: protocol::PROTOCOL_VERSION,
                    server: concat!("duejob ", env!("CARGO_PKG_VERSION")),
                    sync: handle.config().sync.to_string(),
                },
            )
        })),
        Request::Submit(f) => match handle.prepare(&f.spec(), now_ms()) {
            Ok(job) => push_jobs(handle, burst, std::iter::once(job), false),
            Err(e) => burst.slots.push(error_slot(&e)),
        },
        Request::SubmitBatch(jobs) => {
            // All or nothing: validate every job before encoding any.
            let now = now_ms();
            let mut built = Vec::with_capacity(jobs.len());
            for (i, f) in jobs.iter().enumerate() {
                match handle.prepare(&f.spec(), now) {
                    Ok(j) => built.push(j),
                    Err(e) => {
                        burst.slots.push(error_slot(&Rejection::new(
                            e.code,
                            format!("jobs[{i}]: {}", e.message),
                        )));
                        return;
                    }
                }
            }
            push_jobs(handle, burst, built.into_iter(), true);
        }
        Request::Status(id) => {
            let slot = match handle.status(id) {
                Ok(Some(job)) => ready_slot(|out| {
                    #[derive(serde::Serialize)]
                    struct R {
                        job: crate::scheduler::JobInfo,
                    }
                    protocol::write_ok_with(out, &R { job })
                }),
                Ok(None) => error_slot(&Rejection::new(code::NOT_FOUND, format!("no job {id}"))),
                Err(e) => error_slot(&e),
            };
            burst.slots.push(slot);
        }
        Request::Stats => {
            let slot = match handle.stats() {
                Ok(s) => ready_slot(|out| protocol::write_ok_with(out, &s)),
                Err(e) => error_slot(&e),
            };
            burst.slots.push(slot);
        }
        Request::Cancel(id) => {
            // A cancel must follow the submits before it in the log.
            flush(burst, handle, groups, ack);
            let slot = match handle.cancel(id) {
                Ok(was) => ready_slot(|out| {
                    let _ = writeln!(
                        out,
                        r#"{{"ok":true,"id":{id},"state":"cancelled","was":"{was}"}}"#
                    );
                }),
                Err(e) => error_slot(&e),
            };
            burst.slots.push(slot);
        }
        Request::DeadList { queue, since } => {
            let slot = match handle.dead_list(queue.as_deref(), since) {
                Ok(jobs) => ready_slot(|out| {
                    #[derive(serde::Serialize)]
                    struct R {
                        jobs: Vec<crate::scheduler::JobInfo>,
                    }
                    protocol::write_ok_with(out, &R { jobs })
                }),
                Err(e) => error_slot(&e),
            };
            burst.slots.push(slot);
        }
        Request::DeadRetry(sel) => dead_op(true, &sel, handle, burst, groups, ack),
        Request::DeadPurge(sel) => dead_op(false, &sel, handle, burst, groups, ack),
    }
}

/// `dead_retry` (`retry`) or `dead_purge`.
fn dead_op(
    retry: bool,
    sel: &crate::protocol::DeadSelect<'_>,
    handle: &Handle,
    burst: &mut Burst,
    groups: &Sender<Group>,
    ack: &Sender<Acked>,
) {
    flush(burst, handle, groups, ack);
    let which = match (sel.id, sel.queue.as_deref()) {
        (Some(id), _) => Ok(DeadFilter::Id(id)),
        (None, q) => q
            .map(|q| handle.queue_for_filter(q))
            .transpose()
            .map(|queue| DeadFilter::All {
                queue,
                before: sel.before,
            }),
    };
    let result = which.and_then(|w| {
        if retry {
            handle.dead_retry(w)
        } else {
            handle.dead_purge(w)
        }
    });
    let slot = match result {
        Ok(ids) => ready_slot(|out| {
            #[derive(serde::Serialize)]
            struct R {
                ids: Vec<u64>,
            }
            protocol::write_ok_with(out, &R { ids })
        }),
        Err(e) => error_slot(&e),
    };
    burst.slots.push(slot);
}

/// Gives valid jobs their ids, encodes their records into the burst and queues their reply.
fn push_jobs(
    handle: &Handle,
    burst: &mut Burst,
    jobs: impl ExactSizeIterator<Item = crate::job::Job>,
    batch: bool,
) {
    let first = handle.reserve_ids(jobs.len() as u64);
    let mut ids = Vec::with_capacity(if batch { jobs.len() } else { 0 });
    for (i, mut job) in jobs.enumerate() {
        job.id = first + i as u64;
        if batch {
            ids.push(job.id);
        }
        handle.encode_submit(&job, &mut burst.records);
        burst.jobs.push(Arc::new(job));
    }
    burst.slots.push(if batch {
        Slot::Batch(ids)
    } else {
        Slot::Submit(first)
    });
}

fn flush(burst: &mut Burst, handle: &Handle, groups: &Sender<Group>, ack: &Sender<Acked>) {
    if burst.slots.is_empty() {
        return;
    }
    let b = std::mem::take(burst);
    let awaits_wal = !b.records.is_empty();
    let mut slots = b.slots;
    if awaits_wal {
        if let Err(e) = handle.append(b.records, b.jobs, ack.clone()) {
            // Nothing was written: every submit of the burst gets the error.
            for s in &mut slots {
                if !matches!(s, Slot::Ready(_)) {
                    *s = error_slot(&e);
                }
            }
            let _ = groups.send(Group {
                slots,
                awaits_wal: false,
            });
            return;
        }
    }
    let _ = groups.send(Group { slots, awaits_wal });
}

/// The writer thread: sends each group's replies once it is complete, in order.
fn write_replies(stream: UnixStream, groups: Receiver<Group>, acks: Receiver<Acked>) {
    let mut out = BufWriter::with_capacity(64 << 10, stream);
    let mut waiting: VecDeque<Group> = VecDeque::new();
    let mut ready_acks: VecDeque<Acked> = VecDeque::new();
    let mut broken = false;
    let mut groups_open = true;
    let mut acks_open = true;
    loop {
        // Send every complete group at the front.
        while let Some(g) = waiting.front() {
            let ack = if g.awaits_wal {
                match ready_acks.pop_front() {
                    Some(a) => Some(a),
                    // The WAL dropped the append unanswered (it stopped).
                    None if !acks_open => Some(Err(Arc::new(crate::wal::WalError::Closed))),
                    None => break,
                }
            } else {
                None
            };
            let g = waiting.pop_front().expect("front");
            if !broken {
                broken = write_group(&mut out, g, ack).is_err();
            }
        }
        if !broken && out.flush().is_err() {
            broken = true;
        }
        if !groups_open && waiting.is_empty() {
            return;
        }
        if groups_open && acks_open {
            select! {
                recv(groups) -> g => match g {
                    Ok(g) => waiting.push_back(g),
                    Err(_) => groups_open = false,
                },
                recv(acks) -> a => match a {
                    Ok(a) => ready_acks.push_back(a),
                    Err(_) => acks_open = false,
                },
            }
        } else if acks_open {
            match acks.recv() {
                Ok(a) => ready_acks.push_back(a),
                Err(_) => acks_open = false,
            }
        } else if groups_open {
            match groups.recv() {
                Ok(g) => waiting.push_back(g),
                Err(_) => groups_open = false,
            }
        }
        // An ack's group was sent before its append, so it is queued by now: take every group
        // and ack already waiting before writing.
        waiting.extend(groups.try_iter());
        ready_acks.extend(acks.try_iter());
    }
}

fn write_group(
    out: &mut BufWriter<UnixStream>,
    g: Group,
    ack: Option<Acked>,
) -> std::io::Result<()> {
    let (mut lsn, dups, failure) = match &ack {
        Some(Ok(a)) => (a.first_lsn, &a.duplicates[..], None),
        Some(Err(e)) => (0, &[][..], Some(wal_rejection(e))),
        None => (0, &[][..], None),
    };
    // Submit records of the group, in order: record `index` is a duplicate when it is in `dups`.
    let mut index = 0u32;
    let mut dups = dups.iter().peekable();
    let mut next = |id: u64| -> (u64, u64, bool) {
        let r = match dups.next_if(|d| d.index == index) {
            Some(d) => (d.id, d.lsn, true),
            None => {
                lsn += 1;
                (id, lsn - 1, false)
            }
        };
        index += 1;
        r
    };
    let mut line = Vec::with_capacity(128);
    for slot in g.slots {
        line.clear();
        let bytes: &[u8] = match (&slot, &failure) {
            (Slot::Ready(b), _) => b,
            (_, Some(r)) => {
                protocol::write_error(&mut line, r);
                &line
            }
            (Slot::Submit(id), None) => {
                let (id, at, dup) = next(*id);
                protocol::write_submitted(&mut line, id, at, dup);
                &line
            }
            (Slot::Batch(ids), None) => {
                let mut shown = Vec::with_capacity(ids.len());
                let mut dup_at = Vec::new();
                let mut first = None;
                for (i, id) in ids.iter().enumerate() {
                    let (id, at, dup) = next(*id);
                    if dup {
                        dup_at.push(i as u32);
                    } else {
                        first.get_or_insert(at);
                    }
                    shown.push(id);
                }
                protocol::write_batch(&mut line, &shown, first.unwrap_or(0), &dup_at);
                &line
            }
        };
        out.write_all(bytes)?;
    }
    Ok(())
}
