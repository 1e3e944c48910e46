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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::interface::{
    self, ExternalBacking, ExternalPlan, ExternalRecorder, Helpers, PrefetchReport, RecordBacking,
    RecordReport, Restored, Strategy, StrategyError,
};
use super::spec::{OptionInfo, StrategyInfo, StrategyOptions, Vmm};
use crate::snapshot::Snapshot;
use crate::uffd_backend::{self, UffdMemory};
use snapbpf_store::artifact;
use snapbpf_store::FileIdentity;
use snapbpf_uffd::{
    self as uffd, server, GuestRegionUffdMapping, HandlerAck, HandlerKind, Uffd, PAGE,
};

/// Working-set file: the recorded pages' contents, in fault order.
const WS_FILE: &str = "reap.ws";
/// Trace file: the recorded pages' offsets and the binding to the snapshot.
const TRACE_FILE: &str = "reap.trace";
const TRACE_KIND: &str = "reap-trace";

/// Header of `reap.trace`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TraceHeader {
    /// Identity of the snapshot memory file the trace was recorded from.
    memory: FileIdentity,
    /// Page size of the offsets.
    page_size: u64,
    /// Pages in the working set (= offsets in the payload).
    pages: u64,
    /// Size of `reap.ws`.
    ws_bytes: u64,
    /// CRC32 of `reap.ws`.
    ws_crc32: u32,
    /// Input of the recorded invocation.
    input: u32,
}

/// A validated trace.
#[derive(Debug, Clone)]
struct Trace {
    /// Its header.
    header: TraceHeader,
    /// File offsets of the working-set pages, in fault order (= their order in `reap.ws`).
    offsets: Vec<u64>,
}

/// Loads `reap.trace` and checks it against `snapshot` and `reap.ws` (size only; the
/// contents' CRC is checked when the file is read for a restore).
fn load_trace(snapshot: &Snapshot) -> Result<Trace, StrategyError> {
    let interface::Recorded {
        header,
        payload,
        path,
        data_path,
    } = interface::read_recorded(
        snapshot,
        INFO.name,
        TRACE_FILE,
        WS_FILE,
        TRACE_KIND,
        |h: &TraceHeader| &h.memory,
    )?;
    let offsets = validate_trace(&header, &payload, snapshot.meta.mem_bytes)
        .map_err(|reason| interface::bad_artifact(&path, reason.into()))?;
    let len = std::fs::metadata(&data_path)
        .map_err(StrategyError::io(format!("stat {}", data_path.display())))?
        .len();
    if len != header.ws_bytes {
        return Err(interface::bad_artifact(
            &data_path,
            format!(
                "{len} bytes, the trace expects {} (truncated or from another recording)",
                header.ws_bytes
            ),
        ));
    }
    Ok(Trace { header, offsets })
}

/// The offsets of a trace whose header and payload agree with each other and fit a memory
/// file of `mem` bytes (every product checked: a crafted trace with a valid checksum
/// must not wrap a size into agreement).
fn validate_trace(
    header: &TraceHeader,
    payload: &[u8],
    mem: u64,
) -> Result<Vec<u64>, &'static str> {
    let offsets = artifact::u64s(payload).ok_or("payload is not u64s")?;
    if header.page_size != PAGE
        || offsets.len() as u64 != header.pages
        || header.pages.checked_mul(PAGE) != Some(header.ws_bytes)
        || offsets.iter().any(|&o| o % PAGE != 0 || o >= mem)
    {
        return Err("inconsistent offsets or sizes");
    }
    Ok(offsets)
}

/// A trace as its record phase writes it, for fuzzing.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let header = TraceHeader {
        memory: interface::fuzz_memory(),
        page_size: PAGE,
        pages: 3,
        ws_bytes: 3 * PAGE,
        ws_crc32: 7,
        input: 0,
    };
    artifact::encode(
        TRACE_KIND,
        &header,
        &artifact::u64_bytes(&[8192, 0, 4096 * 9]),
    )
    .into_iter()
    .collect()
}

/// The loader's checks on one trace's bytes, for fuzzing.
fn fuzz_check(bytes: &[u8]) -> bool {
    interface::decode_for_fuzz(bytes, TRACE_KIND, |h: &TraceHeader| &h.memory)
        .is_some_and(|(h, p)| validate_trace(&h, &p, interface::FUZZ_MEMORY_BYTES).is_ok())
}

