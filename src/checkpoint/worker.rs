//! The checkpointer thread: decides when to take a checkpoint, takes it, releases the segments it
//! covers to `DATA/archive/`, and keeps the archive within its retention.
//!
//! It never touches the primary path: it reads sealed segments (synced, never written again) and
//! the previous checkpoint, and writes `wal/checkpoint.tmp`; the group-commit thread and the
//! dispatcher never wait for it. It talks to the commit thread only to ask it to seal the current
//! segment (`duejob wal checkpoint`), and hears from it when a segment is sealed.
//!
//! Triggers, checked when a segment is sealed and once a second:
//! - **tail**: the sealed segments after the checkpoint hold `after_bytes`, or as much as the
//!   checkpoint itself if that is more (what a restart reads: so a large live set is not
//!   rewritten for every `after_bytes` of new log);
//! - **dead**: what a checkpoint would release (the checkpoint in place and the sealed segments)
//!   is at least twice what it would write (the live jobs, as the dispatcher counts them, and the
//!   history and keys the last checkpoint carried): at least half of it is dead;
//! - **age**: a sealed segment has waited `seal_after` and a checkpoint would release more than
//!   it writes (the commit thread seals the current segment on the same timer, so an idle daemon
//!   releases its log too);
//! - **forced**: `duejob wal checkpoint`.
//!
//! A failure is logged, counted in `stats`, and retried with a backoff (1 s doubling to 5 min);
//! the daemon goes on (G6).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::file::{self, Header, Read};
use crate::config::CheckpointConfig;
use crate::job::LiveSize;
use crate::wal::appender::Sealed;
use crate::wal::io::Storage;
use crate::wal::keys::KeyIndex;
use crate::wal::reader::{list_segments, read_sealed, After};
use crate::wal::stats::WalStats;
use crate::wal::WalError;

/// Share of dead bytes that triggers a checkpoint.
pub const DEAD_SHARE: f64 = 0.5;
/// What a live job's checkpoint entry takes beyond its payload and key (its fields, a short
/// timeline, the framing): the estimate of what a checkpoint writes.
pub const JOB_ENTRY_OVERHEAD: u64 = 130;
/// Longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the archive's retention is checked when nothing else happens.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What the checkpointer needs to know beyond [`CheckpointConfig`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Triggers and the archive.
    pub cfg: CheckpointConfig,
    /// `key_retention` in ms.
    pub key_retention_ms: u64,
    /// `max_keys`.
    pub max_keys: usize,
    /// `history_limit`.
    pub history_limit: usize,
    /// The oldest segment the catalog has still to read: it and those after it are kept in the
    /// archive even past `archive_retention` (but not past `archive_max_mib`).
    pub catalog_pin: Pin,
}

/// Says which segment the catalog reads ([`Settings::catalog_pin`]); `u64::MAX`: none.
#[derive(Clone)]
pub struct Pin(pub Arc<dyn Fn() -> u64 + Send + Sync>);

impl Default for Pin {
    fn default() -> Pin {
        Pin(Arc::new(|| u64::MAX))
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({})", (self.0)())
    }
}

/// Messages to the checkpointer.
pub enum Msg {
    /// Segments were sealed.
    Sealed(Vec<Sealed>),
    /// Take a checkpoint now (sealing the current segment first) and answer.
    Force(Sender<Result<Done, String>>),
    /// Stop.
    Stop,
}

/// What one checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// Why it was taken: `tail`, `dead`, `age` or `forced`.
    pub reason: &'static str,
    /// The last LSN it covers (0: there was nothing to cover).
    pub lsn: u64,
    /// The last segment it covers.
    pub segment: u64,
    /// Its size.
    pub bytes: u64,
    /// Live jobs in it.
    pub jobs: u64,
    /// Keys in it.
    pub keys: u64,
    /// Segments released (archived or deleted).
    pub released: u64,
    /// How long it took.
    pub ms: u64,
}

