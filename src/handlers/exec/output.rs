//! The output of every exec attempt, on disk under `DATA/output/` (`duejob log`), never held in
//! memory beyond one read buffer.
//!
//! A job's attempts live in `DATA/output/ID/`; an attempt's output (stdout and stderr as they
//! arrive, interleaved) goes into chunks `N.0`, `N.1`, ... of [`CHUNK`] bytes each, so that byte
//! `o` of the stream is in chunk `o / CHUNK` at `o % CHUNK`. Once chunk `k` starts, chunk `k-2`
//! is deleted: an attempt keeps its last [`CHUNK`] to 2·[`CHUNK`] bytes ([`KEEP`]), and a reader
//! that follows by offset learns how many bytes went before it could read them (`skipped`).
//!
//! The whole directory is bounded by `output_max_mib` (the oldest jobs' output goes first) and
//! by `history_retention` (a job's output goes with its history), on a thread of the store's
//! own (`duejob-output`), woken when an attempt ends over budget and every 10 minutes:
//! never on a worker (a slow sweep must not hold an attempt's result past its timeout) nor on
//! the dispatch path. A write that fails (a full disk) stops that attempt's output with a
//! warning; the job runs on (G6).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// Bytes per chunk file.
pub const CHUNK: u64 = 32 << 10;
/// Most bytes one attempt keeps (two chunks).
pub const KEEP: u64 = 2 * CHUNK;
/// Most bytes one `log` reply carries.
pub const MAX_READ: usize = KEEP as usize;
/// How often the retention sweep runs at most.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// `DATA/output/`: where the attempts write, and what `log` reads. Dropping it stops its
/// sweeping thread.
#[derive(Debug)]
pub struct OutputStore {
    shared: Arc<Shared>,
    /// Wakes the sweeper (bounded 1: one pending wake-up is enough).
    wake: Sender<()>,
}

/// What the attempts and the sweeper share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    budget: u64,
    retention: Duration,
    /// Bytes in the directory (as far as this daemon knows: counted at start, then kept up).
    total: AtomicU64,
    /// Jobs with attempts writing now, and how many (a timed-out attempt may still be dying
    /// when the next starts): the sweep leaves them alone, and it holds this lock while it
    /// removes a job's output, so no attempt can start in it meanwhile.
    active: Mutex<HashMap<u64, u32>>,
}

/// A read of one attempt's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    /// Offset (in the attempt's stream) of the first byte of `data`.
    pub start: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Offset to ask for next.
    pub next: u64,
    /// Bytes between the offset asked for and `start` that are no longer kept.
    pub skipped: u64,
}

impl OutputStore {
    /// The store in `dir` (created mode 0700: job output may hold secrets), at most `budget`
    /// bytes (0: keep nothing), each job's output kept `retention` after its last attempt.
    pub fn open(dir: &Path, budget: u64, retention: Duration) -> std::io::Result<OutputStore> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            budget,
            retention,
            total: AtomicU64::new(0),
            active: Mutex::new(HashMap::new()),
        });
        let total = shared.jobs().iter().map(|(_, p)| disk_use(p)).sum();
        shared.total.store(total, Relaxed);
        let (wake, rx) = crossbeam_channel::bounded(1);
        let sweeper = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("duejob-output".into())
            .spawn(move || sweeper.sweep_loop(&rx))?;
        Ok(OutputStore { shared, wake })
    }

    /// Bytes kept now.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.shared.total.load(Relaxed)
    }

    /// Sweeps now, on the caller's thread (tests).
    #[cfg(test)]
    fn sweep_now(&self, retention_too: bool) {
        self.shared.tidy(retention_too);
    }

    /// Starts writing attempt `attempt` of job `id` (`None` with no budget, or when the
    /// directory cannot be made: logged).
    /// The directory and the first chunk are made with the first byte: a job that prints
    /// nothing costs nothing on disk.
    pub fn attempt(&self, id: u64, attempt: u32) -> Option<AttemptLog<'_>> {
        if self.shared.budget == 0 {
            return None;
        }
        if let Ok(mut a) = self.shared.active.lock() {
            *a.entry(id).or_default() += 1;
        }
        Some(AttemptLog {
            store: &self.shared,
            wake: &self.wake,
            id,
            attempt,
            dir: self.shared.job_dir(id),
            file: None,
            chunk: 0,
            written: 0,
            failed: false,
        })
    }

}

