//! The checkpoint file, `wal/checkpoint`: the fold of every segment up to one, so that those
//! segments can go. Layout (also in `docs/wal-format.md`, "Checkpoints"):
//!
//! ```text
//! Header (64 bytes)
//!  0  8 magic         89 44 4A 43 0D 0A 1A 0A   ("\x89DJC\r\n\x1a\n")
//!  8  2 version       u16 = 1
//! 10  2 header_len    u16 = 64
//! 12  4 flags         u32 = 0
//! 16  8 covered_seq   u64: the last segment it covers (those up to it can be released)
//! 24  8 covered_lsn   u64: the LSN of the last record it covers
//! 32  8 next_id       u64: the first job id never used
//! 40  8 created_at    u64, ms since the epoch
//! 48  8 job_bytes     u64: bytes of the `job` entries (the rest carries history and keys)
//! 56  4 header_crc    CRC-32C of bytes 0..56
//! 60  4 reserved      0
//!
//! Entries: the WAL's record framing (20-byte header: length, salted CRC-32C, type, schema,
//! flags, and in place of the LSN the entry's number 1, 2, 3, ...), salt = CRC-32C of "ckpt" and
//! covered_lsn (8 bytes LE), so an entry never validates in another checkpoint. Bodies are bincode
//! 1.3.3 like the WAL's.
//!   type 1 job     a job that has not finished, with its payload
//!   type 2 done    a finished job of the history (no payload), oldest first
//!   type 3 key     an idempotency key within its retention
//!   type 5 queue   a queue's live settings (the WAL's `queue` record body), before `end`
//!   type 4 end     counts of the job, done and key entries; the file ends right after it
//! ```
//!
//! It is written as `checkpoint.tmp`, synced, renamed over `checkpoint`, and the directory synced:
//! a crash leaves the old checkpoint or the new one, never a mix.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fold::{FoldJob, Folded, HistRef, Interner};
use crate::job::machine::JobCore;
use crate::job::{AttemptInfo, AttemptOutcome, State};
use crate::wal::format::{encode_record, record_crc, RecordHeader, MAX_BODY, RECORD_HEADER_LEN};
use crate::wal::io::{SegmentFile, Storage};
use crate::wal::keys::KeyEntry;
use crate::wal::record::QueueSettings;
use crate::wal::WalError;

/// The checkpoint's file name in `wal/`.
pub const FILE: &str = "checkpoint";
/// Where a checkpoint is written before it is renamed into place.
pub const TMP: &str = "checkpoint.tmp";
/// Magic, PNG style like the segments' ("DJC": duejob checkpoint).
pub const MAGIC: [u8; 8] = [0x89, b'D', b'J', b'C', b'\r', b'\n', 0x1a, b'\n'];
/// The version this build writes and the newest it reads.
pub const VERSION: u16 = 1;
/// Size of the header.
pub const HEADER_LEN: usize = 64;

/// Entry types.
pub mod etype {
    /// A job that has not finished.
    pub const JOB: u8 = 1;
    /// A finished job of the history.
    pub const DONE: u8 = 2;
    /// An idempotency key.
    pub const KEY: u8 = 3;
    /// The end: counts.
    pub const END: u8 = 4;
    /// A queue's live settings.
    pub const QUEUE: u8 = 5;
    /// The highest entry type this build knows.
    pub const MAX: u8 = QUEUE;
}
const SCHEMA: u8 = 1;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last segment the checkpoint covers.
    pub covered_seq: u64,
    /// The LSN of the last record it covers.
    pub covered_lsn: u64,
    /// The first job id never used.
    pub next_id: u64,
    /// When it was written (ms).
    pub created_at: u64,
    /// Bytes of its `job` entries, framing included (filled in by [`write()`]).
    pub job_bytes: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[16..24].copy_from_slice(&self.covered_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.covered_lsn.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_at.to_le_bytes());
        b[48..56].copy_from_slice(&self.job_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&b[..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8], loc: &str) -> Result<Header, WalError> {
        let corrupt = |d: &str| WalError::corrupt(loc.to_string(), 0, d.to_string());
        if b.len() < HEADER_LEN {
            return Err(corrupt("checkpoint header cut short"));
        }
        if b[..8] != MAGIC {
            return Err(corrupt("bad magic (not a duejob checkpoint)"));
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version > VERSION {
            return Err(WalError::NewerVersion {
                segment: loc.to_string(),
                what: format!("checkpoint version {version}"),
            });
        }
        let crc = u32::from_le_bytes(b[56..60].try_into().expect("4 bytes"));
        if crc32c::crc32c(&b[..56]) != crc {
            return Err(corrupt("checkpoint header checksum mismatch"));
        }
        if version == 0 || u16::from_le_bytes([b[10], b[11]]) as usize != HEADER_LEN {
            return Err(corrupt("bad checkpoint version or header length"));
        }
        Ok(Header {
            covered_seq: u64_at(16),
            covered_lsn: u64_at(24),
            next_id: u64_at(32),
            created_at: u64_at(40),
            job_bytes: u64_at(48),
        })
    }
}

