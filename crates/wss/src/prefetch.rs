//! Prefetching a working set into the page cache (SnapBPF paper, section 3.1).
//!
//! The paper's `snapbpf_prefetch()` kfunc wraps `page_cache_ra_unbounded()`. A stock
//! kernel reaches the same readahead path from userspace through `readahead(2)`,
//! `posix_fadvise(POSIX_FADV_WILLNEED)` and io_uring's `IORING_OP_FADVISE`; a buffered
//! `IORING_OP_READ` also fills the page cache, at the cost of a copy. All are
//! [`PrefetchMethod`]s; ranges are issued in working-set order (earliest first access
//! first). The default is the fastest one measured on this host (see
//! `docs/ebpf-capture.md`).
//!
//! `readahead(2)` and `WILLNEED` only *start* I/O (and are clamped by the kernel to
//! `max(read_ahead_kb, max_sectors_kb)` per call), so ranges are split into chunks of
//! at most that size ([`readahead_limit`]); [`PrefetchStats::elapsed`] measures issuing,
//! not completion. A VM that touches a page whose read is still in flight simply waits
//! on the locked folio.
//!
//! ```no_run
//! use snapbpf_wss::prefetch::{spawn_prefetch, PrefetchMethod};
//! use snapbpf_wss::workingset::WorkingSet;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ws = WorkingSet::read(std::path::Path::new("memory.ws"))?;
//! let file = std::fs::File::open("memory")?;
//! let handle = spawn_prefetch(file, ws.ranges, PrefetchMethod::default())?;
//! // ... restore and run the VM meanwhile ...
//! let stats = handle.join().expect("prefetch thread panicked")?;
//! println!("{} bytes in {} ranges, {:?}", stats.bytes, stats.ranges, stats.elapsed);
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use snapbpf_vmm::Populator;

use crate::workingset::PageRange;

const PAGE_SIZE: u64 = snapbpf_store::PAGE_SIZE;
/// Used when the device's limit cannot be read from sysfs (the kernel default).
const FALLBACK_CHUNK: u64 = 128 << 10;

/// How to bring ranges into the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchMethod {
    /// One `readahead(2)` per chunk.
    Readahead,
    /// One `posix_fadvise(POSIX_FADV_WILLNEED)` per chunk.
    Fadvise,
    /// `IORING_OP_FADVISE(WILLNEED)` per chunk, `queue_depth` in flight (io_uring runs
    /// them on its io-wq workers).
    IoUringFadvise {
        /// Requests in flight.
        queue_depth: u32,
    },
    /// Buffered `IORING_OP_READ` of every chunk into a scratch buffer, `queue_depth` in
    /// flight. Completes only when the data is in the page cache.
    IoUringRead {
        /// Requests in flight.
        queue_depth: u32,
    },
}

impl Default for PrefetchMethod {
    /// `posix_fadvise(WILLNEED)`: tied with `readahead(2)` (same kernel path) and ahead
    /// of the io_uring variants on this host (docs/ebpf-capture.md).
    fn default() -> Self {
        PrefetchMethod::Fadvise
    }
}

impl std::fmt::Display for PrefetchMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrefetchMethod::Readahead => write!(f, "readahead"),
            PrefetchMethod::Fadvise => write!(f, "fadvise"),
            PrefetchMethod::IoUringFadvise { queue_depth } => {
                write!(f, "io_uring-fadvise(qd={queue_depth})")
            }
            PrefetchMethod::IoUringRead { queue_depth } => {
                write!(f, "io_uring-read(qd={queue_depth})")
            }
        }
    }
}

/// Tunables of [`prefetch_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefetchOptions {
    /// Method.
    pub method: PrefetchMethod,
    /// Largest request in bytes; `None`: the device's readahead limit
    /// ([`readahead_limit`]).
    pub max_request_bytes: Option<u64>,
}

