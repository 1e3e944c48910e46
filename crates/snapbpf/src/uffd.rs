//! userfaultfd: a page-fault handler for guest memory, and the Firecracker handshake that
//! hands the userfault descriptor from a VMM to a handler process.
//!
//! # Kernel ABI
//! The structures and ioctl numbers below are hand-written from `<linux/userfaultfd.h>`;
//! their sizes are asserted at compile time (a size mismatch changes the ioctl number and
//! the kernel would refuse the call rather than misread it, but we want a build error).
//!
//! # Handshake (Firecracker's UFFD backend)
//! The page-fault handler listens on a Unix stream socket. The VMM creates the userfaultfd,
//! registers guest memory for missing-page faults, connects, and sends one message whose
//! payload is a JSON array of [`GuestRegionUffdMapping`] and whose ancillary data carries the
//! descriptor (`SCM_RIGHTS`); see Firecracker's
//! `docs/snapshotting/handling-page-faults-on-snapshot-resume.md`. A handler written for
//! Firecracker can serve our VMM and ours can serve Firecracker.
//!
//! Two snapbpf extensions, both ignorable by a Firecracker peer: after installing anything it
//! prefetches, the handler writes one JSON line ([`HandlerAck`]) back on the socket, which our
//! VMM waits for so the prefetch completes before the vCPU runs; and the VMM keeps the socket
//! open for the VM's life, so the handler ends the session when it closes.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Page size the handler serves (x86-64 base pages).
pub const PAGE: u64 = 4096;

// ---- kernel ABI (include/uapi/linux/userfaultfd.h) ----

