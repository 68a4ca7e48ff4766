//! Group commit: the commit thread, and the lone appends committed by their own thread.
//!
//! The log (appender, key index, timers) is behind one mutex; whoever holds it is the one writer.
//! A thread with a lone append may commit it itself when the log is idle ([`Wal::append_now`]:
//! `try_lock`, retried for at most [`SPIN`] while the holder is only writing, never while it
//! syncs or while appends that somebody waits for are queued for the commit thread: [`Queue`]
//! counts them), which spares a lone request two thread wake-ups. Everything else
//! goes to the commit thread, which leads every contended group (ARCHITECTURE.md, "Who writes the
//! log").
//!
//! The commit thread blocks for the first message, then drains every message already queued (up to
//! [`GROUP_BYTES`]), encodes all their records into one buffer, writes it with one positioned
//! write, issues one fdatasync (mode `always`), and only then acknowledges each message and hands
//! its jobs on (to the dispatcher). A job therefore never runs before its record is durable, and
//! 1 or 1,000 waiting submits cost the same single fdatasync.
//!
//! A group nobody waits on (only the dispatcher's `start`/`finish`/`retry` records, no
//! acknowledgement and no jobs to hand on) is written at once but its fdatasync is deferred: it
//! rides with the next group that has a waiter, or happens [`DEFERRED_SYNC`] later. A process
//! crash loses nothing written (the bytes are in the page cache; the dispatcher holds its
//! records up to about 1 ms before it sends them, and those it can lose); a power cut inside that window can lose
//! such records, which at-least-once execution (G3, docs/guarantees.md) already covers: the job runs again. This
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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, Sender};

use super::appender::{Appender, Sealed};
use super::durable::{self, Keeper};
use super::keys::KeyIndex;
use super::record::{Record, SCHEMA};
use super::{SyncMode, WalError};

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
    /// Each record's type and encoded body, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
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

/// What became of one record of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// In the log, at this LSN.
    Recorded(u64),
    /// Not written because its key was known: the first job with the key is `id`, in the log at
    /// `lsn`.
    Duplicate {
        /// The first job's id.
        id: u64,
        /// Its LSN.
        lsn: u64,
    },
    /// Certainly not in the log: never written, or removed again after a failure.
    NotRecorded,
    /// Written, but a failure came before it was known durable, and it could not be removed
    /// again: after a restart it may or may not be in the log.
    Unknown,
}

/// How the group an append was in failed, and what of it is in the log all the same.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The error.
    pub error: Arc<WalError>,
    /// Records of this append (duplicates aside) that got an LSN before the failure.
    pub written: u32,
    /// Every record with an LSN up to this one is in the log.
    pub kept_lsn: u64,
    /// Whether the records after `kept_lsn` are certainly not in the log (they were never
    /// written, or were removed again); otherwise they may or may not be there after a restart.
    pub certain: bool,
}

/// The answer to one [`Append`]: the LSN of its first written record (the others follow
/// consecutively, skipping duplicates), the submits dropped as duplicates, and, when its group
/// failed, what of it is in the log anyway. A reply built from it never contradicts the log:
/// see [`Ack::fates`].
#[derive(Debug, Clone, Default)]
pub struct Ack {
    /// LSN of the first record written.
    pub first_lsn: u64,
    /// Dropped duplicates, by record index.
    pub duplicates: Vec<Duplicate>,
    /// Set when the group failed.
    pub failure: Option<Failure>,
}

impl Ack {
    /// An answer for an append that never reached the log (the WAL stopped first).
    pub fn not_recorded(error: Arc<WalError>) -> Ack {
        Ack {
            first_lsn: 0,
            duplicates: Vec::new(),
            failure: Some(Failure {
                error,
                written: 0,
                kept_lsn: 0,
                certain: true,
            }),
        }
    }

    /// Whether every record of the append is in the log (or a duplicate of one that is).
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The fate of each record of the append, in order: the iterator yields one value per
    /// record (and goes on yielding `NotRecorded` past the end).
    pub fn fates(&self) -> Fates<'_> {
        Fates {
            ack: self,
            index: 0,
            written: 0,
            dup: 0,
        }
    }

    fn fate_of(&self, lsn: u64) -> Option<Fate> {
        match &self.failure {
            Some(f) if lsn > f.kept_lsn => Some(if f.certain {
                Fate::NotRecorded
            } else {
                Fate::Unknown
            }),
            _ => None,
        }
    }
}

/// See [`Ack::fates`].
pub struct Fates<'a> {
    ack: &'a Ack,
    index: u32,
    written: u32,
    dup: usize,
}

impl Iterator for Fates<'_> {
    type Item = Fate;
    fn next(&mut self) -> Option<Fate> {
        let i = self.index;
        self.index += 1;
        if let Some(d) = self.ack.duplicates.get(self.dup).filter(|d| d.index == i) {
            self.dup += 1;
            return Some(self.ack.fate_of(d.lsn).unwrap_or(Fate::Duplicate {
                id: d.id,
                lsn: d.lsn,
            }));
        }
        let k = self.written;
        self.written += 1;
        if self.ack.failure.as_ref().is_some_and(|f| k >= f.written) {
            return Some(Fate::NotRecorded);
        }
        let lsn = self.ack.first_lsn + u64::from(k);
        Some(self.ack.fate_of(lsn).unwrap_or(Fate::Recorded(lsn)))
    }
}

/// What the commit thread needs of a job whose submit it appends: the job's id and idempotency
/// key (a key seen before makes the submit a duplicate) and when it was submitted (a key is known
/// for its retention from then). The WAL knows nothing else of jobs: it hands them on untouched.
pub trait Keyed: Send + Sync + 'static {
    /// The job's id.
    fn id(&self) -> u64;
    /// Its idempotency key.
    fn key(&self) -> Option<&str>;
    /// When it was submitted (ms).
    fn submitted_at(&self) -> u64;
}

/// Records to append, the jobs they accept (handed on once durable), and who to tell.
pub struct Append<J> {
    /// The records.
    pub records: RecordBatch,
    /// Jobs to hand on after the records are durable. When not empty, record `i` is the submit of
    /// `jobs[i]` (whose key, if any, is checked for duplicates).
    pub jobs: Vec<J>,
    /// Where the acknowledgement goes.
    pub ack: Option<Sender<Ack>>,
}

/// Messages to the commit thread.
pub enum WalMsg<J> {
    /// Append records.
    Append(Append<J>),
    /// Write and sync what is queued, then seal the current segment if it holds any record
    /// (a checkpoint can then cover everything written so far); reply whether it did.
    Seal(Sender<Result<bool, Arc<WalError>>>),
    /// Write and sync what is queued, reply, and stop.
    Stop(Sender<()>),
}

