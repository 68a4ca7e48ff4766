//! Byte layout of WAL segments and record headers (see `docs/wal-format.md`).
//!
//! Everything that knows an offset lives here; the reader and the writer call these helpers, so
//! the layout is written down exactly once.
//!
//! ```text
//! Segment header (40 bytes)
//!  0  8 magic         89 44 4A 57 0D 0A 1A 0A
//!  8  2 version       u16 = 1
//! 10  2 header_len    u16 = 40
//! 12  4 flags         u32 = 0
//! 16  8 segment_seq   u64
//! 24  8 first_lsn     u64
//! 32  4 header_crc    CRC-32C of bytes 0..32
//! 36  4 reserved      0
//!
//! Record header (20 bytes), then `body_len` bytes of bincode 1.3.3
//!  0  4 body_len      u32, 1..=MAX_BODY
//!  4  4 crc           CRC-32C(bytes 0..4 ++ bytes 8..20+body_len) XOR salt(segment_seq)
//!  8  1 type          u8
//!  9  1 schema        u8
//! 10  2 flags         u16 = 0
//! 12  8 lsn           u64
//! ```

/// Segment magic, PNG style: catches 7-bit transfer and line-ending conversion.
pub const MAGIC: [u8; 8] = [0x89, b'D', b'J', b'W', b'\r', b'\n', 0x1a, b'\n'];
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 20;
/// Largest record body accepted by writer and reader.
pub const MAX_BODY: u32 = 16 << 20;

const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 10;
const OFF_FLAGS: usize = 12;
const OFF_SEQ: usize = 16;
const OFF_FIRST_LSN: usize = 24;
const OFF_HEADER_CRC: usize = 32;

const R_OFF_LEN: usize = 0;
const R_OFF_CRC: usize = 4;
const R_OFF_TYPE: usize = 8;
const R_OFF_SCHEMA: usize = 9;
const R_OFF_FLAGS: usize = 10;
const R_OFF_LSN: usize = 12;

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment (also its file name).
    pub seq: u64,
    /// LSN of the first record the segment holds (or will hold).
    pub first_lsn: u64,
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Shorter than a header or all zeros: a segment whose creation was cut short.
    Empty,
    /// Magic or checksum wrong.
    Corrupt(String),
    /// Written by a newer format version.
    NewerVersion(u16),
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl SegmentHeader {
    /// Encodes the header into its 40 bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[OFF_HEADER_LEN..OFF_HEADER_LEN + 2]
            .copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        b[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&0u32.to_le_bytes());
        b[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&self.seq.to_le_bytes());
        b[OFF_FIRST_LSN..OFF_FIRST_LSN + 8].copy_from_slice(&self.first_lsn.to_le_bytes());
        let crc = crc32c::crc32c(&b[..OFF_HEADER_CRC]);
        b[OFF_HEADER_CRC..OFF_HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header. `b` may be shorter than a header (a cut-short file).
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
        if b.len() < SEGMENT_HEADER_LEN || b[..SEGMENT_HEADER_LEN].iter().all(|&x| x == 0) {
            return Err(HeaderProblem::Empty);
        }
        if b[..8] != MAGIC {
            return Err(HeaderProblem::Corrupt(
                "bad magic (not a duejob WAL segment)".into(),
            ));
        }
        let crc = u32_at(b, OFF_HEADER_CRC);
        if crc32c::crc32c(&b[..OFF_HEADER_CRC]) != crc {
            // Check the version before blaming the checksum: a newer format may lay out differently.
            let v = u16_at(b, OFF_VERSION);
            if v > FORMAT_VERSION {
                return Err(HeaderProblem::NewerVersion(v));
            }
            return Err(HeaderProblem::Corrupt(
                "segment header checksum mismatch".into(),
            ));
        }
        let v = u16_at(b, OFF_VERSION);
        if v > FORMAT_VERSION {
            return Err(HeaderProblem::NewerVersion(v));
        }
        if v == 0 || u16_at(b, OFF_HEADER_LEN) as usize != SEGMENT_HEADER_LEN {
            return Err(HeaderProblem::Corrupt(format!(
                "bad version {v} or header length"
            )));
        }
        Ok(SegmentHeader {
            seq: u64_at(b, OFF_SEQ),
            first_lsn: u64_at(b, OFF_FIRST_LSN),
        })
    }
}

