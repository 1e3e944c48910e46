//! The userfaultfd kernel ABI and the descriptor that speaks it.
//!
//! The structures and ioctl numbers are hand-written from `<linux/userfaultfd.h>`; their
//! sizes and the resulting ioctl numbers are asserted at compile time (a size mismatch
//! changes the ioctl number and the kernel would refuse the call rather than misread it,
//! but we want a build error).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::handshake::{BadRegions, SocketFailure};
use crate::PAGE;

// ---- kernel ABI (include/uapi/linux/userfaultfd.h) ----

const UFFD_API: u64 = 0xAA;
pub(crate) const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `madvise(MADV_DONTNEED/REMOVE)` or a balloon dropped a range (`arg[0]..arg[1]`).
pub(crate) const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// Report `madvise` removals as events (what Firecracker's VMM asks for, for its balloon):
/// a removed page of anonymous memory reads as zeros afterwards, not as the snapshot.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg` (the page-fault member of its union: flags, address, ptid).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UffdMsg {
    pub(crate) event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    pub(crate) arg: [u64; 3],
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

const _: () = assert!(std::mem::size_of::<UffdioZeropage>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRange>() == 16);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const IOC_WRITE_READ: u64 = 3;
const IOC_READ: u64 = 2;
const UFFDIO_API: u64 = ioc(IOC_WRITE_READ, 0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(IOC_WRITE_READ, 0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(IOC_WRITE_READ, 0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = ioc(IOC_WRITE_READ, 0x04, std::mem::size_of::<UffdioZeropage>());
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd` (`_IO(0xAA, 0x00)`).
const USERFAULTFD_IOC_NEW: u64 = 0xAA << 8;

const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020_aa04);

/// `UFFDIO_COPY` retries on `EAGAIN` before it fails: with backoff capped at 1 ms, about
/// ten seconds of an address space that never settles.
const COPY_EAGAIN_RETRIES: u32 = 10_000;

/// Errors of userfaultfd operations and of the handler handshake.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// No userfaultfd could be created.
    #[error("cannot create a userfaultfd (neither /dev/userfaultfd nor the syscall worked): {0}")]
    Create(std::io::Error),
    /// An ioctl failed.
    #[error("userfaultfd {op} failed")]
    Ioctl {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A fault address lies outside every region the handler serves.
    #[error("page fault at {0:#x} outside the registered guest memory")]
    Stray(u64),
    /// Reading the page source failed.
    #[error("cannot read {len} bytes at offset {offset} of the memory file")]
    Source {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// The VMM side of the handshake failed on the handler's socket.
    #[error("page-fault handler socket {path}")]
    Handler {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        failure: SocketFailure,
    },
    /// The handler side of the handshake failed on a VMM's connection.
    #[error("the VMM's connection")]
    Vmm(#[source] SocketFailure),
    /// The descriptor passed is not a userfaultfd.
    #[error("the descriptor passed is not a userfaultfd ({0})")]
    NotUserfaultfd(String),
    /// The regions sent with the descriptor are unusable.
    #[error("bad guest memory regions from the VMM")]
    BadRegions(#[source] BadRegions),
    /// A prefetched working set holds fewer bytes than its offsets name pages.
    #[error("the working set names {pages} pages but holds {bytes} bytes")]
    ShortWorkingSet {
        /// Pages named.
        pages: u64,
        /// Bytes held.
        bytes: u64,
    },
    /// An event the handler never asked for (fork, remap, unmap): it stops serving
    /// rather than guess where pages now belong.
    #[error("userfaultfd event {0:#x}, which this handler never enabled: it stops serving rather than guess")]
    UnexpectedEvent(u8),
    /// The address space kept changing under a copy and no pending event explained it.
    #[error("UFFDIO_COPY at {0:#x}: the address space never settled (EAGAIN for 10 s)")]
    NeverSettled(u64),
}

/// What a single `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// The bytes were installed (or were present already: their waiters were woken).
    Done(u64),
    /// `EAGAIN`: the address space is changing (a removal is pending); read the pending
    /// events, then try again.
    Again,
}

pub(crate) fn ioctl_err(op: &'static str) -> impl FnOnce(std::io::Error) -> UffdError {
    move |source| UffdError::Ioctl { op, source }
}

/// A userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Uffd {
    /// Creates a non-blocking userfaultfd (through `/dev/userfaultfd`, falling back to the
    /// syscall) and negotiates the API with no optional features.
    pub fn new() -> Result<Self, UffdError> {
        Self::with_features(0)
    }

    /// [`Uffd::new`] asking for `features` (e.g. [`UFFD_FEATURE_EVENT_REMOVE`]).
    pub fn with_features(features: u64) -> Result<Self, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = match File::options()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
        {
            // SAFETY: ioctl on a descriptor we own; USERFAULTFD_IOC_NEW takes the flags as
            // its integer argument and returns a new descriptor.
            Ok(dev) => unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) },
            Err(_) => -1,
        };
        let fd = if fd >= 0 {
            fd
        } else {
            // SAFETY: the userfaultfd syscall takes only flags and returns a descriptor.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
            if fd < 0 {
                return Err(UffdError::Create(std::io::Error::last_os_error()));
            }
            fd as i32
        };
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let uffd = Self { fd };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ..UffdioApi::default()
        };
        uffd.ioctl(UFFDIO_API, &mut api, "UFFDIO_API")?;
        Ok(uffd)
    }

    /// Wraps a descriptor received from a VMM (the API was negotiated there).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    fn ioctl<T>(&self, request: u64, arg: &mut T, op: &'static str) -> Result<(), UffdError> {
        // SAFETY: every request used here takes a pointer to the `repr(C)` struct `T` whose
        // size is encoded in the request number (asserted above); `arg` is a valid, exclusive
        // reference for the duration of the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, arg as *mut T) };
        if rc != 0 {
            return Err(ioctl_err(op)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Registers `[addr, addr + len)` of this process for missing-page faults.
    pub fn register_missing(&self, addr: u64, len: u64) -> Result<(), UffdError> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: addr, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_REGISTER, &mut reg, "UFFDIO_REGISTER")
    }

    /// Wakes threads waiting on faults in `[addr, addr + len)`.
    pub fn wake(&self, addr: u64, len: u64) -> Result<(), UffdError> {
        let mut range = UffdioRange { start: addr, len };
        self.ioctl(UFFDIO_WAKE, &mut range, "UFFDIO_WAKE")
    }

    /// Atomically fills `[dst, dst + src.len())` of the registered memory with `src`
    /// (`UFFDIO_COPY`) and wakes threads waiting there. Pages already present are skipped
    /// (and waiters on them woken). Returns the bytes installed.
    pub fn copy(&self, dst: u64, src: &[u8]) -> Result<u64, UffdError> {
        self.copy_pages(dst, src, PAGE)
    }

    /// [`copy`](Self::copy) into memory of `page_size` pages (a hugetlbfs region's 2 MiB):
    /// a page already present is skipped whole.
    pub fn copy_pages(&self, dst: u64, src: &[u8], page_size: u64) -> Result<u64, UffdError> {
        let len = src.len() as u64;
        let mut done = 0u64;
        let mut installed = 0u64;
        let mut retries = 0u32;
        while done < len {
            let mut c = UffdioCopy {
                dst: dst + done,
                // The kernel reads `len - done` bytes from here: inside `src`.
                src: src.as_ptr() as u64 + done,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads `c.len` bytes at `c.src`, which lie inside `src`,
            // and writes only into pages of the registered range, which the kernel checks.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut c) };
            if rc == 0 {
                installed += len - done;
                break;
            }
            let err = std::io::Error::last_os_error();
            if c.copy > 0 {
                done += c.copy as u64;
                installed += c.copy as u64;
                continue;
            }
            match -c.copy as i32 {
                libc::EEXIST => {
                    // Already present (another fault on the same page was served).
                    self.wake(dst + done, page_size)?;
                    done += page_size;
                }
                libc::EAGAIN => {
                    // The address space is changing under the copy (an unmap, a remap or
                    // a fork in progress): back off instead of spinning, and give up once
                    // it never settles rather than wait forever.
                    retries += 1;
                    if retries > COPY_EAGAIN_RETRIES {
                        return Err(ioctl_err("UFFDIO_COPY (address space never settled)")(err));
                    }
                    std::thread::sleep(std::time::Duration::from_micros(
                        (10u64 << retries.min(7)).min(1000),
                    ));
                }
                _ => return Err(ioctl_err("UFFDIO_COPY")(err)),
            }
        }
        Ok(installed)
    }

    /// One `UFFDIO_COPY` of whole pages, without retrying `EAGAIN`: the caller reads the
    /// pending events first (a removal may have changed what the range should hold).
    pub fn try_copy(&self, dst: u64, src: &[u8]) -> Result<Filled, UffdError> {
        let len = src.len() as u64;
        let mut c = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `len` bytes at `c.src`, which is `src`, and writes only
        // into pages of the registered range, which the kernel checks.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut c) };
        if rc == 0 {
            return Ok(Filled::Done(len));
        }
        let err = std::io::Error::last_os_error();
        if c.copy > 0 {
            // Partly done: the rest is the caller's next attempt.
            return Ok(Filled::Done(c.copy as u64));
        }
        match -c.copy as i32 {
            libc::EEXIST => {
                self.wake(dst, len)?;
                Ok(Filled::Done(len))
            }
            libc::EAGAIN => Ok(Filled::Again),
            _ => Err(ioctl_err("UFFDIO_COPY")(err)),
        }
    }

    /// Maps zero pages over `[dst, dst + len)` (`UFFDIO_ZEROPAGE`), without retrying
    /// `EAGAIN`.
    pub fn try_zeropage(&self, dst: u64, len: u64) -> Result<Filled, UffdError> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE takes a pointer to the struct, valid for the call, and
        // writes only into pages of the registered range, which the kernel checks.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &mut z) };
        if rc == 0 {
            return Ok(Filled::Done(len));
        }
        let err = std::io::Error::last_os_error();
        if z.zeropage > 0 {
            return Ok(Filled::Done(z.zeropage as u64));
        }
        match -z.zeropage as i32 {
            libc::EEXIST => {
                self.wake(dst, len)?;
                Ok(Filled::Done(len))
            }
            libc::EAGAIN => Ok(Filled::Again),
            _ => Err(ioctl_err("UFFDIO_ZEROPAGE")(err)),
        }
    }

    /// Reads pending fault events into `buf`; returns how many (0 when none is pending).
    pub(crate) fn read_events(&self, buf: &mut [UffdMsg]) -> Result<usize, UffdError> {
        // SAFETY: reads at most `size_of_val(buf)` bytes into the slice of plain-data structs.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                std::mem::size_of_val(buf),
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(ioctl_err("read")(err)),
            };
        }
        Ok(n as usize / std::mem::size_of::<UffdMsg>())
    }
}
