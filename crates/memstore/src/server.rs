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
    /// user adds only snapshots in directories it owns, and is served only what it added.
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
    /// Nothing the caller may use holds this memory, and no directory to load it from was
    /// named.
    #[error("the store holds no snapshot with memory {0} for this caller: add it first (`snapbpf store add DIR`)")]
    NotHeld(String),
    /// The directory named to load from holds another snapshot than the one asked for.
    #[error(
        "{dir} holds memory {found}, not the {asked} asked for (another version of the snapshot)"
    )]
    OtherMemory {
        /// The directory.
        dir: PathBuf,
        /// The identity its metadata names.
        found: String,
        /// The identity asked for.
        asked: String,
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

/// Whose a held snapshot is. What a caller that is neither root nor the store's user
/// adds is its own: served back to it (and to the privileged), never to another such
/// caller, even one that knows its content identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Tenant {
    /// Added by root or by the store's user.
    Privileged,
    /// Added by this uid.
    Uid(u32),
}

impl Tenant {
    fn of(caller: &PeerCredentials) -> Self {
        if caller.is_root_or_self() {
            Self::Privileged
        } else {
            Self::Uid(caller.uid)
        }
    }

    /// Whether `caller` may see or evict what this tenant holds.
    fn visible_to(self, caller: &PeerCredentials) -> bool {
        caller.is_root_or_self() || self == Self::of(caller)
    }
}

/// What the store holds a snapshot under: its memory's content identity, per tenant. A
/// snapshot is asked for by that identity, never by a path the store would then read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tenant: Tenant,
    memory: FileIdentity,
}

struct State {
    entries: HashMap<Key, Entry>,
    stats: Stats,
    clock: u64,
}

/// What to give up next to make room.
enum Give {
    Trim(Key, Served),
    Evict(Key),
}

impl State {
    fn touch(&mut self, key: &Key) -> Option<Served> {
        self.clock += 1;
        let now = self.clock;
        let e = self.entries.get_mut(key)?;
        e.last_used = now;
        Some(e.served.clone())
    }

    fn remove(&mut self, key: &Key) -> Option<Held> {
        let e = self.entries.remove(key)?;
        self.stats.bytes = self.stats.bytes.saturating_sub(e.served.held.bytes);
        self.stats.snapshots = self.stats.snapshots.saturating_sub(1);
        Some(e.served.held)
    }

