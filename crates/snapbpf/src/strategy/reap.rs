//! `reap`: REAP (Ustiugov et al., ASPLOS '21), record-and-prefetch over userfaultfd.
//!
//! - **Guest memory** is anonymous (`MAP_PRIVATE | MAP_ANONYMOUS`) and registered with a
//!   userfaultfd for missing-page faults; a handler thread (or an external handler process,
//!   `--uffd-handler`) fills it.
//! - **Record** (`snapbpf record --strategy reap`): one invocation runs with every fault
//!   served on demand from the snapshot memory file (`pread` + `UFFDIO_COPY`), and the file
//!   offset of each page is logged in fault order. Then the working-set file `reap.ws` holds
//!   those pages' contents, contiguous, in fault order, and the trace `reap.trace` their
//!   offsets (an [`crate::artifact`] bound to the snapshot's memory identity, with the
//!   working set's size and CRC32).
//! - **Restore**: the handler reads the whole working-set file with one `O_DIRECT` read into
//!   an aligned buffer and installs it with `UFFDIO_COPY` (one call per run of pages
//!   contiguous in the trace) before the vCPU runs; remaining faults are served on demand
//!   from the snapshot memory file. Each VM reads and holds its own copy: no sharing.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapbpf_vmm::{GuestMemory, IgnoreHints};

use super::registry::{parse_as, OptionInfo, StrategyInfo, StrategyOptions, StrategySpec};
use super::{PrefetchReport, RecordReport, RestoreReport, Restored, Strategy, StrategyError};
use crate::artifact;
use crate::fsutil::FileIdentity;
use crate::snapshot::Snapshot;
use crate::uffd::{
    self, GuestRegionUffdMapping, HandlerAck, ServeStats, StopSignal, Uffd, UffdError, PAGE,
};

/// Working-set file: the recorded pages' contents, in fault order.
pub const WS_FILE: &str = "reap.ws";
/// Trace file: the recorded pages' offsets and the binding to the snapshot.
pub const TRACE_FILE: &str = "reap.trace";
const TRACE_KIND: &str = "reap-trace";

/// How long the VMM waits for an external handler to install its prefetch.
pub const HANDLER_ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest an external handler that has acknowledged may take to serve the first guest
/// page. A working handler serves a fault in microseconds once its prefetch is done.
pub const HANDLER_SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Header of `reap.trace`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceHeader {
    /// Identity of the snapshot memory file the trace was recorded from.
    pub memory: FileIdentity,
    /// Page size of the offsets.
    pub page_size: u64,
    /// Pages in the working set (= offsets in the payload).
    pub pages: u64,
    /// Size of `reap.ws`.
    pub ws_bytes: u64,
    /// CRC32 of `reap.ws`.
    pub ws_crc32: u32,
    /// Input of the recorded invocation.
    pub input: u32,
}

/// A validated trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Its header.
    pub header: TraceHeader,
    /// File offsets of the working-set pages, in fault order (= their order in `reap.ws`).
    pub offsets: Vec<u64>,
}

/// Loads `reap.trace` and checks it against `snapshot` and `reap.ws` (size only; the
/// contents' CRC is checked when the file is read for a restore).
pub fn load_trace(snapshot: &Snapshot) -> Result<Trace, StrategyError> {
    let super::Recorded {
        header,
        payload,
        path,
        data_path,
    } = super::read_recorded(
        snapshot,
        "reap",
        TRACE_FILE,
        WS_FILE,
        TRACE_KIND,
        |h: &TraceHeader| &h.memory,
    )?;
    let bad = |reason: &str| super::bad_artifact(&path, reason.into());
    let offsets = artifact::u64s(&payload).ok_or_else(|| bad("payload is not u64s"))?;
    let mem = snapshot.meta.mem_bytes;
    if header.page_size != PAGE
        || offsets.len() as u64 != header.pages
        || header.ws_bytes != header.pages * PAGE
        || offsets.iter().any(|&o| o % PAGE != 0 || o >= mem)
    {
        return Err(bad("inconsistent offsets or sizes"));
    }
    super::check_data_len(&data_path, header.ws_bytes, "trace")?;
    Ok(Trace { header, offsets })
}

