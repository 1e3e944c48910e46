//! In-kernel working-set capture with eBPF (SnapBPF paper, section 3.1).
//!
//! A BPF program on the `filemap` tracepoints records every page of one file that
//! enters the page cache (or, optionally, is faulted or mapped), with a
//! `bpf_ktime_get_ns()` timestamp, into a ring buffer. A thread owned by
//! [`PageCacheCapture`] drains the ring buffer and keeps the first access time of every
//! page; [`PageCacheCapture::stop`] detaches the programs, drains what is left, and
//! returns the [`CapturedPages`].
//!
//! Only offsets are captured, never page contents. Events the kernel could not write
//! because the ring buffer was full are counted in the kernel and reported as
//! [`CaptureStopError::EventsLost`]: a capture with lost events is never returned as if
//! it were complete.
//!
//! See `docs/ebpf-capture.md` for the choice of tracepoint, its accuracy, and caveats
//! (readahead during capture, large folios, tmpfs, `s_dev` encoding).
//!
//! ```no_run
//! use snapbpf_wss::capture::PageCacheCapture;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let capture = PageCacheCapture::start(std::path::Path::new("/var/lib/snap/memory"))?;
//! // ... run the workload that reads or maps the file ...
//! let pages = capture.stop()?;
//! println!("{} distinct pages, {} events", pages.pages.len(), pages.total_events);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, RingBufferBuilder};

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    missing_docs,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    unused_imports
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/capture.skel.rs"));
}

use skel::CaptureSkelBuilder;

mod preflight;
pub use preflight::kernel_dev;
use preflight::{check_privileges, ensure_tracepoint, resolve_file};

/// Page size the tracepoints' `index` field counts in.
pub const PAGE_SIZE: u64 = 4096;

/// Highest folio order recorded in [`CapturedPages::order_histogram`]; larger orders are
/// clamped into the last bucket.
pub const MAX_ORDER: usize = 20;

// Mirrors src/bpf/capture.h.
const SRC_ADD_TO_PAGE_CACHE: u8 = 0;
const SRC_FAULT: u8 = 1;
const SRC_MAP_PAGES: u8 = 2;
const CNT_MATCHED: u32 = 0;
const CNT_EMITTED: u32 = 1;
const CNT_LOST: u32 = 2;
/// `sizeof(struct snapbpf_event)`, asserted in capture.h.
const EVENT_SIZE: usize = 24;

/// Which `filemap` tracepoint(s) to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceSource {
    /// `filemap/mm_filemap_add_to_page_cache`: a folio of the file was inserted into the
    /// page cache (the paper's `add_to_page_cache_lru()` hook). Sees every read from
    /// storage, including readahead and fault-around; carries the folio order.
    AddToPageCache,
    /// `filemap/mm_filemap_fault`: a page fault on a file mapping reached
    /// `filemap_fault()` (the page was not mapped by fault-around). Sees cached pages
    /// too, but not reads through `read(2)`.
    Fault,
    /// `filemap/mm_filemap_map_pages`: fault-around mapped a run of already-cached
    /// pages (`index..=last_index`) without a fault per page.
    MapPages,
}

impl TraceSource {
    /// The tracepoint's name under `events/filemap/`.
    pub fn tracepoint(self) -> &'static str {
        match self {
            TraceSource::AddToPageCache => "mm_filemap_add_to_page_cache",
            TraceSource::Fault => "mm_filemap_fault",
            TraceSource::MapPages => "mm_filemap_map_pages",
        }
    }
}

/// Tunables of a capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Tracepoints to attach (at least one). Default: [`TraceSource::AddToPageCache`].
    pub sources: Vec<TraceSource>,
    /// Ring buffer size in bytes; rounded up to a power of two of at least one page.
    /// Each event takes 32 bytes. Default 16 MiB (about 500 000 events in flight).
    pub ring_buffer_bytes: u32,
    /// How often the drain thread empties the ring buffer (it is also woken when
    /// [`wakeup_bytes`](Self::wakeup_bytes) are pending) and checks for stop; `stop()`
    /// can take this long.
    pub poll_interval: Duration,
    /// Pending bytes at which the kernel wakes the drain thread. `None`: a quarter of
    /// the ring. Waking for every event costs a context switch per page.
    pub wakeup_bytes: Option<u64>,
    /// Only accesses made by this process (its PID as the initial PID namespace sees
    /// it, which is the caller's when run on the host). `None`: every process.
    pub process: Option<u32>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            sources: vec![TraceSource::AddToPageCache],
            ring_buffer_bytes: 16 << 20,
            poll_interval: Duration::from_millis(20),
            wakeup_bytes: None,
            process: None,
        }
    }
}