/// What a prefetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefetchStats {
    /// Bytes requested (ranges clamped to the file size).
    pub bytes: u64,
    /// Ranges issued.
    pub ranges: u64,
    /// Requests (syscalls or SQEs) issued.
    pub requests: u64,
    /// Time to issue every request (for io_uring: until every request completed).
    pub elapsed: Duration,
}

/// Errors of [`prefetch`], [`prefetch_with`] and [`spawn_prefetch`].
#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    /// Reading the file's metadata failed.
    #[error("cannot stat the file to prefetch: {0}")]
    Stat(#[source] std::io::Error),
    /// A request failed.
    #[error("{method} of bytes {offset}..{end} failed: {source}")]
    Request {
        /// Method used.
        method: PrefetchMethod,
        /// Start of the request.
        offset: u64,
        /// End of the request.
        end: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// Setting up io_uring failed.
    #[error("io_uring setup failed: {0}")]
    IoUring(#[source] std::io::Error),
    /// Checking which pages are resident failed.
    #[error("cannot check page-cache residency: {0}")]
    Residency(#[source] std::io::Error),
}

/// What [`prefetch_until_resident`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResidentPrefetch {
    /// The prefetch requests.
    pub stats: PrefetchStats,
    /// From the first request until every page was resident (or the wait ran out).
    pub resident_after: Duration,
    /// Pages still not resident when the wait ran out.
    pub missing_pages: u64,
}

/// How long [`prefetch_until_resident`] waits on pages before asking for them again.
pub const REISSUE_AFTER: Duration = Duration::from_millis(200);

/// Prefetches `ranges` of `file` and waits, at most `wait`, until every page is in the
/// page cache: readahead completes asynchronously, so this is the time the device takes
/// to deliver the working set. Pages still missing after [`REISSUE_AFTER`] are asked for
/// again.
pub fn prefetch_until_resident(
    file: &File,
    ranges: &[PageRange],
    wait: Duration,
) -> Result<ResidentPrefetch, PrefetchError> {
    let started = Instant::now();
    // One mapping for every poll: the wait is what is being measured.
    let map = snapbpf_store::fsutil::ResidencyMap::new(file).map_err(PrefetchError::Residency)?;
    let stats = prefetch(file, ranges)?;
    let mut missing = ranges.to_vec();
    let mut reissued = started;
    loop {
        missing = missing_in(&map, &missing).map_err(PrefetchError::Residency)?;
        if missing.is_empty() || started.elapsed() >= wait {
            break;
        }
        // readahead(2) is advice: under memory pressure its page allocations give up
        // quietly (or pages read are reclaimed at once), and nothing would ask again.
        if reissued.elapsed() >= REISSUE_AFTER {
            prefetch(file, &missing)?;
            reissued = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(ResidentPrefetch {
        stats,
        resident_after: started.elapsed(),
        missing_pages: missing.iter().map(|r| r.pages).sum(),
    })
}

/// Prefetches `ranges` of `file` in order with the default method.
pub fn prefetch(file: &File, ranges: &[PageRange]) -> Result<PrefetchStats, PrefetchError> {
    prefetch_with(file, ranges, &PrefetchOptions::default())
}

/// Prefetches `ranges` of `file` in order.
pub fn prefetch_with(
    file: &File,
    ranges: &[PageRange],
    opts: &PrefetchOptions,
) -> Result<PrefetchStats, PrefetchError> {
    let start = Instant::now();
    let meta = file.metadata().map_err(PrefetchError::Stat)?;
    let size = meta.len();
    let chunk = opts
        .max_request_bytes
        .unwrap_or_else(|| readahead_limit(meta.dev()))
        .max(PAGE_SIZE);
    let requests = chunks(ranges, size, chunk);
    let mut stats = PrefetchStats {
        bytes: requests.iter().map(|&(_, l)| l).sum(),
        ranges: ranges.len() as u64,
        requests: requests.len() as u64,
        elapsed: Duration::ZERO,
    };
    let fd = file.as_raw_fd();
    let method = opts.method;
    let fail = |offset: u64, len: u64, source| PrefetchError::Request {
        method,
        offset,
        end: offset + len,
        source,
    };
    match method {
        PrefetchMethod::Readahead => {
            for &(off, len) in &requests {
                // SAFETY: readahead only reads the fd and the scalar arguments.
                let rc = unsafe { libc::readahead(fd, off as libc::off64_t, len as usize) };
                if rc != 0 {
                    return Err(fail(off, len, std::io::Error::last_os_error()));
                }
            }
        }
        PrefetchMethod::Fadvise => {
            for &(off, len) in &requests {
                // SAFETY: posix_fadvise only reads the fd and the scalar arguments.
                let rc = unsafe {
                    libc::posix_fadvise(
                        fd,
                        off as libc::off_t,
                        len as libc::off_t,
                        libc::POSIX_FADV_WILLNEED,
                    )
                };
                if rc != 0 {
                    return Err(fail(off, len, std::io::Error::from_raw_os_error(rc)));
                }
            }
        }
        PrefetchMethod::IoUringFadvise { queue_depth } => {
            uring_run(fd, &requests, queue_depth, false).map_err(|e| match e {
                UringError::Setup(e) => PrefetchError::IoUring(e),
                UringError::Request(off, len, e) => fail(off, len, e),
            })?;
        }
        PrefetchMethod::IoUringRead { queue_depth } => {
            // Buffered reads run the kernel's sequential-readahead heuristics on the
            // open file description; use a private one with readahead disabled
            // (POSIX_FADV_RANDOM) so that only the requested pages are read.
            let private = random_access_reopen(file);
            let fd = private.as_ref().map_or(fd, |f| f.as_raw_fd());
            uring_run(fd, &requests, queue_depth, true).map_err(|e| match e {
                UringError::Setup(e) => PrefetchError::IoUring(e),
                UringError::Request(off, len, e) => fail(off, len, e),
            })?;
        }
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Prefetches on a new thread so the caller (a VMM) can run the VM meanwhile.
///
/// Fails only if the thread cannot be created.
pub fn spawn_prefetch(
    file: File,
    ranges: Vec<PageRange>,
    method: PrefetchMethod,
) -> std::io::Result<JoinHandle<Result<PrefetchStats, PrefetchError>>> {
    std::thread::Builder::new()
        .name("snapbpf-prefetch".into())
        .spawn(move || {
            prefetch_with(
                &file,
                &ranges,
                &PrefetchOptions {
                    method,
                    max_request_bytes: None,
                },
            )
        })
}

/// Opens `file` again (a new open file description, via /proc/self/fd) with
/// `POSIX_FADV_RANDOM`; `None` if that is not possible.
fn random_access_reopen(file: &File) -> Option<File> {
    let f = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    // SAFETY: posix_fadvise only reads the fd and the scalar arguments.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    (rc == 0).then_some(f)
}

/// Splits ranges into `(byte offset, byte length)` requests of at most `chunk` bytes,
/// clamped to the file size, keeping the order.
fn chunks(ranges: &[PageRange], size: u64, chunk: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let mut off = r.start.saturating_mul(PAGE_SIZE).min(size);
        let end = r.end().saturating_mul(PAGE_SIZE).min(size);
        while off < end {
            let len = (end - off).min(chunk);
            out.push((off, len));
            off += len;
        }
    }
    out
}

/// The most bytes one `readahead(2)` / `WILLNEED` call brings in for files on device
/// `st_dev`: the kernel clamps each call to `max(read_ahead_kb, max_sectors_kb)` of the
/// backing device. Falls back to 128 KiB when sysfs does not tell.
pub fn readahead_limit(st_dev: u64) -> u64 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    let read_kb =
        |p: String| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let base = format!("/sys/dev/block/{major}:{minor}");
    let ra = read_kb(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
        .or_else(|| read_kb(format!("{base}/queue/read_ahead_kb")))
        .or_else(|| read_kb(format!("{base}/../queue/read_ahead_kb")));
    let io = read_kb(format!("{base}/queue/max_sectors_kb"))
        .or_else(|| read_kb(format!("{base}/../queue/max_sectors_kb")));
    match ra.into_iter().chain(io).max() {
        Some(kb) if kb > 0 => kb * 1024,
        _ => FALLBACK_CHUNK,
    }
}

enum UringError {
    Setup(std::io::Error),
    Request(u64, u64, std::io::Error),
}

/// Issues `requests` through io_uring with up to `qd` in flight.
fn uring_run(fd: i32, requests: &[(u64, u64)], qd: u32, read: bool) -> Result<(), UringError> {
    use io_uring::{opcode, types, IoUring};
    let qd = qd.clamp(1, 4096);
    let max_len = requests.iter().map(|&(_, l)| l).max().unwrap_or(0) as usize;
    // One scratch buffer per slot for reads; the slot index is the user_data. Declared
    // before the ring so that it outlives it.
    let mut buffers: Vec<Vec<u8>> = if read {
        (0..qd).map(|_| vec![0u8; max_len]).collect()
    } else {
        Vec::new()
    };
    let mut ring = IoUring::new(qd).map_err(UringError::Setup)?;
    let mut free: Vec<usize> = (0..qd as usize).rev().collect();
    let mut slot_req: Vec<(u64, u64)> = vec![(0, 0); qd as usize];
    let mut pending: std::collections::VecDeque<(u64, u64)> = requests.iter().copied().collect();
    let mut in_flight = 0usize;
    let mut first_error: Option<UringError> = None;
    // After an error nothing new is submitted, but in-flight requests are still reaped:
    // the kernel may write into their buffers until they complete.
    while in_flight > 0 || (first_error.is_none() && !pending.is_empty()) {
        while first_error.is_none() {
            let (Some(&(off, len)), Some(&slot)) = (pending.front(), free.last()) else {
                break;
            };
            let entry = if read {
                let buf = buffers[slot].as_mut_ptr();
                opcode::Read::new(types::Fd(fd), buf, len as u32)
                    .offset(off)
                    .build()
            } else {
                opcode::Fadvise::new(types::Fd(fd), len as libc::off_t, libc::POSIX_FADV_WILLNEED)
                    .offset(off)
                    .build()
            }
            .user_data(slot as u64);
            // SAFETY: the read buffer `buffers[slot]` holds at least `len` bytes and is
            // neither touched nor freed until this slot's completion has been reaped
            // (the loop drains every in-flight request before returning, and `buffers`
            // outlives `ring`); fadvise has no buffer.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_err() {
                break;
            }
            pending.pop_front();
            free.pop();
            slot_req[slot] = (off, len);
            in_flight += 1;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Cannot reap any more: leak the buffers rather than free memory the kernel
            // may still write to.
            std::mem::forget(buffers);
            return Err(UringError::Setup(e));
        }
        for cqe in ring.completion() {
            let slot = cqe.user_data() as usize;
            let (off, len) = slot_req[slot];
            let res = cqe.result();
            in_flight -= 1;
            free.push(slot);
            if res < 0 {
                if first_error.is_none() {
                    first_error = Some(UringError::Request(
                        off,
                        len,
                        std::io::Error::from_raw_os_error(-res),
                    ));
                }
                continue;
            }
            // A short buffered read: queue the rest (0 means EOF).
            let done = res as u64;
            if read && done > 0 && done < len {
                pending.push_front((off + done, len - done));
            }
        }
    }
    drop(ring);
    drop(buffers);
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes back and drops `file`'s pages from the page cache (`fdatasync` then
/// `POSIX_FADV_DONTNEED`), so that the next access reads from storage. Pages mapped by
/// a process stay resident.
pub fn evict(file: &File) -> std::io::Result<()> {
    snapbpf_store::fsutil::drop_cached(file)
}

/// Residency of every page of `file` in the page cache (`mincore(2)`).
pub fn resident_pages(file: &File) -> std::io::Result<Vec<bool>> {
    Ok(snapbpf_store::fsutil::residency(file)?
        .into_iter()
        .map(|b| b & 1 != 0)
        .collect())
}

/// The parts of `ranges` (in their order) whose pages are not resident in the page
/// cache. Readahead is best effort: the kernel may drop a few readahead pages (see
/// docs/ebpf-capture.md); callers that need every page can prefetch the result again.
/// Costs the ranges' pages, not the file's (a working set of a large guest's memory).
pub fn missing_ranges(file: &File, ranges: &[PageRange]) -> std::io::Result<Vec<PageRange>> {
    missing_in(&snapbpf_store::fsutil::ResidencyMap::new(file)?, ranges)
}

/// The parts of `ranges` whose pages `map` does not show resident, asking only about
/// the ranges' pages.
fn missing_in(
    map: &snapbpf_store::fsutil::ResidencyMap,
    ranges: &[PageRange],
) -> std::io::Result<Vec<PageRange>> {
    let file_pages = map.pages() as u64;
    let mut residency = Vec::new();
    let mut out = Vec::new();
    for r in ranges {
        // Only the part inside the file can be resident (and is asked about).
        let inside = r.pages.min(file_pages.saturating_sub(r.start));
        residency.resize(inside as usize, 0);
        map.scan_range(r.start, &mut residency)?;
        let mut cur: Option<PageRange> = None;
        for p in r.start..r.end() {
            let present = residency.get((p - r.start) as usize).map(|b| b & 1 != 0);
            // Pages past the end of the file cannot be resident; ignore them.
            if present != Some(false) {
                if let Some(c) = cur.take() {
                    out.push(c);
                }
                continue;
            }
            match cur.as_mut() {
                Some(c) => c.pages += 1,
                None => {
                    cur = Some(PageRange {
                        start: p,
                        pages: 1,
                        first_access_ns: r.first_access_ns,
                    })
                }
            }
        }
        out.extend(cur);
    }
    Ok(out)
}

/// Number of resident pages of `file`.
pub fn resident_count(file: &File) -> std::io::Result<u64> {
    snapbpf_store::fsutil::resident_pages(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, pages: u64) -> PageRange {
        PageRange {
            start,
            pages,
            first_access_ns: 0,
        }
    }

    #[test]
    fn chunking_keeps_order_and_clamps() {
        let c = chunks(&[r(10, 3), r(0, 1), r(20, 100)], 4096 * 50, 8192);
        assert_eq!(
            c,
            vec![
                (40960, 8192),
                (49152, 4096),
                (0, 4096),
                (81920, 8192),
                (90112, 8192),
                (98304, 8192),
                (106496, 8192),
                (114688, 8192),
                (122880, 8192),
                (131072, 8192),
                (139264, 8192),
                (147456, 8192),
                (155648, 8192),
                (163840, 8192),
                (172032, 8192),
                (180224, 8192),
                (188416, 8192),
                (196608, 8192),
            ]
        );
    }

    #[test]
    fn missing_ranges_splits_by_residency() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 64 * 4096]).unwrap();
        let f = File::open(&path).unwrap();
        evict(&f).unwrap();
        let mut b = [0u8; 1];
        let fr = File::open(&path).unwrap();
        // SAFETY: posix_fadvise only reads the fd and scalars.
        unsafe { libc::posix_fadvise(fr.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        std::os::unix::fs::FileExt::read_at(&fr, &mut b, 12 * 4096).unwrap();
        let m = missing_ranges(&f, &[r(10, 5), r(60, 10)]).unwrap();
        assert_eq!(m, vec![r(10, 2), r(13, 2), r(60, 4)]);
    }

    #[test]
    fn readahead_limit_is_sane() {
        let dev = std::fs::metadata("/").map(|m| m.dev()).unwrap_or(0);
        let l = readahead_limit(dev);
        assert!(l >= 4096, "{l}");
    }

    #[test]
    fn all_methods_bring_pages_in() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![3u8; 4 << 20]).unwrap();
        let f = File::open(&path).unwrap();
        for method in [
            PrefetchMethod::Readahead,
            PrefetchMethod::Fadvise,
            PrefetchMethod::IoUringFadvise { queue_depth: 8 },
            PrefetchMethod::IoUringRead { queue_depth: 8 },
        ] {
            evict(&f).unwrap();
            assert_eq!(resident_count(&f).unwrap(), 0, "{method}: evicted");
            let ranges = [r(100, 50), r(3, 1), r(900, 124)];
            let s = prefetch_with(
                &f,
                &ranges,
                &PrefetchOptions {
                    method,
                    max_request_bytes: Some(64 << 10),
                },
            )
            .unwrap();
            assert_eq!(s.bytes, 175 * 4096);
            assert_eq!(s.ranges, 3);
            // readahead/fadvise are asynchronous: wait for the reads to land; readahead
            // is best effort, so re-issue whatever is still missing once.
            let mut reissued = false;
            let mut deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let missing = missing_ranges(&f, &ranges).unwrap();
                if missing.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    assert!(!reissued, "{method}: pages not resident: {missing:?}");
                    prefetch(&f, &missing).unwrap();
                    reissued = true;
                    deadline = Instant::now() + Duration::from_secs(3);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let res = resident_pages(&f).unwrap();
            let want = |p: usize| (100..150).contains(&p) || p == 3 || (900..1024).contains(&p);
            assert!(
                (0..1024).all(|p| res[p] == want(p)),
                "{method}: resident set differs from the requested ranges"
            );
        }
    }
}

/// What [`premap`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PremapStats {
    /// Bytes whose page-table entries were populated.
    pub bytes: u64,
    /// Time until every range was mapped.
    pub elapsed: Duration,
}

/// Maps the pages of `ranges` (file offset = guest-physical address), in order, into the
/// page tables of the guest memory `mapping` populates ([`Populator::populate_read`]),
/// waiting for pages still being read: the page-cache pages themselves are mapped,
/// read-only and shared.
///
/// This takes the page-fault work off the vCPU: on hosts where a fault taken on behalf
/// of a guest is expensive (nested virtualization), mapping a working set in batches
/// from a helper thread is far cheaper than one fault per page. Stops at the first error
/// and returns it (a read error of the file, or the mapping gone: `ENOMEM`, which touches
/// nothing).
pub fn premap(
    mapping: Populator,
    ranges: &[PageRange],
    threads: usize,
) -> Result<PremapStats, snapbpf_vmm::MemoryError> {
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let first_error = std::sync::Mutex::new(None);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    // Workers take ranges in recorded order, so the earliest-needed ones are in flight
    // first, with up to `threads` reads outstanding.
    let work = || {
        use std::sync::atomic::Ordering::Relaxed;
        while !failed.load(Relaxed) {
            let Some(r) = ranges.get(next.fetch_add(1, Relaxed)) else {
                break;
            };
            let (off, len) = (r.offset(), r.len_bytes());
            if off >= mapping.len() {
                continue;
            }
            let len = len.min(mapping.len() - off);
            if let Err(e) = mapping.populate_read(off, len) {
                failed.store(true, Relaxed);
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert(e);
                }
                break;
            }
            bytes.fetch_add(len, Relaxed);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.max(1) {
            scope.spawn(work);
        }
        work();
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(PremapStats {
        bytes: bytes.into_inner(),
        elapsed: start.elapsed(),
    })
}
