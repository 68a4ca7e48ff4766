//! The catalog's storage: one sled database per day of submission under `DATA/catalog/`, and a
//! manifest that says how far the log has been applied and which ids each day holds.
//!
//! Each partition (`DATA/catalog/YYYY-MM-DD/`) holds three trees:
//! - `jobs`: id (u64, big-endian) → a row ([`Row`]: the job as a checkpoint entry stores it, plus
//!   where its `submit` record lies and the LSN of the last record applied to it);
//! - `time`: submitted_at ++ id (big-endian) → state, queue and kind, so that `jobs` and `replay`
//!   filter a time window without reading rows;
//! - `keys`: idempotency key → id (duplicates beyond the commit thread's memory, replays).
//!
//! Retention removes a whole partition directory: deleting old history never depends on sled
//! reclaiming space inside a database.
//!
//! The manifest (`DATA/catalog/manifest`, JSON, replaced atomically) is written only after every
//! partition changed since the last one was flushed: after a crash the log is applied again from
//! the position it names, and every row carries the LSN of the last record applied to it, so
//! applying a record twice changes nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::CatalogError;
use crate::checkpoint::file::{decode_done, encode_job};
use crate::checkpoint::fold::FoldJob;
use crate::job::State;
use crate::wal::reader::TailPos;

/// Milliseconds in a day: partitions are UTC days of submission.
pub const DAY_MS: u64 = 86_400_000;

/// Row format version (the first byte of every `jobs` value).
const ROW_VERSION: u8 = 1;
/// Bytes before the job's encoding in a row.
const ROW_HEAD: usize = 1 + 8 * 4;

/// A job as the catalog keeps it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The job, without its payload.
    pub job: FoldJob,
    /// LSN of the last record applied to it.
    pub last_lsn: u64,
    /// Where its `submit` record (with the payload) lies: segment and offset.
    pub payload_at: (u64, u64),
    /// The job this one replays.
    pub replay_of: Option<u64>,
}

impl Row {
    fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(ROW_VERSION);
        out.extend_from_slice(&self.last_lsn.to_le_bytes());
        out.extend_from_slice(&self.payload_at.0.to_le_bytes());
        out.extend_from_slice(&self.payload_at.1.to_le_bytes());
        out.extend_from_slice(&self.replay_of.unwrap_or(0).to_le_bytes());
        encode_job(&self.job, out);
    }

    fn decode(b: &[u8]) -> Result<Row, String> {
        if b.len() < ROW_HEAD || b[0] != ROW_VERSION {
            return Err(format!(
                "a row of {} bytes, version {}",
                b.len(),
                b.first().copied().unwrap_or(0)
            ));
        }
        let u = |i: usize| u64::from_le_bytes(b[1 + 8 * i..9 + 8 * i].try_into().expect("8"));
        let job = decode_done(&b[ROW_HEAD..], &mut |n: &str| Arc::from(n))?;
        Ok(Row {
            job,
            last_lsn: u(0),
            payload_at: (u(1), u(2)),
            replay_of: Some(u(3)).filter(|&r| r != 0),
        })
    }

    /// The `time` index value: state, queue and kind.
    fn time_value(&self) -> Vec<u8> {
        let q = self.job.queue.as_bytes();
        let mut v = Vec::with_capacity(2 + q.len() + self.job.kind.len());
        v.push(self.job.core.state.index() as u8);
        v.push(q.len().min(255) as u8);
        v.extend_from_slice(&q[..q.len().min(255)]);
        v.extend_from_slice(self.job.kind.as_bytes());
        v
    }
}

/// One entry of the `time` index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// Job id.
    pub id: u64,
    /// Submission time (ms).
    pub submitted_at: u64,
    /// State as the catalog last applied it.
    pub state: State,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
}

impl Indexed {
    fn decode(k: &[u8], v: &[u8]) -> Option<Indexed> {
        if k.len() != 16 || v.len() < 2 {
            return None;
        }
        let ql = v[1] as usize;
        if v.len() < 2 + ql {
            return None;
        }
        Some(Indexed {
            submitted_at: u64::from_be_bytes(k[..8].try_into().ok()?),
            id: u64::from_be_bytes(k[8..].try_into().ok()?),
            state: *State::ALL.get(v[0] as usize)?,
            queue: String::from_utf8_lossy(&v[2..2 + ql]).into_owned(),
            kind: String::from_utf8_lossy(&v[2 + ql..]).into_owned(),
        })
    }
}

/// The order of a [`Store::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `jobs`.
    NewestFirst,
    /// A replay.
    OldestFirst,
}

fn time_key(submitted_at: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&submitted_at.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The manifest: how far the log was applied, and each partition's ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// Where the catalog goes on reading: segment, offset, LSN of the next record.
    pub seq: u64,
    /// See `seq`.
    pub offset: u64,
    /// See `seq`.
    pub lsn: u64,
    /// Partitions, oldest first.
    pub partitions: Vec<PartInfo>,
}

