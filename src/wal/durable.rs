//! The durable point: `wal/durable`, a small file that says how far the log is known durable.
//!
//! Sync marks inside the log vouch for the records before them, but a damage that wipes the last
//! records of the log can wipe the marks after them too (they sit in the same block). This file
//! keeps the same claim out of the log's way: the highest LSN made durable, written by a
//! background thread at most every [`EVERY`] (off the commit path: the commit thread only stores
//! an atomic), and synchronously at a clean shutdown, with a flag saying so. Recovery treats any
//! damage at or below that LSN as damage (never a torn tail), and a log that reads to a lower LSN
//! as missing records.
//!
//! ```text
//! Two slots of 64 bytes, at offsets 0 and 4096 (different blocks: a torn write or a zeroed
//! block leaves the other), written alternately; the valid slot with the higher sequence counts.
//!  0  8 magic         89 44 4A 44 0D 0A 1A 0A  ("\x89DJD\r\n\x1a\n")
//!  8  2 version       u16 = 1
//! 10  2 slot_len      u16 = 64
//! 12  4 flags         u32: bit 0 = written at a clean shutdown
//! 16  8 sequence      u64, higher is newer
//! 24  8 durable_lsn   u64: every record with an LSN up to this one was durable
//! 32  8 at            u64, ms since the epoch
//! 40 16 reserved      0
//! 56  4 crc           CRC-32C of bytes 0..56
//! 60  4 reserved      0
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::io::{SegmentFile, Storage};
use super::WalError;

/// The file's name in the WAL directory.
pub const FILE: &str = "durable";

/// How often, at most, the background thread writes a new durable point.
pub const EVERY: Duration = Duration::from_secs(1);

const MAGIC: [u8; 8] = [0x89, b'D', b'J', b'D', b'\r', b'\n', 0x1a, b'\n'];
const SLOT_LEN: usize = 64;
const SLOT_OFFSETS: [u64; 2] = [0, 4096];
const FLAG_CLEAN: u32 = 1;

/// What the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurablePoint {
    /// Every record with an LSN up to this one was durable.
    pub lsn: u64,
    /// Written at a clean shutdown (nothing was written after it).
    pub clean: bool,
    /// When it was written (ms).
    pub at: u64,
    sequence: u64,
}

fn encode(p: &DurablePoint) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&1u16.to_le_bytes());
    b[10..12].copy_from_slice(&(SLOT_LEN as u16).to_le_bytes());
    let flags = if p.clean { FLAG_CLEAN } else { 0 };
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b[16..24].copy_from_slice(&p.sequence.to_le_bytes());
    b[24..32].copy_from_slice(&p.lsn.to_le_bytes());
    b[32..40].copy_from_slice(&p.at.to_le_bytes());
    let crc = crc32c::crc32c(&b[..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<DurablePoint> {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    if b.len() < SLOT_LEN
        || b[..8] != MAGIC
        || crc32c::crc32c(&b[..56]) != u32::from_le_bytes(b[56..60].try_into().expect("4"))
        || u16::from_le_bytes([b[8], b[9]]) != 1
    {
        return None;
    }
    let flags = u32::from_le_bytes(b[12..16].try_into().expect("4"));
    Some(DurablePoint {
        sequence: u64_at(16),
        lsn: u64_at(24),
        at: u64_at(32),
        clean: flags & FLAG_CLEAN != 0,
    })
}

/// Reads the durable point, if the file exists and a slot checks out. A file whose slots are both
/// damaged is reported (logged) and counts as absent: the log's own sync marks still speak.
pub fn read(storage: &dyn Storage) -> Result<Option<DurablePoint>, WalError> {
    let file = match storage.open(FILE, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io(storage.location(FILE), e)),
    };
    let best = SLOT_OFFSETS
        .iter()
        .filter_map(|&off| {
            let mut b = [0u8; SLOT_LEN];
            let n = file.read_at(&mut b, off).ok()?;
            decode(&b[..n])
        })
        .max_by_key(|p| p.sequence);
    if best.is_none() {
        log::warn!(
            "WAL: {} does not check out (both slots damaged); recovery goes by the log's own sync \
             marks only",
            storage.location(FILE)
        );
    }
    Ok(best)
}

/// Writes durable points into the file (creating it the first time).
pub struct Writer {
    storage: Arc<dyn Storage>,
    file: Option<Box<dyn SegmentFile>>,
    sequence: u64,
    written_lsn: u64,
}

impl Writer {
    /// A writer that goes on from what the file holds now.
    pub fn new(storage: Arc<dyn Storage>) -> Writer {
        let last = read(storage.as_ref()).ok().flatten();
        Writer {
            storage,
            file: None,
            sequence: last.map_or(0, |p| p.sequence),
            written_lsn: last.map_or(0, |p| p.lsn),
        }
    }

    /// Writes and syncs a durable point for `lsn` (if it says more than the last one, or `clean`).
    pub fn write(&mut self, lsn: u64, clean: bool) -> Result<(), WalError> {
        if lsn <= self.written_lsn && !clean {
            return Ok(());
        }
        let loc = self.storage.location(FILE);
        if self.file.is_none() {
            let f = match self.storage.open(FILE, true) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let f = self
                        .storage
                        .create(FILE)
                        .map_err(|e| WalError::io(loc.clone(), e))?;
                    self.storage
                        .sync_dir()
                        .map_err(|e| WalError::io(self.storage.location(""), e))?;
                    f
                }
                Err(e) => return Err(WalError::io(loc, e)),
            };
            self.file = Some(f);
        }
        self.sequence += 1;
        let p = DurablePoint {
            lsn,
            clean,
            at: crate::clock::now_ms(),
            sequence: self.sequence,
        };
        let file = self.file.as_ref().expect("opened");
        let off = SLOT_OFFSETS[(self.sequence % 2) as usize];
        file.write_at(&encode(&p), off)
            .and_then(|_| file.sync_data())
            .map_err(|e| WalError::io(loc, e))?;
        self.written_lsn = lsn;
        Ok(())
    }
}

