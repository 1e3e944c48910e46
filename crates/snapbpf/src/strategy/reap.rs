//! `reap`: REAP (Ustiugov et al., ASPLOS '21), record-and-prefetch over userfaultfd.
//!
//! - **Guest memory** is anonymous (`MAP_PRIVATE | MAP_ANONYMOUS`) and registered with a
//!   userfaultfd for missing-page faults; a handler thread (or an external handler process,
//!   `--uffd-handler`) fills it.
//! - **Record** (`snapbpf record --strategy reap`): one invocation runs with every fault
//!   served on demand from the snapshot memory file (`pread` + `UFFDIO_COPY`), and the file
//!   offset of each page is logged in fault order. Then the working-set file `reap.ws` holds
//!   those pages' contents, contiguous, in fault order, and the trace `reap.trace` their
//!   offsets (an [`snapbpf_store::artifact`] bound to the snapshot's memory identity, with the
//!   working set's size and CRC32).
//! - **Restore**: the handler reads the whole working-set file with one `O_DIRECT` read into
//!   an aligned buffer and installs it with `UFFDIO_COPY` (one call per run of pages
//!   contiguous in the trace) before the vCPU runs; remaining faults are served on demand
//!   from the snapshot memory file. Each VM reads and holds its own copy: no sharing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::registry::{parse_as, OptionInfo, StrategyInfo, StrategyOptions, StrategySpec};
use super::{PrefetchReport, RecordReport, Restored, Strategy, StrategyError};
use crate::snapshot::Snapshot;
use crate::uffd_backend::UffdMemory;
use snapbpf_store::artifact;
use snapbpf_store::FileIdentity;
use snapbpf_uffd::{self as uffd, server, GuestRegionUffdMapping, HandlerAck, Uffd, PAGE};

/// Working-set file: the recorded pages' contents, in fault order.
pub const WS_FILE: &str = "reap.ws";
/// Trace file: the recorded pages' offsets and the binding to the snapshot.
pub const TRACE_FILE: &str = "reap.trace";
const TRACE_KIND: &str = "reap-trace";

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
    let len = std::fs::metadata(&data_path)
        .map_err(StrategyError::io(format!("stat {}", data_path.display())))?
        .len();
    if len != header.ws_bytes {
        return Err(super::bad_artifact(
            &data_path,
            format!(
                "{len} bytes, the trace expects {} (truncated or from another recording)",
                header.ws_bytes
            ),
        ));
    }
    Ok(Trace { header, offsets })
}