/// The commit thread's inbox, for every thread that sends it messages. It counts the appends
/// somebody waits for (an acknowledgement) from before they are sent until the commit thread
/// has written them: while any is queued, [`Wal::append_now`] goes to the back of the queue
/// instead of ahead of it. Records nobody waits on (the dispatcher's start/finish) are not
/// counted, so they never turn a lone append away.
pub struct Queue<J> {
    tx: Sender<WalMsg<J>>,
    waited: Arc<AtomicUsize>,
}

impl<J> Clone for Queue<J> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            waited: self.waited.clone(),
        }
    }
}

impl<J> Queue<J> {
    /// Sends `msg` (blocks while the inbox is full); gives it back when the commit thread is gone.
    pub fn send(&self, msg: WalMsg<J>) -> Result<(), SendError<WalMsg<J>>> {
        let waited = matches!(&msg, WalMsg::Append(a) if a.ack.is_some());
        if waited {
            // Raised before the message can be seen, so no lone append slips in between.
            self.waited.fetch_add(1, Ordering::AcqRel);
        }
        self.tx.send(msg).inspect_err(|_| {
            if waited {
                self.waited.fetch_sub(1, Ordering::AcqRel);
            }
        })
    }
}

/// The receiving end of a [`Queue`], given to [`spawn`].
pub struct Inbox<J> {
    rx: Receiver<WalMsg<J>>,
    waited: Arc<AtomicUsize>,
}

#[cfg(test)]
impl<J> Inbox<J> {
    /// The next message, if one is queued (tests that stand in for the commit thread).
    pub(crate) fn try_recv(&self) -> Option<WalMsg<J>> {
        self.rx.try_recv().ok()
    }
}

/// A queue to the commit thread holding at most `cap` messages (`None`: unbounded).
pub fn queue<J>(cap: Option<usize>) -> (Queue<J>, Inbox<J>) {
    let (tx, rx) = match cap {
        Some(n) => crossbeam_channel::bounded(n),
        None => crossbeam_channel::unbounded(),
    };
    let waited = Arc::new(AtomicUsize::new(0));
    (
        Queue {
            tx,
            waited: waited.clone(),
        },
        Inbox { rx, waited },
    )
}

/// What the commit thread tells the rest of the runtime.
#[derive(Debug)]
pub enum WalEvent<J> {
    /// Jobs whose submit records are in the log, in log order.
    Durable(Vec<J>),
    /// The WAL failed and accepts nothing more until restart.
    Failed(Arc<WalError>),
    /// Segments were sealed (synced, never written again), oldest first.
    Sealed(Vec<Sealed>),
}

/// How the commit thread runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// When appends are durable.
    pub mode: SyncMode,
    /// Seal the current segment once its first record (a sync mark aside) is this old, so that
    /// an idle log's records can be released too; `None`: only when full (or asked).
    pub seal_after: Option<Duration>,
}

/// The log, shared by the commit thread and the threads that commit their own appends
/// ([`Wal::append_now`]). Whoever holds `log` is the one writer: the "single writer" of the log is
/// one leader at a time, not one thread.
struct Shared<J> {
    log: Mutex<CommitLoop<J>>,
    /// Origin of `sleeping_until`.
    epoch: Instant,
    /// When the commit thread next wakes without a message, in ns after `epoch` (`u64::MAX`: not
    /// before one comes). Written under `log`; read under `log` by a thread that committed and
    /// may have moved a timer earlier.
    sleeping_until: AtomicU64,
    /// Wakes the commit thread to look at its timers again.
    wake: Sender<()>,
    /// Set while the log's writer waits in `fdatasync`: a thread that finds the log held while
    /// it is not set will have it within microseconds (the holder is only writing).
    syncing: Arc<AtomicBool>,
    /// Appends somebody waits for that are queued for the commit thread or in its hands and not
    /// yet written (counted by [`Queue`]): nobody goes ahead of them (a lone append joins their
    /// group instead), so that lone clients arriving one after another cannot each spend a sync
    /// on one request while the queued group waits.
    waited: Arc<AtomicUsize>,
}

/// How long [`Wal::append_now`] waits for a log held by a writer that is not syncing (one that
/// writes the dispatcher's start/finish records, which are synced later) before sending its
/// append the usual way.
pub const SPIN: Duration = Duration::from_micros(50);

/// A handle on the log for threads that commit their own appends; see [`Wal::append_now`].
pub struct Wal<J> {
    shared: Arc<Shared<J>>,
}

impl<J> Clone for Wal<J> {
    fn clone(&self) -> Self {
        Wal {
            shared: self.shared.clone(),
        }
    }
}

impl<J: Keyed> Wal<J> {
    /// Commits `append` on the calling thread when no other writer holds the log: writes its
    /// records as a group of their own, syncs them as the mode says, hands its jobs on and
    /// returns the answer, all before returning; no other thread is woken on the way. When the
    /// log is busy (the commit thread or another caller is writing), or it has stopped, gives the
    /// append back untouched: send it to the commit thread instead.
    ///
    /// The caller must have no earlier append of its own still unanswered (sent to the commit
    /// thread and not yet acknowledged): this one would be written first. Appends of different
    /// callers have no order until one has been answered, and an answered append is in the log
    /// before any append sent after the answer, whichever way either went.
    pub fn append_now(&self, append: Append<J>) -> Result<Ack, Append<J>> {
        if self.shared.queued() {
            return Err(append);
        }
        let mut log = match self.shared.log.try_lock() {
            Ok(log) => log,
            Err(_) => {
                // Held: while the holder only writes, it is done within microseconds, sooner
                // than the commit thread could be woken; while it syncs, join the next group.
                let started = Instant::now();
                loop {
                    if self.shared.syncing.load(Ordering::Acquire)
                        || self.shared.queued()
                        || started.elapsed() > SPIN
                    {
                        return Err(append);
                    }
                    std::hint::spin_loop();
                    if let Ok(log) = self.shared.log.try_lock() {
                        break log;
                    }
                }
            }
        };
        if log.stopped {
            return Err(append);
        }
        let mut group = std::mem::take(&mut log.spare);
        group.push(append);
        // Its thread waits for the answer: synced as the mode says, never deferred.
        let failure = log.commit(&group, false, true);
        log.durable.note(log.appender.durable_lsn());
        let ack = log.finish_group(&mut group, failure);
        log.spare = group;
        log.report_sealed();
        // The commit thread sleeps on timers computed before this group (a sync mark is now
        // due, a segment now has an age, batch mode has unsynced data): tell it when one moved
        // earlier.
        let next = log.next_timer().map_or(u64::MAX, |t| self.shared.ns(t));
        if next < self.shared.sleeping_until.load(Ordering::Acquire) {
            self.shared.sleeping_until.store(next, Ordering::Release);
            drop(log);
            let _ = self.shared.wake.try_send(());
        }
        Ok(ack.unwrap_or_default())
    }
}

