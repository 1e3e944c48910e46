//! Firecracker's handshake: how a VMM hands its userfaultfd and its guest memory regions to
//! a page-fault handler process.
//!
//! The handler listens on a Unix stream socket. The VMM creates the userfaultfd,
//! registers guest memory for missing-page faults, connects, and sends one message whose
//! payload is a JSON array of [`GuestRegionUffdMapping`] and whose ancillary data carries
//! the descriptor (`SCM_RIGHTS`); see Firecracker's
//! `docs/snapshotting/handling-page-faults-on-snapshot-resume.md`.
//!
//! snapbpf's extension, optional on both sides: our handler writes a [`HandlerHello`] line
//! as soon as it accepts (naming the memory file it serves, by size and SHA-256, so the VMM
//! can refuse a handler started for another snapshot), and after installing anything it
//! prefetches, a [`HandlerAck`] line, which our VMM waits for so the prefetch report is
//! known before the vCPU runs. A handler that writes nothing (Firecracker's) is detected by
//! the hello's absence within [`HELLO_WINDOW`] and delays nothing more. The VMM keeps the
//! socket open for the VM's life, so the handler ends the session when it closes.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Uffd, UffdError, HUGETLB_PAGE, PAGE};

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
    /// (The peer chose every field: no sum may overflow.)
    pub fn host_addr(&self, file_offset: u64) -> Option<u64> {
        let within = file_offset.checked_sub(self.offset)?;
        (within < self.size)
            .then(|| self.base_host_virt_addr.checked_add(within))
            .flatten()
    }

    /// File offset of `addr`, if this region holds it.
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        let within = addr.checked_sub(self.base_host_virt_addr)?;
        (within < self.size)
            .then(|| self.offset.checked_add(within))
            .flatten()
    }
}

/// Parses the region list of a VMM's handshake message (at most [`MAX_REGIONS`]).
pub fn parse_regions(body: &[u8]) -> Result<Vec<GuestRegionUffdMapping>, UffdError> {
    let regions: Vec<GuestRegionUffdMapping> =
        serde_json::from_slice(body).map_err(|e| UffdError::BadRegions(BadRegions::Json(e)))?;
    if regions.len() > MAX_REGIONS {
        return Err(UffdError::BadRegions(BadRegions::TooMany(regions.len())));
    }
    Ok(regions)
}

/// Most regions one VM may hand over (Firecracker sends one per memory slot: a handful).
pub const MAX_REGIONS: usize = 4096;

/// Parses a handler's acknowledgement line.
pub fn parse_ack(line: &str) -> Result<HandlerAck, serde_json::Error> {
    serde_json::from_str(line.trim())
}

/// Checks regions received from a VMM against the memory file they are served from.
pub fn check_regions(regions: &[GuestRegionUffdMapping], file_len: u64) -> Result<(), UffdError> {
    let bad = |e| Err(UffdError::BadRegions(e));
    if regions.is_empty() {
        return bad(BadRegions::Empty);
    }
    for r in regions {
        if r.page_size != PAGE && r.page_size != HUGETLB_PAGE {
            return bad(BadRegions::PageSize(r.page_size));
        }
        let aligned = |v: u64| v.is_multiple_of(r.page_size);
        if !aligned(r.base_host_virt_addr) || !aligned(r.size) || !aligned(r.offset) {
            return bad(BadRegions::Unaligned(*r));
        }
        if r.base_host_virt_addr.checked_add(r.size).is_none() {
            return bad(BadRegions::Wraps(*r));
        }
        if r.offset
            .checked_add(r.size)
            .is_none_or(|end| end > file_len)
        {
            return bad(BadRegions::PastEnd {
                region: *r,
                file_len,
            });
        }
    }
    Ok(())
}

