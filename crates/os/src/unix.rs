//! Unix-socket plumbing shared by the page-fault handler handshake and the memory store:
//! bounded connects and line reads (a hostile or stuck peer cannot hold a caller past its
//! deadline), and passing one descriptor with a message (`SCM_RIGHTS`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether `stream` has data (or end of file) to read within `window`.
pub fn readable_within(stream: &UnixStream, window: Duration) -> std::io::Result<bool> {
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
pub fn connect_within(path: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
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
        // A full backlog: the peer is busy accepting others; try again shortly.
        if err.raw_os_error() == Some(libc::EAGAIN) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if err.raw_os_error() == Some(libc::EAGAIN) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer did not accept the connection in time (its backlog is full)",
            ));
        }
        return Err(err);
    }
}

/// Reads one line from `stream`, at most `max` bytes, before `deadline` in all (a peer
/// that trickles bytes cannot stretch it). Returns "" if the peer closes first.
pub fn read_line_within(
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

/// Room for one descriptor's control message (`CMSG_SPACE(sizeof(int))` is 24 on x86-64).
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends `body` with the descriptor `fd` attached, in one message.
pub fn send_fd(stream: &UnixStream, body: &[u8], fd: i32) -> std::io::Result<()> {
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
    // A long body may go out in pieces: the descriptor went with the first.
    std::io::Write::write_all(&mut &*stream, &body[n as usize..])
}

/// Receives one message (at most 64 KiB) and the first descriptor attached to it, if any.
pub fn recv_fd(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
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
                // The first descriptor is the one expected; any other is closed here
                // (as `owned` drops) instead of leaking.
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
