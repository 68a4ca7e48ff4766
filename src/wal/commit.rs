//! The group-commit thread: the only writer of the WAL.
//!
//! It blocks for the first message, then drains every message already queued (up to
//! [`GROUP_BYTES`]), encodes all their records into one buffer, writes it with one positioned
//! write, issues one fdatasync (mode `always`), and only then acknowledges each message and hands
//! its jobs on (to the dispatcher). A job therefore never runs before its record is durable, and
//! 1 or 1,000 waiting submits cost the same single fdatasync.
//!
//! A group nobody waits on (only the dispatcher's `start`/`finish`/`retry` records, no
//! acknowledgement and no jobs to hand on) is written at once but its fdatasync is deferred: it
//! rides with the next group that has a waiter, or happens [`DEFERRED_SYNC`] later. A process
//! crash loses nothing (the bytes are in the page cache); a power cut inside that window can lose
//! such records, which at-least-once execution (G3) already covers: the job runs again. This
//! spares a lone request the fdatasync of the previous job's completion in front of its own.
//!
//! In mode `batch:MS` acknowledgements follow the write, and an fdatasync follows at most MS ms
//! later (timed with `recv_deadline`, not by polling). In mode `never` only rotation and shutdown
//! sync.
//!
//! Sync marks: a group written after a sync that made records durable starts with a `sync` record
//! saying so; when the log goes idle, such a mark is written on its own after [`MARK_IDLE`]
//! (written, not synced: it rides with the next sync), and shutdown writes and syncs a last one.
//! Recovery uses them to tell a torn write from damage to synced data.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::appender::Appender;
use super::keys::KeyIndex;
use super::record::{Record, SCHEMA};
use super::{SyncMode, WalError};
use crate::job::JobRef;

/// Stop draining once a group holds this many encoded bytes.
pub const GROUP_BYTES: usize = 4 << 20;

/// In mode `always`, how long written records that nobody waits on may stay unsynced.
pub const DEFERRED_SYNC: Duration = Duration::from_millis(5);

/// How long after a sync the log may stay without a sync mark that speaks for it, when no group
/// comes to carry one.
pub const MARK_IDLE: Duration = Duration::from_millis(5);

/// Encoded record bodies, back to back, with their types and lengths.
#[derive(Debug, Default, Clone)]
pub struct RecordBatch {
    bytes: Vec<u8>,
    entries: Vec<(u8, u32)>,
}

impl RecordBatch {
    /// An empty batch.
    pub fn new() -> RecordBatch {
        RecordBatch::default()
    }
    /// Encodes and appends one record body.
    pub fn push(&mut self, rec: &Record<'_>) {
        let start = self.bytes.len();
        rec.encode_into(&mut self.bytes);
        self.entries
            .push((rec.rtype(), (self.bytes.len() - start) as u32));
    }
    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Encoded size of the bodies.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }
    fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let mut off = 0usize;
        self.entries.iter().map(move |&(t, len)| {
            let body = &self.bytes[off..off + len as usize];
            off += len as usize;
            (t, body)
        })
    }
}

/// A submit dropped because its key was already known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    /// Index of the record in its [`Append`].
    pub index: u32,
    /// The first job with that key.
    pub id: u64,
    /// That job's LSN.
    pub lsn: u64,
}

/// A durable append: the LSN of its first written record (the others follow consecutively,
/// skipping duplicates) and the submits dropped as duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckInfo {
    /// LSN of the first record written.
    pub first_lsn: u64,
    /// Dropped duplicates, by record index.
    pub duplicates: Vec<Duplicate>,
}

/// What an acknowledgement carries, or why the records are not durable.
pub type Acked = Result<AckInfo, Arc<WalError>>;

/// Records to append, the jobs they accept (handed on once durable), and who to tell.
pub struct Append {
    /// The records.
    pub records: RecordBatch,
    /// Jobs to hand on after the records are durable. When not empty, record `i` is the submit of
    /// `jobs[i]` (whose `key`, if any, is checked for duplicates).
    pub jobs: Vec<JobRef>,
    /// Where the acknowledgement goes.
    pub ack: Option<Sender<Acked>>,
}

/// Messages to the commit thread.
pub enum WalMsg {
    /// Append records.
    Append(Append),
    /// Sync everything written so far, then reply.
    Sync(Sender<Result<(), Arc<WalError>>>),
    /// Write and sync what is queued, reply, and stop.
    Stop(Sender<()>),
}

