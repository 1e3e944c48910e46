//! `snapbpf mount`: a read-only FUSE filesystem that shows every snapshot pushed under an
//! object-store location as a snapshot directory, `MOUNTPOINT/NAME/{memory,vcpu,...}`.
//!
//! - Reads fetch the chunks they cover ([`Fetcher`]: recent chunks in memory, the host's
//!   chunk cache on disk, else one GET per chunk however many readers want it), checked
//!   against their digests. A chunk that cannot be had fails the read with `EIO` and a
//!   logged cause; no read ever returns data that did not check out.
//! - Files are opened with `FOPEN_KEEP_CACHE`: the kernel keeps what was read in the page
//!   cache across opens, so every VM on the host maps one copy of each page.
//! - Every snapshot directory holds a `.snapbpf-verified` that vouches for its files'
//!   content ([`snapbpf_store::verify::vouch`]): the mount checks every chunk it serves
//!   against the manifest, and a manifest is taken only if each file's identity follows
//!   from its chunks' (identities are tree digests that compose), so what it vouches for is
//!   what it serves, and opening a mounted snapshot does not read (and fetch) its whole
//!   memory file to hash it.
//! - Only the user who mounted it can use the mount (the kernel refuses every other uid),
//!   unless [`MountOptions::group`] names a group: then the kernel checks the modes
//!   (`default_permissions`) and files are `0440`, directories `0550`, owned by the
//!   mounting user and that group.
//! - `MOUNTPOINT/.stats` is the mount's counters as JSON, read at any time.
//! - Snapshots pushed after the mount appear at the next lookup of a name not seen yet.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use serde::{Deserialize, Serialize};

use crate::cache::ChunkCache;
use crate::fetch::{FetchStats, Fetcher};
use crate::manifest::{self, Manifest};
use crate::remote::{Remote, RemoteError, RemoteOptions};
use crate::url::Location;

const ROOT: u64 = 1;
const STATS_INO: u64 = 2;
const DIR_BASE: u64 = 0x1_0000;
const STRIDE: u64 = 0x1000;
const VERIFIED_SLOT: u64 = STRIDE - 1;
/// Name of the counters file at the mount's root.
pub const STATS_FILE: &str = ".stats";
/// How long the kernel may cache names and attributes (snapshots never change).
const TTL: Duration = Duration::from_secs(3600);
/// Least time between two listings of the location for new snapshots.
const RELIST: Duration = Duration::from_secs(1);

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The host's chunk cache.
    pub cache_dir: PathBuf,
    /// Its capacity in bytes.
    pub cache_bytes: u64,
    /// Most GETs in flight.
    pub parallel_gets: usize,
    /// FUSE request threads.
    pub threads: usize,
    /// Recently used chunks kept in memory, bytes.
    pub recent_bytes: u64,
    /// The object store.
    pub remote: RemoteOptions,
    /// A group that may read the snapshots too (files `0440`, directories `0550`, the
    /// kernel checking modes); `None`: the mounting user alone.
    pub group: Option<u32>,
}

impl MountOptions {
    /// Defaults around `cache_dir`: 10 GiB cache, 16 GETs, 16 threads, 64 MiB in memory.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            cache_bytes: 10 << 30,
            parallel_gets: 16,
            threads: 32,
            recent_bytes: 64 << 20,
            remote: RemoteOptions::default(),
            group: None,
        }
    }
}

/// The counters `.stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStats {
    /// What is mounted.
    pub location: String,
    /// Snapshots shown.
    pub snapshots: u64,
    /// Manifests that could not be used (logged).
    pub bad_manifests: u64,
    /// Reads refused with EIO (logged).
    pub failed_reads: u64,
    /// Fetching.
    pub fetch: FetchStats,
    /// Bytes in the chunk cache.
    pub cache_bytes: u64,
    /// Its capacity.
    pub cache_capacity: u64,
}

