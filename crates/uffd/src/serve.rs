//! Serving page faults: the runtime under every handler, in process or not.
//!
//! [`serve`] answers missing-page faults from a file until told to stop; [`install`] fills
//! guest memory with pages a handler already holds (a prefetched working set). Both only
//! ever `UFFDIO_COPY` whole pages at addresses inside the regions they were given.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use std::collections::VecDeque;

use crate::abi::{Filled, UffdMsg, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE};
use crate::{GuestRegionUffdMapping, Uffd, UffdError, PAGE};

/// What one handler session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Faults served by reading the memory file.
    pub faults: u64,
    /// File offsets of the pages served, in the order they were faulted (when recording).
    pub log: Vec<u64>,
}

/// Serves missing-page faults of `uffd` from `file` until `stop` becomes readable or hangs
/// up. With `record`, logs the file offset of every page served, in fault order.
///
/// Removal events (`madvise(MADV_DONTNEED)`, a balloon; sent only when the VMM asked for
/// `UFFD_FEATURE_EVENT_REMOVE`) are honoured: a removed page of anonymous memory reads as
/// zeros afterwards, so its later faults get a zero page, not the snapshot's stale
/// contents. When a copy meets `EAGAIN` (a removal is pending), the pending events are read
/// first and the copy is retried, instead of spinning.
pub fn serve(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    file: &File,
    stop: BorrowedFd<'_>,
    record: bool,
) -> Result<ServeStats, UffdError> {
    let mut stats = ServeStats::default();
    // One buffer per page size in use: a 4 KiB page and, for hugetlbfs regions, a 2 MiB one.
    let mut pages = PageBuffers::default();
    let mut msgs = [UffdMsg::default(); 64];
    let mut queue: VecDeque<UffdMsg> = VecDeque::new();
    let mut removed = Removed::default();
    loop {
        while let Some(msg) = queue.pop_front() {
            match msg.event {
                UFFD_EVENT_REMOVE => removed.add(msg.arg[0], msg.arg[1]),
                UFFD_EVENT_PAGEFAULT => {
                    let region = regions
                        .iter()
                        .find(|r| r.file_offset(msg.arg[1]).is_some())
                        .ok_or(UffdError::Stray(msg.arg[1]))?;
                    // Filled in the region's own pages: a hugetlbfs fault takes the whole
                    // 2 MiB page around it (regions are aligned to their page size).
                    let page_size = region.page_size;
                    let addr = msg.arg[1] & !(page_size - 1);
                    let offset = region.file_offset(addr).ok_or(UffdError::Stray(addr))?;
                    let mut have_page = false;
                    // Read the clock only once a copy meets EAGAIN, not on every fault.
                    let mut settle_by = None;
                    loop {
                        // Decided on every attempt: a removal read while retrying turns
                        // this fault into a zero page.
                        let filled = if removed.contains(addr) {
                            if page_size == PAGE {
                                uffd.try_zeropage(addr, PAGE)?
                            } else {
                                // hugetlbfs has no UFFDIO_ZEROPAGE: copy a zeroed page.
                                uffd.try_copy(addr, pages.zeroed(page_size))?
                            }
                        } else {
                            let page = pages.get(page_size);
                            if !have_page {
                                file.read_exact_at(page, offset).map_err(|source| {
                                    UffdError::Source {
                                        offset,
                                        len: page_size,
                                        source,
                                    }
                                })?;
                                have_page = true;
                            }
                            uffd.try_copy(addr, page)?
                        };
                        match filled {
                            Filled::Done(_) => break,
                            Filled::Again => {
                                // Whatever changes the address space is in the pending
                                // events: removals apply before this fault is retried,
                                // other faults wait their turn.
                                let n = uffd.read_events(&mut msgs)?;
                                for m in &msgs[..n] {
                                    if m.event == UFFD_EVENT_REMOVE {
                                        removed.add(m.arg[0], m.arg[1]);
                                    } else {
                                        queue.push_back(*m);
                                    }
                                }
                                let settle_by = *settle_by
                                    .get_or_insert_with(|| Instant::now() + SETTLE_TIMEOUT);
                                if n == 0 {
                                    if Instant::now() >= settle_by {
                                        return Err(UffdError::NeverSettled(addr));
                                    }
                                    std::thread::sleep(std::time::Duration::from_micros(100));
                                }
                            }
                        }
                    }
                    stats.faults += 1;
                    if record {
                        stats.log.push(offset);
                    }
                }
                // Fork, remap and unmap come only with features never asked for; one that
                // comes anyway means the address space changed in a way this loop does not
                // track, and serving on could hand the guest a page from the wrong place.
                other => return Err(UffdError::UnexpectedEvent(other)),
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the call's duration.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(crate::abi::ioctl_err("poll")(err));
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let n = uffd.read_events(&mut msgs)?;
            queue.extend(&msgs[..n]);
            continue;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            // The registered memory is gone (the VM exited).
            return Ok(stats);
        }
        if fds[1].revents != 0 {
            return Ok(stats);
        }
    }
}

/// Page buffers of the sizes a handler serves, allocated on first use.
#[derive(Debug, Default)]
struct PageBuffers {
    small: Vec<u8>,
    huge: Vec<u8>,
}

impl PageBuffers {
    fn get(&mut self, page_size: u64) -> &mut [u8] {
        let buf = if page_size == PAGE {
            &mut self.small
        } else {
            &mut self.huge
        };
        buf.resize(page_size as usize, 0);
        buf
    }

    /// A page of zeros (the buffer is reused, so it is cleared here).
    fn zeroed(&mut self, page_size: u64) -> &[u8] {
        let buf = self.get(page_size);
        buf.fill(0);
        buf
    }
}

/// Longest a fault's copy may keep meeting `EAGAIN` with no event to explain it.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Host address ranges removed since the handler started: they read as zeros.
#[derive(Debug, Default)]
struct Removed {
    /// Disjoint `[start, end)` ranges, sorted by start.
    ranges: Vec<(u64, u64)>,
}

impl Removed {
    fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        self.ranges.retain(|&(s, e)| {
            let touches = s <= end && start <= e;
            if touches {
                start = start.min(s);
                end = end.max(e);
            }
            !touches
        });
        let at = self.ranges.partition_point(|&(s, _)| s < start);
        self.ranges.insert(at, (start, end));
    }

    fn contains(&self, addr: u64) -> bool {
        let at = self.ranges.partition_point(|&(s, _)| s <= addr);
        at > 0 && addr < self.ranges[at - 1].1
    }
}