/// Reads `reap.ws` with one `O_DIRECT` read and checks it against the trace's CRC32 (the
/// whole file is read on every restore, so its checksum is checked on every restore).
fn read_ws(
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
fn prefetch(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    snapshot: &Snapshot,
    trace: &Trace,
    memory: &File,
) -> Result<HandlerAck, StrategyError> {
    let started = Instant::now();
    let buf = read_ws(snapshot, trace)?;
    let checked_ms = uffd::ms_since(started);
    // `memory` is read only for hugetlbfs regions (whole 2 MiB pages around the working set).
    let (bytes, ranges) = uffd::install(uffd, regions, &trace.offsets, buf.as_slice(), memory)?;
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
pub(super) static INFO: StrategyInfo = StrategyInfo::new::<ReapOptions>(
    "reap",
    "REAP: userfaultfd; the recorded working set read with one O_DIRECT read and installed before the vCPU runs",
)
.options(&[
    OptionInfo::valued(
        "uffd-handler",
        "SOCKET",
        "hand the userfaultfd to `snapbpf uffd-handler` listening on this Unix socket (Firecracker's UFFD protocol; the handler must name the memory file it serves)",
    ),
    OptionInfo::valued(
        "firecracker-handler",
        "SOCKET",
        "as uffd-handler, to a handler that speaks only Firecracker's handshake (its example handlers): which memory file it serves goes unchecked",
    ),
])
.records(&[WS_FILE, TRACE_FILE])
.vmms(&[Vmm::Builtin, Vmm::Firecracker])
.loader(interface::LoaderFuzz {
    seeds: fuzz_seeds,
    check: fuzz_check,
});

/// Options of `reap`.
#[derive(Debug, Clone, Default)]
pub(super) struct ReapOptions {
    /// Serve guest memory from the external handler at this socket, of this kind.
    uffd_handler: Option<(PathBuf, HandlerKind)>,
}

impl StrategyOptions for ReapOptions {
    const INFO: &'static StrategyInfo = &INFO;
    fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        let kind = match name {
            "uffd-handler" => HandlerKind::Snapbpf,
            "firecracker-handler" => HandlerKind::FirecrackerOnly,
            other => return Err(format!("unexpected option {other}")),
        };
        match value {
            Some(path) if !path.is_empty() => {
                if self.uffd_handler.is_some() {
                    return Err(
                        "uffd-handler and firecracker-handler name one handler: pass one".into(),
                    );
                }
                self.uffd_handler = Some((PathBuf::from(path), kind));
            }
            _ => return Err("needs a socket path".into()),
        }
        Ok(())
    }
    fn render(&self) -> Vec<String> {
        self.uffd_handler
            .iter()
            .map(|(p, kind)| match kind {
                HandlerKind::Snapbpf => format!("uffd-handler={}", p.display()),
                HandlerKind::FirecrackerOnly => format!("firecracker-handler={}", p.display()),
            })
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
struct Reap {
    /// Hand the userfaultfd to the handler listening on this socket instead of serving it
    /// in-process.
    handler_socket: Option<(PathBuf, HandlerKind)>,
}

impl Strategy for Reap {
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
        let (memory_file, _) = interface::open_memory(snapshot, None)?;
        let memory = UffdMemory::new(snapshot.meta.mem_bytes)?;
        if let Some((socket, kind)) = &self.handler_socket {
            // Firecracker's UFFD backend: the handler process fills memory.
            return Ok(memory.serve_externally(
                socket,
                *kind,
                memory_file,
                &snapshot.meta.memory,
            )?);
        }
        // REAP installs the whole recorded working set before the vCPU runs.
        let trace = load_trace(snapshot)?;
        let snapshot = snapshot.clone();
        // The one memory file this restore opened serves the faults and, for hugetlbfs
        // regions, the pages around the working set: never a second open of the path.
        let around = memory_file
            .try_clone()
            .map_err(StrategyError::io("duplicate the memory file's descriptor"))?;
        Ok(memory.serve_in_process(memory_file, move |uffd, regions| {
            let ack = prefetch(uffd, regions, &snapshot, &trace, &around)?;
            Ok(PrefetchReport {
                bytes: ack.bytes,
                ranges: ack.ranges,
                ms: ack.ms,
                ..PrefetchReport::default()
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
        let log = uffd_backend::record_faults(snapshot, input, timeout)?;
        write_artifacts(snapshot, &log, input, started)
    }

    fn external(&self, snapshot: &Snapshot) -> Result<ExternalPlan, StrategyError> {
        let backing = match &self.handler_socket {
            // Firecracker hands its userfaultfd to that handler itself.
            Some((socket, _)) => ExternalBacking::Handler {
                socket: socket.clone(),
            },
            None => ExternalBacking::Userfault {
                install: self.handler_prefetch(snapshot)?,
            },
        };
        Ok(ExternalPlan {
            backing,
            helpers: Helpers::none(),
        })
    }

    fn record_external(
        &self,
        snapshot: &Snapshot,
        input: u32,
        recorder: &dyn ExternalRecorder,
    ) -> Result<RecordReport, StrategyError> {
        let started = Instant::now();
        let log = recorder.run(RecordBacking::Userfault)?;
        write_artifacts(snapshot, &log, input, started)
    }

    fn handler_prefetch(
        &self,
        snapshot: &Snapshot,
    ) -> Result<Option<Arc<server::Prefetch>>, StrategyError> {
        let trace = load_trace(snapshot)?;
        let snapshot = snapshot.clone();
        Ok(Some(Arc::new(move |uffd, regions, memory| {
            Ok(prefetch(uffd, regions, &snapshot, &trace, memory)?)
        })))
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
    let (mem, _) = interface::open_memory(snapshot, None)?;
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