/// Identity of the traced file as the tracepoints see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracedFile {
    /// Userspace `st_dev` (glibc encoding).
    pub st_dev: u64,
    /// Kernel `s_dev` (`major << 20 | minor`), what the tracepoints report.
    pub kernel_dev: u32,
    /// Inode number.
    pub inode: u64,
    /// File size in bytes when the capture started.
    pub size: u64,
}

/// The result of a capture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedPages {
    /// Page index (file offset / 4096) → first access, in ns since the capture started.
    pub pages: BTreeMap<u64, u64>,
    /// Number of events per folio order (index = order; `add_to_page_cache` only).
    pub order_histogram: Vec<u64>,
    /// Events received from the ring buffer (before deduplication).
    pub total_events: u64,
    /// Events per source: `[add_to_page_cache, fault, map_pages]`.
    pub events_by_source: [u64; 3],
    /// Events on the file the kernel saw (received + lost).
    pub matched_events: u64,
    /// Events the kernel dropped because the ring buffer was full.
    pub lost_events: u64,
    /// Wall time between attach and detach.
    pub duration: Duration,
    /// CPU time the BPF programs ran for, ns (kernel run-time statistics, on the threads
    /// whose page-cache events they saw; 0 where the kernel keeps none).
    pub bpf_run_ns: u64,
    /// Times the BPF programs ran.
    pub bpf_runs: u64,
    /// CPU time of the thread that drained the ring buffer, ns.
    pub drain_cpu_ns: u64,
    /// The traced file.
    pub file: Option<TracedFile>,
}