/// Errors mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The object store cannot be reached or listed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The chunk cache cannot be opened.
    #[error("cannot open the chunk cache {path}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The mountpoint is not an empty directory.
    #[error("{0} is not an empty directory")]
    Mountpoint(PathBuf),
    /// The kernel refused the mount.
    #[error("cannot mount at {path} (FUSE needs /dev/fuse and root)")]
    Fuse {
        /// The mountpoint.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

struct State {
    snapshots: Vec<Arc<Manifest>>,
    last_listed: Option<Instant>,
    bad_manifests: u64,
}

struct SnapshotFs {
    fetcher: Arc<Fetcher>,
    state: RwLock<State>,
    listing: Mutex<()>,
    /// The mount's device number, for `.snapbpf-verified` (known once mounted).
    dev: Arc<OnceLock<u64>>,
    failed_reads: std::sync::atomic::AtomicU64,
    mounted_at: SystemTime,
    owner: Owner,
}

/// What an inode is.
enum Node {
    Root,
    Stats,
    Dir(usize),
    File(usize, usize),
    Verified(usize),
}

fn node(ino: u64) -> Option<Node> {
    match ino {
        ROOT => Some(Node::Root),
        STATS_INO => Some(Node::Stats),
        _ if ino >= DIR_BASE => {
            let snap = usize::try_from((ino - DIR_BASE) / STRIDE).ok()?;
            match (ino - DIR_BASE) % STRIDE {
                0 => Some(Node::Dir(snap)),
                VERIFIED_SLOT => Some(Node::Verified(snap)),
                slot => Some(Node::File(snap, usize::try_from(slot - 1).ok()?)),
            }
        }
        _ => None,
    }
}

fn dir_ino(snap: usize) -> u64 {
    DIR_BASE + snap as u64 * STRIDE
}

fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn ns_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Who owns every file of the mount and what the group may do.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    /// Whether the group may read (else the modes are the owner's alone).
    group_reads: bool,
}

impl Owner {
    fn attr(&self, ino: u64, kind: FileType, size: u64, time: SystemTime) -> FileAttr {
        let dir = kind == FileType::Directory;
        let perm = match (dir, self.group_reads) {
            (true, true) => 0o550,
            (true, false) => 0o500,
            (false, true) => 0o440,
            (false, false) => 0o400,
        };
        FileAttr {
            perm,
            uid: self.uid,
            gid: self.gid,
            ..attr(ino, kind, size, time)
        }
    }
}

