//! The Unix-socket server: accepts connections, checks the peer's uid, and gives each connection
//! a reader and a writer thread ([`conn`]).
//!
//! The socket is created under a temporary name, chmod'ed to 0600 and renamed into place, so it is
//! never reachable with looser permissions.

pub mod conn;
pub mod lines;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::protocol::{code, write_error};
use crate::runtime::{Error, Handle, Rejection};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// A listening server.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `path` (mode 0600) and serves `handle` on it.
pub fn serve(handle: Handle, path: &Path) -> Result<Server, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Config(format!(
                "another daemon is listening on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let tmp = path.with_extension(format!("sock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    log::info!("listening on {}", path.display());
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("duejob-accept".into())
        .spawn(move || accept_loop(listener, handle, stop2))
        .expect("spawn accept thread");
    Ok(Server {
        path: path.to_path_buf(),
        stop,
        thread: Some(thread),
    })
}

impl Server {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket file. Open connections end with the runtime.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept call.
        let _ = UnixStream::connect(&self.path);
        let _ = t.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn refuse(mut s: UnixStream, r: Rejection) {
    let mut out = Vec::new();
    write_error(&mut out, &r);
    let _ = s.write_all(&out);
}

fn accept_loop(listener: UnixListener, handle: Handle, stop: Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let uid = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) => c.uid.as_raw(),
            Err(e) => {
                log::warn!("cannot read peer credentials: {e}; closing connection");
                continue;
            }
        };
        if !handle.config().allow_uids.contains(&uid) {
            log::warn!("refused connection from uid {uid} (not in allow_uids)");
            refuse(
                stream,
                Rejection::new(
                    code::FORBIDDEN,
                    format!("uid {uid} may not use this daemon"),
                ),
            );
            continue;
        }
        if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            refuse(stream, Rejection::new(code::BUSY, "too many connections"));
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let (h, o) = (handle.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("duejob-conn".into())
            .spawn(move || {
                conn::serve_connection(stream, h);
                o.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a connection thread: {e}");
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