/// Why a VMM's region list is refused.
#[derive(Debug, thiserror::Error)]
pub enum BadRegions {
    /// The message is not a JSON array of regions.
    #[error("not a JSON array of GuestRegionUffdMapping")]
    Json(#[source] serde_json::Error),
    /// More regions than any VM has.
    #[error("{0} regions, at most {MAX_REGIONS} are served")]
    TooMany(usize),
    /// An empty list.
    #[error("no regions")]
    Empty,
    /// A page size the handler cannot fill.
    #[error("page size {0} (served: {PAGE}-byte pages and {HUGETLB_PAGE}-byte hugetlbfs pages)")]
    PageSize(u64),
    /// A region not aligned to its own page size.
    #[error("{0:?} is not aligned to its page size")]
    Unaligned(GuestRegionUffdMapping),
    /// A region whose end overflows.
    #[error("{0:?} wraps around the address space")]
    Wraps(GuestRegionUffdMapping),
    /// A region mapping bytes the memory file does not have.
    #[error("{region:?} reaches past the end of the {file_len}-byte memory file")]
    PastEnd {
        /// The region.
        region: GuestRegionUffdMapping,
        /// The memory file's size.
        file_len: u64,
    },
}

/// What went wrong on a handshake socket, either side.
#[derive(Debug, thiserror::Error)]
pub enum SocketFailure {
    /// Connecting failed (or took longer than [`CONNECT_TIMEOUT`]).
    #[error("connect")]
    Connect(#[source] std::io::Error),
    /// The region list could not be encoded.
    #[error("cannot encode the regions")]
    Encode(#[source] serde_json::Error),
    /// Sending the message failed.
    #[error("send")]
    Send(#[source] std::io::Error),
    /// Waiting for the handler's first line failed.
    #[error("poll")]
    Poll(#[source] std::io::Error),
    /// A line of the extension did not arrive.
    #[error("no {what} from the handler")]
    NoLine {
        /// The hello or the acknowledgement.
        what: &'static str,
        /// Why (a timeout, an oversized line, an I/O error).
        #[source]
        source: std::io::Error,
    },
    /// The handler hung up before a line of the extension.
    #[error("the handler closed the connection before its {0}")]
    Closed(&'static str),
    /// The handler's first line is not a [`HandlerHello`].
    #[error("bad hello '{line}'")]
    BadHello {
        /// The line, trimmed.
        line: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The handler's second line is not a [`HandlerAck`].
    #[error("bad acknowledgement '{line}'")]
    BadAck {
        /// The line, trimmed.
        line: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The handler refused the VM, and said why.
    #[error("the handler refused the VM: {0}")]
    Refused(String),
    /// The socket's receive timeout could not be set.
    #[error("cannot set a receive timeout")]
    SetTimeout(#[source] std::io::Error),
    /// The VMM sent nothing in time.
    #[error("the VMM sent no regions within {} s", RECEIVE_TIMEOUT.as_secs())]
    NoRegions,
    /// Receiving the VMM's message failed.
    #[error("receive")]
    Receive(#[source] std::io::Error),
    /// The VMM's message came without a descriptor.
    #[error("the message carries no userfaultfd")]
    NoDescriptor,
    /// Only empty datagrams arrived.
    #[error("no message with a userfaultfd")]
    OnlyEmpty,
}

/// The first line our handler writes, as soon as it accepts a VMM (before the VMM's
/// message, so it is waiting when the VMM looks): it speaks snapbpf's extension, and serves
/// this memory file. A Firecracker handler writes nothing, ever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerHello {
    /// Version of snapbpf's extension the handler speaks.
    pub snapbpf_handler: u32,
    /// Identity (size, SHA-256) of the memory file it serves.
    pub memory: snapbpf_store::FileIdentity,
}

/// Version of snapbpf's extension of the handshake.
pub const EXTENSION_VERSION: u32 = 1;

/// How long the VMM looks for a [`HandlerHello`] after sending its message. A handler that
/// says nothing within it is taken for a Firecracker one: the vCPU runs at once, its faults
/// wait on the handler, as in Firecracker.
pub const HELLO_WINDOW: Duration = Duration::from_millis(250);

/// What the handler at the other end of a handshake said.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerReply {
    /// Nothing: a handler that speaks only Firecracker's handshake.
    Silent,
    /// snapbpf's extension: who it is, then what it installed before serving.
    Extended {
        /// Its hello.
        hello: HandlerHello,
        /// Its acknowledgement.
        ack: HandlerAck,
    },
}

/// Writes our handler's hello line.
pub fn say_hello(mut stream: &UnixStream, hello: &HandlerHello) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(hello)?;
    line.push(b'\n');
    stream.write_all(&line)
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

/// Longest the VMM waits to connect to a handler (its listen backlog may be full).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest acknowledgement line accepted (a real one is ~200 bytes).
pub const MAX_ACK_BYTES: usize = 64 << 10;
/// Longest a handler waits for the VMM's message once it has connected.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The VMM side of the handshake, exactly Firecracker's: connects to the handler at
/// `socket` (within [`CONNECT_TIMEOUT`]) and sends one message, the `regions` as JSON with
/// the descriptor. Then, for snapbpf's extension only: if a [`HandlerHello`] arrives within
/// [`HELLO_WINDOW`], it waits, `timeout` in all, for the handler's [`HandlerAck`] line (at
/// most [`MAX_ACK_BYTES`]); a handler that says nothing is [`HandlerReply::Silent`] and
/// delays nothing. The returned stream must stay open while the VM runs.
pub fn send_to_handler(
    socket: &Path,
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    timeout: Duration,
) -> Result<(UnixStream, HandlerReply), UffdError> {
    let sock_err = |failure: SocketFailure| UffdError::Handler {
        path: socket.to_path_buf(),
        failure,
    };
    let stream = connect_within(socket, Instant::now() + CONNECT_TIMEOUT)
        .map_err(|e| sock_err(SocketFailure::Connect(e)))?;
    let body = serde_json::to_vec(regions).map_err(|e| sock_err(SocketFailure::Encode(e)))?;
    send_fd(&stream, &body, uffd.as_fd().as_raw_fd())
        .map_err(|e| sock_err(SocketFailure::Send(e)))?;
    if !readable_within(&stream, HELLO_WINDOW).map_err(|e| sock_err(SocketFailure::Poll(e)))? {
        return Ok((stream, HandlerReply::Silent));
    }
    let deadline = Instant::now() + timeout;
    let read = |what: &'static str| {
        let line = read_line_within(&stream, deadline, MAX_ACK_BYTES)
            .map_err(|source| sock_err(SocketFailure::NoLine { what, source }))?;
        if line.is_empty() {
            return Err(sock_err(SocketFailure::Closed(what)));
        }
        Ok(line)
    };
    let line = read("hello")?;
    let hello: HandlerHello = serde_json::from_str(line.trim()).map_err(|source| {
        sock_err(SocketFailure::BadHello {
            line: line.trim().to_string(),
            source,
        })
    })?;
    let line = read("acknowledgement")?;
    let ack: HandlerAck = parse_ack(&line).map_err(|source| {
        sock_err(SocketFailure::BadAck {
            line: line.trim().to_string(),
            source,
        })
    })?;
    if let Some(e) = ack.error {
        return Err(sock_err(SocketFailure::Refused(e)));
    }
    Ok((stream, HandlerReply::Extended { hello, ack }))
}

/// Whether `stream` has data (or end of file) to read within `window`.
fn readable_within(stream: &UnixStream, window: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + window;
    loop {
        let mut fds = [libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of one pollfd for the call's duration.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Connects to the Unix socket `path`, retrying while its listen backlog is full, until
/// `deadline`.
fn connect_within(path: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value that we fill below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a socket path must be under {} bytes without NUL",
                addr.sun_path.len()
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    loop {
        // SAFETY: socket() takes integer arguments and returns a new descriptor.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `addr` is a filled sockaddr_un of at least `len` bytes, alive across
        // the call.
        let rc = unsafe {
            libc::connect(
                owned.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if rc == 0 {
            let stream = UnixStream::from(owned);
            stream.set_nonblocking(false)?;
            return Ok(stream);
        }
        let err = std::io::Error::last_os_error();
        // A full backlog: the handler is busy accepting others; try again shortly.
        if err.raw_os_error() == Some(libc::EAGAIN) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if err.raw_os_error() == Some(libc::EAGAIN) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the handler did not accept the connection in time (its backlog is full)",
            ));
        }
        return Err(err);
    }
}

/// Reads one line from `stream`, at most `max` bytes, before `deadline` in all (a peer
/// that trickles bytes cannot stretch it). Returns "" if the peer closes first.
fn read_line_within(
    mut stream: &UnixStream,
    deadline: Instant,
    max: usize,
) -> std::io::Result<String> {
    use std::io::Read;
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        // Peek first, then consume up to the newline only: the next line (the
        // acknowledgement after the hello) may already be in the socket buffer.
        // SAFETY: recv writes at most `chunk.len()` bytes into our buffer.
        let peeked = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                libc::MSG_PEEK,
            )
        };
        if peeked < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out",
                    ))
                }
                _ => return Err(e),
            }
        }
        let peeked = peeked as usize;
        if peeked == 0 {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        let take = chunk[..peeked]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(peeked, |end| end + 1);
        let n = match stream.read(&mut chunk[..take]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        line.extend_from_slice(&chunk[..n]);
        if line.last() == Some(&b'\n') {
            stream.set_read_timeout(None)?;
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {max} bytes without a newline"),
            ));
        }
    }
}

/// The handler side of the handshake: receives the regions and the descriptor, waiting
/// at most [`RECEIVE_TIMEOUT`] for them.
pub fn receive_from_vmm(
    stream: &UnixStream,
) -> Result<(Uffd, Vec<GuestRegionUffdMapping>), UffdError> {
    stream
        .set_read_timeout(Some(RECEIVE_TIMEOUT))
        .map_err(|e| UffdError::Vmm(SocketFailure::SetTimeout(e)))?;
    // Zero-length datagrams are legal: retry a few times, as Firecracker's handlers do.
    for _ in 0..5 {
        let (body, fd) = recv_fd(stream).map_err(|e| {
            UffdError::Vmm(match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    SocketFailure::NoRegions
                }
                _ => SocketFailure::Receive(e),
            })
        })?;
        let Some(fd) = fd else {
            if body.is_empty() {
                continue;
            }
            return Err(UffdError::Vmm(SocketFailure::NoDescriptor));
        };
        let regions = parse_regions(&body)?;
        check_is_userfaultfd(&fd)?;
        let _ = stream.set_read_timeout(None);
        return Ok((Uffd::from_fd(fd), regions));
    }
    Err(UffdError::Vmm(SocketFailure::OnlyEmpty))
}