impl<J> Shared<J> {
    /// Whether appends somebody waits for are queued for the commit thread.
    fn queued(&self) -> bool {
        self.waited.load(Ordering::Acquire) != 0
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CommitLoop<J>> {
        // A writer that panicked left the log in an unknown state: go no further.
        self.log.lock().expect("WAL writer panicked")
    }
}

/// Starts the commit thread. `events` hears of the jobs of each group once they are durable (in
/// log order), and of a failure. Returns the handle for threads that commit their own appends.
pub fn spawn<J: Keyed>(
    appender: Appender,
    opts: Options,
    keys: KeyIndex,
    inbox: Inbox<J>,
    events: Box<dyn FnMut(WalEvent<J>) + Send>,
) -> (Wal<J>, JoinHandle<()>) {
    let Inbox { rx, waited } = inbox;
    let durable = Keeper::spawn(durable::Writer::new(appender.storage().clone()));
    let (wake, wake_rx) = crossbeam_channel::bounded(1);
    let syncing = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        log: Mutex::new(CommitLoop::new(
            durable,
            appender,
            opts,
            keys,
            events,
            syncing.clone(),
        )),
        epoch: Instant::now(),
        sleeping_until: AtomicU64::new(u64::MAX),
        wake,
        syncing,
        waited,
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("duejob-wal".into())
        .spawn(move || crate::fail_stop::fail_stop(|| run(&s, &rx, &wake_rx)))
        .expect("spawn WAL thread");
    (Wal { shared }, thread)
}

/// How a group failed (see [`Failure`]).
struct GroupFailure {
    error: Arc<WalError>,
    kept_lsn: u64,
    certain: bool,
}

/// The writer's state: the appender and everything about what it has written.
struct CommitLoop<J> {
    /// Keeps `wal/durable` up to date (its own thread; told the durable LSN after each group).
    durable: Keeper,
    appender: Appender,
    mode: SyncMode,
    seal_after: Option<Duration>,
    keys: KeyIndex,
    events: Box<dyn FnMut(WalEvent<J>) + Send>,
    last_sync: Instant,
    /// Mode `always`: when records nobody waits on were first written without a sync.
    unsynced_since: Option<Instant>,
    /// Per append of the current group: its first LSN, how many records were written, and the
    /// duplicates dropped.
    results: Vec<(u64, u32, Vec<Duplicate>)>,
    /// Whether the failure was reported already.
    failed: bool,
    /// After a failure: what stays in the log (the last LSN certainly in it, and whether
    /// everything after it is certainly gone), for answering every later group alike.
    after_failure: Option<(u64, bool)>,
    /// Set once the log is closed: nothing more is written.
    stopped: bool,
    /// An empty group vector kept for [`Wal::append_now`] (no allocation per call).
    spare: Vec<Append<J>>,
    /// Set while the writer waits in `fdatasync` (shared with [`Shared::syncing`]).
    syncing: Arc<AtomicBool>,
}

/// The commit thread: takes each message with whatever is queued behind it as one group, and
/// commits it once it holds the log.
fn run<J: Keyed>(shared: &Shared<J>, rx: &Receiver<WalMsg<J>>, wake: &Receiver<()>) {
    let mut group: Vec<Append<J>> = Vec::new();
    loop {
        let first = match next_message(shared, rx, wake) {
            Some(m) => m,
            None => break,
        };
        let mut stop = None;
        let mut seal = None;
        let mut bytes = 0usize;
        let mut waited = 0usize;
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            match m {
                WalMsg::Append(a) => {
                    bytes += a.records.byte_len();
                    waited += usize::from(a.ack.is_some());
                    group.push(a);
                }
                WalMsg::Seal(s) => {
                    seal = Some(s);
                    break;
                }
                WalMsg::Stop(s) => {
                    stop = Some(s);
                    break;
                }
            }
            if bytes < GROUP_BYTES {
                msg = rx.try_recv().ok();
            }
        }
        let mut log = shared.lock();
        // Also for a seal alone: its group is the sync mark a sealed segment ends with.
        let failure = log.commit(&group, stop.is_some(), false);
        // Written (and synced as the mode says) before anyone hears of it: a lone append may go
        // ahead of what is still queued once the log is free again.
        shared.waited.fetch_sub(waited, Ordering::AcqRel);
        log.durable.note(log.appender.durable_lsn());
        log.finish_group(&mut group, failure);
        if let Some(s) = seal {
            let r = log.seal();
            // What it sealed is reported before the answer: whoever asked hears of it first.
            log.report_sealed();
            let _ = s.send(r);
        }
        log.report_sealed();
        if let Some(s) = stop {
            log.close();
            let _ = s.send(());
            return;
        }
    }
    // Every sender is gone: make what was written durable before leaving.
    shared.lock().close();
}

/// The next message, or `None` when every sender is gone. Meanwhile wakes up to sync (batch mode
/// with unsynced data, or deferred records in mode `always`), to write a sync mark when the log
/// has gone idle without one, and to seal an old segment; the timers are read afresh under the
/// lock each time (a thread committing its own append moves them).
fn next_message<J: Keyed>(
    shared: &Shared<J>,
    rx: &Receiver<WalMsg<J>>,
    wake: &Receiver<()>,
) -> Option<WalMsg<J>> {
    loop {
        let deadline = {
            let log = shared.lock();
            let t = log.next_timer();
            shared.sleeping_until.store(
                t.map_or(u64::MAX, |t| shared.ns(t)),
                Ordering::Release,
            );
            t
        };
        let timeout = match deadline {
            Some(t) => crossbeam_channel::at(t),
            None => crossbeam_channel::never(),
        };
        crossbeam_channel::select! {
            recv(rx) -> m => return m.ok(),
            recv(wake) -> _ => {}
            recv(timeout) -> _ => shared.lock().on_timers(Instant::now()),
        }
    }
}

