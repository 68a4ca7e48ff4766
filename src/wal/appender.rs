//! Appends records to the current segment, rotating to a new preallocated segment when full.
//!
//! The appender belongs to the group-commit thread. Records are encoded into one buffer
//! ([`Appender::push`]) and reach the file in a single positioned write ([`Appender::write`]),
//! then one fdatasync ([`Appender::sync`]). After any failed write or sync the appender is
//! poisoned: every later call returns [`WalError::Failed`] (the kernel may have dropped the dirty
//! pages, so a retried fsync could claim success for lost data).
//!
//! The appender also writes the log's sync marks ([`Appender::push_mark`]): a `sync` record that
//! says every record up to an LSN was durable before it was written. The commit thread puts one at
//! the start of a group when a sync has made records durable since the last mark, and writes one
//! on its own when the log goes idle, so that recovery can tell a torn write (after the last
//! sync) from damage to synced data.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::format::{
    encode_record, segment_file_name, segment_salt, SegmentHeader, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use super::io::{SegmentFile, Storage};
use super::reader::{LogScan, Tail};
use super::record::{rtype, Record, SyncMark, SCHEMA, SYNC_MARK_LEN};
use super::stats::WalStats;
use super::WalError;

/// Default segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// A point in the log: where the next write goes, and the LSN of the last record before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Segment sequence number.
    pub seq: u64,
    /// Offset in that segment.
    pub offset: u64,
    /// LSN of the last record before `offset`.
    pub lsn: u64,
}

/// A segment the appender finished with: synced, and never written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Its sequence number.
    pub seq: u64,
    /// Offset just past its last record.
    pub end: u64,
    /// LSN of its last record.
    pub last_lsn: u64,
}

/// Appends to the log.
pub struct Appender {
    storage: Arc<dyn Storage>,
    file: Box<dyn SegmentFile>,
    name: String,
    seq: u64,
    salt: u32,
    /// File offset where `buf` will be written.
    offset: u64,
    next_lsn: u64,
    segment_size: u64,
    buf: Vec<u8>,
    /// Records in `buf`.
    buffered: u64,
    /// Bytes written since the last sync.
    unsynced: bool,
    /// Offset in the current segment up to which the file is durable.
    synced_offset: u64,
    /// LSN of the last record pushed that is not a sync mark.
    pushed_data_lsn: u64,
    /// ... of the last such record written to the file.
    written_data_lsn: u64,
    /// ... of the last such record made durable by a completed fdatasync.
    synced_data_lsn: u64,
    /// The highest LSN a sync mark in the log (written or buffered) says was durable.
    marked_lsn: u64,
    failed: Option<String>,
    stats: Arc<WalStats>,
    /// Segments sealed since [`Appender::take_sealed`] was last called.
    sealed: Vec<Sealed>,
    /// When the first record that is not a sync mark went into the current segment.
    data_since: Option<std::time::Instant>,
}

impl Appender {
    /// Opens the log for appending after `scan` (from [`super::reader::read_log`]) read it:
    /// removes a segment whose creation was cut short, truncates a torn tail (logging a warning
    /// with segment and offset), or creates the first segment of an empty log. The last segment
    /// is synced, so that everything recovery read is durable before anything new is written.
    pub fn open(
        storage: Arc<dyn Storage>,
        scan: &LogScan,
        segment_size: u64,
        stats: Arc<WalStats>,
    ) -> Result<Appender, WalError> {
        let segment_size = segment_size.max(SEGMENT_HEADER_LEN as u64 + 4096);
        let mut segments = scan.segments.clone();
        if let Some(last) = segments.last() {
            if last.tail == Tail::EmptySegment {
                log::warn!(
                    "WAL: removing segment {}: it holds nothing but zeros (a crash cut its \
                     creation short; no record in it was ever acknowledged)",
                    storage.location(&last.name)
                );
                storage
                    .remove(&last.name)
                    .map_err(|e| WalError::io(storage.location(&last.name), e))?;
                storage
                    .sync_dir()
                    .map_err(|e| WalError::io(storage.location(""), e))?;
                segments.pop();
            }
        }
        let Some(last) = segments.last() else {
            let seq = scan.next_seq.max(1);
            let file = create_segment(storage.as_ref(), seq, scan.next_lsn, segment_size)?;
            stats.segments.store(1, Relaxed);
            return Ok(Appender::with_file(
                storage,
                file,
                seq,
                SEGMENT_HEADER_LEN as u64,
                scan,
                segment_size,
                stats,
            ));
        };
        let loc = storage.location(&last.name);
        if let Tail::Damaged { offset } = last.tail {
            return Err(WalError::corrupt(
                loc,
                offset,
                "the log is damaged here; it cannot be appended to".into(),
            ));
        }
        let file = storage
            .open(&last.name, true)
            .map_err(|e| WalError::io(loc.clone(), e))?;
        if let Tail::Torn { offset, reason } = &last.tail {
            log::warn!("WAL: torn tail in segment {loc} at offset {offset} ({reason}); truncating");
            file.set_len(*offset)
                .map_err(|e| WalError::io(loc.clone(), e))?;
            file.allocate(segment_size.max(*offset))
                .map_err(|e| WalError::io(loc.clone(), e))?;
            file.sync_data().map_err(|e| WalError::io(loc.clone(), e))?;
        } else {
            if file.size().map_err(|e| WalError::io(loc.clone(), e))? < segment_size {
                file.allocate(segment_size)
                    .map_err(|e| WalError::io(loc.clone(), e))?;
            }
            // Records written before a crash may still sit unsynced in the page cache: make them
            // durable before anything new (and before a sync mark that speaks for them).
            file.sync_data().map_err(|e| WalError::io(loc.clone(), e))?;
        }
        stats.segments.store(segments.len() as u64, Relaxed);
        Ok(Appender::with_file(
            storage,
            file,
            last.seq,
            last.end,
            scan,
            segment_size,
            stats,
        ))
    }