/// Reads `reap.ws` with one `O_DIRECT` read and checks it against the trace's CRC32 (the
/// whole file is read on every restore, so its checksum is checked on every restore).
pub fn read_ws(
    snapshot: &Snapshot,
    trace: &Trace,
) -> Result<snapbpf_store::fsutil::AlignedBuf, StrategyError> {
    let path = snapshot.artifact_path(WS_FILE);
    let (buf, direct) = snapbpf_store::fsutil::read_direct(&path)
        .map_err(StrategyError::io(format!("read {}", path.display())))?;
    if !direct {
        tracing::warn!(
            "{}: no O_DIRECT on this filesystem, read buffered",
            path.display()
        );
    }
    if buf.as_slice().len() as u64 != trace.header.ws_bytes
        || crc32fast::hash(buf.as_slice()) != trace.header.ws_crc32
    {
        return Err(StrategyError::BadArtifact {
            path,
            reason: "contents do not match the trace's CRC32 (damaged or from another recording)"
                .into(),
        });
    }
    Ok(buf)
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
    let buf = read_ws(snapshot, trace)?;
    let checked_ms = uffd::ms_since(started);
    // Read only for hugetlbfs regions (whole 2 MiB pages around the working set).
    let memory = std::fs::File::open(snapshot.memory_path())
        .map_err(StrategyError::io("open the snapshot's memory"))?;
    let (bytes, ranges) = uffd::install(uffd, regions, &trace.offsets, buf.as_slice(), &memory)?;
    tracing::debug!(
        "reap prefetch: read and CRC {checked_ms:.1} ms, install {:.1} ms",
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
    required: &[],
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

impl Strategy for Reap {
    fn name(&self) -> &'static str {
        "reap"
    }

    fn cold_files(&self, snapshot: &Snapshot) -> Vec<PathBuf> {
        let mut files = vec![snapshot.memory_path()];
        // Restoring through an external handler needs no recording: evict it if present.
        files.extend(
            [WS_FILE, TRACE_FILE]
                .iter()
                .map(|f| snapshot.artifact_path(f))
                .filter(|p| self.handler_socket.is_none() || p.exists()),
        );
        files
    }

    fn check(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        if self.handler_socket.is_some() {
            // The handler there serves the VM with whatever it has (Firecracker's, ours,
            // anyone's): this VMM needs no recording of its own.
            return Ok(());
        }
        load_trace(snapshot).map(|_| ())
    }

    fn verify_recording(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        read_ws(snapshot, &load_trace(snapshot)?).map(|_| ())
    }

    fn describe_recording(&self, snapshot: &Snapshot) -> Result<String, StrategyError> {
        let t = load_trace(snapshot)?;
        Ok(format!(
            "{} pages recorded with input {}, bound to this snapshot",
            t.header.pages, t.header.input
        ))
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let path = snapshot.memory_path();
        let memory_file =
            File::open(&path).map_err(StrategyError::io(format!("open {}", path.display())))?;
        let memory = UffdMemory::new(snapshot.meta.mem_bytes)?;
        if let Some(socket) = &self.handler_socket {
            // Firecracker's UFFD backend: the handler process fills memory.
            return Ok(memory.serve_externally(socket, memory_file, &snapshot.meta.memory)?);
        }
        // REAP installs the whole recorded working set before the vCPU runs.
        let trace = load_trace(snapshot)?;
        let snapshot = snapshot.clone();
        Ok(memory.serve_in_process(memory_file, move |uffd, regions| {
            let ack = prefetch(uffd, regions, &snapshot, &trace)?;
            Ok(PrefetchReport {
                bytes: ack.bytes,
                ranges: ack.ranges,
                ms: ack.ms,
                first_request_ms: None,
                compression: None,
            })
        })?)
    }

    fn record(
        &self,
        snapshot: &Snapshot,
        input: u32,
        timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        let started = Instant::now();
        let log = record_faults(snapshot, input, timeout)?;
        write_artifacts(snapshot, &log, input, started)
    }
}

/// REAP's record phase: runs one invocation with every fault served on demand from the
/// snapshot's memory file and returns the file offsets of the pages faulted, in fault
/// order (also Sabre's working set).
pub fn record_faults(
    snapshot: &Snapshot,
    input: u32,
    timeout: Duration,
) -> Result<Vec<u64>, StrategyError> {
    let path = snapshot.memory_path();
    let memory_file =
        File::open(&path).map_err(StrategyError::io(format!("open {}", path.display())))?;
    let (memory, recorder) = UffdMemory::new(snapshot.meta.mem_bytes)?.record(memory_file)?;
    super::run_recorded(snapshot, Restored::plain(memory), input, timeout)?;
    let log = recorder.finish()?;
    if log.is_empty() {
        return Err(StrategyError::io("record")(std::io::Error::other(
            "the recorded invocation faulted no page",
        )));
    }
    Ok(log)
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
    snapbpf_store::fsutil::write_atomic(&ws_path, &ws)
        .map_err(StrategyError::io(format!("write {}", ws_path.display())))?;
    let header = TraceHeader {
        memory: snapshot.meta.memory,
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
    )?;
    Ok(RecordReport {
        artifacts: vec![(ws_path, ws.len() as u64), (trace_path, trace_bytes)],
        ms: uffd::ms_since(started),
        pages: offsets.len() as u64,
        capture_cpu_ms: None,
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
    /// The server failed.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// The memory file to serve cannot be identified.
    #[error(transparent)]
    Identify(#[from] snapbpf_store::verify::VerifyError),
}

/// What the external handler serves.
#[derive(Debug, Clone)]
pub enum HandlerSource {
    /// A snapbpf snapshot directory: its memory file, and REAP's prefetch when recorded.
    Snapshot(PathBuf),
    /// Any raw guest memory file (e.g. a Firecracker snapshot's), served on demand only.
    MemoryFile(PathBuf),
}

/// The external page-fault handler (`snapbpf uffd-handler`): the userfaultfd handler
/// server ([`server::listen`]) with REAP's policy: every VM it serves first gets the
/// snapshot's recorded working set installed, if one was recorded; everything else is
/// served on demand from the memory file. Returns after `max_sessions` sessions, if given.
pub fn run_handler(
    socket: &Path,
    source: &HandlerSource,
    max_sessions: Option<u64>,
    extension: bool,
) -> Result<(), HandlerError> {
    let on_demand: Arc<server::Prefetch> = Arc::new(|_, _| Ok(HandlerAck::default()));
    let (prefetch, memory, identity) = match source {
        HandlerSource::Snapshot(dir) => {
            let snapshot = crate::snapshot::open(dir)?;
            let memory = snapshot.memory_path();
            let identity = snapshot.meta.memory;
            match load_trace(&snapshot) {
                Ok(trace) => {
                    let install: Arc<server::Prefetch> = Arc::new(move |uffd, regions| {
                        Ok(prefetch(uffd, regions, &snapshot, &trace)?)
                    });
                    (install, memory, identity)
                }
                Err(StrategyError::MissingArtifact { .. }) => {
                    tracing::warn!(
                        "uffd-handler: no REAP recording in {}: serving every fault on demand",
                        dir.display()
                    );
                    (on_demand, memory, identity)
                }
                Err(e) => return Err(e.into()),
            }
        }
        HandlerSource::MemoryFile(path) => {
            // Hashed once (direct reads), so every VM it serves can check what it serves.
            let identity = snapbpf_store::verify::identify(path)?;
            (on_demand, path.clone(), identity)
        }
    };
    server::listen(socket, &memory, identity, prefetch, max_sessions, extension)?;
    Ok(())
}