impl CapturedPages {
    /// Distinct page indices, ascending.
    pub fn page_indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.keys().copied()
    }

    /// Events received from one tracepoint.
    pub fn events_from(&self, source: TraceSource) -> u64 {
        let i = match source {
            TraceSource::AddToPageCache => SRC_ADD_TO_PAGE_CACHE,
            TraceSource::Fault => SRC_FAULT,
            TraceSource::MapPages => SRC_MAP_PAGES,
        };
        self.events_by_source[usize::from(i)]
    }

    /// `(page index, first access ns)` pairs, ascending by page.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pages.iter().map(|(&p, &t)| (p, t))
    }

    fn record(&mut self, data: &[u8]) {
        let Some(ev) = RawEvent::parse(data) else {
            return;
        };
        self.total_events += 1;
        if let Some(slot) = self.events_by_source.get_mut(usize::from(ev.source)) {
            *slot += 1;
        }
        if ev.source == SRC_ADD_TO_PAGE_CACHE {
            let o = usize::from(ev.order).min(MAX_ORDER);
            self.order_histogram[o] += 1;
        }
        for page in ev.index..ev.index.saturating_add(u64::from(ev.nr_pages.max(1))) {
            self.pages
                .entry(page)
                .and_modify(|t| *t = (*t).min(ev.ts_ns))
                .or_insert(ev.ts_ns);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct RawEvent {
    index: u64,
    ts_ns: u64,
    nr_pages: u32,
    source: u8,
    order: u8,
}

impl RawEvent {
    /// Parses `struct snapbpf_event` (little-endian host, layout asserted in capture.h).
    fn parse(data: &[u8]) -> Option<RawEvent> {
        if data.len() < EVENT_SIZE {
            return None;
        }
        let u64_at = |o: usize| u64::from_ne_bytes(data[o..o + 8].try_into().unwrap_or([0; 8]));
        Some(RawEvent {
            index: u64_at(0),
            ts_ns: u64_at(8),
            nr_pages: u32::from_ne_bytes(data[16..20].try_into().unwrap_or([0; 4])),
            source: data[20],
            order: data[21],
        })
    }
}

/// Errors of [`PageCacheCapture::start`].
#[derive(Debug, thiserror::Error)]
pub enum CaptureStartError {
    /// The file to trace could not be inspected.
    #[error("cannot stat {path}: {source}")]
    Stat {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path is not a regular file.
    #[error("{path} is not a regular file; only regular files have page-cache pages to trace")]
    NotRegularFile {
        /// The file.
        path: PathBuf,
    },
    /// The file lives on a filesystem whose pages the `filemap` tracepoints do not
    /// attribute to this inode.
    #[error(
        "{path} is on {fs} (magic {magic:#x}), which has no page cache of its own for this \
         inode: {hint}"
    )]
    NoPageCache {
        /// The file.
        path: PathBuf,
        /// Filesystem name.
        fs: &'static str,
        /// `statfs` magic.
        magic: i64,
        /// What to do instead.
        hint: &'static str,
    },
    /// The process lacks the capabilities to load and attach BPF tracepoint programs.
    #[error(
        "loading BPF tracepoint programs needs root, or CAP_BPF and CAP_PERFMON \
         (or CAP_SYS_ADMIN); effective capabilities are {cap_eff:#x}"
    )]
    MissingPrivileges {
        /// `CapEff` from /proc/self/status.
        cap_eff: u64,
    },
    /// tracefs is not mounted and could not be mounted at /sys/kernel/tracing.
    #[error("tracefs is not available (tried /sys/kernel/tracing and /sys/kernel/debug/tracing; mounting it failed: {source})")]
    TracefsUnavailable {
        /// The mount error.
        source: std::io::Error,
    },
    /// The kernel has no such tracepoint.
    #[error("tracepoint filemap/{name} does not exist on this kernel")]
    TracepointMissing {
        /// Tracepoint name.
        name: &'static str,
    },
    /// No trace source was requested.
    #[error("CaptureOptions::sources is empty")]
    NoSources,
    /// The BPF object could not be opened or loaded (no BPF support, verifier
    /// rejection, missing BTF for CO-RE relocation, locked-down kernel...).
    #[error("BPF is unavailable: {stage} failed: {source}")]
    BpfUnavailable {
        /// Which step failed.
        stage: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// A program loaded but could not be attached to its tracepoint.
    #[error("attaching to tracepoint filemap/{name} failed: {source}")]
    Attach {
        /// Tracepoint name.
        name: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// The capture thread could not be started or died during setup.
    #[error("capture thread failed: {0}")]
    Thread(String),
}

/// Errors of [`PageCacheCapture::stop`].
#[derive(Debug, thiserror::Error)]
pub enum CaptureStopError {
    /// The ring buffer overflowed: the working set is incomplete. The partial capture
    /// is attached; use it only if an incomplete working set is acceptable, or retry
    /// with a larger [`CaptureOptions::ring_buffer_bytes`].
    #[error(
        "{lost} of {matched} page-cache events were lost because the BPF ring buffer was full; \
         the captured working set is incomplete (retry with a larger ring buffer)",
        lost = partial.lost_events, matched = partial.matched_events
    )]
    EventsLost {
        /// What was captured.
        partial: Box<CapturedPages>,
    },
    /// Polling the ring buffer failed.
    #[error("polling the BPF ring buffer failed: {0}")]
    Poll(#[source] libbpf_rs::Error),
    /// Reading the kernel-side counters failed.
    #[error("reading the BPF counters map failed: {0}")]
    Counters(#[source] libbpf_rs::Error),
    /// The capture thread panicked.
    #[error("the capture thread panicked")]
    ThreadPanicked,
}

/// A running capture. Dropping it without [`stop`](Self::stop) detaches the programs
/// and discards the result.
#[derive(Debug)]
pub struct PageCacheCapture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<CapturedPages, CaptureStopError>>>,
    file: TracedFile,
}

impl PageCacheCapture {
    /// Starts capturing page-cache insertions of `file` with default options.
    pub fn start(file: &Path) -> Result<Self, CaptureStartError> {
        Self::start_with(file, &CaptureOptions::default())
    }