fn salt(covered_lsn: u64) -> u32 {
    let c = crc32c::crc32c(b"ckpt");
    crc32c::crc32c_append(c, &covered_lsn.to_le_bytes())
}

/// One attempt, as stored (explicit fields: bincode is not self-describing, so nothing here may
/// be skipped when empty).
#[derive(Serialize, Deserialize)]
struct AttemptRepr<'a> {
    number: u32,
    started_at: u64,
    ended_at: Option<u64>,
    /// 0 succeeded, 1 failed, 2 timed out, 3 cancelled, 4 interrupted.
    outcome: Option<u8>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    exit_code: Option<i32>,
    #[serde(borrow)]
    output_tail: Option<Cow<'a, str>>,
    retry_at: Option<u64>,
}

/// A job's progress, as stored. `state`: 0 scheduled, 1 ready, 2 running, 3 retrying,
/// 4 succeeded, 5 dead, 6 cancelled.
#[derive(Serialize, Deserialize)]
struct CoreRepr<'a> {
    state: u8,
    purged: bool,
    interrupted: u32,
    attempt: u32,
    failures: u32,
    at: u64,
    #[serde(borrow)]
    attempts: Vec<AttemptRepr<'a>>,
}

/// Body of a `job` or `done` entry.
#[derive(Serialize, Deserialize)]
struct JobRepr<'a> {
    id: u64,
    #[serde(borrow)]
    queue: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    submitted_at: u64,
    deadline: u64,
    run_at: Option<u64>,
    max_attempts: u32,
    timeout_ms: Option<u64>,
    #[serde(borrow)]
    core: CoreRepr<'a>,
}

/// Body of a `key` entry.
#[derive(Serialize, Deserialize)]
struct KeyRepr<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    id: u64,
    lsn: u64,
    expires: u64,
}

/// Body of the `end` entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct End {
    /// `job` entries.
    pub jobs: u64,
    /// `done` entries.
    pub done: u64,
    /// `key` entries.
    pub keys: u64,
    /// Finished jobs folded in but no longer listed (beyond the history): (queue, state
    /// 0 scheduled .. 6 cancelled or 7 purged, how many).
    pub released: Vec<(String, u8, u64)>,
}

const OUTCOMES: [AttemptOutcome; 5] = [
    AttemptOutcome::Succeeded,
    AttemptOutcome::Failed,
    AttemptOutcome::TimedOut,
    AttemptOutcome::Cancelled,
    AttemptOutcome::Interrupted,
];

fn outcome_code(o: AttemptOutcome) -> u8 {
    OUTCOMES.iter().position(|&x| x == o).expect("known outcome") as u8
}