/// The background thread that keeps the file up to date.
pub struct Keeper {
    lsn: Arc<AtomicU64>,
    stop: Option<Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts the thread; it writes at most every [`EVERY`], when [`Keeper::note`] said more.
    pub fn spawn(mut writer: Writer) -> Keeper {
        let lsn = Arc::new(AtomicU64::new(writer.written_lsn));
        let (stop, stopped): (Sender<bool>, Receiver<bool>) = crossbeam_channel::bounded(1);
        let seen = lsn.clone();
        let thread = std::thread::Builder::new()
            .name("duejob-durable".into())
            .spawn(move || {
                crate::fail_stop::fail_stop(|| loop {
                    let clean = match stopped.recv_timeout(EVERY) {
                        Err(RecvTimeoutError::Timeout) => None,
                        Ok(clean) => Some(clean),
                        Err(RecvTimeoutError::Disconnected) => Some(false),
                    };
                    let now = seen.load(Ordering::Acquire);
                    if let Err(e) = writer.write(now, clean == Some(true)) {
                        log::error!("WAL: cannot write the durable point: {e} (recovery goes by the log's sync marks alone)");
                    }
                    if clean.is_some() {
                        return;
                    }
                })
            })
            .expect("spawn durable-point thread");
        Keeper {
            lsn,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every record up to `lsn` is durable now (one atomic store: the commit thread calls it
    /// after every sync).
    pub fn note(&self, lsn: u64) {
        self.lsn.fetch_max(lsn, Ordering::Release);
    }

    /// Writes the last durable point (`clean`: the log was closed cleanly) and stops the thread.
    pub fn finish(&mut self, clean: bool) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(clean);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::io::MemStorage;

    #[test]
    fn the_newer_slot_counts_and_a_damaged_one_leaves_the_other() {
        let s = MemStorage::new();
        assert_eq!(read(&s).unwrap(), None);
        let mut w = Writer::new(Arc::new(s.clone()));
        w.write(10, false).unwrap();
        w.write(20, true).unwrap();
        let p = read(&s).unwrap().unwrap();
        assert_eq!((p.lsn, p.clean), (20, true));
        // Zero the block of the newer slot: the older one speaks.
        let mut b = s.file_bytes(FILE).unwrap();
        let newer = SLOT_OFFSETS[(p.sequence % 2) as usize] as usize;
        b[newer..newer + SLOT_LEN].fill(0);
        s.set_file_bytes(FILE, b.clone());
        assert_eq!(read(&s).unwrap().map(|p| p.lsn), Some(10));
        // Both damaged: absent (the log's marks still speak).
        let older = SLOT_OFFSETS[((p.sequence + 1) % 2) as usize] as usize;
        b[older + 30] ^= 1;
        s.set_file_bytes(FILE, b);
        assert_eq!(read(&s).unwrap(), None);
        // A new writer goes on from the file (a lower LSN is not written over a higher one).
        let s = MemStorage::new();
        let mut w = Writer::new(Arc::new(s.clone()));
        w.write(5, false).unwrap();
        let mut w = Writer::new(Arc::new(s.clone()));
        w.write(3, false).unwrap();
        assert_eq!(read(&s).unwrap().map(|p| p.lsn), Some(5));
    }
}
