//! The storage seam of the WAL: every byte the WAL reads or writes goes through [`Storage`] and
//! [`SegmentFile`].
//!
//! [`FileStorage`] is the real thing (a `wal/` directory of preallocated segment files).
//! [`MemStorage`] keeps segments in memory and, per instance, can cut the power at the Nth
//! write/sync, fail one operation with ENOSPC or EIO, and then produce the image a disk would hold
//! after the cut (synced bytes, plus optionally part of what was written but not synced). Tests use
//! it to check crash consistency without global fail-points, so they run in parallel.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One open segment file.
pub trait SegmentFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `off`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `off`.
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Makes written data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Current file length.
    fn size(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space up to `len` bytes (reads as zeros).
    fn allocate(&self, len: u64) -> io::Result<()>;
}

/// A directory of segment files.
pub trait Storage: Send + Sync {
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new file (fails if it exists), open for reading and writing.
    fn create(&self, name: &str) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens an existing file, for writing too when `write` is true.
    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn SegmentFile>>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the directory's entries durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// A human-readable location of `name`, for messages.
    fn location(&self, name: &str) -> String;
    /// Renames `from` to `to` in the directory, replacing `to` if it exists (atomically: a crash
    /// leaves one or the other). The new name is durable after [`Storage::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// The archive beside this directory (`DATA/archive` beside `DATA/wal`), as a storage of its
    /// own, or `None` when this storage has none.
    fn archive(&self) -> Option<Box<dyn Storage>>;
    /// Moves `name` into the archive under the same name, creating the archive directory first if
    /// need be. The move is durable once the archive's directory and then this one are synced;
    /// a crash before that leaves the file under one name or the other.
    fn move_to_archive(&self, name: &str) -> io::Result<()>;
    /// When the file was last written (ms since the epoch).
    fn modified_ms(&self, name: &str) -> io::Result<u64>;
}

/// Segment files in a real directory.
#[derive(Debug, Clone)]
pub struct FileStorage {
    dir: PathBuf,
    archive: Option<PathBuf>,
}

impl FileStorage {
    /// Storage over `dir` (which must exist), without an archive.
    pub fn new(dir: impl Into<PathBuf>) -> FileStorage {
        FileStorage {
            dir: dir.into(),
            archive: None,
        }
    }
    /// The log of a data directory: `DATA/wal`, with its archive `DATA/archive` (created when a
    /// segment is first archived).
    pub fn data_dir(data: &Path) -> FileStorage {
        FileStorage {
            dir: data.join("wal"),
            archive: Some(data.join("archive")),
        }
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

struct RealFile(File);

impl SegmentFile for RealFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, off) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.0.write_all_at(buf, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // Filesystems without fallocate: a sparse extension still reads as zeros.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                if self.size()? < len {
                    self.0.set_len(len)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Storage for FileStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(n) = entry?.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn SegmentFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(name))?;
        Ok(Box::new(RealFile(f)))
    }
    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn SegmentFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(write)
            .open(self.dir.join(name))?;
        Ok(Box::new(RealFile(f)))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
    fn location(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }
    fn archive(&self) -> Option<Box<dyn Storage>> {
        let dir = self.archive.clone()?;
        Some(Box::new(FileStorage { dir, archive: None }))
    }
    fn move_to_archive(&self, name: &str) -> io::Result<()> {
        let Some(archive) = &self.archive else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this log has no archive directory",
            ));
        };
        if !archive.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(archive) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            // The new directory's own entry, in its parent.
            if let Some(parent) = archive.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        std::fs::rename(self.dir.join(name), archive.join(name))
    }
    fn modified_ms(&self, name: &str) -> io::Result<u64> {
        let t = std::fs::metadata(self.dir.join(name))?.modified()?;
        Ok(t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Power is cut before operation N (0-based) runs: it and everything after fail with EIO, and
    /// [`MemStorage::crash_image`] gives what the disk holds.
    PowerCutAt(u64),
    /// Operation N fails with ENOSPC; the storage keeps working afterwards.
    NoSpaceAt(u64),
    /// Operation N fails with EIO; the storage keeps working afterwards.
    IoErrorAt(u64),
    /// Every operation from N on fails with EIO (a dying disk; unlike a power cut,
    /// [`MemStorage::crash_image`] still shows what was written before).
    IoErrorFrom(u64),
    /// The Nth fdatasync of a segment file (0-based; other syncs are not counted) fails with
    /// EIO; the storage keeps working afterwards. Unlike [`Fault::IoErrorAt`] it does not depend
    /// on how many writes came first (the WAL writes sync marks when it goes idle, and its
    /// durable point every second, at times tests do not control).
    SyncFailsAt(u64),
}

#[derive(Default, Clone)]
struct MemFile {
    /// What survives a power cut.
    durable: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    /// Writes since the last sync, in order, for torn images.
    unsynced: Vec<(u64, Vec<u8>)>,
    /// When it was last written (ms since the epoch).
    mtime: u64,
}

/// The archive's names in the one shared name space of a [`MemStorage`].
const ARCHIVE_PREFIX: &str = "archive/";

#[derive(Default)]
struct MemState {
    /// The files' contents, by inode number (never reused: a handle outlives a removed name).
    inodes: Vec<MemFile>,
    /// Directory entries now: name -> inode. Archive names start with [`ARCHIVE_PREFIX`].
    names: BTreeMap<String, usize>,
    /// Directory entries as of each directory's last sync: what a power cut leaves.
    durable_names: BTreeMap<String, usize>,
    ops: u64,
    /// fdatasyncs so far.
    syncs: u64,
    fault: Option<Fault>,
    powered_off: bool,
}

/// In-memory segments with per-instance fault injection (tests and benchmarks).
///
/// Files are inodes behind names, as on a real file system: a rename or a removal changes only
/// the directory entry, and entries become durable per directory (the log's, the archive's) when
/// that directory is synced. A mutex guards the state: this backend is for tests.
#[derive(Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
    /// `""` for the log's directory, [`ARCHIVE_PREFIX`] for the archive's view.
    area: &'static str,
}

