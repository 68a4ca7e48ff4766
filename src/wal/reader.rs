//! The one WAL decoder. Recovery, the offline tools (`duejob wal verify|inspect|dump|salvage`)
//! and everything else that reads the log go through [`walk_log`] (or its strict form
//! [`read_log`]), so they can never disagree about what a segment holds.
//!
//! Reading is streaming: a window of at least 1 MiB slides over each segment, so a WAL of any size
//! is read in bounded memory. The reader never writes; recovery applies the truncation of a torn
//! tail itself, afterwards.
//!
//! How a bad record is judged (the full policy is in `docs/wal-format.md`, "What recovery assumes
//! about the disk"): in any segment but the last, it is corruption. In the last segment it is a
//! torn tail (bytes written after the last completed fdatasync, which a crash may leave partly
//! persisted, in any order) unless a sync mark says the log was already durable past it: then it
//! is damage to synced data, and an error. Sync marks are looked for both before the bad record
//! and anywhere after it in the segment.

use super::durable;
use super::format::{
    parse_segment_file_name, record_crc, segment_salt, HeaderProblem, RecordHeader, SegmentHeader,
    MAX_BODY, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::io::{SegmentFile, Storage};
use super::record::{rtype, DecodeProblem, Record, SCHEMA, SYNC_MARK_LEN};
use super::WalError;

const WINDOW: usize = 1 << 20;
/// Bytes [`tail_segment`] reads first (then twice as many each time, up to [`WINDOW`]).
const TAIL_WINDOW: usize = 64 << 10;

/// One record as the reader hands it out.
#[derive(Debug)]
pub struct RecordView<'b> {
    /// Segment sequence number.
    pub segment: u64,
    /// Byte offset of the record header in the segment file.
    pub offset: u64,
    /// Log sequence number.
    pub lsn: u64,
    /// Total size on disk (header + body).
    pub size: u32,
    /// The decoded body.
    pub record: Record<'b>,
}

/// How a segment's records end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// At an end marker followed only by zeros, or exactly at the end of the file.
    Clean,
    /// A write that a crash (or a writer still at work) cut short: nothing from `offset` on was
    /// ever durable.
    Torn {
        /// Where the torn record starts; recovery truncates here.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// A last segment whose creation was cut short: its header and everything after it are zeros
    /// (removed by recovery).
    EmptySegment,
    /// Reading stopped at damage (reported as an error); the records before `offset` are sound.
    Damaged {
        /// Where the damage starts.
        offset: u64,
    },
}

/// What scanning one segment found.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// File name.
    pub name: String,
    /// Sequence number.
    pub seq: u64,
    /// LSN of the first record, from the header (0 for an empty or unreadable segment).
    pub first_lsn: u64,
    /// Number of valid records read.
    pub records: u64,
    /// LSN of the last valid record.
    pub last_lsn: Option<u64>,
    /// Offset just past the last valid record.
    pub end: u64,
    /// File length.
    pub file_len: u64,
    /// How the records end.
    pub tail: Tail,
}

/// What scanning the whole log found.
#[derive(Debug, Clone, Default)]
pub struct LogScan {
    /// Every segment read, in order (a damaged one too, with the records before the damage).
    pub segments: Vec<SegmentScan>,
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// The sequence number the next new segment gets when no segment is left to append to.
    pub next_seq: u64,
    /// The highest LSN a sync mark says was durable (0 if none).
    pub marked_lsn: u64,
    /// Segments a checkpoint covers that are still in the directory (their release was cut
    /// short): not read.
    pub covered: Vec<(u64, String)>,
}

/// Where reading starts: after the records a checkpoint covers (segments up to `seq`, LSNs up to
/// `lsn`), or at the log's beginning ([`After::START`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct After {
    /// The last segment covered (0: none).
    pub seq: u64,
    /// The last LSN covered (0: none).
    pub lsn: u64,
}

impl After {
    /// The beginning of a log without a checkpoint.
    pub const START: After = After { seq: 0, lsn: 0 };

    /// From segment `seq` on, at whatever LSN its header says (reading an archive, whose oldest
    /// segments retention deleted).
    pub fn from_segment(seq: u64) -> After {
        After {
            seq: seq.saturating_sub(1),
            lsn: 0,
        }
    }
}

impl LogScan {
    /// The torn tail of the last segment, if any: (segment name, offset, reason).
    pub fn torn_tail(&self) -> Option<(&str, u64, &str)> {
        match self.segments.last().map(|s| (&s.name, &s.tail)) {
            Some((name, Tail::Torn { offset, reason })) => Some((name, *offset, reason)),
            _ => None,
        }
    }

    /// Records read, all segments.
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// LSN of the last record read.
    pub fn last_lsn(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(|s| s.last_lsn)
    }
}

/// What the reader does when it meets damage (corruption, an unreadable file, a gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDamage {
    /// Stop: recovery, and the tools that print records.
    Stop,
    /// Report it and go on with the next segment, from that segment's own header (`wal verify`).
    NextSegment,
    /// Report it and go on with the next record that checks out, even inside the damaged segment
    /// (`wal salvage --past-damage`).
    NextRecord,
}

/// Lists segment files in sequence order; other files are ignored.
pub fn list_segments(storage: &dyn Storage) -> Result<Vec<(u64, String)>, WalError> {
    let names = storage
        .list()
        .map_err(|e| WalError::io(storage.location(""), e))?;
    let mut segs: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|n| parse_segment_file_name(&n).map(|s| (s, n)))
        .collect();
    segs.sort();
    Ok(segs)
}

