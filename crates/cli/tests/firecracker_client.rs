//! `snapbpf uffd-handler` serves a VMM that behaves as Firecracker does, per its
//! documentation (`docs/snapshotting/handling-page-faults-on-snapshot-resume.md`) and its
//! UFFD backend: guest memory in several anonymous regions, one userfaultfd with
//! `UFFD_FEATURE_EVENT_REMOVE` (for the balloon), one message with the region list and the
//! descriptor, vCPU threads faulting at once, and balloon inflation (`MADV_DONTNEED`) whose
//! pages must read as zeros afterwards. Several such VMMs share one handler socket. With
//! `huge_pages: "2M"`, Firecracker backs guest memory with hugetlbfs and announces
//! `page_size` 2 MiB: the handler must fill whole huge pages, on demand and when it
//! installs a REAP working set.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use snapbpf_uffd::{abi::UFFD_FEATURE_EVENT_REMOVE, GuestRegionUffdMapping, HandlerReply, Uffd};

const PAGE: u64 = 4096;
const HUGE: u64 = snapbpf_uffd::HUGETLB_PAGE;
const REGION_PAGES: u64 = 256;

/// Byte 17 of every page of the memory file: unique per page, never zero.
fn marker(page: u64) -> u8 {
    (page % 251) as u8 + 1
}

/// Anonymous memory, as Firecracker maps guest memory for the UFFD backend: 4 KiB pages,
/// or hugetlbfs pages of 2 MiB (`MAP_HUGETLB | MAP_HUGE_2MB`) when `huge`.
struct Region {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the threads that share it
// only read it, and the kernel serialises the faults they take.
unsafe impl Sync for Region {}

impl Region {
    fn new(len: u64) -> Self {
        Self::map(len, libc::MAP_NORESERVE)
    }

    fn huge(len: u64) -> Self {
        Self::map(len, libc::MAP_HUGETLB | libc::MAP_HUGE_2MB)
    }