impl<J: Keyed> CommitLoop<J> {
    fn new(
        durable: Keeper,
        appender: Appender,
        opts: Options,
        keys: KeyIndex,
        events: Box<dyn FnMut(WalEvent<J>) + Send>,
        syncing: Arc<AtomicBool>,
    ) -> CommitLoop<J> {
        CommitLoop {
            durable,
            appender,
            mode: opts.mode,
            seal_after: opts.seal_after,
            keys,
            events,
            last_sync: Instant::now(),
            unsynced_since: None,
            results: Vec::new(),
            failed: false,
            after_failure: None,
            stopped: false,
            spare: Vec::new(),
            syncing,
        }
    }

    /// Writes and syncs what is buffered, then a last sync mark, so that a log closed cleanly
    /// has every record covered by a mark. (A failure here is logged by the appender; nothing
    /// is waiting for an answer any more.)
    fn close(&mut self) {
        self.stopped = true;
        if self.appender.failed().is_some() {
            self.durable.finish(false);
            return;
        }
        let closed = self
            .appender
            .write()
            .and_then(|_| self.appender.sync())
            .and_then(|_| self.appender.push_mark(crate::clock::now_ms()))
            .and_then(|_| self.appender.write())
            .and_then(|_| self.appender.sync());
        // The durable point goes last, out of the log's way: damage that wipes the log's last
        // block (its last records and the marks after them) is still told from a torn write.
        self.durable.note(self.appender.durable_lsn());
        self.durable.finish(closed.is_ok());
    }

    /// Seals the current segment (see [`WalMsg::Seal`]).
    fn seal(&mut self) -> Result<bool, Arc<WalError>> {
        self.syncing.store(true, Ordering::Release);
        let sealed = self.appender.seal();
        self.syncing.store(false, Ordering::Release);
        match sealed {
            Ok(sealed) => {
                if sealed {
                    self.last_sync = Instant::now();
                    self.unsynced_since = None;
                    self.durable.note(self.appender.durable_lsn());
                }
                Ok(sealed)
            }
            Err(e) => {
                let e = Arc::new(e);
                self.report_failure(&e);
                Err(e)
            }
        }
    }

    /// Tells the runtime of segments sealed since the last time.
    fn report_sealed(&mut self) {
        let sealed = self.appender.take_sealed();
        if !sealed.is_empty() {
            (self.events)(WalEvent::Sealed(sealed));
        }
    }

    /// Tells the runtime, once, that the WAL failed.
    fn report_failure(&mut self, e: &Arc<WalError>) {
        if !self.failed {
            self.failed = true;
            (self.events)(WalEvent::Failed(e.clone()));
        }
    }
    /// Syncs what is written, saying so in `syncing` meanwhile.
    fn sync_now(&mut self) -> Result<(), WalError> {
        self.syncing.store(true, Ordering::Release);
        let r = self.appender.sync();
        self.syncing.store(false, Ordering::Release);
        r
    }

    /// The earliest of the timers (sync, sync mark, seal).
    fn next_timer(&self) -> Option<Instant> {
        let (sync_at, mark_at) = self.timers();
        [sync_at, mark_at, self.seal_at()].into_iter().flatten().min()
    }

    /// Does what the timers say is due at `now`.
    fn on_timers(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        let (sync_at, mark_at) = self.timers();
        let seal_at = self.seal_at();
        if seal_at.is_some_and(|t| t <= now) {
            // Sealing writes and syncs what is pending first.
            if self.seal().is_ok() {
                log::debug!(
                    "WAL: sealed the current segment: its first record is older than {:?}",
                    self.seal_after.unwrap_or_default()
                );
            }
            self.report_sealed();
        } else if sync_at.is_some_and(|t| t <= now) {
            match self.sync_now() {
                Ok(()) => {
                    self.last_sync = Instant::now();
                    self.durable.note(self.appender.durable_lsn());
                }
                // The appender is poisoned: every later append fails.
                Err(e) => self.report_failure(&Arc::new(e)),
            }
            self.unsynced_since = None;
        } else if mark_at.is_some_and(|t| t <= now) {
            // Written, not synced: the next sync (or shutdown) takes it along.
            let marked = self
                .appender
                .push_mark(crate::clock::now_ms())
                .and_then(|_| self.appender.write());
            if let Err(e) = marked {
                self.report_failure(&Arc::new(e));
            }
        }
    }

    /// When the current segment is due to be sealed for its age (never after a failure).
    fn seal_at(&self) -> Option<Instant> {
        if self.appender.failed().is_some() {
            return None;
        }
        Some(self.appender.data_since()? + self.seal_after?)
    }

    /// When to wake up without a message: to sync (batch mode with unsynced data, or deferred
    /// records in mode `always`), and to write an idle sync mark. Never after a failure: the
    /// appender refuses everything, and waking would spin.
    fn timers(&self) -> (Option<Instant>, Option<Instant>) {
        if self.appender.failed().is_some() {
            return (None, None);
        }
        let sync_at = match self.mode {
            SyncMode::Batch(every) if self.appender.has_unsynced() => Some(self.last_sync + every),
            SyncMode::Always => self.unsynced_since.map(|t| t + DEFERRED_SYNC),
            _ => None,
        };
        let mark_at = self.appender.mark_due().then(|| self.last_sync + MARK_IDLE);
        (sync_at, mark_at)
    }

    /// Writes the group (sync mark, then each append's records, submits whose key is known
    /// dropped), and syncs it as the mode says (`waited`: someone waits for it whatever the group
    /// holds, so its sync is never deferred). On failure, removes again what cannot be known
    /// durable (mode `always`: everything after the last sync; `batch` and `never`: this group)
    /// and says what stays.
    fn commit(
        &mut self,
        group: &[Append<J>],
        force_sync: bool,
        waited: bool,
    ) -> Option<GroupFailure> {
        let start = self.appender.position();
        self.results.clear();
        let e = match self.write_group(group, force_sync, waited) {
            Ok(()) => return None,
            Err(e) => e,
        };
        let failure = if let (WalError::Failed(_), Some((kept_lsn, certain))) =
            (&e, self.after_failure)
        {
            // Poisoned by an earlier group: nothing of this one was written, and the log holds
            // what the first failure left (a duplicate of a record kept then is still kept).
            GroupFailure {
                error: Arc::new(e),
                kept_lsn,
                certain,
            }
        } else {
            let keep = match self.mode {
                SyncMode::Always => None,
                SyncMode::Batch(_) | SyncMode::Never => Some(start),
            };
            match self.appender.rollback(keep) {
                Ok(kept_lsn) => GroupFailure {
                    error: Arc::new(e),
                    kept_lsn,
                    certain: true,
                },
                Err(r) => {
                    let durable = self.appender.durable_lsn();
                    log::error!("WAL: after {e}, removing what was not acknowledged failed too ({r}): records after LSN {durable} may or may not be in the log after a restart");
                    GroupFailure {
                        error: Arc::new(e),
                        kept_lsn: durable,
                        certain: false,
                    }
                }
            }
        };
        self.after_failure
            .get_or_insert((failure.kept_lsn, failure.certain));
        self.report_failure(&failure.error);
        Some(failure)
    }