fn eio(what: &str) -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()).with_context(what)
}

trait WithContext {
    fn with_context(self, what: &str) -> io::Error;
}
impl WithContext for io::Error {
    fn with_context(self, what: &str) -> io::Error {
        io::Error::new(self.kind(), format!("{what}: {self}"))
    }
}

/// Whether the full name `full` lies in `area` (the log's names hold no `/`).
fn in_area(full: &str, area: &str) -> bool {
    if area.is_empty() {
        !full.contains('/')
    } else {
        full.starts_with(area)
    }
}

impl MemStorage {
    /// Empty storage without faults.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Empty storage that will hit `fault`.
    pub fn with_fault(fault: Fault) -> MemStorage {
        let s = MemStorage::default();
        s.state.lock().expect("mem storage").fault = Some(fault);
        s
    }

    /// Number of counted operations (creates, fallocates, writes, truncates, syncs, directory
    /// syncs, renames, removes) so far.
    pub fn ops(&self) -> u64 {
        self.state.lock().expect("mem storage").ops
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.area)
    }

    /// The disk after the power cut: synced bytes of every file whose directory entry was synced,
    /// plus the first `torn_bytes` bytes of the writes that were not yet synced (in write order).
    pub fn crash_image(&self, torn_bytes: usize) -> MemStorage {
        self.image(|f| {
            let mut data = f.durable.clone();
            let mut budget = torn_bytes;
            for (off, w) in &f.unsynced {
                if budget == 0 {
                    break;
                }
                let n = budget.min(w.len());
                write_into(&mut data, *off, &w[..n]);
                budget -= n;
            }
            data
        })
    }

    /// The disk after a power cut on a disk that writes back in any order: synced bytes of every
    /// file whose directory entry was synced, and for each `sector`-sized, aligned block touched
    /// by writes that were not yet synced, a random one of its versions: as synced, or after the
    /// first k of the unsynced writes that touched it (each block chosen on its own, so a later
    /// block may hold new data while an earlier one does not). `seed` makes it repeatable.
    pub fn crash_image_scrambled(&self, seed: u64, sector: usize) -> MemStorage {
        assert!(sector > 0);
        let mut rng = fastrand::Rng::with_seed(seed);
        self.image(|f| {
            // The pieces of each block, in write order.
            let mut blocks: BTreeMap<u64, Vec<(u64, &[u8])>> = BTreeMap::new();
            for (off, w) in &f.unsynced {
                let mut pos = *off;
                let end = off + w.len() as u64;
                while pos < end {
                    let block = pos / sector as u64;
                    let block_end = ((block + 1) * sector as u64).min(end);
                    let piece = &w[(pos - off) as usize..(block_end - off) as usize];
                    blocks.entry(block).or_default().push((pos, piece));
                    pos = block_end;
                }
            }
            let mut data = f.durable.clone();
            for pieces in blocks.values() {
                let k = rng.usize(0..=pieces.len());
                for (off, piece) in &pieces[..k] {
                    write_into(&mut data, *off, piece);
                }
            }
            data
        })
    }

    /// A new storage (the log's view) holding, for every durable directory entry, what `disk`
    /// says survived of its file.
    fn image(&self, mut disk: impl FnMut(&MemFile) -> Vec<u8>) -> MemStorage {
        let st = self.state.lock().expect("mem storage");
        let mut out = MemState::default();
        for (name, &ino) in &st.durable_names {
            let data = disk(&st.inodes[ino]);
            out.inodes.push(MemFile {
                durable: data.clone(),
                current: data,
                unsynced: Vec::new(),
                mtime: st.inodes[ino].mtime,
            });
            out.names.insert(name.clone(), out.inodes.len() - 1);
            out.durable_names.insert(name.clone(), out.inodes.len() - 1);
        }
        MemStorage {
            state: Arc::new(Mutex::new(out)),
            area: "",
        }
    }

    /// A copy of a file's current bytes (tests poke at it).
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let st = self.state.lock().expect("mem storage");
        let ino = *st.names.get(&self.full(name))?;
        Some(st.inodes[ino].current.clone())
    }

    /// Replaces a file's bytes, durably (tests corrupt segments with it).
    pub fn set_file_bytes(&self, name: &str, bytes: Vec<u8>) {
        let mut st = self.state.lock().expect("mem storage");
        st.inodes.push(MemFile {
            durable: bytes.clone(),
            current: bytes,
            unsynced: Vec::new(),
            mtime: crate::clock::now_ms(),
        });
        let ino = st.inodes.len() - 1;
        st.names.insert(self.full(name), ino);
        st.durable_names.insert(self.full(name), ino);
    }

    /// Sets when a file was last written (tests of the archive's retention).
    pub fn set_modified_ms(&self, name: &str, ms: u64) {
        let mut st = self.state.lock().expect("mem storage");
        if let Some(&ino) = st.names.get(&self.full(name)) {
            st.inodes[ino].mtime = ms;
        }
    }

    /// Counts one operation and applies the fault plan to it.
    fn op(&self, st: &mut MemState, what: &str) -> io::Result<()> {
        self.op_on(st, what, "")
    }

    /// Like [`MemStorage::op`], for an operation on the file `name`.
    fn op_on(&self, st: &mut MemState, what: &str, name: &str) -> io::Result<()> {
        if st.powered_off {
            return Err(eio(&format!("{what} after power cut")));
        }
        let n = st.ops;
        st.ops += 1;
        let nth_sync = (what == SYNC_OP && name.ends_with(".wal")).then(|| {
            st.syncs += 1;
            st.syncs - 1
        });
        match st.fault {
            Some(Fault::SyncFailsAt(k)) if nth_sync == Some(k) => Err(eio(what)),
            Some(Fault::PowerCutAt(k)) if n >= k => {
                st.powered_off = true;
                Err(eio(&format!("{what}: power cut")))
            }
            Some(Fault::NoSpaceAt(k)) if n == k => Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOSPC.raw_os_error(),
            )
            .with_context(what)),
            Some(Fault::IoErrorAt(k)) if n == k => Err(eio(what)),
            Some(Fault::IoErrorFrom(k)) if n >= k => Err(eio(what)),
            _ => Ok(()),
        }
    }
}