impl<'a> JobRepr<'a> {
    fn of(j: &'a FoldJob) -> JobRepr<'a> {
        let c = &j.core;
        JobRepr {
            id: j.id,
            queue: Cow::Borrowed(&j.queue),
            kind: Cow::Borrowed(&j.kind),
            payload: j.payload.as_deref().map(Cow::Borrowed),
            key: j.key.as_deref().map(Cow::Borrowed),
            submitted_at: j.submitted_at,
            deadline: j.deadline,
            run_at: j.run_at,
            max_attempts: j.max_attempts,
            timeout_ms: j.timeout_ms,
            core: CoreRepr {
                state: c.state.index() as u8,
                purged: c.purged,
                interrupted: c.interrupted,
                attempt: c.attempt,
                failures: c.failures,
                at: c.at,
                attempts: c
                    .attempts
                    .iter()
                    .map(|a| AttemptRepr {
                        number: a.number,
                        started_at: a.started_at,
                        ended_at: a.ended_at,
                        outcome: a.outcome.map(outcome_code),
                        error: a.error.as_deref().map(Cow::Borrowed),
                        exit_code: a.exit_code,
                        output_tail: a.output_tail.as_deref().map(Cow::Borrowed),
                        retry_at: a.retry_at,
                    })
                    .collect(),
            },
        }
    }

    fn into_job(self, names: &mut dyn FnMut(&str) -> Arc<str>) -> Result<FoldJob, String> {
        let c = self.core;
        let state = *State::ALL
            .get(c.state as usize)
            .ok_or_else(|| format!("job {}: unknown state {}", self.id, c.state))?;
        let mut attempts = Vec::with_capacity(c.attempts.len());
        for a in c.attempts {
            let outcome = match a.outcome {
                None => None,
                Some(o) => Some(*OUTCOMES.get(o as usize).ok_or_else(|| {
                    format!("job {}: unknown attempt outcome {o}", self.id)
                })?),
            };
            attempts.push(AttemptInfo {
                number: a.number,
                started_at: a.started_at,
                ended_at: a.ended_at,
                outcome,
                error: a.error.map(Cow::into_owned),
                exit_code: a.exit_code,
                output_tail: a.output_tail.map(Cow::into_owned),
                retry_at: a.retry_at,
            });
        }
        Ok(FoldJob {
            id: self.id,
            queue: names(&self.queue),
            kind: names(&self.kind),
            payload: self.payload.map(|p| p.as_ref().into()),
            key: self.key.map(|k| k.as_ref().into()),
            submitted_at: self.submitted_at,
            deadline: self.deadline,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            core: JobCore {
                state,
                purged: c.purged,
                interrupted: c.interrupted,
                attempt: c.attempt,
                failures: c.failures,
                at: c.at,
                attempts,
            },
        })
    }
}

/// What writing a checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its size in bytes.
    pub bytes: u64,
    /// Bytes of its `job` entries.
    pub job_bytes: u64,
    /// The counts in its `end` entry.
    pub end: End,
}

/// How much of the checkpoint is written (and synced) at a time.
const WRITE_CHUNK: usize = 1 << 20;

/// Buffers entries and writes them to the file in large pieces.
struct Out<'f> {
    file: &'f dyn SegmentFile,
    buf: Vec<u8>,
    body: Vec<u8>,
    offset: u64,
    n: u64,
    salt: u32,
    loc: String,
}