    /// Starts a capture with explicit options. Returns once the programs are attached:
    /// every access after this returns is recorded.
    pub fn start_with(file: &Path, opts: &CaptureOptions) -> Result<Self, CaptureStartError> {
        if opts.sources.is_empty() {
            return Err(CaptureStartError::NoSources);
        }
        let traced = resolve_file(file)?;
        check_privileges()?;
        for s in &opts.sources {
            ensure_tracepoint(s.tracepoint())?;
        }
        init_libbpf_logging();

        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let opts = opts.clone();
        let thread = std::thread::Builder::new()
            .name("snapbpf-capture".into())
            .spawn(move || run_capture(traced, opts, thread_stop, ready_tx))
            .map_err(|e| CaptureStartError::Thread(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(PageCacheCapture {
                stop,
                thread: Some(thread),
                file: traced,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(CaptureStartError::Thread(
                    "exited before attaching the programs".into(),
                ))
            }
        }
    }

    /// The file being traced.
    pub fn file(&self) -> TracedFile {
        self.file
    }

    /// Detaches the programs, drains the ring buffer and returns what was captured.
    ///
    /// Fails with [`CaptureStopError::EventsLost`] (carrying the partial result) if the
    /// kernel dropped any event.
    pub fn stop(mut self) -> Result<CapturedPages, CaptureStopError> {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take().ok_or(CaptureStopError::ThreadPanicked)?;
        let mut pages = thread
            .join()
            .map_err(|_| CaptureStopError::ThreadPanicked)??;
        pages.file = Some(self.file);
        if pages.lost_events > 0 {
            tracing::warn!(
                lost = pages.lost_events,
                matched = pages.matched_events,
                "BPF ring buffer overflowed during capture"
            );
            return Err(CaptureStopError::EventsLost {
                partial: Box::new(pages),
            });
        }
        Ok(pages)
    }
}

impl Drop for PageCacheCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Body of the capture thread: open, load, attach, report readiness, drain until told
/// to stop, detach, drain the rest, read counters.
fn run_capture(
    file: TracedFile,
    opts: CaptureOptions,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), CaptureStartError>>,
) -> Result<CapturedPages, CaptureStopError> {
    let mut storage = MaybeUninit::uninit();
    let skel = match load_skel(&mut storage, &file, &opts) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(CapturedPages::default());
        }
    };

    // Run-time statistics of BPF programs are kept while this descriptor is open (the
    // kernel's cost of the capture, read when it ends).
    // SAFETY: bpf(BPF_ENABLE_STATS) with a constant type; returns a new fd or a negative
    // error.
    let stats_fd = unsafe {
        libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME)
    };
    // SAFETY: a non-negative result is a descriptor nobody else owns.
    let _stats = (stats_fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(stats_fd) });
    let start_ns = monotonic_ns();
    let started = Instant::now();
    let mut links: Vec<Link> = Vec::new();
    for src in [
        TraceSource::AddToPageCache,
        TraceSource::Fault,
        TraceSource::MapPages,
    ] {
        if !opts.sources.contains(&src) {
            continue;
        }
        let prog = match src {
            TraceSource::AddToPageCache => &skel.progs.handle_add_to_page_cache,
            TraceSource::Fault => &skel.progs.handle_fault,
            TraceSource::MapPages => &skel.progs.handle_map_pages,
        };
        match prog.attach_tracepoint(libbpf_rs::TracepointCategory::Filemap, src.tracepoint()) {
            Ok(l) => links.push(l),
            Err(source) => {
                let _ = ready.send(Err(CaptureStartError::Attach {
                    name: src.tracepoint(),
                    source,
                }));
                return Ok(CapturedPages::default());
            }
        }
    }

    let mut pages = CapturedPages {
        order_histogram: vec![0; MAX_ORDER + 1],
        ..CapturedPages::default()
    };
    {
        let mut builder = RingBufferBuilder::new();
        let sink = &mut pages;
        let poll_result = builder
            .add(&skel.maps.events, move |data: &[u8]| {
                sink.record(data);
                0
            })
            .map(|_| ())
            .and_then(|()| builder.build());
        let rb = match poll_result {
            Ok(rb) => rb,
            Err(source) => {
                let _ = ready.send(Err(CaptureStartError::BpfUnavailable {
                    stage: "opening the ring buffer",
                    source,
                }));
                return Ok(CapturedPages::default());
            }
        };
        // The caller may now run the workload.
        let _ = ready.send(Ok(()));
        drop(ready);

        while !stop.load(Ordering::Acquire) {
            // The kernel side only wakes us when the ring is a quarter full, so drain
            // after every timeout too.
            match rb.poll(opts.poll_interval).and_then(|()| rb.consume()) {
                Ok(()) => {}
                // EINTR: retry.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
                Err(e) => return Err(CaptureStopError::Poll(e)),
            }
        }
        // Detach first so no event can arrive after the final drain.
        drop(links);
        rb.consume().map_err(CaptureStopError::Poll)?;
    }
    pages.duration = started.elapsed();
    for prog in [
        &skel.progs.handle_add_to_page_cache,
        &skel.progs.handle_fault,
        &skel.progs.handle_map_pages,
    ] {
        if let Some((run_ns, runs)) = run_stats(prog.as_fd()) {
            pages.bpf_run_ns += run_ns;
            pages.bpf_runs += runs;
        }
    }
    pages.drain_cpu_ns = thread_cpu_ns();
    for ts in pages.pages.values_mut() {
        *ts = ts.saturating_sub(start_ns);
    }

    let counter = |idx: u32| -> Result<u64, CaptureStopError> {
        let per_cpu = skel
            .maps
            .counters
            .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
            .map_err(CaptureStopError::Counters)?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .map(|v| {
                u64::from_ne_bytes(v.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]))
            })
            .sum())
    };
    pages.matched_events = counter(CNT_MATCHED)?;
    pages.lost_events = counter(CNT_LOST)?;
    let emitted = counter(CNT_EMITTED)?;
    if emitted != pages.total_events {
        tracing::warn!(
            emitted,
            received = pages.total_events,
            "ring buffer event count mismatch after drain"
        );
    }
    Ok(pages)
}