/// The name of the fdatasync operation (counted on its own for [`Fault::SyncFailsAt`]).
const SYNC_OP: &str = "fdatasync";

fn write_into(data: &mut Vec<u8>, off: u64, buf: &[u8]) {
    let end = off as usize + buf.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[off as usize..end].copy_from_slice(buf);
}

struct MemHandle {
    storage: MemStorage,
    /// The file (it stays reachable through the handle after a rename or removal).
    ino: usize,
    /// The name it was opened under (for [`Fault::SyncFailsAt`], which counts segment syncs).
    name: String,
    write: bool,
}

impl MemHandle {
    fn with<R>(&self, f: impl FnOnce(&mut MemState, usize) -> io::Result<R>) -> io::Result<R> {
        let mut st = self.storage.state.lock().expect("mem storage");
        f(&mut st, self.ino)
    }
    fn check_write(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ))
        }
    }
}

impl SegmentFile for MemHandle {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.with(|st, ino| {
            let f = &st.inodes[ino];
            let start = (off as usize).min(f.current.len());
            let n = buf.len().min(f.current.len() - start);
            buf[..n].copy_from_slice(&f.current[start..start + n]);
            Ok(n)
        })
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.check_write()?;
        let s = self.storage.clone();
        self.with(|st, ino| {
            s.op(st, "write")?;
            let f = &mut st.inodes[ino];
            write_into(&mut f.current, off, buf);
            f.unsynced.push((off, buf.to_vec()));
            f.mtime = crate::clock::now_ms();
            Ok(())
        })
    }
    fn sync_data(&self) -> io::Result<()> {
        let s = self.storage.clone();
        self.with(|st, ino| {
            s.op_on(st, SYNC_OP, &self.name)?;
            let f = &mut st.inodes[ino];
            f.durable = f.current.clone();
            f.unsynced.clear();
            Ok(())
        })
    }
    fn size(&self) -> io::Result<u64> {
        self.with(|st, ino| Ok(st.inodes[ino].current.len() as u64))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_write()?;
        let s = self.storage.clone();
        self.with(|st, ino| {
            s.op(st, "truncate")?;
            // The new size becomes durable with the next sync, like written bytes.
            st.inodes[ino].current.resize(len as usize, 0);
            st.inodes[ino].mtime = crate::clock::now_ms();
            Ok(())
        })
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.check_write()?;
        let s = self.storage.clone();
        self.with(|st, ino| {
            s.op(st, "fallocate")?;
            let f = &mut st.inodes[ino];
            if (f.current.len() as u64) < len {
                f.current.resize(len as usize, 0);
            }
            Ok(())
        })
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let st = self.state.lock().expect("mem storage");
        Ok(st
            .names
            .keys()
            .filter(|n| in_area(n, self.area))
            .map(|n| n[self.area.len()..].to_string())
            .collect())
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn SegmentFile>> {
        let ino = {
            let mut st = self.state.lock().expect("mem storage");
            self.op(&mut st, "create")?;
            let full = self.full(name);
            if st.names.contains_key(&full) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    name.to_string(),
                ));
            }
            st.inodes.push(MemFile {
                mtime: crate::clock::now_ms(),
                ..MemFile::default()
            });
            let ino = st.inodes.len() - 1;
            st.names.insert(full, ino);
            ino
        };
        Ok(Box::new(MemHandle {
            storage: self.clone(),
            ino,
            name: name.to_string(),
            write: true,
        }))
    }
    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn SegmentFile>> {
        let ino = *self
            .state
            .lock()
            .expect("mem storage")
            .names
            .get(&self.full(name))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(Box::new(MemHandle {
            storage: self.clone(),
            ino,
            name: name.to_string(),
            write,
        }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.state.lock().expect("mem storage");
        self.op(&mut st, "remove")?;
        st.names
            .remove(&self.full(name))
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }
    fn sync_dir(&self) -> io::Result<()> {
        let mut st = self.state.lock().expect("mem storage");
        self.op(&mut st, "fsync dir")?;
        let area = self.area;
        st.durable_names.retain(|n, _| !in_area(n, area));
        let now: Vec<(String, usize)> = st
            .names
            .iter()
            .filter(|(n, _)| in_area(n, area))
            .map(|(n, &i)| (n.clone(), i))
            .collect();
        st.durable_names.extend(now);
        Ok(())
    }
    fn location(&self, name: &str) -> String {
        format!("mem:{}", self.full(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.state.lock().expect("mem storage");
        self.op(&mut st, "rename")?;
        let ino = st
            .names
            .remove(&self.full(from))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        st.names.insert(self.full(to), ino);
        Ok(())
    }
    fn archive(&self) -> Option<Box<dyn Storage>> {
        if !self.area.is_empty() {
            return None;
        }
        Some(Box::new(MemStorage {
            state: self.state.clone(),
            area: ARCHIVE_PREFIX,
        }))
    }
    fn move_to_archive(&self, name: &str) -> io::Result<()> {
        if !self.area.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the archive has no archive",
            ));
        }
        let mut st = self.state.lock().expect("mem storage");
        self.op(&mut st, "rename")?;
        let ino = st
            .names
            .remove(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        st.names.insert(format!("{ARCHIVE_PREFIX}{name}"), ino);
        Ok(())
    }
    fn modified_ms(&self, name: &str) -> io::Result<u64> {
        let st = self.state.lock().expect("mem storage");
        let ino = *st
            .names
            .get(&self.full(name))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(st.inodes[ino].mtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_image_keeps_only_synced_bytes_and_synced_names() {
        let s = MemStorage::new();
        let f = s.create("a").unwrap();
        s.sync_dir().unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(b" world", 5).unwrap();
        let g = s.create("b").unwrap();
        g.write_at(b"x", 0).unwrap();
        g.sync_data().unwrap();
        let img = s.crash_image(0);
        assert_eq!(img.file_bytes("a").unwrap(), b"hello");
        assert!(
            img.file_bytes("b").is_none(),
            "unsynced directory entry vanishes"
        );
        let torn = s.crash_image(3);
        assert_eq!(torn.file_bytes("a").unwrap(), b"hello wo");
    }

    #[test]
    fn scrambled_images_keep_synced_bytes_and_persist_unsynced_blocks_in_any_order() {
        let s = MemStorage::new();
        let f = s.create("a").unwrap();
        s.sync_dir().unwrap();
        f.write_at(&[1u8; 8], 0).unwrap();
        f.sync_data().unwrap();
        // Three unsynced blocks of 4 bytes: [8..12), [12..16), [16..20); the middle one twice.
        f.write_at(&[2u8; 12], 8).unwrap();
        f.write_at(&[3u8; 4], 12).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let img = s.crash_image_scrambled(seed, 4).file_bytes("a").unwrap();
            assert_eq!(&img[..8], &[1u8; 8], "synced bytes always survive");
            let block = |i: usize| img.get(i..i + 4).map(|b| b[0]).unwrap_or(0);
            let v = (block(8), block(12), block(16));
            assert!([0, 2].contains(&v.0) && [0, 2, 3].contains(&v.1) && [0, 2].contains(&v.2));
            seen.insert(v);
        }
        // A later block persisted while an earlier one did not, and every version of the
        // middle block, all occur.
        assert!(seen.contains(&(0, 0, 2)), "{seen:?}");
        assert!(seen.iter().any(|v| v.1 == 2) && seen.iter().any(|v| v.1 == 3));
    }

    #[test]
    fn faults_hit_the_named_operation() {
        let s = MemStorage::with_fault(Fault::NoSpaceAt(1));
        let f = s.create("a").unwrap();
        let e = f.write_at(b"x", 0).unwrap_err();
        assert!(e.to_string().contains("write"), "{e}");
        assert!(e.to_string().contains("No space left"), "{e}");
        f.write_at(b"x", 0).unwrap();
        let p = MemStorage::with_fault(Fault::PowerCutAt(2));
        let f = p.create("a").unwrap();
        f.write_at(b"x", 0).unwrap();
        assert!(f.sync_data().is_err());
        assert!(f.write_at(b"y", 1).is_err(), "stays off after the cut");
    }
}
