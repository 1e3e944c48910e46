//! What a capture checks before it loads anything: the file (regular, on a filesystem
//! whose pages enter the page cache), the caller's capabilities, and tracefs with the
//! tracepoint the program attaches to. Each refusal is its own [`CaptureStartError`].

use std::mem::MaybeUninit;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{CaptureStartError, TracedFile};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Converts a userspace `st_dev` to the kernel's internal `dev_t` (`major << 20 | minor`)
/// that the `filemap` tracepoints report.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & ((1 << 20) - 1))
}

pub(super) fn resolve_file(path: &Path) -> Result<TracedFile, CaptureStartError> {
    let meta = std::fs::metadata(path).map_err(|source| CaptureStartError::Stat {
        path: path.to_owned(),
        source,
    })?;
    let ft = meta.file_type();
    if !ft.is_file() || ft.is_block_device() {
        return Err(CaptureStartError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    if let Some((magic, fs, hint)) = fs_without_page_cache(path) {
        return Err(CaptureStartError::NoPageCache {
            path: path.to_owned(),
            fs,
            magic,
            hint,
        });
    }
    Ok(TracedFile {
        st_dev: meta.dev(),
        kernel_dev: kernel_dev(meta.dev()),
        inode: meta.ino(),
        size: meta.len(),
    })
}

/// Filesystems on which the traced inode is not the one whose pages enter the page
/// cache, or that have no page cache at all.
fn fs_without_page_cache(path: &Path) -> Option<(i64, &'static str, &'static str)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable storage of the
    // right type; statfs only writes into it.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it initialised the struct (it was zeroed anyway).
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    let bad: &[(i64, &str, &str)] = &[
        (
            0x794c_7630,
            "overlayfs",
            "its page cache belongs to the upper/lower file; trace that file instead",
        ),
        (
            0x0102_1994,
            "tmpfs",
            "shmem pages are created when written and never enter the page cache through \
             filemap_add_folio() or filemap_fault(), so the tracepoints see nothing; put the \
             file on a disk-backed filesystem",
        ),
        (
            0x8584_58f6,
            "ramfs",
            "ramfs pages never leave memory, so nothing is ever read in; put the file on a \
             disk-backed filesystem",
        ),
        (0x9fa0, "procfs", "procfs files have no page cache"),
        (0x6265_6572, "sysfs", "sysfs files have no page cache"),
        (0x6462_6720, "debugfs", "debugfs files have no page cache"),
        (0x7472_6163, "tracefs", "tracefs files have no page cache"),
        (0x1cd1, "devpts", "devpts has no page cache"),
        (0xcafe_4a11, "bpffs", "bpffs has no page cache"),
        (0x6367_7270, "cgroup2", "cgroupfs has no page cache"),
    ];
    bad.iter()
        .find(|(m, _, _)| *m == magic)
        .map(|&(m, n, h)| (m, n, h))
}

pub(super) fn check_privileges() -> Result<(), CaptureStartError> {
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
    let Some(cap_eff) = cap_eff else {
        // Cannot tell: let the load report the real error.
        return Ok(());
    };
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(CaptureStartError::MissingPrivileges { cap_eff })
    }
}

const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// libbpf resolves a tracepoint's id through tracefs: make sure it is mounted and the
/// event exists.
pub(super) fn ensure_tracepoint(name: &'static str) -> Result<(), CaptureStartError> {
    let has_events = |d: &str| Path::new(d).join("events").is_dir();
    if !TRACEFS_DIRS.iter().any(|d| has_events(d)) {
        mount_tracefs().map_err(|source| CaptureStartError::TracefsUnavailable { source })?;
    }
    let exists = TRACEFS_DIRS.iter().any(|d| {
        Path::new(d)
            .join("events/filemap")
            .join(name)
            .join("id")
            .exists()
    });
    if exists {
        Ok(())
    } else {
        Err(CaptureStartError::TracepointMissing { name })
    }
}

fn mount_tracefs() -> std::io::Result<()> {
    let src = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are NUL-terminated static strings; data is null, which
    // mount(2) accepts.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