/// A partition as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// Days since the epoch (UTC).
    pub day: u64,
    /// Lowest job id in it.
    pub min_id: u64,
    /// Highest job id in it.
    pub max_id: u64,
}

/// An open partition.
#[derive(Clone)]
struct Trees {
    db: sled::Db,
    jobs: sled::Tree,
    time: sled::Tree,
    keys: sled::Tree,
}

struct Part {
    info: PartInfo,
    trees: Option<Trees>,
    /// Written since the last flush.
    dirty: bool,
}

impl Part {
    /// A partition that holds no id yet (its range is empty).
    fn empty(day: u64) -> Part {
        Part {
            info: PartInfo {
                day,
                min_id: u64::MAX,
                max_id: 0,
            },
            trees: None,
            dirty: false,
        }
    }
}

/// The catalog's storage, shared by its thread (the only writer) and readers (`status`, `jobs`,
/// `replay`): a mutex guards the list of partitions, held only to find or open one.
pub struct Store {
    dir: PathBuf,
    parts: Mutex<BTreeMap<u64, Part>>,
    /// sled's page cache per partition.
    cache_bytes: u64,
}

/// The name of a day's partition directory: `YYYY-MM-DD`.
pub fn day_name(day: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(day * DAY_MS);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

fn parse_day_name(name: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(&format!("{name}T00:00:00Z")).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64;
    (ms % DAY_MS == 0 && day_name(ms / DAY_MS) == name).then_some(ms / DAY_MS)
}

const MANIFEST: &str = "manifest";

impl Store {
    /// Opens (or creates) the catalog in `dir`. Partitions are opened when first needed.
    pub fn open(dir: &Path) -> Result<(Store, Manifest), CatalogError> {
        std::fs::create_dir_all(dir).map_err(|e| CatalogError::io(dir, e))?;
        let mpath = dir.join(MANIFEST);
        let manifest = match std::fs::read(&mpath) {
            Ok(b) => {
                let m: Manifest = serde_json::from_slice(&b).map_err(|e| CatalogError::Corrupt {
                    path: mpath.clone(),
                    detail: format!("the manifest does not parse: {e}"),
                })?;
                if m.version != 1 {
                    return Err(CatalogError::Corrupt {
                        path: mpath,
                        detail: format!("manifest version {} (this build knows 1)", m.version),
                    });
                }
                m
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest {
                version: 1,
                ..Manifest::default()
            },
            Err(e) => return Err(CatalogError::io(&mpath, e)),
        };
        let mut parts = BTreeMap::new();
        for p in &manifest.partitions {
            parts.insert(
                p.day,
                Part {
                    info: p.clone(),
                    trees: None,
                    dirty: false,
                },
            );
        }
        // Partition directories the manifest does not list yet (created after it was last
        // written): their ids come back as the log is applied again.
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(day) = parse_day_name(&name) {
                    parts.entry(day).or_insert(Part::empty(day));
                }
            }
        }
        let store = Store {
            dir: dir.to_path_buf(),
            parts: Mutex::new(parts),
            cache_bytes: 32 << 20,
        };
        Ok((store, manifest))
    }

    fn open_trees(&self, day: u64) -> Result<Trees, CatalogError> {
        let path = self.dir.join(day_name(day));
        let sled_err = |e: sled::Error| CatalogError::Sled {
            path: path.clone(),
            source: e,
        };
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(self.cache_bytes)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(sled_err)?;
        Ok(Trees {
            jobs: db.open_tree("jobs").map_err(sled_err)?,
            time: db.open_tree("time").map_err(sled_err)?,
            keys: db.open_tree("keys").map_err(sled_err)?,
            db,
        })
    }

    /// The trees of partition `day`, opened if needed; `create` makes a new partition.
    fn trees(&self, day: u64, create: bool) -> Result<Option<Trees>, CatalogError> {
        let mut parts = self.parts.lock().expect("catalog partitions");
        let p = match parts.entry(day) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(_) if !create => return Ok(None),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(Part::empty(day)),
        };
        if p.trees.is_none() {
            p.trees = Some(self.open_trees(day)?);
        }
        Ok(p.trees.clone())
    }

    /// Days (newest first) whose id range may hold `id`.
    fn days_of(&self, id: u64) -> Vec<u64> {
        let parts = self.parts.lock().expect("catalog partitions");
        parts
            .values()
            .rev()
            .filter(|p| p.info.min_id <= id && id <= p.info.max_id)
            .map(|p| p.info.day)
            .collect()
    }

    /// Partition days, oldest first.
    pub fn days(&self) -> Vec<u64> {
        self.parts
            .lock()
            .expect("catalog partitions")
            .keys()
            .copied()
            .collect()
    }

    /// Job `id`'s row and the day it is filed under, if the catalog holds it.
    pub fn get(&self, id: u64) -> Result<Option<(u64, Row)>, CatalogError> {
        for day in self.days_of(id) {
            let Some(t) = self.trees(day, false)? else {
                continue;
            };
            if let Some(v) = t.jobs.get(id.to_be_bytes()).map_err(|e| self.sled(day, e))? {
                let row = Row::decode(&v).map_err(|d| CatalogError::Corrupt {
                    path: self.dir.join(day_name(day)),
                    detail: format!("job {id}: {d}"),
                })?;
                return Ok(Some((day, row)));
            }
        }
        Ok(None)
    }

    /// The job an idempotency key names, if the catalog holds it (newest partition first).
    pub fn key(&self, key: &str) -> Result<Option<u64>, CatalogError> {
        for day in self.days().into_iter().rev() {
            let Some(t) = self.trees(day, false)? else {
                continue;
            };
            if let Some(v) = t.keys.get(key.as_bytes()).map_err(|e| self.sled(day, e))? {
                if let Ok(b) = <[u8; 8]>::try_from(&v[..]) {
                    return Ok(Some(u64::from_be_bytes(b)));
                }
            }
        }
        Ok(None)
    }

    fn sled(&self, day: u64, e: sled::Error) -> CatalogError {
        CatalogError::Sled {
            path: self.dir.join(day_name(day)),
            source: e,
        }
    }

    /// Writes rows: `(day, row, index)`, where `index` says the `time` index (and, for a new
    /// job with a key, `keys`) must be written too.
    pub fn put(&self, rows: &[(u64, &Row, bool)]) -> Result<(), CatalogError> {
        let mut by_day: BTreeMap<u64, Vec<(&Row, bool)>> = BTreeMap::new();
        for (day, row, index) in rows {
            by_day.entry(*day).or_default().push((row, *index));
        }
        let mut buf = Vec::new();
        for (day, rows) in by_day {
            let t = self.trees(day, true)?.expect("created");
            let e = |e| self.sled(day, e);
            let (mut lo, mut hi) = (u64::MAX, 0);
            for (row, index) in rows {
                let id = row.job.id;
                lo = lo.min(id);
                hi = hi.max(id);
                crate::checkpoint::pace();
                row.encode(&mut buf);
                t.jobs.insert(id.to_be_bytes(), buf.as_slice()).map_err(e)?;
                if index {
                    t.time
                        .insert(
                            time_key(row.job.submitted_at, id),
                            row.time_value().as_slice(),
                        )
                        .map_err(e)?;
                    if let Some(k) = &row.job.key {
                        t.keys.insert(k.as_bytes(), &id.to_be_bytes()).map_err(e)?;
                    }
                }
            }
            // Ids first: a reader that finds the id range finds the row.
            {
                let mut parts = self.parts.lock().expect("catalog partitions");
                let p = parts.get_mut(&day).expect("created");
                p.info.min_id = p.info.min_id.min(lo);
                p.info.max_id = p.info.max_id.max(hi);
                p.dirty = true;
            }

        }
        Ok(())
    }

    /// Makes everything written durable, then records `pos` in the manifest: a restart goes on
    /// from there.
    pub fn flush(&self, pos: TailPos) -> Result<(), CatalogError> {
        let dirty: Vec<(u64, Trees)> = {
            let parts = self.parts.lock().expect("catalog partitions");
            parts
                .values()
                .filter(|p| p.dirty)
                .filter_map(|p| p.trees.clone().map(|t| (p.info.day, t)))
                .collect()
        };
        for (day, t) in &dirty {
            t.db.flush().map_err(|e| self.sled(*day, e))?;
        }
        let manifest = {
            let mut parts = self.parts.lock().expect("catalog partitions");
            for (day, _) in &dirty {
                if let Some(p) = parts.get_mut(day) {
                    p.dirty = false;
                }
            }
            Manifest {
                version: 1,
                seq: pos.seq,
                offset: pos.offset,
                lsn: pos.lsn,
                partitions: parts
                    .values()
                    .filter(|p| p.info.min_id <= p.info.max_id)
                    .map(|p| p.info.clone())
                    .collect(),
            }
        };
        self.write_manifest(&manifest)
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), CatalogError> {
        let tmp = self.dir.join("manifest.tmp");
        let path = self.dir.join(MANIFEST);
        let text = serde_json::to_vec_pretty(m).expect("manifest to JSON");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| CatalogError::io(&path, e))
    }

    /// Removes the partitions of days before `day`. Returns how many it removed.
    pub fn drop_before(&self, day: u64) -> Result<usize, CatalogError> {
        let old: Vec<u64> = {
            let mut parts = self.parts.lock().expect("catalog partitions");
            let keep = parts.split_off(&day);
            let old = std::mem::replace(&mut *parts, keep);
            old.into_keys().collect()
        };
        for d in &old {
            let path = self.dir.join(day_name(*d));
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CatalogError::io(&path, e)),
            }
        }
        Ok(old.len())
    }

    /// The `time` index entries of `[since, until)`, newest first (or oldest first); `each`
    /// is called with each until it returns false. Nothing is collected: a scan over millions
    /// of jobs holds one entry at a time.
    pub fn scan(
        &self,
        since: u64,
        until: u64,
        order: Order,
        each: &mut dyn FnMut(Indexed) -> bool,
    ) -> Result<(), CatalogError> {
        if since >= until {
            return Ok(());
        }
        let (lo_day, hi_day) = (since / DAY_MS, (until - 1) / DAY_MS);
        let mut days = self.days();
        days.retain(|&d| d >= lo_day && d <= hi_day);
        if order == Order::NewestFirst {
            days.reverse();
        }
        for day in days {
            let Some(t) = self.trees(day, false)? else {
                continue;
            };
            let range = t.time.range(time_key(since, 0)..time_key(until, 0));
            let entries: Box<dyn Iterator<Item = _>> = match order {
                Order::NewestFirst => Box::new(range.rev()),
                Order::OldestFirst => Box::new(range),
            };
            for kv in entries {
                let (k, v) = kv.map_err(|e| self.sled(day, e))?;
                if let Some(ix) = Indexed::decode(&k, &v) {
                    if !each(ix) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes the catalog takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::machine::JobCore;

    fn row(id: u64, submitted_at: u64) -> Row {
        Row {
            job: FoldJob {
                id,
                queue: "default".into(),
                kind: "noop".into(),
                payload: None,
                key: Some(format!("k{id}").into()),
                submitted_at,
                deadline: submitted_at + 1000,
                run_at: None,
                max_attempts: 3,
                timeout_ms: None,
                core: JobCore::with_run_at(None),
            },
            last_lsn: id,
            payload_at: (1, 40),
            replay_of: None,
        }
    }

    #[test]
    fn retention_removes_whole_days_and_a_reopened_store_finds_what_was_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog");
        let today = 20_000;
        let (old, new) = (row(1, (today - 40) * DAY_MS + 5), row(2, today * DAY_MS + 5));
        {
            let (store, m) = Store::open(&path).unwrap();
            assert_eq!(m.seq, 0);
            store
                .put(&[(today - 40, &old, true), (today, &new, true)])
                .unwrap();
            store.flush(TailPos { seq: 3, offset: 99, lsn: 7 }).unwrap();
            assert_eq!(store.get(1).unwrap().unwrap().1.job.submitted_at, old.job.submitted_at);
            assert_eq!(store.key("k2").unwrap(), Some(2));
            assert_eq!(store.drop_before(today - 29).unwrap(), 1);
            assert!(store.get(1).unwrap().is_none());
            assert!(!path.join(day_name(today - 40)).exists(), "the day's directory is gone");
            store.flush(TailPos { seq: 3, offset: 99, lsn: 7 }).unwrap();
        }
        let (store, m) = Store::open(&path).unwrap();
        assert_eq!((m.seq, m.offset, m.lsn), (3, 99, 7));
        assert_eq!(store.days(), vec![today]);
        let (day, r) = store.get(2).unwrap().unwrap();
        assert_eq!(day, today);
        assert_eq!(r.job.key.as_deref(), Some("k2"));
        let mut seen = Vec::new();
        store
            .scan(0, u64::MAX, Order::NewestFirst, &mut |ix| {
                seen.push((ix.id, ix.state, ix.queue, ix.kind));
                true
            })
            .unwrap();
        assert_eq!(seen, vec![(2, State::Ready, "default".into(), "noop".into())]);
    }

    #[test]
    fn a_corrupt_manifest_or_row_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join(MANIFEST), b"\x00\xff{").unwrap();
        assert!(matches!(Store::open(&path), Err(CatalogError::Corrupt { .. })));
        assert!(Row::decode(&[]).is_err());
        assert!(Row::decode(&[1; 40]).is_err());
        let mut b = Vec::new();
        row(5, 10).encode(&mut b);
        b.truncate(b.len() - 3);
        assert!(Row::decode(&b).is_err());
    }

    #[test]
    fn day_names_are_utc_dates_and_parse_back() {
        assert_eq!(day_name(0), "1970-01-01");
        let day = 1_796_515_200_000 / DAY_MS; // 2026-12-06
        assert_eq!(day_name(day), "2026-12-06");
        assert_eq!(parse_day_name("2026-12-06"), Some(day));
        assert_eq!(parse_day_name("manifest"), None);
        assert_eq!(parse_day_name("2026-13-06"), None);
    }
}