/// Counters `stats` reads (written by the checkpointer only).
#[derive(Debug, Default)]
pub struct Stats {
    /// Checkpoints taken since start.
    pub checkpoints: AtomicU64,
    /// Failed attempts since start.
    pub failures: AtomicU64,
    /// When the last checkpoint was taken (ms), 0 if none.
    pub last_at: AtomicU64,
    /// Its last LSN.
    pub last_lsn: AtomicU64,
    /// How long it took (ms).
    pub last_ms: AtomicU64,
    /// Its size in bytes.
    pub last_bytes: AtomicU64,
    /// Bytes of sealed segments after it (the current segment's are in the WAL's stats).
    pub sealed_bytes: AtomicU64,
    /// Segments in the archive.
    pub archive_segments: AtomicU64,
    /// Bytes in the archive.
    pub archive_bytes: AtomicU64,
    /// Segments released since start.
    pub released: AtomicU64,
    /// Estimated dead bytes in the checkpoint and the sealed segments after it: what a checkpoint
    /// would release beyond what it would write.
    pub dead_bytes: AtomicU64,
    /// The last failure, until a checkpoint succeeds.
    pub last_error: Mutex<Option<String>>,
}

/// The running checkpointer.
pub struct Checkpointer {
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Its counters.
    pub stats: Arc<Stats>,
}

impl Checkpointer {
    /// Where to send [`Msg`]s.
    pub fn sender(&self) -> Sender<Msg> {
        self.tx.clone()
    }

    /// Stops the thread (a checkpoint under way is finished or abandoned between segments;
    /// either way the log is consistent) and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the checkpointer. `checkpoint`: the checkpoint recovery read, if any; `sealed`: the
/// segments after it but the current one, as recovery found them; `live`: the dispatcher's count
/// of the live set; `seal`: asks the commit thread to seal the current segment.
pub fn spawn(
    storage: Arc<dyn Storage>,
    settings: Settings,
    checkpoint: Option<&Read>,
    sealed: Vec<Sealed>,
    live: Arc<LiveSize>,
    wal_stats: Arc<WalStats>,
    seal: Box<dyn Fn() -> Result<bool, String> + Send>,
) -> Checkpointer {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut w = Worker::new(storage, settings, live, wal_stats, seal);
    let (stop, stats) = (w.stop.clone(), w.stats.clone());
    if let Some(r) = checkpoint {
        w.placed(r.header, r.bytes);
    }
    let thread = std::thread::Builder::new()
        .name("duejob-checkpoint".into())
        .spawn(move || {
            yield_to_the_primary_path(w.stop.clone());
            w.start(sealed);
            w.run(rx);
        })
        .expect("spawn checkpointer");
    Checkpointer {
        tx,
        stop,
        thread: Some(thread),
        stats,
    }
}

/// The share of the time the checkpointer works while it keeps up with the log; it rests the
/// rest (see [`super::pace`]), and works more when the log outgrows [`backlog_limit`]. Measured
/// with a million pending jobs and checkpoints back to back (BENCHMARKS.md): at full speed,
/// submit p99 rose 4.7× for one client; a quarter, 4.5×; a tenth in 1 ms slices, 1.1-1.6× for
/// one client but 2.2-2.5× at 50,000 pipelined submits/s; a tenth in 100 µs slices, within
/// 1.5× in all three loads. The fold's memory traffic and the length of its slices (a woken
/// thread waits for the end of one on its core), not its disk writes, are what the primary path
/// feels.
const DUTY: f64 = 0.1;

/// Lowers this thread's priority to niceness 19 (on Linux, per thread), and paces its work
/// ([`super::pace`]): the checkpointer takes what the primary path leaves, until the daemon
/// stops (`stop`), when a checkpoint under way finishes at full speed. (Not `SCHED_IDLE`, which
/// measured as well for latency: a thread cannot leave it again without privileges, so a
/// checkpointer behind the log could never claim its share on a busy machine.)
fn yield_to_the_primary_path(stop: Arc<AtomicBool>) {
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        log::warn!("checkpointer: could not lower its priority: {e}");
    }
    super::enable_pacing(DUTY, stop);
}