impl Out<'_> {
    fn entry<T: Serialize>(&mut self, etype: u8, v: &T) -> Result<(), WalError> {
        self.body.clear();
        bincode::serialize_into(&mut self.body, v).expect("bincode into a Vec");
        if self.body.len() > MAX_BODY as usize {
            return Err(WalError::corrupt(
                self.loc.clone(),
                self.offset,
                format!("a checkpoint entry of {} bytes is too large", self.body.len()),
            ));
        }
        self.n += 1;
        encode_record(&mut self.buf, etype, SCHEMA, self.n, &self.body, self.salt);
        super::pace();
        if self.buf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    /// An entry whose body is already encoded.
    fn raw_entry(&mut self, etype: u8, body: &[u8]) -> Result<(), WalError> {
        self.n += 1;
        encode_record(&mut self.buf, etype, SCHEMA, self.n, body, self.salt);
        super::pace();
        if self.buf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    /// Bytes of entries so far, buffered ones included.
    fn len(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    /// Writes what is buffered and syncs it: the checkpoint never holds more than a MiB of
    /// dirty pages, so the log's own fdatasync, which shares the disk and the file system's
    /// journal with it, never waits behind a large write-back.
    fn flush(&mut self) -> Result<(), WalError> {
        let io = |e| WalError::io(self.loc.clone(), e);
        self.file.write_at(&self.buf, self.offset).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Writes `folded` as the checkpoint for `header` (its `job_bytes` is filled in): to [`TMP`],
/// synced, renamed over [`FILE`], the directory synced. On failure the old checkpoint stays in
/// place (a leftover `TMP` is removed by the next attempt).
pub fn write(storage: &dyn Storage, header: &Header, folded: &Folded) -> Result<Written, WalError> {
    let loc = storage.location(TMP);
    let io = |e| WalError::io(loc.clone(), e);
    match storage.remove(TMP) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let file = storage.create(TMP).map_err(io)?;
    let mut out = Out {
        file: file.as_ref(),
        buf: Vec::with_capacity(2 << 20),
        body: Vec::new(),
        offset: HEADER_LEN as u64,
        n: 0,
        salt: salt(header.covered_lsn),
        loc: loc.clone(),
    };
    let mut end = End {
        released: folded
            .released
            .iter()
            .map(|((q, how), n)| (q.to_string(), *how, *n))
            .collect(),
        ..End::default()
    };
    for j in folded.live.iter() {
        out.entry(etype::JOB, &JobRepr::of(j))?;
        end.jobs += 1;
    }
    let header = Header {
        job_bytes: out.len() - HEADER_LEN as u64,
        ..*header
    };
    for h in folded.history.iter() {
        match h {
            HistRef::Job(j) => out.entry(etype::DONE, &JobRepr::of(j))?,
            // Copied as the last checkpoint held it (checked when it was read).
            HistRef::Raw(body) => out.raw_entry(etype::DONE, body)?,
        }
        end.done += 1;
    }
    for (key, e) in folded.keys.entries() {
        let k = KeyRepr {
            key: Cow::Borrowed(key),
            id: e.id,
            lsn: e.lsn,
            expires: e.expires,
        };
        out.entry(etype::KEY, &k)?;
        end.keys += 1;
    }
    for q in folded.queues.values() {
        out.entry(etype::QUEUE, q)?;
    }
    out.entry(etype::END, &end)?;
    out.flush()?;
    let bytes = out.offset;
    // The header last: it holds the size of the job entries.
    file.write_at(&header.encode(), 0).map_err(io)?;
    file.sync_data().map_err(io)?;
    drop(file);
    // Held open across the rename, the old checkpoint is not freed by it: it is freed
    // gradually afterwards (`shrink_gradually`), out of the way of the log's syncs.
    let old = storage.open(FILE, true).ok();
    storage.rename(TMP, FILE).map_err(io)?;
    storage
        .sync_dir()
        .map_err(|e| WalError::io(storage.location(""), e))?;
    if let Some(old) = old {
        if let Err(e) = super::shrink_gradually(old.as_ref(), 0) {
            log::warn!("checkpoint: freeing the previous one: {e}");
        }
    }
    Ok(Written {
        bytes,
        job_bytes: header.job_bytes,
        end,
    })
}

/// One entry of a checkpoint, as [`read`] hands it out.
pub enum Entry<'a> {
    /// A job that has not finished.
    Job(FoldJob),
    /// A finished job of the history, not decoded ([`decode_done`] does).
    Done {
        /// Its id.
        id: u64,
        /// The entry's body.
        body: &'a [u8],
    },
    /// An idempotency key.
    Key(Box<str>, KeyEntry),
    /// A queue's live settings.
    Queue(QueueSettings<'static>),
}

/// Encodes a job as a `job` or `done` entry's body (the catalog stores its rows the same way).
pub fn encode_job(j: &FoldJob, out: &mut Vec<u8>) {
    bincode::serialize_into(out, &JobRepr::of(j)).expect("bincode into a Vec");
}

/// Decodes the body of a `done` entry.
pub fn decode_done(body: &[u8], names: &mut dyn FnMut(&str) -> Arc<str>) -> Result<FoldJob, String> {
    let j: JobRepr<'_> = decode(body)?;
    j.into_job(names)
}

/// [`decode_done`] with an [`Interner`] for the names (the fold's [`super::fold::RawDecoder`]).
pub fn decode_done_interned(body: &[u8], names: &mut Interner) -> Result<FoldJob, String> {
    decode_done(body, &mut |n: &str| names.get(n))
}

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The header.
    pub header: Header,
    /// The counts of its `end` entry.
    pub end: End,
    /// Its size.
    pub bytes: u64,
}

/// Reads the checkpoint, if there is one, checking every entry's checksum and decoding every
/// entry but the history's (`done`: handed out encoded, for `visit` to decode if it needs to),
/// and hands each to `visit`, which may refuse it with a reason (reported as damage at its
/// offset). `names` shares queue and kind names. Errors: damage (with the offset), a newer
/// version, I/O.
pub fn read(
    storage: &dyn Storage,
    names: &mut dyn FnMut(&str) -> Arc<str>,
    visit: &mut dyn FnMut(Entry<'_>) -> Result<(), String>,
) -> Result<Option<Read>, WalError> {
    let loc = storage.location(FILE);
    let io = |e| WalError::io(loc.clone(), e);
    let file = match storage.open(FILE, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = file.size().map_err(io)?;
    let mut r = crate::wal::reader::Window::new(file.as_ref(), len);
    let header = Header::decode(r.get(0, HEADER_LEN).map_err(io)?, &loc)?;
    let salt = salt(header.covered_lsn);
    let mut off = HEADER_LEN as u64;
    let mut n = 0u64;
    let mut counted = End::default();
    let corrupt = |off: u64, d: String| WalError::corrupt(loc.clone(), off, d);
    loop {
        let hb: [u8; RECORD_HEADER_LEN] = match r.get(off, RECORD_HEADER_LEN).map_err(io)? {
            b if b.len() == RECORD_HEADER_LEN => b.try_into().expect("20 bytes"),
            _ => {
                return Err(corrupt(
                    off,
                    "the checkpoint ends without its end entry".into(),
                ))
            }
        };
        let h = RecordHeader::parse(&hb);
        if h.body_len == 0 || h.body_len > MAX_BODY {
            return Err(corrupt(off, format!("entry length {} out of range", h.body_len)));
        }
        let body_end = off + (RECORD_HEADER_LEN as u64) + u64::from(h.body_len);
        if body_end > len {
            return Err(corrupt(off, "entry cut short".into()));
        }
        let whole = r
            .get(off, RECORD_HEADER_LEN + h.body_len as usize)
            .map_err(io)?;
        let body = &whole[RECORD_HEADER_LEN..];
        if record_crc(&hb, body, salt) != h.crc {
            return Err(corrupt(off, "entry checksum mismatch".into()));
        }
        n += 1;
        if h.lsn != n {
            return Err(corrupt(off, format!("entry {} out of sequence (expected {n})", h.lsn)));
        }
        if h.schema != SCHEMA || !(etype::JOB..=etype::MAX).contains(&h.rtype) {
            return Err(WalError::NewerVersion {
                segment: format!("{loc} at offset {off}"),
                what: format!("checkpoint entry type {} schema {}", h.rtype, h.schema),
            });
        }
        let bad = |e: String| corrupt(off, format!("entry does not decode: {e}"));
        match h.rtype {
            etype::JOB => {
                let j: JobRepr<'_> = decode(body).map_err(bad)?;
                let job = j.into_job(names).map_err(bad)?;
                counted.jobs += 1;
                visit(Entry::Job(job)).map_err(bad)?;
            }
            etype::DONE => {
                // The body starts with the job's id (bincode: a u64, little-endian).
                let id = body
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .ok_or_else(|| bad("shorter than a job id".into()))?;
                counted.done += 1;
                visit(Entry::Done { id, body }).map_err(bad)?;
            }
            etype::KEY => {
                let k: KeyRepr<'_> = decode(body).map_err(bad)?;
                counted.keys += 1;
                let e = KeyEntry {
                    id: k.id,
                    lsn: k.lsn,
                    expires: k.expires,
                };
                visit(Entry::Key(k.key.as_ref().into(), e)).map_err(bad)?;
            }
            etype::QUEUE => {
                let q: QueueSettings<'_> = decode(body).map_err(bad)?;
                visit(Entry::Queue(q.into_owned())).map_err(bad)?;
            }
            _ => {
                let end: End = decode(body).map_err(bad)?;
                if (end.jobs, end.done, end.keys) != (counted.jobs, counted.done, counted.keys) {
                    return Err(corrupt(
                        off,
                        format!(
                            "the end entry counts {} jobs, {} finished and {} keys, but the \
                             checkpoint holds {}, {} and {}",
                            end.jobs, end.done, end.keys, counted.jobs, counted.done, counted.keys
                        ),
                    ));
                }
                if body_end != len {
                    return Err(corrupt(
                        body_end,
                        format!("{} bytes after the end entry", len - body_end),
                    ));
                }
                return Ok(Some(Read {
                    header,
                    end,
                    bytes: len,
                }));
            }
        }
        off = body_end;
    }
}

fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(body.len() as u64)
        .deserialize(body)
        .map_err(|e| e.to_string())
}
