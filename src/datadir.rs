//! The data directory: created private, and locked so that one process uses it at a time.

use std::fs::File;
use std::path::Path;

use crate::error::Error;

/// Creates `dir` (mode 0700) if it is missing. An existing one must belong to this daemon's user
/// (another user could swap the socket or the WAL in it: refused), and loses write permission for
/// group and others if it had it (logged: fixed, not refused).
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let meta = std::fs::metadata(dir).map_err(io)?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::Config(format!(
            "{} belongs to uid {}, not to this daemon's uid {me}: its owner could swap the socket \
             or the WAL in it; give it to this user (chown) or choose another --data",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let fixed = mode & !0o022;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(fixed)).map_err(io)?;
        let who = match mode & 0o022 {
            0o020 => "its group",
            0o002 => "every user",
            _ => "its group and every user",
        };
        log::warn!(
            "{} was writable by {who} (mode {mode:04o}), who could have swapped the socket or the \
             WAL in it; changed to {fixed:04o}",
            dir.display()
        );
    }
    Ok(())
}

/// Creates the data directory if need be and takes its lock (`DATA/LOCK`): one process per
/// directory.
pub fn lock_data_dir(dir: &Path) -> Result<File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    private_dir(dir)?;
    let path = dir.join("LOCK");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        // A LOCK that is a symbolic link was not made by duejob: never follow it.
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Locked(dir.to_path_buf())),
        Err(e) => Err(Error::Io {
            path,
            source: e.into(),
        }),
    }
}