/// Starts the commit thread. `on_durable` receives the jobs of each group once it is durable
/// (in the group's order).
pub fn spawn(
    appender: Appender,
    mode: SyncMode,
    keys: KeyIndex,
    rx: Receiver<WalMsg>,
    on_durable: Box<dyn FnMut(Vec<JobRef>) + Send>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("duejob-wal".into())
        .spawn(move || {
            CommitLoop {
                appender,
                mode,
                keys,
                rx,
                on_durable,
                last_sync: Instant::now(),
                unsynced_since: None,
                dups: Vec::new(),
            }
            .run()
        })
        .expect("spawn WAL thread")
}

struct CommitLoop {
    appender: Appender,
    mode: SyncMode,
    keys: KeyIndex,
    rx: Receiver<WalMsg>,
    on_durable: Box<dyn FnMut(Vec<JobRef>) + Send>,
    last_sync: Instant,
    /// Mode `always`: when records nobody waits on were first written without a sync.
    unsynced_since: Option<Instant>,
    /// Duplicates found per append of the current group.
    dups: Vec<Vec<Duplicate>>,
}

impl CommitLoop {
    fn run(mut self) {
        let mut group: Vec<Append> = Vec::new();
        let mut syncers = Vec::new();
        loop {
            let first = match self.next_message() {
                Some(m) => m,
                None => break,
            };
            let mut stop = None;
            let mut bytes = 0usize;
            let mut msg = Some(first);
            while let Some(m) = msg.take() {
                match m {
                    WalMsg::Append(a) => {
                        bytes += a.records.byte_len();
                        group.push(a);
                    }
                    WalMsg::Sync(s) => syncers.push(s),
                    WalMsg::Stop(s) => {
                        stop = Some(s);
                        break;
                    }
                }
                if bytes < GROUP_BYTES {
                    msg = self.rx.try_recv().ok();
                }
            }
            let force_sync = !syncers.is_empty() || stop.is_some();
            let result = self.commit(&group, force_sync);
            self.finish_group(&mut group, &result);
            for s in syncers.drain(..) {
                let _ = s.send(result.clone().map(|_| ()));
            }
            if let Some(s) = stop {
                self.close();
                let _ = s.send(());
                return;
            }
        }
        // Every sender is gone: make what was written durable before leaving.
        self.close();
    }

    /// Writes and syncs what is buffered, then a last sync mark, so that a log closed cleanly
    /// has every record covered by a mark.
    fn close(&mut self) {
        let _ = self.appender.write().and_then(|_| self.appender.sync());
        let _ = self
            .appender
            .push_mark(crate::job::now_ms())
            .and_then(|_| self.appender.write())
            .and_then(|_| self.appender.sync());
    }

