//! `snapbpf`: the paper's system (sections 3.1 and 3.2).
//!
//! **Record.** One invocation runs from a cold page cache with fault readahead off
//! (`MADV_RANDOM`, as the paper disables readahead while capturing) under the eBPF
//! page-cache capture ([`snapbpf_wss::capture`]), which keeps only the offsets of the snapshot
//! pages the VM brings in and their first-access times. Fresh allocations are filtered
//! during the recording too (whichever variant records), so they never enter the working
//! set. The offsets become
//! contiguous ranges sorted by earliest access ([`snapbpf_wss::workingset`]) in a small file
//! beside the snapshot, bound to the memory file's identity. Recording again (another
//! input) merges into it: union of pages, ordered by earliest access.
//!
//! **Restore.** The ranges are read ahead straight from the snapshot's memory file into
//! the page cache, in order, on a thread started before the VM is created, so I/O overlaps
//! VM creation and the vCPU. Guest memory is the usual `MAP_PRIVATE` mapping (128 KiB
//! read-around for pages outside the working set, as Linux-RA), so every VM of the
//! snapshot shares the prefetched pages. Fresh guest allocations are backed with
//! anonymous memory as the guest reports them ([`crate::pv`]).
//!
//! `--no-prefetch` keeps only the filtering (the slides' "PTE mark" bar); `--no-pv` keeps
//! only the prefetch.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use snapbpf_vmm::{ExitHandler, FaultReadahead, GuestMemory, IgnoreHints};

use super::interface::{
    self, ExternalBacking, ExternalPlan, ExternalRecorder, Helpers, PrefetchReport, RecordBacking,
    RecordReport, Restored, Strategy, StrategyError,
};
use super::spec::{OptionInfo, OptionRole, StrategyInfo, StrategyOptions, Vmm, THP};
use crate::pv::FreshAnonymizer;
use crate::snapshot::Snapshot;
use crate::store_memory::FromStore;
use snapbpf_store::fsutil;
use snapbpf_wss::capture::PageCacheCapture;
use snapbpf_wss::prefetch::{self, PrefetchMethod, PrefetchOptions};
use snapbpf_wss::readahead::DEFAULT_WINDOW_KIB;
use snapbpf_wss::workingset::WorkingSet;

/// File name of the working set in the snapshot directory.
const WS_FILE: &str = snapbpf_wss::workingset::SNAPBPF_FILE;

