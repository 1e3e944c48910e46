//! Sealed memfds that hold a snapshot's memory: the store's one way of making them.
//!
//! A memfd holds only the pages that carry data, at their offsets in the memory file; the
//! snapshot's zero pages stay holes, which read as zeros and cost nothing (SnapFaaS keeps
//! a VM's dirty memory, not all of it). Once filled it is sealed against writes, growing
//! and shrinking, so nobody can change a snapshot the store hands out.
//!
//! Three kinds of pages back it ([`Backing`]): 4 KiB shmem pages, shmem transparent huge
//! pages (`MADV_HUGEPAGE` on the filling mapping; needs `shmem_enabled` at `advise` or
//! more), or hugetlbfs pages (`MFD_HUGETLB`, from the reserved pool, allocated with
//! `fallocate` so a short pool is an error, not a `SIGBUS`). Huge pages hold whole 2 MiB
//! blocks: a block with one data page costs 2 MiB. What a memfd costs is measured from
//! its allocated blocks, never computed.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use serde::{Deserialize, Serialize};
use snapbpf_store::{fsutil, PAGE_SIZE};

use crate::protocol::Extent;

/// Size of a huge page (x86-64 PMD).
pub const HUGE_PAGE: u64 = 2 << 20;
/// Bytes read from the memory file at a time.
const CHUNK: u64 = 4 << 20;
const THP_SHMEM_SETTING: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
const FREE_HUGE_PAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

/// What backs the store's memfds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backing {
    /// 4 KiB shmem pages.
    #[default]
    Shmem,
    /// Shmem transparent huge pages (2 MiB where the kernel can allocate them).
    Thp,
    /// hugetlbfs pages from the reserved pool (`vm.nr_hugepages`).
    Hugetlb,
}

impl Backing {
    /// Every backing, by its command-line name.
    pub const ALL: [(&'static str, Backing); 3] = [
        ("none", Backing::Shmem),
        ("thp", Backing::Thp),
        ("hugetlb", Backing::Hugetlb),
    ];

    /// Its command-line name (`--huge-pages NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Shmem => "none",
            Self::Thp => "thp",
            Self::Hugetlb => "hugetlb",
        }
    }

    /// Checks that this host can back memfds this way; the error names the setting to
    /// change.
    pub fn check_host(self) -> Result<(), BackingError> {
        match self {
            Self::Shmem => Ok(()),
            Self::Thp => {
                let setting = read_sysfs(THP_SHMEM_SETTING)?;
                let selected = selected_setting(&setting);
                match selected.as_str() {
                    "always" | "within_size" | "advise" | "force" => Ok(()),
                    _ => Err(BackingError::ThpOff(selected)),
                }
            }
            Self::Hugetlb => {
                let free: u64 = read_sysfs(FREE_HUGE_PAGES)?.trim().parse().unwrap_or(0);
                if free == 0 {
                    return Err(BackingError::NoHugePages);
                }
                Ok(())
            }
        }
    }

    /// The smallest unit of memory a memfd of this backing allocates.
    pub fn granule(self) -> u64 {
        match self {
            Self::Hugetlb => HUGE_PAGE,
            Self::Shmem | Self::Thp => PAGE_SIZE,
        }
    }
}

/// The bracketed choice of a sysfs setting such as `always within_size [advise] never`.
fn selected_setting(text: &str) -> String {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or(text.trim())
        .to_string()
}

fn read_sysfs(path: &'static str) -> Result<String, BackingError> {
    std::fs::read_to_string(path).map_err(|source| BackingError::Sysfs { path, source })
}

