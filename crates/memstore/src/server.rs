//! The store process: holds snapshots in sealed memfds and answers requests on a socket.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::memfd::{self, Backing, SealedMemory};
use crate::protocol::{
    Extent, Held, Reply, Request, Residency, Stats, MAX_REQUEST_BYTES, REQUEST_TIMEOUT,
};
use snapbpf_os::access::{AccessPolicy, ListenError, PeerCredentials};
use snapbpf_store::FileIdentity;

/// Most requests served at once; further clients wait in the listen backlog.
pub const MAX_CONCURRENT: usize = 64;
/// The name the store's memfds carry (`/proc/PID/fd` shows `/memfd:NAME`).
const MEMFD_LINK: &str = "/memfd:snapbpf-store";

/// The working set a snapshot may be trimmed to: for the snapshot in `dir` whose memory
/// file is `memory`, the runs of pages to keep, as `(first page, pages)`. The store knows no
/// working-set format: whoever runs it says where working sets come from.
pub type TrimTo = Arc<
    dyn Fn(
            &Path,
            &FileIdentity,
        ) -> Result<Vec<(u64, u64)>, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
>;

/// How the store runs.
#[derive(Clone)]
pub struct Config {
    /// Most bytes of memory held.
    pub capacity: u64,
    /// What backs the memfds.
    pub backing: Backing,
    /// When memory is short, trim the least recently used snapshots to these working sets
    /// before evicting any (`None`: evict only).
    pub trim: Option<TrimTo>,
    /// Who may connect (root and the store's own user always; see
    /// [`snapbpf_os::access::AccessPolicy`]). A caller that is neither root nor the store's
    /// user reaches only snapshots in directories it owns.
    pub access: AccessPolicy,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("capacity", &self.capacity)
            .field("backing", &self.backing)
            .field("trim", &self.trim.is_some())
            .field("access", &self.access)
            .finish()
    }
}

