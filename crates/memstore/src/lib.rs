//! An in-memory snapshot store (SnapFaaS): a long-running process that holds snapshots'
//! memory in sealed memfds and hands a VMM the descriptor over a Unix socket.
//!
//! - **Protocol.** A client connects, writes one JSON [`Request`] line (at most
//!   [`MAX_REQUEST_BYTES`], within [`REQUEST_TIMEOUT`]) and reads one JSON [`Reply`] line.
//!   A `get` reply carries the memfd (`SCM_RIGHTS`) and the memory's identity (size and
//!   SHA-256, checked when the store loaded it), so a VMM never restores a stale copy: it
//!   compares the identity with its snapshot's metadata.
//! - **Memory.** Each snapshot's memory file is copied into a memfd, which is then sealed
//!   against writes, growing and shrinking: a VMM maps it `MAP_PRIVATE`, so every VM of a
//!   function shares the store's pages and writes only its own copies. The memfds' pages
//!   are counted once, in the store.
//! - **Capacity.** Past `capacity` bytes the least recently used snapshots are evicted; a
//!   snapshot larger than the capacity is refused. A `get` of a snapshot not held loads it
//!   (a miss).
//! - **Shutdown.** SIGINT or SIGTERM stops accepting, finishes the requests in progress,
//!   closes every memfd and removes the socket.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapbpf_store::FileIdentity;

/// Longest request line.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Longest a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a client waits for the store's reply (a `get` may load a large snapshot).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// Most requests served at once; further clients wait in the listen backlog.
pub const MAX_CONCURRENT: usize = 64;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Load the snapshot in `dir` (no-op if held).
    Add {
        /// Snapshot directory.
        dir: PathBuf,
    },
    /// The memfd of the snapshot in `dir`, loading it if needed.
    Get {
        /// Snapshot directory.
        dir: PathBuf,
    },
    /// Drop the snapshot in `dir`.
    Evict {
        /// Snapshot directory.
        dir: PathBuf,
    },
    /// The snapshots held.
    List,
    /// Counters.
    Stats,
}

/// One held snapshot, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Its directory (canonical).
    pub dir: PathBuf,
    /// Its function.
    pub function: String,
    /// Identity of its memory.
    pub memory: FileIdentity,
    /// Bytes held.
    pub bytes: u64,
}

/// The store's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Snapshots held.
    pub snapshots: u64,
    /// Bytes held in memfds.
    pub bytes: u64,
    /// Capacity in bytes.
    pub capacity: u64,
    /// `get`s served from memory.
    pub hits: u64,
    /// `get`s that loaded the snapshot first.
    pub misses: u64,
    /// Snapshots evicted to make room.
    pub evictions: u64,
}

/// The store's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Why the request failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The snapshot concerned (`add`, `get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// Whether a `get` was served from memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit: Option<bool>,
    /// `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<Held>>,
    /// `stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

impl Reply {
    fn error(e: &dyn std::error::Error) -> Self {
        Self {
            error: Some(snapbpf_store::error_chain(e)),
            ..Self::empty()
        }
    }