/// Why the host cannot back memfds as asked.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// Shmem THP is off.
    #[error("shmem transparent huge pages are '{0}' on this host: set {THP_SHMEM_SETTING} to 'advise' (or 'within_size', 'always') to use --huge-pages thp")]
    ThpOff(String),
    /// No hugetlbfs pages are reserved.
    #[error("no 2 MiB huge pages are free: reserve them (`sysctl vm.nr_hugepages=N`) to use --huge-pages hugetlb")]
    NoHugePages,
    /// A setting cannot be read (no THP, no hugetlbfs in this kernel).
    #[error("cannot read {path}: this kernel does not offer these huge pages")]
    Sysfs {
        /// The setting.
        path: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Errors making a memfd.
#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
    /// The memory file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file changed while it was copied (or is not the size its metadata names).
    #[error("{0} changed while the store copied it (or is not the size its metadata names)")]
    Changed(PathBuf),
    /// The huge-page pool ran out.
    #[error("the huge-page pool is exhausted ({needed} more bytes of 2 MiB pages wanted): reserve more with `sysctl vm.nr_hugepages`")]
    PoolExhausted {
        /// Bytes still to allocate.
        needed: u64,
    },
    /// A memfd operation failed.
    #[error("memfd: {what}")]
    Memfd {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn memfd_err(what: &'static str) -> impl FnOnce(std::io::Error) -> MemfdError {
    move |source| MemfdError::Memfd { what, source }
}

/// A sealed memfd holding a snapshot's memory at `extents`.
#[derive(Debug)]
pub struct SealedMemory {
    /// The descriptor.
    pub fd: OwnedFd,
    /// Where it holds data (sorted, disjoint).
    pub extents: Vec<Extent>,
    /// Bytes of memory it holds (allocated blocks, measured).
    pub bytes: u64,
}

/// A memfd being filled; [`Filler::seal`] makes it a [`SealedMemory`].
struct Filler {
    file: File,
    backing: Backing,
    /// A shared writable mapping of the whole memfd, for huge-page backings (hugetlbfs
    /// has no `write`; shmem THP is allocated on faults in a `MADV_HUGEPAGE` mapping).
    map: Option<NonNull<u8>>,
    len: u64,
    /// Huge pages allocated so far (hugetlbfs), as one past the last 2 MiB block.
    allocated_to: u64,
    extents: Vec<Extent>,
}

impl Filler {
    fn create(len: u64, backing: Backing) -> Result<Self, MemfdError> {
        let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        if backing == Backing::Hugetlb {
            // MFD_HUGE_2MB: log2(2 MiB) << MFD_HUGE_SHIFT.
            flags |= libc::MFD_HUGETLB | (21 << 26);
        }
        let name = c"snapbpf-store";
        // SAFETY: memfd_create takes a NUL-terminated name and flags, returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd < 0 {
            return Err(memfd_err("create")(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len).map_err(memfd_err("size"))?;
        let mut filler = Self {
            file,
            backing,
            map: None,
            len,
            allocated_to: 0,
            extents: Vec::new(),
        };
        if backing != Backing::Shmem {
            // SAFETY: a new shared mapping of our own memfd at an address of the kernel's
            // choosing: it aliases nothing in this process. NORESERVE: hugetlbfs pages are
            // allocated up front with fallocate, so no fault here ever needs the pool.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_NORESERVE,
                    filler.file.as_raw_fd(),
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(memfd_err("map")(std::io::Error::last_os_error()));
            }
            filler.map = NonNull::new(ptr.cast());
            if backing == Backing::Thp {
                // SAFETY: advice on the mapping we just made; it changes no contents.
                let rc = unsafe { libc::madvise(ptr, len as usize, libc::MADV_HUGEPAGE) };
                if rc != 0 {
                    return Err(memfd_err("MADV_HUGEPAGE")(std::io::Error::last_os_error()));
                }
            }
        }
        Ok(filler)
    }

    /// Writes `bytes` (whole pages) at `offset` and records them as an extent.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), MemfdError> {
        let len = bytes.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let page = offset / PAGE_SIZE;
        let pages = len / PAGE_SIZE;
        match self.extents.last_mut() {
            Some(last) if last.end() == page => last.pages += pages,
            _ => self.extents.push(Extent { page, pages }),
        }
        let Some(map) = self.map else {
            return self
                .file
                .write_all_at(bytes, offset)
                .map_err(memfd_err("write"));
        };
        if self.backing == Backing::Hugetlb {
            let first = (offset / HUGE_PAGE * HUGE_PAGE).max(self.allocated_to);
            let end = (offset + len).div_ceil(HUGE_PAGE) * HUGE_PAGE;
            if end > first {
                // SAFETY: fallocate on our own memfd with integer arguments.
                let rc = unsafe {
                    libc::fallocate(
                        self.file.as_raw_fd(),
                        0,
                        first as libc::off_t,
                        (end - first) as libc::off_t,
                    )
                };
                if rc != 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(match e.raw_os_error() {
                        Some(libc::ENOSPC | libc::ENOMEM) => MemfdError::PoolExhausted {
                            needed: end - first,
                        },
                        _ => memfd_err("allocate huge pages")(e),
                    });
                }
                self.allocated_to = end;
            }
        }
        if offset + len > self.len {
            return Err(memfd_err("write")(std::io::ErrorKind::InvalidInput.into()));
        }
        // SAFETY: `offset + len` lies inside the mapping (checked above), so the offset
        // pointer stays within it.
        let dst = unsafe { map.as_ptr().add(offset as usize) };
        // SAFETY: `dst..dst + len` lies inside the mapping, which this value owns and
        // nothing else references; `bytes` is distinct memory. Hugetlbfs blocks under it
        // were allocated above.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        Ok(())
    }

    /// Unmaps, seals and measures the memfd.
    fn seal(mut self) -> Result<SealedMemory, MemfdError> {
        self.unmap();
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: fcntl(F_ADD_SEALS) on our own memfd with integer flags.
        if unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(memfd_err("seal")(std::io::Error::last_os_error()));
        }
        let bytes = allocated_bytes(&self.file).map_err(memfd_err("stat"))?;
        // A second descriptor of the same memfd outlives this filler (whose Drop only
        // unmaps, and closes the first).
        let fd = OwnedFd::from(self.file.try_clone().map_err(memfd_err("dup"))?);
        Ok(SealedMemory {
            fd,
            extents: std::mem::take(&mut self.extents),
            bytes,
        })
    }

    fn unmap(&mut self) {
        if let Some(map) = self.map.take() {
            // SAFETY: unmapping exactly the mapping this value made; nothing references it.
            unsafe { libc::munmap(map.as_ptr().cast(), self.len as usize) };
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// Bytes of memory `file` holds: its allocated blocks (for shmem and hugetlbfs, the pages
/// it owns).
pub fn allocated_bytes(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

/// Copies the memory file at `path` (`size` bytes) into a new sealed memfd, leaving its
/// zero pages as holes, and returns it with the identity digest of every byte copied. The file is
/// opened once, and copied and hashed from that one descriptor: what is hashed is what
/// the memfd holds, whatever happens at the path meanwhile (a file changed during the
/// copy is refused: its size, mtime or ctime moved). Reads with `O_DIRECT`: the store's
/// copy is the memory, and the page cache would hold it a second time.
pub fn load_file(
    path: &Path,
    size: u64,
    backing: Backing,
) -> Result<(SealedMemory, [u8; 32]), MemfdError> {
    use std::os::unix::fs::MetadataExt;
    let read_err = |source| MemfdError::Read {
        path: path.to_path_buf(),
        source,
    };
    let (source, _) = fsutil::open_direct(path).map_err(read_err)?;
    let stat = |f: &File| {
        f.metadata()
            .map(|m| {
                (
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
            .map_err(read_err)
    };
    let before = stat(&source)?;
    if before.0 != size {
        return Err(MemfdError::Changed(path.to_path_buf()));
    }
    let mut hasher = snapbpf_store::TreeHasher::new();
    let mut filler = Filler::create(size, backing)?;
    let mut buf = fsutil::AlignedBuf::new(CHUNK).map_err(read_err)?;
    let extents = fsutil::data_extents(&source, size).map_err(read_err)?;
    let mut hashed = 0u64;
    for (start, end) in extents {
        // A hole reads as zeros: nothing to copy, hashed without reading.
        hasher.update_zeros(start - hashed);
        copy_extent(
            &source,
            start,
            end,
            &mut buf,
            &mut hasher,
            &mut filler,
            &read_err,
        )?;
        hashed = end;
    }
    hasher.update_zeros(size - hashed);
    if stat(&source)? != before {
        return Err(MemfdError::Changed(path.to_path_buf()));
    }
    Ok((filler.seal()?, hasher.finish().digest))
}

/// Copies the data extent `[start, end)` of `source` into `filler` (its zero pages left as
/// holes) and hashes it.
fn copy_extent(
    source: &File,
    start: u64,
    end: u64,
    buf: &mut fsutil::AlignedBuf,
    hasher: &mut snapbpf_store::TreeHasher,
    filler: &mut Filler,
    read_err: &dyn Fn(std::io::Error) -> MemfdError,
) -> Result<(), MemfdError> {
    let mut offset = start;
    while offset < end {
        let n = (end - offset).min(CHUNK) as usize;
        let mut got = 0usize;
        while got < n {
            // Direct reads want whole blocks: ask for the rest of the buffer.
            let read = fsutil::read_at(source, &mut buf.as_mut_slice()[got..], offset + got as u64)
                .map_err(read_err)?;
            if read == 0 {
                return Err(read_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            got += read;
        }
        let data = &buf.as_mut_slice()[..n];
        hasher.update(data);
        for run in fsutil::data_page_runs(data) {
            filler.write(offset + run.start as u64, &data[run.clone()])?;
        }
        offset += n as u64;
    }
    Ok(())
}

/// Copies `extents` of the sealed memfd `source` (`size` bytes) into a new sealed memfd:
/// how the store trims a snapshot to its working set without touching the disk.
pub fn copy_extents(
    source: &File,
    size: u64,
    extents: &[Extent],
    backing: Backing,
) -> Result<SealedMemory, MemfdError> {
    let mut filler = Filler::create(size, backing)?;
    let mut buf = vec![0u8; CHUNK as usize];
    for e in extents {
        let mut offset = e.offset();
        let end = e.offset() + e.len_bytes();
        while offset < end {
            let n = (end - offset).min(CHUNK) as usize;
            source
                .read_exact_at(&mut buf[..n], offset)
                .map_err(memfd_err("read"))?;
            filler.write(offset, &buf[..n])?;
            offset += n as u64;
        }
    }
    filler.seal()
}

/// The pages of `held` that are also in `wanted` (page runs in any order), as sorted,
/// disjoint extents.
pub fn intersect(held: &[Extent], wanted: impl IntoIterator<Item = (u64, u64)>) -> Vec<Extent> {
    let mut wanted: Vec<(u64, u64)> = wanted.into_iter().filter(|&(_, n)| n > 0).collect();
    wanted.sort_unstable();
    let mut out: Vec<Extent> = Vec::new();
    let mut h = held.iter().peekable();
    for (start, pages) in wanted {
        let end = start.saturating_add(pages);
        while h.peek().is_some_and(|e| e.end() <= start) {
            h.next();
        }
        for e in h.clone() {
            if e.page >= end {
                break;
            }
            let from = e.page.max(start);
            let to = e.end().min(end);
            if from < to {
                match out.last_mut() {
                    Some(last) if last.end() >= from => {
                        last.pages = last.pages.max(to - last.page);
                    }
                    _ => out.push(Extent {
                        page: from,
                        pages: to - from,
                    }),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(page: u64, pages: u64) -> Extent {
        Extent { page, pages }
    }

    #[test]
    fn intersection_keeps_only_held_wanted_pages() {
        let held = [e(0, 4), e(10, 10), e(30, 2)];
        // Unsorted, overlapping wanted runs; one outside everything.
        let got = intersect(&held, [(12, 3), (2, 10), (14, 2), (25, 3), (31, 5)]);
        assert_eq!(got, vec![e(2, 2), e(10, 6), e(31, 1)]);
        assert!(intersect(&held, []).is_empty());
        assert!(intersect(&[], [(0, 5)]).is_empty());
    }

    #[test]
    fn selected_setting_is_the_bracketed_word() {
        assert_eq!(
            selected_setting("always within_size advise [never] deny force"),
            "never"
        );
        assert_eq!(selected_setting("[advise] never"), "advise");
    }

    /// A memfd loaded from a file holds exactly its data pages, reads back as the file,
    /// costs only those pages, and is sealed.
    #[test]
    fn a_loaded_memfd_holds_the_data_pages_only() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("scratch");
        let path = dir.path().join("memory");
        let pages = 1024u64;
        let mut bytes = vec![0u8; (pages * PAGE_SIZE) as usize];
        // Data in pages 3..5, 100 and 1023; everything else zero.
        for p in [3u64, 4, 100, 1023] {
            bytes[(p * PAGE_SIZE) as usize + 17] = p as u8 | 1;
        }
        std::fs::write(&path, &bytes).expect("write");
        let (sealed, digest) = load_file(&path, bytes.len() as u64, Backing::Shmem).expect("load");
        assert_eq!(
            digest,
            snapbpf_store::FileIdentity::of_bytes(&bytes).digest,
            "the digest covers every byte, zero pages included"
        );
        assert!(matches!(
            load_file(&path, bytes.len() as u64 + PAGE_SIZE, Backing::Shmem),
            Err(MemfdError::Changed(_))
        ));
        assert_eq!(sealed.extents, vec![e(3, 2), e(100, 1), e(1023, 1)]);
        assert_eq!(sealed.bytes, 4 * PAGE_SIZE);
        let file = File::from(sealed.fd);
        let mut back = vec![0u8; bytes.len()];
        file.read_exact_at(&mut back, 0).expect("read back");
        assert!(back == bytes, "the memfd reads back as the file");
        assert!(
            file.write_all_at(&[1], 0).is_err(),
            "a sealed memfd refuses writes"
        );
        // Trimmed to pages 4..100: page 4 and 100 stay.
        let trimmed = copy_extents(
            &file,
            bytes.len() as u64,
            &intersect(&[e(3, 2), e(100, 1), e(1023, 1)], [(4, 97)]),
            Backing::Shmem,
        )
        .expect("trim");
        assert_eq!(trimmed.extents, vec![e(4, 1), e(100, 1)]);
        assert_eq!(trimmed.bytes, 2 * PAGE_SIZE);
    }
}