/// Installs pages of `data` into guest memory with `UFFDIO_COPY`, one call per run of
/// pages that are contiguous both in `offsets` (file offsets, in `data`'s order) and in
/// `data`. Returns (bytes installed, calls made).
///
/// A working set is recorded in 4 KiB pages, but hugetlbfs memory is filled only in whole
/// 2 MiB pages: in a region with [`crate::HUGETLB_PAGE`]s, each huge page the working set touches
/// is read whole from `memory` (the file the regions map) and installed once.
pub fn install(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    offsets: &[u64],
    data: &[u8],
    memory: &File,
) -> Result<(u64, u64), UffdError> {
    let mut i = 0usize;
    let (mut bytes, mut calls) = (0u64, 0u64);
    let mut huge = Vec::new();
    let mut huge_done = std::collections::HashSet::new();
    while i < offsets.len() {
        let start = offsets[i];
        let region = regions
            .iter()
            .find(|r| r.host_addr(start).is_some())
            .ok_or(UffdError::Stray(start))?;
        if region.page_size != PAGE {
            let page_offset = start & !(region.page_size - 1);
            // A working set is in fault order: a huge page's pages may be far apart.
            if huge_done.insert(page_offset) {
                huge.resize(region.page_size as usize, 0);
                memory
                    .read_exact_at(&mut huge, page_offset)
                    .map_err(|source| UffdError::Source {
                        offset: page_offset,
                        len: region.page_size,
                        source,
                    })?;
                let dst = region
                    .host_addr(page_offset)
                    .ok_or(UffdError::Stray(page_offset))?;
                bytes += uffd.copy_pages(dst, &huge, region.page_size)?;
                calls += 1;
            }
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < offsets.len()
            && offsets[j] == offsets[j - 1] + PAGE
            && region.host_addr(offsets[j]).is_some()
        {
            j += 1;
        }
        let src =
            data.get(i * PAGE as usize..j * PAGE as usize)
                .ok_or(UffdError::ShortWorkingSet {
                    pages: offsets.len() as u64,
                    bytes: data.len() as u64,
                })?;
        let dst = region.host_addr(start).ok_or(UffdError::Stray(start))?;
        bytes += uffd.copy(dst, src)?;
        calls += 1;
        i = j;
    }
    Ok((bytes, calls))
}

/// An eventfd used to stop a handler thread.
#[derive(Debug)]
pub struct StopSignal {
    fd: OwnedFd,
}

impl StopSignal {
    /// A new, unsignalled stop.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes an initial value and flags and returns a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Waits until the stop is signalled or `timeout` passes; true if it was signalled.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of one pollfd for the call's duration.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
            if rc > 0 {
                return true;
            }
            let interrupted =
                rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
            if !interrupted || left.is_zero() {
                return false;
            }
        }
    }

    /// Signals the stop.
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local array to our eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