/// The log not yet covered by a checkpoint beyond which the checkpointer works faster:
/// `checkpoint_after_mib` (the operator's bound on what a restart reads), or twice the checkpoint
/// if that is more (the tail trigger waits for as much log as the checkpoint holds, and a
/// checkpoint that starts then and keeps up finishes before as much again has come).
fn backlog_limit(cfg: &CheckpointConfig, ckpt_bytes: u64) -> u64 {
    cfg.after_bytes.max(2 * ckpt_bytes)
}

/// What the triggers look at.
#[derive(Debug, Clone, Copy)]
struct Log {
    /// Bytes of the sealed segments after the checkpoint.
    sealed_bytes: u64,
    /// How long the oldest of them has been sealed (`None`: there are none).
    oldest_sealed: Option<Duration>,
    /// The checkpoint's size.
    ckpt_bytes: u64,
    /// What a checkpoint now would release, and about what it would write.
    frees: u64,
    writes: u64,
}

/// Which trigger fires for `log`, if any (see the module's doc).
fn trigger(cfg: &CheckpointConfig, log: &Log) -> Option<&'static str> {
    let oldest = log.oldest_sealed?;
    if log.sealed_bytes >= cfg.after_bytes.max(log.ckpt_bytes) {
        return Some("tail");
    }
    if log.writes as f64 <= (1.0 - DEAD_SHARE) * log.frees as f64 {
        return Some("dead");
    }
    if log.frees > log.writes && oldest >= cfg.seal_after {
        return Some("age");
    }
    None
}

/// A sealed segment after the checkpoint, and when the checkpointer heard of it.
struct SealedSeg {
    seg: Sealed,
    since: Instant,
}

struct Worker {
    storage: Arc<dyn Storage>,
    settings: Settings,
    stats: Arc<Stats>,
    wal_stats: Arc<WalStats>,
    live: Arc<LiveSize>,
    seal: Box<dyn Fn() -> Result<bool, String> + Send>,
    stop: Arc<AtomicBool>,
    /// What the checkpoint in place covers.
    covered: After,
    /// Its size.
    ckpt_bytes: u64,
    /// What of it is not live jobs: the history and the keys (the next one carries about as
    /// much).
    carried: u64,
    /// Sealed segments after it, oldest first.
    sealed: Vec<SealedSeg>,
    failures_in_row: u32,
    retry_at: Option<Instant>,
    last_sweep: Option<Instant>,
    /// The archive holds segments kept past their retention only until the catalog reads them.
    pinned: bool,
}

impl Worker {
    fn new(
        storage: Arc<dyn Storage>,
        settings: Settings,
        live: Arc<LiveSize>,
        wal_stats: Arc<WalStats>,
        seal: Box<dyn Fn() -> Result<bool, String> + Send>,
    ) -> Worker {
        Worker {
            storage,
            settings,
            stats: Arc::default(),
            wal_stats,
            live,
            seal,
            stop: Arc::default(),
            covered: After::START,
            ckpt_bytes: 0,
            carried: 0,
            sealed: Vec::new(),
            failures_in_row: 0,
            retry_at: None,
            last_sweep: None,
            pinned: false,
        }
    }

    /// Notes the checkpoint now in place.
    fn placed(&mut self, h: Header, bytes: u64) {
        self.covered = After {
            seq: h.covered_seq,
            lsn: h.covered_lsn,
        };
        self.ckpt_bytes = bytes;
        self.carried = bytes.saturating_sub(h.job_bytes);
        self.stats.last_lsn.store(h.covered_lsn, Relaxed);
        self.stats.last_at.store(h.created_at, Relaxed);
        self.stats.last_bytes.store(bytes, Relaxed);
    }

    /// Finishes a release a crash cut short, and notes the sealed segments recovery found.
    fn start(&mut self, sealed: Vec<Sealed>) {
        if let Err(e) = self.release(self.covered.seq, &[]) {
            self.failed(&format!("releasing segments a checkpoint covers: {e}"));
        }
        self.note_sealed(sealed);
        self.sweep();
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        while self.step(&rx, Duration::from_secs(1)) {}
    }