/// Reads `reap.ws` with one `O_DIRECT` read, checks its CRC, and installs it into the
/// guest memory `regions` through `uffd`.
pub fn prefetch(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    snapshot: &Snapshot,
    trace: &Trace,
) -> Result<HandlerAck, StrategyError> {
    let started = Instant::now();
    let path = snapshot.artifact_path(WS_FILE);
    let (buf, direct) =
        uffd::read_direct(&path).map_err(StrategyError::io(format!("read {}", path.display())))?;
    if !direct {
        tracing::warn!(
            "{}: no O_DIRECT on this filesystem, read buffered",
            path.display()
        );
    }
    let read_ms = uffd::ms_since(started);
    if buf.as_slice().len() as u64 != trace.header.ws_bytes
        || crc32fast::hash(buf.as_slice()) != trace.header.ws_crc32
    {
        return Err(StrategyError::BadArtifact {
            path,
            reason: "contents do not match the trace's CRC32 (damaged or from another recording)"
                .into(),
        });
    }
    let checked_ms = uffd::ms_since(started);
    let (bytes, ranges) = uffd::install(uffd, regions, &trace.offsets, buf.as_slice())?;
    tracing::debug!(
        "reap prefetch: read {read_ms:.1} ms (direct: {direct}), CRC {:.1} ms, install {:.1} ms",
        checked_ms - read_ms,
        uffd::ms_since(started) - checked_ms
    );
    Ok(HandlerAck {
        bytes,
        ranges,
        ms: uffd::ms_since(started),
        error: None,
    })
}

/// Registry row of `reap`.
pub static INFO: StrategyInfo = StrategyInfo {
    name: "reap",
    description: "REAP: userfaultfd; the recorded working set read with one O_DIRECT read and installed before the vCPU runs",
    options: &[OptionInfo {
        name: "uffd-handler",
        value: Some("SOCKET"),
        help: "hand the userfaultfd to the page-fault handler listening on this Unix socket (Firecracker's UFFD protocol)",
    }],
    record: true,
    artifacts: &[WS_FILE, TRACE_FILE],
    parse: |o| parse_as(o).map(StrategySpec::Reap),
};

/// Options of `reap`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapOptions {
    /// Serve guest memory from the external handler at this socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uffd_handler: Option<PathBuf>,
}

impl StrategyOptions for ReapOptions {
    const INFO: &'static StrategyInfo = &INFO;
    fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        match (name, value) {
            ("uffd-handler", Some(path)) if !path.is_empty() => {
                self.uffd_handler = Some(PathBuf::from(path))
            }
            ("uffd-handler", _) => return Err("needs a socket path".into()),
            (other, _) => return Err(format!("unexpected option {other}")),
        }
        Ok(())
    }
    fn render(&self) -> Vec<String> {
        self.uffd_handler
            .iter()
            .map(|p| format!("uffd-handler={}", p.display()))
            .collect()
    }
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(Reap {
            handler_socket: self.uffd_handler.clone(),
        })
    }
}

/// REAP.
#[derive(Debug, Clone, Default)]
pub struct Reap {
    /// Hand the userfaultfd to the handler listening on this socket instead of serving it
    /// in-process.
    pub handler_socket: Option<PathBuf>,
}

/// A handler thread serving one VM; stopped and joined on drop.
struct HandlerThread {
    stop: Arc<StopSignal>,
    join: Option<JoinHandle<Result<ServeStats, UffdError>>>,
}

impl HandlerThread {
    fn finish(mut self) -> Option<Result<ServeStats, UffdError>> {
        self.stop.signal();
        self.join.take().and_then(|j| j.join().ok())
    }
}

