//! One connection: a reader thread (this one) and a writer thread.
//!
//! The reader parses every complete line it has buffered before it reads again. Submits in that
//! burst become one WAL append (one message to the commit thread, so 100 pipelined submits cost
//! one channel send and share one fdatasync). The burst's replies, in request order, go to the
//! writer as one `Group`; the writer sends a group's replies once the WAL acknowledges it, and
//! groups strictly in order, so replies always match request order.
//!
//! A lone burst (the reader has read all the client sent, at most [`LONE_BURST`] requests, and the
//! writer holds no group) skips the writer: the reader commits it itself when the log is idle and writes the replies itself
//! (`answer_now`), so a lone request wakes no other thread of the daemon.
//!
//! Requests answered by the dispatcher (`status`, `stats`, `cancel`) are answered synchronously by
//! the reader and slot into the group in order.
//!
//! Back-pressure: a group holds at most [`GROUP_SLOTS`] replies and at most [`GROUPS_IN_FLIGHT`]
//! groups wait for the writer, so a client that sends and never reads has at most
//! [`MAX_UNANSWERED`] requests taken in: past that the reader stops reading from the socket until
//! replies drain (the client's own writes then block). Memory per connection stays bounded.
//!
//! Reader and writer share the connection's one file descriptor.

use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};

use super::lines::{Line, LineReader};
use super::ops::{error_slot, handle_line, Cx};
use crate::job::JobRef;
use crate::runtime::{fate_rejection, Handle};
use crate::wal::commit::{Ack, Fate, RecordBatch};
use crate::wire::reply::{write_batch, write_error, write_submitted};
use crate::wire::{ErrorCode, Rejection, Submitted};

/// Flush a burst to the WAL once it holds this many encoded bytes.
const BURST_BYTES: usize = 1 << 20;

/// Most replies in one group (a burst is cut there).
pub const GROUP_SLOTS: usize = 1024;

/// Most groups in the channel to the writer, and most groups the writer holds while their
/// acknowledgements are on their way.
pub const GROUPS_IN_FLIGHT: usize = 7;

/// Most requests of one connection read but not yet answered: the groups in the channel, those
/// the writer holds, the one it is writing and the one the reader builds.
#[cfg(any(test, feature = "internals"))]
pub const MAX_UNANSWERED: usize = GROUP_SLOTS * (2 * GROUPS_IN_FLIGHT + 2);

/// Most bytes of replies one connection holds unwritten (a `status` reply can carry a payload of
/// megabytes): past it the reader waits for the writer. One larger reply still goes through.
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// What a connection's reader and writer share to keep the replies held in memory bounded in
/// bytes (the group channel bounds them in number).
struct ReplyBudget {
    /// Bytes of replies handed to the writer and not yet written by it.
    bytes: std::sync::atomic::AtomicUsize,
    /// Set when the writer has stopped (nothing will be released any more).
    writer_gone: std::sync::atomic::AtomicBool,
    /// The writer's "I wrote something" signal.
    wake: (Sender<()>, Receiver<()>),
    /// Groups handed to the writer and not yet written out by it (written and flushed): while
    /// none is, the reader may write replies itself without passing one.
    groups: std::sync::atomic::AtomicUsize,
}

impl ReplyBudget {
    fn new() -> ReplyBudget {
        ReplyBudget {
            bytes: Default::default(),
            writer_gone: Default::default(),
            wake: crossbeam_channel::bounded(1),
            groups: Default::default(),
        }
    }

    /// The reader: waits until the bytes held are under the limit.
    fn wait_for_room(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        while self.bytes.load(SeqCst) > MAX_REPLY_BYTES && !self.writer_gone.load(SeqCst) {
            let _ = self
                .wake
                .1
                .recv_timeout(std::time::Duration::from_millis(100));
        }
    }

    /// The writer: `n` bytes were written.
    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        let _ = self.wake.0.try_send(());
    }
}

/// A reply slot.
pub(super) enum Slot {
    /// A finished reply line.
    Ready(Vec<u8>),
    /// A submit awaiting the WAL.
    Submit(u64),
    /// A batch awaiting the WAL.
    Batch(Vec<u64>),
}

/// The replies of one burst; `awaits_wal` says whether it awaits a WAL acknowledgement;
/// `bytes`: about how many bytes its replies take (charged to the [`ReplyBudget`]).
struct Group {
    slots: Vec<Slot>,
    awaits_wal: bool,
    bytes: usize,
}

