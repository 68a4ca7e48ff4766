//! The Unix-socket server: binds the socket, accepts connections, checks the peer's uid, and gives
//! each connection a reader and a writer thread (`conn`).
//!
//! - The socket is bound under a temporary name, given its group and mode (0600, or 0660 with
//!   `socket_group`) and renamed into place, so it is never reachable with looser permissions.
//!   Only a stale socket is ever replaced at that path; a regular file, a directory or a live
//!   daemon's socket is an error.
//! - The accept thread waits in `poll` on the listener and on a wake socket of its own, so
//!   stopping never depends on the socket path (which may have been removed or replaced).
//! - Connections are capped (`max_connections`, sized from the file descriptor limit): past the
//!   cap a client is answered `busy` and closed. Should the descriptors run out all the same, a
//!   spare descriptor kept for the purpose lets the server still answer `busy` instead of leaving
//!   the client hanging in the backlog; the log line about it is rate-limited.
//! - On stop, the listener closes, open connections stop being read (the replies of requests
//!   already read still go out), and the socket file is removed if it is still ours.

internal_mods! {
    mod conn;
    mod lines;
}
pub mod metrics;
mod ops;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, DEFAULT_MAX_CONNECTIONS};
use crate::runtime::{Error, Handle};
use crate::wire::reply::write_error;
use crate::wire::{ErrorCode, Rejection};

/// File descriptors kept aside from connections: the WAL, the listener, the spare, exec pipes and
/// pidfds (per worker), SMTP connections, logs.
fn reserved_fds(cfg: &Config) -> usize {
    32 + 6 * cfg.workers + cfg.smtp.as_ref().map_or(0, |s| s.pool_size as usize)
}

/// How many connections to serve at once: the configured number, or as many as the soft file
/// descriptor limit leaves room for (one descriptor each), at most [`DEFAULT_MAX_CONNECTIONS`].
pub(crate) fn connection_limit(cfg: &Config) -> Result<usize, String> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
        .min(usize::MAX as u64) as usize;
    let room = limit.saturating_sub(reserved_fds(cfg));
    match cfg.max_connections {
        // More connections than descriptors would let clients starve the WAL of them (a segment
        // rotation that cannot open its file stops the log): refused, not warned about.
        Some(n) if n > room => Err(format!(
            "max_connections = {n}, but the open-file limit ({limit}) leaves room for {room} \
             (one descriptor each, {} kept for the WAL, exec jobs and SMTP): raise the limit \
             (ulimit -n, or LimitNOFILE= in a systemd unit) or lower max_connections",
            reserved_fds(cfg)
        )),
        Some(n) => Ok(n),
        None if room == 0 => Err(format!(
            "the file descriptor limit ({limit}) leaves no room for connections (raise it: ulimit -n)"
        )),
        None => Ok(room.min(DEFAULT_MAX_CONNECTIONS)),
    }
}