impl Drop for HandlerThread {
    fn drop(&mut self) {
        self.stop.signal();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Anonymous guest memory registered with a new userfaultfd, and its one region.
fn uffd_memory(
    snapshot: &Snapshot,
) -> Result<(GuestMemory, Uffd, Vec<GuestRegionUffdMapping>), StrategyError> {
    let memory = GuestMemory::anonymous(snapshot.meta.mem_bytes)?;
    let uffd = Uffd::new()?;
    let base = memory.host_base() as u64;
    uffd.register_missing(base, memory.len())?;
    let regions = vec![GuestRegionUffdMapping {
        base_host_virt_addr: base,
        size: memory.len(),
        offset: 0,
        page_size: PAGE,
    }];
    Ok((memory, uffd, regions))
}

/// Starts a handler thread for one VM: optionally installs `trace`'s working set first
/// (reporting through the returned channel), then serves faults from the memory file.
fn spawn_handler(
    snapshot: &Snapshot,
    uffd: Uffd,
    regions: Vec<GuestRegionUffdMapping>,
    trace: Option<Trace>,
    record: bool,
) -> Result<
    (
        HandlerThread,
        mpsc::Receiver<Result<HandlerAck, StrategyError>>,
    ),
    StrategyError,
> {
    let path = snapshot.memory_path();
    let file = File::open(&path).map_err(StrategyError::io(format!("open {}", path.display())))?;
    let stop = Arc::new(StopSignal::new().map_err(StrategyError::io("eventfd"))?);
    let (tx, rx) = mpsc::channel();
    let snapshot = snapshot.clone();
    let thread_stop = stop.clone();
    let join = std::thread::Builder::new()
        .name("reap-uffd".into())
        .spawn(move || {
            let ack = match &trace {
                Some(t) => prefetch(&uffd, &regions, &snapshot, t),
                None => Ok(HandlerAck::default()),
            };
            let failed = ack.is_err();
            let _ = tx.send(ack);
            if failed {
                return Ok(ServeStats::default());
            }
            uffd::serve(&uffd, &regions, &file, thread_stop.as_fd(), record)
        })
        .map_err(StrategyError::io("spawn the page-fault handler thread"))?;
    Ok((
        HandlerThread {
            stop,
            join: Some(join),
        },
        rx,
    ))
}

/// Watches the connection to an external handler while the VM lives; stopped on drop.
struct HandlerWatch {
    stop: Arc<StopSignal>,
    join: Option<JoinHandle<()>>,
}

impl Drop for HandlerWatch {
    fn drop(&mut self) {
        self.stop.signal();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// If the external handler goes away while the VM lives, nothing will ever serve the VM's
/// missing pages: a thread blocked on one (the vCPU, or the VMM reading the mailbox) would
/// wait forever, and dropping our descriptor would silently turn missing pages into zero
/// pages. The only safe outcome is to end this VM process with a clear error.
/// Faults in the guest's mailbox page from a helper thread and waits, bounded, for the
/// external handler to serve it. A handler that acknowledges but never serves would
/// otherwise block the VMM forever in its first read of guest memory, where no signal or
/// watchdog can interrupt it.
fn probe_handler(memory: GuestMemory, socket: &Path) -> Result<GuestMemory, StrategyError> {
    match memory.read_u64_within(snapbpf_vmm::abi::MAILBOX_GPA, HANDLER_SERVE_TIMEOUT) {
        Ok((memory, _)) => Ok(memory),
        Err(snapbpf_vmm::MemoryError::ReadTimeout { .. }) => Err(StrategyError::Io {
            context: format!("page-fault handler at {}", socket.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "it acknowledged the guest memory but did not serve its first page within {} s",
                    HANDLER_SERVE_TIMEOUT.as_secs()
                ),
            ),
        }),
        Err(e) => Err(e.into()),
    }
}

fn watch_handler(stream: &UnixStream, socket: &Path) -> Result<HandlerWatch, StrategyError> {
    let stream = stream
        .try_clone()
        .map_err(StrategyError::io("watch the page-fault handler connection"))?;
    let stop = Arc::new(StopSignal::new().map_err(StrategyError::io("eventfd"))?);
    let thread_stop = stop.clone();
    let socket = socket.to_path_buf();
    let join = std::thread::Builder::new()
        .name("reap-uffd-watch".into())
        .spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: stream.as_raw_fd(),
                    events: libc::POLLIN | libc::POLLRDHUP,
                    revents: 0,
                },
                libc::pollfd {
                    fd: thread_stop.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            loop {
                // SAFETY: `fds` is a valid array of two pollfd structs for the call.
                let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                if fds[1].revents != 0 || rc < 0 {
                    return;
                }
                if fds[0].revents != 0 {
                    eprintln!(
                        "error: the page-fault handler at {} disconnected while the VM was running: its memory can no longer be served",
                        socket.display()
                    );
                    std::process::exit(1);
                }
            }
        })
        .map_err(StrategyError::io("spawn the handler watch thread"))?;
    Ok(HandlerWatch {
        stop,
        join: Some(join),
    })
}

fn report(ack: &HandlerAck) -> PrefetchReport {
    PrefetchReport {
        bytes: ack.bytes,
        ranges: ack.ranges,
        ms: ack.ms,
    }
}

impl Strategy for Reap {
    fn name(&self) -> &'static str {
        "reap"
    }

    fn cold_files(&self, snapshot: &Snapshot) -> Vec<PathBuf> {
        vec![
            snapshot.memory_path(),
            snapshot.artifact_path(WS_FILE),
            snapshot.artifact_path(TRACE_FILE),
        ]
    }

