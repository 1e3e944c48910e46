//! `faasnap`: FaaSnap (Ao et al., EuroSys '22), mincore capture and a working-set file
//! mapped over the snapshot, as SnapBPF §2.1–2.2 describes it.
//!
//! - **Record** (`snapbpf record --strategy faasnap`): the snapshot memory file is evicted,
//!   and one invocation runs over a `MAP_PRIVATE` mapping of it with `MADV_RANDOM` (so the
//!   page cache holds exactly the pages the VM fetched). A thread calls `mincore` on the
//!   file every [`SCAN_INTERVAL`] and once more at the end, noting the scan in which each
//!   page first appeared. Afterwards the whole snapshot is scanned for all-zero pages.
//!   The working set is the fetched non-zero pages; runs of them separated by at most
//!   [`MERGE_GAP_PAGES`] other pages are coalesced into regions (as FaaSnap does, to keep
//!   the number of mappings manageable, at the cost of a larger file). `faasnap.ws` holds the
//!   regions' contents, in the order their first page was fetched; `faasnap.meta` (an
//!   [`snapbpf_store::artifact`] bound to the memory file's identity) lists the regions and the
//!   zero regions that lie outside them.
//! - **Restore**: the snapshot is mapped `MAP_PRIVATE` (Linux's 128 KiB read-around, as
//!   `linux-ra`), each working-set region of `faasnap.ws` is mapped `MAP_FIXED | MAP_PRIVATE`
//!   over its guest range, and each zero region gets anonymous memory
//!   (`MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS`). A thread loads `faasnap.ws` into the page
//!   cache with buffered reads while the vCPU runs, reading only what is not resident yet
//!   and only in one VM at a time (an `flock` on the file): the working set is loaded once
//!   per host and shared by every VM through the page cache.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapbpf_vmm::{FaultReadahead, GuestMemory};

use super::interface::{
    self, Helpers, PrefetchReport, RecordReport, Restored, Strategy, StrategyError,
};
use super::spec::{StrategyInfo, StrategyOptions};
use crate::snapshot::Snapshot;
use snapbpf_store::artifact;
use snapbpf_store::fsutil;
use snapbpf_store::FileIdentity;
use snapbpf_wss::readahead::{self, DEFAULT_WINDOW_KIB};

/// Working-set file: the regions' contents, concatenated.
const WS_FILE: &str = "faasnap.ws";
/// Metadata: regions, zero regions, binding.
const META_FILE: &str = "faasnap.meta";
const META_KIND: &str = "faasnap-meta";

/// Working-set runs separated by at most this many non-working-set pages are merged into
/// one region (FaaSnap's region coalescing).
const MERGE_GAP_PAGES: u64 = 32;
/// Period of the `mincore` scans during the recorded invocation.
const SCAN_INTERVAL: Duration = Duration::from_millis(1);
/// At most this many zero regions are mapped (the smallest are dropped beyond it: they are
/// then read from the snapshot, still correct) to stay far below `vm.max_map_count`.
const MAX_ZERO_REGIONS: usize = 16384;

const PAGE: u64 = 4096;

/// Header of `faasnap.meta`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetaHeader {
    /// Identity of the snapshot memory file the working set was recorded from.
    pub memory: FileIdentity,
    /// Page size.
    pub page_size: u64,
    /// Size of `faasnap.ws`.
    pub ws_bytes: u64,
    /// Content of `faasnap.ws` (absent in metadata of snapbpf 0.1, which is refused).
    #[serde(default)]
    pub ws: Option<FileIdentity>,
    /// Fetched non-zero pages (the working set before coalescing).
    pub ws_pages: u64,
    /// All-zero pages found in the snapshot.
    pub zero_pages: u64,
    /// [`MERGE_GAP_PAGES`] used.
    pub merge_gap_pages: u64,
    /// Input of the recorded invocation.
    pub input: u32,
}

/// A working-set region: `len` bytes at guest/file offset `offset`, stored at `ws_offset`
/// of `faasnap.ws`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    /// Offset in the snapshot memory file (= guest-physical address).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in `faasnap.ws`.
    pub ws_offset: u64,
}

/// Validated metadata.
#[derive(Debug, Clone)]
struct Meta {
    /// Header.
    pub header: MetaHeader,
    /// Working-set regions in `faasnap.ws` order.
    pub regions: Vec<Region>,
    /// Zero regions `(offset, len)`, sorted, disjoint from the working-set regions.
    pub zeros: Vec<(u64, u64)>,
}

