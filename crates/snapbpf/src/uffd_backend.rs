//! Guest memory served through userfaultfd: the memory backend of REAP (and of any
//! strategy that installs pages itself rather than mapping the snapshot).
//!
//! [`UffdMemory`] is anonymous guest memory registered with a userfaultfd for
//! missing-page faults. Who fills it is the strategy's choice:
//! - **In process** ([`UffdMemory::serve_in_process`]): a handler thread first runs the
//!   strategy's policy (`prefetch`: what to install before the vCPU runs), reports it, and
//!   then serves every other fault from the snapshot's memory file until the vCPU stops.
//!   The restore waits for the prefetch, so it is complete before the vCPU runs.
//! - **Recording** ([`UffdMemory::record`]): every fault is served on demand and its file
//!   offset logged, in fault order.
//! - **An external handler** ([`UffdMemory::serve_externally`]): the descriptor and the
//!   region list go to a handler process over Firecracker's handshake
//!   ([`snapbpf_uffd::send_to_handler`]). Two threads guard the VM against that handler:
//!   a probe faults in the guest's mailbox page and fails the restore if it is not served
//!   within [`HANDLER_SERVE_TIMEOUT`]; a watch notices the handler's connection closing and
//!   then serves the VM's remaining faults itself from the snapshot's memory file (waking
//!   any fault the handler had taken and not served), so the vCPU never waits forever, and
//!   the run fails once the vCPU stops: its pages no longer came from the handler it was
//!   given.
//!
//! **Fail closed.** A handler thread here that cannot serve a fault (the source cannot be
//! read, `UFFDIO_COPY` fails) keeps the userfaultfd open, since closing it would let every
//! page not served yet read as zeros, and raises the run's abort signal: the vCPU is
//! kicked out of `KVM_RUN` within milliseconds and the run fails with the handler's error
//! (see [`FAIL_CLOSED_GRACE`]). The guest never runs on a page it was not given.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use snapbpf_store::FileIdentity;
use snapbpf_vmm::{GuestMemory, MemoryError};

use crate::run::{HelperError, Helpers, PrefetchReport, Restored};
use crate::snapshot::Snapshot;
use crate::strategy::StrategyError;
use snapbpf_uffd::{
    self as uffd, GuestRegionUffdMapping, HandlerAck, StopSignal, Uffd, UffdError, PAGE,
};

/// How long the VMM waits for an external handler to install its prefetch.
pub const HANDLER_ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest an external handler that has taken the memory may take to serve the first guest
/// page. A working handler serves a fault in microseconds once its prefetch is done.
pub const HANDLER_SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the userfaultfd memory backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A userfaultfd operation or the handshake failed.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// The thread.
        name: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The in-process handler ended before it reported its prefetch.
    #[error("the page-fault handler thread ended before installing the working set")]
    HandlerEnded,
    /// The strategy's prefetch failed; nothing was served.
    #[error("prefetch before the vCPU runs failed")]
    Prefetch(#[source] HelperError),
    /// Something other than this user's (or root's) VMM connected to a private handler
    /// socket.
    #[error("the page-fault handler's socket was connected by {0}, not by a VMM of this user or root: refused")]
    ForeignPeer(String),
    /// The external handler took the memory but never served the first page.
    #[error("page-fault handler at {socket}: it took the guest memory but did not serve its first page within {} s", HANDLER_SERVE_TIMEOUT.as_secs())]
    HandlerSilent {
        /// Its socket.
        socket: PathBuf,
    },
    /// The external handler serves another snapshot's memory.
    #[error("{0}")]
    HandlerServesAnother(Box<ServedElsewhere>),
    /// The external handler went away while the VM ran.
    #[error("the page-fault handler at {socket} disconnected while the VM was running; its remaining pages were served from the snapshot's memory file, so the run is void")]
    HandlerLost {
        /// Its socket.
        socket: PathBuf,
    },
}