    fn map(len: u64, flags: libc::c_int) -> Self {
        // SAFETY: a new private anonymous mapping aliasing nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
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

    fn byte(&self, page: u64) -> u8 {
        self.at(page * PAGE + 17)
    }

    fn at(&self, offset: u64) -> u8 {
        assert!(offset < self.len as u64);
        // SAFETY: inside our mapping; a missing page is served by the handler.
        unsafe { std::ptr::read_volatile((self.ptr as u64 + offset) as *const u8) }
    }

    /// Drops `[offset, offset + len)` as a balloon inflation does (`MADV_DONTNEED`).
    fn balloon(&self, offset: u64, len: u64) -> Result<(), String> {
        // SAFETY: dropping pages of our own mapping.
        let rc = unsafe {
            libc::madvise(
                (self.ptr as u64 + offset) as *mut libc::c_void,
                len as usize,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(format!("madvise: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// One Firecracker-like VMM: two regions at file offsets 0 and `REGION_PAGES` pages
/// (not contiguous in the VMM's address space), faulted by two "vCPU" threads, then a
/// balloon inflation over part of the second region.
fn firecracker_like_vmm(socket: &Path) -> Result<(), String> {
    let uffd = Uffd::with_features(UFFD_FEATURE_EVENT_REMOVE).map_err(|e| e.to_string())?;
    let len = REGION_PAGES * PAGE;
    let regions_mem = [Region::new(len), Region::new(len)];
    let mut regions = Vec::new();
    for (i, r) in regions_mem.iter().enumerate() {
        let base = r.ptr as u64;
        uffd.register_missing(base, len)
            .map_err(|e| e.to_string())?;
        regions.push(GuestRegionUffdMapping {
            base_host_virt_addr: base,
            size: len,
            offset: i as u64 * len,
            page_size: PAGE,
        });
    }
    let (stream, _reply) = snapbpf_uffd::send_to_handler(
        socket,
        &uffd,
        &regions,
        Duration::from_secs(30),
        snapbpf_uffd::HandlerKind::FirecrackerOnly,
    )
    .map_err(|e| e.to_string())?;
    // Two vCPU threads fault at once, each over both regions.
    let wrong = std::thread::scope(|s| {
        let vcpus: Vec<_> = (0..2u64)
            .map(|vcpu| {
                let regions_mem = &regions_mem;
                s.spawn(move || {
                    let mut wrong = 0;
                    for page in (vcpu..REGION_PAGES).step_by(2) {
                        for (i, r) in regions_mem.iter().enumerate() {
                            let file_page = i as u64 * REGION_PAGES + page;
                            if r.byte(page) != marker(file_page) {
                                wrong += 1;
                            }
                        }
                    }
                    wrong
                })
            })
            .collect();
        vcpus
            .into_iter()
            .map(|v| v.join().unwrap_or(1))
            .sum::<u32>()
    });
    if wrong > 0 {
        return Err(format!(
            "{wrong} pages did not hold the memory file's contents"
        ));
    }
    // Balloon inflation: the guest gave pages 10..20 of the second region back.
    regions_mem[1].balloon(10 * PAGE, 10 * PAGE)?;
    for page in 10..20 {
        let got = regions_mem[1].byte(page);
        if got != 0 {
            return Err(format!(
                "ballooned page {page} read {got}, not zero (the snapshot's stale page)"
            ));
        }
    }
    if regions_mem[1].byte(25) != marker(REGION_PAGES + 25) {
        return Err("a page outside the balloon changed".into());
    }
    drop(stream);
    Ok(())
}

#[test]
fn firecracker_like_vmms_are_served() {
    if !require_uffd() {
        return;
    }
    let dir = scratch();
    let memory = dir.path().join("memory");
    let mut bytes = vec![0u8; (2 * REGION_PAGES * PAGE) as usize];
    for page in 0..2 * REGION_PAGES {
        bytes[(page * PAGE + 17) as usize] = marker(page);
    }
    std::fs::write(&memory, &bytes).expect("write");
    let socket = dir.path().join("fc.sock");
    let handler = start_handler(&socket, &["--memory-file".as_ref(), memory.as_ref()]);
    // Three VMMs at once on one socket.
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|s| {
        let vmms: Vec<_> = (0..3)
            .map(|_| s.spawn(|| firecracker_like_vmm(&socket)))
            .collect();
        vmms.into_iter()
            .map(|v| v.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect()
    });
    drop(handler);
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.is_ok(), "VMM {i}: {o:?}");
    }
}

/// Whether userfaultfd works here; skips loudly, or fails under `CI=true`.
fn require_uffd() -> bool {
    if Uffd::new().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("no userfaultfd and CI=true");
    }
    eprintln!("\n!!!!!!!! SKIPPED: no userfaultfd here !!!!!!!!\n");
    false
}

/// A Firecracker-like VMM with `huge_pages: "2M"`: two hugetlbfs regions of `HUGE_PER_REGION`
/// 2 MiB pages, faulted by two vCPU threads at 4 KiB strides (each first touch of a huge
/// page is one fault, filled whole), then a balloon removal of one huge page, which must
/// read back as zeros while its neighbours keep the file's contents.
#[test]
fn a_firecracker_like_vmm_with_2mib_pages_is_served() {
    const HUGE_PER_REGION: u64 = 2;
    if !require_uffd() {
        return;
    }
    let Some(_pool) = reserve_huge_pages(2 * HUGE_PER_REGION) else {
        return;
    };
    let dir = scratch();
    let memory = dir.path().join("memory");
    let file_pages = 2 * HUGE_PER_REGION * HUGE / PAGE;
    let mut bytes = vec![0u8; (file_pages * PAGE) as usize];
    for page in 0..file_pages {
        bytes[(page * PAGE + 17) as usize] = marker(page);
    }
    std::fs::write(&memory, &bytes).expect("write");
    let socket = dir.path().join("fc.sock");
    let _handler = start_handler(&socket, &["--memory-file".as_ref(), memory.as_ref()]);

    let uffd = Uffd::with_features(UFFD_FEATURE_EVENT_REMOVE).expect("userfaultfd");
    let len = HUGE_PER_REGION * HUGE;
    let regions_mem = [Region::huge(len), Region::huge(len)];
    let mut regions = Vec::new();
    for (i, r) in regions_mem.iter().enumerate() {
        uffd.register_missing(r.ptr as u64, len).expect("register");
        regions.push(GuestRegionUffdMapping {
            base_host_virt_addr: r.ptr as u64,
            size: len,
            offset: i as u64 * len,
            page_size: HUGE,
        });
    }
    let (stream, _reply) = snapbpf_uffd::send_to_handler(
        &socket,
        &uffd,
        &regions,
        Duration::from_secs(30),
        snapbpf_uffd::HandlerKind::FirecrackerOnly,
    )
    .expect("handshake");
    let region_pages = len / PAGE;
    let wrong: u64 = std::thread::scope(|s| {
        let vcpus: Vec<_> = (0..2u64)
            .map(|vcpu| {
                let regions_mem = &regions_mem;
                s.spawn(move || {
                    let mut wrong = 0;
                    for page in (vcpu..region_pages).step_by(2) {
                        for (i, r) in regions_mem.iter().enumerate() {
                            if r.byte(page) != marker(i as u64 * region_pages + page) {
                                wrong += 1;
                            }
                        }
                    }
                    wrong
                })
            })
            .collect();
        vcpus.into_iter().map(|v| v.join().unwrap_or(1)).sum()
    });
    assert_eq!(
        wrong, 0,
        "pages that did not hold the memory file's contents"
    );
    // The balloon gives back the second huge page of the first region.
    regions_mem[0].balloon(HUGE, HUGE).expect("balloon");
    for page in [0, 1, 255, 511] {
        let got = regions_mem[0].byte(HUGE / PAGE + page);
        assert_eq!(
            got, 0,
            "ballooned 4 KiB page {page} of the huge page read {got}"
        );
    }
    assert_eq!(regions_mem[0].byte(7), marker(7), "the huge page before it");
    assert_eq!(
        regions_mem[1].byte(3),
        marker(region_pages + 3),
        "the other region"
    );
    drop(stream);
}

/// Our handler with a snapshot and its REAP recording serves a hugetlbfs-backed VMM: the
/// 4 KiB working set is installed as the whole 2 MiB pages around it before the vCPU runs,
/// and every page of guest memory then holds the snapshot's memory.
#[test]
fn reap_prefetch_into_2mib_pages_installs_whole_huge_pages() {
    if !require_kvm() || !require_uffd() {
        return;
    }
    let dir = scratch();
    let snap = snapshot(dir.path(), "pyaes");
    ok(&[
        "record",
        snap.to_str().expect("UTF-8"),
        "--strategy",
        "reap",
    ]);
    let memory_path = snap.join("memory");
    let contents = std::fs::read(&memory_path).expect("read the snapshot's memory");
    let len = contents.len() as u64;
    assert!(
        len.is_multiple_of(HUGE),
        "guest memory is whole 2 MiB pages"
    );
    let Some(_pool) = reserve_huge_pages(len / HUGE) else {
        return;
    };
    let socket = dir.path().join("reap.sock");
    let _handler = start_handler(&socket, &["--snapshot".as_ref(), snap.as_ref()]);

    let uffd = Uffd::with_features(UFFD_FEATURE_EVENT_REMOVE).expect("userfaultfd");
    let region = Region::huge(len);
    uffd.register_missing(region.ptr as u64, len)
        .expect("register");
    let regions = [GuestRegionUffdMapping {
        base_host_virt_addr: region.ptr as u64,
        size: len,
        offset: 0,
        page_size: HUGE,
    }];
    let (stream, reply) = snapbpf_uffd::send_to_handler(
        &socket,
        &uffd,
        &regions,
        Duration::from_secs(60),
        snapbpf_uffd::HandlerKind::Snapbpf,
    )
    .expect("handshake");
    let HandlerReply::Extended { ack, .. } = reply else {
        panic!("our handler speaks the extension");
    };
    assert!(ack.bytes > 0, "the working set was installed: {ack:?}");
    assert!(
        ack.bytes.is_multiple_of(HUGE) && ack.ranges == ack.bytes / HUGE,
        "installed as whole huge pages, one call each: {ack:?}"
    );
    // Every 4 KiB page, at two places, holds the snapshot's bytes.
    let mut wrong = 0;
    for page in 0..len / PAGE {
        for at in [page * PAGE, page * PAGE + 2049] {
            if region.at(at) != contents[at as usize] {
                wrong += 1;
            }
        }
    }
    assert_eq!(wrong, 0, "bytes that differ from the snapshot's memory");
    drop(stream);
}