    fn write_group(
        &mut self,
        group: &[Append<J>],
        force_sync: bool,
        waited: bool,
    ) -> Result<(), WalError> {
        let now = crate::clock::now_ms();
        if !self.keys.is_empty() {
            self.keys.expire(now);
        }
        // Before anything else, so that a failure here leaves every append unwritten.
        self.appender.push_mark(now)?;
        let mut failed = None;
        for a in group {
            let (mut first, mut written, mut dups) = (0, 0u32, Vec::new());
            if failed.is_none() {
                for (i, (t, body)) in a.records.iter().enumerate() {
                    let key = a.jobs.get(i).and_then(|j| j.key());
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
                    let lsn = match self.appender.push(t, SCHEMA, body) {
                        Ok(lsn) => lsn,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                    if written == 0 {
                        first = lsn;
                    }
                    written += 1;
                    if let (Some(k), Some(job)) = (key, a.jobs.get(i)) {
                        self.keys.insert(k, job.id(), lsn, job.submitted_at(), now);
                    }
                }
            }
            self.results.push((first, written, dups));
        }
        let stats = self.appender.stats();
        stats
            .keys
            .store(self.keys.len() as u64, std::sync::atomic::Ordering::Relaxed);
        stats
            .keys_evicted
            .store(self.keys.evicted(), std::sync::atomic::Ordering::Relaxed);
        if let Some(e) = failed {
            return Err(e);
        }
        self.appender.write()?;
        let waited_on = waited || group.iter().any(|a| a.ack.is_some() || !a.jobs.is_empty());
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
            self.sync_now()?;
            self.last_sync = Instant::now();
            self.unsynced_since = None;
        }
        Ok(())
    }