/// What an external handler serves, when it is not this snapshot's memory file.
#[derive(Debug, thiserror::Error)]
#[error("the page-fault handler at {socket} serves another memory file (digest {served}) than this snapshot's ({expected}); start it for this snapshot")]
pub struct ServedElsewhere {
    /// Its socket.
    pub socket: PathBuf,
    /// Digest of what it serves.
    pub served: String,
    /// Digest of the snapshot's memory.
    pub expected: String,
}

fn thread_err(name: &'static str) -> impl FnOnce(std::io::Error) -> BackendError {
    move |source| BackendError::Thread { name, source }
}

/// Anonymous guest memory registered for missing-page faults, and its one region
/// (file offset 0 at GPA 0, as the snapshot's memory file lays guest memory out).
#[derive(Debug)]
pub struct UffdMemory {
    memory: GuestMemory,
    uffd: Uffd,
    regions: Vec<GuestRegionUffdMapping>,
}

/// A handler thread's stop signal and join handle.
#[derive(Debug)]
pub struct Recorder {
    stop: Arc<StopSignal>,
    join: Option<std::thread::JoinHandle<Result<uffd::ServeStats, UffdError>>>,
}

impl Recorder {
    /// Stops the handler and returns the file offsets it served, in fault order.
    pub fn finish(mut self) -> Result<Vec<u64>, BackendError> {
        self.stop.signal();
        match self.join.take().map(|j| j.join()) {
            Some(Ok(stats)) => Ok(stats?.log),
            _ => Err(BackendError::HandlerEnded),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.signal();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl UffdMemory {
    /// `len` bytes of anonymous guest memory registered with a new userfaultfd.
    pub fn new(len: u64) -> Result<Self, BackendError> {
        let memory = GuestMemory::anonymous(len)?;
        let uffd = Uffd::new()?;
        let base = memory.host_base() as u64;
        uffd.register_missing(base, memory.len())?;
        let regions = vec![GuestRegionUffdMapping {
            base_host_virt_addr: base,
            size: memory.len(),
            offset: 0,
            page_size: PAGE,
        }];
        Ok(Self {
            memory,
            uffd,
            regions,
        })
    }

    /// Serves the memory from a handler thread in this process: `prefetch` installs what
    /// the strategy wants before the vCPU runs (this waits for it), then every other
    /// fault is served from `source` (the snapshot's memory file) until the vCPU stops.
    pub fn serve_in_process(
        self,
        source: File,
        prefetch: impl FnOnce(&Uffd, &[GuestRegionUffdMapping]) -> Result<PrefetchReport, HelperError>
            + Send
            + 'static,
    ) -> Result<Restored, BackendError> {
        let Self {
            memory,
            uffd,
            regions,
        } = self;
        let stop = Arc::new(StopSignal::new().map_err(thread_err("page-fault handler"))?);
        let (installed_tx, installed) = mpsc::channel();
        let mut helpers = Helpers::none();
        let thread_stop = stop.clone();
        let abort = helpers.abort_signal();
        helpers
            .spawn_stoppable(
                "uffd-handler",
                move || stop.signal(),
                move || {
                    match prefetch(&uffd, &regions) {
                        Ok(report) => {
                            let _ = installed_tx.send(Ok(report));
                        }
                        Err(e) => {
                            let _ = installed_tx.send(Err(e));
                            return Ok(None);
                        }
                    }
                    match uffd::serve(&uffd, &regions, &source, thread_stop.as_fd(), false) {
                        Ok(_) => Ok(None),
                        Err(e) => Err(fail_closed(uffd, &abort, &thread_stop, e)),
                    }
                },
            )
            .map_err(thread_err("page-fault handler"))?;
        let prefetched = match installed.recv() {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return Err(BackendError::Prefetch(e)),
            Err(_) => return Err(BackendError::HandlerEnded),
        };
        Ok(Restored {
            helpers,
            prefetched: Some(prefetched),
            ..Restored::plain(memory)
        })
    }

    /// Serves every fault on demand from `source` and logs its file offset: the memory
    /// and the recorder to finish once the recorded invocation is over.
    pub fn record(self, source: File) -> Result<(GuestMemory, Recorder), BackendError> {
        let Self {
            memory,
            uffd,
            regions,
        } = self;
        let stop = Arc::new(StopSignal::new().map_err(thread_err("page-fault recorder"))?);
        let thread_stop = stop.clone();
        let join = std::thread::Builder::new()
            .name("uffd-recorder".into())
            .spawn(move || uffd::serve(&uffd, &regions, &source, thread_stop.as_fd(), true))
            .map_err(thread_err("page-fault recorder"))?;
        Ok((
            memory,
            Recorder {
                stop,
                join: Some(join),
            },
        ))
    }

    /// Hands the memory to the external handler listening on `socket` (Firecracker's
    /// handshake; with our handler, its hello and acknowledgement too), checks that it
    /// serves, and watches it
    /// while the VM runs; `fallback` (the snapshot's memory file) serves the VM if the
    /// handler goes away.
    pub fn serve_externally(
        self,
        socket: &Path,
        kind: uffd::HandlerKind,
        fallback: File,
        expected: &FileIdentity,
    ) -> Result<Restored, BackendError> {
        let Self {
            memory,
            uffd,
            regions,
        } = self;
        let (stream, reply) =
            uffd::send_to_handler(socket, &uffd, &regions, HANDLER_ACK_TIMEOUT, kind)?;
        let (served, prefetched) = match &reply {
            uffd::HandlerReply::Extended { hello, ack } => (Some(hello.memory), Some(report(ack))),
            uffd::HandlerReply::Silent => (None, None),
        };
        match served {
            Some(served) if served == *expected => {}
            Some(served) => {
                return Err(BackendError::HandlerServesAnother(Box::new(
                    ServedElsewhere {
                        socket: socket.to_path_buf(),
                        served: served.digest_hex(),
                        expected: expected.digest_hex(),
                    },
                )))
            }
            None => tracing::warn!(
                "the page-fault handler at {} speaks only Firecracker's handshake: which memory file it serves is unchecked",
                socket.display()
            ),
        }
        let mut helpers = Helpers::none();
        let stop = Arc::new(StopSignal::new().map_err(thread_err("handler watch"))?);
        let watch_stop = stop.clone();
        let socket_path = socket.to_path_buf();
        let abort = helpers.abort_signal();
        helpers
            .spawn_stoppable(
                "uffd-handler-watch",
                move || stop.signal(),
                move || {
                    watch(
                        &stream,
                        uffd,
                        &regions,
                        &fallback,
                        (&watch_stop, &abort),
                        &socket_path,
                    )
                },
            )
            .map_err(thread_err("handler watch"))?;
        let memory =
            match memory.read_u64_within(snapbpf_vmm::abi::MAILBOX_GPA, HANDLER_SERVE_TIMEOUT) {
                Ok((memory, _)) => memory,
                Err(MemoryError::ReadTimeout { .. }) => {
                    // The probe thread may still wait on the page, inside memory leaked for it;
                    // stopping the watch (as `helpers` drops) touches none of it.
                    return Err(BackendError::HandlerSilent {
                        socket: socket.to_path_buf(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
        Ok(Restored {
            helpers,
            prefetched,
            ..Restored::plain(memory)
        })
    }
}

/// Longest a handler that can no longer serve waits, holding the userfaultfd open, for the
/// vCPU it stopped to leave `KVM_RUN`.
pub const FAIL_CLOSED_GRACE: Duration = Duration::from_secs(10);

/// What a handler does once it cannot serve a fault: the userfaultfd stays open (closing
/// it would let every page not served yet read as zeros), `abort` stops the vCPU, and the
/// descriptor is closed only once the vCPU has stopped (`stop`). Should the vCPU not stop
/// within [`FAIL_CLOSED_GRACE`] (a fault taken outside `KVM_RUN` cannot be interrupted),
/// the process ends ([`snapbpf_os::terminate`]): that is the only step left that hands the
/// guest no wrong page.
fn fail_closed(
    uffd: Uffd,
    abort: &snapbpf_vmm::AbortSignal,
    stop: &StopSignal,
    error: UffdError,
) -> HelperError {
    tracing::debug!("page-fault handler failed, stopping the vCPU: {error}");
    abort.raise();
    if !stop.wait(FAIL_CLOSED_GRACE) {
        let _ = writeln!(
            std::io::stderr(),
            "error: the page-fault handler failed and the vCPU did not stop within {} s; exiting rather than let the guest read pages it was not given: {}",
            FAIL_CLOSED_GRACE.as_secs(),
            crate::error_chain(&error)
        );
        snapbpf_os::terminate::terminate(1);
    }
    drop(uffd);
    Box::new(error)
}

fn report(ack: &HandlerAck) -> PrefetchReport {
    PrefetchReport {
        bytes: ack.bytes,
        ranges: ack.ranges,
        ms: ack.ms,
        ..PrefetchReport::default()
    }
}

/// Waits for `stop` or for the handler's connection to close. If it closes first, serves
/// the VM's faults from `fallback` until `stop` and then fails: the run is void.
fn watch(
    stream: &UnixStream,
    uffd: Uffd,
    regions: &[GuestRegionUffdMapping],
    fallback: &File,
    (stop, abort): (&StopSignal, &snapbpf_vmm::AbortSignal),
    socket: &Path,
) -> Result<Option<PrefetchReport>, HelperError> {
    let mut fds = [
        libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs for the call's duration.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Box::new(UffdError::Ioctl {
                op: "poll",
                source: err,
            }));
        }
        if fds[1].revents != 0 {
            return Ok(None);
        }
        if fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            break;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // A handler may write after the handshake (a late hello, say): only the end
            // of the connection matters here.
            let mut scratch = [0u8; 4096];
            match (&*stream).read(&mut scratch) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
    tracing::error!(
        "the page-fault handler at {} disconnected while the VM was running; serving its pages from the snapshot's memory file",
        socket.display()
    );
    // A fault the handler read but never served has no event left: wake its thread so
    // it faults again and this loop sees it.
    let woken = regions
        .iter()
        .try_for_each(|r| uffd.wake(r.base_host_virt_addr, r.size));
    if let Err(e) =
        woken.and_then(|()| uffd::serve(&uffd, regions, fallback, stop.as_fd(), false).map(|_| ()))
    {
        return Err(fail_closed(uffd, abort, stop, e));
    }
    Err(Box::new(BackendError::HandlerLost {
        socket: socket.to_path_buf(),
    }))
}

/// A record phase over userfaultfd (REAP's, and Sabre's working set): runs one invocation
/// with every fault served on demand from the snapshot's memory file and returns the file
/// offsets of the pages faulted, in fault order.
pub fn record_faults(
    snapshot: &Snapshot,
    input: u32,
    timeout: Duration,
) -> Result<Vec<u64>, StrategyError> {
    let (memory_file, _) = crate::strategy::interface::open_memory(snapshot, None)?;
    let (memory, recorder) = UffdMemory::new(snapshot.meta.mem_bytes)?.record(memory_file)?;
    crate::strategy::interface::run_recorded(snapshot, Restored::plain(memory), input, timeout)?;
    let log = recorder.finish()?;
    if log.is_empty() {
        return Err(StrategyError::io("record")(std::io::Error::other(
            "the recorded invocation faulted no page",
        )));
    }
    Ok(log)
}

/// Errors of the external page-fault handler.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The snapshot is unusable.
    #[error(transparent)]
    Open(#[from] crate::snapshot::OpenError),
    /// The strategy's artifacts exist but are unusable.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// The server failed.
    #[error(transparent)]
    Server(#[from] uffd::server::ServerError),
    /// The memory file to serve cannot be identified.
    #[error(transparent)]
    Identify(#[from] snapbpf_store::verify::VerifyError),
}

/// What the external handler serves.
#[derive(Debug, Clone)]
pub enum HandlerSource {
    /// A snapbpf snapshot directory: its memory file, and the strategy's prefetch where
    /// it recorded one.
    Snapshot(PathBuf),
    /// Any raw guest memory file (e.g. a Firecracker snapshot's), served on demand only.
    MemoryFile(PathBuf),
}

/// The external page-fault handler (`snapbpf uffd-handler`): the userfaultfd handler
/// server ([`uffd::server::listen`]) with `spec`'s policy ([`crate::strategy::Strategy::handler_prefetch`]):
/// every VM it serves first gets what the strategy installs (REAP: the recorded working
/// set), if the snapshot has that recording; everything else is served on demand from the
/// memory file. Returns after `max_sessions` sessions, if given.
pub fn run_handler(
    socket: &Path,
    source: &HandlerSource,
    spec: &crate::strategy::StrategySpec,
    max_sessions: Option<u64>,
    extension: bool,
    access: &snapbpf_os::access::AccessPolicy,
) -> Result<(), HandlerError> {
    let on_demand: Arc<uffd::server::Prefetch> = Arc::new(|_, _, _| Ok(HandlerAck::default()));
    let (prefetch, memory, path, identity) = match source {
        HandlerSource::Snapshot(dir) => {
            let snapshot = crate::snapshot::open(dir)?;
            // The descriptor served is the file whose content the open checked.
            let (memory, _) = crate::strategy::interface::open_memory(&snapshot, None)?;
            let path = snapshot.memory_path();
            let identity = snapshot.meta.memory;
            match spec.build().handler_prefetch(&snapshot) {
                Ok(Some(install)) => (install, memory, path, identity),
                Ok(None) => (on_demand, memory, path, identity),
                Err(StrategyError::MissingArtifact { .. }) => {
                    tracing::warn!(
                        "uffd-handler: no {} recording in {}: serving every fault on demand",
                        spec.name(),
                        dir.display()
                    );
                    (on_demand, memory, path, identity)
                }
                Err(e) => return Err(e.into()),
            }
        }
        HandlerSource::MemoryFile(path) => {
            // Hashed once from one descriptor (direct reads, so the page cache stays
            // cold), so every VM it serves can check what it serves; the descriptor it
            // serves from must be that same file, unchanged.
            let source_err = |source| uffd::server::ServerError::Source {
                path: path.clone(),
                source,
            };
            let (direct, _) = snapbpf_store::fsutil::open_direct(path).map_err(source_err)?;
            let (identity, stamp) = snapbpf_store::verify::identify_open(&direct, path)?;
            let memory = File::open(path).map_err(source_err)?;
            if snapbpf_store::verify::FileStamp::of(&memory).map_err(source_err)? != stamp {
                return Err(uffd::server::ServerError::Source {
                    path: path.clone(),
                    source: std::io::Error::other("it changed while it was being opened"),
                }
                .into());
            }
            (on_demand, memory, path.clone(), identity)
        }
    };
    uffd::server::listen(
        socket,
        uffd::server::ServedMemory {
            file: memory,
            path,
            identity,
        },
        prefetch,
        max_sessions,
        extension,
        access,
    )?;
    Ok(())
}

/// Longest a VMM handed [`OneVmm`]'s socket may take to connect and send its userfaultfd.
pub const ONE_VMM_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A page-fault handler for one VMM in another process (Firecracker's Uffd backend), on
/// a thread of this process: it listens on a socket in a private directory, takes the
/// VMM's userfaultfd and regions (Firecracker's handshake), installs what the strategy
/// asks (`install`) and then serves every other fault from `source` until it is stopped;
/// with `record`, it logs the file offset of every page it serves, in fault order.
#[derive(Debug)]
pub struct OneVmm {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Arc<StopSignal>,
    installed: mpsc::Receiver<PrefetchReport>,
    join: Option<std::thread::JoinHandle<Result<Vec<u64>, BackendError>>>,
}

impl OneVmm {
    /// Starts the handler; [`OneVmm::socket`] is where the VMM connects.
    pub fn start(
        source: File,
        install: Option<Arc<uffd::server::Prefetch>>,
        record: bool,
    ) -> Result<Self, BackendError> {
        let dir = tempfile::Builder::new()
            .prefix("snapbpf-uffd-")
            .tempdir()
            .map_err(thread_err("page-fault handler socket directory"))?;
        let socket = dir.path().join("uffd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .map_err(thread_err("page-fault handler socket"))?;
        let stop = Arc::new(StopSignal::new().map_err(thread_err("page-fault handler"))?);
        let (installed_tx, installed) = mpsc::channel();
        let thread_stop = stop.clone();
        let join = std::thread::Builder::new()
            .name("uffd-one-vmm".into())
            .spawn(move || -> Result<Vec<u64>, BackendError> {
                let Some(stream) = accept_until(&listener, &thread_stop)? else {
                    return Ok(Vec::new());
                };
                // The socket's directory is 0700, and the peer is checked besides: the
                // guest's pages go only to a VMM of this user or root.
                let peer = snapbpf_os::access::peer_credentials(&stream)
                    .map_err(thread_err("page-fault handler peer check"))?;
                if !peer.is_root_or_self() {
                    return Err(BackendError::ForeignPeer(peer.to_string()));
                }
                let vmm = snapbpf_os::terminate::ProcessHandle::open(peer.pid).ok();
                let (uffd, regions) = uffd::receive_from_vmm(&stream)?;
                let served = (|| {
                    let len = source.metadata().map(|m| m.len()).unwrap_or(0);
                    uffd::check_regions(&regions, len)?;
                    if let Some(install) = install {
                        let ack =
                            install(&uffd, &regions, &source).map_err(BackendError::Prefetch)?;
                        let _ = installed_tx.send(report(&ack));
                    }
                    let stats = uffd::serve(&uffd, &regions, &source, thread_stop.as_fd(), record)?;
                    Ok(stats.log)
                })();
                if served.is_err() {
                    // Firecracker resumed the guest already: closing the userfaultfd
                    // would leave its unserved memory to the kernel's zero pages.
                    if let Some(vmm) = &vmm {
                        let _ = vmm.kill();
                    }
                }
                drop(uffd);
                served
            })
            .map_err(thread_err("page-fault handler"))?;
        Ok(Self {
            _dir: dir,
            socket,
            stop,
            installed,
            join: Some(join),
        })
    }

    /// The socket the VMM connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the handler installed, once it has (`None` before, or with nothing to
    /// install).
    pub fn installed(&self) -> Option<PrefetchReport> {
        self.installed.try_recv().ok()
    }

    /// Stops the handler (once its VMM is gone: it serves that VMM's faults until then)
    /// and returns the faults it logged.
    pub fn finish(mut self) -> Result<Vec<u64>, BackendError> {
        self.stop.signal();
        match self.join.take().map(|j| j.join()) {
            Some(Ok(result)) => result,
            _ => Err(BackendError::HandlerEnded),
        }
    }
}

impl Drop for OneVmm {
    fn drop(&mut self) {
        self.stop.signal();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// The first connection to `listener`, or `None` once `stop` is signalled first; an error
/// after [`ONE_VMM_CONNECT_TIMEOUT`].
fn accept_until(
    listener: &std::os::unix::net::UnixListener,
    stop: &StopSignal,
) -> Result<Option<UnixStream>, BackendError> {
    let deadline = std::time::Instant::now() + ONE_VMM_CONNECT_TIMEOUT;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(BackendError::Uffd(UffdError::Ioctl {
                op: "accept the VMM's connection",
                source: std::io::ErrorKind::TimedOut.into(),
            }));
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd structs for the call's duration.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(BackendError::Uffd(UffdError::Ioctl {
                op: "poll",
                source: err,
            }));
        }
        if fds[1].revents != 0 {
            return Ok(None);
        }
        if fds[0].revents != 0 {
            return match listener.accept() {
                Ok((stream, _)) => Ok(Some(stream)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(source) => Err(BackendError::Uffd(UffdError::Ioctl {
                    op: "accept",
                    source,
                })),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory is whole 2 MiB blocks: 512 pages.
    const PAGES: u64 = 512;

    /// A file of `pages` pages, each filled with its page number plus one (mod 256).
    fn source(pages: u64) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory");
        let data: Vec<u8> = (0..pages * PAGE)
            .map(|i| ((i / PAGE) as u8).wrapping_add(1))
            .collect();
        std::fs::write(&path, &data).expect("write");
        let file = File::open(&path).expect("open");
        (dir, file)
    }

    /// Userfaultfd-backed memory, or `None` after a loud message where the host has no
    /// userfaultfd (a failure under `CI=true`).
    fn memory(len: u64) -> Option<UffdMemory> {
        match UffdMemory::new(len) {
            Ok(m) => Some(m),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("userfaultfd memory unavailable and CI=true: {e}")
            }
            Err(e) => {
                eprintln!("\n!!!!!!!! SKIPPED: userfaultfd memory unavailable: {e} !!!!!!!!\n");
                None
            }
        }
    }

    fn byte_at(memory: &GuestMemory, gpa: u64) -> u8 {
        let mut b = [0u8; 1];
        memory.read(gpa, &mut b).expect("read guest memory");
        b[0]
    }

    /// The strategy's prefetch is installed before the restore returns; every other page
    /// is served from the source on demand; the handler stops with the helpers.
    #[test]
    fn in_process_prefetch_then_on_demand() {
        let (_dir, file) = source(PAGES);
        let Some(mem) = memory(PAGES * PAGE) else {
            return;
        };
        let restored = mem
            .serve_in_process(file, |uffd, regions| {
                // Page 2 installed from elsewhere: a value the source does not hold.
                let base = regions[0].base_host_virt_addr;
                uffd.copy(base + 2 * PAGE, &[0xaa; PAGE as usize])?;
                Ok(PrefetchReport {
                    bytes: PAGE,
                    ranges: 1,
                    ..PrefetchReport::default()
                })
            })
            .expect("restore");
        assert_eq!(restored.prefetched.as_ref().map(|p| p.bytes), Some(PAGE));
        assert_eq!(byte_at(&restored.memory, 2 * PAGE), 0xaa, "prefetched");
        for page in [0, 1, 5, 7, 300] {
            assert_eq!(
                byte_at(&restored.memory, page * PAGE + 17),
                (page as u8).wrapping_add(1),
                "page {page} on demand from the source"
            );
        }
        let Restored {
            memory, helpers, ..
        } = restored;
        helpers.finish().expect("the handler stops cleanly");
        drop(memory);
    }

    /// A failed prefetch fails the restore: nothing is served.
    #[test]
    fn a_failed_prefetch_fails_the_restore() {
        let (_dir, file) = source(PAGES);
        let Some(mem) = memory(PAGES * PAGE) else {
            return;
        };
        let e = mem
            .serve_in_process(file, |_, _| Err("the working set is damaged".into()))
            .expect_err("refused");
        assert!(matches!(e, BackendError::Prefetch(_)), "{e}");
        assert_eq!(
            crate::error_chain(&e),
            "prefetch before the vCPU runs failed: the working set is damaged"
        );
    }

    /// Recording serves every fault from the source and logs its offset in fault order.
    #[test]
    fn recording_logs_faults_in_order() {
        let (_dir, file) = source(PAGES);
        let Some(mem) = memory(PAGES * PAGE) else {
            return;
        };
        let (memory, recorder) = mem.record(file).expect("record");
        for page in [6u64, 1, 3, 1] {
            assert_eq!(byte_at(&memory, page * PAGE), (page as u8).wrapping_add(1));
        }
        assert_eq!(
            recorder.finish().expect("log"),
            vec![6 * PAGE, PAGE, 3 * PAGE],
            "each page once, in the order first touched"
        );
    }
}