/// Refuses a passed descriptor that is not a userfaultfd: serving "faults" read from
/// anything else would fail in confusing ways, or block forever.
fn check_is_userfaultfd(fd: &OwnedFd) -> Result<(), UffdError> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    if link == "anon_inode:[userfaultfd]" {
        Ok(())
    } else {
        Err(UffdError::NotUserfaultfd(link))
    }
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
            // SAFETY: pure computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (len - header) / std::mem::size_of::<i32>();
            // SAFETY: an SCM_RIGHTS message carries `count` descriptors that are now ours.
            let data = unsafe { libc::CMSG_DATA(hdr) };
            for i in 0..count {
                // SAFETY: descriptor `i` is an int inside this message's payload, which
                // lies inside the control buffer (`len` bounds it).
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<i32>().wrapping_add(i)) };
                // SAFETY: the kernel installed `raw` in our table for us to own.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                // The first descriptor is the userfaultfd; any other is closed here (as
                // `owned` drops) instead of leaking.
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
        // SAFETY: walks to the next header within the buffer, or null.
        hdr = unsafe { libc::CMSG_NXTHDR(&msg, hdr) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("control message truncated"));
    }
    Ok((body, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StopSignal;

    /// A peer that trickles bytes without a newline, floods them, or sends nothing cannot
    /// hold either side past its deadline.
    #[test]
    fn reads_are_bounded_in_time_and_size() {
        use std::io::Write as _;
        let (reader, mut writer) = UnixStream::pair().expect("socketpair");
        let trickle = std::thread::spawn(move || {
            for _ in 0..40 {
                if writer.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        let started = Instant::now();
        let e = read_line_within(&reader, Instant::now() + Duration::from_millis(300), 1024)
            .expect_err("no newline within the deadline");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "a total deadline"
        );
        drop(reader);
        trickle.join().expect("trickle");

        let (reader, mut writer) = UnixStream::pair().expect("socketpair");
        writer.write_all(&vec![b'y'; 4096]).expect("flood");
        let e = read_line_within(&reader, Instant::now() + Duration::from_secs(5), 1024)
            .expect_err("too long");
        assert!(e.to_string().contains("without a newline"), "{e}");

        let (vmm, handler) = UnixStream::pair().expect("socketpair");
        let started = Instant::now();
        let e = receive_from_vmm(&handler).expect_err("nothing sent");
        assert!(
            matches!(e, UffdError::Vmm(SocketFailure::NoRegions)),
            "{e:?}"
        );
        assert!(started.elapsed() < RECEIVE_TIMEOUT + Duration::from_secs(2));
        drop(vmm);
    }

    /// Connecting to a handler whose backlog is full gives up at the deadline.
    #[test]
    fn connect_gives_up_on_a_full_backlog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("busy.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // SAFETY: listen() on our own socket, backlog 0 (one pending connection).
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut held = Vec::new();
        let started = Instant::now();
        let outcome = loop {
            match connect_within(&path, Instant::now() + Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 64, "the backlog never filled");
        };
        assert_eq!(outcome.kind(), std::io::ErrorKind::TimedOut, "{outcome}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let e = connect_within(&dir.path().join("absent.sock"), Instant::now())
            .expect_err("nothing there");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    /// The handshake carries the region list and a working descriptor; bad regions are
    /// refused.
    #[test]
    fn handshake_passes_regions_and_descriptor() {
        let (vmm, handler) = UnixStream::pair().expect("socketpair");
        let regions = vec![GuestRegionUffdMapping {
            base_host_virt_addr: 0x7f00_0000_0000,
            size: 1 << 20,
            offset: 0,
            page_size: PAGE,
        }];
        let body = serde_json::to_vec(&regions).expect("json");
        // Another kind of descriptor is refused.
        let stop = StopSignal::new().expect("eventfd");
        send_fd(&vmm, &body, stop.as_fd().as_raw_fd()).expect("send");
        let e = receive_from_vmm(&handler).expect_err("an eventfd");
        assert!(
            e.to_string()
                .contains("not a userfaultfd (anon_inode:[eventfd])"),
            "{e}"
        );
        match Uffd::new() {
            Ok(uffd) => {
                send_fd(&vmm, &body, uffd.as_fd().as_raw_fd()).expect("send");
                let (_, got) = receive_from_vmm(&handler).expect("receive");
                assert_eq!(got, regions);
            }
            Err(e) => eprintln!("SKIPPED the userfaultfd half: {e}"),
        }
        check_regions(&regions, 1 << 20).expect("fits");
        assert!(check_regions(&regions, 4096).is_err(), "past the end");
        let mut huge = regions.clone();
        huge[0].page_size = 2 << 20;
        assert!(check_regions(&huge, 1 << 20).is_err(), "huge pages");
        assert!(check_regions(&[], 1 << 20).is_err(), "empty");
        let mut wrapping = regions.clone();
        wrapping[0].base_host_virt_addr = !(PAGE - 1);
        assert!(check_regions(&wrapping, 1 << 20).is_err(), "wraps");
        // Lookups never overflow, whatever the peer sent.
        let high_base = GuestRegionUffdMapping {
            base_host_virt_addr: u64::MAX - PAGE + 1,
            size: u64::MAX,
            offset: 0,
            page_size: PAGE,
        };
        assert_eq!(high_base.host_addr(2 * PAGE), None);
        let high_offset = GuestRegionUffdMapping {
            base_host_virt_addr: 0,
            size: u64::MAX,
            offset: u64::MAX - 10,
            page_size: PAGE,
        };
        assert_eq!(high_offset.file_offset(PAGE), None);
        assert_eq!(regions[0].host_addr(4096), Some(0x7f00_0000_1000));
        assert_eq!(regions[0].file_offset(0x7f00_0000_1000), Some(4096));
        acknowledge(&handler, &HandlerAck::default()).expect("ack");
    }
}