/// Errors loading a snapshot into the store.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or its metadata cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata is not a snapshot's.
    #[error(transparent)]
    Meta(#[from] snapbpf_store::OpenError),
    /// The memory file is not what the metadata names.
    #[error("the snapshot's memory file is not the one it was taken with")]
    Stale(#[source] snapbpf_store::verify::VerifyError),
    /// The snapshot does not fit, even trimmed and with everything else evicted.
    #[error("the store is full: the snapshot needs {bytes} bytes and the capacity is {capacity}")]
    TooLarge {
        /// What it needs at least.
        bytes: u64,
        /// The store's capacity.
        capacity: u64,
    },
    /// Its memfd could not be made.
    #[error("cannot hold the snapshot's memory")]
    Memfd(#[from] memfd::MemfdError),
    /// The caller may not reach this snapshot: it is neither root nor the store's user, and
    /// the directory is not its own.
    #[error("uid {uid} may not use {dir}: it is not the directory's owner")]
    NotYours {
        /// The snapshot directory.
        dir: PathBuf,
        /// The caller.
        uid: u32,
    },
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created (something is in the way, or a live store
    /// answers there).
    #[error(transparent)]
    Socket(#[from] ListenError),
    /// The socket could not be set up.
    #[error("cannot listen on {path}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host cannot back memfds as asked.
    #[error(transparent)]
    Backing(#[from] memfd::BackingError),
}

/// How the store ended.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    /// Its counters at the end.
    pub stats: Stats,
    /// The store's memfds still open in this process after it released them (0 unless
    /// something leaked; VMs hold their own references).
    pub memfds_left: usize,
}

/// What a `get` hands out.
#[derive(Debug, Clone)]
struct Served {
    held: Held,
    memfd: Arc<OwnedFd>,
    extents: Arc<Vec<Extent>>,
}

struct Entry {
    served: Served,
    last_used: u64,
    /// Whether trimming it to its working set may still save memory.
    trimmable: bool,
}

struct State {
    entries: HashMap<PathBuf, Entry>,
    stats: Stats,
    clock: u64,
}

/// What to give up next to make room.
enum Give {
    Trim(PathBuf, Served),
    Evict(PathBuf),
}

impl State {
    fn touch(&mut self, dir: &Path) -> Option<Served> {
        self.clock += 1;
        let now = self.clock;
        let e = self.entries.get_mut(dir)?;
        e.last_used = now;
        Some(e.served.clone())
    }

    fn remove(&mut self, dir: &Path) -> Option<Held> {
        let e = self.entries.remove(dir)?;
        self.stats.bytes = self.stats.bytes.saturating_sub(e.served.held.bytes);
        self.stats.snapshots = self.stats.snapshots.saturating_sub(1);
        Some(e.served.held)
    }

    fn insert(&mut self, dir: &Path, served: Served, trimmable: bool) {
        self.remove(dir);
        self.clock += 1;
        self.stats.bytes += served.held.bytes;
        self.stats.snapshots += 1;
        self.entries.insert(
            dir.to_path_buf(),
            Entry {
                served,
                last_used: self.clock,
                trimmable,
            },
        );
    }

    /// The next thing to give up while over capacity, least recently used first: trim a
    /// whole snapshot to its working set, and only when none is left, evict one. `keep`
    /// (the snapshot being made room for) is trimmed last and never evicted.
    fn next_to_give(&self, keep: &Path) -> Option<Give> {
        if self.stats.bytes <= self.stats.capacity {
            return None;
        }
        let mut by_age: Vec<(&PathBuf, &Entry)> =
            self.entries.iter().filter(|(d, _)| *d != keep).collect();
        by_age.sort_by_key(|(_, e)| e.last_used);
        let trim = |(d, e): &(&PathBuf, &Entry)| {
            e.trimmable
                .then(|| Give::Trim((*d).clone(), e.served.clone()))
        };
        by_age
            .iter()
            .find_map(trim)
            .or_else(|| by_age.first().map(|(d, _)| Give::Evict((*d).clone())))
            .or_else(|| {
                self.entries
                    .get_key_value(keep)
                    .and_then(|(d, e)| trim(&(d, e)))
            })
    }
}

/// A store serving from one socket.
struct Store {
    config: Config,
    state: Mutex<State>,
    /// Held while a snapshot loads (and room is made for it): two misses for one
    /// snapshot load it once, and one loader trims or evicts at a time.
    loading: Mutex<()>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot in `dir` (canonical), loaded first if not held (or, with `whole`,
    /// held only trimmed); whether it was held.
    fn get_or_load(&self, dir: &Path, whole: bool) -> Result<(Served, bool), LoadError> {
        let held_enough = |s: &Served| !whole || s.held.resident == Residency::Whole;
        if let Some(s) = self.lock().touch(dir).filter(held_enough) {
            return Ok((s, true));
        }
        let _one_load = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = self.lock().touch(dir).filter(held_enough) {
            return Ok((s, true));
        }
        let (meta, sealed) = load(dir, self.config.backing)?;
        let served = served(dir, &meta, sealed, Residency::Whole, self.config.backing);
        let trimmable = self.config.trim.is_some() && self.config.backing != Backing::Hugetlb;
        self.lock().insert(dir, served.clone(), trimmable);
        if let Err(e) = self.make_room(dir) {
            self.lock().remove(dir);
            return Err(e);
        }
        // Made room for it, it may have been trimmed itself.
        Ok((self.lock().touch(dir).unwrap_or(served), false))
    }

    /// Trims and evicts until the store is within its capacity again.
    fn make_room(&self, keep: &Path) -> Result<(), LoadError> {
        loop {
            let give = self.lock().next_to_give(keep);
            match give {
                None => {
                    let state = self.lock();
                    if state.stats.bytes <= state.stats.capacity {
                        return Ok(());
                    }
                    return Err(LoadError::TooLarge {
                        bytes: state.entries.get(keep).map_or(0, |e| e.served.held.bytes),
                        capacity: state.stats.capacity,
                    });
                }
                Some(Give::Evict(dir)) => {
                    let mut state = self.lock();
                    if state.remove(&dir).is_some() {
                        state.stats.evictions += 1;
                        tracing::info!("store: evicted {}", dir.display());
                    }
                }
                Some(Give::Trim(dir, old)) => {
                    // Copying the working set takes a while: other requests go on meanwhile.
                    let Some(trim_to) = &self.config.trim else {
                        continue;
                    };
                    let trimmed = trim(trim_to, &dir, &old, self.config.backing);
                    let mut state = self.lock();
                    let Some(entry) = state.entries.get_mut(&dir) else {
                        continue;
                    };
                    if !Arc::ptr_eq(&entry.served.memfd, &old.memfd) {
                        continue;
                    }
                    entry.trimmable = false;
                    match trimmed {
                        Ok(Some(served)) => {
                            let saved = entry.served.held.bytes.saturating_sub(served.held.bytes);
                            tracing::info!(
                                "store: trimmed {} to its working set ({} MiB saved)",
                                dir.display(),
                                saved >> 20
                            );
                            entry.served = served;
                            state.stats.bytes = state.stats.bytes.saturating_sub(saved);
                            state.stats.trims += 1;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(
                            "store: cannot trim {}: {}",
                            dir.display(),
                            snapbpf_os::error_chain(&e)
                        ),
                    }
                }
            }
        }
    }
}

fn served(
    dir: &Path,
    meta: &snapbpf_store::SnapshotMeta,
    sealed: SealedMemory,
    resident: Residency,
    backing: Backing,
) -> Served {
    Served {
        held: Held {
            dir: dir.to_path_buf(),
            function: meta.function.clone(),
            memory: meta.memory,
            bytes: sealed.bytes,
            resident,
            backing,
        },
        memfd: Arc::new(sealed.fd),
        extents: Arc::new(sealed.extents),
    }
}

/// Reads the snapshot's metadata in `dir` (canonical) and copies its memory file, once
/// checked against it, into a new sealed memfd.
fn load(
    dir: &Path,
    backing: Backing,
) -> Result<(snapbpf_store::SnapshotMeta, SealedMemory), LoadError> {
    let meta_path = dir.join(snapbpf_store::snapshot::META_FILE);
    let raw =
        snapbpf_store::fsutil::read_regular(&meta_path, snapbpf_store::snapshot::MAX_META_BYTES)
            .map_err(|source| LoadError::Read {
                path: meta_path.clone(),
                source,
            })?;
    let meta = snapbpf_store::snapshot::parse_meta(&raw, &meta_path)?;
    let memory_path = dir.join(snapbpf_store::snapshot::MEMORY_FILE);
    snapbpf_store::verify::check(&memory_path, &meta.memory).map_err(LoadError::Stale)?;
    let sealed = memfd::load_file(&memory_path, meta.memory.size, backing)?;
    Ok((meta, sealed))
}

/// Errors trimming a snapshot to its working set.
#[derive(Debug, thiserror::Error)]
enum TrimError {
    #[error("no usable working set")]
    WorkingSet(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Memfd(#[from] memfd::MemfdError),
}

/// `old` trimmed to its working set (`None` if that saves nothing).
fn trim(
    trim_to: &TrimTo,
    dir: &Path,
    old: &Served,
    backing: Backing,
) -> Result<Option<Served>, TrimError> {
    let ranges = trim_to(dir, &old.held.memory).map_err(TrimError::WorkingSet)?;
    let keep = memfd::intersect(&old.extents, ranges);
    let kept: u64 = keep.iter().map(Extent::len_bytes).sum();
    if kept >= old.held.bytes {
        return Ok(None);
    }
    let source = File::from(
        old.memfd
            .try_clone()
            .map_err(|source| memfd::MemfdError::Memfd {
                what: "dup",
                source,
            })?,
    );
    let sealed = memfd::copy_extents(&source, old.held.memory.size, &keep, backing)?;
    Ok(Some(Served {
        held: Held {
            bytes: sealed.bytes,
            resident: Residency::WorkingSet,
            ..old.held.clone()
        },
        memfd: Arc::new(sealed.fd),
        extents: Arc::new(sealed.extents),
    }))
}

/// The key of a snapshot directory: its canonical path.
fn key(dir: &Path) -> Result<PathBuf, LoadError> {
    dir.canonicalize().map_err(|source| LoadError::Read {
        path: dir.to_path_buf(),
        source,
    })
}

/// The store's memfds open in this process.
fn open_memfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with(MEMFD_LINK))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Serves the store on `socket` until SIGINT or SIGTERM (needs
/// `snapbpf_os::interrupt::install`; without it, until killed). A stale socket is
/// replaced; anything else there is not.
pub fn serve(socket: &Path, config: Config) -> Result<Shutdown, ServeError> {
    config.backing.check_host()?;
    let listen_err = |source| ServeError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    let listener = snapbpf_os::access::listen(socket, &config.access)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    let finish = snapbpf_os::interrupt::finish_on_signal();
    let (capacity, backing) = (config.capacity, config.backing);
    let store = Arc::new(Store {
        config,
        state: Mutex::new(State {
            entries: HashMap::new(),
            stats: Stats {
                capacity,
                backing,
                ..Stats::default()
            },
            clock: 0,
        }),
        loading: Mutex::new(()),
    });
    tracing::info!(
        "store: serving on {} with {} bytes ({} pages)",
        socket.display(),
        capacity,
        backing.name()
    );
    let mut sessions: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while finish.requested().is_none() {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                // EMFILE and its kind: back off rather than spin on a full table.
                tracing::warn!("store: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let caller = match store.config.access.check(&stream) {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!("store: refused a connection: {e}");
                refuse(&stream, &e);
                continue;
            }
        };
        sessions.retain(|s| !s.is_finished());
        if sessions.len() >= MAX_CONCURRENT {
            refuse(
                &stream,
                &std::io::Error::other(format!(
                    "the store is busy: {MAX_CONCURRENT} requests in progress; retry"
                )),
            );
            continue;
        }
        let store = store.clone();
        match std::thread::Builder::new()
            .name("store-session".into())
            .spawn(move || session(&store, stream, caller))
        {
            Ok(h) => sessions.push(h),
            Err(e) => tracing::error!("store: cannot start a session thread: {e}"),
        }
    }
    drop(listener);
    for s in sessions {
        let _ = s.join();
    }
    let stats = store.lock().stats;
    drop(store);
    let _ = std::fs::remove_file(socket);
    Ok(Shutdown {
        stats,
        memfds_left: open_memfds(),
    })
}

/// Answers a connection that will not be served with why, bounded like any reply.
fn refuse(stream: &UnixStream, why: &dyn std::error::Error) {
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let _ = send(stream, &Reply::error(why), None);
}

/// One request: read it, answer it (within [`REQUEST_TIMEOUT`] each way: a client that
/// stops reading cannot hold a session).
fn session(store: &Store, stream: UnixStream, caller: PeerCredentials) {
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let line = match snapbpf_os::unix::read_line_within(
        &stream,
        Instant::now() + REQUEST_TIMEOUT,
        MAX_REQUEST_BYTES,
    ) {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => return,
        Err(e) => {
            let _ = send(&stream, &Reply::error(&e), None);
            return;
        }
    };
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let _ = send(&stream, &Reply::error(&e), None);
            return;
        }
    };
    let (reply, fd) = answer(store, &request, &caller);
    if let Err(e) = send(&stream, &reply, fd.as_deref()) {
        tracing::warn!("store: cannot reply to {request:?}: {e}");
    }
}

/// The key of `dir`, if `caller` may use it: a privileged caller any directory, another
/// only one it owns (else the store, running as root, would read for it what it cannot).
fn key_for(dir: &Path, caller: &PeerCredentials) -> Result<PathBuf, LoadError> {
    use std::os::unix::fs::MetadataExt;
    let key = key(dir)?;
    if caller.is_root_or_self() {
        return Ok(key);
    }
    let owner = std::fs::metadata(&key)
        .map_err(|source| LoadError::Read {
            path: key.clone(),
            source,
        })?
        .uid();
    if owner == caller.uid {
        Ok(key)
    } else {
        Err(LoadError::NotYours {
            dir: key,
            uid: caller.uid,
        })
    }
}

fn answer(
    store: &Store,
    request: &Request,
    caller: &PeerCredentials,
) -> (Reply, Option<Arc<OwnedFd>>) {
    let result = (|| -> Result<(Reply, Option<Arc<OwnedFd>>), LoadError> {
        Ok(match request {
            Request::Add { dir } => {
                let (served, _) = store.get_or_load(&key_for(dir, caller)?, true)?;
                let reply = Reply {
                    held: Some(served.held),
                    ..Reply::empty()
                };
                (reply, None)
            }
            Request::Get { dir } => {
                let (served, hit) = store.get_or_load(&key_for(dir, caller)?, false)?;
                {
                    let mut state = store.lock();
                    if hit {
                        state.stats.hits += 1;
                    } else {
                        state.stats.misses += 1;
                    }
                }
                let reply = Reply {
                    held: Some(served.held),
                    hit: Some(hit),
                    extents: Some(served.extents.as_ref().clone()),
                    ..Reply::empty()
                };
                (reply, Some(served.memfd))
            }
            Request::Evict { dir } => {
                let held = store.lock().remove(&key_for(dir, caller)?);
                (
                    Reply {
                        held,
                        ..Reply::empty()
                    },
                    None,
                )
            }
            Request::List => {
                let state = store.lock();
                let mut snapshots: Vec<Held> = state
                    .entries
                    .iter()
                    .filter(|(dir, _)| caller.is_root_or_self() || key_for(dir, caller).is_ok())
                    .map(|(_, e)| e.served.held.clone())
                    .collect();
                snapshots.sort_by(|a, b| a.dir.cmp(&b.dir));
                (
                    Reply {
                        snapshots: Some(snapshots),
                        ..Reply::empty()
                    },
                    None,
                )
            }
            Request::Stats => (
                Reply {
                    stats: Some(store.lock().stats),
                    ..Reply::empty()
                },
                None,
            ),
        })
    })();
    result.unwrap_or_else(|e| (Reply::error(&e), None))
}

fn send(stream: &UnixStream, reply: &Reply, fd: Option<&OwnedFd>) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    match fd {
        Some(fd) => snapbpf_os::unix::send_fd(stream, &line, fd.as_raw_fd()),
        None => {
            let mut s = stream;
            s.write_all(&line)
        }
    }
}