    fn check(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        load_trace(snapshot).map(|_| ())
    }

    fn describe_recording(&self, snapshot: &Snapshot) -> Result<String, StrategyError> {
        let t = load_trace(snapshot)?;
        Ok(format!(
            "{} pages recorded with input {}, bound to this snapshot",
            t.header.pages, t.header.input
        ))
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let trace = load_trace(snapshot)?;
        let (memory, uffd, regions) = uffd_memory(snapshot)?;
        if let Some(socket) = &self.handler_socket {
            // Firecracker's UFFD backend: the handler process fills memory; we keep our copy
            // of the descriptor and the connection for the VM's life.
            let (stream, ack) =
                uffd::send_to_handler(socket, &uffd, &regions, HANDLER_ACK_TIMEOUT)?;
            let monitor = watch_handler(&stream, socket)?;
            let memory = probe_handler(memory, socket)?;
            return Ok(Restored {
                memory,
                handler: Box::new(IgnoreHints),
                pv_hints: false,
                finish: Box::new(move || {
                    drop(monitor);
                    drop(stream);
                    drop(uffd);
                    RestoreReport {
                        prefetch: Some(report(&ack)),
                        ..RestoreReport::default()
                    }
                }),
            });
        }
        let (thread, rx) = spawn_handler(snapshot, uffd, regions, Some(trace), false)?;
        // REAP installs the whole working set before the vCPU runs.
        let ack = match rx.recv() {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let reason = match thread.finish() {
                    Some(Err(e)) => e.to_string(),
                    _ => "the page-fault handler thread exited".into(),
                };
                return Err(StrategyError::io("prefetch")(std::io::Error::other(reason)));
            }
        };
        Ok(Restored {
            memory,
            handler: Box::new(IgnoreHints),
            pv_hints: false,
            finish: Box::new(move || {
                if let Some(Err(e)) = thread.finish() {
                    tracing::error!("reap page-fault handler failed: {e}");
                }
                RestoreReport {
                    prefetch: Some(report(&ack)),
                    ..RestoreReport::default()
                }
            }),
        })
    }

    fn record(
        &self,
        snapshot: &Snapshot,
        input: u32,
        timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        let started = Instant::now();
        let (memory, uffd, regions) = uffd_memory(snapshot)?;
        let (thread, rx) = spawn_handler(snapshot, uffd, regions, None, true)?;
        rx.recv()
            .map_err(|_| StrategyError::io("record")(std::io::Error::other("handler exited")))??;
        let stats = super::run_recorded(
            snapshot,
            memory,
            Box::new(IgnoreHints),
            false,
            &crate::invoke::RunOptions { input, timeout },
            move || thread.finish(),
        )?
        .unwrap_or_else(|| Err(UffdError::BadRegions("handler thread panicked".into())))?;
        if stats.log.is_empty() {
            return Err(StrategyError::io("record")(std::io::Error::other(
                "the recorded invocation faulted no page",
            )));
        }
        write_artifacts(snapshot, &stats.log, input, started)
    }
}

/// Writes `reap.ws` (the pages at `offsets`, in order) and then `reap.trace`.
fn write_artifacts(
    snapshot: &Snapshot,
    offsets: &[u64],
    input: u32,
    started: Instant,
) -> Result<RecordReport, StrategyError> {
    let mem_path = snapshot.memory_path();
    let mem =
        File::open(&mem_path).map_err(StrategyError::io(format!("open {}", mem_path.display())))?;
    let mut ws = vec![0u8; offsets.len() * PAGE as usize];
    for (page, &off) in ws.chunks_exact_mut(PAGE as usize).zip(offsets) {
        std::os::unix::fs::FileExt::read_exact_at(&mem, page, off)
            .map_err(StrategyError::io(format!("read {}", mem_path.display())))?;
    }
    let ws_path = snapshot.artifact_path(WS_FILE);
    crate::fsutil::write_atomic(&ws_path, &ws)
        .map_err(StrategyError::io(format!("write {}", ws_path.display())))?;
    let header = TraceHeader {
        memory: snapshot.meta.memory.clone(),
        page_size: PAGE,
        pages: offsets.len() as u64,
        ws_bytes: ws.len() as u64,
        ws_crc32: crc32fast::hash(&ws),
        input,
    };
    let trace_path = snapshot.artifact_path(TRACE_FILE);
    let trace_bytes = artifact::write(
        &trace_path,
        TRACE_KIND,
        &header,
        &artifact::u64_bytes(offsets),
    )
    .map_err(|e| StrategyError::io("write trace")(std::io::Error::other(e.to_string())))?;
    Ok(RecordReport {
        artifacts: vec![(ws_path, ws.len() as u64), (trace_path, trace_bytes)],
        ms: uffd::ms_since(started),
        pages: offsets.len() as u64,
    })
}