const UFFD_API: u64 = 0xAA;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

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
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    arg: [u64; 3],
}

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
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd` (`_IO(0xAA, 0x00)`).
const USERFAULTFD_IOC_NEW: u64 = 0xAA << 8;

const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);

/// Errors of userfaultfd operations and of the handler handshake.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// No userfaultfd could be created.
    #[error("cannot create a userfaultfd (neither /dev/userfaultfd nor the syscall worked): {0}")]
    Create(std::io::Error),
    /// An ioctl failed.
    #[error("userfaultfd {op} failed: {source}")]
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
    #[error("cannot read {len} bytes at offset {offset} of the memory file: {source}")]
    Source {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// The handshake socket failed.
    #[error("page-fault handler socket {path}: {reason}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The regions sent with the descriptor are unusable.
    #[error("bad guest memory regions from the VMM: {0}")]
    BadRegions(String),
}

fn ioctl_err(op: &'static str) -> impl FnOnce(std::io::Error) -> UffdError {
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
        let len = src.len() as u64;
        let mut done = 0u64;
        let mut installed = 0u64;
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
                    self.wake(dst + done, PAGE)?;
                    done += PAGE;
                }
                libc::EAGAIN => continue,
                _ => return Err(ioctl_err("UFFDIO_COPY")(err)),
            }
        }
        Ok(installed)
    }

    /// Reads pending fault events into `buf`; returns how many (0 when none is pending).
    fn read_events(&self, buf: &mut [UffdMsg]) -> Result<usize, UffdError> {
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

/// One guest memory region a handler serves, as Firecracker describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Host virtual address of the region's start in the VMM.
    pub base_host_virt_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the snapshot memory file.
    pub offset: u64,
    /// Page size backing the region, bytes.
    pub page_size: u64,
}

impl GuestRegionUffdMapping {
    /// Host address of `file_offset`, if this region maps it.
    pub fn host_addr(&self, file_offset: u64) -> Option<u64> {
        (file_offset >= self.offset && file_offset < self.offset + self.size)
            .then(|| self.base_host_virt_addr + (file_offset - self.offset))
    }

    /// File offset of `addr`, if this region holds it.
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        (addr >= self.base_host_virt_addr && addr < self.base_host_virt_addr + self.size)
            .then(|| self.offset + (addr - self.base_host_virt_addr))
    }
}

/// Checks regions received from a VMM against the memory file they are served from.
pub fn check_regions(regions: &[GuestRegionUffdMapping], file_len: u64) -> Result<(), UffdError> {
    if regions.is_empty() {
        return Err(UffdError::BadRegions("no regions".into()));
    }
    for r in regions {
        if r.page_size != PAGE {
            return Err(UffdError::BadRegions(format!(
                "page size {} (only {PAGE}-byte pages are served)",
                r.page_size
            )));
        }
        let aligned = |v: u64| v.is_multiple_of(PAGE);
        if !aligned(r.base_host_virt_addr) || !aligned(r.size) || !aligned(r.offset) {
            return Err(UffdError::BadRegions(format!("{r:?} is not page-aligned")));
        }
        if r.offset
            .checked_add(r.size)
            .is_none_or(|end| end > file_len)
        {
            return Err(UffdError::BadRegions(format!(
                "{r:?} reaches past the end of the {file_len}-byte memory file"
            )));
        }
    }
    Ok(())
}

/// What a handler reports after it installed its prefetch (the snapbpf extension).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandlerAck {
    /// Bytes installed before serving faults.
    pub bytes: u64,
    /// `UFFDIO_COPY` calls (contiguous runs) they took.
    pub ranges: u64,
    /// Time of reading and installing them, ms.
    pub ms: f64,
    /// Set when the handler failed to prefetch; it then refuses the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one handler session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Faults served by reading the memory file.
    pub faults: u64,
    /// File offsets of the pages served, in the order they were faulted (when recording).
    pub log: Vec<u64>,
}

/// Serves missing-page faults of `uffd` from `file` until `stop` becomes readable or hangs
/// up. With `record`, logs the file offset of every page served, in fault order.
pub fn serve(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    file: &File,
    stop: BorrowedFd<'_>,
    record: bool,
) -> Result<ServeStats, UffdError> {
    let mut stats = ServeStats::default();
    let mut page = vec![0u8; PAGE as usize];
    let mut msgs = [UffdMsg::default(); 64];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the call's duration.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(ioctl_err("poll")(err));
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let n = uffd.read_events(&mut msgs)?;
            for msg in &msgs[..n] {
                if msg.event != UFFD_EVENT_PAGEFAULT {
                    continue;
                }
                let addr = msg.arg[1] & !(PAGE - 1);
                let offset = regions
                    .iter()
                    .find_map(|r| r.file_offset(addr))
                    .ok_or(UffdError::Stray(addr))?;
                file.read_exact_at(&mut page, offset)
                    .map_err(|source| UffdError::Source {
                        offset,
                        len: PAGE,
                        source,
                    })?;
                if uffd.copy(addr, &page)? > 0 {
                    stats.faults += 1;
                    if record {
                        stats.log.push(offset);
                    }
                }
            }
            continue;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            // The registered memory is gone (the VM exited).
            return Ok(stats);
        }
        if fds[1].revents != 0 {
            return Ok(stats);
        }
    }
}

/// Installs pages of `data` into guest memory with `UFFDIO_COPY`, one call per run of
/// pages that are contiguous both in `offsets` (file offsets, in `data`'s order) and in
/// `data`. Returns (bytes installed, calls made).
pub fn install(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    offsets: &[u64],
    data: &[u8],
) -> Result<(u64, u64), UffdError> {
    let mut i = 0usize;
    let (mut bytes, mut calls) = (0u64, 0u64);
    while i < offsets.len() {
        let start = offsets[i];
        let region = regions
            .iter()
            .find(|r| r.host_addr(start).is_some())
            .ok_or(UffdError::Stray(start))?;
        let mut j = i + 1;
        while j < offsets.len()
            && offsets[j] == offsets[j - 1] + PAGE
            && region.host_addr(offsets[j]).is_some()
        {
            j += 1;
        }
        let src = data
            .get(i * PAGE as usize..j * PAGE as usize)
            .ok_or_else(|| UffdError::BadRegions("working set shorter than its trace".into()))?;
        let dst = region.host_addr(start).ok_or(UffdError::Stray(start))?;
        bytes += uffd.copy(dst, src)?;
        calls += 1;
        i = j;
    }
    Ok((bytes, calls))
}

/// An eventfd used to stop a handler thread.
#[derive(Debug)]
pub struct StopSignal {
    fd: OwnedFd,
}

impl StopSignal {
    /// A new, unsignalled stop.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes an initial value and flags and returns a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Signals the stop.
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local array to our eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

impl AsFd for StopSignal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

// ---- handshake ----

/// The VMM side of the handshake: connects to the handler at `socket`, sends `regions` and
/// the descriptor, and waits (up to `timeout`) for the handler's [`HandlerAck`]. The returned
/// stream must stay open while the VM runs.
pub fn send_to_handler(
    socket: &Path,
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    timeout: Duration,
) -> Result<(UnixStream, HandlerAck), UffdError> {
    let sock_err = |reason: String| UffdError::Socket {
        path: socket.to_path_buf(),
        reason,
    };
    let stream = UnixStream::connect(socket).map_err(|e| sock_err(format!("connect: {e}")))?;
    let body = serde_json::to_vec(regions).map_err(|e| sock_err(e.to_string()))?;
    send_fd(&stream, &body, uffd.fd.as_raw_fd()).map_err(|e| sock_err(format!("send: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| sock_err(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| sock_err(format!("no acknowledgement from the handler: {e}")))?;
    if line.is_empty() {
        return Err(sock_err(
            "the handler closed the connection without acknowledging".into(),
        ));
    }
    let ack: HandlerAck = serde_json::from_str(line.trim())
        .map_err(|e| sock_err(format!("bad acknowledgement '{}': {e}", line.trim())))?;
    if let Some(e) = &ack.error {
        return Err(sock_err(format!("the handler refused the VM: {e}")));
    }
    Ok((stream, ack))
}

/// The handler side of the handshake: receives the regions and the descriptor.
pub fn receive_from_vmm(
    stream: &UnixStream,
) -> Result<(Uffd, Vec<GuestRegionUffdMapping>), UffdError> {
    let err = |reason: String| UffdError::Socket {
        path: PathBuf::from("<connection>"),
        reason,
    };
    // Zero-length datagrams are legal: retry a few times, as Firecracker's handlers do.
    for _ in 0..5 {
        let (body, fd) = recv_fd(stream).map_err(|e| err(format!("receive: {e}")))?;
        let Some(fd) = fd else {
            if body.is_empty() {
                continue;
            }
            return Err(err("message carries no userfaultfd".into()));
        };
        let regions: Vec<GuestRegionUffdMapping> = serde_json::from_slice(&body)
            .map_err(|e| UffdError::BadRegions(format!("bad JSON: {e}")))?;
        return Ok((Uffd::from_fd(fd), regions));
    }
    Err(err("no message with a userfaultfd".into()))
}

/// Writes the handler's acknowledgement line.
pub fn acknowledge(mut stream: &UnixStream, ack: &HandlerAck) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(ack)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Room for one descriptor's control message (`CMSG_SPACE(sizeof(int))` is 24 on x86-64).
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

fn send_fd(stream: &UnixStream, body: &[u8], fd: i32) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: body.as_ptr() as *mut libc::c_void,
        iov_len: body.len(),
    };
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    // SAFETY: msghdr is plain data; zeroed is a valid value that we fill below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at a control buffer of `space` bytes (≤ 64, aligned), so the
    // first header exists and lies inside it.
    let hdr = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if hdr.is_null() {
        return Err(std::io::Error::other("no room for the control message"));
    }
    // SAFETY: pure computation.
    let cmsg_len = unsafe { libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) } as usize;
    // SAFETY: `hdr` points into `cmsg`, valid and aligned for a cmsghdr (checked above).
    let hdr = unsafe { &mut *hdr };
    hdr.cmsg_level = libc::SOL_SOCKET;
    hdr.cmsg_type = libc::SCM_RIGHTS;
    hdr.cmsg_len = cmsg_len;
    // SAFETY: CMSG_DATA of a header inside our buffer points at its payload, which has room
    // for an int (CMSG_SPACE above).
    let data = unsafe { libc::CMSG_DATA(hdr) };
    // SAFETY: `data` points at 4 writable bytes inside `cmsg`.
    unsafe { std::ptr::write_unaligned(data.cast::<i32>(), fd) };
    // SAFETY: `msg` and everything it points to live across the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != body.len() {
        return Err(std::io::Error::other("short send"));
    }
    Ok(())
}

fn recv_fd(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut body = vec![0u8; 64 << 10];
    let mut iov = libc::iovec {
        iov_base: body.as_mut_ptr().cast(),
        iov_len: body.len(),
    };
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data; zeroed is a valid value that we fill below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len();
    // SAFETY: `msg` points at our buffers, valid for writing for the call's duration.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    body.truncate(n as usize);
    let mut fd = None;
    // SAFETY: the kernel filled `msg_control`; CMSG_FIRSTHDR/NXTHDR walk it within
    // `msg_controllen`.
    let mut hdr = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !hdr.is_null() {
        // SAFETY: `hdr` is a header inside the control buffer (CMSG_* bounds it).
        let h = unsafe { &*hdr };
        let (level, kind, len) = (h.cmsg_level, h.cmsg_type, h.cmsg_len);
        // SAFETY: pure computation.
        let want = unsafe { libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) } as usize;
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS && len >= want {
            // SAFETY: an SCM_RIGHTS message of at least one int carries a descriptor that is
            // now ours.
            let data = unsafe { libc::CMSG_DATA(hdr) };
            // SAFETY: `data` points at the int payload inside the control buffer.
            let raw = unsafe { std::ptr::read_unaligned(data.cast::<i32>()) };
            // SAFETY: the kernel installed `raw` in our table for us to own.
            fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        // SAFETY: walks to the next header within the buffer, or null.
        hdr = unsafe { libc::CMSG_NXTHDR(&msg, hdr) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("control message truncated"));
    }
    Ok((body, fd))
}

/// Reads the whole of `path` with `O_DIRECT` into a page-aligned buffer: one `read` call for
/// the file (more only if the kernel returns short). Falls back to a buffered read where the
/// filesystem has no direct I/O (tmpfs). Returns the buffer and whether it was direct.
pub fn read_direct(path: &Path) -> std::io::Result<(AlignedBuf, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let (file, direct) = match File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (File::open(path)?, false),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut buf = AlignedBuf::new(len.div_ceil(PAGE) * PAGE)?;
    let mut done = 0usize;
    let want = len as usize;
    while done < want {
        // O_DIRECT needs block-aligned lengths: ask for the rounded-up rest.
        let rest = &mut buf.as_mut_slice()[done..];
        // SAFETY: reads into our own buffer slice of `rest.len()` bytes.
        let n = unsafe { libc::read(file.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        done += n as usize;
    }
    buf.len = want;
    Ok((buf, direct))
}

/// A page-aligned anonymous buffer (for `O_DIRECT`).
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(cap: u64) -> std::io::Result<Self> {
        let cap = cap.max(PAGE) as usize;
        // SAFETY: a new private anonymous mapping aliasing nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, cap, len: cap })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `cap` bytes mapped and owned by `self`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// The bytes read.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= cap` bytes mapped and owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
    }
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake carries the region list and a working descriptor; bad regions are
    /// refused.
    #[test]
    fn handshake_passes_regions_and_descriptor() {
        let (vmm, handler) = UnixStream::pair().expect("socketpair");
        let stop = StopSignal::new().expect("eventfd");
        let regions = vec![GuestRegionUffdMapping {
            base_host_virt_addr: 0x7f00_0000_0000,
            size: 1 << 20,
            offset: 0,
            page_size: PAGE,
        }];
        let body = serde_json::to_vec(&regions).expect("json");
        send_fd(&vmm, &body, stop.as_fd().as_raw_fd()).expect("send");
        let (fd, got) = receive_from_vmm(&handler).expect("receive");
        assert_eq!(got, regions);
        // The received descriptor is the same eventfd: signalling through it is seen here.
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local array to the received eventfd.
        let wrote = unsafe { libc::write(fd.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        assert_eq!(wrote, 8);
        let mut pfd = libc::pollfd {
            fd: stop.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 1000) }, 1);
        check_regions(&regions, 1 << 20).expect("fits");
        assert!(check_regions(&regions, 4096).is_err(), "past the end");
        let mut huge = regions.clone();
        huge[0].page_size = 2 << 20;
        assert!(check_regions(&huge, 1 << 20).is_err(), "huge pages");
        assert!(check_regions(&[], 1 << 20).is_err(), "empty");
        acknowledge(&handler, &HandlerAck::default()).expect("ack");
    }

    /// Faults in an anonymous mapping are served from a file, logged in order, and a
    /// prefetched run is installed in one call.
    #[test]
    fn serve_and_install_from_a_file() {
        let Ok(uffd) = Uffd::new() else {
            eprintln!("SKIPPED: no userfaultfd here");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mem");
        let pages = 16u64;
        let data: Vec<u8> = (0..pages * PAGE).map(|i| (i / PAGE) as u8 + 1).collect();
        std::fs::write(&path, &data).expect("write");
        let file = File::open(&path).expect("open");
        let len = pages * PAGE;
        // Page-aligned anonymous memory, unmapped when it drops.
        let mem = AlignedBuf::new(len).expect("mmap");
        let base = mem.ptr.as_ptr() as u64;
        uffd.register_missing(base, len).expect("register");
        let regions = [GuestRegionUffdMapping {
            base_host_virt_addr: base,
            size: len,
            offset: 0,
            page_size: PAGE,
        }];
        // Prefetch pages 2 and 3 in one call.
        let (bytes, calls) = install(
            &uffd,
            &regions,
            &[2 * PAGE, 3 * PAGE],
            &data[2 * PAGE as usize..4 * PAGE as usize],
        )
        .expect("install");
        assert_eq!((bytes, calls), (2 * PAGE, 1));
        let stop = StopSignal::new().expect("eventfd");
        std::thread::scope(|s| {
            let server = s.spawn(|| serve(&uffd, &regions, &file, stop.as_fd(), true));
            for p in [5u64, 2, 9, 3, 0] {
                // SAFETY: reading inside our mapping; the fault is served by the thread.
                let v = unsafe { std::ptr::read_volatile((base + p * PAGE + 7) as *const u8) };
                assert_eq!(v, p as u8 + 1);
            }
            stop.signal();
            let stats = server.join().expect("join").expect("serve");
            assert_eq!(stats.log, vec![5 * PAGE, 9 * PAGE, 0]);
        });
    }
}