    fn with_file(
        storage: Arc<dyn Storage>,
        file: Box<dyn SegmentFile>,
        seq: u64,
        offset: u64,
        scan: &LogScan,
        segment_size: u64,
        stats: Arc<WalStats>,
    ) -> Appender {
        let next_lsn = scan.next_lsn;
        stats.active_bytes.store(offset, Relaxed);
        // Everything the scan read is durable now (open synced it).
        let durable = next_lsn - 1;
        stats
            .durable_lsn
            .store(durable, std::sync::atomic::Ordering::Release);
        Appender {
            storage,
            file,
            name: segment_file_name(seq),
            seq,
            salt: segment_salt(seq),
            offset,
            next_lsn,
            segment_size,
            buf: Vec::with_capacity(1 << 20),
            buffered: 0,
            unsynced: false,
            synced_offset: offset,
            pushed_data_lsn: durable,
            written_data_lsn: durable,
            synced_data_lsn: durable,
            marked_lsn: scan.marked_lsn.min(durable),
            failed: None,
            stats,
            sealed: Vec::new(),
            // A segment opened with records in it holds data from before the restart.
            data_since: (offset > SEGMENT_HEADER_LEN as u64).then(std::time::Instant::now),
        }
    }

    /// The storage it writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The counters this appender updates.
    pub fn stats(&self) -> &WalStats {
        &self.stats
    }