/// Errors of the external page-fault handler.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The snapshot is unusable.
    #[error(transparent)]
    Open(#[from] crate::snapshot::OpenError),
    /// The REAP artifacts exist but are unusable.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// The socket could not be set up.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the external handler serves.
#[derive(Debug, Clone)]
pub enum HandlerSource {
    /// A snapbpf snapshot directory: its memory file, and REAP's prefetch when recorded.
    Snapshot(PathBuf),
    /// Any raw guest memory file (e.g. a Firecracker snapshot's), served on demand only.
    MemoryFile(PathBuf),
}

/// The external page-fault handler (`snapbpf uffd-handler`): listens on `socket`, and for
/// every VMM that connects and hands over a userfaultfd (Firecracker's protocol), installs
/// the snapshot's REAP working set if one was recorded, then serves the VM's faults from the
/// memory file until the VMM closes the connection. Each VM is served by its own thread.
/// Returns after `max_sessions` sessions, if given.
pub fn run_handler(
    socket: &Path,
    source: &HandlerSource,
    max_sessions: Option<u64>,
) -> Result<(), HandlerError> {
    let (prefetch_from, mem_path) = match source {
        HandlerSource::Snapshot(dir) => {
            let snapshot = Snapshot::open(dir)?;
            let trace = match load_trace(&snapshot) {
                Ok(t) => Some(t),
                Err(StrategyError::MissingArtifact { .. }) => {
                    eprintln!(
                        "uffd-handler: no REAP recording in {}: serving every fault on demand",
                        dir.display()
                    );
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let mem = snapshot.memory_path();
            (trace.map(|t| (snapshot, t)), mem)
        }
        HandlerSource::MemoryFile(path) => (None, path.clone()),
    };
    let file =
        File::open(&mem_path).map_err(StrategyError::io(format!("open {}", mem_path.display())))?;
    let file_len = file
        .metadata()
        .map_err(StrategyError::io(format!("stat {}", mem_path.display())))?
        .len();
    let file = Arc::new(file);
    let _ = std::fs::remove_file(socket);
    let listen_err = |source| HandlerError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(listen_err)?;
    eprintln!("uffd-handler: listening on {}", socket.display());
    let prefetch_from = Arc::new(prefetch_from);
    let mut sessions = Vec::new();
    let mut count = 0u64;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("uffd-handler: accept: {e}");
                continue;
            }
        };
        count += 1;
        let (prefetch_from, file) = (prefetch_from.clone(), file.clone());
        sessions.push(std::thread::spawn(move || {
            let pf = prefetch_from.as_ref().as_ref().map(|(s, t)| (s, t));
            if let Err(e) = session(&stream, pf, &file, file_len) {
                eprintln!("uffd-handler: session {count}: {e}");
                let _ = uffd::acknowledge(
                    &stream,
                    &HandlerAck {
                        error: Some(crate::invoke::error_chain(&e)),
                        ..HandlerAck::default()
                    },
                );
            }
        }));
        if max_sessions.is_some_and(|m| count >= m) {
            break;
        }
    }
    for s in sessions {
        let _ = s.join();
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

fn session(
    stream: &std::os::unix::net::UnixStream,
    prefetch_from: Option<(&Snapshot, &Trace)>,
    file: &File,
    file_len: u64,
) -> Result<(), StrategyError> {
    let (uffd, regions) = uffd::receive_from_vmm(stream)?;
    uffd::check_regions(&regions, file_len)?;
    let ack = match prefetch_from {
        Some((snapshot, t)) => prefetch(&uffd, &regions, snapshot, t)?,
        None => HandlerAck::default(),
    };
    uffd::acknowledge(stream, &ack).map_err(StrategyError::io("acknowledge"))?;
    let stats = uffd::serve(&uffd, &regions, file, stream.as_fd(), false)?;
    tracing::info!(
        "uffd-handler: VM done: {} bytes prefetched in {} ranges, {} faults served",
        ack.bytes,
        ack.ranges,
        stats.faults
    );
    Ok(())
}