/// About how many bytes the replies of `slots` take.
fn reply_bytes(slots: &[Slot]) -> usize {
    slots
        .iter()
        .map(|s| match s {
            Slot::Ready(b) => b.len(),
            Slot::Submit(_) => 64,
            Slot::Batch(ids) => 32 + 21 * ids.len(),
        })
        .sum()
}

/// The reader's burst under construction.
#[derive(Default)]
pub(super) struct Burst {
    pub slots: Vec<Slot>,
    pub records: RecordBatch,
    pub jobs: Vec<JobRef>,
    /// Bytes of the finished replies among `slots`.
    ready_bytes: usize,
}

pub(crate) fn serve_connection(stream: Arc<UnixStream>, handle: Handle) {
    let write_half = SharedStream(stream.clone());
    let (group_tx, group_rx) = crossbeam_channel::bounded::<Group>(GROUPS_IN_FLIGHT);
    let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<Ack>();
    let budget = Arc::new(ReplyBudget::new());
    let (h, b) = (handle.clone(), budget.clone());
    let writer = std::thread::Builder::new()
        .name("duejob-conn-w".into())
        .spawn(move || {
            write_replies(write_half, group_rx, ack_rx, &h, &b);
            b.writer_gone
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = b.wake.0.try_send(());
        });
    let Ok(writer) = writer else {
        log::error!("connection: cannot start writer thread");
        return;
    };
    let out = Out {
        groups: &group_tx,
        ack: &ack_tx,
        budget: &budget,
    };
    read_requests(stream, &handle, &out);
    drop(group_tx);
    drop(ack_tx);
    let _ = writer.join();
}

/// The connection's socket, written by the writer thread while the reader reads it.
struct SharedStream(Arc<UnixStream>);

impl Write for SharedStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

