//! File helpers: atomic writes, page-cache residency and eviction, whole-file direct reads.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory. Readers see the old file or the new one,
/// never a partial one.
///
/// The temporary file is created exclusively (`O_EXCL`, which also never follows a
/// symbolic link) under a name no other writer uses, so a link planted at a predictable
/// name cannot redirect the write, and two writers never share a temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// Makes `path` readable and writable by its owner only (0600): for files a VMM wrote
/// that hold a tenant's memory or machine state.
pub fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Replaces `path` with `bytes` atomically for readers (temporary file, rename) but
/// without waiting for the disk: for caches, whose loss in a crash costs only recomputing
/// them (a crash may leave an empty file, which reads as an empty cache). An `fsync`
/// behind a busy writeback queue can take seconds.
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

/// Writes `bytes` to an exclusive temporary file beside `path` and renames it over `path`;
/// with `durable`, the file and then the directory are synced around the rename.
fn replace(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let (mut f, tmp) = create_exclusive(&dir, &name.to_string_lossy())?;
    let result = (|| {
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            sync_dir(&dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file `.NAME.tmp-PID-N` in `dir` that did not exist before, trying other
/// `N` where one does.
pub fn create_exclusive(dir: &Path, name: &str) -> std::io::Result<(File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..1024 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        // 0600: what goes through here is a tenant's (artifacts of its memory, chunks of
        // it, its snapshot's metadata); nobody else needs to read it.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary file name")))
}

/// Creates a new directory `PREFIX-RANDOM` in `parent`, mode 0700, that did not exist
/// before (`mkdir` fails on anything already there, a symlink included): a private place
/// under a shared directory such as `/tmp`, at a name nobody can create first.
pub fn private_dir(parent: &Path, prefix: &str) -> std::io::Result<PathBuf> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for _ in 0..64 {
        // RandomState is seeded from the OS's randomness once per process and per
        // instance after: unpredictable to another user.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let path = parent.join(format!("{prefix}-{:016x}", h.finish()));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free directory name")))
}

/// Opens `path` for reading only if it is a regular file itself: not a symbolic link
/// (`O_NOFOLLOW`), nor a FIFO, device, socket or directory (checked on the opened
/// descriptor; `O_NONBLOCK` keeps the open of a FIFO from waiting for a writer). A reader
/// of `/dev/zero` or of a FIFO would otherwise never finish.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    open_regular_with(path, 0)
}

fn open_regular_with(path: &Path, extra_flags: libc::c_int) -> std::io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | extra_flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is a symbolic link; snapbpf reads only regular files",
            ),
            _ => e,
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {what}; snapbpf reads only regular files"),
        ));
    }
    Ok(file)
}

/// Reads all of the regular file `path` (see [`open_regular`]), refusing one larger than
/// `max` bytes before reading anything.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max} bytes such a file may have"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow while it is read: read no more than the cap allows.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it grew past {max} bytes while being read"),
        ));
    }
    Ok(bytes)
}

/// The directory containing `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Number of `file`'s pages resident in the page cache.
///
/// `cachestat(2)` (Linux 6.5) visits only the cached pages, so a large sparse memory
/// file costs what it caches (`mincore` over a 16 GiB file takes 150 ms here, whatever
/// it caches); where the call is missing, `mincore` over a shared read-only mapping
/// (mapping does not fault anything in).
pub fn resident_pages(file: &File) -> std::io::Result<u64> {
    match cached_pages(file) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => resident_pages_by_mincore(file),
        counted => counted,
    }
}

/// [`resident_pages`] by `mincore`, whatever the kernel offers.
pub fn resident_pages_by_mincore(file: &File) -> std::io::Result<u64> {
    Ok(residency(file)?.iter().filter(|&&b| b & 1 != 0).count() as u64)
}