fn attr(ino: u64, kind: FileType, size: u64, time: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind,
        perm: if kind == FileType::Directory {
            0o555
        } else {
            0o444
        },
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl SnapshotFs {
    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self, i: usize) -> Option<Arc<Manifest>> {
        self.read_state().snapshots.get(i).cloned()
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.read_state()
            .snapshots
            .iter()
            .position(|m| m.name == name)
    }

    /// Lists the location for snapshots not shown yet (at most once per [`RELIST`],
    /// unless `now`).
    fn relist(&self, now: bool) -> Result<(), RemoteError> {
        let _one = self.listing.lock().unwrap_or_else(|e| e.into_inner());
        if !now
            && self
                .read_state()
                .last_listed
                .is_some_and(|t| t.elapsed() < RELIST)
        {
            return Ok(());
        }
        let remote = self.fetcher.remote();
        let location = remote.location().clone();
        let listed = remote.list(&location.key("snapshots"))?;
        let prefix = location.key("");
        let mut added = Vec::new();
        let mut bad = 0;
        for key in listed {
            let Some(name) = key.strip_prefix(&prefix).and_then(manifest::name_of) else {
                continue;
            };
            if self.find(name).is_some() || added.iter().any(|m: &Arc<Manifest>| m.name == name) {
                continue;
            }
            let loaded = remote
                .get(&key, manifest::MAX_MANIFEST_BYTES)
                .map_err(|e| snapbpf_os::error_chain(&e))
                .and_then(|got| {
                    Manifest::decode(&got.bytes, &key).map_err(|e| snapbpf_os::error_chain(&e))
                })
                .and_then(|m| {
                    if m.name == name {
                        Ok(m)
                    } else {
                        Err(format!("{key} names snapshot '{}'", m.name))
                    }
                });
            match loaded {
                Ok(m) => added.push(Arc::new(m)),
                Err(e) => {
                    tracing::error!("mount: skipping snapshot '{name}': {e}");
                    bad += 1;
                }
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.snapshots.extend(added);
        state.bad_manifests += bad;
        state.last_listed = Some(Instant::now());
        Ok(())
    }

    fn stats(&self) -> MountStats {
        let state = self.read_state();
        let (cache_bytes, cache_capacity) = self.fetcher.cache().usage();
        MountStats {
            location: self.fetcher.remote().location().to_string(),
            snapshots: state.snapshots.len() as u64,
            bad_manifests: state.bad_manifests,
            failed_reads: self.failed_reads.load(std::sync::atomic::Ordering::Relaxed),
            fetch: self.fetcher.stats(),
            cache_bytes,
            cache_capacity,
        }
    }

    fn stats_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.stats()).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn verified_json(&self, snap: usize, m: &Manifest) -> Option<Vec<u8>> {
        let dev = *self.dev.get()?;
        let time = ns_of(time_of(m.pushed_unix_ns));
        let files: Vec<_> = m
            .files
            .iter()
            .enumerate()
            .map(|(j, f)| snapbpf_store::verify::Vouched {
                name: f.name.clone(),
                size: f.id.size,
                mtime_ns: time,
                ctime_ns: time,
                inode: dir_ino(snap) + 1 + j as u64,
                dev,
                identity: f.id,
            })
            .collect();
        Some(snapbpf_store::verify::vouch(&files))
    }

    fn attr_of(&self, ino: u64) -> Option<FileAttr> {
        let attr = |ino, kind, size, time| self.owner.attr(ino, kind, size, time);
        Some(match node(ino)? {
            Node::Root => attr(ROOT, FileType::Directory, 0, self.mounted_at),
            Node::Stats => attr(
                STATS_INO,
                FileType::RegularFile,
                self.stats_json().len() as u64,
                SystemTime::now(),
            ),
            Node::Dir(i) => {
                let m = self.snapshot(i)?;
                attr(ino, FileType::Directory, 0, time_of(m.pushed_unix_ns))
            }
            Node::File(i, j) => {
                let m = self.snapshot(i)?;
                let f = m.files.get(j)?;
                attr(
                    ino,
                    FileType::RegularFile,
                    f.id.size,
                    time_of(m.pushed_unix_ns),
                )
            }
            Node::Verified(i) => {
                let m = self.snapshot(i)?;
                let len = self.verified_json(i, &m)?.len() as u64;
                attr(ino, FileType::RegularFile, len, time_of(m.pushed_unix_ns))
            }
        })
    }

    /// `size` bytes of file `j` of snapshot `m` from `offset`.
    fn read_file(&self, m: &Manifest, j: usize, offset: u64, size: u32) -> Result<Vec<u8>, String> {
        let f = m.files.get(j).ok_or("no such file")?;
        let end = offset.saturating_add(u64::from(size)).min(f.id.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (index, within) = f.chunk_at(at, m.chunk_size).ok_or("past the end")?;
            let len = f.chunk_len(index, m.chunk_size);
            let take = (len - within).min(end - at);
            match f.chunks[index].id {
                None => out.resize(out.len() + take as usize, 0),
                Some(id) => {
                    let chunk = self
                        .fetcher
                        .chunk(&id)
                        .map_err(|e| format!("{}/{} chunk {index}: {}", m.name, f.name, e.0))?;
                    let from = within as usize;
                    out.extend_from_slice(&chunk[from..from + take as usize]);
                }
            }
            at += take;
        }
        Ok(out)
    }
}

impl Filesystem for Shared {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Read ahead as a disk would (128 KiB, the paper's Linux-RA window: more drags in
        // chunks nobody needs) and keep many reads in flight: they fan out to GETs.
        let _ = config.set_max_readahead(128 << 10);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        let ino = match node(parent.0) {
            Some(Node::Root) if name == STATS_FILE => Some(STATS_INO),
            Some(Node::Root) => {
                if self.find(name).is_none() {
                    if let Err(e) = self.relist(false) {
                        tracing::warn!(
                            "mount: cannot list for '{name}': {}",
                            snapbpf_os::error_chain(&e)
                        );
                    }
                }
                self.find(name).map(dir_ino)
            }
            Some(Node::Dir(i)) => self.snapshot(i).and_then(|m| {
                if name == snapbpf_store::verify::CACHE_FILE {
                    Some(dir_ino(i) + VERIFIED_SLOT)
                } else {
                    m.files
                        .iter()
                        .position(|f| f.name == name)
                        .map(|j| dir_ino(i) + 1 + j as u64)
                }
            }),
            _ => None,
        };
        match ino.and_then(|ino| self.attr_of(ino)) {
            Some(a) if ino == Some(STATS_INO) => reply.entry(&Duration::ZERO, &a, Generation(0)),
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Some(a) if ino.0 == STATS_INO => reply.attr(&Duration::ZERO, &a),
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match node(ino.0) {
            Some(Node::Stats) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Some(Node::File(..) | Node::Verified(_)) => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let slice = |bytes: Vec<u8>| -> Vec<u8> {
            let from = (offset as usize).min(bytes.len());
            let to = from.saturating_add(size as usize).min(bytes.len());
            bytes[from..to].to_vec()
        };
        match node(ino.0) {
            Some(Node::Stats) => reply.data(&slice(self.stats_json())),
            Some(Node::Verified(i)) => {
                match self.snapshot(i).and_then(|m| self.verified_json(i, &m)) {
                    Some(json) => reply.data(&slice(json)),
                    None => reply.error(Errno::ENOENT),
                }
            }
            Some(Node::File(i, j)) => {
                let Some(m) = self.snapshot(i) else {
                    return reply.error(Errno::ENOENT);
                };
                match self.read_file(&m, j, offset, size) {
                    Ok(data) => reply.data(&data),
                    Err(e) => {
                        self.failed_reads
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!("mount: read refused (EIO): {e}");
                        reply.error(Errno::EIO)
                    }
                }
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ROOT, FileType::Directory, "..".into()),
        ];
        match node(ino.0) {
            Some(Node::Root) => {
                if offset == 0 {
                    if let Err(e) = self.relist(true) {
                        tracing::warn!("mount: cannot list: {}", snapbpf_os::error_chain(&e));
                    }
                }
                entries.push((STATS_INO, FileType::RegularFile, STATS_FILE.into()));
                for (i, m) in self.read_state().snapshots.iter().enumerate() {
                    entries.push((dir_ino(i), FileType::Directory, m.name.clone()));
                }
            }
            Some(Node::Dir(i)) => {
                let Some(m) = self.snapshot(i) else {
                    return reply.error(Errno::ENOENT);
                };
                entries.push((
                    dir_ino(i) + VERIFIED_SLOT,
                    FileType::RegularFile,
                    snapbpf_store::verify::CACHE_FILE.into(),
                ));
                for (j, f) in m.files.iter().enumerate() {
                    entries.push((
                        dir_ino(i) + 1 + j as u64,
                        FileType::RegularFile,
                        f.name.clone(),
                    ));
                }
            }
            Some(_) => return reply.error(Errno::ENOTDIR),
            None => return reply.error(Errno::ENOENT),
        }
        for (n, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (n + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Read-only: nothing is ever dirty.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }
}

/// A mounted location; unmounted when dropped.
pub struct MountSession {
    session: Option<fuser::BackgroundSession>,
    fs_stats: Arc<dyn Fn() -> MountStats + Send + Sync>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for MountSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountSession")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl MountSession {
    /// The mount's counters now.
    pub fn stats(&self) -> MountStats {
        (self.fs_stats)()
    }

    /// Unmounts and waits for the request threads.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for MountSession {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

/// Mounts the snapshots under `location` at `mountpoint` (an empty directory), serving
/// requests on background threads until the returned session is unmounted or dropped.
pub fn mount(
    location: &Location,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<MountSession, MountError> {
    let empty = std::fs::read_dir(mountpoint).map(|mut d| d.next().is_none());
    if !matches!(empty, Ok(true)) {
        return Err(MountError::Mountpoint(mountpoint.to_path_buf()));
    }
    let remote = Remote::connect(location, &options.remote)?;
    let cache = ChunkCache::open(&options.cache_dir, options.cache_bytes).map_err(|source| {
        MountError::Cache {
            path: options.cache_dir.clone(),
            source,
        }
    })?;
    let dev = Arc::new(OnceLock::new());
    let fs = Arc::new(SnapshotFs {
        fetcher: Arc::new(Fetcher::new(
            remote,
            cache,
            options.parallel_gets,
            options.recent_bytes,
        )),
        state: RwLock::new(State {
            snapshots: Vec::new(),
            last_listed: None,
            bad_manifests: 0,
        }),
        listing: Mutex::new(()),
        dev: dev.clone(),
        failed_reads: Default::default(),
        mounted_at: SystemTime::now(),
        owner: {
            let (uid, gid) = effective_ids();
            Owner {
                uid,
                gid: options.group.unwrap_or(gid),
                group_reads: options.group.is_some(),
            }
        },
    });
    // A location that cannot be listed is an error now, not an empty mount.
    fs.relist(true)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("snapbpf:{location}")),
        MountOption::Subtype("snapbpf".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // The mounting user alone by default: without `allow_other` the kernel refuses every
    // other uid. A named group gets `allow_other` with the kernel checking the modes.
    config.acl = fuser::SessionACL::Owner;
    if options.group.is_some() {
        config.acl = fuser::SessionACL::All;
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let shared = Shared(fs.clone());
    let session =
        fuser::spawn_mount(shared, mountpoint, &config).map_err(|source| MountError::Fuse {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    // The device number the kernel gave the mount, for the verification caches.
    let meta = std::fs::metadata(mountpoint).map_err(|source| MountError::Fuse {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    let _ = dev.set(std::os::unix::fs::MetadataExt::dev(&meta));
    let stats_fs = fs.clone();
    Ok(MountSession {
        session: Some(session),
        fs_stats: Arc::new(move || stats_fs.stats()),
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// This process's effective uid and gid (the mount's owner).
fn effective_ids() -> (u32, u32) {
    // SAFETY: getegid takes no arguments and cannot fail.
    let gid = unsafe { libc::getegid() };
    (snapbpf_os::access::effective_uid(), gid)
}

/// The filesystem as fuser holds it (shared with the session handle for its counters).
struct Shared(Arc<SnapshotFs>);

impl std::ops::Deref for Shared {
    type Target = SnapshotFs;
    fn deref(&self) -> &SnapshotFs {
        &self.0
    }
}

/// The counters of the snapbpf mount holding `path` (a snapshot directory on it, or the
/// mountpoint), if it is on one.
pub fn stats_of(path: &Path) -> Option<MountStats> {
    use std::io::Read;
    let mut dir = Some(path);
    while let Some(d) = dir {
        let mut raw = Vec::new();
        // `.stats` grows as counters do: read it to its end, not to a size seen earlier.
        let read = snapbpf_store::fsutil::open_regular(&d.join(STATS_FILE))
            .and_then(|f| f.take(1 << 20).read_to_end(&mut raw));
        if read.is_ok() {
            if let Ok(stats) = serde_json::from_slice(&raw) {
                return Some(stats);
            }
        }
        dir = d.parent();
    }
    None
}