    fn insert(&mut self, key: Key, served: Served, trimmable: bool) {
        self.remove(&key);
        self.clock += 1;
        self.stats.bytes += served.held.bytes;
        self.stats.snapshots += 1;
        self.entries.insert(
            key,
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
    fn next_to_give(&self, keep: &Key) -> Option<Give> {
        if self.stats.bytes <= self.stats.capacity {
            return None;
        }
        let mut by_age: Vec<(&Key, &Entry)> =
            self.entries.iter().filter(|(k, _)| *k != keep).collect();
        by_age.sort_by_key(|(_, e)| e.last_used);
        let trim = |(k, e): &(&Key, &Entry)| e.trimmable.then(|| Give::Trim(**k, e.served.clone()));
        by_age
            .iter()
            .find_map(trim)
            .or_else(|| by_age.first().map(|(k, _)| Give::Evict(**k)))
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
    /// One gate per snapshot being loaded: two misses for one snapshot load it once,
    /// while loads of other snapshots go on beside it (no lock is held across the load
    /// of another, however large).
    loading: Mutex<HashMap<Key, Arc<Mutex<()>>>>,
    /// Held while room is made: one loader trims or evicts at a time.
    room: Mutex<()>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot in `dir` (canonical, and one `tenant` may load) for `tenant`, loaded
    /// first if not held (or, with `whole`, held only trimmed); whether it was held. With
    /// `expected`, the directory must hold that memory.
    fn get_or_load(
        &self,
        dir: &Path,
        tenant: Tenant,
        expected: Option<&FileIdentity>,
        whole: bool,
    ) -> Result<(Served, bool), LoadError> {
        let meta = read_meta(dir)?;
        if let Some(asked) = expected.filter(|asked| **asked != meta.memory) {
            return Err(LoadError::OtherMemory {
                dir: dir.to_path_buf(),
                found: meta.memory.digest_hex(),
                asked: asked.digest_hex(),
            });
        }
        let key = Key {
            tenant,
            memory: meta.memory,
        };
        let held_enough = |s: &Served| !whole || s.held.resident == Residency::Whole;
        if let Some(s) = self.lock().touch(&key).filter(held_enough) {
            return Ok((s, true));
        }
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let loaded = {
            let _one_load = gate.lock().unwrap_or_else(|e| e.into_inner());
            // Bound first: the state lock must not be held across the load.
            let held = self.lock().touch(&key).filter(held_enough);
            match held {
                Some(s) => Ok((s, true)),
                None => self.load_held(dir, &meta, key).map(|s| (s, false)),
            }
        };
        let mut gates = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody else waits at this gate.
        if Arc::strong_count(&gate) <= 2 {
            gates.remove(&key);
        }
        loaded
    }

    /// Loads the memory of the snapshot in `dir` (described by `meta`) under `key`, and
    /// makes room for it.
    fn load_held(
        &self,
        dir: &Path,
        meta: &snapbpf_store::SnapshotMeta,
        key: Key,
    ) -> Result<Served, LoadError> {
        let sealed = load(dir, meta, self.config.backing)?;
        let served = served(dir, meta, sealed, Residency::Whole, self.config.backing);
        let trimmable = self.config.trim.is_some() && self.config.backing != Backing::Hugetlb;
        self.lock().insert(key, served.clone(), trimmable);
        let made = {
            let _room = self.room.lock().unwrap_or_else(|e| e.into_inner());
            self.make_room(&key)
        };
        if let Err(e) = made {
            self.lock().remove(&key);
            return Err(e);
        }
        // Made room for it, it may have been trimmed itself.
        Ok(self.lock().touch(&key).unwrap_or(served))
    }

    /// Trims and evicts until the store is within its capacity again.
    fn make_room(&self, keep: &Key) -> Result<(), LoadError> {
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
                Some(Give::Evict(key)) => {
                    let mut state = self.lock();
                    if let Some(held) = state.remove(&key) {
                        state.stats.evictions += 1;
                        tracing::info!("store: evicted {}", held.dir.display());
                    }
                }
                Some(Give::Trim(key, old)) => {
                    // Copying the working set takes a while: other requests go on meanwhile.
                    let Some(trim_to) = &self.config.trim else {
                        continue;
                    };
                    let dir = old.held.dir.clone();
                    let trimmed = trim(trim_to, &dir, &old, self.config.backing);
                    let mut state = self.lock();
                    let Some(entry) = state.entries.get_mut(&key) else {
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

/// The metadata of the snapshot in `dir` (canonical).
fn read_meta(dir: &Path) -> Result<snapbpf_store::SnapshotMeta, LoadError> {
    let meta_path = dir.join(snapbpf_store::snapshot::META_FILE);
    let raw =
        snapbpf_store::fsutil::read_regular(&meta_path, snapbpf_store::snapshot::MAX_META_BYTES)
            .map_err(|source| LoadError::Read {
                path: meta_path.clone(),
                source,
            })?;
    Ok(snapbpf_store::snapshot::parse_meta(&raw, &meta_path)?)
}

/// Copies the memory file of the snapshot in `dir` into a new sealed memfd and checks
/// what was copied against `meta`. The store hashes every byte itself rather than trust
/// a verification cache (`.snapbpf-verified`): that file lives in a directory a caller
/// may own, or on a mount that vouches for what its bucket claims, and what the store
/// holds under an identity is served to whoever asks for that identity.
fn load(
    dir: &Path,
    meta: &snapbpf_store::SnapshotMeta,
    backing: Backing,
) -> Result<SealedMemory, LoadError> {
    let memory_path = dir.join(snapbpf_store::snapshot::MEMORY_FILE);
    let (sealed, digest) = memfd::load_file(&memory_path, meta.memory.size, backing)?;
    if digest != meta.memory.digest {
        return Err(LoadError::Stale(
            snapbpf_store::verify::VerifyError::Digest {
                path: memory_path,
                found: snapbpf_store::identity::hex(&digest),
                expected: meta.memory.digest_hex(),
            },
        ));
    }
    Ok(sealed)
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
        loading: Mutex::new(HashMap::new()),
        room: Mutex::new(()),
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
    let tenant = Tenant::of(caller);
    let result = (|| -> Result<(Reply, Option<Arc<OwnedFd>>), LoadError> {
        Ok(match request {
            Request::Add { dir } => {
                let (served, _) = store.get_or_load(&key_for(dir, caller)?, tenant, None, true)?;
                let reply = Reply {
                    held: Some(served.held),
                    ..Reply::empty()
                };
                (reply, None)
            }
            Request::Get { memory, dir } => {
                let key = Key {
                    tenant,
                    memory: *memory,
                };
                let held = store.lock().touch(&key);
                let (served, hit) = match (held, dir) {
                    (Some(served), _) => (served, true),
                    // A miss loads only from a directory the caller may add.
                    (None, Some(dir)) => {
                        store.get_or_load(&key_for(dir, caller)?, tenant, Some(memory), false)?
                    }
                    (None, None) => return Err(LoadError::NotHeld(memory.digest_hex())),
                };
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
            Request::Evict { memory } => {
                let mut state = store.lock();
                let keys: Vec<Key> = state
                    .entries
                    .keys()
                    .filter(|k| k.memory == *memory && k.tenant.visible_to(caller))
                    .copied()
                    .collect();
                let mut held = None;
                for key in keys {
                    held = state.remove(&key).or(held);
                }
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
                    .filter(|(key, _)| key.tenant.visible_to(caller))
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
