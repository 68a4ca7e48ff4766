//! The one WAL decoder. Recovery and the offline tools (`duejob wal verify|inspect|dump`) both
//! read through [`read_log`], so they can never disagree about what a segment holds.
//!
//! Reading is streaming: a window of at least 1 MiB slides over each segment, so a WAL of any size
//! is read in bounded memory. The reader never writes; recovery applies the truncation of a torn
//! tail itself, afterwards.

use super::format::{
    parse_segment_file_name, record_crc, segment_salt, HeaderProblem, RecordHeader, SegmentHeader,
    MAX_BODY, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::io::{SegmentFile, Storage};
use super::record::{DecodeProblem, Record};
use super::WalError;

const WINDOW: usize = 1 << 20;

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
    /// At an end marker or exactly at the end of the file.
    Clean,
    /// A record that a crash (or a writer still at work) cut short.
    Torn {
        /// Where the torn record starts; recovery truncates here.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// A last segment whose header was never completed (removed by recovery).
    EmptySegment,
}

/// What scanning one segment found.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// File name.
    pub name: String,
    /// Sequence number.
    pub seq: u64,
    /// LSN of the first record, from the header (0 for an empty segment).
    pub first_lsn: u64,
    /// Number of valid records.
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
    /// Every segment, in order.
    pub segments: Vec<SegmentScan>,
    /// The LSN the next record gets.
    pub next_lsn: u64,
}

impl LogScan {
    /// The torn tail of the last segment, if any: (segment name, offset, reason).
    pub fn torn_tail(&self) -> Option<(&str, u64, &str)> {
        match self.segments.last().map(|s| (&s.name, &s.tail)) {
            Some((name, Tail::Torn { offset, reason })) => Some((name, *offset, reason)),
            _ => None,
        }
    }
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
/// returns. A torn tail of the last segment is not an error: it is reported in the result.
pub fn read_log(
    storage: &dyn Storage,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> Result<LogScan, WalError> {
    let segs = list_segments(storage)?;
    let mut scan = LogScan {
        segments: Vec::new(),
        next_lsn: 1,
    };
    for (i, (seq, name)) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        if i > 0 && *seq != segs[i - 1].0 + 1 {
            return Err(WalError::corrupt(
                storage.location(name),
                0,
                format!("segment sequence gap: {} follows {}", seq, segs[i - 1].0),
            ));
        }
        let file = storage
            .open(name, false)
            .map_err(|e| WalError::io(storage.location(name), e))?;
        let s = scan_segment(
            storage,
            file.as_ref(),
            name,
            *seq,
            Some(scan.next_lsn),
            is_last,
            visit,
        )?;
        if let Some(l) = s.last_lsn {
            scan.next_lsn = l + 1;
        }
        scan.segments.push(s);
    }
    Ok(scan)
}

/// Checks every segment, going on past a damaged one (from the next segment's own header), and
/// returns what the log holds plus every problem found. Used by `duejob wal verify`.
pub fn verify_log(storage: &dyn Storage) -> (LogScan, Vec<WalError>) {
    let mut problems = Vec::new();
    let mut scan = LogScan {
        segments: Vec::new(),
        next_lsn: 1,
    };
    let segs = match list_segments(storage) {
        Ok(s) => s,
        Err(e) => return (scan, vec![e]),
    };
    let mut expected = Some(1);
    for (i, (seq, name)) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        if i > 0 && *seq != segs[i - 1].0 + 1 {
            problems.push(WalError::corrupt(
                storage.location(name),
                0,
                format!("segment sequence gap: {} follows {}", seq, segs[i - 1].0),
            ));
            expected = None;
        }
        let file = match storage.open(name, false) {
            Ok(f) => f,
            Err(e) => {
                problems.push(WalError::io(storage.location(name), e));
                expected = None;
                continue;
            }
        };
        match scan_segment(
            storage,
            file.as_ref(),
            name,
            *seq,
            expected,
            is_last,
            &mut |_| Ok(()),
        ) {
            Ok(s) => {
                scan.next_lsn = match s.last_lsn {
                    Some(l) => l + 1,
                    None if s.first_lsn > 0 => s.first_lsn,
                    None => scan.next_lsn,
                };
                expected = Some(scan.next_lsn);
                scan.segments.push(s);
            }
            Err(e) => {
                problems.push(e);
                expected = None;
            }
        }
    }
    (scan, problems)
}

/// A sliding read window over one file.
struct Window<'f> {
    file: &'f dyn SegmentFile,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    file_len: u64,
}

impl<'f> Window<'f> {
    /// Returns `n` bytes at `off`, or fewer if the file ends first.
    fn get(&mut self, off: u64, n: usize) -> std::io::Result<&[u8]> {
        let have = off >= self.start && off + n as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let want = n
                .max(WINDOW)
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
        }
        let from = (off - self.start) as usize;
        let to = (from + n).min(self.buf.len());
        Ok(&self.buf[from..to])
    }
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