/// `cachestat(2)`'s system call number on x86-64 (libc has no binding for it yet).
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range` of `<linux/mman.h>`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    /// 0: to the end of the file.
    len: u64,
}

/// `struct cachestat` of `<linux/mman.h>`.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// The number of `file`'s pages in the page cache, by `cachestat(2)`.
fn cached_pages(file: &File) -> std::io::Result<u64> {
    let range = CachestatRange { off: 0, len: 0 };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both live and of the layouts the
    // kernel defines; the descriptor is open for the call's duration.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.nr_cache)
}

/// Per-page residency of `file` in the page cache (bit 0 of each byte).
pub fn residency(file: &File) -> std::io::Result<Vec<u8>> {
    let map = ResidencyMap::new(file)?;
    let mut vec = vec![0u8; map.pages()];
    map.scan(&mut vec)?;
    Ok(vec)
}

/// A read-only shared mapping of a file, kept to ask `mincore(2)` which of its pages
/// are in the page cache, as often as needed. It is never dereferenced, so holding it
/// faults nothing in.
#[derive(Debug)]
pub struct ResidencyMap {
    map: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is only passed to mincore and munmap, which any thread may call.
unsafe impl Send for ResidencyMap {}

impl ResidencyMap {
    /// Maps `file` (its current length).
    pub fn new(file: &File) -> std::io::Result<Self> {
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(Self {
                map: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a new read-only shared mapping of a file we hold open; it is never
        // dereferenced, only passed to mincore, and unmapped on drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { map, len })
    }

    /// Pages of the mapped file.
    pub fn pages(&self) -> usize {
        self.len.div_ceil(page_size())
    }

    /// Fills `vec` (at least [`Self::pages`] bytes) with the residency of each page:
    /// bit 0 set when the page is in the page cache.
    pub fn scan(&self, vec: &mut [u8]) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        if vec.len() < self.pages() {
            return Err(std::io::Error::other(
                "residency vector shorter than the file",
            ));
        }
        // SAFETY: `map` is a live mapping of `len` bytes and `vec` has at least one byte
        // per page.
        if unsafe { libc::mincore(self.map, self.len, vec.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ResidencyMap {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping exactly the mapping this value owns.
            unsafe { libc::munmap(self.map, self.len) };
        }
    }
}

impl ResidencyMap {
    /// Fills `vec` with the residency of the `vec.len()` pages from page `first` (bit 0
    /// set when in the page cache): costs those pages, not the file's. Pages past the end
    /// of the file are reported not resident.
    pub fn scan_range(&self, first: u64, vec: &mut [u8]) -> std::io::Result<()> {
        vec.fill(0);
        let pages = self.pages() as u64;
        if first >= pages {
            return Ok(());
        }
        let n = (vec.len() as u64).min(pages - first) as usize;
        let at = first as usize * page_size();
        let len = (n * page_size()).min(self.len - at);
        // The address is only passed to mincore, never dereferenced: plain arithmetic.
        let addr = self.map.cast::<u8>().wrapping_add(at).cast();
        // SAFETY: `[addr, addr + len)` lies in the live mapping and `vec` has at least one
        // byte per page of it.
        if unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The page size (x86-64 base pages), as a `usize`.
pub fn page_size() -> usize {
    crate::PAGE_SIZE as usize
}

/// Errors making a file cold.
#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    /// A system call failed.
    #[error("cannot evict {path} from the page cache: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Pages stayed resident.
    #[error("{pages} pages of {path} stay in the page cache after eviction (is another process mapping it, or writing it?)")]
    StillResident {
        /// The file.
        path: PathBuf,
        /// Resident pages.
        pages: u64,
    },
}

/// Drops `path`'s pages from the page cache (`fdatasync` then `POSIX_FADV_DONTNEED`) and
/// checks with `mincore` that none stay. Only this file is touched, never the whole
/// machine's caches.
pub fn evict(path: &Path) -> Result<(), EvictError> {
    let io = |source| EvictError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new().read(true).open(path).map_err(io)?;
    // `DONTNEED` skips pages locked under I/O: a read-ahead still in flight (an earlier
    // restore's `WILLNEED`, slow on a FUSE mount that fetches from an object store) leaves
    // its pages behind. Such pages unlock once their read completes; mapped ones never do.
    let mut pages = 0;
    for attempt in 0..EVICT_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20 << attempt.min(4)));
        }
        drop_cached(&file).map_err(io)?;
        pages = resident_pages(&file).map_err(io)?;
        if pages == 0 {
            return Ok(());
        }
    }
    Err(EvictError::StillResident {
        path: path.to_path_buf(),
        pages,
    })
}

/// Tries [`evict`] makes, about 2 s in all, before it says pages stay resident.
const EVICT_ATTEMPTS: u32 = 10;

/// Drops `file`'s unmapped pages from the page cache: `fdatasync` (dirty pages cannot
/// be dropped), then `POSIX_FADV_DONTNEED`. Pages some process maps stay resident.
pub fn drop_cached(file: &File) -> std::io::Result<()> {
    file.sync_data()?;
    // SAFETY: plain syscall on a file descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Reads the file's data into the page cache (a warm start) and returns the pages
/// resident. Holes are not read: they hold no data, and reading them would only fill the
/// cache with zero pages (a 16 GiB guest's memory file is mostly holes).
pub fn make_resident(path: &Path) -> std::io::Result<u64> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let extents = data_extents(&file, len)?;
    let map = ResidencyMap::new(&file)?;
    let page = page_size() as u64;
    for (start, end) in extents {
        let mut off = start;
        // readahead(2) is limited per call by the device window; loop until all resident.
        for _ in 0..4 {
            while off < end {
                let chunk = (end - off).min(64 << 20);
                // SAFETY: plain syscall on a file descriptor we own.
                unsafe { libc::readahead(file.as_raw_fd(), off as i64, chunk as usize) };
                off += chunk;
            }
            match first_missing(&map, start, end)? {
                None => break,
                Some(missing) => off = missing,
            }
        }
        // Read what readahead did not bring in.
        let mut buf = vec![0u8; page as usize];
        while let Some(missing) = first_missing(&map, start, end)? {
            std::os::unix::fs::FileExt::read_at(&file, &mut buf, missing)?;
            if first_missing(&map, start, end)? == Some(missing) {
                return Err(std::io::Error::other(format!(
                    "page at {missing:#x} does not stay in the page cache"
                )));
            }
        }
    }
    resident_pages(&file)
}

/// The offset of the first page of `[start, end)` not in the page cache, if any.
fn first_missing(map: &ResidencyMap, start: u64, end: u64) -> std::io::Result<Option<u64>> {
    let page = page_size() as u64;
    let (first, last) = (start / page, end.div_ceil(page));
    let mut vec = vec![0u8; (last - first) as usize];
    map.scan_range(first, &mut vec)?;
    Ok(vec
        .iter()
        .position(|&b| b & 1 == 0)
        .map(|i| (first + i as u64) * page))
}

/// Reads the whole of the regular file `path` (see [`open_regular`]) with `O_DIRECT` into a
/// page-aligned buffer: one `read` call for
/// the file (more only if the kernel returns short). Falls back to a buffered read where the
/// filesystem has no direct I/O (tmpfs). Returns the buffer and whether it was direct.
pub fn read_direct(path: &Path) -> std::io::Result<(AlignedBuf, bool)> {
    let (file, direct) = open_direct(path)?;
    let len = file.metadata()?.len();
    let mut buf = AlignedBuf::new(len.div_ceil(crate::PAGE_SIZE) * crate::PAGE_SIZE)?;
    let mut done = 0usize;
    let want = len as usize;
    while done < want {
        // O_DIRECT needs block-aligned lengths: ask for the rounded-up rest.
        let n = read_at(&file, &mut buf.as_mut_slice()[done..], done as u64)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        done += n;
    }
    buf.len = want;
    Ok((buf, direct))
}

/// Opens the regular file `path` for reading with `O_DIRECT` where its filesystem has it
/// (tmpfs does not: then buffered); says which.
pub fn open_direct(path: &Path) -> std::io::Result<(File, bool)> {
    match open_regular_with(path, libc::O_DIRECT) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open_regular(path)?, false)),
        Err(e) => Err(e),
    }
}

/// `pread` into `buf` at `offset`, retried on `EINTR`: the bytes read (0 at the end).
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    loop {
        // SAFETY: reads at most `buf.len()` bytes into our own buffer.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// The runs of `file`'s first `len` bytes that hold data, as (start, end): what
/// `SEEK_DATA`/`SEEK_HOLE` report, so a hole (which reads as zeros) costs no read. A
/// filesystem without them reports one run of everything, and so does a file that grows
/// or shrinks meanwhile past `len` (the caller's read sees that).
pub fn data_extents(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let seek = |offset: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we own; only its offset changes (reads use pread).
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        match std::io::Error::last_os_error() {
            // No data at or past `offset`.
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(e),
        }
    };
    let mut extents = Vec::new();
    let mut at = 0u64;
    while at < len {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(Some(start)) => start.min(len),
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, len)]),
            Err(e) => return Err(e),
        };
        if start >= len {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if end <= start {
            // Raced with a change of the file: let the reads decide.
            return Ok(vec![(0, len)]);
        }
        extents.push((start, end));
        at = end;
    }
    Ok(extents)
}

/// Whether `page` holds only zeros (an OR over all of it: no early exit, so the compiler
/// vectorises it).
pub fn is_zero(page: &[u8]) -> bool {
    page.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// The runs of `data`'s pages (of [`crate::PAGE_SIZE`]; the last may be short) that are
/// not all zeros, as byte ranges of `data`, in order: what a sparse writer writes.
pub fn data_page_runs(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    let page = crate::PAGE_SIZE as usize;
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, p) in data.chunks(page).enumerate() {
        if is_zero(p) {
            continue;
        }
        let at = i * page;
        match runs.last_mut() {
            Some(run) if run.end == at => run.end = at + p.len(),
            _ => runs.push(at..at + p.len()),
        }
    }
    runs
}

/// Makes every run of all-zero pages of the file at `path` a hole (`FALLOC_FL_PUNCH_HOLE`,
/// size kept): its content is unchanged, its zero pages cost no blocks and no reads. Reads
/// only its data extents. Returns the bytes punched.
pub fn punch_zero_pages(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let len = file.metadata()?.len();
    let page = crate::PAGE_SIZE;
    let mut buf = vec![0u8; 8 << 20];
    let mut punched = 0u64;
    let punch = |from: u64, to: u64| -> std::io::Result<()> {
        // SAFETY: fallocate on a descriptor we own; punching a hole keeps the size and
        // reads back zeros, which is what the range holds.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                (to - from) as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    for (start, end) in data_extents(&file, len)? {
        let mut at = start;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            let got = read_at(&file, &mut buf[..n], at)?;
            if got == 0 {
                break;
            }
            // The zero pages are the gaps between the data runs (a short last page is
            // data: it is not a whole page to punch).
            let mut gap_from = 0usize;
            let whole = got - got % page as usize;
            for run in data_page_runs(&buf[..got])
                .into_iter()
                .chain(std::iter::once(whole..got))
            {
                if run.start > gap_from {
                    punch(at + gap_from as u64, at + run.start as u64)?;
                    punched += (run.start - gap_from) as u64;
                }
                gap_from = gap_from.max(run.end);
            }
            at += got as u64;
        }
    }
    file.sync_all()?;
    Ok(punched)
}

/// A page-aligned anonymous buffer (for `O_DIRECT`).
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of at least `cap` bytes (one page at least).
    pub fn new(cap: u64) -> std::io::Result<Self> {
        let cap = cap.max(crate::PAGE_SIZE) as usize;
        // SAFETY: a new private anonymous mapping aliasing nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, cap, len: cap })
    }

    /// The whole buffer, for filling.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `cap` bytes mapped and owned by `self`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// The bytes read.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= cap` bytes mapped and owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cachestat_and_mincore_count_the_same_pages() {
        let page = crate::PAGE_SIZE as usize;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 64 * page]).expect("write");
        let file = File::open(&path).expect("open");
        // Drop what the write cached (clean after fsync), then read 5 pages back.
        file.sync_all().expect("fsync");
        // SAFETY: advice on a descriptor we hold; no memory is involved.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut buf = vec![0u8; page];
        for p in [0, 3, 9, 10, 63] {
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, (p * page) as u64)
                .expect("read");
        }
        let by_mincore = resident_pages_by_mincore(&file).expect("mincore");
        let counted = resident_pages(&file).expect("count");
        assert_eq!(counted, by_mincore);
        // Read-around may add pages; never fewer than read.
        assert!(counted >= 5, "{counted} pages cached after 5 reads");
    }

    #[test]
    fn data_runs_and_punched_holes_keep_the_content() {
        let page = crate::PAGE_SIZE as usize;
        let mut bytes = vec![0u8; 10 * page + 100];
        bytes[page + 5] = 1; // page 1
        bytes[2 * page] = 2; // page 2, joined with 1
        bytes[7 * page + page - 1] = 3; // page 7
        bytes[10 * page + 99] = 4; // the short last page
        assert_eq!(
            data_page_runs(&bytes),
            vec![
                page..3 * page,
                7 * page..8 * page,
                10 * page..10 * page + 100
            ]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, &bytes).expect("write");
        // Pages 0, 3-6 and 8-9 are zeros: 7 pages punched, the content unchanged.
        assert_eq!(punch_zero_pages(&path).expect("punch"), 7 * page as u64);
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
    }

    #[test]
    fn atomic_writes_do_not_follow_planted_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").expect("write");
        // Links at every temporary name this process could pick next.
        for n in 0..128 {
            let name = format!(".out.tmp-{}-{n}", std::process::id());
            let _ = std::os::unix::fs::symlink(&victim, dir.path().join(name));
        }
        let out = dir.path().join("out");
        write_atomic(&out, b"new contents").expect("write");
        assert_eq!(std::fs::read(&out).expect("read"), b"new contents");
        assert_eq!(std::fs::read(&victim).expect("read"), b"keep me");
        assert!(
            !std::fs::symlink_metadata(&out)
                .expect("stat")
                .file_type()
                .is_symlink(),
            "the result is a file of its own"
        );
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"0123456789").expect("write");
        assert_eq!(read_regular(&file, 10).expect("read"), b"0123456789");
        let e = read_regular(&file, 9).expect_err("over the cap");
        assert!(e.to_string().contains("more than the 9 bytes"), "{e}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let e = read_regular(&link, 1 << 20).expect_err("a symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = read_direct(&link).expect_err("a symlink, direct");
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let e = read_regular(&fifo, 1 << 20).expect_err("a FIFO, without waiting for a writer");
        assert!(e.to_string().contains("a FIFO"), "{e}");

        let e = read_regular(Path::new("/dev/zero"), 1 << 20).expect_err("a device");
        assert!(e.to_string().contains("a device"), "{e}");
        assert!(read_regular(dir.path(), 1 << 20).is_err(), "a directory");
    }
}