impl Shared {
    fn job_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Deletes job `id`'s output (with `active` locked by the caller, `id` not in it).
    fn remove(&self, id: u64) {
        let dir = self.job_dir(id);
        let size = disk_use(&dir);
        if std::fs::remove_dir_all(&dir).is_ok() {
            self.sub(size);
        }
    }

    fn sub(&self, n: u64) {
        let _ = self
            .total
            .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(n)));
    }

    /// Job ids with output, oldest (lowest id) first, with their directories.
    fn jobs(&self) -> Vec<(u64, PathBuf)> {
        let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
            .collect();
        v.sort_unstable_by_key(|(id, _)| *id);
        v
    }

    fn bytes(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// The sweeper: a retention sweep at start and every [`SWEEP_EVERY`], a budget sweep when
    /// woken; ends when the store is dropped.
    fn sweep_loop(&self, wake: &Receiver<()>) {
        self.tidy(true);
        loop {
            match wake.recv_timeout(SWEEP_EVERY) {
                Ok(()) => self.tidy(false),
                Err(RecvTimeoutError::Timeout) => self.tidy(true),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The oldest jobs' output goes while over the budget (down to 90% of it), and with
    /// `retention_too`, the output of jobs whose last attempt is older than the retention.
    fn tidy(&self, retention_too: bool) {
        let over = self.bytes() > self.budget;
        if !over && !retention_too {
            return;
        }
        let now = SystemTime::now();
        let mut removed = 0;
        for (id, dir) in self.jobs() {
            let old = retention_too
                && std::fs::metadata(&dir)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| now.duration_since(m).unwrap_or_default() > self.retention);
            let squeeze = over && self.bytes() > self.budget / 10 * 9;
            if !old && !squeeze {
                if !retention_too {
                    break; // over budget no more
                }
                continue;
            }
            // Under the lock: no attempt of this job starts while its output goes.
            let Ok(active) = self.active.lock() else { return };
            if !active.contains_key(&id) {
                self.remove(id);
                removed += 1;
            }
        }
        if removed > 0 {
            log::info!(
                "exec output: removed the output of {removed} jobs (past history_retention or \
                 over output_max_mib); {} bytes kept",
                self.bytes()
            );
        }
    }
}

/// Reads attempt `attempt` of job `id` from the store in `root` (`DATA/output`), from offset
/// `from`, at most `max` bytes. Anyone may read while the attempt writes.
pub fn read(root: &Path, id: u64, attempt: u32, from: u64, max: usize) -> Chunked {
    let dir = root.join(id.to_string());
let chunks = chunks_of(&dir, attempt);
let (Some(&first), Some(&last)) = (chunks.first(), chunks.last()) else {
    return Chunked {
        start: from,
        next: from,
        ..Chunked::default()
    };
};
let kept_from = first * CHUNK;
let start = from.max(kept_from);
let mut r = Chunked {
    start,
    skipped: start - from,
    next: start,
    data: Vec::new(),
};
let mut at = start;
while r.data.len() < max && at / CHUNK <= last {
    let k = at / CHUNK;
    let Ok(mut f) = File::open(dir.join(format!("{attempt}.{k}"))) else {
        if !r.data.is_empty() {
            break;
        }
        // Deleted by the writer just now: what is kept starts at the next chunk.
        at = (k + 1) * CHUNK;
        r.start = at;
        r.skipped = at - from;
        continue;
    };
    let want = (max - r.data.len()).min((CHUNK - at % CHUNK) as usize);
    let mut buf = vec![0u8; want];
    let n = f
        .seek(SeekFrom::Start(at % CHUNK))
        .and_then(|_| read_full(&mut f, &mut buf))
        .unwrap_or(0);
    r.data.extend_from_slice(&buf[..n]);
    at += n as u64;
    if n < want {
        break; // the end so far
    }
}
r.next = r.start + r.data.len() as u64;
r
}

/// Chunk numbers of `attempt` in `dir`, ascending.
fn chunks_of(dir: &Path, attempt: u32) -> Vec<u64> {
    let prefix = format!("{attempt}.");
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// What the budget charges for a file of `len` bytes: whole blocks, as the disk spends them.
fn charged(len: u64) -> u64 {
    len.div_ceil(BLOCK) * BLOCK
}

/// The file system's block, and what a job's directory costs.
const BLOCK: u64 = 4096;

/// A job directory's use as the budget counts it: the directory and its files' blocks.
fn disk_use(dir: &Path) -> u64 {
    BLOCK
        + std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| charged(m.len()))
            .sum::<u64>()
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One attempt's output being written.
#[derive(Debug)]
pub struct AttemptLog<'a> {
    store: &'a Shared,
    wake: &'a Sender<()>,
    id: u64,
    attempt: u32,
    dir: PathBuf,
    file: Option<File>,
    /// The chunk `file` is.
    chunk: u64,
    written: u64,
    failed: bool,
}

impl AttemptLog<'_> {
    fn open_chunk(&mut self, k: u64) {
        self.chunk = k;
        if k == 0 {
            match std::fs::create_dir(&self.dir) {
                Ok(()) => {
                    self.store.total.fetch_add(BLOCK, Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // The same attempt number again (the daemon died before the attempt's
                    // start was durable): what the earlier run wrote goes, or a reader would
                    // mix the two.
                    for c in chunks_of(&self.dir, self.attempt) {
                        let old = self.dir.join(format!("{}.{c}", self.attempt));
                        let size = std::fs::metadata(&old).map(|m| m.len()).unwrap_or(0);
                        if std::fs::remove_file(&old).is_ok() {
                            self.store.sub(charged(size));
                        }
                    }
                }
                Err(e) => return self.fail(&e),
            }
        }
        let path = self.dir.join(format!("{}.{k}", self.attempt));
        match File::create(&path) {
            Ok(f) => self.file = Some(f),
            Err(e) => self.fail(&e),
        }
        if k >= 2 {
            let old = self.dir.join(format!("{}.{}", self.attempt, k - 2));
            let size = std::fs::metadata(&old).map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(&old).is_ok() {
                self.store.sub(charged(size));
            }
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        if !self.failed {
            log::warn!(
                "exec job {} attempt {}: its output is no longer kept: {e}",
                self.id,
                self.attempt
            );
        }
        self.failed = true;
        self.file = None;
    }

    /// Appends output as it comes.
    pub fn write(&mut self, mut b: &[u8]) {
        while !b.is_empty() && !self.failed {
            // A chunk opens with its first byte: a stream that ends on a chunk's boundary keeps
            // two full chunks, and one that is empty has no file.
            if self.file.is_none() || self.written / CHUNK != self.chunk {
                self.open_chunk(self.written / CHUNK);
                if self.failed {
                    return;
                }
            }
            let room = (CHUNK - self.written % CHUNK) as usize;
            let (now, rest) = b.split_at(room.min(b.len()));
            let Some(f) = self.file.as_mut() else { return };
            if let Err(e) = f.write_all(now) {
                self.fail(&e);
                return;
            }
            let in_chunk = self.written % CHUNK;
            self.written += now.len() as u64;
            let grown = charged(in_chunk + now.len() as u64) - charged(in_chunk);
            self.store.total.fetch_add(grown, Relaxed);
            b = rest;
        }
    }
}

impl Drop for AttemptLog<'_> {
    fn drop(&mut self) {
        self.file = None;
        if let Ok(mut a) = self.store.active.lock() {
            if let Some(n) = a.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    a.remove(&self.id);
                }
            }
        }
        if self.store.bytes() > self.store.budget {
            let _ = self.wake.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_keeps_its_last_two_chunks_and_a_reader_follows_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let s = OutputStore::open(dir.path(), 1 << 30, Duration::from_secs(3600)).unwrap();
        let mut w = s.attempt(7, 1).unwrap();
        w.write(b"hello ");
        let r = read(dir.path(), 7, 1, 0, MAX_READ);
        assert_eq!((r.start, r.next, r.skipped, &r.data[..]), (0, 6, 0, &b"hello "[..]));
        let r = read(dir.path(), 7, 1, 6, MAX_READ);
        assert_eq!((r.next, r.data.len()), (6, 0), "nothing new yet");
        // 5 chunks' worth: the first three chunks go.
        let big: Vec<u8> = (0..5 * CHUNK).map(|i| b'a' + (i % 26) as u8).collect();
        w.write(&big[6..]);
        let total = 5 * CHUNK;
        let r = read(dir.path(), 7, 1, 6, MAX_READ);
        assert_eq!(r.start, 3 * CHUNK);
        assert_eq!(r.skipped, 3 * CHUNK - 6);
        assert_eq!(r.data.len(), MAX_READ);
        assert_eq!(r.next, total);
        assert_eq!(&r.data[..], &big[3 * CHUNK as usize..]);
        // A read in the middle of a chunk, bounded by max.
        let r = read(dir.path(), 7, 1, 4 * CHUNK + 10, 5);
        assert_eq!((r.start, r.next), (4 * CHUNK + 10, 4 * CHUNK + 15));
        assert_eq!(&r.data[..], &big[(4 * CHUNK + 10) as usize..(4 * CHUNK + 15) as usize]);
        drop(w);
        // Kept: the last two chunks, and the directory.
        assert_eq!(s.bytes(), 2 * CHUNK + BLOCK);
        // Another attempt is its own stream; unknown ones read empty.
        let mut w = s.attempt(7, 2).unwrap();
        w.write(b"second");
        drop(w);
        assert_eq!(read(dir.path(), 7, 2, 0, MAX_READ).data, b"second");
        assert_eq!(read(dir.path(), 7, 3, 0, MAX_READ), Chunked::default());
        assert_eq!(read(dir.path(), 8, 1, 0, MAX_READ), Chunked::default());
        // Reopened, the store counts what is there.
        let again = OutputStore::open(dir.path(), 1 << 30, Duration::from_secs(3600)).unwrap();
        assert_eq!(again.bytes(), BLOCK + 2 * CHUNK + BLOCK, "6 bytes take a block");
        // An attempt that prints nothing leaves nothing.
        drop(s.attempt(9, 1));
        assert!(!dir.path().join("9").exists());
    }

    #[test]
    fn over_budget_the_oldest_jobs_output_goes_first_but_not_a_running_one() {
        let dir = tempfile::tempdir().unwrap();
        // Each job's 1000 bytes cost a block, and its directory another: 8 KiB.
        let s = OutputStore::open(dir.path(), 3 * 8192, Duration::from_secs(3600)).unwrap();
        let running = s.attempt(1, 1);
        let mut running = running.unwrap();
        running.write(&[b'x'; 1000]);
        for id in 2..=5 {
            let mut w = s.attempt(id, 1).unwrap();
            w.write(&[b'y'; 1000]);
            drop(w);
            // What the sweeper does when woken (here on this thread, to look at once).
            s.sweep_now(false);
        }
        // Over budget after job 4: the oldest not running (2, then 3) went.
        assert!(s.bytes() <= 3 * 8192, "{}", s.bytes());
        assert_eq!(read(dir.path(), 1, 1, 0, MAX_READ).data.len(), 1000, "the running job's output stays");
        assert!(read(dir.path(), 2, 1, 0, MAX_READ).data.is_empty());
        assert_eq!(read(dir.path(), 5, 1, 0, MAX_READ).data.len(), 1000, "the newest stays");
        drop(running);
        // Past the retention, every job's output goes but a running one's.
        let s = OutputStore::open(&dir.path().join("r"), 1 << 30, Duration::ZERO).unwrap();
        let mut busy = s.attempt(1, 2).unwrap();
        busy.write(b"still running");
        if let Some(mut w) = s.attempt(2, 1) {
            w.write(b"done");
        }
        s.sweep_now(true);
        assert!(read(&dir.path().join("r"), 2, 1, 0, MAX_READ).data.is_empty());
        assert_eq!(read(&dir.path().join("r"), 1, 2, 0, MAX_READ).data, b"still running");
        drop(busy);
        // No budget: nothing is written at all.
        let none = OutputStore::open(&dir.path().join("none"), 0, Duration::ZERO).unwrap();
        assert!(none.attempt(1, 1).is_none());
    }

    #[test]
    fn an_attempt_number_run_again_after_a_crash_does_not_read_the_earlier_run_s_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = OutputStore::open(dir.path(), 1 << 30, Duration::from_secs(3600)).unwrap();
        let mut w = s.attempt(1, 1).unwrap();
        w.write(&vec![b'o'; 2 * CHUNK as usize + 10]);
        drop(w); // chunks 1 and 2 of the first run stay
        let mut w = s.attempt(1, 1).unwrap();
        w.write(b"new");
        drop(w);
        let r = read(dir.path(), 1, 1, 0, MAX_READ);
        assert_eq!((r.start, r.skipped, &r.data[..]), (0, 0, &b"new"[..]));
        assert_eq!(s.bytes(), BLOCK + BLOCK, "the earlier chunks are no longer counted");
    }

    #[test]
    fn a_write_that_fails_stops_the_output_quietly_for_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = OutputStore::open(dir.path(), 1 << 30, Duration::from_secs(3600)).unwrap();
        let mut w = s.attempt(1, 1).unwrap();
        w.write(b"before");
        // The directory vanishes under it (a full or broken disk looks the same to it).
        std::fs::remove_dir_all(dir.path().join("1")).unwrap();
        w.write(&vec![b'z'; 2 * CHUNK as usize]);
        assert!(w.failed);
        w.write(b"after");
        drop(w);
    }
}