/// Raises the soft limit on open files to the hard limit (a daemon's job: the default soft limit
/// of 1024 would cap connections near 1000). Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    // An unlimited hard limit is not a valid soft limit for open files: stay within the kernel's
    // usual ceiling.
    let target = l.maximum.unwrap_or(1 << 20).min(1 << 20);
    if l.current.is_some_and(|c| c < target) {
        l.current = Some(target);
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            log::warn!("cannot raise the open-file limit to {target}: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// What the accept thread and [`Server::stop`] share.
struct Shared {
    stop: AtomicBool,
    /// Open connections by id: stop ends them.
    conns: Mutex<HashMap<u64, Arc<UnixStream>>>,
    next_id: AtomicU64,
}

/// A listening server.
pub struct Server {
    path: PathBuf,
    /// The socket file's (device, inode): it is removed at stop only if it is still ours.
    ident: (u64, u64),
    wake: UnixStream,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes way for a socket at `path`: nothing there, or a stale socket (removed). A live daemon's
/// socket, or anything that is not a socket, is an error: never deleted.
fn clear_stale_socket(path: &Path) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if !t.is_socket() {
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_symlink() {
            "a symbolic link"
        } else if t.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Err(Error::Socket(format!(
            "{} exists and is {what}: refusing to replace it with the daemon's socket (choose another --socket, or remove it)",
            path.display()
        )));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::Socket(format!(
            "another daemon is listening on {}",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            log::info!("removing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(io_err(path))
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// A socket bound and in place, not yet served. The daemon binds it before it starts its runtime,
/// so that one that cannot have its socket stops before it runs anything; removed again if
/// dropped unserved.
pub struct Bound {
    /// Taken by [`Bound::serve`]; while it is here, dropping removes the socket.
    listener: Option<UnixListener>,
    path: PathBuf,
    ident: (u64, u64),
    max_connections: usize,
}

impl Bound {
    /// Starts accepting connections for `handle`.
    pub fn serve(mut self, handle: Handle) -> Server {
        let listener = self.listener.take().expect("a bound listener");
        let (path, ident, max_connections) = (self.path.clone(), self.ident, self.max_connections);
        let (wake, wake_rx) = UnixStream::pair().expect("socket pair");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("duejob-accept".into())
            .spawn(move || {
                crate::fail_stop::fail_stop(|| {
                    accept_loop(listener, wake_rx, handle, s2, max_connections)
                })
            })
            .expect("spawn accept thread");
        Server {
            path,
            ident,
            wake,
            shared,
            thread: Some(thread),
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if self.listener.is_some() {
            remove_if_ours(&self.path, self.ident);
        }
    }
}

/// Removes the socket file at `path` if it is still the one with `ident` (device, inode).
fn remove_if_ours(path: &Path, ident: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == ident => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => log::warn!(
            "{} is no longer this daemon's socket; left alone",
            path.display()
        ),
        Err(_) => {}
    }
}

/// Puts the socket bound at `tmp` in place at `path`, but never over anything: whatever appeared
/// there since `path` was checked (another daemon's socket, a file) stays, and this fails.
fn place(tmp: &Path, path: &Path) -> Result<(), Error> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let taken = || {
        Error::Socket(format!(
            "{} appeared while the daemon was setting up its socket (another daemon starting?); \
             refusing to replace it",
            path.display()
        ))
    };
    match renameat_with(CWD, tmp, CWD, path, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Err(taken()),
        // A filesystem without RENAME_NOREPLACE: a hard link cannot replace anything either.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            match rustix::fs::link(tmp, path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(tmp);
                    Ok(())
                }
                Err(rustix::io::Errno::EXIST) => Err(taken()),
                Err(e) => Err(io_err(path)(e.into())),
            }
        }
        Err(e) => Err(io_err(path)(e.into())),
    }
}

/// Binds the socket at `path` with the config's mode and group (and, with `socket_group`, opens
/// the data directory to that group). Refuses when a live daemon or anything but a stale socket
/// is there, or when the connection cap does not fit the open-file limit. A `data_dir` that is
/// given is created first (mode 0700) if it is missing, and must belong to this user.
pub fn bind(cfg: &Config, path: &Path, data_dir: Option<&Path>) -> Result<Bound, Error> {
    let max_connections = connection_limit(cfg).map_err(Error::Socket)?;
    if let Some(d) = data_dir {
        crate::datadir::private_dir(d)?;
    }
    clear_stale_socket(path)?;
    let tmp = path.with_extension(format!("sock.{}.tmp", std::process::id()));
    clear_stale_socket(&tmp)?;
    let listener = UnixListener::bind(&tmp).map_err(io_err(&tmp))?;
    let placed = (|| {
        if let Some(gid) = cfg.socket_group {
            rustix::fs::chown(&tmp, None, Some(rustix::fs::Gid::from_raw(gid))).map_err(|e| {
                Error::Socket(format!(
                    "cannot give the socket to group {gid}: {e} (the daemon's user must belong to that group, or be root)"
                ))
            })?;
            open_dir_to_group(path, gid, data_dir)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.socket_mode))
            .map_err(io_err(&tmp))?;
        place(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    listener.set_nonblocking(true).map_err(io_err(path))?;
    log::info!(
        "listening on {} (mode {:o}{}), up to {max_connections} connections",
        path.display(),
        cfg.socket_mode,
        cfg.socket_group
            .map(|g| format!(", group {g}"))
            .unwrap_or_default()
    );
    Ok(Bound {
        listener: Some(listener),
        path: path.to_path_buf(),
        ident: (meta.dev(), meta.ino()),
        max_connections,
    })
}

/// Binds `path` and serves `handle` on it ([`bind`], then [`Bound::serve`]).
pub fn serve(handle: Handle, path: &Path) -> Result<Server, Error> {
    Ok(bind(handle.config(), path, handle.data_dir())?.serve(handle))
}

/// With `socket_group`, members of the group must be able to reach the socket. When it sits in
/// the data directory (the default), that directory gets the group and search permission for it
/// (never write permission); a directory elsewhere (`--socket`) is not touched, only checked.
fn open_dir_to_group(socket: &Path, gid: u32, data_dir: Option<&Path>) -> Result<(), Error> {
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !data_dir.is_some_and(|d| same(d, dir)) {
        let reachable = meta.mode() & 0o001 != 0 || (meta.gid() == gid && meta.mode() & 0o010 != 0);
        if !reachable {
            log::warn!(
                "socket_group: members of group {gid} cannot reach {} (its directory {} is not \
                 searchable by them); it is not the data directory, so duejob leaves it as it is",
                socket.display(),
                dir.display()
            );
        }
        return Ok(());
    }
    rustix::fs::chown(dir, None, Some(rustix::fs::Gid::from_raw(gid)))
        .map_err(|e| Error::Socket(format!("cannot give {} to group {gid}: {e}", dir.display())))?;
    let mode = (meta.mode() & 0o7777 & !0o020) | 0o010;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io_err(dir))
}

impl Server {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, stops reading from open connections, and removes the socket file if it
    /// is still the one this server made. The replies of requests already read still go out:
    /// stop the runtime (so that every acknowledgement is sent), then [`Closing::wait`].
    pub fn stop(mut self) -> Closing {
        self.stop_inner();
        Closing {
            shared: self.shared.clone(),
        }
    }

    fn stop_inner(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write_all(b"x");
        let _ = t.join();
        let conns: Vec<Arc<UnixStream>> = self
            .shared
            .conns
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for c in conns {
            let _ = c.shutdown(std::net::Shutdown::Read);
        }
        remove_if_ours(&self.path, self.ident);
    }
}

/// Connections still writing their last replies after [`Server::stop`].
pub struct Closing {
    shared: Arc<Shared>,
}

impl Closing {
    /// Waits, at most `limit`, until every connection has sent its last replies and closed.
    /// Returns how many had not (a client that does not read its replies, say).
    pub fn wait(self, limit: Duration) -> usize {
        let t = Instant::now();
        loop {
            let open = self.shared.conns.lock().map(|c| c.len()).unwrap_or(0);
            if open == 0 || t.elapsed() >= limit {
                return open;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn refuse(s: &UnixStream, r: Rejection) {
    let mut out = Vec::new();
    write_error(&mut out, &r);
    let _ = (&*s).write_all(&out);
}

/// A log line at most once per interval, with how many were held back.
struct Throttle {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    /// `Some(held back since the last line)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < Throttle::EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held))
    }
}

/// A descriptor kept open so that, when the limit is reached, one can be freed to accept a
/// pending client and tell it `busy`.
fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Out of descriptors, with a client waiting in the backlog: frees the spare descriptor, takes
/// the client, tells it `busy`, closes it, and takes a spare again. Returns whether a client was
/// told (otherwise none was waiting, or even the spare did not help).
fn refuse_one_pending(listener: &UnixListener, spare: &mut Option<std::fs::File>) -> bool {
    drop(spare.take()); // closed here, before the accept
    let told = match listener.accept() {
        Ok((s, _)) => {
            refuse(
                &s,
                Rejection::new(
                    ErrorCode::Busy,
                    "too many connections (out of file descriptors)",
                ),
            );
            true
        }
        Err(_) => false,
    };
    *spare = spare_fd();
    told
}

fn accept_loop(
    listener: UnixListener,
    wake: UnixStream,
    handle: Handle,
    shared: Arc<Shared>,
    max_connections: usize,
) {
    use rustix::event::{PollFd, PollFlags};
    let mut spare = spare_fd();
    let mut out_of_fds = Throttle {
        last: None,
        held: 0,
    };
    let mut other_errors = Throttle {
        last: None,
        held: 0,
    };
    let mut forbidden = Throttle {
        last: None,
        held: 0,
    };
    loop {
        let mut fds = [
            PollFd::new(&listener, PollFlags::IN),
            PollFd::new(&wake, PollFlags::IN),
        ];
        if let Err(e) = rustix::event::poll(&mut fds, None) {
            if e != rustix::io::Errno::INTR {
                log::error!("accept: poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        if !fds[1].revents().is_empty() || shared.stop.load(Ordering::SeqCst) {
            return;
        }
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(c) if c == rustix::io::Errno::MFILE.raw_os_error()
                            || c == rustix::io::Errno::NFILE.raw_os_error()
                    ) =>
                {
                    let told = refuse_one_pending(&listener, &mut spare);
                    if let Some(held) = out_of_fds.allow() {
                        log::warn!("accept: {e}; answering new clients busy ({held} more like this in the last {} s; raise the open-file limit or lower max_connections)", Throttle::EVERY.as_secs());
                    }
                    if !told {
                        std::thread::sleep(Duration::from_millis(10));
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    if let Some(held) = other_errors.allow() {
                        log::warn!(
                            "accept: {e} ({held} more in the last {} s)",
                            Throttle::EVERY.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            };
            admit(stream, &handle, &shared, max_connections, &mut forbidden);
        }
    }
}

/// Checks a new connection's peer and the connection cap, and starts its threads.
fn admit(
    stream: UnixStream,
    handle: &Handle,
    shared: &Arc<Shared>,
    max_connections: usize,
    forbidden: &mut Throttle,
) {
    let uid = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(c) => c.uid.as_raw(),
        Err(e) => {
            log::warn!("cannot read peer credentials: {e}; closing connection");
            return;
        }
    };
    if !handle.config().allow_uids.contains(&uid) {
        if let Some(held) = forbidden.allow() {
            log::warn!(
                "refused connection from uid {uid} (not in allow_uids; {held} more refused in the last {} s)",
                Throttle::EVERY.as_secs()
            );
        }
        refuse(
            &stream,
            Rejection::new(
                ErrorCode::Forbidden,
                format!("uid {uid} may not use this daemon"),
            ),
        );
        return;
    }
    let stream = Arc::new(stream);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let Ok(mut conns) = shared.conns.lock() else {
            return;
        };
        if conns.len() >= max_connections {
            drop(conns);
            refuse(
                &stream,
                Rejection::new(
                    ErrorCode::Busy,
                    format!("too many connections (at most {max_connections})"),
                ),
            );
            return;
        }
        conns.insert(id, stream.clone());
    }
    let (h, sh) = (handle.clone(), shared.clone());
    let spawned = std::thread::Builder::new()
        .name("duejob-conn".into())
        .spawn(move || {
            conn::serve_connection(stream, h);
            if let Ok(mut conns) = sh.conns.lock() {
                conns.remove(&id);
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start a connection thread: {e}");
        if let Ok(mut conns) = shared.conns.lock() {
            conns.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_log_line_comes_once_per_interval_with_the_count_held_back() {
        let mut t = Throttle {
            last: None,
            held: 0,
        };
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.last = Instant::now().checked_sub(Throttle::EVERY + Duration::from_secs(1));
        assert_eq!(t.allow(), Some(2), "the two held back are counted");
        assert_eq!(t.allow(), None);
    }

    #[test]
    fn out_of_descriptors_a_waiting_client_still_hears_busy() {
        // What the accept loop does on EMFILE: the spare descriptor makes room for one accept.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let mut spare = spare_fd();
        assert!(spare.is_some());
        assert!(refuse_one_pending(&listener, &mut spare));
        assert!(spare.is_some(), "a spare is kept again for the next time");
        let mut reply = String::new();
        use std::io::Read;
        (&client).read_to_string(&mut reply).unwrap();
        assert!(reply.contains(r#""code":"busy""#), "{reply}");
    }
}