    /// Waits up to `wait` for messages, takes in every one that has come, then checkpoints if a
    /// trigger fires. `false`: stop.
    fn step(&mut self, rx: &Receiver<Msg>, wait: Duration) -> bool {
        if self.stop.load(Relaxed) {
            return false;
        }
        let first = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return false,
        };
        // All of them: a checkpoint covers every segment sealed before it starts (taking them
        // one message at a time, a checkpoint that took longer than a segment takes to fill
        // covered one segment each, and the log outgrew the checkpointer).
        for m in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match m {
                Msg::Sealed(s) => self.note_sealed(s),
                Msg::Force(reply) => {
                    let r = self.force(rx);
                    let _ = reply.send(r);
                }
                Msg::Stop => return false,
            }
            if self.stop.load(Relaxed) {
                return false;
            }
        }
        if let Some(reason) = self.due() {
            if let Err(e) = self.checkpoint(reason) {
                self.failed(&e);
            }
        }
        // Segments kept only for the catalog go as soon as it has read them.
        let every = if self.pinned {
            Duration::from_secs(1)
        } else {
            SWEEP_EVERY
        };
        if self.last_sweep.is_none_or(|t| t.elapsed() >= every) {
            self.sweep();
        }
        true
    }

    /// Records a failure: log, stats, backoff.
    fn failed(&mut self, e: &str) {
        self.failures_in_row += 1;
        let wait = Duration::from_secs(1u64 << self.failures_in_row.min(9)).min(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + wait);
        self.stats.failures.fetch_add(1, Relaxed);
        *self.stats.last_error.lock().expect("stats") = Some(e.to_string());
        log::error!(
            "checkpoint failed ({} in a row): {e}; next attempt in {}s",
            self.failures_in_row,
            wait.as_secs()
        );
    }

    /// Adds sealed segments.
    fn note_sealed(&mut self, segs: Vec<Sealed>) {
        let now = Instant::now();
        let covered = self.covered.seq;
        self.sealed.extend(
            segs.into_iter()
                .filter(|seg| seg.seq > covered)
                .map(|seg| SealedSeg { seg, since: now }),
        );
        self.publish();
    }

    fn sealed_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.seg.end).sum()
    }

    /// What a checkpoint now would release (the checkpoint in place and the sealed segments), and
    /// about what it would write (the live jobs and what the last one carried).
    fn balance(&self) -> (u64, u64) {
        let jobs = self.live.jobs.load(Relaxed);
        let bytes = self.live.bytes.load(Relaxed);
        let writes = jobs * JOB_ENTRY_OVERHEAD + bytes + self.carried;
        (self.ckpt_bytes + self.sealed_bytes(), writes)
    }

    fn publish(&self) {
        let (frees, writes) = self.balance();
        self.stats.sealed_bytes.store(self.sealed_bytes(), Relaxed);
        self.stats
            .dead_bytes
            .store(frees.saturating_sub(writes), Relaxed);
    }

    /// Which trigger fires, if any.
    fn due(&self) -> Option<&'static str> {
        let cfg = &self.settings.cfg;
        if !cfg.auto || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let (frees, writes) = self.balance();
        trigger(
            cfg,
            &Log {
                sealed_bytes: self.sealed_bytes(),
                oldest_sealed: self.sealed.first().map(|s| s.since.elapsed()),
                ckpt_bytes: self.ckpt_bytes,
                frees,
                writes,
            },
        )
    }

    /// `duejob wal checkpoint`: seal, take in the sealed segment, checkpoint.
    fn force(&mut self, rx: &Receiver<Msg>) -> Result<Done, String> {
        (self.seal)().map_err(|e| format!("sealing the current segment: {e}"))?;
        // The commit thread reported what it sealed before it answered: take it in, keep any
        // other request for later.
        let mut later = Vec::new();
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Sealed(s) => self.note_sealed(s),
                other => later.push(other),
            }
        }
        let r = self.checkpoint("forced");
        for m in later {
            match m {
                Msg::Force(reply) => {
                    let _ = reply.send(r.clone());
                }
                Msg::Stop => self.stop.store(true, Relaxed),
                Msg::Sealed(_) => {}
            }
        }
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    /// Takes a checkpoint covering every sealed segment, then releases them.
    fn checkpoint(&mut self, reason: &'static str) -> Result<Done, String> {
        let t = Instant::now();
        let Some(last) = self.sealed.last().map(|s| s.seg) else {
            return Ok(Done {
                reason,
                lsn: self.covered.lsn,
                segment: self.covered.seq,
                bytes: self.ckpt_bytes,
                jobs: 0,
                keys: 0,
                released: 0,
                ms: 0,
            });
        };
        // The log not yet covered: the sealed segments, the active one, and what comes meanwhile.
        let wal = Arc::clone(&self.wal_stats);
        let (base, since) = (
            self.sealed_bytes() + wal.active_bytes.load(Relaxed),
            wal.bytes.load(Relaxed),
        );
        let limit = backlog_limit(&self.settings.cfg, self.ckpt_bytes);
        super::follow(Some(super::Follow {
            backlog: Box::new(move || base + wal.bytes.load(Relaxed).saturating_sub(since)),
            limit,
        }));
        let r = self.take(reason, last, t);
        super::follow(None);
        let peak = super::take_peak();
        if peak > DUTY {
            log::info!(
                "checkpointer: the log outgrew {} MiB not yet covered; it worked at up to {:.0}% \
                 of the time to catch up",
                limit >> 20,
                peak * 100.0
            );
        }
        r
    }

    /// [`Worker::checkpoint`] through `last`, begun at `t`.
    fn take(&mut self, reason: &'static str, last: Sealed, t: Instant) -> Result<Done, String> {
        let st = &self.settings;
        let now = crate::clock::now_ms();
        let keys = KeyIndex::new(st.key_retention_ms, st.max_keys);
        let mut fold = super::new_fold(keys, st.history_limit, now);
        // The live set as the dispatcher counts it now, and some room for what the tail adds.
        let live = self.live.jobs.load(Relaxed) as usize;
        fold.reserve(live + live / 4);
        let (after, _) = super::load(self.storage.as_ref(), &mut fold)
            .map_err(|e| format!("reading the checkpoint: {e}"))?;
        if after != self.covered {
            return Err(format!(
                "the checkpoint in place covers up to segment {} but segment {} was expected",
                after.seq, self.covered.seq
            ));
        }
        let mut first = after.lsn + 1;
        for s in &self.sealed {
            if self.stop.load(Relaxed) {
                return Err("stopped".into());
            }
            read_sealed(self.storage.as_ref(), s.seg.seq, first, &mut |r| {
                fold.apply(r);
                super::pace();
                Ok(())
            })
            .map_err(|e| format!("reading sealed segment {}: {e}", s.seg.seq))?;
            first = s.seg.last_lsn + 1;
        }
        let folded = fold.split();
        let header = Header {
            covered_seq: last.seq,
            covered_lsn: last.last_lsn,
            next_id: folded.max_id + 1,
            created_at: now,
            job_bytes: 0,
        };
        let written = file::write(self.storage.as_ref(), &header, &folded)
            .map_err(|e| format!("writing the checkpoint: {e}"))?;
        folded.free_gradually();
        let ends: Vec<(u64, u64)> = self.sealed.iter().map(|s| (s.seg.seq, s.seg.end)).collect();
        self.placed(
            Header {
                job_bytes: written.job_bytes,
                ..header
            },
            written.bytes,
        );
        self.sealed.clear();
        self.failures_in_row = 0;
        self.retry_at = None;
        *self.stats.last_error.lock().expect("stats") = None;
        let ms = t.elapsed().as_millis() as u64;
        let s = &self.stats;
        s.checkpoints.fetch_add(1, Relaxed);
        s.last_ms.store(ms, Relaxed);
        self.publish();
        let released = self
            .release(last.seq, &ends)
            .map_err(|e| format!("releasing segments up to {}: {e}", last.seq))?;
        self.sweep();
        log::info!(
            "checkpoint ({reason}) through LSN {} (segment {}): {} live jobs, {} keys, {} bytes in \
             {ms} ms; released {released} segments",
            last.last_lsn,
            last.seq,
            written.end.jobs,
            written.end.keys,
            written.bytes
        );
        Ok(Done {
            reason,
            lsn: last.last_lsn,
            segment: last.seq,
            bytes: written.bytes,
            jobs: written.end.jobs,
            keys: written.end.keys,
            released,
            ms,
        })
    }

    /// Moves the segments up to `upto` out of `wal/`: into the archive, or deleted when the
    /// archive keeps nothing. Each step is durable before the next (the archive's directory,
    /// then the log's). Returns how many it released.
    fn release(&mut self, upto: u64, ends: &[(u64, u64)]) -> Result<u64, WalError> {
        let storage = self.storage.as_ref();
        let segs: Vec<(u64, String)> = list_segments(storage)?
            .into_iter()
            .filter(|(seq, _)| *seq <= upto)
            .collect();
        if segs.is_empty() {
            return Ok(0);
        }
        let dir_err = |e| WalError::io(storage.location(""), e);
        let pin = (self.settings.catalog_pin.0)();
        // With no retention, only what the catalog has still to read goes to the archive.
        let keep_all = !self.settings.cfg.archive_retention.is_zero();
        let archive = if keep_all || segs.iter().any(|(seq, _)| *seq >= pin) {
            storage.archive()
        } else {
            None
        };
        let mut archived = 0;
        for (seq, name) in &segs {
            let r = match archive {
                Some(_) if keep_all || *seq >= pin => {
                    archived += 1;
                    storage.move_to_archive(name)
                }
                _ => super::remove_gradually(storage, name),
            };
            r.map_err(|e| WalError::io(storage.location(name), e))?;
            self.pinned |= !keep_all && *seq >= pin;
        }
        if let Some(a) = &archive {
            a.sync_dir().map_err(|e| WalError::io(a.location(""), e))?;
        }
        storage.sync_dir().map_err(dir_err)?;
        let n = segs.len() as u64;
        let _ = self
            .wal_stats
            .segments
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
        // The archive's figure counts them before `released` does, so no reader sees a
        // segment released and the archive empty while the file is still there (the sweep
        // below recounts).
        self.stats.archive_segments.fetch_add(archived, Relaxed);
        self.stats.released.fetch_add(n, Relaxed);
        // A segment preallocated to its full size and sealed early holds mostly zeros: the
        // archive keeps only its records.
        if let Some(a) = &archive {
            for (seq, name) in segs.iter().filter(|(seq, _)| keep_all || *seq >= pin) {
                let Some(&(_, end)) = ends.iter().find(|(s, _)| s == seq) else {
                    continue;
                };
                if let Err(e) = trim(a.as_ref(), name, end) {
                    log::warn!("archive: could not trim {}: {e}", a.location(name));
                }
            }
        }
        Ok(n)
    }

    /// Deletes archived segments past `archive_retention`, then the oldest ones beyond
    /// `archive_max_mib`; updates the archive's figures.
    fn sweep(&mut self) {
        self.last_sweep = Some(Instant::now());
        let Some(archive) = self.storage.archive() else {
            return;
        };
        let segs = match list_segments(archive.as_ref()) {
            Ok(s) => s,
            // No archive directory yet.
            Err(_) => return,
        };
        let cfg = &self.settings.cfg;
        let now = crate::clock::now_ms();
        let keep_ms = cfg.archive_retention.as_millis() as u64;
        let mut kept: Vec<(String, u64)> = Vec::new();
        let mut removed = 0;
        let pin = (self.settings.catalog_pin.0)();
        self.pinned = false;
        for (seq, name) in segs {
            let old = archive
                .modified_ms(&name)
                .is_ok_and(|m| m.saturating_add(keep_ms) <= now);
            self.pinned |= (old || keep_ms == 0) && seq >= pin;
            if (old || keep_ms == 0) && seq < pin {
                match super::remove_gradually(archive.as_ref(), &name) {
                    Ok(()) => removed += 1,
                    Err(e) => log::warn!("archive: could not delete {}: {e}", archive.location(&name)),
                }
            } else {
                let size = archive
                    .open(&name, false)
                    .and_then(|f| f.size())
                    .unwrap_or(0);
                kept.push((name, size));
            }
        }
        let mut total: u64 = kept.iter().map(|(_, s)| s).sum();
        if let Some(max) = cfg.archive_max_bytes {
            let mut i = 0;
            while total > max && i < kept.len() {
                match super::remove_gradually(archive.as_ref(), &kept[i].0) {
                    Ok(()) => {
                        total -= kept[i].1;
                        removed += 1;
                    }
                    Err(e) => log::warn!(
                        "archive: could not delete {}: {e}",
                        archive.location(&kept[i].0)
                    ),
                }
                i += 1;
            }
            kept.drain(..i);
        }
        if removed > 0 {
            if let Err(e) = archive.sync_dir() {
                log::warn!("archive: could not sync {}: {e}", archive.location(""));
            }
            log::info!("archive: deleted {removed} segments past their retention");
        }
        self.stats
            .archive_segments
            .store(kept.len() as u64, Relaxed);
        self.stats.archive_bytes.store(total, Relaxed);
    }
}