    fn empty() -> Self {
        Self {
            error: None,
            held: None,
            hit: None,
            snapshots: None,
            stats: None,
        }
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
    /// The snapshot does not fit.
    #[error("the store is full: the snapshot holds {bytes} bytes, the capacity is {capacity}")]
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The store's capacity.
        capacity: u64,
    },
    /// A memfd could not be made.
    #[error("cannot create a memfd")]
    Memfd(#[source] std::io::Error),
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    /// The socket could not be set up.
    #[error("cannot listen on {path}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Errors of a client request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store is not there.
    #[error("cannot reach the snapshot store at {path} (is `snapbpf store serve` running?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed midway (the store died or hung).
    #[error("the snapshot store at {path} did not answer")]
    Exchange {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not a reply.
    #[error("the snapshot store at {path} sent a bad reply '{line}'")]
    BadReply {
        /// Socket path.
        path: PathBuf,
        /// What it sent.
        line: String,
    },
    /// The store refused.
    #[error("the snapshot store refused: {0}")]
    Refused(String),
    /// The snapshot directory named does not exist here.
    #[error("cannot find the snapshot directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `dir` as the store names it: absolute and canonical (the store runs elsewhere, in
/// another working directory).
pub fn store_key(dir: &Path) -> Result<PathBuf, ClientError> {
    dir.canonicalize().map_err(|source| ClientError::Dir {
        path: dir.to_path_buf(),
        source,
    })
}

struct Entry {
    held: Held,
    memfd: Arc<OwnedFd>,
    last_used: u64,
}

struct State {
    entries: HashMap<PathBuf, Entry>,
    stats: Stats,
    clock: u64,
}

impl State {
    fn touch(&mut self, dir: &Path) -> Option<(Held, Arc<OwnedFd>)> {
        self.clock += 1;
        let now = self.clock;
        let e = self.entries.get_mut(dir)?;
        e.last_used = now;
        Some((e.held.clone(), e.memfd.clone()))
    }

    /// Evicts least recently used snapshots until `bytes` more fit.
    fn make_room(&mut self, bytes: u64) -> Result<(), LoadError> {
        if bytes > self.stats.capacity {
            return Err(LoadError::TooLarge {
                bytes,
                capacity: self.stats.capacity,
            });
        }
        while self.stats.bytes + bytes > self.stats.capacity {
            let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&victim);
            self.stats.evictions += 1;
        }
        Ok(())
    }

    fn remove(&mut self, dir: &Path) -> Option<Held> {
        let e = self.entries.remove(dir)?;
        self.stats.bytes -= e.held.bytes;
        self.stats.snapshots -= 1;
        Some(e.held)
    }
}

/// A store serving from one socket.
struct Store {
    state: Mutex<State>,
    /// Held while a snapshot loads: two misses for one snapshot load it once.
    loading: Mutex<()>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_load(&self, dir: &Path) -> Result<(Held, Arc<OwnedFd>, bool), LoadError> {
        if let Some((held, fd)) = self.lock().touch(dir) {
            return Ok((held, fd, true));
        }
        let _one_load = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((held, fd)) = self.lock().touch(dir) {
            return Ok((held, fd, true));
        }
        let (held, memfd) = load(dir)?;
        let memfd = Arc::new(memfd);
        let mut state = self.lock();
        state.make_room(held.bytes)?;
        state.clock += 1;
        let last_used = state.clock;
        state.stats.bytes += held.bytes;
        state.stats.snapshots += 1;
        state.entries.insert(
            dir.to_path_buf(),
            Entry {
                held: held.clone(),
                memfd: memfd.clone(),
                last_used,
            },
        );
        Ok((held, memfd, false))
    }
}

/// Copies the snapshot in `dir` (canonical) into a new sealed memfd, after checking its
/// memory file against its metadata.
fn load(dir: &Path) -> Result<(Held, OwnedFd), LoadError> {
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
    // Read with O_DIRECT: the store's copy is the memory; the page cache would hold it twice.
    let (source, _) =
        snapbpf_store::fsutil::open_direct(&memory_path).map_err(|source| LoadError::Read {
            path: memory_path.clone(),
            source,
        })?;
    let name = c"snapbpf-store";
    // SAFETY: memfd_create takes a NUL-terminated name and flags, returns a new fd or -1.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(LoadError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let memfd = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    memfd.set_len(meta.memory.size).map_err(LoadError::Memfd)?;
    let chunk = 4u64 << 20;
    let mut buf = snapbpf_store::fsutil::AlignedBuf::new(chunk).map_err(LoadError::Memfd)?;
    let mut offset = 0u64;
    while offset < meta.memory.size {
        let n = (meta.memory.size - offset).min(chunk) as usize;
        let mut got = 0usize;
        while got < n {
            // Direct reads want whole blocks: ask for the rest of the buffer.
            let read = snapbpf_store::fsutil::read_at(
                &source,
                &mut buf.as_mut_slice()[got..],
                offset + got as u64,
            )
            .map_err(|source| LoadError::Read {
                path: memory_path.clone(),
                source,
            })?;
            if read == 0 {
                return Err(LoadError::Read {
                    path: memory_path.clone(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            got += read;
        }
        memfd
            .write_all_at(&buf.as_mut_slice()[..n], offset)
            .map_err(LoadError::Memfd)?;
        offset += n as u64;
    }
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) on our own memfd with integer flags.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(LoadError::Memfd(std::io::Error::last_os_error()));
    }
    let held = Held {
        dir: dir.to_path_buf(),
        function: meta.function,
        memory: meta.memory,
        bytes: meta.memory.size,
    };
    Ok((held, OwnedFd::from(memfd)))
}

/// The key of a snapshot directory: its canonical path.
fn key(dir: &Path) -> Result<PathBuf, LoadError> {
    dir.canonicalize().map_err(|source| LoadError::Read {
        path: dir.to_path_buf(),
        source,
    })
}

/// Serves the store on `socket` with `capacity` bytes until SIGINT or SIGTERM (needs
/// `snapbpf_store::interrupt::install`; without it, until killed). A stale socket is
/// replaced; anything else there is not.
pub fn serve(socket: &Path, capacity: u64) -> Result<Stats, ServeError> {
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            let _ = std::fs::remove_file(socket);
        }
        Ok(_) => return Err(ServeError::NotASocket(socket.to_path_buf())),
        Err(_) => {}
    }
    let listen_err = |source| ServeError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(socket).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    let finish = snapbpf_store::interrupt::finish_on_signal();
    let store = Arc::new(Store {
        state: Mutex::new(State {
            entries: HashMap::new(),
            stats: Stats {
                capacity,
                ..Stats::default()
            },
            clock: 0,
        }),
        loading: Mutex::new(()),
    });
    tracing::info!(
        "store: serving on {} with {capacity} bytes",
        socket.display()
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
                tracing::warn!("store: accept: {e}");
                continue;
            }
        };
        sessions.retain(|s| !s.is_finished());
        while sessions.len() >= MAX_CONCURRENT {
            std::thread::sleep(Duration::from_millis(5));
            sessions.retain(|s| !s.is_finished());
        }
        let store = store.clone();
        match std::thread::Builder::new()
            .name("store-session".into())
            .spawn(move || session(&store, stream))
        {
            Ok(h) => sessions.push(h),
            Err(e) => tracing::error!("store: cannot start a session thread: {e}"),
        }
    }
    for s in sessions {
        let _ = s.join();
    }
    let stats = store.lock().stats;
    drop(store);
    let _ = std::fs::remove_file(socket);
    Ok(stats)
}