impl AsFd for StopSignal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page-aligned anonymous memory for the test, unmapped on drop.
    struct Anon {
        ptr: *mut libc::c_void,
        len: usize,
    }

    impl Anon {
        fn new(len: u64) -> Self {
            // SAFETY: a new private anonymous mapping aliasing nothing.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED, "mmap");
            Self {
                ptr,
                len: len as usize,
            }
        }
    }

    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: unmapping exactly the mapping this value owns.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }

    #[test]
    fn removed_ranges_merge_and_answer() {
        let mut r = Removed::default();
        r.add(10, 20);
        r.add(30, 40);
        r.add(20, 30);
        assert_eq!(r.ranges, vec![(10, 40)]);
        r.add(5, 5);
        r.add(50, 60);
        assert!(r.contains(10) && r.contains(39) && r.contains(55));
        assert!(!r.contains(9) && !r.contains(40) && !r.contains(60) && !r.contains(0));
    }

    /// A page the VMM removes (`MADV_DONTNEED`, as a balloon does) reads as zeros when it
    /// faults again, not as the snapshot's stale contents.
    #[test]
    fn a_removed_page_faults_back_as_zeros() {
        let Some(uffd) = crate::uffd_or_skip(crate::abi::UFFD_FEATURE_EVENT_REMOVE) else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mem");
        let pages = 8u64;
        let data: Vec<u8> = (0..pages * PAGE).map(|i| (i / PAGE) as u8 + 1).collect();
        std::fs::write(&path, &data).expect("write");
        let file = File::open(&path).expect("open");
        let mem = Anon::new(pages * PAGE);
        let base = mem.ptr as u64;
        uffd.register_missing(base, pages * PAGE).expect("register");
        let regions = [GuestRegionUffdMapping {
            base_host_virt_addr: base,
            size: pages * PAGE,
            offset: 0,
            page_size: PAGE,
        }];
        let stop = StopSignal::new().expect("eventfd");
        std::thread::scope(|s| {
            let server = s.spawn(|| serve(&uffd, &regions, &file, stop.as_fd(), false));
            let read = |p: u64| {
                // SAFETY: reading inside our mapping; the fault is served by the thread.
                unsafe { std::ptr::read_volatile((base + p * PAGE + 9) as *const u8) }
            };
            let before = (read(3), read(4));
            // SAFETY: dropping one page of our own mapping; nothing else uses it.
            let rc = unsafe {
                libc::madvise(
                    (base + 3 * PAGE) as *mut libc::c_void,
                    PAGE as usize,
                    libc::MADV_DONTNEED,
                )
            };
            let after = (read(3), read(4), read(6));
            // Stop the server before asserting: a failed assertion must not leave the
            // scope waiting for it.
            stop.signal();
            let stats = server.join().expect("join").expect("serve");
            assert_eq!(rc, 0, "madvise");
            assert_eq!(before, (4, 5), "served from the file");
            assert_eq!(after.0, 0, "a removed page is zeros, not the snapshot");
            assert_eq!(after.1, 5, "its neighbour is untouched");
            assert_eq!(after.2, 7, "pages never removed still come from the file");
            assert_eq!(stats.faults, 4);
        });
    }

    /// Faults in an anonymous mapping are served from a file, logged in order, and a
    /// prefetched run is installed in one call.
    #[test]
    fn serve_and_install_from_a_file() {
        let Some(uffd) = crate::uffd_or_skip(0) else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mem");
        let pages = 16u64;
        let data: Vec<u8> = (0..pages * PAGE).map(|i| (i / PAGE) as u8 + 1).collect();
        std::fs::write(&path, &data).expect("write");
        let file = File::open(&path).expect("open");
        let len = pages * PAGE;
        let mem = Anon::new(len);
        let base = mem.ptr as u64;
        uffd.register_missing(base, len).expect("register");
        let regions = [GuestRegionUffdMapping {
            base_host_virt_addr: base,
            size: len,
            offset: 0,
            page_size: PAGE,
        }];
        // Prefetch pages 2 and 3 in one call.
        let (bytes, calls) = install(
            &uffd,
            &regions,
            &[2 * PAGE, 3 * PAGE],
            &data[2 * PAGE as usize..4 * PAGE as usize],
            &file,
        )
        .expect("install");
        assert_eq!((bytes, calls), (2 * PAGE, 1));
        let stop = StopSignal::new().expect("eventfd");
        std::thread::scope(|s| {
            let server = s.spawn(|| serve(&uffd, &regions, &file, stop.as_fd(), true));
            for p in [5u64, 2, 9, 3, 0] {
                // SAFETY: reading inside our mapping; the fault is served by the thread.
                let v = unsafe { std::ptr::read_volatile((base + p * PAGE + 7) as *const u8) };
                assert_eq!(v, p as u8 + 1);
            }
            stop.signal();
            let stats = server.join().expect("join").expect("serve");
            assert_eq!(stats.log, vec![5 * PAGE, 9 * PAGE, 0]);
        });
    }
}