/// The per-segment value XORed into every record CRC.
pub fn segment_salt(seq: u64) -> u32 {
    crc32c::crc32c(&seq.to_le_bytes())
}

/// A record header as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Body length in bytes.
    pub body_len: u32,
    /// Stored checksum (already salted).
    pub crc: u32,
    /// Record type.
    pub rtype: u8,
    /// Schema version of the body.
    pub schema: u8,
    /// Log sequence number.
    pub lsn: u64,
}

impl RecordHeader {
    /// Parses the 20 header bytes without checking anything.
    pub fn parse(b: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
        RecordHeader {
            body_len: u32_at(b, R_OFF_LEN),
            crc: u32_at(b, R_OFF_CRC),
            rtype: b[R_OFF_TYPE],
            schema: b[R_OFF_SCHEMA],
            lsn: u64_at(b, R_OFF_LSN),
        }
    }

    /// True for the all-zero header that ends a preallocated segment.
    pub fn is_end_marker(&self) -> bool {
        self.body_len == 0 && self.crc == 0
    }
}

/// Computes the salted checksum of a record given its header bytes and body.
pub fn record_crc(header: &[u8; RECORD_HEADER_LEN], body: &[u8], salt: u32) -> u32 {
    let c = crc32c::crc32c(&header[R_OFF_LEN..R_OFF_LEN + 4]);
    let c = crc32c::crc32c_append(c, &header[R_OFF_TYPE..RECORD_HEADER_LEN]);
    crc32c::crc32c_append(c, body) ^ salt
}

/// Appends a complete record (header + body) to `out`.
pub fn encode_record(out: &mut Vec<u8>, rtype: u8, schema: u8, lsn: u64, body: &[u8], salt: u32) {
    debug_assert!(!body.is_empty() && body.len() <= MAX_BODY as usize);
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[R_OFF_LEN..R_OFF_LEN + 4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[R_OFF_TYPE] = rtype;
    h[R_OFF_SCHEMA] = schema;
    h[R_OFF_FLAGS..R_OFF_FLAGS + 2].copy_from_slice(&0u16.to_le_bytes());
    h[R_OFF_LSN..R_OFF_LSN + 8].copy_from_slice(&lsn.to_le_bytes());
    let crc = record_crc(&h, body, salt);
    h[R_OFF_CRC..R_OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
}

/// File name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// Parses a segment file name back into its sequence number.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejections() {
        let h = SegmentHeader {
            seq: 3,
            first_lsn: 99,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(HeaderProblem::Empty));
        assert_eq!(SegmentHeader::decode(&[0u8; 40]), Err(HeaderProblem::Empty));
        let mut bad = b;
        bad[20] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bad),
            Err(HeaderProblem::Corrupt(_))
        ));
        let mut newer = b;
        newer[8] = 2;
        assert_eq!(
            SegmentHeader::decode(&newer),
            Err(HeaderProblem::NewerVersion(2))
        );
        let mut magic = b;
        magic[4] = b'\n';
        assert!(matches!(
            SegmentHeader::decode(&magic),
            Err(HeaderProblem::Corrupt(_))
        ));
    }

    #[test]
    fn record_crc_is_bound_to_the_segment() {
        let mut out = Vec::new();
        encode_record(&mut out, 2, 1, 42, b"hello", segment_salt(1));
        let h = RecordHeader::parse(out[..20].try_into().unwrap());
        let hb: [u8; 20] = out[..20].try_into().unwrap();
        assert_eq!(h.crc, record_crc(&hb, &out[20..], segment_salt(1)));
        assert_ne!(h.crc, record_crc(&hb, &out[20..], segment_salt(2)));
        assert_eq!((h.body_len, h.rtype, h.schema, h.lsn), (5, 2, 1, 42));
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(7), "00000000000000000007.wal");
        assert_eq!(parse_segment_file_name("00000000000000000007.wal"), Some(7));
        assert_eq!(parse_segment_file_name("7.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.wal"), None);
    }
}