fn encode(regions: &[Region], zeros: &[(u64, u64)]) -> Vec<u8> {
    let mut v = vec![regions.len() as u64];
    for r in regions {
        v.extend([r.offset, r.len, r.ws_offset]);
    }
    v.push(zeros.len() as u64);
    for &(o, l) in zeros {
        v.extend([o, l]);
    }
    artifact::u64_bytes(&v)
}

/// Working-set regions and zero regions.
type Decoded = (Vec<Region>, Vec<(u64, u64)>);

fn decode(payload: &[u8], mem_bytes: u64, ws_bytes: u64) -> Result<Decoded, String> {
    let v = artifact::u64s(payload).ok_or("payload is not u64s")?;
    let mut it = v.into_iter();
    let mut next = || it.next().ok_or("payload too short");
    let n = next()?;
    if n > mem_bytes / PAGE {
        return Err("too many regions".into());
    }
    let mut regions = Vec::with_capacity(n as usize);
    let mut guest = Vec::new();
    for _ in 0..n {
        let r = Region {
            offset: next()?,
            len: next()?,
            ws_offset: next()?,
        };
        let ok = r.len > 0
            && [r.offset, r.len, r.ws_offset].iter().all(|v| v % PAGE == 0)
            && r.offset.checked_add(r.len).is_some_and(|e| e <= mem_bytes)
            && r.ws_offset
                .checked_add(r.len)
                .is_some_and(|e| e <= ws_bytes);
        if !ok {
            return Err(format!("bad region {r:?}"));
        }
        guest.push((r.offset, r.len));
        regions.push(r);
    }
    let z = next()?;
    if z > mem_bytes / PAGE {
        return Err("too many zero regions".into());
    }
    let mut zeros = Vec::with_capacity(z as usize);
    for _ in 0..z {
        let (o, l) = (next()?, next()?);
        if l == 0
            || o % PAGE != 0
            || l % PAGE != 0
            || o.checked_add(l).is_none_or(|e| e > mem_bytes)
        {
            return Err(format!("bad zero region {o:#x}+{l:#x}"));
        }
        guest.push((o, l));
        zeros.push((o, l));
    }
    if next().is_ok() {
        return Err("trailing data".into());
    }
    guest.sort_unstable();
    if guest.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
        return Err("overlapping regions".into());
    }
    Ok((regions, zeros))
}

/// Loads `faasnap.meta` and checks it against `snapshot` and the content of `faasnap.ws`
/// (hashed only when the verification cache cannot vouch for it, or always with
/// `verify_now`).
fn load_meta(snapshot: &Snapshot, verify_now: bool) -> Result<Meta, StrategyError> {
    let interface::Recorded {
        header,
        payload,
        path,
        data_path,
    } = interface::read_recorded(
        snapshot,
        "faasnap",
        META_FILE,
        WS_FILE,
        META_KIND,
        |h: &MetaHeader| &h.memory,
    )?;
    let (regions, zeros) = validate_meta(&header, &payload, snapshot.meta.mem_bytes)
        .map_err(|reason| interface::bad_artifact(&path, reason))?;
    interface::check_data(&data_path, header.ws.as_ref(), verify_now)?;
    Ok(Meta {
        header,
        regions,
        zeros,
    })
}

/// The regions of metadata whose header and payload agree with each other and fit a
/// memory file of `mem` bytes.
fn validate_meta(header: &MetaHeader, payload: &[u8], mem: u64) -> Result<Decoded, String> {
    if header.page_size != PAGE {
        return Err(format!("page size {}", header.page_size));
    }
    let (regions, zeros) = decode(payload, mem, header.ws_bytes)?;
    // Each region fits the working-set file, but many may still overflow a sum.
    if regions
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.len))
        != Some(header.ws_bytes)
    {
        return Err("regions do not add up to the working-set size".into());
    }
    if header.ws.is_some_and(|ws| ws.size != header.ws_bytes) {
        return Err("the working-set sizes it names disagree".into());
    }
    Ok((regions, zeros))
}

