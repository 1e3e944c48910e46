//! Opening a file with a chosen fault read-around window.
//!
//! Fault read-around uses the window of the opened file (`file->f_ra.ra_pages`), which
//! the kernel copies from the device's `read_ahead_kb` when the file is opened. There is
//! no per-file knob, so [`with_window`] opens the file while the device's value is
//! set to the window and restores the device value right after, under a host-wide lock
//! so concurrent opens do not interleave (and an interrupt puts the device value back).
//! The window then stays with this open file only. Files without a block device (tmpfs)
//! have no readahead; the window is then reported as absent.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The kernel's default read-around window, 128 KiB (32 pages): the paper's Linux-RA.
pub const DEFAULT_WINDOW_KIB: u64 = 128;

/// The lock that serialises changes of devices' `read_ahead_kb`.
const LOCK_PATH: &str = "/run/snapbpf-readahead.lock";

/// Errors opening a file with a readahead window.
#[derive(Debug, thiserror::Error)]
pub enum ReadaheadError {
    /// The file itself cannot be opened.
    #[error("open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device's readahead setting cannot be read, set or restored.
    #[error("{what} {knob} (needs root)")]
    Knob {
        /// What was being done.
        what: &'static str,
        /// The sysfs file.
        knob: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host-wide lock cannot be taken.
    #[error("lock {LOCK_PATH}")]
    Lock(#[source] std::io::Error),
}

/// The sysfs `read_ahead_kb` of the block device holding `path`, if it has one.
pub fn device_knob(path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    // A whole disk's bdi is named after it; a partition shares its disk's bdi.
    let direct = PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"));
    if direct.exists() {
        return Some(direct);
    }
    let via_parent = PathBuf::from(format!(
        "/sys/dev/block/{major}:{minor}/../queue/read_ahead_kb"
    ));
    via_parent.exists().then_some(via_parent)
}

/// Opens `path` so that its file readahead window is `kib`; returns the file and the
/// window actually in effect (`None` when the file has no block device).
pub fn open_with_window(path: &Path, kib: u64) -> Result<(File, Option<u64>), ReadaheadError> {
    let (file, window) = with_window(path, kib, || File::open(path))?;
    let file = file.map_err(|source| ReadaheadError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((file, window))
}

/// Runs `open` while the device holding `path` has the read-around window `kib`, so that
/// whatever `open` opens (this process, or a VMM it asks to open the file) keeps that
/// window; returns what `open` returned and the window in effect (`None` when the file
/// has no block device: `open` runs as it is). Concurrent callers are serialised.
pub fn with_window<T>(
    path: &Path,
    kib: u64,
    open: impl FnOnce() -> T,
) -> Result<(T, Option<u64>), ReadaheadError> {
    let Some(knob) = device_knob(path) else {
        return Ok((open(), None));
    };
    let knob_err = |what: &'static str| {
        let knob = knob.clone();
        move |source| ReadaheadError::Knob { what, knob, source }
    };
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(ReadaheadError::Lock)?;
    // SAFETY: plain flock on a descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(ReadaheadError::Lock(std::io::Error::last_os_error()));
    }
    let mut sysfs = File::options()
        .read(true)
        .write(true)
        .open(&knob)
        .map_err(knob_err("open"))?;
    let mut old = String::new();
    sysfs.read_to_string(&mut old).map_err(knob_err("read"))?;
    let old = old.trim().to_string();
    if old == kib.to_string() {
        return Ok((open(), Some(kib)));
    }
    let set = |f: &mut File, v: &str| -> std::io::Result<()> {
        f.rewind()?;
        f.write_all(v.as_bytes())
    };
    let (undo_knob, undo_value) = (knob.clone(), old.clone());
    let _interrupted =
        snapbpf_os::interrupt::on_interrupt("restored the device's read_ahead_kb", move || {
            let _ = std::fs::write(&undo_knob, &undo_value);
        });
    set(&mut sysfs, &kib.to_string()).map_err(knob_err("write"))?;
    let opened = open();
    // Restore the device setting whatever happened to the open.
    set(&mut sysfs, &old).map_err(knob_err("restore"))?;
    Ok((opened, Some(kib)))
}
