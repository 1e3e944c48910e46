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
//! as soon as it accepts (naming the memory file it serves, by size and tree digest, so the VMM
//! can refuse a handler started for another snapshot), and after installing anything it
//! prefetches, a [`HandlerAck`] line, which our VMM waits for so the prefetch report is
//! known before the vCPU runs. A handler that writes nothing (Firecracker's) is detected by
//! the hello's absence within [`HELLO_WINDOW`] and delays nothing more. The VMM keeps the
//! socket open for the VM's life, so the handler ends the session when it closes.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Uffd, UffdError, HUGETLB_PAGE, PAGE};
use snapbpf_os::unix::{connect_within, read_line_within, readable_within, recv_fd, send_fd};

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
    /// The server is one not to trust.
    #[error(transparent)]
    Untrusted(snapbpf_os::access::ServerCheckError),
    /// A snapbpf handler said nothing.
    #[error("no hello within {} s: a snapbpf handler says one at once (for a handler that speaks only Firecracker's handshake, pass it as `firecracker-handler`)", .0.as_secs())]
    NoHello(Duration),
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
    /// Identity (size, tree digest) of the memory file it serves.
    pub memory: snapbpf_store::FileIdentity,
}

/// Version of snapbpf's extension of the handshake.
pub const EXTENSION_VERSION: u32 = 1;

/// How long the VMM looks for a [`HandlerHello`] after sending its message. A handler that
/// says nothing within it is taken for a Firecracker one: the vCPU runs at once, its faults
/// wait on the handler, as in Firecracker.
pub const HELLO_WINDOW: Duration = Duration::from_millis(250);

/// Longest the VMM waits for the hello of a [`HandlerKind::Snapbpf`] handler, which writes
/// it as soon as it accepts (or its refusal, when busy).
pub const SNAPBPF_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the VMM knows of the handler it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    /// snapbpf's (`snapbpf uffd-handler`): it must say its hello, naming the memory file,
    /// within the acknowledgement timeout, or the VM is refused.
    Snapbpf,
    /// One that speaks only Firecracker's handshake (Firecracker's example handlers): a
    /// hello is read if one comes within [`HELLO_WINDOW`], else which memory file it
    /// serves stays unchecked.
    FirecrackerOnly,
}

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
    handler: HandlerKind,
) -> Result<(UnixStream, HandlerReply), UffdError> {
    let sock_err = |failure: SocketFailure| UffdError::Handler {
        path: socket.to_path_buf(),
        failure,
    };
    let stream = connect_within(socket, Instant::now() + CONNECT_TIMEOUT)
        .map_err(|e| sock_err(SocketFailure::Connect(e)))?;
    // The userfaultfd gives whoever holds it the guest's memory: only to root or us.
    snapbpf_os::access::check_server(&stream, socket)
        .map_err(|e| sock_err(SocketFailure::Untrusted(e)))?;
    let body = serde_json::to_vec(regions).map_err(|e| sock_err(SocketFailure::Encode(e)))?;
    if let Err(e) = send_fd(&stream, &body, uffd.as_fd().as_raw_fd()) {
        // A handler that refused at once (busy, or not for us) wrote why and closed
        // before our message: say its reason, not the broken pipe.
        let why = read_line_within(&stream, Instant::now() + HELLO_WINDOW, MAX_ACK_BYTES)
            .ok()
            .and_then(|line| parse_ack(&line).ok())
            .and_then(|ack| ack.error);
        return Err(sock_err(match why {
            Some(why) => SocketFailure::Refused(why),
            None => SocketFailure::Send(e),
        }));
    }
    let deadline = Instant::now() + timeout;
    // Only a handler known to speak Firecracker's handshake alone may stay silent: for
    // ours, silence is a failure, never "unchecked".
    let window = match handler {
        HandlerKind::Snapbpf => timeout.min(SNAPBPF_HELLO_TIMEOUT),
        HandlerKind::FirecrackerOnly => HELLO_WINDOW,
    };
    if !readable_within(&stream, window).map_err(|e| sock_err(SocketFailure::Poll(e)))? {
        return match handler {
            HandlerKind::FirecrackerOnly => Ok((stream, HandlerReply::Silent)),
            HandlerKind::Snapbpf => Err(sock_err(SocketFailure::NoHello(window))),
        };
    }
    let read = |what: &'static str| {
        let line = read_line_within(&stream, deadline, MAX_ACK_BYTES)
            .map_err(|source| sock_err(SocketFailure::NoLine { what, source }))?;
        if line.is_empty() {
            return Err(sock_err(SocketFailure::Closed(what)));
        }
        Ok(line)
    };
    let line = read("hello")?;
    // A handler that refuses at once (busy, or not for us) says why in place of a hello.
    if let Ok(HandlerAck {
        error: Some(why), ..
    }) = parse_ack(&line)
    {
        return Err(sock_err(SocketFailure::Refused(why)));
    }
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
        if let Some(uffd) = crate::uffd_or_skip(0) {
            send_fd(&vmm, &body, uffd.as_fd().as_raw_fd()).expect("send");
            let (_, got) = receive_from_vmm(&handler).expect("receive");
            assert_eq!(got, regions);
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