/// Metadata as the record phase writes it, for fuzzing.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let regions = [
        Region {
            offset: 0,
            len: 2 * PAGE,
            ws_offset: 0,
        },
        Region {
            offset: 10 * PAGE,
            len: PAGE,
            ws_offset: 2 * PAGE,
        },
    ];
    let header = MetaHeader {
        memory: interface::fuzz_memory(),
        page_size: PAGE,
        ws_bytes: 3 * PAGE,
        ws: Some(FileIdentity::of_zeros(3 * PAGE)),
        ws_pages: 3,
        zero_pages: 4,
        merge_gap_pages: MERGE_GAP_PAGES,
        input: 0,
    };
    artifact::encode(
        META_KIND,
        &header,
        &encode(&regions, &[(4 * PAGE, 4 * PAGE)]),
    )
    .into_iter()
    .collect()
}

/// The loader's checks on one metadata file's bytes, for fuzzing.
fn fuzz_check(bytes: &[u8]) -> bool {
    interface::decode_for_fuzz(bytes, META_KIND, |h: &MetaHeader| &h.memory)
        .is_some_and(|(h, p)| validate_meta(&h, &p, interface::FUZZ_MEMORY_BYTES).is_ok())
}

/// FaaSnap.
#[derive(Debug, Clone, Copy, Default)]
struct Faasnap;

/// Registry row of `faasnap`.
pub(super) static INFO: StrategyInfo = StrategyInfo::new::<FaasnapOptions>(
    "faasnap",
    "FaaSnap: mincore-recorded working-set file mapped over the snapshot and read ahead; zero pages anonymous",
)
.records(&[WS_FILE, META_FILE])
.loader(interface::LoaderFuzz {
    seeds: fuzz_seeds,
    check: fuzz_check,
});

/// Options of `faasnap`: none.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FaasnapOptions {}

impl StrategyOptions for FaasnapOptions {
    const INFO: &'static StrategyInfo = &INFO;
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(Faasnap)
    }
}

/// Loads the parts of `ws` that are not resident, in file order, with buffered reads;
/// only one process at a time (others skip: the page cache is shared).
fn load_working_set(ws: &File, regions: &[Region]) -> std::io::Result<PrefetchReport> {
    let started = Instant::now();
    // SAFETY: flock on a descriptor we own; released when `ws` is closed or below.
    if unsafe { libc::flock(ws.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(PrefetchReport::default());
    }
    let resident = fsutil::residency(ws)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut ranges) = (0u64, 0u64);
    for r in regions {
        let mut off = r.ws_offset;
        let end = r.ws_offset + r.len;
        let mut counted = false;
        while off < end {
            let chunk = (end - off).min(buf.len() as u64);
            let first = (off / PAGE) as usize;
            let last = ((off + chunk) / PAGE) as usize;
            if resident
                .get(first..last)
                .is_some_and(|s| s.iter().all(|&b| b & 1 != 0))
            {
                off += chunk;
                continue;
            }
            ws.read_exact_at(&mut buf[..chunk as usize], off)?;
            bytes += chunk;
            if !counted {
                ranges += 1;
                counted = true;
            }
            off += chunk;
        }
    }
    // SAFETY: releases our lock on a descriptor we own.
    unsafe { libc::flock(ws.as_raw_fd(), libc::LOCK_UN) };
    Ok(PrefetchReport {
        bytes,
        ranges,
        ms: started.elapsed().as_secs_f64() * 1e3,
        ..PrefetchReport::default()
    })
}

/// The `mincore` scanner of the record phase.
struct Scanner {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<std::io::Result<Vec<u32>>>>,
}