    /// Hands the group's jobs that are in the log to the dispatcher, then acknowledges each
    /// append. In that order: a client that reads its acknowledgement and at once asks about its
    /// job (`status`, `cancel`) reaches the dispatcher after the job did. Returns the answer of
    /// the last append that has nobody to send it to (that of [`Wal::append_now`]'s own).
    fn finish_group(
        &mut self,
        group: &mut Vec<Append<J>>,
        failure: Option<GroupFailure>,
    ) -> Option<Ack> {
        let mut jobs = Vec::new();
        let mut acks = Vec::new();
        let mut own = None;
        let mut results = self.results.drain(..);
        for a in group.drain(..) {
            let (first_lsn, written, duplicates) = results.next().unwrap_or_default();
            let ack = Ack {
                first_lsn,
                duplicates,
                failure: failure.as_ref().map(|f| Failure {
                    error: f.error.clone(),
                    written,
                    kept_lsn: f.kept_lsn,
                    certain: f.certain,
                }),
            };
            if ack.is_ok() && ack.duplicates.is_empty() {
                // The common case: every job's submit is in the log (moved, not copied).
                if jobs.is_empty() {
                    jobs = a.jobs;
                } else {
                    jobs.extend(a.jobs);
                }
            } else if !a.jobs.is_empty() {
                // Only the jobs whose own submit is in the log run: not a duplicate's, not one
                // the failure took.
                let recorded = ack.fates().map(|f| matches!(f, Fate::Recorded(_)));
                let mine = a.jobs.into_iter().zip(recorded).filter(|(_, r)| *r);
                jobs.extend(mine.map(|(j, _)| j));
            }
            match a.ack {
                Some(tx) => acks.push((tx, ack)),
                None => own = Some(ack),
            }
        }
        drop(results);
        if !jobs.is_empty() {
            (self.events)(WalEvent::Durable(jobs));
        }
        for (tx, ack) in acks {
            let _ = tx.send(ack);
        }
        own
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fail_stop::child;
    use crate::wal::io::{Fault, MemStorage, Storage};
    use crate::wal::reader::read_log;
    use crate::wal::record::Cancel;

    /// A job as the tests hand it to the commit thread.
    #[derive(Debug)]
    struct TJob {
        id: u64,
        key: Option<String>,
        submitted_at: u64,
    }

    impl Keyed for TJob {
        fn id(&self) -> u64 {
            self.id
        }
        fn key(&self) -> Option<&str> {
            self.key.as_deref()
        }
        fn submitted_at(&self) -> u64 {
            self.submitted_at
        }
    }

    type WalMsg = super::WalMsg<TJob>;
    type WalEvent = super::WalEvent<TJob>;

    fn start(
        storage: &MemStorage,
        mode: SyncMode,
    ) -> (Queue<TJob>, Receiver<WalEvent>, JoinHandle<()>) {
        let (tx, rx) = queue(None);
        let (jrx, h) = start_on(storage, mode, 1 << 20, rx);
        (tx, jrx, h)
    }

    /// The commit thread on `storage`, reading `rx` (which may already hold messages: they make
    /// up its first group).
    fn start_on(
        storage: &MemStorage,
        mode: SyncMode,
        segment_size: u64,
        rx: Inbox<TJob>,
    ) -> (Receiver<WalEvent>, JoinHandle<()>) {
        let (_wal, jrx, h) = spawn_on(storage, mode, segment_size, rx);
        (jrx, h)
    }

    /// The commit thread on `storage`, reading `rx`, with the handle for committing on the
    /// caller's thread.
    fn spawn_on(
        storage: &MemStorage,
        mode: SyncMode,
        segment_size: u64,
        rx: Inbox<TJob>,
    ) -> (Wal<TJob>, Receiver<WalEvent>, JoinHandle<()>) {
        let scan = read_log(storage, &mut |_| Ok(())).unwrap();
        let app = Appender::open(
            Arc::new(storage.clone()),
            &scan,
            segment_size,
            Arc::default(),
        )
        .unwrap();
        let (jtx, jrx) = crossbeam_channel::unbounded();
        let (wal, h) = spawn(
            app,
            Options {
                mode,
                seal_after: None,
            },
            KeyIndex::new(1 << 40, 1000),
            rx,
            Box::new(move |j| {
                let _ = jtx.send(j);
            }),
        );
        (wal, jrx, h)
    }

    /// The commit thread on a fresh `storage`, with the handle for committing on the caller's
    /// thread.
    fn start_wal(
        storage: &MemStorage,
        mode: SyncMode,
    ) -> (
        Wal<TJob>,
        Queue<TJob>,
        Receiver<WalEvent>,
        JoinHandle<()>,
    ) {
        let (tx, rx) = queue(None);
        let (wal, jrx, h) = spawn_on(storage, mode, 1 << 20, rx);
        (wal, tx, jrx, h)
    }

    /// An append of the records `ids`, each the submit of a job of that id.
    fn own_append(ids: std::ops::Range<u64>) -> Append<TJob> {
        Append {
            records: cancel_batch(ids.clone()),
            jobs: ids
                .map(|id| TJob {
                    id,
                    key: None,
                    submitted_at: 0,
                })
                .collect(),
            ack: None,
        }
    }

    /// Waits (up to a minute) until `image()` satisfies `ok`.
    fn wait_for_image(image: impl Fn() -> MemStorage, ok: impl Fn(&MemStorage) -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if ok(&image()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn a_lone_append_is_durable_and_handed_on_before_append_now_returns() {
        let storage = MemStorage::new();
        let (wal, tx, events, h) = start_wal(&storage, SyncMode::Always);
        let ack = wal.append_now(own_append(0..3)).ok().expect("the log is idle");
        assert!(ack.is_ok());
        assert_eq!(ack.first_lsn, 1);
        // Durable on return: a power cut now keeps it.
        assert_eq!(job_records(&storage.crash_image(0)), [0, 1, 2]);
        // Its jobs were handed on before the answer.
        match events.try_recv() {
            Ok(WalEvent::Durable(jobs)) => {
                assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [0, 1, 2])
            }
            other => panic!("expected the jobs, got {other:?}"),
        }
        // The next one follows it, after the sync mark that speaks for the first.
        let ack = wal.append_now(own_append(3..4)).ok().unwrap();
        assert_eq!(ack.first_lsn, 5);
        stop(&tx, h);
        // Stopped: the append is given back, nothing written.
        let back = wal.append_now(own_append(9..10)).expect_err("given back");
        assert_eq!(back.jobs[0].id, 9);
        assert_eq!(job_records(&storage.crash_image(usize::MAX)), [0, 1, 2, 3]);
    }

    /// The commit thread on a fresh `storage`, with `events` as the runtime's hand-off.
    fn start_with_events(
        storage: &MemStorage,
        events: Box<dyn FnMut(WalEvent) + Send>,
    ) -> (Wal<TJob>, Queue<TJob>, JoinHandle<()>) {
        let scan = read_log(storage, &mut |_| Ok(())).unwrap();
        let app = Appender::open(Arc::new(storage.clone()), &scan, 1 << 20, Arc::default());
        let (tx, rx) = queue(None);
        let opts = Options {
            mode: SyncMode::Always,
            seal_after: None,
        };
        let (wal, h) = spawn(app.unwrap(), opts, KeyIndex::new(1 << 40, 1000), rx, events);
        (wal, tx, h)
    }

    /// Sends the commit thread the jobs `ids` as an append somebody waits for (nobody reads the
    /// answer: the child that sends it is about to die).
    fn send_waited(tx: &Queue<TJob>, ids: std::ops::Range<u64>) {
        let (ack, _) = crossbeam_channel::bounded(1);
        let append = Append {
            ack: Some(ack),
            ..own_append(ids)
        };
        assert!(tx.send(WalMsg::Append(append)).is_ok());
    }

    /// A hand-off that panics on the first jobs it is given: a bug in the runtime.
    fn buggy_hand_off() -> Box<dyn FnMut(WalEvent) + Send> {
        Box::new(|e| {
            if let WalEvent::Durable(_) = e {
                panic!("a bug in the hand-off");
            }
        })
    }

    #[test]
    fn a_panic_on_the_commit_thread_stops_the_process() {
        let out = child::run("wal::commit::tests::child_panics_on_the_commit_thread");
        child::assert_aborted(&out, "duejob-wal", "a bug in the hand-off");
    }

    /// Run by the test above, in a child process.
    #[test]
    #[ignore = "run in a child process by a_panic_on_the_commit_thread_stops_the_process"]
    fn child_panics_on_the_commit_thread() {
        if !child::enter() {
            return;
        }
        let storage = MemStorage::new();
        let (_wal, tx, h) = start_with_events(&storage, buggy_hand_off());
        send_waited(&tx, 0..1);
        let _ = h.join();
        // Not reached: the process is gone before the thread ends.
        std::process::exit(0);
    }

    #[test]
    fn after_a_writer_panicked_holding_the_log_the_commit_thread_stops_the_process() {
        let out = child::run(
            "wal::commit::tests::child_panics_holding_the_log_then_the_commit_thread_is_asked",
        );
        // The caller's own thread only unwinds (it is not on the primary path's list); the commit
        // thread then finds the log poisoned and stops the process rather than serve it.
        child::assert_aborted(&out, "duejob-wal", "WAL writer panicked");
        assert!(String::from_utf8_lossy(&out.stderr).contains("a bug in the hand-off"));
    }

    /// Run by the test above, in a child process.
    #[test]
    #[ignore = "run in a child process by after_a_writer_panicked_holding_the_log_the_commit_thread_stops_the_process"]
    fn child_panics_holding_the_log_then_the_commit_thread_is_asked() {
        if !child::enter() {
            return;
        }
        let storage = MemStorage::new();
        let (wal, tx, h) = start_with_events(&storage, buggy_hand_off());
        // Until the log is taken: the commit thread may hold it for a moment.
        let caller = std::thread::spawn(move || {
            let mut append = own_append(0..1);
            while let Err(back) = wal.append_now(append) {
                append = back;
                std::thread::yield_now();
            }
        });
        assert!(caller.join().is_err(), "the caller's append_now panicked");
        send_waited(&tx, 1..2);
        let _ = h.join();
        std::process::exit(0);
    }

    #[test]
    fn append_now_gives_the_append_back_while_another_writer_holds_the_log() {
        let storage = MemStorage::new();
        let (wal, tx, _events, h) = start_wal(&storage, SyncMode::Always);
        let held = wal.shared.log.lock().unwrap();
        // A holder that only writes is waited for a moment (SPIN), then given up on.
        let back = wal.append_now(own_append(0..1)).expect_err("busy");
        assert_eq!(back.records.byte_len(), cancel_batch(0..1).byte_len());
        // A holder in fdatasync is not waited for at all: the append joins the next group.
        wal.shared.syncing.store(true, Ordering::Release);
        let back = wal.append_now(back).expect_err("syncing");
        wal.shared.syncing.store(false, Ordering::Release);
        drop(held);
        assert!(wal.append_now(back).is_ok());
        stop(&tx, h);
        assert_eq!(job_records(&storage.crash_image(0)), [0]);
    }

    #[test]
    fn a_lone_append_goes_ahead_of_records_nobody_waits_for_but_not_of_a_waited_append() {
        let storage = MemStorage::new();
        let (wal, tx, _events, h) = start_wal(&storage, SyncMode::Always);
        // The commit thread takes what is sent and then waits for the log, held here.
        let held = wal.shared.log.lock().unwrap();
        tx.send(WalMsg::Append(Append {
            records: cancel_batch(0..1),
            jobs: vec![],
            ack: None,
        }))
        .unwrap();
        assert!(!wal.shared.queued(), "the dispatcher's records are not waited for");
        let (atx, arx) = crossbeam_channel::bounded(1);
        tx.send(WalMsg::Append(Append {
            records: cancel_batch(1..2),
            jobs: vec![],
            ack: Some(atx),
        }))
        .unwrap();
        assert!(wal.shared.queued(), "a waited append is counted from before it is sent");
        drop(held);
        assert!(arx.recv().unwrap().is_ok());
        // Lowered once written, before anyone hears of it.
        assert!(!wal.shared.queued());
        // With the log free, a lone append goes only when nothing waited for is queued.
        wal.shared.waited.fetch_add(1, Ordering::AcqRel);
        let mut back = wal.append_now(own_append(2..3)).expect_err("queued ahead of it");
        wal.shared.waited.fetch_sub(1, Ordering::AcqRel);
        let ack = loop {
            // The commit thread may still hold the log a moment after answering.
            match wal.append_now(back) {
                Ok(ack) => break ack,
                Err(a) => {
                    back = a;
                    std::thread::yield_now();
                }
            }
        };
        assert!(ack.is_ok());
        stop(&tx, h);
        assert_eq!(job_records(&storage.crash_image(0)), [0, 1, 2]);
    }

    #[test]
    fn after_append_now_the_commit_thread_wakes_for_the_timers_it_moved() {
        // Batch mode: the append is acknowledged written, not synced; nobody sends the commit
        // thread anything, so only the wake-up makes it sync (and mark) in time.
        let storage = MemStorage::new();
        let (wal, tx, _events, h) =
            start_wal(&storage, SyncMode::Batch(Duration::from_millis(20)));
        // Let the commit thread go to sleep with no timer at all.
        std::thread::sleep(Duration::from_millis(50));
        assert!(wal.append_now(own_append(0..1)).ok().unwrap().is_ok());
        let synced = wait_for_image(|| storage.crash_image(0), |img| records_in(img) == 1);
        assert!(synced, "the commit thread never synced the batch");
        // Mode always: after a lone group, an idle sync mark follows (written by the commit
        // thread, MARK_IDLE later), so the log's last record is covered by one.
        let storage = MemStorage::new();
        let (wal2, tx2, _e2, h2) = start_wal(&storage, SyncMode::Always);
        std::thread::sleep(Duration::from_millis(50));
        assert!(wal2.append_now(own_append(0..1)).ok().unwrap().is_ok());
        let last_is_mark = |img: &MemStorage| {
            let mut last = None;
            let _ = read_log(img, &mut |r| {
                last = Some(matches!(r.record, Record::Sync(_)));
                Ok(())
            });
            last == Some(true)
        };
        assert!(
            wait_for_image(|| storage.crash_image(usize::MAX), last_is_mark),
            "no idle sync mark after the lone group"
        );
        stop(&tx, h);
        stop(&tx2, h2);
    }

    #[test]
    fn appends_now_and_through_the_commit_thread_interleave_without_loss_or_reorder() {
        // 4 threads, each alternating appends of its own (waiting for each answer, as a
        // connection does) between the two ways; every answer agrees with the log, each
        // thread's records are in its order, and the jobs are handed on in log order.
        let storage = MemStorage::new();
        let (wal, tx, events, h) = start_wal(&storage, SyncMode::Always);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (wal, tx) = (wal.clone(), tx.clone());
                std::thread::spawn(move || {
                    let mut answers = Vec::new();
                    for i in 0..200u64 {
                        let id = t * 10_000 + i * 2;
                        let a = own_append(id..id + 2);
                        let ack = if i % 3 == 0 {
                            Err(a)
                        } else {
                            wal.append_now(a)
                        };
                        let ack = match ack {
                            Ok(ack) => ack,
                            Err(mut a) => {
                                let (atx, arx) = crossbeam_channel::bounded(1);
                                a.ack = Some(atx);
                                tx.send(WalMsg::Append(a)).unwrap();
                                arx.recv().unwrap()
                            }
                        };
                        assert!(ack.is_ok());
                        answers.push((id, ack.first_lsn));
                    }
                    answers
                })
            })
            .collect();
        let answers: Vec<(u64, u64)> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        stop(&tx, h);
        let img = storage.crash_image(0);
        let mut at = std::collections::HashMap::new();
        let mut order = Vec::new();
        read_log(&img, &mut |r| {
            if let Some(id) = r.record.job_id() {
                at.insert(id, r.lsn);
                order.push(id);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(order.len(), 1600, "every record once");
        for (id, lsn) in &answers {
            assert_eq!(at[id], *lsn, "job {id}");
            assert_eq!(at[&(id + 1)], lsn + 1, "job {id}'s append is contiguous");
        }
        for t in 0..4u64 {
            let mine: Vec<u64> = order.iter().copied().filter(|id| id / 10_000 == t).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "thread {t} reordered");
        }
        let handed: Vec<u64> = events
            .try_iter()
            .flat_map(|e| match e {
                WalEvent::Durable(jobs) => jobs.into_iter().map(|j| j.id).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(handed, order, "jobs are handed on in log order");
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
            .map(|r| {
                let a = r.recv().unwrap();
                assert!(a.is_ok());
                a.first_lsn
            })
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

    fn stop(tx: &Queue<TJob>, h: JoinHandle<()>) {
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
            assert!(arx.recv().unwrap().is_ok());
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
            let a = arx.recv().unwrap();
            let e = &a.failure.as_ref().expect("a failure").error;
            assert!(
                matches!(**e, WalError::Io { .. } | WalError::Failed(_)),
                "{e}"
            );
            // The record was removed again: certainly not in the log.
            assert_eq!(a.fates().next(), Some(Fate::NotRecorded));
        }
        assert!(
            matches!(jobs.try_recv(), Ok(WalEvent::Failed(_))),
            "the failure is reported"
        );
        assert!(
            jobs.try_recv().is_err(),
            "no job is handed on after a failure"
        );
        drop(tx);
        h.join().unwrap();
    }

    /// One group of many appends that crosses a segment boundary, with a fault at every point:
    /// each record's answer must agree with the log. `Recorded` is in the synced image at that
    /// LSN; `NotRecorded` is in no image, not even among the unsynced bytes a process crash
    /// keeps; `Unknown` only where removing the failed records failed too.
    #[test]
    fn every_answer_agrees_with_the_log_whatever_operation_fails() {
        let appends = 60u64;
        let per = 4u64;
        let run = |fault: Option<Fault>| {
            let storage = match fault {
                Some(f) => MemStorage::with_fault(f),
                None => MemStorage::new(),
            };
            let (tx, rx) = queue(None);
            let mut acks = Vec::new();
            // Queued before the thread starts: one group, larger than a segment.
            for i in 0..appends {
                let (atx, arx) = crossbeam_channel::bounded(1);
                tx.send(WalMsg::Append(Append {
                    records: cancel_batch(i * per..(i + 1) * per),
                    jobs: vec![],
                    ack: Some(atx),
                }))
                .unwrap();
                acks.push(arx);
            }
            let (_events, h) = start_on(&storage, SyncMode::Always, 8192, rx);
            let acks: Vec<Ack> = acks.into_iter().map(|r| r.recv().unwrap()).collect();
            drop(tx);
            h.join().unwrap();
            (storage, acks)
        };
        let (clean, acks) = run(None);
        assert!(acks.iter().all(Ack::is_ok));
        let total = clean.ops();
        let segments = clean.list().unwrap().len();
        assert!(segments >= 2, "the group must cross a segment boundary");
        let (mut uncertain, mut recorded_despite_failure) = (0, 0);
        for k in 5..total {
            for fault in [
                Fault::NoSpaceAt(k),
                Fault::IoErrorAt(k),
                Fault::IoErrorFrom(k),
            ] {
                let (storage, acks) = run(Some(fault));
                let at = |image: &MemStorage| {
                    let mut m = std::collections::HashMap::new();
                    let _ = read_log(image, &mut |r| {
                        if let Some(id) = r.record.job_id() {
                            m.insert(id, r.lsn);
                        }
                        Ok(())
                    });
                    m
                };
                let synced = at(&storage.crash_image(0));
                let written = at(&storage.crash_image(usize::MAX));
                for (i, ack) in acks.iter().enumerate() {
                    for (j, fate) in ack.fates().take(per as usize).enumerate() {
                        let id = i as u64 * per + j as u64;
                        match fate {
                            Fate::Recorded(lsn) => {
                                assert_eq!(
                                    synced.get(&id),
                                    Some(&lsn),
                                    "{fault:?}: record {id} answered recorded at {lsn}"
                                );
                                if ack.failure.is_some() {
                                    recorded_despite_failure += 1;
                                }
                            }
                            Fate::NotRecorded => assert!(
                                !written.contains_key(&id),
                                "{fault:?}: record {id} answered not recorded, but it is there"
                            ),
                            Fate::Unknown => uncertain += 1,
                            Fate::Duplicate { .. } => panic!("no keys here"),
                        }
                    }
                }
            }
        }
        assert!(
            uncertain > 0,
            "a dying disk must leave some answers uncertain"
        );
        // The case that broke: a rotation fails after the first part of the group was synced
        // into the old segment; those records are in the log and must be answered so.
        assert!(recorded_despite_failure > 0);
    }

    #[test]
    fn after_a_failure_in_batch_mode_the_commit_thread_does_not_wake_to_sync_again() {
        // Op 5 is the first record write (ops 0-4 create the segment).
        let storage = MemStorage::with_fault(Fault::IoErrorAt(6));
        let scan = read_log(&storage, &mut |_| Ok(())).unwrap();
        let app =
            Appender::open(Arc::new(storage.clone()), &scan, 1 << 20, Arc::default()).unwrap();
        let mut l = CommitLoop::new(
            Keeper::spawn(durable::Writer::new(Arc::new(storage.clone()))),
            app,
            Options {
                mode: SyncMode::Batch(Duration::from_millis(200)),
                seal_after: None,
            },
            KeyIndex::new(1 << 40, 1000),
            Box::new(|_: WalEvent| {}),
            Arc::default(),
        );
        let mut body = Vec::new();
        Record::Cancel(Cancel { id: 1, at: 0 }).encode_into(&mut body);
        l.appender
            .push(crate::wal::record::rtype::CANCEL, SCHEMA, &body)
            .unwrap();
        l.appender.write().unwrap(); // op 5
        assert!(l.timers().0.is_some(), "unsynced data: a sync is due");
        l.appender
            .push(crate::wal::record::rtype::CANCEL, SCHEMA, &body)
            .unwrap();
        assert!(l.appender.write().is_err()); // op 6 fails: poisoned, data still unsynced
                                              // Before the fix the sync deadline stayed in the past: recv_deadline returned at once,
                                              // the sync failed at once, and the thread spun at full CPU until restart.
        assert_eq!(l.timers(), (None, None));
    }

    #[test]
    fn a_duplicate_of_a_record_the_failure_kept_is_still_answered_as_a_duplicate() {
        // Batch mode: group 1 (key K) is written and acknowledged, not synced; group 2's write
        // (op 6) fails and is rolled back to its start, keeping group 1; group 3 repeats K.
        let storage = MemStorage::with_fault(Fault::IoErrorAt(6));
        let (tx, rx) = queue(None);
        let (_events, h) = start_on(
            &storage,
            SyncMode::Batch(Duration::from_secs(60)),
            1 << 20,
            rx,
        );
        let keyed = |id: u64| TJob {
            id,
            key: Some("K".into()),
            submitted_at: crate::clock::now_ms(),
        };
        let send = |records: RecordBatch, jobs: Vec<TJob>| {
            let (atx, arx) = crossbeam_channel::bounded(1);
            tx.send(WalMsg::Append(Append {
                records,
                jobs,
                ack: Some(atx),
            }))
            .unwrap();
            arx.recv().unwrap()
        };
        let first = send(cancel_batch(1..2), vec![keyed(1)]);
        assert_eq!(first.fates().next(), Some(Fate::Recorded(1)));
        let failed = send(cancel_batch(2..3), vec![]);
        assert_eq!(failed.fates().next(), Some(Fate::NotRecorded));
        let again = send(cancel_batch(3..4), vec![keyed(3)]);
        assert_eq!(
            again.fates().next(),
            Some(Fate::Duplicate { id: 1, lsn: 1 })
        );
        drop(tx);
        h.join().unwrap();
        assert_eq!(job_records(&storage.crash_image(usize::MAX)), [1]);
    }
}