/// Opens the skeleton, sets the knobs and loads it.
fn load_skel<'obj>(
    storage: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    file: &TracedFile,
    opts: &CaptureOptions,
) -> Result<skel::CaptureSkel<'obj>, CaptureStartError> {
    let bpf = |stage| move |source| CaptureStartError::BpfUnavailable { stage, source };
    let mut open = CaptureSkelBuilder::default()
        .open(storage)
        .map_err(bpf("opening the BPF object"))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or(CaptureStartError::Thread(
            "BPF object has no .rodata".into(),
        ))?;
    rodata.target_dev = file.kernel_dev;
    rodata.target_ino = file.inode;
    rodata.target_tgid = opts.process.unwrap_or(0);
    let rb = opts.ring_buffer_bytes.max(4096).next_power_of_two();
    // Wake the drain thread when a quarter of the ring is full; it also drains every
    // `poll_interval`.
    rodata.wakeup_bytes = opts.wakeup_bytes.unwrap_or(u64::from(rb / 4));
    open.maps
        .events
        .set_max_entries(rb)
        .map_err(bpf("sizing the ring buffer"))?;
    let want = |s| opts.sources.contains(&s);
    open.progs
        .handle_add_to_page_cache
        .set_autoload(want(TraceSource::AddToPageCache));
    open.progs
        .handle_fault
        .set_autoload(want(TraceSource::Fault));
    open.progs
        .handle_map_pages
        .set_autoload(want(TraceSource::MapPages));
    let skel = open.load().map_err(bpf("loading the BPF programs"))?;
    Ok(skel)
}

/// Routes libbpf's own messages to `tracing` (once per process).
fn init_libbpf_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        fn cb(level: libbpf_rs::PrintLevel, msg: String) {
            let msg = msg.trim_end();
            match level {
                libbpf_rs::PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
                libbpf_rs::PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
                libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
            }
        }
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Info, cb)));
    });
}

/// Run time (ns) and run count of the loaded BPF program `fd` (`None` for a program
/// that was not loaded).
fn run_stats(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    if fd.as_raw_fd() < 0 {
        return None;
    }
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: `info` is a writable bpf_prog_info of `len` bytes; the kernel fills at most
    // that much.
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(
            fd.as_raw_fd(),
            (&mut info as *mut libbpf_rs::libbpf_sys::bpf_prog_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((info.run_time_ns, info.run_cnt))
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// `CLOCK_MONOTONIC`, ns: the clock `bpf_ktime_get_ns()` reads.
fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks used here always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        // 254:0 (virtio disk) and 8:17.
        assert_eq!(kernel_dev(libc::makedev(254, 0)), 254 << 20);
        assert_eq!(kernel_dev(libc::makedev(8, 17)), (8 << 20) | 17);
        assert_eq!(kernel_dev(libc::makedev(259, 300)), (259 << 20) | 300);
    }

    #[test]
    fn parse_event() {
        let mut b = [0u8; EVENT_SIZE];
        b[0..8].copy_from_slice(&7u64.to_ne_bytes());
        b[8..16].copy_from_slice(&100u64.to_ne_bytes());
        b[16..20].copy_from_slice(&4u32.to_ne_bytes());
        b[20] = SRC_ADD_TO_PAGE_CACHE;
        b[21] = 2;
        let mut c = CapturedPages {
            order_histogram: vec![0; MAX_ORDER + 1],
            ..Default::default()
        };
        c.record(&b);
        b[0..8].copy_from_slice(&8u64.to_ne_bytes());
        b[8..16].copy_from_slice(&50u64.to_ne_bytes());
        b[16..20].copy_from_slice(&1u32.to_ne_bytes());
        b[20] = SRC_FAULT;
        c.record(&b);
        c.record(&b[..10]); // short record ignored
        assert_eq!(c.total_events, 2);
        assert_eq!(c.events_by_source, [1, 1, 0]);
        assert_eq!(c.order_histogram[2], 1);
        assert_eq!(
            c.pages.into_iter().collect::<Vec<_>>(),
            vec![(7, 100), (8, 50), (9, 100), (10, 100)]
        );
    }
}