fn read_requests(stream: Arc<UnixStream>, handle: &Handle, out: &Out<'_>) {
    let mut lines = LineReader::new(handle.config().max_line);
    let mut burst = Burst::default();
    let mut reply = Vec::new();
    let mut direct = true;
    loop {
        match lines.next_line() {
            Line::Complete(range) => {
                let line = &lines.buf()[range];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                handle_line(
                    line,
                    &mut Cx {
                        handle,
                        burst: &mut burst,
                        out,
                    },
                );
                if let Some(Slot::Ready(b)) = burst.slots.last() {
                    burst.ready_bytes += b.len();
                }
                if burst.records.byte_len() >= BURST_BYTES
                    || burst.slots.len() >= GROUP_SLOTS
                    || burst.ready_bytes >= BURST_BYTES
                {
                    flush(&mut burst, handle, out);
                }
            }
            Line::TooLong => {
                let max = handle.config().max_line;
                burst.slots.push(error_slot(&Rejection::new(
                    ErrorCode::LineTooLong,
                    format!("request line longer than {max} bytes; skipped to the next newline"),
                )));
            }
            Line::NeedMore => {
                if direct {
                    if !answer_now(&mut burst, handle, out, &stream, &mut reply) {
                        // The client stopped reading: what it sent is still carried out (and
                        // answered into the void by the writer), as before.
                        log::debug!("connection write error: the client is gone");
                        direct = false;
                    }
                } else {
                    flush(&mut burst, handle, out);
                }
                match lines.fill(&mut &*stream) {
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

/// Where the reader's bursts go: the writer's channel, the WAL's acknowledgements, the budget.
pub(super) struct Out<'a> {
    groups: &'a Sender<Group>,
    ack: &'a Sender<Ack>,
    budget: &'a ReplyBudget,
}

/// Sends the burst: its records to the WAL (one append), its replies to the writer.
pub(super) fn flush(burst: &mut Burst, handle: &Handle, out: &Out<'_>) {
    if burst.slots.is_empty() {
        return;
    }
    let b = std::mem::take(burst);
    let mut awaits_wal = !b.records.is_empty();
    let mut slots = b.slots;
    if awaits_wal {
        if let Err(e) = handle.append(b.records, b.jobs, out.ack.clone()) {
            // Nothing was written: every submit of the burst gets the error.
            for s in &mut slots {
                if !matches!(s, Slot::Ready(_)) {
                    *s = error_slot(&e);
                }
            }
            awaits_wal = false;
        }
    }
    let bytes = reply_bytes(&slots);
    out.budget
        .bytes
        .fetch_add(bytes, std::sync::atomic::Ordering::SeqCst);
    out.budget
        .groups
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _ = out.groups.send(Group {
        slots,
        awaits_wal,
        bytes,
    });
    out.budget.wait_for_room();
}

/// The most requests in a burst that the reader commits and answers itself (see `answer_now`):
/// larger bursts come from pipelining clients, whose appends do better grouped by the commit
/// thread with those of other connections (fewer syncs, fewer hand-offs to the dispatcher).
pub const LONE_BURST: usize = 4;

/// Answers the burst the reader has when it has read everything the client sent: when the writer
/// holds nothing, the reader commits the burst's records itself (when the log is idle, see
/// [`Handle::append_now`]) and writes the replies itself, so that a lone request wakes no other
/// thread of the daemon on its way. Otherwise (the writer has replies to send first, or the log
/// is busy) the burst goes the usual way ([`flush`]). Returns false when the client is gone.
fn answer_now(
    burst: &mut Burst,
    handle: &Handle,
    out: &Out<'_>,
    stream: &UnixStream,
    buf: &mut Vec<u8>,
) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    if burst.slots.is_empty() {
        return true;
    }
    // The writer has written out every group handed to it (only this thread hands it more):
    // what is written here follows all of them, and no append of this connection is unanswered.
    if out.budget.groups.load(SeqCst) != 0 || burst.slots.len() > LONE_BURST {
        flush(burst, handle, out);
        return true;
    }
    let b = std::mem::take(burst);
    let ack = if b.records.is_empty() {
        None
    } else {
        match handle.append_now(b.records, b.jobs) {
            Ok(ack) => Some(ack),
            Err((records, jobs)) => {
                *burst = Burst {
                    slots: b.slots,
                    records,
                    jobs,
                    ready_bytes: b.ready_bytes,
                };
                flush(burst, handle, out);
                return true;
            }
        }
    };
    buf.clear();
    let g = Group {
        slots: b.slots,
        awaits_wal: false,
        bytes: 0,
    };
    write_group(buf, g, ack).expect("writing to memory");
    let ok = (&*stream).write_all(buf).is_ok();
    if buf.capacity() > 64 << 10 {
        // One large reply (a status with a big payload) is not held on to.
        *buf = Vec::new();
    }
    ok
}

/// How often a writer waiting for acknowledgements looks whether the WAL has stopped (an append
/// queued behind its stop is never answered).
const WAL_GONE_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The writer thread: sends each group's replies once it is complete, in order, and gives their
/// bytes back to the budget.
fn write_replies(
    stream: SharedStream,
    groups: Receiver<Group>,
    acks: Receiver<Ack>,
    handle: &Handle,
    budget: &ReplyBudget,
) {
    let mut out = BufWriter::with_capacity(64 << 10, stream);
    let mut waiting: VecDeque<Group> = VecDeque::new();
    let mut ready_acks: VecDeque<Ack> = VecDeque::new();
    let mut broken = false;
    let mut groups_open = true;
    let mut acks_open = true;
    loop {
        // Send every complete group at the front.
        let mut written = 0;
        while let Some(g) = waiting.front() {
            let ack = if g.awaits_wal {
                match ready_acks.pop_front() {
                    Some(a) => Some(a),
                    // The WAL dropped the append unanswered (it stopped).
                    None if !acks_open => {
                        Some(Ack::not_recorded(Arc::new(crate::wal::WalError::Closed)))
                    }
                    None => break,
                }
            } else {
                None
            };
            let g = waiting.pop_front().expect("front");
            let bytes = g.bytes;
            if !broken {
                broken = write_group(&mut out, g, ack).is_err();
            }
            budget.release(bytes);
            written += 1;
        }
        if !broken && out.flush().is_err() {
            broken = true;
        }
        if written > 0 {
            // Out on the socket (or the client is gone): the reader may write after them.
            budget
                .groups
                .fetch_sub(written, std::sync::atomic::Ordering::SeqCst);
        }
        if !groups_open && waiting.is_empty() {
            return;
        }
        // Take another group only while holding fewer than GROUPS_IN_FLIGHT: otherwise wait for
        // the acknowledgement the front group needs (it is on its way: the WAL never waits on
        // this thread), so that what a connection holds stays bounded.
        let room = waiting.len() < GROUPS_IN_FLIGHT;
        // Once the runtime is closing, while a group waits for its acknowledgement, wake up now
        // and then to see whether the WAL has stopped; otherwise sleep until something comes.
        let tick = if handle.is_closing() && waiting.iter().any(|g| g.awaits_wal) {
            crossbeam_channel::after(WAL_GONE_CHECK)
        } else {
            crossbeam_channel::never()
        };
        if groups_open && acks_open && room {
            select! {
                recv(groups) -> g => match g {
                    Ok(g) => waiting.push_back(g),
                    Err(_) => groups_open = false,
                },
                recv(acks) -> a => match a {
                    Ok(a) => ready_acks.push_back(a),
                    Err(_) => acks_open = false,
                },
                recv(tick) -> _ => {}
            }
        } else if acks_open {
            select! {
                recv(acks) -> a => match a {
                    Ok(a) => ready_acks.push_back(a),
                    Err(_) => acks_open = false,
                },
                recv(tick) -> _ => {}
            }
        } else if groups_open && room {
            match groups.recv() {
                Ok(g) => waiting.push_back(g),
                Err(_) => groups_open = false,
            }
        }
        if acks_open && handle.is_wal_stopped() {
            // Every acknowledgement the WAL sent is in the channel by now; what is still missing
            // was dropped unanswered (queued behind the stop): those groups get shutting_down.
            ready_acks.extend(acks.try_iter());
            acks_open = false;
        }
        // Take what is already waiting (groups as far as there is room) before writing. An ack
        // may come before its group (the reader sends the append, then the group): acks and
        // groups are matched by order.
        let room = GROUPS_IN_FLIGHT.saturating_sub(waiting.len());
        waiting.extend(groups.try_iter().take(room));
        ready_acks.extend(acks.try_iter());
    }
}

fn write_group(
    out: &mut impl Write,
    g: Group,
    ack: Option<Ack>,
) -> std::io::Result<()> {
    // What became of each record of the group's append, in order: every reply says exactly that.
    let mut fates = ack.as_ref().map(Ack::fates);
    let mut next = || {
        fates
            .as_mut()
            .and_then(Iterator::next)
            .unwrap_or(Fate::NotRecorded)
    };
    let no_ack = Ack::default();
    let ack = ack.as_ref().unwrap_or(&no_ack);
    let mut line = Vec::with_capacity(128);
    for slot in g.slots {
        line.clear();
        let bytes: &[u8] = match &slot {
            Slot::Ready(b) => b,
            Slot::Submit(id) => {
                match next() {
                    Fate::Recorded(lsn) => write_submitted(
                        &mut line,
                        Submitted {
                            id: *id,
                            lsn,
                            duplicate: false,
                        },
                    ),
                    Fate::Duplicate { id, lsn } => write_submitted(
                        &mut line,
                        Submitted {
                            id,
                            lsn,
                            duplicate: true,
                        },
                    ),
                    fate => write_error(&mut line, &fate_rejection(ack, fate, *id)),
                }
                &line
            }
            Slot::Batch(ids) => {
                let batch: Vec<Fate> = ids.iter().map(|_| next()).collect();
                match batch_reply(ack, ids, &batch) {
                    Ok((shown, lsn, dup_at)) => write_batch(&mut line, &shown, lsn, &dup_at),
                    Err(r) => write_error(&mut line, &r),
                }
                &line
            }
        };
        out.write_all(bytes)?;
    }
    Ok(())
}

/// A batch's reply from the fates of its records: when all are in the log (or duplicates of
/// jobs that are), the ids to show (a duplicate's is the first job's), the LSN of its first
/// record and the indexes of duplicates; otherwise the rejection, which lists the jobs that were
/// recorded all the same (they will run: submitting the whole batch again would run them twice).
fn batch_reply(
    ack: &Ack,
    ids: &[u64],
    fates: &[Fate],
) -> Result<(Vec<u64>, u64, Vec<u32>), Rejection> {
    let mut shown = Vec::with_capacity(ids.len());
    let mut dup_at = Vec::new();
    let mut first = None;
    let mut failed = None;
    for (i, (&id, &fate)) in ids.iter().zip(fates).enumerate() {
        match fate {
            Fate::Recorded(lsn) => {
                first.get_or_insert(lsn);
                shown.push(id);
            }
            Fate::Duplicate { id, .. } => {
                dup_at.push(i as u32);
                shown.push(id);
            }
            Fate::NotRecorded | Fate::Unknown => {
                // An uncertain record makes the whole answer uncertain.
                if failed != Some(Fate::Unknown) {
                    failed = Some(fate);
                }
            }
        }
    }
    let Some(fate) = failed else {
        return Ok((shown, first.unwrap_or(0), dup_at));
    };
    let mut r = fate_rejection(ack, fate, ids[0]);
    if r.code != ErrorCode::WalFailed && r.code != ErrorCode::WalUncertain {
        return Err(r); // shutting down: nothing of it reached the log
    }
    let error = ack
        .failure
        .as_ref()
        .map(|f| f.error.to_string())
        .unwrap_or_default();
    let recorded: Vec<u64> = ids
        .iter()
        .zip(fates)
        .filter(|(_, f)| matches!(f, Fate::Recorded(_)))
        .map(|(&id, _)| id)
        .collect();
    r.id = None;
    r.message = match (fate, recorded.len()) {
        (Fate::Unknown, _) => format!(
            "{error}; jobs of this batch (ids {} to {}) may or may not be in the log: after a \
             restart, their status tells",
            ids[0],
            ids[ids.len() - 1]
        ),
        (_, 0) => format!("{error}; the batch was not recorded"),
        (_, n) => format!(
            "{error}; {n} of the {} jobs were recorded before the failure and will run \
             (recorded_ids); the others were not",
            ids.len()
        ),
    };
    if !recorded.is_empty() {
        r.recorded_ids = Some(recorded);
    }
    Err(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::commit::Failure;
    use crate::wal::WalError;

    fn failed(first_lsn: u64, written: u32, kept_lsn: u64, certain: bool) -> Ack {
        Ack {
            first_lsn,
            duplicates: Vec::new(),
            failure: Some(Failure {
                error: Arc::new(WalError::Failed("disk full".into())),
                written,
                kept_lsn,
                certain,
            }),
        }
    }

    fn reply(r: &Rejection) -> serde_json::Value {
        let mut out = Vec::new();
        write_error(&mut out, r);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_batch_split_by_a_wal_failure_lists_the_jobs_that_were_recorded() {
        // Records 10..=14 got LSNs 100..=104; 100..=102 reached the log, the rest was removed.
        let ack = failed(100, 5, 102, true);
        let ids = [10, 11, 12, 13, 14];
        let fates: Vec<Fate> = ack.fates().take(5).collect();
        let r = batch_reply(&ack, &ids, &fates).unwrap_err();
        let v = reply(&r);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], "wal_failed");
        assert_eq!(v["recorded_ids"], serde_json::json!([10, 11, 12]));
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("3 of the 5"),
            "{v}"
        );
        // Nothing recorded: a plain wal_failed, no list.
        let ack = failed(100, 5, 99, true);
        let fates: Vec<Fate> = ack.fates().take(5).collect();
        let v = reply(&batch_reply(&ack, &ids, &fates).unwrap_err());
        assert_eq!(v["error"]["code"], "wal_failed");
        assert!(v.get("recorded_ids").is_none(), "{v}");
        // Could not be removed again: uncertain.
        let ack = failed(100, 5, 101, false);
        let fates: Vec<Fate> = ack.fates().take(5).collect();
        let v = reply(&batch_reply(&ack, &ids, &fates).unwrap_err());
        assert_eq!(v["error"]["code"], "wal_uncertain");
        assert_eq!(v["recorded_ids"], serde_json::json!([10, 11]));
    }

    #[test]
    fn an_uncertain_submit_names_its_job_and_a_stopped_wal_is_shutting_down() {
        let ack = failed(7, 1, 6, false);
        let fate = ack.fates().next().unwrap();
        assert_eq!(fate, Fate::Unknown);
        let v = reply(&fate_rejection(&ack, fate, 42));
        assert_eq!(v["error"]["code"], "wal_uncertain");
        assert_eq!(v["id"], 42);
        let ack = Ack::not_recorded(Arc::new(WalError::Closed));
        let fate = ack.fates().next().unwrap();
        assert_eq!(
            reply(&fate_rejection(&ack, fate, 1))["error"]["code"],
            "shutting_down"
        );
    }
}
