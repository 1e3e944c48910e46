//! Locks on snapshot directories: recording writes artifacts into a snapshot (exclusive),
//! restoring reads them (shared), so a `record` never interleaves with another `record` or
//! with VMs restoring from the same directory.
//!
//! The lock is `flock(2)` on the directory itself: nothing is created, it works on
//! read-only filesystems, and the kernel drops it when the process dies.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// What the holder does with the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Reads it (restores VMs): many at once.
    Shared,
    /// Writes into it (records, replaces): alone.
    Exclusive,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
}

/// Errors taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds a conflicting lock.
    #[error("{path} is busy: {}; try again when it is done", match .wanted {
        LockMode::Exclusive => "another snapbpf is recording into it or restoring VMs from it",
        LockMode::Shared => "another snapbpf is recording into it",
    })]
    Busy {
        /// The directory.
        path: PathBuf,
        /// The lock asked for.
        wanted: LockMode,
    },
    /// The directory cannot be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Takes a `mode` lock on the directory `dir` without waiting.
pub fn lock_dir(dir: &Path, mode: LockMode) -> Result<DirLock, LockError> {
    let io = |source| LockError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let file = File::open(dir).map_err(io)?;
    let op = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    loop {
        // SAFETY: flock on a descriptor we own; released when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(DirLock { _dir: file });
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(LockError::Busy {
                    path: dir.to_path_buf(),
                    wanted: mode,
                })
            }
            _ => return Err(io(err)),
        }
    }
}

/// Where host-wide named locks live (tmpfs: they vanish with the host's boot).
pub const HOST_LOCK_DIR: &str = "/run/snapbpf";

/// A host-wide named lock (`flock` on `HOST_LOCK_DIR/NAME.lock`), held until dropped or
/// until the process dies.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

/// Takes the host-wide lock `name` if nobody holds it (`None` when another process or
/// thread does): for work one restore should do on behalf of all running at once.
pub fn try_host_lock(name: &str) -> std::io::Result<Option<HostLock>> {
    std::fs::create_dir_all(HOST_LOCK_DIR)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(HOST_LOCK_DIR).join(format!("{name}.lock")))?;
    loop {
        // SAFETY: flock on a descriptor we own; released when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(HostLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(None),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_exclude_everyone_and_readers_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reader = lock_dir(dir.path(), LockMode::Shared).expect("shared");
        let _another = lock_dir(dir.path(), LockMode::Shared).expect("shared twice");
        let e = lock_dir(dir.path(), LockMode::Exclusive).expect_err("readers hold it");
        assert!(e.to_string().contains("is busy"), "{e}");
        drop(reader);
        drop(_another);
        let writer = lock_dir(dir.path(), LockMode::Exclusive).expect("free now");
        let e = lock_dir(dir.path(), LockMode::Shared).expect_err("a writer holds it");
        assert!(e.to_string().contains("recording into it"), "{e}");
        drop(writer);
        assert!(lock_dir(&dir.path().join("absent"), LockMode::Shared).is_err());
    }

    #[test]
    fn a_host_lock_has_one_holder() {
        let name = format!("test-{}", std::process::id());
        let first = try_host_lock(&name).expect("lock").expect("free");
        assert!(try_host_lock(&name).expect("lock").is_none(), "held");
        drop(first);
        assert!(try_host_lock(&name).expect("lock").is_some(), "free again");
        let _ = std::fs::remove_file(Path::new(HOST_LOCK_DIR).join(format!("{name}.lock")));
    }
}