fn scan_segment(
    storage: &dyn Storage,
    file: &dyn SegmentFile,
    name: &str,
    seq: u64,
    expected_lsn: Option<u64>,
    is_last: bool,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), WalError>,
) -> Result<SegmentScan, WalError> {
    let loc = storage.location(name);
    let io_err = |e| WalError::io(loc.clone(), e);
    let file_len = file.size().map_err(io_err)?;
    let mut w = Window {
        file,
        buf: Vec::new(),
        start: 0,
        file_len,
    };
    let hb = w.get(0, SEGMENT_HEADER_LEN).map_err(io_err)?.to_vec();
    let mut scan = SegmentScan {
        name: name.to_string(),
        seq,
        first_lsn: 0,
        records: 0,
        last_lsn: None,
        end: 0,
        file_len,
        tail: Tail::Clean,
    };
    let header = match SegmentHeader::decode(&hb) {
        Ok(h) => h,
        Err(HeaderProblem::Empty) if is_last => {
            scan.tail = Tail::EmptySegment;
            return Ok(scan);
        }
        Err(HeaderProblem::Empty) => {
            return Err(WalError::corrupt(loc, 0, "segment header missing".into()))
        }
        Err(HeaderProblem::Corrupt(d)) => return Err(WalError::corrupt(loc, 0, d)),
        Err(HeaderProblem::NewerVersion(v)) => {
            return Err(WalError::NewerVersion {
                segment: loc,
                what: format!("format version {v}"),
            })
        }
    };
    if header.seq != seq {
        return Err(WalError::corrupt(
            loc,
            16,
            format!(
                "header names segment {} but the file is segment {seq}",
                header.seq
            ),
        ));
    }
    if let Some(expected) = expected_lsn.filter(|&e| e != header.first_lsn) {
        return Err(WalError::corrupt(
            loc,
            24,
            format!(
                "segment starts at LSN {} but LSN {expected} was expected",
                header.first_lsn
            ),
        ));
    }
    scan.first_lsn = header.first_lsn;
    let salt = segment_salt(seq);
    let mut off = SEGMENT_HEADER_LEN as u64;
    let mut lsn = header.first_lsn;
    loop {
        let problem = match check_record(&mut w, off, salt).map_err(io_err)? {
            Check::End => break,
            Check::Valid(h, _) if h.lsn != lsn => {
                format!("LSN {} out of sequence (expected {lsn})", h.lsn)
            }
            Check::Valid(h, body) => {
                let record = Record::decode(h.rtype, h.schema, body).map_err(|p| match p {
                    DecodeProblem::Unknown { rtype, schema } => WalError::NewerVersion {
                        segment: format!("{loc} at offset {off}"),
                        what: format!("record type {rtype} schema {schema}"),
                    },
                    DecodeProblem::Invalid(d) => WalError::corrupt(
                        loc.clone(),
                        off,
                        format!("record body does not decode: {d}"),
                    ),
                })?;
                let size = RECORD_HEADER_LEN as u32 + h.body_len;
                visit(&RecordView {
                    segment: seq,
                    offset: off,
                    lsn,
                    size,
                    record,
                })?;
                scan.records += 1;
                scan.last_lsn = Some(lsn);
                lsn += 1;
                off += size as u64;
                continue;
            }
            Check::Bad(p) => p,
        };
        // A bad record. In the last segment it is a torn tail unless a valid record follows it.
        if is_last && !followed_by_valid_record(&mut w, off, salt).map_err(io_err)? {
            scan.tail = Tail::Torn {
                offset: off,
                reason: problem,
            };
            break;
        }
        return Err(WalError::corrupt(loc, off, problem));
    }
    scan.end = off;
    Ok(scan)
}

/// True when the record header at `off` has a readable length and a valid record sits right
/// after the body it claims: then the bad record is damage in the middle, not a torn tail.
fn followed_by_valid_record(w: &mut Window<'_>, off: u64, salt: u32) -> std::io::Result<bool> {
    let hb = w.get(off, RECORD_HEADER_LEN)?;
    if hb.len() < RECORD_HEADER_LEN {
        return Ok(false);
    }
    let h = RecordHeader::parse(hb.try_into().expect("20 bytes"));
    if h.body_len == 0 || h.body_len > MAX_BODY {
        return Ok(false);
    }
    let next = off + RECORD_HEADER_LEN as u64 + h.body_len as u64;
    Ok(matches!(check_record(w, next, salt)?, Check::Valid(..)))
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
        }

        /// Entirely random segment files.
        #[test]
        fn random_segments_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let s = MemStorage::new();
            s.set_file_bytes(&segment_file_name(1), bytes.clone());
            s.set_file_bytes(&segment_file_name(2), bytes);
            let _ = read(&s);
            let _ = verify_log(&s);
        }
    }
}