/// Cuts an archived segment's file down to its records, `end` bytes (what follows them is the
/// preallocated zeros; the reader takes the end of the file for a clean end).
fn trim(archive: &dyn Storage, name: &str, end: u64) -> std::io::Result<()> {
    let f = archive.open(name, true)?;
    if f.size()? > end {
        super::shrink_gradually(f.as_ref(), end)?;
        f.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::appender::Appender;
    use crate::wal::io::MemStorage;
    use crate::wal::reader::read_log;
    use crate::wal::record::{sample, SCHEMA};

    const MIB: u64 = 1 << 20;

    fn log(sealed_bytes: u64, ckpt_bytes: u64, frees: u64, writes: u64, age_s: u64) -> Log {
        Log {
            sealed_bytes,
            oldest_sealed: Some(Duration::from_secs(age_s)),
            ckpt_bytes,
            frees,
            writes,
        }
    }

    /// A log of `n` sealed segments of a few jobs each, and what the appender said of them.
    fn sealed_log(n: u64) -> (MemStorage, Vec<Sealed>) {
        let mem = MemStorage::new();
        let scan = read_log(&mem, &mut |_| Ok(())).unwrap();
        let mut a = Appender::open(Arc::new(mem.clone()), &scan, 1 << 20, Arc::default()).unwrap();
        let mut body = Vec::new();
        for seg in 0..n {
            for id in seg * 3 + 1..=seg * 3 + 3 {
                for r in [sample::submit(id, "q"), sample::finish(id, 1, 4)] {
                    body.clear();
                    r.encode_into(&mut body);
                    a.push(r.rtype(), SCHEMA, &body).unwrap();
                }
            }
            a.write().unwrap();
            a.sync().unwrap();
            assert!(a.seal().unwrap());
        }
        let sealed = a.take_sealed();
        assert_eq!(sealed.len() as u64, n);
        (mem, sealed)
    }

    #[test]
    fn a_checkpoint_covers_every_segment_sealed_before_it_starts_not_one_per_message() {
        // The commit thread reports each sealed segment in its own message; while a checkpoint
        // runs, they queue. Taken one at a time, each checkpoint covered one segment, and a log
        // that filled a segment faster than a checkpoint took outgrew the checkpointer (measured:
        // `wal/` past 1 GiB in 90 s of a full cycle at 50,000 jobs/s).
        let (mem, sealed) = sealed_log(3);
        let settings = Settings {
            cfg: CheckpointConfig {
                archive_retention: Duration::ZERO,
                ..CheckpointConfig::default()
            },
            key_retention_ms: 86_400_000,
            max_keys: 1000,
            history_limit: 100,
            catalog_pin: Pin::default(),
        };
        let storage: Arc<dyn Storage> = Arc::new(mem.clone());
        let mut w = Worker::new(
            storage,
            settings,
            Arc::default(),
            Arc::default(),
            Box::new(|| Ok(false)),
        );
        let (tx, rx) = crossbeam_channel::unbounded();
        for s in &sealed {
            tx.send(Msg::Sealed(vec![*s])).unwrap();
        }
        assert!(w.step(&rx, Duration::ZERO));
        assert!(rx.is_empty(), "every message taken in");
        assert_eq!(w.stats.checkpoints.load(Relaxed), 1);
        assert_eq!(w.stats.released.load(Relaxed), 3, "all three segments in one checkpoint");
        assert_eq!(w.covered.seq, sealed[2].seq);
        assert!(w.sealed.is_empty());
        let read = file::read(&mem, &mut |n: &str| Arc::from(n), &mut |_| Ok(()))
            .unwrap()
            .unwrap();
        assert_eq!(read.header.next_id, 10, "the jobs of all three segments folded in");
        assert_eq!(read.header.covered_seq, sealed[2].seq);
        // A stop among the messages stops the worker.
        tx.send(Msg::Stop).unwrap();
        assert!(!w.step(&rx, Duration::ZERO));
    }

    #[test]
    fn the_checkpointer_works_harder_past_the_restart_bound_or_twice_a_large_checkpoint() {
        let cfg = CheckpointConfig::default();
        assert_eq!(backlog_limit(&cfg, 13 * MIB), 256 * MIB);
        assert_eq!(backlog_limit(&cfg, 300 * MIB), 600 * MIB);
        assert_eq!(backlog_limit(&cfg, 0), 256 * MIB);
    }

    #[test]
    fn triggers_fire_on_the_tail_the_dead_share_and_age_and_never_without_a_sealed_segment() {
        let cfg = CheckpointConfig::default();
        // Nothing sealed: nothing to cover.
        let none = Log {
            oldest_sealed: None,
            ..log(0, 0, 10 * MIB, 0, 0)
        };
        assert_eq!(trigger(&cfg, &none), None);
        // The tail reached `after_bytes`, all of it live.
        assert_eq!(
            trigger(&cfg, &log(256 * MIB, 0, 256 * MIB, 300 * MIB, 0)),
            Some("tail")
        );
        // A checkpoint larger than `after_bytes` is rewritten only once the tail is as large.
        assert_eq!(
            trigger(&cfg, &log(256 * MIB, 900 * MIB, 1156 * MIB, 1200 * MIB, 0)),
            None
        );
        assert_eq!(
            trigger(&cfg, &log(900 * MIB, 900 * MIB, 1800 * MIB, 2000 * MIB, 0)),
            Some("tail")
        );
        // Half dead: the checkpoint releases at least what it writes.
        assert_eq!(
            trigger(&cfg, &log(64 * MIB, 20 * MIB, 84 * MIB, 42 * MIB, 0)),
            Some("dead")
        );
        assert_eq!(
            trigger(&cfg, &log(64 * MIB, 20 * MIB, 84 * MIB, 43 * MIB, 0)),
            None
        );
        // Age: only once it would release more than it writes.
        let age = cfg.seal_after.as_secs();
        assert_eq!(
            trigger(&cfg, &log(MIB, 20 * MIB, 21 * MIB, 20 * MIB, age)),
            Some("age")
        );
        assert_eq!(
            trigger(&cfg, &log(MIB, 20 * MIB, 21 * MIB, 20 * MIB, age - 1)),
            None
        );
        // A log of delayed jobs only (their entries outweigh their records): never rewritten
        // for age.
        assert_eq!(
            trigger(&cfg, &log(MIB, 0, MIB, MIB + MIB / 8, 10 * age)),
            None
        );
    }
}