/// Reads every record of every segment in order, calling `visit` for each valid one.
///
/// Errors: corruption (with segment and offset), a newer format, I/O, or whatever `visit`
/// returns; `visit` has seen every record before the problem. A torn tail of the last segment is
/// not an error: it is reported in the result.
pub fn read_log(
    storage: &dyn Storage,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> Result<LogScan, WalError> {
    let (scan, mut problems) = walk_log(storage, OnDamage::Stop, visit);
    if problems.is_empty() {
        Ok(scan)
    } else {
        Err(problems.swap_remove(0))
    }
}

/// Checks every segment, going on past a damaged one (from the next segment's own header), and
/// returns what the log holds plus every problem found. Used by `duejob wal verify`.
pub fn verify_log(storage: &dyn Storage) -> (LogScan, Vec<WalError>) {
    walk_log(storage, OnDamage::NextSegment, &mut |_| Ok(()))
}

/// Reads the log, calling `visit` for every valid record, and returns what was read and every
/// problem met; `on_damage` says whether to go on after one. An error from `visit` always stops
/// the walk (it is the last problem returned).
pub fn walk_log(
    storage: &dyn Storage,
    on_damage: OnDamage,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> (LogScan, Vec<WalError>) {
    walk_log_after(storage, After::START, on_damage, visit)
}

/// [`read_log`] from `after`: the segments a checkpoint covers are skipped (listed in
/// [`LogScan::covered`]), and the first one read must continue where it ends.
pub fn read_log_after(
    storage: &dyn Storage,
    after: After,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> Result<LogScan, WalError> {
    let (scan, mut problems) = walk_log_after(storage, after, OnDamage::Stop, visit);
    if problems.is_empty() {
        Ok(scan)
    } else {
        Err(problems.swap_remove(0))
    }
}

/// [`walk_log`] from `after` (see [`read_log_after`]).
pub fn walk_log_after(
    storage: &dyn Storage,
    after: After,
    on_damage: OnDamage,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> (LogScan, Vec<WalError>) {
    let mut scan = LogScan {
        segments: Vec::new(),
        next_lsn: after.lsn + 1,
        next_seq: after.seq + 1,
        marked_lsn: 0,
        covered: Vec::new(),
    };
    let mut problems = Vec::new();
    // Read before the segments: it never claims more than what a reader then finds written.
    let vouched = match durable::read(storage) {
        Ok(p) => p.map_or(0, |p| p.lsn),
        Err(e) => {
            problems.push(e);
            if on_damage == OnDamage::Stop {
                return (scan, problems);
            }
            0
        }
    };
    let mut segs = match list_segments(storage) {
        Ok(s) => s,
        Err(e) => {
            problems.push(e);
            return (scan, problems);
        }
    };
    let first = segs.partition_point(|(seq, _)| *seq <= after.seq);
    scan.covered = segs.drain(..first).collect();
    // The LSN the next record must have; unknown after damage (then a header says it), and at
    // the start of an archive (`After::from_segment`).
    let mut expected = (after.seq == 0 || after.lsn > 0).then_some(after.lsn + 1);
    for (i, (seq, name)) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        let prev = if i > 0 { segs[i - 1].0 } else { after.seq };
        if *seq != prev + 1 && (i > 0 || after.seq > 0) {
            let what = if i > 0 {
                format!("segment sequence gap: {seq} follows {prev}")
            } else {
                format!(
                    "segment sequence gap: the checkpoint covers the log through segment {prev}, \
                     but the next segment is {seq}"
                )
            };
            problems.push(WalError::corrupt(storage.location(name), 0, what));
            if on_damage == OnDamage::Stop {
                break;
            }
            expected = None;
        }
        let file = match storage.open(name, false) {
            Ok(f) => f,
            Err(e) => {
                problems.push(WalError::io(storage.location(name), e));
                if on_damage == OnDamage::Stop {
                    break;
                }
                expected = None;
                continue;
            }
        };
        let mut seg = SegmentWalk {
            loc: storage.location(name),
            seq: *seq,
            is_last,
            on_damage,
            w: Window::new(file.as_ref(), 0),
            scan: SegmentScan {
                name: name.to_string(),
                seq: *seq,
                first_lsn: 0,
                records: 0,
                last_lsn: None,
                end: 0,
                file_len: 0,
                tail: Tail::Clean,
            },
            marked: &mut scan.marked_lsn,
            vouched,
            problems: &mut problems,
        };
        let flow = seg.run(expected, visit);
        let s = seg.scan;
        scan.next_seq = s.seq + 1;
        if let Some(l) = s.last_lsn {
            scan.next_lsn = l + 1;
        } else if s.first_lsn > 0 && !matches!(s.tail, Tail::Damaged { .. }) {
            scan.next_lsn = s.first_lsn;
        }
        expected = match &s.tail {
            Tail::Damaged { .. } => None,
            _ => Some(scan.next_lsn),
        };
        scan.segments.push(s);
        if flow == Flow::Stop {
            break;
        }
    }
    // Records the durable point vouches for must all be there: a log that ends sooner lost its
    // tail (wiped, or its last segment removed), whatever the marks inside it say.
    let last = scan.last_lsn().unwrap_or(after.lsn);
    if problems.is_empty() && last < vouched {
        let (name, end) = scan
            .segments
            .last()
            .map_or((String::new(), 0), |s| (s.name.clone(), s.end));
        problems.push(WalError::corrupt(
            storage.location(&name),
            end,
            format!(
                "the log reads only to LSN {last}, but the durable point (wal/{}) says it was \
                 durable through LSN {vouched}: records are missing (a wiped or removed tail)",
                durable::FILE
            ),
        ));
        if let Some(s) = scan.segments.last_mut() {
            s.tail = Tail::Damaged { offset: s.end };
        }
    }
    (scan, problems)
}

/// Reads one sealed segment (`seq`, whose first record must have LSN `first_lsn`), calling
/// `visit` for each record. A sealed segment was synced whole, so any bad record is damage.
pub fn read_sealed(
    storage: &dyn Storage,
    seq: u64,
    first_lsn: u64,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> Result<SegmentScan, WalError> {
    let name = super::format::segment_file_name(seq);
    let file = storage
        .open(&name, false)
        .map_err(|e| WalError::io(storage.location(&name), e))?;
    let mut problems = Vec::new();
    let mut marked = 0;
    let mut seg = SegmentWalk {
        loc: storage.location(&name),
        seq,
        is_last: false,
        on_damage: OnDamage::Stop,
        w: Window::new(file.as_ref(), 0),
        scan: SegmentScan {
            name: name.clone(),
            seq,
            first_lsn: 0,
            records: 0,
            last_lsn: None,
            end: 0,
            file_len: 0,
            tail: Tail::Clean,
        },
        marked: &mut marked,
        vouched: 0,
        problems: &mut problems,
    };
    seg.run(Some(first_lsn), visit);
    let scan = seg.scan;
    match problems.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(scan),
    }
}

/// Where a reader that follows the log (the catalog) stands: the next record it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailPos {
    /// Segment sequence number.
    pub seq: u64,
    /// Byte offset of the next record in it; 0: at the segment's start (its header is read).
    pub offset: u64,
    /// LSN the next record must have; 0: whatever the segment's header says (the first segment
    /// read, of a log whose beginning retention removed).
    pub lsn: u64,
}

/// Reads records by position, keeping the last segment file open and a small window of it: a
/// replay reads the `submit` records of the jobs it submits again, mostly in file order.
#[derive(Default)]
pub struct RecordReader {
    open: Option<OpenSegment>,
}

struct OpenSegment {
    seq: u64,
    loc: String,
    file: Box<dyn SegmentFile>,
    len: u64,
    buf: Vec<u8>,
    start: u64,
}

/// Bytes a [`RecordReader`] reads at once: a few hundred small records, little waste when the
/// records wanted lie far apart.
const RECORD_READER_CHUNK: usize = 64 << 10;

impl RecordReader {
    /// The record at `offset` of segment `seq` (its LSN and body), from the first of `places`
    /// that has the file; `Ok(None)` if none has it (gone past archive retention).
    pub fn read(
        &mut self,
        places: &[&dyn Storage],
        seq: u64,
        offset: u64,
    ) -> Result<Option<(u64, Record<'static>)>, WalError> {
        if self.open.as_ref().is_none_or(|o| o.seq != seq) {
            self.open = None;
            let name = super::format::segment_file_name(seq);
            for s in places {
                match s.open(&name, false) {
                    Ok(file) => {
                        let loc = s.location(&name);
                        let len = file.size().map_err(|e| WalError::io(loc.clone(), e))?;
                        self.open = Some(OpenSegment {
                            seq,
                            loc,
                            file,
                            len,
                            buf: Vec::new(),
                            start: 0,
                        });
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(WalError::io(s.location(&name), e)),
                }
            }
        }
        let Some(o) = self.open.as_mut() else {
            return Ok(None);
        };
        // The segment being written grows: a record past the length seen is looked for anew.
        if offset + RECORD_HEADER_LEN as u64 > o.len {
            o.len = o.file.size().map_err(|e| WalError::io(o.loc.clone(), e))?;
            o.buf.clear();
        }
        let mut w = Window {
            file: o.file.as_ref(),
            buf: std::mem::take(&mut o.buf),
            start: o.start,
            file_len: o.len,
            chunk: RECORD_READER_CHUNK,
            max_chunk: RECORD_READER_CHUNK,
        };
        let r = record_in(&mut w, &o.loc, seq, offset);
        o.buf = w.buf;
        o.start = w.start;
        r.map(Some)
    }
}

fn record_in(
    w: &mut Window<'_>,
    loc: &str,
    seq: u64,
    offset: u64,
) -> Result<(u64, Record<'static>), WalError> {
    let io = |e: std::io::Error| WalError::io(loc.to_string(), e);
    match check_record(w, offset, segment_salt(seq)).map_err(io)? {
        Check::Valid(h, body) => match Record::decode(h.rtype, h.schema, body) {
            Ok(r) => Ok((h.lsn, r.into_owned())),
            Err(p) => Err(WalError::corrupt(loc.to_string(), offset, format!("{p:?}"))),
        },
        Check::End => Err(WalError::corrupt(
            loc.to_string(),
            offset,
            "no record at this offset".into(),
        )),
        Check::Bad(p) => Err(WalError::corrupt(loc.to_string(), offset, p)),
    }
}

/// Why [`tail_segment`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// The next record is not durable yet (or not written): come back later.
    Caught,
    /// The segment's records end here: the next record, if any, is in the next segment.
    SegmentEnd,
    /// `max` records were read; more may follow.
    Full,
}

/// Reads segment `pos.seq` in `file` from `pos`, calling `visit` for each record up to LSN
/// `upto` (the durable LSN: every record up to it was written whole and synced), at most `max`
/// of them, and moves `pos` past each record visited.
///
/// Safe while the commit thread appends: a record after `upto` is never visited, and a record
/// that does not check out where a durable one must be is damage (an error); past `upto` it is
/// a write not finished yet.
pub fn tail_segment(
    file: &dyn SegmentFile,
    loc: &str,
    pos: &mut TailPos,
    upto: u64,
    max: usize,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> Result<TailEnd, WalError> {
    let io = |e: std::io::Error| WalError::io(loc.to_string(), e);
    let len = file.size().map_err(io)?;
    let mut w = Window::new(file, len);
    // A follower that keeps up finds a few records past its position and zeros after them (the
    // segment is preallocated): read a little first, not a whole window of zeros per step; one
    // catching up reads larger windows as it goes.
    w.chunk = TAIL_WINDOW;
    if pos.offset == 0 {
        let hb = w.get(0, SEGMENT_HEADER_LEN).map_err(io)?.to_vec();
        let header = match SegmentHeader::decode(&hb) {
            Ok(h) => h,
            // A segment being created: its header is not there yet.
            Err(HeaderProblem::Empty) if pos.lsn == 0 || pos.lsn > upto => {
                return Ok(TailEnd::Caught)
            }
            Err(HeaderProblem::Empty) => {
                return Err(WalError::corrupt(
                    loc.to_string(),
                    0,
                    "segment header missing".into(),
                ))
            }
            Err(HeaderProblem::Corrupt(d)) => return Err(WalError::corrupt(loc.to_string(), 0, d)),
            Err(HeaderProblem::NewerVersion(v)) => {
                return Err(WalError::NewerVersion {
                    segment: loc.to_string(),
                    what: format!("format version {v}"),
                })
            }
        };
        if header.seq != pos.seq {
            return Err(WalError::corrupt(
                loc.to_string(),
                16,
                format!(
                    "header names segment {} but segment {} was expected",
                    header.seq, pos.seq
                ),
            ));
        }
        if pos.lsn != 0 && header.first_lsn != pos.lsn {
            return Err(WalError::corrupt(
                loc.to_string(),
                24,
                format!(
                    "segment starts at LSN {} but LSN {} was expected",
                    header.first_lsn, pos.lsn
                ),
            ));
        }
        pos.offset = SEGMENT_HEADER_LEN as u64;
        pos.lsn = header.first_lsn;
    }
    let salt = segment_salt(pos.seq);
    let mut n = 0;
    loop {
        if n == max {
            return Ok(TailEnd::Full);
        }
        let off = pos.offset;
        match check_record(&mut w, off, salt).map_err(io)? {
            Check::End => return Ok(TailEnd::SegmentEnd),
            Check::Valid(h, _) if h.lsn > upto && h.lsn >= pos.lsn => return Ok(TailEnd::Caught),
            Check::Valid(h, _) if h.lsn != pos.lsn => {
                return Err(WalError::corrupt(
                    loc.to_string(),
                    off,
                    format!("LSN {} out of sequence (expected {})", h.lsn, pos.lsn),
                ))
            }
            Check::Valid(h, body) => {
                let record = Record::decode(h.rtype, h.schema, body).map_err(|p| match p {
                    DecodeProblem::Unknown { rtype, schema } => WalError::NewerVersion {
                        segment: format!("{loc} at offset {off}"),
                        what: format!("record type {rtype} schema {schema}"),
                    },
                    DecodeProblem::Invalid(d) => WalError::corrupt(
                        loc.to_string(),
                        off,
                        format!("record body does not decode: {d}"),
                    ),
                })?;
                let size = RECORD_HEADER_LEN as u32 + h.body_len;
                visit(&RecordView {
                    segment: pos.seq,
                    offset: off,
                    lsn: h.lsn,
                    size,
                    record,
                })?;
                pos.offset += size as u64;
                pos.lsn += 1;
                n += 1;
            }
            Check::Bad(_) if pos.lsn > upto => return Ok(TailEnd::Caught),
            Check::Bad(p) => return Err(WalError::corrupt(loc.to_string(), off, p)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// A sliding read window over one file (the segments' readers and the checkpoint's).
pub(crate) struct Window<'f> {
    file: &'f dyn SegmentFile,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    file_len: u64,
    /// Bytes read at once.
    chunk: usize,
    /// What `chunk` may grow to, doubling with each read (a follower starts small).
    max_chunk: usize,
}

impl<'f> Window<'f> {
    /// A window over `file`, whose length is taken to be `file_len`.
    pub(crate) fn new(file: &'f dyn SegmentFile, file_len: u64) -> Window<'f> {
        Window {
            file,
            buf: Vec::new(),
            start: 0,
            file_len,
            chunk: WINDOW,
            max_chunk: WINDOW,
        }
    }

    /// Returns `n` bytes at `off`, or fewer if the file ends first.
    pub(crate) fn get(&mut self, off: u64, n: usize) -> std::io::Result<&[u8]> {
        let have = off >= self.start && off + n as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let want = n
                .max(self.chunk)
                .min((self.file_len.saturating_sub(off)) as usize);
            self.buf.resize(want, 0);
            let mut got = 0;
            while got < want {
                let r = self.file.read_at(&mut self.buf[got..], off + got as u64)?;
                if r == 0 {
                    break;
                }
                got += r;
            }
            self.buf.truncate(got);
            self.start = off;
            self.chunk = (self.chunk * 2).min(self.max_chunk);
        }
        let from = (off - self.start) as usize;
        let to = (from + n).min(self.buf.len());
        Ok(&self.buf[from..to])
    }

    /// Forgets what was read, so that the next read comes from the file (which a writer may have
    /// added to since).
    fn invalidate(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Offset of the first non-zero byte at or after `from`.
    fn first_nonzero(&mut self, from: u64) -> std::io::Result<Option<u64>> {
        let mut pos = from;
        while pos < self.file_len {
            let chunk = self.get(pos, WINDOW)?;
            if chunk.is_empty() {
                break;
            }
            if let Some(i) = first_nonzero_in(chunk) {
                return Ok(Some(pos + i as u64));
            }
            pos += chunk.len() as u64;
        }
        Ok(None)
    }

    /// Offsets at or after `from` where a record header passes `pre` (a cheap filter on the
    /// 20 header bytes), in order; at most `max` of them from one window. Returns them and where
    /// the next search should start.
    fn candidates(
        &mut self,
        from: u64,
        pre: &dyn Fn(&RecordHeader) -> bool,
    ) -> std::io::Result<(Vec<u64>, u64)> {
        let chunk = self.get(from, WINDOW)?;
        if chunk.len() < RECORD_HEADER_LEN {
            return Ok((Vec::new(), self.file_len));
        }
        let last = chunk.len() - RECORD_HEADER_LEN;
        let mut found = Vec::new();
        for i in 0..=last {
            let t = chunk[i + 8];
            // Most positions fail on the type byte: only 1..=8 exist.
            if t == 0 || t > rtype::MAX || chunk[i + 9] != SCHEMA {
                continue;
            }
            let h = RecordHeader::parse(chunk[i..i + RECORD_HEADER_LEN].try_into().expect("20"));
            if pre(&h) {
                found.push(from + i as u64);
            }
        }
        Ok((found, from + last as u64 + 1))
    }
}

/// Index of the first non-zero byte of `b`.
fn first_nonzero_in(b: &[u8]) -> Option<usize> {
    // Whole 64-byte blocks first (the OR of a block vectorizes), then the byte inside.
    let mut i = 0;
    for block in b.chunks(64) {
        if block.iter().fold(0u8, |a, &x| a | x) != 0 {
            return block.iter().position(|&x| x != 0).map(|p| i + p);
        }
        i += block.len();
    }
    None
}

enum Check<'b> {
    Valid(RecordHeader, &'b [u8]),
    End,
    Bad(String),
}

fn check_record<'w>(
    w: &'w mut Window<'_>,
    off: u64,
    salt: u32,
) -> Result<Check<'w>, std::io::Error> {
    let file_len = w.file_len;
    let hb = w.get(off, RECORD_HEADER_LEN)?;
    if hb.len() < RECORD_HEADER_LEN {
        return Ok(if hb.iter().all(|&b| b == 0) {
            Check::End
        } else {
            Check::Bad(format!(
                "record header cut short ({} of 20 bytes)",
                hb.len()
            ))
        });
    }
    let hbytes: [u8; RECORD_HEADER_LEN] = hb.try_into().expect("20 bytes");
    let h = RecordHeader::parse(&hbytes);
    if h.is_end_marker() {
        return Ok(Check::End);
    }
    if h.body_len == 0 || h.body_len > MAX_BODY {
        return Ok(Check::Bad(format!(
            "record length {} out of range",
            h.body_len
        )));
    }
    let body_end = off + RECORD_HEADER_LEN as u64 + h.body_len as u64;
    if body_end > file_len {
        return Ok(Check::Bad(format!(
            "record body cut short: needs {} bytes, file ends at {file_len}",
            h.body_len
        )));
    }
    let whole = w.get(off, RECORD_HEADER_LEN + h.body_len as usize)?;
    let body = &whole[RECORD_HEADER_LEN..];
    let crc = record_crc(&hbytes, body, salt);
    if crc != h.crc {
        return Ok(Check::Bad(format!(
            "checksum mismatch (stored {:08x}, computed {crc:08x})",
            h.crc
        )));
    }
    Ok(Check::Valid(h, body))
}

/// Walking one segment.
struct SegmentWalk<'a, 'f> {
    loc: String,
    seq: u64,
    is_last: bool,
    on_damage: OnDamage,
    w: Window<'f>,
    scan: SegmentScan,
    /// The highest LSN sync marks read so far say was durable (for the appender to go on from).
    marked: &'a mut u64,
    /// The LSN the durable point (`wal/durable`) says the log was durable through.
    vouched: u64,
    problems: &'a mut Vec<WalError>,
}

impl SegmentWalk<'_, '_> {
    fn io(&self, e: std::io::Error) -> WalError {
        WalError::io(self.loc.clone(), e)
    }

    fn corrupt(&self, off: u64, detail: String) -> WalError {
        WalError::corrupt(self.loc.clone(), off, detail)
    }

    /// Records damage at `off`. Returns whether the walk of this segment goes on.
    fn damage(&mut self, off: u64, e: WalError) -> bool {
        if !matches!(self.scan.tail, Tail::Damaged { .. }) {
            self.scan.tail = Tail::Damaged { offset: off };
        }
        self.problems.push(e);
        self.on_damage == OnDamage::NextRecord
    }

    fn flow(&self) -> Flow {
        match (&self.scan.tail, self.on_damage) {
            (Tail::Damaged { .. }, OnDamage::Stop) => Flow::Stop,
            _ => Flow::Go,
        }
    }

    fn run(
        &mut self,
        expected: Option<u64>,
        visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
    ) -> Flow {
        match self.walk(expected, visit) {
            Ok(()) => self.flow(),
            Err(Stopped::Visitor(e)) => {
                self.problems.push(e);
                Flow::Stop
            }
            Err(Stopped::Io(e)) => {
                let off = self.scan.end;
                let e = self.io(e);
                if !matches!(self.scan.tail, Tail::Damaged { .. }) {
                    self.scan.tail = Tail::Damaged { offset: off };
                }
                self.problems.push(e);
                match self.on_damage {
                    OnDamage::Stop => Flow::Stop,
                    _ => Flow::Go,
                }
            }
        }
    }

    fn walk(
        &mut self,
        expected: Option<u64>,
        visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
    ) -> Result<(), Stopped> {
        self.w.file_len = self.w.file.size()?;
        self.scan.file_len = self.w.file_len;
        let hb = self.w.get(0, SEGMENT_HEADER_LEN)?.to_vec();
        let header = match SegmentHeader::decode(&hb) {
            Ok(h) => h,
            Err(HeaderProblem::Empty) => {
                // Creation cut short only if nothing at all follows the (zero) header.
                if let Some(at) = self.w.first_nonzero(hb.len() as u64)? {
                    let e = self.corrupt(
                        0,
                        format!(
                            "the segment header is zeroed but the segment holds data (from offset \
                             {at}): this is damage, not a segment whose creation was cut short"
                        ),
                    );
                    return self.header_damage(e, expected, visit);
                }
                if self.is_last && expected.is_none_or(|e| e > self.vouched) {
                    self.scan.tail = Tail::EmptySegment;
                    return Ok(());
                }
                if self.is_last {
                    let e = self.corrupt(
                        0,
                        format!(
                            "the segment holds nothing but zeros, but the durable point (wal/{}) \
                             says the log was durable through LSN {}: its records were wiped",
                            durable::FILE,
                            self.vouched
                        ),
                    );
                    self.damage(0, e);
                    return Ok(());
                }
                let e = self.corrupt(
                    0,
                    "segment header missing (zeros, or the file is cut short)".into(),
                );
                self.damage(0, e);
                return Ok(());
            }
            Err(HeaderProblem::Corrupt(d)) => {
                let e = self.corrupt(0, d);
                return self.header_damage(e, expected, visit);
            }
            Err(HeaderProblem::NewerVersion(v)) => {
                let e = WalError::NewerVersion {
                    segment: self.loc.clone(),
                    what: format!("format version {v}"),
                };
                self.damage(0, e);
                return Ok(());
            }
        };
        if header.seq != self.seq {
            let e = self.corrupt(
                16,
                format!(
                    "header names segment {} but the file is segment {}",
                    header.seq, self.seq
                ),
            );
            return self.header_damage(e, expected, visit);
        }
        if let Some(exp) = expected.filter(|&e| e != header.first_lsn) {
            let e = self.corrupt(
                24,
                format!(
                    "segment starts at LSN {} but LSN {exp} was expected",
                    header.first_lsn
                ),
            );
            if !self.damage(24, e) {
                return Ok(());
            }
        }
        self.scan.first_lsn = header.first_lsn;
        self.records(SEGMENT_HEADER_LEN as u64, header.first_lsn, visit)
    }

    /// The header is unusable: report it, and in `NextRecord` mode go on from the first record
    /// that checks out.
    fn header_damage(
        &mut self,
        e: WalError,
        expected: Option<u64>,
        visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
    ) -> Result<(), Stopped> {
        if !self.damage(0, e) {
            return Ok(());
        }
        let after = expected.map_or(0, |e| e.saturating_sub(1));
        match self.resync(SEGMENT_HEADER_LEN as u64, after)? {
            Some((off, lsn)) => self.records(off, lsn, visit),
            None => Ok(()),
        }
    }

    /// Reads records from `off`, the first of which must have LSN `lsn`.
    fn records(
        &mut self,
        mut off: u64,
        mut lsn: u64,
        visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
    ) -> Result<(), Stopped> {
        let salt = segment_salt(self.seq);
        self.scan.end = self.scan.end.max(off);
        loop {
            let problem = match check_record(&mut self.w, off, salt)? {
                Check::End => match self.w.first_nonzero(off)? {
                    None => break,
                    Some(at) => format!(
                        "the records end here (a zeroed record header) but the segment holds \
                         data further on, from offset {at}"
                    ),
                },
                Check::Valid(h, _) if h.lsn != lsn => {
                    format!("LSN {} out of sequence (expected {lsn})", h.lsn)
                }
                Check::Valid(h, body) => {
                    let record = match Record::decode(h.rtype, h.schema, body) {
                        Ok(r) => r,
                        Err(DecodeProblem::Unknown { rtype, schema }) => {
                            let e = WalError::NewerVersion {
                                segment: format!("{} at offset {off}", self.loc),
                                what: format!("record type {rtype} schema {schema}"),
                            };
                            self.damage(off, e);
                            return Ok(());
                        }
                        Err(DecodeProblem::Invalid(d)) => {
                            // A record whose checksum holds was written whole: not a torn write.
                            let e = self.corrupt(off, format!("record body does not decode: {d}"));
                            if !self.damage(off, e) {
                                return Ok(());
                            }
                            match self.resync(off + 1, lsn)? {
                                Some((o, l)) => {
                                    off = o;
                                    lsn = l;
                                    continue;
                                }
                                None => return Ok(()),
                            }
                        }
                    };
                    if let Record::Sync(m) = &record {
                        // A mark can only speak for records before it.
                        *self.marked = (*self.marked).max(m.synced_lsn.min(lsn.saturating_sub(1)));
                    }
                    let size = RECORD_HEADER_LEN as u32 + h.body_len;
                    visit(&RecordView {
                        segment: self.seq,
                        offset: off,
                        lsn,
                        size,
                        record,
                    })
                    .map_err(Stopped::Visitor)?;
                    self.scan.records += 1;
                    self.scan.last_lsn = Some(lsn);
                    lsn += 1;
                    off += size as u64;
                    self.scan.end = off;
                    continue;
                }
                Check::Bad(p) => p,
            };
            // A bad record at `off`, which should have had LSN `lsn`.
            // A mark only speaks for records before it, so the marks that can vouch for this
            // record lie after it: look for one.
            let e = if !self.is_last {
                self.corrupt(off, problem)
            } else if lsn <= self.vouched && !self.reread_checks_out(off, lsn, salt)? {
                self.corrupt(
                    off,
                    format!(
                        "{problem}; the durable point (wal/{}) says the log was durable through \
                         LSN {}, so this is damage to synced data, not a torn write",
                        durable::FILE,
                        self.vouched
                    ),
                )
            } else if lsn <= self.vouched {
                continue;
            } else if let Some((at, claim)) = self.mark_claiming(off + 1, lsn)? {
                // The offline tools read while a daemon appends: the bytes at `off` may have been
                // read before the writer got there. What a mark vouches for was written whole
                // before the mark was, so a fresh read of the record tells.
                if self.reread_checks_out(off, lsn, salt)? {
                    continue;
                }
                self.corrupt(
                    off,
                    format!(
                        "{problem}; a sync mark further on (offset {at}) says the log was durable \
                         through LSN {claim}, so this is damage to synced data, not a torn write"
                    ),
                )
            } else {
                self.scan.tail = Tail::Torn {
                    offset: off,
                    reason: problem,
                };
                break;
            };
            if !self.damage(off, e) {
                return Ok(());
            }
            match self.resync(off + 1, lsn.saturating_sub(1))? {
                Some((o, l)) => {
                    off = o;
                    lsn = l;
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Whether the record at `off` checks out (with LSN `lsn`) when read afresh from the file.
    fn reread_checks_out(&mut self, off: u64, lsn: u64, salt: u32) -> std::io::Result<bool> {
        self.w.invalidate();
        Ok(matches!(check_record(&mut self.w, off, salt)?, Check::Valid(h, _) if h.lsn == lsn))
    }

    /// A valid sync mark at or after `from` that claims LSN `lsn` or later was durable:
    /// (its offset, its claim). A mark only counts if it sits after that LSN (its own LSN is
    /// higher) and claims less than its own LSN, as every real mark does.
    fn mark_claiming(&mut self, from: u64, lsn: u64) -> std::io::Result<Option<(u64, u64)>> {
        let salt = segment_salt(self.seq);
        let pre =
            |h: &RecordHeader| h.rtype == rtype::SYNC && h.body_len == SYNC_MARK_LEN && h.lsn > lsn;
        let mut pos = from;
        while pos < self.w.file_len {
            let (found, next) = self.w.candidates(pos, &pre)?;
            for off in found {
                if let Check::Valid(h, body) = check_record(&mut self.w, off, salt)? {
                    if let Ok(Record::Sync(m)) = Record::decode(h.rtype, h.schema, body) {
                        if m.synced_lsn >= lsn && m.synced_lsn < h.lsn {
                            return Ok(Some((off, m.synced_lsn)));
                        }
                    }
                }
            }
            pos = next;
        }
        Ok(None)
    }

    /// The next record past damage, when the walk reads on past it: see [`resync`].
    fn resync(&mut self, from: u64, after: u64) -> std::io::Result<Option<(u64, u64)>> {
        if self.on_damage != OnDamage::NextRecord {
            return Ok(None);
        }
        resync_window(&mut self.w, self.seq, from, after)
    }
}

fn resync_window(
    w: &mut Window<'_>,
    seq: u64,
    from: u64,
    after: u64,
) -> std::io::Result<Option<(u64, u64)>> {
    let salt = segment_salt(seq);
    let len = w.file_len;
    let pre =
        |h: &RecordHeader| h.lsn > after && h.body_len > 0 && h.body_len <= MAX_BODY && h.crc != 0;
    let mut pos = from.max(SEGMENT_HEADER_LEN as u64);
    while pos < len {
        let (found, next) = w.candidates(pos, &pre)?;
        for off in found {
            if off + RECORD_HEADER_LEN as u64 > len {
                continue;
            }
            if let Check::Valid(h, body) = check_record(w, off, salt)? {
                if Record::decode(h.rtype, h.schema, body).is_ok() {
                    return Ok(Some((off, h.lsn)));
                }
            }
        }
        pos = next;
    }
    Ok(None)
}

/// The first record of segment `seq` (in `file`) at or after byte `from` that checks out
/// (checksum, known type, body decodes) with an LSN above `after`: its (offset, LSN). For a
/// reader that goes on past damage (`wal salvage --past-damage`, the catalog in a damaged
/// sealed segment).
pub fn resync(
    file: &dyn SegmentFile,
    loc: &str,
    seq: u64,
    from: u64,
    after: u64,
) -> Result<Option<(u64, u64)>, WalError> {
    let len = file.size().map_err(|e| WalError::io(loc.to_string(), e))?;
    let mut w = Window::new(file, len);
    resync_window(&mut w, seq, from, after).map_err(|e| WalError::io(loc.to_string(), e))
}

/// Why a segment walk stopped early.
enum Stopped {
    /// Reading the file failed.
    Io(std::io::Error),
    /// The visitor returned an error.
    Visitor(WalError),
}

impl From<std::io::Error> for Stopped {
    fn from(e: std::io::Error) -> Stopped {
        Stopped::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::{segment_file_name, SegmentHeader};
    use crate::wal::io::MemStorage;
    use proptest::prelude::*;

    fn read(storage: &MemStorage) -> Result<LogScan, WalError> {
        read_log(storage, &mut |_| Ok(()))
    }

    use crate::wal::appender::Appender;
    use crate::wal::record::{Cancel, SyncMark};
    use std::sync::Arc;

    const SEG1: &str = "00000000000000000001.wal";

    fn cancel(id: u64) -> Vec<u8> {
        let mut b = Vec::new();
        Record::Cancel(Cancel { id, at: 1 }).encode_into(&mut b);
        b
    }

    /// A log of one segment: `synced` job records (ids 1..), written and synced; then, if
    /// `mark`, a sync mark for them; then `unsynced` more records, written but not synced.
    /// Returns the storage and each job record's (offset, LSN).
    fn log(synced: u64, mark: bool, unsynced: u64) -> (MemStorage, Vec<(u64, u64)>) {
        let mem = MemStorage::new();
        let scan = read(&mem).unwrap();
        let mut a = Appender::open(Arc::new(mem.clone()), &scan, 1 << 20, Arc::default()).unwrap();
        for id in 1..=synced {
            a.push(rtype::CANCEL, SCHEMA, &cancel(id)).unwrap();
        }
        a.write().unwrap();
        a.sync().unwrap();
        if mark {
            assert!(a.push_mark(7).unwrap().is_some());
        }
        for id in synced + 1..=synced + unsynced {
            a.push(rtype::CANCEL, SCHEMA, &cancel(id)).unwrap();
        }
        a.write().unwrap();
        let mut at = Vec::new();
        read_log(&mem, &mut |r| {
            if r.record.job_id().is_some() {
                at.push((r.offset, r.lsn));
            }
            Ok(())
        })
        .unwrap();
        (mem, at)
    }

    fn poke(mem: &MemStorage, f: impl FnOnce(&mut Vec<u8>)) {
        let mut b = mem.file_bytes(SEG1).unwrap();
        f(&mut b);
        mem.set_file_bytes(SEG1, b);
    }

    fn corrupt_at(r: Result<LogScan, WalError>) -> (u64, String) {
        match r {
            Err(WalError::Corrupt { offset, detail, .. }) => (offset, detail),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn a_zeroed_header_on_the_last_segment_with_records_behind_it_is_damage_not_a_cut_short_creation(
    ) {
        let (mem, _) = log(10, true, 0);
        poke(&mem, |b| b[..40].fill(0));
        let (off, detail) = corrupt_at(read(&mem));
        assert_eq!(off, 0);
        assert!(
            detail.contains("zeroed") && detail.contains("holds data"),
            "{detail}"
        );
        let (_, problems) = verify_log(&mem);
        assert_eq!(problems.len(), 1);
        // Read on past the damage, every record is still there.
        let mut ids = Vec::new();
        let (_, problems) = walk_log(&mem, OnDamage::NextRecord, &mut |r| {
            ids.extend(r.record.job_id());
            Ok(())
        });
        assert_eq!(problems.len(), 1);
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        // Only a segment that is zeros all through is one whose creation was cut short.
        let (mem, _) = log(0, false, 0);
        poke(&mem, |b| b.fill(0));
        let scan = read(&mem).unwrap();
        assert_eq!(scan.segments[0].tail, Tail::EmptySegment);
    }

    #[test]
    fn a_damaged_record_that_a_later_sync_mark_vouches_for_is_corruption_not_a_torn_tail() {
        let (mem, at) = log(5, true, 3);
        // Record 3 was synced, and the mark after record 5 says so.
        let (off3, _) = at[2];
        poke(&mem, |b| b[off3 as usize + 22] ^= 1);
        let (off, detail) = corrupt_at(read(&mem));
        assert_eq!(off, off3);
        assert!(
            detail.contains("sync mark") && detail.contains("not a torn write"),
            "{detail}"
        );
        // The same flip after the mark (record 7: written, never synced) is a torn tail.
        let (mem, at) = log(5, true, 3);
        let (off7, _) = at[6];
        poke(&mem, |b| b[off7 as usize + 22] ^= 1);
        let scan = read(&mem).unwrap();
        assert_eq!(scan.torn_tail().map(|t| t.1), Some(off7));
        assert_eq!(scan.last_lsn(), Some(7), "records 1-5, the mark, record 6");
    }

    #[test]
    fn a_zeroed_record_header_in_the_last_segment_is_not_the_end_of_the_log() {
        // Synced and vouched for: zeros over record 4's header are damage.
        let (mem, at) = log(6, true, 2);
        let (off4, _) = at[3];
        poke(&mem, |b| b[off4 as usize..off4 as usize + 20].fill(0));
        let (off, detail) = corrupt_at(read(&mem));
        assert_eq!(off, off4);
        assert!(detail.contains("holds data further on"), "{detail}");
        // Without a mark to vouch for it, it is a torn tail, which recovery truncates (and the
        // data behind it goes with the truncation).
        let (mem, at) = log(0, false, 8);
        let (off4, _) = at[3];
        poke(&mem, |b| b[off4 as usize..off4 as usize + 20].fill(0));
        let scan = read(&mem).unwrap();
        assert_eq!(scan.torn_tail().map(|t| t.1), Some(off4));
    }

    #[test]
    fn data_after_the_end_of_a_sealed_segment_is_corruption() {
        let (mem, at) = log(4, false, 0);
        let end = at[3].0 as usize + 20 + cancel(4).len();
        poke(&mem, |b| b[end + 100] = 9);
        mem.set_file_bytes(
            &segment_file_name(2),
            SegmentHeader {
                seq: 2,
                first_lsn: 5,
            }
            .encode()
            .to_vec(),
        );
        let (off, _) = corrupt_at(read(&mem));
        assert_eq!(off as usize, end);
        // In the last segment, with nothing to vouch for it, the same is a torn tail.
        let (mem, _) = log(4, false, 0);
        poke(&mem, |b| b[end + 100] = 9);
        assert_eq!(
            read(&mem).unwrap().torn_tail().map(|t| t.1),
            Some(end as u64)
        );
    }

    #[test]
    fn a_forged_mark_inside_a_record_cannot_claim_the_log() {
        // A mark only counts if its own LSN is above the damaged one and it claims less than its
        // own LSN: a copy of an old mark, or one claiming the future, vouches for nothing.
        let (mem, at) = log(3, true, 2);
        let mut b = mem.file_bytes(SEG1).unwrap();
        let mut forged = Vec::new();
        let mut body = Vec::new();
        Record::Sync(SyncMark {
            synced_lsn: 1000,
            at: 0,
        })
        .encode_into(&mut body);
        crate::wal::format::encode_record(
            &mut forged,
            rtype::SYNC,
            SCHEMA,
            1000,
            &body,
            segment_salt(1),
        );
        let end = at[4].0 as usize + 20 + cancel(5).len();
        b[end + 64..end + 64 + forged.len()].copy_from_slice(&forged);
        let (off6, _) = at[4];
        b[off6 as usize + 22] ^= 1;
        mem.set_file_bytes(SEG1, b);
        assert_eq!(read(&mem).unwrap().torn_tail().map(|t| t.1), Some(off6));
    }

    #[test]
    fn a_log_that_ends_before_the_durable_point_is_missing_records() {
        let (mem, at) = log(6, true, 0);
        crate::wal::durable::Writer::new(Arc::new(mem.clone()))
            .write(6, true)
            .unwrap();
        assert!(read(&mem).is_ok());
        // Cut the segment after record 3 (a tail lost whole: nothing torn to see).
        let (off4, _) = at[3];
        poke(&mem, |b| b.truncate(off4 as usize));
        let (off, detail) = corrupt_at(read(&mem));
        assert_eq!(off, off4);
        assert!(
            detail.contains("records are missing") && detail.contains("LSN 6"),
            "{detail}"
        );
    }

    #[test]
    fn first_nonzero_finds_the_exact_byte() {
        let mut b = vec![0u8; 1000];
        assert_eq!(first_nonzero_in(&b), None);
        b[777] = 3;
        assert_eq!(first_nonzero_in(&b), Some(777));
        b[63] = 1;
        assert_eq!(first_nonzero_in(&b), Some(63));
        assert_eq!(first_nonzero_in(&[]), None);
    }

    proptest! {
        /// Any bytes after a valid segment header: the reader never panics, and either reads
        /// records, reports a torn tail, or names an offset inside the file.
        #[test]
        fn garbage_after_a_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..2000), last in any::<bool>()) {
            let s = MemStorage::new();
            let mut bytes = SegmentHeader { seq: 1, first_lsn: 1 }.encode().to_vec();
            bytes.extend_from_slice(&tail);
            let len = bytes.len() as u64;
            s.set_file_bytes(&segment_file_name(1), bytes);
            if !last {
                s.set_file_bytes(&segment_file_name(2), SegmentHeader { seq: 2, first_lsn: 1 }.encode().to_vec());
            }
            match read(&s) {
                Ok(_) => {}
                Err(WalError::Corrupt { offset, .. }) => prop_assert!(offset <= len),
                Err(WalError::NewerVersion { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
            for mode in [OnDamage::NextSegment, OnDamage::NextRecord] {
                let (scan, _) = walk_log(&s, mode, &mut |_| Ok(()));
                for seg in &scan.segments {
                    prop_assert!(seg.end <= seg.file_len);
                }
            }
        }

        /// Entirely random segment files.
        #[test]
        fn random_segments_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let s = MemStorage::new();
            s.set_file_bytes(&segment_file_name(1), bytes.clone());
            s.set_file_bytes(&segment_file_name(2), bytes);
            let _ = read(&s);
            let _ = verify_log(&s);
            let _ = walk_log(&s, OnDamage::NextRecord, &mut |_| Ok(()));
        }
    }
}
