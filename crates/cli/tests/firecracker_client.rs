//! `snapbpf uffd-handler` serves a VMM that behaves as Firecracker does, per its
//! documentation (`docs/snapshotting/handling-page-faults-on-snapshot-resume.md`) and its
//! UFFD backend: guest memory in several anonymous regions, one userfaultfd with
//! `UFFD_FEATURE_EVENT_REMOVE` (for the balloon), one message with the region list and the
//! descriptor, vCPU threads faulting at once, and balloon inflation (`MADV_DONTNEED`) whose
//! pages must read as zeros afterwards. Several such VMMs share one handler socket.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use snapbpf_uffd::{abi::UFFD_FEATURE_EVENT_REMOVE, GuestRegionUffdMapping, Uffd};

const PAGE: u64 = 4096;
const REGION_PAGES: u64 = 256;

/// Byte 17 of every page of the memory file: unique per page, never zero.
fn marker(page: u64) -> u8 {
    (page % 251) as u8 + 1
}

/// Anonymous memory, as Firecracker maps guest memory for the UFFD backend.
struct Region {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the threads that share it
// only read it, and the kernel serialises the faults they take.
unsafe impl Sync for Region {}

impl Region {
    fn new(len: u64) -> Self {
        // SAFETY: a new private anonymous mapping aliasing nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
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
        assert!((page * PAGE) < self.len as u64);
        // SAFETY: inside our mapping; a missing page is served by the handler.
        unsafe { std::ptr::read_volatile((self.ptr as u64 + page * PAGE + 17) as *const u8) }
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
    let (stream, _reply) =
        snapbpf_uffd::send_to_handler(socket, &uffd, &regions, Duration::from_secs(30))
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
    let balloon = regions_mem[1].ptr as u64 + 10 * PAGE;
    // SAFETY: dropping pages of our own mapping.
    let rc = unsafe {
        libc::madvise(
            balloon as *mut libc::c_void,
            10 * PAGE as usize,
            libc::MADV_DONTNEED,
        )
    };
    if rc != 0 {
        return Err("madvise failed".into());
    }
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
    if Uffd::new().is_err() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no userfaultfd and CI=true");
        }
        eprintln!("\n!!!!!!!! SKIPPED: no userfaultfd here !!!!!!!!\n");
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
    let mut handler = std::process::Command::new(bin())
        .args(["uffd-handler", "--socket"])
        .arg(&socket)
        .arg("--memory-file")
        .arg(&memory)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the handler");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Three VMMs at once on one socket.
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|s| {
        let vmms: Vec<_> = (0..3)
            .map(|_| s.spawn(|| firecracker_like_vmm(&socket)))
            .collect();
        vmms.into_iter()
            .map(|v| v.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect()
    });
    let _ = handler.kill();
    let _ = handler.wait();
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.is_ok(), "VMM {i}: {o:?}");
    }
}