impl Scanner {
    /// Scans `file` every [`SCAN_INTERVAL`]; the result has per page the number of the scan
    /// that first saw it resident (`u32::MAX`: never).
    fn start(file: File) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let join = std::thread::Builder::new()
            .name("faasnap-mincore".into())
            .spawn(move || {
                let map = fsutil::ResidencyMap::new(&file)?;
                let pages = map.pages();
                let mut first = vec![u32::MAX; pages];
                let mut vec = vec![0u8; pages];
                let mut scan = 0u32;
                loop {
                    let last = flag.load(Ordering::Acquire);
                    map.scan(&mut vec)?;
                    for (f, &v) in first.iter_mut().zip(&vec) {
                        if v & 1 != 0 && *f == u32::MAX {
                            *f = scan;
                        }
                    }
                    scan += 1;
                    if last {
                        return Ok(first);
                    }
                    std::thread::sleep(SCAN_INTERVAL);
                }
            })?;
        Ok(Self {
            stop,
            join: Some(join),
        })
    }

    /// Stops after one final scan and returns the first-seen scan of every page.
    fn finish(mut self) -> std::io::Result<Vec<u32>> {
        self.stop.store(true, Ordering::Release);
        match self.join.take().map(|j| j.join()) {
            Some(Ok(r)) => r,
            _ => Err(std::io::Error::other("the mincore scanner thread panicked")),
        }
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// All-zero pages of `file`, by page number (read with `O_DIRECT` where possible so the scan
/// does not fill the page cache).
fn zero_pages(path: &Path) -> std::io::Result<Vec<bool>> {
    let (buf, _) = snapbpf_store::fsutil::read_direct(path)?;
    Ok(buf
        .as_slice()
        .chunks(PAGE as usize)
        .map(|p| p.iter().all(|&b| b == 0))
        .collect())
}

/// Coalesces sorted page numbers into `(first page, pages)` runs, merging runs separated by
/// at most `gap` pages.
fn coalesce(pages: &[u64], gap: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((start, n)) if p >= *start + *n && p - (*start + *n) <= gap => *n = p - *start + 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

impl Strategy for Faasnap {
    fn check(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        load_meta(snapshot, false).map(|_| ())
    }

    fn verify_recording(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        load_meta(snapshot, true).map(|_| ())
    }

    fn describe_recording(&self, snapshot: &Snapshot) -> Result<String, StrategyError> {
        let m = load_meta(snapshot, false)?;
        Ok(format!(
            "{} pages recorded with input {} in {} regions ({} MiB), {} zero pages in {} regions, bound to this snapshot",
            m.header.ws_pages,
            m.header.input,
            m.regions.len(),
            m.header.ws_bytes >> 20,
            m.header.zero_pages,
            m.zeros.len()
        ))
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let meta = load_meta(snapshot, false)?;
        let (file, window) = interface::open_memory(snapshot, Some(DEFAULT_WINDOW_KIB))?;
        let memory = GuestMemory::map_file_private(&file, snapshot.meta.mem_bytes)?;
        memory.set_fault_readahead(FaultReadahead::On)?;
        let ws_path = snapshot.artifact_path(WS_FILE);
        let (ws, _) = readahead::open_with_window(&ws_path, DEFAULT_WINDOW_KIB)?;
        for r in &meta.regions {
            memory.map_file(r.offset, r.len, &ws, r.ws_offset)?;
        }
        for &(o, l) in &meta.zeros {
            memory.map_anonymous(o, l)?;
        }
        let regions = meta.regions.clone();
        let mut helpers = Helpers::none();
        helpers
            .spawn("faasnap-readahead", move || {
                Ok(Some(load_working_set(&ws, &regions)?))
            })
            .map_err(StrategyError::io("spawn the working-set loader"))?;
        Ok(Restored {
            helpers,
            readahead_kib: window,
            ..Restored::plain(memory)
        })
    }

    fn record(
        &self,
        snapshot: &Snapshot,
        input: u32,
        timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        let started = Instant::now();
        let path = snapshot.memory_path();
        let ioe = |what: &str| StrategyError::io(format!("{what} {}", path.display()));
        // A cold cache and no readahead: the page cache then holds exactly the fetched pages.
        fsutil::evict(&path)?;
        let (file, _) = interface::open_memory(snapshot, None)?;
        let memory = GuestMemory::map_file_private(&file, snapshot.meta.mem_bytes)?;
        memory.set_fault_readahead(FaultReadahead::Off)?;
        let scanner = Scanner::start(file.try_clone().map_err(ioe("dup"))?).map_err(ioe("scan"))?;
        interface::run_recorded(snapshot, Restored::plain(memory), input, timeout)?;
        let first_seen = scanner.finish().map_err(ioe("mincore"))?;
        let zero = zero_pages(&path).map_err(ioe("scan for zero pages of"))?;
        let is_zero = |p: u64| zero.get(p as usize).copied().unwrap_or(false);
        let pages: Vec<u64> = first_seen
            .iter()
            .enumerate()
            .filter(|&(p, &s)| s != u32::MAX && !is_zero(p as u64))
            .map(|(p, _)| p as u64)
            .collect();
        if pages.is_empty() {
            return Err(StrategyError::io("record")(std::io::Error::other(
                "mincore saw no page fetched by the recorded invocation",
            )));
        }
        // Regions, ordered by the first fetch of any of their pages.
        let mut runs: Vec<(u32, u64, u64)> = coalesce(&pages, MERGE_GAP_PAGES)
            .into_iter()
            .map(|(p, n)| {
                let key = (p..p + n)
                    .map(|q| first_seen[q as usize])
                    .min()
                    .unwrap_or(u32::MAX);
                (key, p, n)
            })
            .collect();
        runs.sort_unstable();
        let mut regions = Vec::with_capacity(runs.len());
        let mut ws_offset = 0u64;
        for &(_, p, n) in &runs {
            regions.push(Region {
                offset: p * PAGE,
                len: n * PAGE,
                ws_offset,
            });
            ws_offset += n * PAGE;
        }
        // Zero runs outside the working-set regions.
        let mut in_ws = vec![false; zero.len()];
        for &(_, p, n) in &runs {
            for q in p..p + n {
                if let Some(b) = in_ws.get_mut(q as usize) {
                    *b = true;
                }
            }
        }
        let zero_list: Vec<u64> = (0..zero.len() as u64)
            .filter(|&p| is_zero(p) && !in_ws[p as usize])
            .collect();
        let mut zeros = coalesce(&zero_list, 0);
        if zeros.len() > MAX_ZERO_REGIONS {
            zeros.sort_unstable_by_key(|&(_, n)| std::cmp::Reverse(n));
            zeros.truncate(MAX_ZERO_REGIONS);
            zeros.sort_unstable();
        }
        let zeros: Vec<(u64, u64)> = zeros
            .into_iter()
            .map(|(p, n)| (p * PAGE, n * PAGE))
            .collect();

        let mem = File::open(&path).map_err(ioe("open"))?;
        let mut ws = vec![0u8; ws_offset as usize];
        for r in &regions {
            let dst = &mut ws[r.ws_offset as usize..(r.ws_offset + r.len) as usize];
            mem.read_exact_at(dst, r.offset).map_err(ioe("read"))?;
        }
        let ws_path = snapshot.artifact_path(WS_FILE);
        // The data first, durable, then the metadata naming its digest in one atomic step:
        // an interrupted or concurrent record leaves metadata that refuses the data.
        let ws_identity = snapbpf_store::verify::write_identified(&ws_path, &ws)
            .map_err(StrategyError::io(format!("write {}", ws_path.display())))?;
        let header = MetaHeader {
            memory: snapshot.meta.memory,
            page_size: PAGE,
            ws_bytes: ws.len() as u64,
            ws: Some(ws_identity),
            ws_pages: pages.len() as u64,
            zero_pages: zero.iter().filter(|&&z| z).count() as u64,
            merge_gap_pages: MERGE_GAP_PAGES,
            input,
        };
        let meta_path = snapshot.artifact_path(META_FILE);
        let meta_bytes =
            artifact::write(&meta_path, META_KIND, &header, &encode(&regions, &zeros))?;
        Ok(RecordReport {
            artifacts: vec![(ws_path, ws.len() as u64), (meta_path, meta_bytes)],
            ms: started.elapsed().as_secs_f64() * 1e3,
            pages: pages.len() as u64,
            capture_cpu_ms: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_merges_small_gaps() {
        assert_eq!(coalesce(&[1, 2, 3, 10, 50, 51], 6), vec![(1, 10), (50, 2)]);
        assert_eq!(coalesce(&[1, 3], 0), vec![(1, 1), (3, 1)]);
        assert_eq!(coalesce(&[], 32), vec![]);
    }

    #[test]
    fn metadata_round_trips_and_rejects_overlap() {
        let regions = [Region {
            offset: 0,
            len: 8192,
            ws_offset: 0,
        }];
        let zeros = [(8192, 4096)];
        let bytes = encode(&regions, &zeros);
        let (r, z) = decode(&bytes, 1 << 20, 8192).expect("decode");
        assert_eq!((r.as_slice(), z.as_slice()), (&regions[..], &zeros[..]));
        let bad = encode(&regions, &[(4096, 4096)]);
        assert!(decode(&bad, 1 << 20, 8192).is_err());
        assert!(decode(&bytes[..bytes.len() - 8], 1 << 20, 8192).is_err());
    }
}