    /// The next message, or `None` when every sender is gone. Meanwhile wakes up to sync (batch
    /// mode with unsynced data, or deferred records in mode `always`) and to write a sync mark
    /// when the log has gone idle without one.
    fn next_message(&mut self) -> Option<WalMsg> {
        loop {
            let sync_at = match self.mode {
                SyncMode::Batch(every) if self.appender.has_unsynced() => {
                    Some(self.last_sync + every)
                }
                SyncMode::Always => self.unsynced_since.map(|t| t + DEFERRED_SYNC),
                _ => None,
            };
            let mark_at = (self.appender.mark_due() && self.appender.failed().is_none())
                .then(|| self.last_sync + MARK_IDLE);
            let deadline = match (sync_at, mark_at) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(d) => d,
                    None => return self.rx.recv().ok(),
                },
            };
            match self.rx.recv_deadline(deadline) {
                Ok(m) => return Some(m),
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if sync_at.is_some_and(|t| t <= now) {
                        if self.appender.sync().is_ok() {
                            self.last_sync = Instant::now();
                        }
                        // After a failed sync the appender is poisoned and every later append fails.
                        self.unsynced_since = None;
                    } else if mark_at.is_some_and(|t| t <= now) {
                        // Written, not synced: the next sync (or shutdown) takes it along.
                        let _ = self
                            .appender
                            .push_mark(crate::job::now_ms())
                            .and_then(|_| self.appender.write());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Drops submits whose key is known, encodes the rest, writes and (per mode) syncs the group.
    /// Returns the LSN of its first record.
    fn commit(&mut self, group: &[Append], force_sync: bool) -> Result<u64, Arc<WalError>> {
        let now = crate::job::now_ms();
        self.appender.push_mark(now).map_err(Arc::new)?;
        let first = self.appender.next_lsn();
        if !self.keys.is_empty() {
            self.keys.expire(now);
        }
        self.dups.clear();
        for a in group {
            let mut dups = Vec::new();
            for (i, (t, body)) in a.records.iter().enumerate() {
                let key = a.jobs.get(i).and_then(|j| j.key.as_deref());
                if let Some(k) = key {
                    if let Some(e) = self.keys.get(k, now) {
                        dups.push(Duplicate {
                            index: i as u32,
                            id: e.id,
                            lsn: e.lsn,
                        });
                        continue;
                    }
                }
                let lsn = self.appender.push(t, SCHEMA, body).map_err(Arc::new)?;
                if let (Some(k), Some(job)) = (key, a.jobs.get(i)) {
                    self.keys.insert(k, job.id, lsn, job.submitted_at, now);
                }
            }
            self.dups.push(dups);
        }
        self.appender
            .stats()
            .keys
            .store(self.keys.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.appender
            .stats()
            .keys_evicted
            .store(self.keys.evicted(), std::sync::atomic::Ordering::Relaxed);
        self.appender.write().map_err(Arc::new)?;
        let waited_on = group.iter().any(|a| a.ack.is_some() || !a.jobs.is_empty());
        let sync = match self.mode {
            SyncMode::Always if !waited_on && !force_sync => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                false
            }
            SyncMode::Always => true,
            SyncMode::Batch(every) => self.last_sync.elapsed() >= every,
            SyncMode::Never => false,
        };
        if sync || force_sync {
            self.appender.sync().map_err(Arc::new)?;
            self.last_sync = Instant::now();
            self.unsynced_since = None;
        }
        Ok(first)
    }

    /// Hands the group's jobs to the dispatcher, then acknowledges each append. In that order:
    /// a client that reads its acknowledgement and at once asks about its job (`status`, `cancel`)
    /// reaches the dispatcher after the job did.
    fn finish_group(&mut self, group: &mut Vec<Append>, result: &Result<u64, Arc<WalError>>) {
        let mut jobs = Vec::new();
        let mut acks = Vec::with_capacity(group.len());
        let mut lsn = match result {
            Ok(first) => *first,
            Err(_) => 0,
        };
        let mut dups = std::mem::take(&mut self.dups).into_iter();
        for a in group.drain(..) {
            let duplicates = dups.next().unwrap_or_default();
            let ack = match result {
                Ok(_) => {
                    let mine = lsn;
                    lsn += (a.records.len() - duplicates.len()) as u64;
                    let mut a_jobs = a.jobs;
                    if !duplicates.is_empty() {
                        // Drop the duplicates' jobs: only the first job with a key runs.
                        let mut d = duplicates.iter().map(|d| d.index as usize).peekable();
                        let mut i = 0;
                        a_jobs.retain(|_| {
                            let keep = d.next_if_eq(&i).is_none();
                            i += 1;
                            keep
                        });
                    }
                    if jobs.is_empty() {
                        jobs = a_jobs;
                    } else {
                        jobs.extend(a_jobs);
                    }
                    Ok(AckInfo {
                        first_lsn: mine,
                        duplicates,
                    })
                }
                Err(e) => Err(e.clone()),
            };
            if let Some(tx) = a.ack {
                acks.push((tx, ack));
            }
        }
        if !jobs.is_empty() {
            (self.on_durable)(jobs);
        }
        for (tx, ack) in acks {
            let _ = tx.send(ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::io::{Fault, MemStorage};
    use crate::wal::reader::read_log;
    use crate::wal::record::Cancel;

    fn start(
        storage: &MemStorage,
        mode: SyncMode,
    ) -> (Sender<WalMsg>, Receiver<Vec<JobRef>>, JoinHandle<()>) {
        let scan = read_log(storage, &mut |_| Ok(())).unwrap();
        let app =
            Appender::open(Arc::new(storage.clone()), &scan, 1 << 20, Arc::default()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (jtx, jrx) = crossbeam_channel::unbounded();
        let h = spawn(
            app,
            mode,
            KeyIndex::new(1 << 40, 1000),
            rx,
            Box::new(move |j| jtx.send(j).unwrap()),
        );
        (tx, jrx, h)
    }

    fn cancel_batch(ids: std::ops::Range<u64>) -> RecordBatch {
        let mut b = RecordBatch::new();
        for id in ids {
            b.push(&Record::Cancel(Cancel { id, at: 0 }));
        }
        b
    }

    /// The job records (sync marks aside) of an image, in log order.
    fn job_records(image: &MemStorage) -> Vec<u64> {
        let mut ids = Vec::new();
        read_log(image, &mut |r| {
            ids.extend(r.record.job_id());
            Ok(())
        })
        .unwrap();
        ids
    }

    fn records_in(image: &MemStorage) -> usize {
        job_records(image).len()
    }

    #[test]
    fn acks_carry_consecutive_lsns_and_survive_a_power_cut() {
        let storage = MemStorage::new();
        let (tx, _jobs, h) = start(&storage, SyncMode::Always);
        let mut acks = Vec::new();
        for i in 0..50u64 {
            let (atx, arx) = crossbeam_channel::bounded(1);
            tx.send(WalMsg::Append(Append {
                records: cancel_batch(i * 3..i * 3 + 3),
                jobs: vec![],
                ack: Some(atx),
            }))
            .unwrap();
            acks.push(arx);
        }
        let lsns: Vec<u64> = acks
            .iter()
            .map(|r| r.recv().unwrap().unwrap().first_lsn)
            .collect();
        // Each append's 3 records are consecutive; a sync mark may sit between two groups.
        assert_eq!(lsns[0], 1);
        for w in lsns.windows(2) {
            assert!(w[1] == w[0] + 3 || w[1] == w[0] + 4, "{lsns:?}");
        }
        // Everything acknowledged is in the synced image, in order, and at the LSN acknowledged.
        let img = storage.crash_image(0);
        assert_eq!(job_records(&img), (0..150).collect::<Vec<_>>());
        let mut at = std::collections::HashMap::new();
        read_log(&img, &mut |r| {
            if let Some(id) = r.record.job_id() {
                at.insert(id, r.lsn);
            }
            Ok(())
        })
        .unwrap();
        for (i, lsn) in lsns.iter().enumerate() {
            assert_eq!(at[&(i as u64 * 3)], *lsn);
        }
        stop(&tx, h);
    }

    fn stop(tx: &Sender<WalMsg>, h: JoinHandle<()>) {
        let (stx, srx) = crossbeam_channel::bounded(1);
        tx.send(WalMsg::Stop(stx)).unwrap();
        srx.recv().unwrap();
        h.join().unwrap();
    }

    #[test]
    fn records_nobody_waits_on_ride_with_the_next_acknowledged_group() {
        let storage = MemStorage::new();
        let (tx, _jobs, h) = start(&storage, SyncMode::Always);
        for i in 0..20 {
            // Start/finish records from the dispatcher: no acknowledgement.
            tx.send(WalMsg::Append(Append {
                records: cancel_batch(i * 2..i * 2 + 2),
                jobs: vec![],
                ack: None,
            }))
            .unwrap();
            let (atx, arx) = crossbeam_channel::bounded(1);
            tx.send(WalMsg::Append(Append {
                records: cancel_batch(1000 + i..1001 + i),
                jobs: vec![],
                ack: Some(atx),
            }))
            .unwrap();
            arx.recv().unwrap().unwrap();
            // The acknowledged record is durable, and so is everything written before it.
            assert_eq!(records_in(&storage.crash_image(0)), 3 * (i as usize + 1));
        }
        stop(&tx, h);
    }

    #[test]
    fn a_lone_unacknowledged_group_is_synced_soon_without_further_traffic() {
        let storage = MemStorage::new();
        let (tx, _jobs, h) = start(&storage, SyncMode::Always);
        tx.send(WalMsg::Append(Append {
            records: cancel_batch(0..4),
            jobs: vec![],
            ack: None,
        }))
        .unwrap();
        // No other message: only the deferred-sync timer can make these durable.
        let give_up = Instant::now() + Duration::from_secs(30);
        while records_in(&storage.crash_image(0)) < 4 {
            assert!(Instant::now() < give_up, "the deferred sync never happened");
            std::thread::sleep(Duration::from_millis(1));
        }
        // And it was a sync of what was written: the running image holds the same.
        assert_eq!(records_in(&storage.crash_image(usize::MAX)), 4);
        stop(&tx, h);
    }

    #[test]
    fn a_failed_sync_fails_the_group_and_everything_after() {
        // ops 0-4 create segment 1; op 5 is the first write, op 6 its sync.
        let storage = MemStorage::with_fault(Fault::IoErrorAt(6));
        let (tx, jobs, h) = start(&storage, SyncMode::Always);
        for _ in 0..2 {
            let (atx, arx) = crossbeam_channel::bounded(1);
            tx.send(WalMsg::Append(Append {
                records: cancel_batch(0..1),
                jobs: vec![],
                ack: Some(atx),
            }))
            .unwrap();
            let e = arx.recv().unwrap().unwrap_err();
            assert!(
                matches!(*e, WalError::Io { .. } | WalError::Failed(_)),
                "{e}"
            );
        }
        assert!(
            jobs.try_recv().is_err(),
            "no job is handed on after a failure"
        );
        drop(tx);
        h.join().unwrap();
    }
}
