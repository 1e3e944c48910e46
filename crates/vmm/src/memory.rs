//! Guest memory: one host mapping that KVM sees as the guest's RAM.
//!
//! Every address this module takes is an *offset into guest RAM*, which is also the
//! offset into a snapshot's memory file: the mapping is the memory file's image. Below
//! [`LOW_MEM_END`](snapbpf_guest_abi::LOW_MEM_END) it equals the guest-physical address; RAM beyond it lies above the
//! 32-bit gap, at [`HIGH_MEM_BASE`](snapbpf_guest_abi::HIGH_MEM_BASE), in a second memory slot over the same mapping
//! ([`RamLayout`](snapbpf_guest_abi::RamLayout) converts). Only the VMM's exit handling sees guest-physical addresses.
//!
//! The VMM core does not decide how memory is backed. A restore strategy builds the mapping
//! (anonymous for a fresh boot or userfaultfd, a `MAP_PRIVATE` file mapping of a snapshot's
//! memory file for page-cache strategies) and hands it over as a [`GuestMemory`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use snapbpf_guest_abi::{MAX_MEM_BYTES, PAGE_SIZE};

/// Errors creating or accessing guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The guest memory size is not a non-zero multiple of 2 MiB within the layout.
    #[error("guest memory size {0} bytes is not a non-zero multiple of 2 MiB at most {max} GiB", max = MAX_MEM_BYTES >> 30)]
    BadSize(u64),
    /// mmap failed.
    #[error("cannot map {len} bytes of guest memory: {source}")]
    Map {
        /// Requested length.
        len: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// An access fell outside guest memory.
    #[error(
        "guest memory range {offset:#x}+{len:#x} lies outside guest memory of {size:#x} bytes"
    )]
    OutOfRange {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of guest memory.
        size: u64,
    },
    /// Filling guest memory from a file failed.
    #[error("cannot fill guest memory {offset:#x}+{len:#x} from its source")]
    Fill {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Huge pages were asked for but the system has transparent huge pages off.
    #[error("huge pages need transparent huge pages, but {THP_ENABLED} is \"never\" (set it to \"madvise\" or \"always\")")]
    HugePagesDisabled,
    /// A new mapping could not be placed over part of guest memory.
    #[error("cannot map {what} over guest memory {offset:#x}+{len:#x}: {source}")]
    Remap {
        /// What was being mapped.
        what: &'static str,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// A range is not page aligned.
    #[error("guest memory range {offset:#x}+{len:#x} is not a non-empty run of whole pages")]
    Unaligned {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// A read from guest memory did not complete in time (its page was never served).
    #[error("reading guest memory at {offset:#x} did not complete within {timeout:?}: nothing served its page")]
    ReadTimeout {
        /// Address read.
        offset: u64,
        /// How long it waited.
        timeout: std::time::Duration,
    },
    /// A helper thread could not be started.
    #[error("cannot start a thread to read guest memory: {0}")]
    Thread(std::io::Error),
    /// madvise failed.
    #[error("madvise({advice}) on guest memory failed: {source}")]
    Advise {
        /// The advice, by name.
        advice: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The system-wide transparent huge page policy.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Whether the policy is `[never]` (an unreadable file counts as enabled: the advice is
/// then tried and harmless).
fn transparent_huge_pages_disabled() -> bool {
    std::fs::read_to_string(THP_ENABLED).is_ok_and(|s| s.contains("[never]"))
}

/// Whether [`GuestMemory::use_huge_pages`] can take effect: transparent huge pages are
/// not off system-wide. (Whether a file's page cache then holds 2 MiB folios is up to
/// its filesystem: see [`Populator::large_folio_at`].)
pub fn huge_pages_available() -> bool {
    !transparent_huge_pages_disabled()
}

/// `/proc/kpageflags` bits of a page that belongs to a compound (large) folio.
const KPF_COMPOUND_HEAD: u64 = 1 << 15;
const KPF_COMPOUND_TAIL: u64 = 1 << 16;

/// How the kernel should read ahead on faults in a file-backed guest mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultReadahead {
    /// `MADV_RANDOM`: every fault reads exactly one page (Linux-NoRA).
    Off,
    /// `MADV_NORMAL`: the kernel's mmap read-around, with the window of the file's
    /// readahead state (Linux-RA).
    On,
}

/// One contiguous host mapping used as guest RAM (addressed by RAM offset).
///
/// Owns the mapping and unmaps it on drop.
#[derive(Debug)]
pub struct GuestMemory {
    base: NonNull<u8>,
    len: u64,
    /// Some part maps a file: its untouched pages read the file, not zeros.
    file_backed: std::sync::atomic::AtomicBool,
}

// SAFETY: the mapping is plain memory owned by this value; sending it to another thread
// moves that ownership. Concurrent access from the guest is governed by KVM, not by Rust.
unsafe impl Send for GuestMemory {}

/// Checks that `len` is a usable guest memory size.
pub fn check_size(len: u64) -> Result<(), MemoryError> {
    if len == 0 || !len.is_multiple_of(2 << 20) || len > MAX_MEM_BYTES {
        return Err(MemoryError::BadSize(len));
    }
    Ok(())
}

impl GuestMemory {
    /// Anonymous, zero-filled guest memory (a fresh boot).
    pub fn anonymous(len: u64) -> Result<Self, MemoryError> {
        Self::map(len, libc::MAP_ANONYMOUS, -1)
    }

    /// A copy-on-write (`MAP_PRIVATE`) mapping of `file`'s first `len` bytes.
    ///
    /// Reads are served from the page cache and shared with every other process that maps
    /// the file; guest writes create private anonymous copies.
    pub fn map_file_private(file: &File, len: u64) -> Result<Self, MemoryError> {
        let memory = Self::map(len, 0, file.as_raw_fd())?;
        memory
            .file_backed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(memory)
    }

    fn map(len: u64, extra_flags: libc::c_int, fd: libc::c_int) -> Result<Self, MemoryError> {
        check_size(len)?;
        // SAFETY: a new private mapping (anonymous, or of a file the caller holds open) at
        // an address of the kernel's choosing: it aliases nothing in this process, and
        // private mappings never write back to a file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE | extra_flags,
                fd,
                0,
            )
        };
        Self::from_mmap_result(ptr, len)
    }

    fn from_mmap_result(ptr: *mut libc::c_void, len: u64) -> Result<Self, MemoryError> {
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(MemoryError::Map {
            len,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        Ok(Self {
            base,
            len,
            file_backed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The runs of guest memory that may hold data, as (offset, len) in address order: every
    /// page the host's page tables map (the guest or this process touched it) or that is
    /// swapped out, as `/proc/self/pagemap` reports them. A page outside them was never
    /// touched and reads as zeros, so a snapshot can skip it without reading it; the
    /// cost is 8 bytes of pagemap per page, not a fault per page. `None` when part of the
    /// mapping is a file's (its untouched pages read the file).
    pub fn touched_ranges(&self) -> Result<Option<Vec<(u64, u64)>>, MemoryError> {
        use std::os::unix::fs::FileExt;
        if self.file_backed.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let fill_err = |source| MemoryError::Fill {
            offset: 0,
            len: self.len,
            source,
        };
        let pagemap = File::open("/proc/self/pagemap").map_err(fill_err)?;
        const PRESENT: u64 = 1 << 63;
        const SWAPPED: u64 = 1 << 62;
        const BATCH: u64 = 64 << 10;
        let first = self.base.as_ptr() as u64 / PAGE_SIZE;
        let pages = self.len / PAGE_SIZE;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut raw = vec![0u8; (BATCH * 8) as usize];
        let mut page = 0u64;
        while page < pages {
            let n = (pages - page).min(BATCH);
            let buf = &mut raw[..(n * 8) as usize];
            pagemap
                .read_exact_at(buf, (first + page) * 8)
                .map_err(fill_err)?;
            for (i, entry) in buf.chunks_exact(8).enumerate() {
                let entry = u64::from_ne_bytes(entry.try_into().unwrap_or_default());
                if entry & (PRESENT | SWAPPED) == 0 {
                    continue;
                }
                let offset = (page + i as u64) * PAGE_SIZE;
                match ranges.last_mut() {
                    Some((start, len)) if *start + *len == offset => *len += PAGE_SIZE,
                    _ => ranges.push((offset, PAGE_SIZE)),
                }
            }
            page += n;
        }
        Ok(Some(ranges))
    }

    /// Sets the fault readahead policy of the whole mapping.
    pub fn set_fault_readahead(&self, readahead: FaultReadahead) -> Result<(), MemoryError> {
        let (advice, name) = match readahead {
            FaultReadahead::Off => (libc::MADV_RANDOM, "MADV_RANDOM"),
            FaultReadahead::On => (libc::MADV_NORMAL, "MADV_NORMAL"),
        };
        self.advise(0, self.len, advice, name)
    }

    /// Asks for transparent huge pages over the whole mapping (`MADV_HUGEPAGE`).
    ///
    /// On a file mapping this makes the kernel read 2 MiB, PMD-sized page-cache folios on
    /// faults and map them with one PMD entry; KVM then maps the guest's 2 MiB pages with
    /// one entry instead of 512. Read faults still share the page-cache folios; a write
    /// splits the PMD and copies one 4 KiB page.
    ///
    /// Fails with [`MemoryError::HugePagesDisabled`] when transparent huge pages are off
    /// system-wide, where the advice would be silently ignored.
    pub fn use_huge_pages(&self) -> Result<(), MemoryError> {
        if transparent_huge_pages_disabled() {
            return Err(MemoryError::HugePagesDisabled);
        }
        self.advise(0, self.len, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")
    }

    /// Takes these `(offset, len)` runs back from [`GuestMemory::use_huge_pages`]
    /// (`MADV_NOHUGEPAGE`): faults there map 4 KiB pages.
    pub fn use_base_pages_in(&self, runs: &[(u64, u64)]) -> Result<(), MemoryError> {
        for &(offset, len) in runs {
            let len = len.min(self.len.saturating_sub(offset));
            if len > 0 {
                self.advise(offset, len, libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE")?;
            }
        }
        Ok(())
    }

    /// Applies `madvise(advice)` to the guest memory range `[offset, offset + len)`.
    pub fn advise(
        &self,
        offset: u64,
        len: u64,
        advice: libc::c_int,
        name: &'static str,
    ) -> Result<(), MemoryError> {
        let host = self.host_range(offset, len)?;
        // SAFETY: the range lies inside our own mapping (checked above); madvise changes
        // paging hints only, except MADV_DONTNEED, whose discard semantics the caller asks for.
        let rc = unsafe { libc::madvise(host.cast(), len as usize, advice) };
        if rc != 0 {
            return Err(MemoryError::Advise {
                advice: name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Replaces the guest memory range `[offset, offset + len)` with fresh anonymous,
    /// zero-filled memory (as Firecracker's `discard_range` does over a private file
    /// mapping): its old contents are discarded, its next touch is a zero-page fault with
    /// no I/O, and writes stay private to this process.
    ///
    /// The caller declares the range's contents dead: only the VMM thread that owns the
    /// vCPU calls this, between guest exits. KVM's MMU notifier drops any translation of
    /// the old pages.
    pub fn map_anonymous(&self, offset: u64, len: u64) -> Result<(), MemoryError> {
        self.map_over(
            offset,
            len,
            "anonymous memory",
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    }

    /// As [`map_anonymous`](Self::map_anonymous), and asks for transparent huge pages
    /// (`MADV_HUGEPAGE`) over the whole 2 MiB blocks the range covers: a fresh 2 MiB block
    /// then costs one fault and one zeroing instead of 512 faults. Returns the bytes so
    /// advised (0 where transparent huge pages are off, or no whole block is covered).
    /// A block is only advised when the guest gave the whole of it, so no memory is
    /// committed that the guest did not hand out.
    pub fn map_anonymous_huge(&self, offset: u64, len: u64) -> Result<u64, MemoryError> {
        self.map_anonymous(offset, len)?;
        const HUGE: u64 = 2 << 20;
        let host = self.host_range(offset, len)? as u64;
        // Whole blocks of the host mapping (huge pages are aligned in the host's address
        // space; KVM maps them huge where the guest address is aligned alike).
        let first = host.next_multiple_of(HUGE);
        let end = (host + len) / HUGE * HUGE;
        if end <= first || transparent_huge_pages_disabled() {
            return Ok(0);
        }
        self.advise(
            offset + (first - host),
            end - first,
            libc::MADV_HUGEPAGE,
            "MADV_HUGEPAGE",
        )?;
        Ok(end - first)
    }

    /// Maps `len` bytes of `file` from `file_offset` copy-on-write over the guest memory
    /// range `[offset, offset + len)`: reads then come from the file's page cache (shared with
    /// every process that maps it), writes stay private.
    pub fn map_file(
        &self,
        offset: u64,
        len: u64,
        file: &File,
        file_offset: u64,
    ) -> Result<(), MemoryError> {
        if !file_offset.is_multiple_of(PAGE_SIZE) || file_offset > i64::MAX as u64 {
            return Err(MemoryError::Unaligned {
                offset: file_offset,
                len,
            });
        }
        self.map_over(
            offset,
            len,
            "a file range",
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            file_offset as i64,
        )
    }

    fn map_over(
        &self,
        offset: u64,
        len: u64,
        what: &'static str,
        flags: libc::c_int,
        fd: libc::c_int,
        file_offset: i64,
    ) -> Result<(), MemoryError> {
        if len == 0 || !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::Unaligned { offset, len });
        }
        if fd >= 0 {
            self.file_backed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let addr = self.host_range(offset, len)?;
        // SAFETY: `addr..addr + len` lies inside the mapping this value owns (checked by
        // host_range) and is page aligned; MAP_FIXED replaces exactly those pages, so no
        // other mapping of this process is touched, and no Rust reference points into
        // guest memory (it is only accessed through copies). The replacement stays part
        // of the range that `Drop` unmaps.
        let mapped = unsafe {
            libc::mmap(
                addr.cast(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                file_offset,
            )
        };
        if mapped == libc::MAP_FAILED || mapped != addr.cast() {
            return Err(MemoryError::Remap {
                what,
                offset,
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Makes the guest memory range `[offset, offset + len)` private, present and writable
    /// now (`MADV_POPULATE_WRITE`): over a private file mapping the kernel copies each
    /// page from the file into an anonymous page of this process (the contents stay the
    /// same), so the vCPU later takes no fault and no copy-on-write there.
    pub fn populate_write(&self, offset: u64, len: u64) -> Result<(), MemoryError> {
        let host = self.host_range(offset, len)?;
        // SAFETY: the range lies inside our own mapping (checked above); populating for
        // writing breaks copy-on-write sharing but never changes what the memory reads.
        let rc = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_POPULATE_WRITE) };
        if rc != 0 {
            return Err(MemoryError::Advise {
                advice: "MADV_POPULATE_WRITE",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// A handle that populates page tables of this memory from other threads (see
    /// [`Populator`]).
    pub fn populator(&self) -> Populator {
        Populator {
            base: self.base.as_ptr() as usize,
            len: self.len,
        }
    }

    /// Reads the `u64` at `offset` on a helper thread and waits at most `timeout` for it.
    ///
    /// For memory whose pages another party serves (a userfaultfd handler in another
    /// process): a read of a page nobody serves blocks forever, in a way no signal or
    /// watchdog interrupts. On time-out the mapping is leaked, because the blocked thread
    /// still reads from it, and the memory is gone: the caller fails the restore.
    pub fn read_u64_within(
        self,
        offset: u64,
        timeout: std::time::Duration,
    ) -> Result<(Self, u64), MemoryError> {
        if !offset.is_multiple_of(8) {
            return Err(MemoryError::Unaligned { offset, len: 8 });
        }
        let addr = self.host_range(offset, 8)? as usize;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("guest-memory-probe".into())
            .spawn(move || {
                // SAFETY: `addr` is 8 readable, 8-byte aligned bytes inside guest memory,
                // which stays mapped while this thread may read it: on success the read
                // completes before `self` is handed back, and on time-out the mapping is
                // leaked, never unmapped.
                let value = unsafe { std::ptr::read_volatile(addr as *const u64) };
                let _ = tx.send(value);
            })
            .map_err(MemoryError::Thread)?;
        match rx.recv_timeout(timeout) {
            Ok(value) => Ok((self, value)),
            Err(_) => {
                std::mem::forget(self);
                Err(MemoryError::ReadTimeout { offset, timeout })
            }
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: guest memory is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Host virtual address of RAM offset 0.
    pub fn host_base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Host address of `[offset, offset + len)`, checked to lie inside guest memory.
    pub fn host_range(&self, offset: u64, len: u64) -> Result<*mut u8, MemoryError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: offset < self.len, so the offset stays inside our mapping.
                Ok(unsafe { self.base.as_ptr().add(offset as usize) })
            }
            _ => Err(MemoryError::OutOfRange {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies `bytes` into guest memory at `offset`.
    ///
    /// Guest memory is shared with the vCPU and with other processes' page tables, so it
    /// is never borrowed as a Rust slice: copies in and out are volatile, as in
    /// `vm-memory`, and a racing guest can at worst see or leave torn bytes.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        let dst = self.host_range(offset, bytes.len() as u64)?;
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: dst..dst+len lies in our mapping (checked above), so dst + i does too;
            // a volatile store of one byte creates no reference into guest memory.
            unsafe { dst.wrapping_add(i).write_volatile(b) };
        }
        Ok(())
    }

    /// Fills guest memory `[offset, offset + len)` with `file`'s bytes from `file_offset`
    /// (`pread` straight into guest memory: one copy, no bounce buffer, and no Rust
    /// reference into guest memory: the kernel writes it).
    pub fn fill_from(
        &self,
        offset: u64,
        len: u64,
        file: &File,
        file_offset: u64,
    ) -> Result<(), MemoryError> {
        let dst = self.host_range(offset, len)?;
        let fail = |source| MemoryError::Fill {
            offset,
            len,
            source,
        };
        let mut done = 0u64;
        while done < len {
            let at = i64::try_from(file_offset + done)
                .map_err(|_| fail(std::io::ErrorKind::InvalidInput.into()))?;
            let want = (len - done).min(1 << 30) as usize;
            // SAFETY: dst + done .. dst + done + want lies inside our mapping (checked
            // above); pread(2) writes at most `want` bytes there through the kernel.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    dst.wrapping_add(done as usize).cast(),
                    want,
                    at,
                )
            };
            match n {
                n if n > 0 => done += n as u64,
                0 => return Err(fail(std::io::ErrorKind::UnexpectedEof.into())),
                _ => {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        return Err(fail(err));
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies guest memory at `offset` into `buf` (a volatile copy: see [`GuestMemory::write`]).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = self.host_range(offset, buf.len() as u64)?;
        // Bytes up to the first 8-byte boundary, then whole aligned words, then the rest.
        let lead = src.align_offset(8).min(buf.len());
        let words = (buf.len() - lead) / 8;
        let (head, rest) = buf.split_at_mut(lead);
        let (middle, tail) = rest.split_at_mut(words * 8);
        for (i, b) in head.iter_mut().enumerate() {
            // SAFETY: src + i lies in our mapping (checked above); a volatile load of one
            // byte creates no reference into guest memory.
            *b = unsafe { src.wrapping_add(i).read_volatile() };
        }
        for (i, chunk) in middle.chunks_exact_mut(8).enumerate() {
            // SAFETY: src + lead + 8i is 8-byte aligned and its 8 bytes lie in our mapping
            // (checked above); a volatile load creates no reference into guest memory.
            let word = unsafe { src.wrapping_add(lead + i * 8).cast::<u64>().read_volatile() };
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        for (i, b) in tail.iter_mut().enumerate() {
            // SAFETY: as for the leading bytes, after the last whole word.
            *b = unsafe { src.wrapping_add(lead + words * 8 + i).read_volatile() };
        }
        Ok(())
    }

    /// Reads a little-endian `u64` at `offset`.
    pub fn read_u64(&self, offset: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u64` at `offset`.
    pub fn write_u64(&self, offset: u64, value: u64) -> Result<(), MemoryError> {
        self.write(offset, &value.to_le_bytes())
    }

    /// Number of guest pages.
    pub fn pages(&self) -> u64 {
        self.len / PAGE_SIZE
    }
}

/// Populates page-table entries of a [`GuestMemory`] from helper threads (prefetchers), in
/// parallel with the vCPU. It only ever asks the kernel to map pages in
/// (`MADV_POPULATE_READ`), which never changes memory contents, so it is safe to use at any
/// time: once the memory is unmapped its calls fail with `ENOMEM` and touch nothing.
#[derive(Debug, Clone, Copy)]
pub struct Populator {
    base: usize,
    len: u64,
}

impl Populator {
    /// Size of the memory, bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: guest memory is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the page-cache page mapped at `offset` belongs to a large (multi-page) folio:
    /// `None` where that cannot be told (nothing mapped there, a private copy mapped, or
    /// no privilege to read page
    /// frame numbers, which `/proc/self/pagemap` hides from processes without
    /// `CAP_SYS_ADMIN`). Two 8-byte reads: cheap enough to check a restore's first range.
    pub fn large_folio_at(&self, offset: u64) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        if offset >= self.len {
            return None;
        }
        let vaddr = (self.base + offset as usize) as u64;
        let mut entry = [0u8; 8];
        std::fs::File::open("/proc/self/pagemap")
            .and_then(|f| f.read_exact_at(&mut entry, vaddr / 4096 * 8))
            .ok()?;
        let entry = u64::from_ne_bytes(entry);
        let (present, file_page, pfn) = (
            entry >> 63 == 1,
            entry >> 61 & 1 == 1,
            entry & ((1 << 55) - 1),
        );
        // A private copy (written by the VMM or the guest) says nothing of the page cache.
        if !present || !file_page || pfn == 0 {
            return None;
        }
        let mut flags = [0u8; 8];
        std::fs::File::open("/proc/kpageflags")
            .and_then(|f| f.read_exact_at(&mut flags, pfn * 8))
            .ok()?;
        let flags = u64::from_ne_bytes(flags);
        Some(flags & (KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL) != 0)
    }

    /// Maps the pages of `[offset, offset + len)` (clamped to the memory) into this process's
    /// page tables for reading, waiting for pages whose reads are in flight. On a private
    /// file mapping this maps the page-cache pages themselves, read-only: nothing is
    /// copied and they stay shared; a later write still copies on write.
    pub fn populate_read(&self, offset: u64, len: u64) -> Result<(), MemoryError> {
        if offset >= self.len {
            return Ok(());
        }
        let len = len.min(self.len - offset);
        // SAFETY: MADV_POPULATE_READ only faults pages in, for reading, inside the range
        // this handle was made for; it never changes their contents and fails with ENOMEM
        // where nothing is mapped any more. No Rust reference covers guest memory.
        let rc = unsafe {
            libc::madvise(
                (self.base + offset as usize) as *mut libc::c_void,
                len as usize,
                libc::MADV_POPULATE_READ,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Advise {
                advice: "MADV_POPULATE_READ",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns; nothing borrows it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_ranges_hold_every_written_page_and_untouched_memory_is_left_out() {
        let mem = GuestMemory::anonymous(8 << 20).expect("anonymous memory");
        assert_eq!(mem.touched_ranges().expect("pagemap"), Some(vec![]));
        mem.write(3 * PAGE_SIZE + 17, &[1]).expect("write");
        mem.write_u64(5 << 20, 7).expect("write");
        let ranges = mem.touched_ranges().expect("pagemap").expect("anonymous");
        let covers = |offset: u64| ranges.iter().any(|&(s, l)| (s..s + l).contains(&offset));
        assert!(covers(3 * PAGE_SIZE + 17) && covers(5 << 20), "{ranges:?}");
        let touched: u64 = ranges.iter().map(|&(_, l)| l).sum();
        // Two pages, or two huge pages where transparent huge pages are always on.
        assert!(
            touched <= 2 * (2 << 20),
            "{touched} bytes touched: {ranges:?}"
        );
        // Everything outside the ranges reads as zeros.
        let mut all = vec![0u8; 8 << 20];
        mem.read(0, &mut all).expect("read");
        for (i, page) in all.chunks(PAGE_SIZE as usize).enumerate() {
            if !covers(i as u64 * PAGE_SIZE) {
                assert!(page.iter().all(|&b| b == 0), "page {i}");
            }
        }
    }

    #[test]
    fn a_file_backed_mapping_claims_no_zeros() {
        let file = std::fs::File::open("/proc/self/exe").expect("open");
        if file.metadata().map_or(0, |m| m.len()) < 2 << 20 {
            return;
        }
        let mem = GuestMemory::map_file_private(&file, 2 << 20).expect("map");
        assert_eq!(mem.touched_ranges().expect("no pagemap needed"), None);
        let anon = GuestMemory::anonymous(4 << 20).expect("anonymous memory");
        anon.map_file(0, 2 << 20, &file, 0)
            .expect("map a file range");
        assert_eq!(anon.touched_ranges().expect("no pagemap needed"), None);
    }
}