/// One request: read it, answer it.
fn session(store: &Store, stream: UnixStream) {
    let _ = stream.set_nonblocking(false);
    let line = match snapbpf_store::unix::read_line_within(
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
    let (reply, fd) = answer(store, &request);
    if let Err(e) = send(&stream, &reply, fd.as_deref()) {
        tracing::warn!("store: cannot reply to {request:?}: {e}");
    }
}

fn answer(store: &Store, request: &Request) -> (Reply, Option<Arc<OwnedFd>>) {
    let result = (|| -> Result<(Reply, Option<Arc<OwnedFd>>), LoadError> {
        Ok(match request {
            Request::Add { dir } | Request::Get { dir } => {
                let (held, fd, hit) = store.get_or_load(&key(dir)?)?;
                let get = matches!(request, Request::Get { .. });
                if get {
                    let mut state = store.lock();
                    if hit {
                        state.stats.hits += 1;
                    } else {
                        state.stats.misses += 1;
                    }
                }
                let reply = Reply {
                    held: Some(held),
                    hit: get.then_some(hit),
                    ..Reply::empty()
                };
                (reply, get.then_some(fd))
            }
            Request::Evict { dir } => {
                let held = store.lock().remove(&key(dir)?);
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
                let mut snapshots: Vec<Held> =
                    state.entries.values().map(|e| e.held.clone()).collect();
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
        Some(fd) => snapbpf_store::unix::send_fd(stream, &line, fd.as_raw_fd()),
        None => {
            let mut s = stream;
            s.write_all(&line)
        }
    }
}

/// Sends `request` to the store at `socket` and returns its reply and descriptor.
pub fn request(socket: &Path, request: &Request) -> Result<(Reply, Option<OwnedFd>), ClientError> {
    let path = socket.to_path_buf();
    let stream = snapbpf_store::unix::connect_within(socket, Instant::now() + REQUEST_TIMEOUT)
        .map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
    let exchange = |source| ClientError::Exchange {
        path: path.clone(),
        source,
    };
    let mut line = serde_json::to_vec(request).map_err(|e| exchange(e.into()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(exchange)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(exchange)?;
    // The reply line and its descriptor arrive in one message; a reply without one may
    // still come in pieces.
    let (mut body, fd) = snapbpf_store::unix::recv_fd(&stream).map_err(exchange)?;
    while !body.ends_with(b"\n") && !body.is_empty() && body.len() < MAX_REQUEST_BYTES {
        let mut more = [0u8; 4096];
        let n = std::io::Read::read(&mut &stream, &mut more).map_err(exchange)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&more[..n]);
    }
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let reply: Reply = serde_json::from_str(&text).map_err(|_| ClientError::BadReply {
        path: path.clone(),
        line: text.chars().take(200).collect(),
    })?;
    if let Some(e) = reply.error {
        return Err(ClientError::Refused(e));
    }
    Ok((reply, fd))
}

/// The memfd of the snapshot in `dir` from the store at `socket`, checked to hold
/// `expected` (the snapshot's memory identity): a store holding another version of the
/// snapshot is refused.
pub fn get(
    socket: &Path,
    dir: &Path,
    expected: &FileIdentity,
) -> Result<(OwnedFd, Held, bool), ClientError> {
    let (reply, fd) = request(
        socket,
        &Request::Get {
            dir: store_key(dir)?,
        },
    )?;
    let bad = || ClientError::BadReply {
        path: socket.to_path_buf(),
        line: "a get reply without the snapshot or its memfd".into(),
    };
    let held = reply.held.ok_or_else(bad)?;
    let fd = fd.ok_or_else(bad)?;
    if &held.memory != expected {
        return Err(ClientError::Refused(format!(
            "the store holds another version of {} (its memory is {:?}, the snapshot's is {:?}): evict it and add it again",
            dir.display(),
            held.memory,
            expected
        )));
    }
    Ok((fd, held, reply.hit.unwrap_or(false)))
}

/// Bytes the store at `socket` holds of the snapshot in `dir` (0 if none, or if the store
/// cannot be asked): for memory reports.
pub fn held_bytes(socket: &Path, dir: &Path) -> u64 {
    let Ok(dir) = store_key(dir) else {
        return 0;
    };
    request(socket, &Request::List)
        .ok()
        .and_then(|(reply, _)| reply.snapshots)
        .and_then(|held| held.into_iter().find(|h| h.dir == dir))
        .map_or(0, |h| h.bytes)
}