/// SnapBPF's own failures: the eBPF capture of its record phase.
#[derive(Debug, thiserror::Error)]
enum SnapbpfError {
    /// The eBPF capture could not start.
    #[error("working-set capture")]
    CaptureStart(#[from] snapbpf_wss::capture::CaptureStartError),
    /// The eBPF capture failed when stopped.
    #[error("working-set capture")]
    CaptureStop(#[from] snapbpf_wss::capture::CaptureStopError),
    /// The capture lost events: the working set would be incomplete.
    #[error("working-set capture: the ring buffer overflowed: {lost} page events were lost, the working set would be incomplete")]
    CaptureLost {
        /// Events lost.
        lost: u64,
    },
    /// Working sets could not be merged.
    #[error("merging the working sets")]
    Merge(#[from] snapbpf_wss::workingset::MergeError),
    /// A working set could not be written.
    #[error(transparent)]
    Write(#[from] snapbpf_wss::workingset::WriteError),
}

impl From<SnapbpfError> for StrategyError {
    fn from(e: SnapbpfError) -> Self {
        StrategyError::own(INFO.name, e)
    }
}

/// Threads that map prefetched ranges: with huge pages each one waits for a 2 MiB read,
/// so a few keep the device busy (it serves about 32 requests in parallel).
const PREMAP_THREADS: usize = 4;

/// Registry row of `snapbpf`.
pub(super) static INFO: StrategyInfo = StrategyInfo::new::<SnapbpfOptions>(
    "snapbpf",
    "SnapBPF: eBPF-recorded offsets prefetched into the shared page cache; fresh allocations anonymous via a PV hint",
)
.options(&[
    OptionInfo::flag("no-prefetch", "do not prefetch the working set (PV filtering only)"),
    OptionInfo::flag("no-pv", "do not filter fresh guest allocations (prefetch only)"),
    OptionInfo::flag(
        "no-premap",
        "prefetch into the page cache without mapping the ranges into the VMM's page tables (the paper's prefetch exactly)",
    ),
    OptionInfo::flag(
        "4k",
        "4 KiB page-cache pages, the paper's design (default: 2 MiB folios where transparent huge pages are on and no-premap and store are not given)",
    ),
    THP,
    OptionInfo::valued(
        "store",
        "SOCKET",
        "map guest memory from the in-memory snapshot store's memfd (`snapbpf store serve`) instead of the memory file: every VM shares the store's pages, with no disk I/O",
    )
    .role(OptionRole::StoreSocket),
])
.records(&[WS_FILE])
.vmms(&[Vmm::Builtin, Vmm::Firecracker]);

/// Options of `snapbpf`: the paper's breakdown variants, huge pages, and the store.
#[derive(Debug, Clone, Default)]
pub(super) struct SnapbpfOptions {
    /// Skip the working-set prefetch.
    no_prefetch: bool,
    /// Skip fresh-allocation filtering.
    no_pv: bool,
    /// Prefetch into the page cache only, without mapping the ranges.
    no_premap: bool,
    /// Back guest memory with huge page-cache folios (and fail where they cannot be had).
    thp: bool,
    /// Back guest memory with 4 KiB page-cache pages: the paper's design.
    base_pages: bool,
    /// Map guest memory from this in-memory snapshot store instead of the memory file.
    store: Option<PathBuf>,
}

impl StrategyOptions for SnapbpfOptions {
    const INFO: &'static StrategyInfo = &INFO;
    fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        match (name, value) {
            ("no-prefetch", _) => self.no_prefetch = true,
            ("no-pv", _) => self.no_pv = true,
            ("no-premap", _) => self.no_premap = true,
            ("thp", _) if self.base_pages => return Err("thp and 4k exclude each other".into()),
            ("4k", _) if self.thp => return Err("4k and thp exclude each other".into()),
            ("thp", _) => self.thp = true,
            ("4k", _) => self.base_pages = true,
            ("store", Some(path)) if !path.is_empty() => self.store = Some(PathBuf::from(path)),
            ("store", _) => return Err("needs a socket path".into()),
            (other, _) => return Err(format!("unexpected option {other}")),
        }
        Ok(())
    }
    fn render(&self) -> Vec<String> {
        [
            (self.no_prefetch, "no-prefetch"),
            (self.no_pv, "no-pv"),
            (self.no_premap, "no-premap"),
            (self.thp, "thp"),
            (self.base_pages, "4k"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_string())
        .chain(self.store.iter().map(|p| format!("store={}", p.display())))
        .collect()
    }
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(
            SnapBpf::new(!self.no_prefetch, !self.no_pv, !self.no_premap)
                .with_pages(match (self.thp, self.base_pages) {
                    (true, _) => Pages::Huge,
                    (_, true) => Pages::Base,
                    _ => Pages::Auto,
                })
                .with_store(self.store.clone()),
        )
    }
}

/// The page size guest memory is backed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pages {
    /// 2 MiB page-cache folios where they can be had, else 4 KiB pages (the default):
    /// huge where transparent huge pages are on, unless the prefetch must not map
    /// (`no-premap`: the paper's `WILLNEED` prefetch fills the cache with 4 KiB folios) or
    /// memory comes from the store (whose own backing decides).
    Auto,
    /// 4 KiB pages: the paper's design.
    Base,
    /// 2 MiB folios, or fail.
    Huge,
}

/// The SnapBPF strategy and its breakdown variants.
#[derive(Debug, Clone)]
struct SnapBpf {
    prefetch: bool,
    pv: bool,
    premap: bool,
    pages: Pages,
    store: Option<PathBuf>,
}

impl SnapBpf {
    /// Prefetch and/or PV filtering; `premap` also maps prefetched ranges into the VMM's
    /// page tables (see [`prefetch::premap`]).
    fn new(prefetch: bool, pv: bool, premap: bool) -> Self {
        Self {
            prefetch,
            pv,
            premap,
            pages: Pages::Base,
            store: None,
        }
    }

    /// Maps guest memory from the in-memory snapshot store at `socket` (its sealed memfd
    /// of the snapshot) instead of the memory file. The pages are already in memory, shared
    /// by every VM: nothing is read ahead; with pre-mapping the working set's ranges are
    /// still mapped into the page tables before the vCPU needs them.
    fn with_store(mut self, socket: Option<PathBuf>) -> Self {
        self.store = socket;
        self
    }

    /// Backs guest memory with `pages` (see [`Pages`]).
    fn with_pages(mut self, pages: Pages) -> Self {
        self.pages = pages;
        self
    }

    /// Whether this restore backs guest memory with huge folios, and for `Auto`, why not
    /// when it does not.
    fn huge_pages(&self) -> (bool, Option<&'static str>) {
        match self.pages {
            Pages::Huge => (true, None),
            Pages::Base => (false, None),
            Pages::Auto if self.store.is_some() || !self.premap => (false, None),
            Pages::Auto if !snapbpf_vmm::huge_pages_available() => (
                false,
                Some("transparent huge pages are off (/sys/kernel/mm/transparent_hugepage/enabled is \"never\")"),
            ),
            Pages::Auto => (true, None),
        }
    }

    fn ws_path(snapshot: &Snapshot) -> PathBuf {
        snapshot.artifact_path(WS_FILE)
    }

    /// The exit handler: fresh allocations anonymous (on huge pages where the guest's
    /// memory is, over the whole 2 MiB blocks a hinted range covers), or hints ignored.
    fn handler(&self, huge_pages: bool) -> Box<dyn ExitHandler + Send> {
        if self.pv {
            Box::new(FreshAnonymizer::new(huge_pages))
        } else {
            Box::new(IgnoreHints)
        }
    }
}

/// SnapBPF's working set recorded beside `snapshot`.
fn load_working_set(snapshot: &Snapshot) -> Result<WorkingSet, StrategyError> {
    interface::recorded_working_set(snapshot)
}

/// Bytes of a base page.
const PAGE_BYTES: u64 = snapbpf_store::PAGE_SIZE;
/// Bytes of a huge page-cache folio.
const HUGE_REGION: u64 = 2 << 20;

/// Working-set pages a 2 MiB region needs before it is backed by a 2 MiB folio: 1/16 of
/// it. A 2 MiB fault reads 512 pages to save 511 faults; where a region holds only a few
/// working-set pages (a working set spread thinly over a large memory), the read costs
/// far more than the faults it saves: footprint:2048:16 (8,207 pages, 4 in each 2 MiB)
/// read its whole 2 GiB snapshot into the page cache on 2 MiB folios, E2E 1060 ms cold,
/// against 32 MiB and 213 ms with its thin regions on 4 KiB pages. Regions with no
/// working-set page stay huge: what the guest touches there is fresh memory (anonymous
/// 2 MiB pages; bert's E2E doubles on 4 KiB ones).
const HUGE_MIN_PAGES: u64 = HUGE_REGION / PAGE_BYTES / 16;

/// The 2 MiB regions of `ranges` too thin for a huge folio (some working-set pages, fewer
/// than [`HUGE_MIN_PAGES`]), merged into runs of `(offset, len)` in offset order.
fn thin_regions(ranges: &[snapbpf_wss::workingset::PageRange]) -> Vec<(u64, u64)> {
    let mut pages_in = std::collections::BTreeMap::<u64, u64>::new();
    for r in ranges {
        let (mut at, end) = (r.offset(), r.offset() + r.len_bytes());
        while at < end {
            let region = at / HUGE_REGION;
            let next = ((region + 1) * HUGE_REGION).min(end);
            *pages_in.entry(region).or_default() += (next - at) / PAGE_BYTES;
            at = next;
        }
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (region, _) in pages_in.into_iter().filter(|&(_, n)| n < HUGE_MIN_PAGES) {
        match runs.last_mut() {
            Some((off, len)) if *off + *len == region * HUGE_REGION => *len += HUGE_REGION,
            _ => runs.push((region * HUGE_REGION, HUGE_REGION)),
        }
    }
    runs
}

impl Strategy for SnapBpf {
    fn shared_memory_bytes(&self, snapshot: &Snapshot) -> u64 {
        self.store.as_ref().map_or(0, |socket| {
            snapbpf_memstore::held_bytes(socket, &snapshot.meta.memory)
        })
    }

    fn check(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        if self.prefetch {
            load_working_set(snapshot)?;
        }
        Ok(())
    }

    fn describe_recording(&self, snapshot: &Snapshot) -> Result<String, StrategyError> {
        let ws = load_working_set(snapshot)?;
        let file_bytes = std::fs::metadata(Self::ws_path(snapshot)).map_or(0, |m| m.len());
        Ok(format!(
            "{} pages ({:.1} MiB) in {} ranges from {} capture(s), {file_bytes} bytes of offsets ({:.3} % of the working set), bound to this snapshot",
            ws.total_pages(),
            ws.total_bytes() as f64 / (1 << 20) as f64,
            ws.ranges.len(),
            ws.meta.captures,
            100.0 * file_bytes as f64 / ws.total_bytes().max(1) as f64,
        ))
    }

    fn prefetched_ranges(
        &self,
        snapshot: &Snapshot,
    ) -> Option<Result<Vec<snapbpf_wss::workingset::PageRange>, StrategyError>> {
        self.prefetch
            .then(|| load_working_set(snapshot).map(|ws| ws.ranges))
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let requested = Instant::now();
        // From the store, the working set is in memory already: nothing to read ahead
        // (what the store does not hold is paged from the memory file on demand).
        let (memory, window, file) = match &self.store {
            Some(socket) => {
                let mapped = FromStore::fetch(socket, snapshot)?.map_private(snapshot)?;
                (mapped.memory, mapped.readahead_kib, None)
            }
            None => {
                let (file, window) = interface::open_memory(snapshot, Some(DEFAULT_WINDOW_KIB))?;
                let memory = GuestMemory::map_file_private(&file, snapshot.meta.mem_bytes)?;
                (memory, window, Some(file))
            }
        };
        memory.set_fault_readahead(FaultReadahead::On)?;
        let (huge_pages, fallback) = self.huge_pages();
        if let Some(why) = fallback {
            tracing::warn!("snapbpf: 4 KiB pages: {why}");
        }
        // Huge folios except where the working set is too thin to pay for them (the
        // default; `thp` asks for them everywhere).
        let working_set = match self.prefetch || self.pages == Pages::Auto {
            true => load_working_set(snapshot).ok().map(|ws| ws.ranges),
            false => None,
        };
        let huge = match (&working_set, self.pages) {
            _ if !huge_pages => HugeCover::Nothing,
            (Some(ranges), Pages::Auto) => HugeCover::Except(thin_regions(ranges)),
            _ => HugeCover::All,
        };
        if huge_pages {
            memory.use_huge_pages()?;
        }
        if let HugeCover::Except(thin) = &huge {
            memory.use_base_pages_in(thin)?;
        }
        // Only the default says when the filesystem gave no large folios (`thp` asked for
        // them whatever they cost; the measurement shows it).
        let check_folios = huge_pages && self.pages == Pages::Auto;
        let readahead = file.is_some();
        let premap = self.premap || huge_pages;
        // Prefetch on a thread started before the VM is built: its I/O overlaps VM
        // creation and the vCPU. With pre-mapping, the same thread then maps the
        // prefetched ranges, in order, into this process's page tables.
        let mut helpers = Helpers::none();
        if self.prefetch {
            let ranges = match working_set {
                Some(ranges) => ranges,
                None => load_working_set(snapshot)?.ranges,
            };
            let prefetcher = Prefetcher {
                ranges,
                huge,
                mapping: premap.then(|| memory.populator()),
                file,
                readahead,
                check_folios,
                host_lock: format!("prefetch-{}", snapshot.meta.memory.digest_hex()),
                requested,
            };
            helpers
                .spawn("snapbpf-prefetch", move || prefetcher.run())
                .map_err(StrategyError::io("start the prefetch thread"))?;
        }
        Ok(Restored {
            memory,
            handler: self.handler(huge_pages),
            pv_hints: self.pv,
            helpers,
            prefetched: None,
            readahead_kib: window,
        })
    }

    fn check_vmm_options(&self, vmm: Vmm) -> Result<(), StrategyError> {
        if vmm == Vmm::Builtin {
            return Ok(());
        }
        if self.store.is_some() {
            return Err(StrategyError::NeedsBuiltinVmm {
                option: "store",
                why: "guest memory is mapped from the store's memfd in the VMM's process",
            });
        }
        if self.pages == Pages::Huge {
            return Err(StrategyError::NeedsBuiltinVmm {
                option: "thp",
                why: "huge pages are advised on the VMM's own mapping of guest memory",
            });
        }
        Ok(())
    }

    fn external(&self, snapshot: &Snapshot) -> Result<ExternalPlan, StrategyError> {
        // The VMM maps guest memory in its own process: nothing here can premap it, advise
        // huge pages on it or back fresh allocations with anonymous memory; SnapBPF is its
        // prefetch into the page cache, the paper's design on Firecracker.
        self.check_vmm_options(Vmm::Firecracker)?;
        let mut helpers = Helpers::none();
        if self.prefetch {
            let (file, _) = interface::open_memory(snapshot, Some(DEFAULT_WINDOW_KIB))?;
            let prefetcher = Prefetcher {
                ranges: load_working_set(snapshot)?.ranges,
                huge: HugeCover::Nothing,
                mapping: None,
                file: Some(file),
                readahead: true,
                check_folios: false,
                host_lock: format!("prefetch-{}", snapshot.meta.memory.digest_hex()),
                requested: Instant::now(),
            };
            // Started before the VMM loads the snapshot, so its reads overlap the load.
            helpers
                .spawn("snapbpf-prefetch", move || prefetcher.run())
                .map_err(StrategyError::io("start the prefetch thread"))?;
        }
        Ok(ExternalPlan {
            backing: ExternalBacking::File {
                readahead_kib: DEFAULT_WINDOW_KIB,
            },
            helpers,
        })
    }

    fn record_external(
        &self,
        snapshot: &Snapshot,
        _input: u32,
        recorder: &dyn ExternalRecorder,
    ) -> Result<RecordReport, StrategyError> {
        // The same capture around the VMM's run; without PV hints (the VMM cannot act on
        // them), pages the guest allocates fresh are captured too.
        self.capture_around(snapshot, || recorder.run(RecordBacking::File).map(|_| ()))
    }

    fn record(
        &self,
        snapshot: &Snapshot,
        input: u32,
        timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        self.capture_around(snapshot, || {
            // Readahead off while capturing, so only the pages the guest touches come in.
            let (file, _) = interface::open_memory(snapshot, None)?;
            let memory = GuestMemory::map_file_private(&file, snapshot.meta.mem_bytes)?;
            memory.set_fault_readahead(FaultReadahead::Off)?;
            // Always filter while recording, whatever the variant: the working set is a
            // property of the snapshot shared by every variant, and fresh allocations are
            // never snapshot data worth prefetching.
            interface::run_recorded(
                snapshot,
                Restored {
                    handler: Box::new(FreshAnonymizer::default()),
                    pv_hints: true,
                    ..Restored::plain(memory)
                },
                input,
                timeout,
            )
        })
    }
}

impl SnapBpf {
    /// The record phase around `run` (one recorded invocation under either VMM): the
    /// memory file evicted, the eBPF capture of its pages started, `run`, the capture
    /// stopped (a lost event fails the record), the working set merged into any recorded
    /// before and written.
    fn capture_around(
        &self,
        snapshot: &Snapshot,
        run: impl FnOnce() -> Result<(), StrategyError>,
    ) -> Result<RecordReport, StrategyError> {
        let path = snapshot.memory_path();
        let ws_path = Self::ws_path(snapshot);
        let started = Instant::now();
        fsutil::evict(&path)?;
        let capture = PageCacheCapture::start(&path).map_err(SnapbpfError::from)?;
        let run = run();
        let captured = capture.stop().map_err(SnapbpfError::from)?;
        run?;
        if captured.lost_events > 0 {
            return Err(SnapbpfError::CaptureLost {
                lost: captured.lost_events,
            }
            .into());
        }
        let id = snapshot.meta.memory;
        let mut ws = WorkingSet::from_capture(id, &captured);
        // Recording another input merges into the existing working set.
        if let Ok(existing) = WorkingSet::read_for(&ws_path, &id) {
            ws = WorkingSet::merge(&[existing, ws]).map_err(SnapbpfError::from)?;
        }
        ws.write_atomic(&ws_path).map_err(SnapbpfError::from)?;
        let size = std::fs::metadata(&ws_path).map(|m| m.len()).unwrap_or(0);
        Ok(RecordReport {
            artifacts: vec![(ws_path, size)],
            ms: started.elapsed().as_secs_f64() * 1e3,
            pages: ws.total_pages(),
            capture_cpu_ms: Some((captured.bpf_run_ns + captured.drain_cpu_ns) as f64 / 1e6),
        })
    }
}

/// Where guest memory is advised huge.
#[derive(Debug)]
enum HugeCover {
    /// Nowhere: 4 KiB pages.
    Nothing,
    /// All of it.
    All,
    /// All but these `(offset, len)` runs of 2 MiB regions ([`thin_regions`]).
    Except(Vec<(u64, u64)>),
}

impl HugeCover {
    fn covers(&self, offset: u64) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Except(runs) => {
                // Runs are in offset order: the last one starting at or before `offset`.
                let i = runs.partition_point(|&(start, _)| start <= offset);
                i == 0 || offset >= runs[i - 1].0 + runs[i - 1].1
            }
        }
    }
}

/// SnapBPF's prefetch for one restore, run on a helper thread beside the VMM: one
/// prefetch of a snapshot per host (the first restore leads; concurrent ones ride its
/// reads), then, where it may map guest memory, the recorded ranges premapped in order.
struct Prefetcher {
    /// The recorded ranges, in first-access order.
    ranges: Vec<snapbpf_wss::workingset::PageRange>,
    /// Which ranges lie in huge folios (pre-mapping reads them whole); the others lie on
    /// 4 KiB pages and are read ahead with `WILLNEED`.
    huge: HugeCover,
    /// The VMM's guest memory, to premap into (`None`: the VMM is another process, or
    /// premapping is off).
    mapping: Option<snapbpf_vmm::Populator>,
    /// The memory file (`None`: memory comes from the store).
    file: Option<File>,
    /// Read the thin ranges ahead with `WILLNEED`; otherwise premapping reads.
    readahead: bool,
    /// Say when the page cache gives no large folios.
    check_folios: bool,
    /// The host-wide lock of this snapshot's prefetch.
    host_lock: String,
    /// When the restore was requested.
    requested: Instant,
}

impl Prefetcher {
    fn run(self) -> crate::run::HelperResult {
        let mut report = PrefetchReport::default();
        let mut elapsed = Duration::ZERO;
        // One prefetch of a snapshot per host: while one restore's prefetch
        // runs, concurrent restores ride it (the page cache holds one copy, and
        // their pre-mapping waits for pages in flight) instead of asking for
        // the same reads again. The lock is held until this thread is done.
        let (leading, _held) = match snapbpf_os::lock::try_host_lock(&self.host_lock) {
            Ok(Some(lock)) => (true, Some(lock)),
            Ok(None) => (false, None),
            Err(e) => {
                tracing::debug!("no host-wide prefetch lock ({e}): prefetching");
                (true, None)
            }
        };
        let since_request = || Some(self.requested.elapsed().as_secs_f64() * 1e3);
        if leading {
            // Pages already in the page cache cost nothing: not asked for again.
            let todo = match &self.file {
                Some(file) => prefetch::missing_ranges(file, &self.ranges)
                    .unwrap_or_else(|_| self.ranges.clone()),
                None => self.ranges.clone(),
            };
            report.first_request_ms = since_request();
            // Ranges in huge folios (and all of them without read-ahead: the store):
            // pre-mapping brings them in, reading what is not in the cache yet.
            let (ahead, mapped): (Vec<_>, Vec<_>) = todo.into_iter().partition(|r| {
                self.readahead && self.file.is_some() && !self.huge.covers(r.offset())
            });
            report.bytes = mapped.iter().map(|r| r.len_bytes()).sum();
            report.ranges = mapped.len() as u64;
            if let (Some(file), false) = (&self.file, ahead.is_empty()) {
                let stats = prefetch::prefetch_with(
                    file,
                    &ahead,
                    &PrefetchOptions {
                        method: PrefetchMethod::default(),
                        max_request_bytes: None,
                    },
                )?;
                report.bytes += stats.bytes;
                report.ranges += stats.ranges;
                elapsed += stats.elapsed;
            }
        }
        if let Some(m) = self.mapping {
            elapsed += prefetch::premap(m, &self.ranges, PREMAP_THREADS)?.elapsed;
            // The first few ranges with a page-cache page mapped tell.
            let probes = if self.check_folios { 16 } else { 0 };
            let large = self
                .ranges
                .iter()
                .filter(|r| self.huge.covers(r.offset()))
                .take(probes)
                .find_map(|r| m.large_folio_at(r.offset()));
            if large == Some(false) {
                tracing::warn!(
                    "snapbpf: the memory file's page cache holds no 2 MiB folios (its filesystem does not support large folios?): the guest runs on 4 KiB pages; `snapbpf:4k` skips the huge-page prefetch"
                );
            }
        }
        report.ms = elapsed.as_secs_f64() * 1e3;
        Ok(Some(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapbpf_wss::workingset::PageRange;

    fn range(start: u64, pages: u64) -> PageRange {
        PageRange {
            start,
            pages,
            first_access_ns: 0,
        }
    }

    #[test]
    fn regions_thin_in_the_working_set_get_base_pages() {
        let per_region = HUGE_REGION / PAGE_BYTES;
        let ranges = [
            // Region 0: 40 pages, dense enough.
            range(0, 40),
            // Region 1: 9 pages, too thin.
            range(per_region, 1),
            range(per_region + 64, 1),
            range(per_region + 128, 7),
            // Regions 2 and 3: one range across their boundary, 20 + 20 pages: both thin.
            range(3 * per_region - 20, 40),
            // Region 4: none. Regions 5 and 6: 600 pages from region 5's middle: dense.
            range(5 * per_region + 300, 600),
            // Region 9: one page, thin.
            range(9 * per_region + 5, 1),
        ];
        let runs = thin_regions(&ranges);
        assert_eq!(
            runs,
            vec![
                (HUGE_REGION, 3 * HUGE_REGION),
                (9 * HUGE_REGION, HUGE_REGION)
            ]
        );
        let huge = HugeCover::Except(runs);
        assert!(huge.covers(0) && huge.covers(HUGE_REGION - 1));
        assert!(!huge.covers(HUGE_REGION) && !huge.covers(4 * HUGE_REGION - 1));
        assert!(huge.covers(4 * HUGE_REGION) && huge.covers(9 * HUGE_REGION - 1));
        assert!(!huge.covers(9 * HUGE_REGION) && huge.covers(10 * HUGE_REGION));
        assert!(HugeCover::All.covers(12345) && !HugeCover::Nothing.covers(0));
    }
}