    /// Whether an earlier failure poisoned the appender.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn check(&self) -> Result<(), WalError> {
        match &self.failed {
            Some(why) => Err(WalError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: WalError) -> WalError {
        log::error!("WAL: {e}; refusing further writes until restart");
        self.failed = Some(e.to_string());
        self.buf.clear();
        self.buffered = 0;
        e
    }

    /// Buffers one record and returns its LSN. Rotates to a new segment first when the record
    /// would not fit (writing and syncing what is buffered for the old one).
    pub fn push(&mut self, rtype: u8, schema: u8, body: &[u8]) -> Result<u64, WalError> {
        let lsn = self.push_record(rtype, schema, body)?;
        self.pushed_data_lsn = lsn;
        self.data_since.get_or_insert_with(std::time::Instant::now);
        Ok(lsn)
    }

    /// When the first record other than a sync mark went into the current segment (`None`
    /// while it holds none).
    pub fn data_since(&self) -> Option<std::time::Instant> {
        self.data_since
    }

    /// Seals the current segment if it holds any record: writes and syncs what is buffered, and
    /// goes on in a new segment. Returns whether it sealed one.
    pub fn seal(&mut self) -> Result<bool, WalError> {
        self.check()?;
        if self.offset + self.buf.len() as u64 <= SEGMENT_HEADER_LEN as u64 {
            return Ok(false);
        }
        self.write()?;
        self.sync()?;
        let next = self.seq + 1;
        if let Err(e) = self.rotate(next) {
            return Err(self.poison(e));
        }
        Ok(true)
    }

    /// The segments sealed since the last call, oldest first.
    pub fn take_sealed(&mut self) -> Vec<Sealed> {
        std::mem::take(&mut self.sealed)
    }

    /// Whether a completed sync made records durable that no sync mark speaks for yet.
    pub fn mark_due(&self) -> bool {
        self.synced_data_lsn > self.marked_lsn
    }

    /// Buffers a sync mark if one is due ([`Appender::mark_due`]): a `sync` record saying that
    /// every record up to the last one synced was durable. Returns its LSN.
    pub fn push_mark(&mut self, now_ms: u64) -> Result<Option<u64>, WalError> {
        if !self.mark_due() {
            return Ok(None);
        }
        let claim = self.synced_data_lsn;
        let mut body = Vec::with_capacity(SYNC_MARK_LEN as usize);
        Record::Sync(SyncMark {
            synced_lsn: claim,
            at: now_ms,
        })
        .encode_into(&mut body);
        let lsn = self.push_record(rtype::SYNC, SCHEMA, &body)?;
        self.marked_lsn = claim;
        self.stats.marks.fetch_add(1, Relaxed);
        Ok(Some(lsn))
    }

    /// LSN of the last record made durable by a completed fdatasync (sync marks aside): every
    /// record up to it survives a power cut.
    pub fn durable_lsn(&self) -> u64 {
        self.synced_data_lsn
    }

    fn push_record(&mut self, rtype: u8, schema: u8, body: &[u8]) -> Result<u64, WalError> {
        self.check()?;
        let size = (RECORD_HEADER_LEN + body.len()) as u64;
        if self.offset + self.buf.len() as u64 + size > self.segment_size
            && (self.offset + self.buf.len() as u64) > SEGMENT_HEADER_LEN as u64
        {
            self.write()?;
            self.sync()?;
            let next = self.seq + 1;
            if let Err(e) = self.rotate(next) {
                return Err(self.poison(e));
            }
        }
        let lsn = self.next_lsn;
        encode_record(&mut self.buf, rtype, schema, lsn, body, self.salt);
        self.next_lsn += 1;
        self.buffered += 1;
        Ok(lsn)
    }

    /// Writes every buffered record with one positioned write.
    pub fn write(&mut self) -> Result<(), WalError> {
        self.check()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_at(&self.buf, self.offset) {
            let e = WalError::io(self.storage.location(&self.name), e);
            return Err(self.poison(e));
        }
        self.stats
            .record_group(self.buffered, self.buf.len() as u64);
        self.offset += self.buf.len() as u64;
        self.stats.active_bytes.store(self.offset, Relaxed);
        self.buf.clear();
        self.buffered = 0;
        self.unsynced = true;
        self.written_data_lsn = self.pushed_data_lsn;
        Ok(())
    }

    /// fdatasyncs the current segment if anything was written since the last sync.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check()?;
        if !self.unsynced {
            return Ok(());
        }
        let t = std::time::Instant::now();
        if let Err(e) = self.file.sync_data() {
            let e = WalError::io(self.storage.location(&self.name), e);
            return Err(self.poison(e));
        }
        self.stats.record_fsync(t.elapsed().as_micros() as u64);
        self.unsynced = false;
        self.synced_offset = self.offset;
        self.synced_data_lsn = self.written_data_lsn;
        self.stats
            .durable_lsn
            .store(self.synced_data_lsn, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Where the next write goes, and the LSN of the last record pushed: what a group can be
    /// rolled back to ([`Appender::rollback`]).
    pub fn position(&self) -> Position {
        Position {
            seq: self.seq,
            offset: self.offset + self.buf.len() as u64,
            lsn: self.next_lsn - 1,
        }
    }

    /// After a failure (the appender is poisoned): removes from the current segment everything
    /// past `to` (or, without it, past the last completed sync), and syncs that, so that the
    /// records after it are certainly not in the log. Returns the LSN of the last record that
    /// stays. `to` counts only if it lies in the current segment at or after the synced offset
    /// (everything before the synced offset stays anyway).
    ///
    /// Fails when the truncation or its sync fails: then the records after the last sync may or
    /// may not be in the log after a restart.
    pub fn rollback(&mut self, to: Option<Position>) -> Result<u64, WalError> {
        self.buf.clear();
        self.buffered = 0;
        let (offset, lsn) = match to {
            Some(p) if p.seq == self.seq && p.offset >= self.synced_offset => (p.offset, p.lsn),
            _ => (self.synced_offset, self.synced_data_lsn),
        };
        let loc = self.storage.location(&self.name);
        self.file
            .set_len(offset)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| WalError::io(loc.clone(), e))?;
        self.offset = offset;
        log::warn!("WAL: removed what was written after offset {offset} of {loc} (after LSN {lsn}): it was never acknowledged");
        Ok(lsn)
    }

    /// Whether written data awaits a sync.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    fn rotate(&mut self, seq: u64) -> Result<(), WalError> {
        let old = Sealed {
            seq: self.seq,
            end: self.offset,
            last_lsn: self.next_lsn - 1,
        };
        self.file = create_segment(self.storage.as_ref(), seq, self.next_lsn, self.segment_size)?;
        self.sealed.push(old);
        self.data_since = None;
        self.name = segment_file_name(seq);
        self.seq = seq;
        self.salt = segment_salt(seq);
        self.offset = SEGMENT_HEADER_LEN as u64;
        self.stats.active_bytes.store(self.offset, Relaxed);
        self.synced_offset = self.offset;
        self.unsynced = false;
        self.stats.segments.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// Creates segment `seq`: preallocates it, writes and syncs its header, then fsyncs the
/// directory, so that no record can land in a segment whose name might vanish in a crash.
/// If any step fails, the file is removed again: a half-allocated segment would hold disk space
/// (on a full disk, all of it) for nothing.
fn create_segment(
    storage: &dyn Storage,
    seq: u64,
    first_lsn: u64,
    segment_size: u64,
) -> Result<Box<dyn SegmentFile>, WalError> {
    let name = segment_file_name(seq);
    let loc = storage.location(&name);
    let io = |e| WalError::io(loc.clone(), e);
    let file = storage.create(&name).map_err(io)?;
    let made = file
        .allocate(segment_size)
        .and_then(|_| file.write_at(&SegmentHeader { seq, first_lsn }.encode(), 0))
        .and_then(|_| file.sync_data())
        .map_err(io)
        .and_then(|_| {
            storage
                .sync_dir()
                .map_err(|e| WalError::io(storage.location(""), e))
        });
    if let Err(e) = made {
        drop(file);
        match storage.remove(&name).and_then(|_| storage.sync_dir()) {
            Ok(()) => log::warn!("WAL: could not create segment {loc} ({e}); removed it again"),
            Err(r) => log::error!(
                "WAL: could not create segment {loc} ({e}), nor remove it ({r}); remove it by hand"
            ),
        }
        return Err(e);
    }
    log::debug!("WAL: new segment {loc} from LSN {first_lsn}");
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::io::{Fault, MemStorage};
    use crate::wal::reader::read_log;
    use crate::wal::record::{rtype, Cancel, Record, SCHEMA};

    fn body(id: u64) -> Vec<u8> {
        let mut b = Vec::new();
        Record::Cancel(Cancel { id, at: 1 }).encode_into(&mut b);
        b
    }

    fn ids(storage: &MemStorage) -> (Vec<u64>, LogScan) {
        let mut ids = Vec::new();
        let scan = read_log(storage, &mut |r| {
            ids.extend(r.record.job_id());
            Ok(())
        })
        .unwrap();
        (ids, scan)
    }

    fn open(s: &MemStorage, size: u64) -> Appender {
        let (_, scan) = ids(s);
        Appender::open(Arc::new(s.clone()), &scan, size, Arc::default()).unwrap()
    }

    #[test]
    fn rotates_and_reads_back_in_order() {
        let s = MemStorage::new();
        let mut a = open(&s, 8192);
        for i in 0..1000 {
            a.push(rtype::CANCEL, SCHEMA, &body(i)).unwrap();
            if i % 7 == 0 {
                a.write().unwrap();
                a.sync().unwrap();
            }
        }
        a.write().unwrap();
        a.sync().unwrap();
        let (got, scan) = ids(&s);
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert!(
            scan.segments.len() >= 4,
            "rotated into {} segments",
            scan.segments.len()
        );
        assert_eq!(scan.next_lsn, 1001);
        // Reopen and keep appending: LSNs continue.
        let mut a = open(&s, 8192);
        assert_eq!(a.push(rtype::CANCEL, SCHEMA, &body(1000)).unwrap(), 1001);
        a.write().unwrap();
        a.sync().unwrap();
        assert_eq!(ids(&s).0.len(), 1001);
    }

    #[test]
    fn a_failed_sync_poisons_the_appender() {
        // ops 0-4 create segment 1 (create, fallocate, header write, sync, dir sync); then the
        // write is op 5 and its sync op 6.
        let s = MemStorage::with_fault(Fault::IoErrorAt(6));
        let mut a = open(&s, 1 << 20);
        a.push(rtype::CANCEL, SCHEMA, &body(1)).unwrap();
        a.write().unwrap();
        assert!(matches!(a.sync(), Err(WalError::Io { .. })));
        assert!(matches!(
            a.push(rtype::CANCEL, SCHEMA, &body(2)),
            Err(WalError::Failed(_))
        ));
        assert!(matches!(a.write(), Err(WalError::Failed(_))));
        assert!(a.failed().is_some());
    }

    #[test]
    fn enospc_on_write_is_reported_and_sticky() {
        let s = MemStorage::with_fault(Fault::NoSpaceAt(5));
        let mut a = open(&s, 1 << 20);
        a.push(rtype::CANCEL, SCHEMA, &body(1)).unwrap();
        let e = a.write().unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
        assert!(matches!(a.sync(), Err(WalError::Failed(_))));
    }
}
