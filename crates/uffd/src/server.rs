//! A page-fault handler process: listens on a Unix socket and serves every VMM that hands
//! it a userfaultfd (Firecracker's handshake), each on its own thread.
//!
//! One session: receive the descriptor and the regions, check them against the memory
//! file, run the caller's `prefetch` (what to install before the VM's vCPU runs; nothing
//! for a plain on-demand handler), acknowledge, then serve the VM's faults from the file
//! until the VMM closes the connection. A failing session tells its VMM why in the
//! acknowledgement and is logged; the server goes on.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{acknowledge, check_regions, receive_from_vmm, serve, GuestRegionUffdMapping};
use crate::{HandlerAck, Uffd, UffdError};

/// Most VMs one handler serves at once; a further VMM waits in the listen backlog.
pub const MAX_CONCURRENT_SESSIONS: usize = 64;

/// The error a session's prefetch ends with, kept whole.
pub type PrefetchError = Box<dyn std::error::Error + Send + Sync>;

/// What a session installs before the VM runs: gets the descriptor, the VM's regions and
/// the memory file the handler serves (the one it opened: nothing reopens its path),
/// returns what it installed.
pub type Prefetch = dyn Fn(&Uffd, &[GuestRegionUffdMapping], &File) -> Result<HandlerAck, PrefetchError>
    + Send
    + Sync;

/// Errors of the handler server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The memory file could not be opened.
    #[error("cannot open the memory file {path}: {source}")]
    Source {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The socket could not be created (something is in the way, or a live handler
    /// answers there).
    #[error(transparent)]
    Socket(#[from] snapbpf_os::access::ListenError),
    /// The socket could not be set up.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Errors of one session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The handshake or serving failed.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// The prefetch failed; the VM is refused.
    #[error("prefetch failed")]
    Prefetch(#[source] PrefetchError),
    /// The acknowledgement could not be sent.
    #[error("cannot acknowledge: {0}")]
    Acknowledge(std::io::Error),
}

/// The memory file a handler serves: one open descriptor whose content the caller
/// checked, so a file swapped in at the path later is never served.
#[derive(Debug)]
pub struct ServedMemory {
    /// The open file.
    pub file: File,
    /// Where it was opened from, named in errors.
    pub path: std::path::PathBuf,
    /// Its content, named in the hello.
    pub identity: snapbpf_store::FileIdentity,
}

/// Listens on `socket` and serves VMs from `memory` with `prefetch`,
/// until `max_sessions` sessions have been accepted (forever when `None`), then waits for
/// the running ones. With `extension`, every session starts with a hello naming
/// the memory's identity and acknowledges its prefetch; without, the
/// handler writes nothing, as Firecracker's handlers. A stale socket at `socket` is
/// replaced; anything else there is not.
pub fn listen(
    socket: &Path,
    memory: ServedMemory,
    prefetch: Arc<Prefetch>,
    max_sessions: Option<u64>,
    extension: bool,
    access: &snapbpf_os::access::AccessPolicy,
) -> Result<(), ServerError> {
    let ServedMemory {
        file,
        path: memory_path,
        identity,
    } = memory;
    let file_len = file
        .metadata()
        .map_err(|source| ServerError::Source {
            path: memory_path.clone(),
            source,
        })?
        .len();
    let file = Arc::new(file);
    let listener = snapbpf_os::access::listen(socket, access)?;
    tracing::info!("uffd-handler: listening on {}", socket.display());
    let undo_socket = socket.to_path_buf();
    let _interrupted =
        snapbpf_os::interrupt::on_interrupt("removed the handler's socket", move || {
            let _ = std::fs::remove_file(&undo_socket);
        });
    let slots = Arc::new(Slots::new(MAX_CONCURRENT_SESSIONS));
    let mut sessions = Vec::new();
    let mut count = 0u64;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and its kind: back off rather than spin on a full table.
                tracing::warn!("uffd-handler: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        // Who may have a snapshot's pages: checked before a byte is written (the hello
        // names the memory file) or a descriptor taken.
        let vmm = match access.check(&stream) {
            Ok(peer) => {
                tracing::info!("uffd-handler: session {}: VMM {peer}", count + 1);
                // Held from now: if serving fails, the VMM is killed before its
                // userfaultfd is closed (see `session`), never another process.
                snapbpf_os::terminate::ProcessHandle::open(peer.pid)
                    .map_err(|e| tracing::warn!("uffd-handler: no handle on VMM {peer}: {e}"))
                    .ok()
            }
            Err(e) => {
                tracing::warn!("uffd-handler: refused a connection: {e}");
                refuse(&stream, extension, &e);
                continue;
            }
        };
        // Busy: refuse at once, so the VMM hears it now instead of waiting for a hello
        // that would come only when another VM ends.
        if !slots.try_acquire() {
            let busy = std::io::Error::other(format!(
                "the handler is busy: it serves {MAX_CONCURRENT_SESSIONS} VMs already"
            ));
            tracing::warn!("uffd-handler: refused a VM: {busy}");
            refuse(&stream, extension, &busy);
            continue;
        }
        count += 1;
        // Join the sessions that ended: an unjoined thread keeps its stack, so a
        // long-lived handler would grow by one stack's touched pages per VM served.
        let (ended, running): (Vec<_>, Vec<_>) = sessions
            .into_iter()
            .partition(|s: &std::thread::JoinHandle<()>| s.is_finished());
        for s in ended {
            let _ = s.join();
        }
        sessions = running;
        let (file, prefetch, session_slots) = (file.clone(), prefetch.clone(), slots.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("uffd-session-{count}"))
            .spawn(move || {
                match session(
                    &stream,
                    &file,
                    file_len,
                    identity,
                    prefetch.as_ref(),
                    extension,
                    vmm.as_ref(),
                ) {
                    Ok(faults) => {
                        tracing::info!("uffd-handler: session {count} done: {faults} faults served")
                    }
                    Err(e) if !extension => {
                        tracing::error!("uffd-handler: session {count}: {e}");
                    }
                    Err(e) => {
                        tracing::error!("uffd-handler: session {count}: {e}");
                        let _ = acknowledge(
                            &stream,
                            &HandlerAck {
                                error: Some(snapbpf_os::error_chain(&e)),
                                ..HandlerAck::default()
                            },
                        );
                    }
                }
                session_slots.release();
            });
        match spawned {
            Ok(handle) => sessions.push(handle),
            Err(e) => {
                tracing::error!("uffd-handler: cannot start a session thread: {e}");
                slots.release();
            }
        }
        if max_sessions.is_some_and(|m| count >= m) {
            break;
        }
    }
    for s in sessions {
        let _ = s.join();
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// One VM: handshake, prefetch, acknowledge, serve until the VMM hangs up. Returns the
/// faults served on demand.
fn session(
    stream: &UnixStream,
    file: &File,
    file_len: u64,
    identity: snapbpf_store::FileIdentity,
    prefetch: &Prefetch,
    extension: bool,
    vmm: Option<&snapbpf_os::terminate::ProcessHandle>,
) -> Result<u64, SessionError> {
    if extension {
        let hello = crate::HandlerHello {
            snapbpf_handler: crate::handshake::EXTENSION_VERSION,
            memory: identity,
        };
        crate::say_hello(stream, &hello).map_err(SessionError::Acknowledge)?;
    }
    let (uffd, regions) = receive_from_vmm(stream)?;
    let prefetched = check_regions(&regions, file_len)
        .map_err(SessionError::from)
        .and_then(|()| prefetch(&uffd, &regions, file).map_err(SessionError::Prefetch));
    let ack = match prefetched {
        Ok(ack) => ack,
        // Our VMM waits for the acknowledgement and fails the restore on its error;
        // Firecracker resumes the guest at once, so it must not run on.
        Err(e) if extension => return Err(e),
        Err(e) => return Err(kill_vmm_then(vmm, e)),
    };
    if extension {
        acknowledge(stream, &ack).map_err(SessionError::Acknowledge)?;
    }
    match serve(&uffd, &regions, file, stream.as_fd(), false) {
        Ok(stats) => Ok(stats.faults),
        // Closing the userfaultfd would leave the guest's unserved memory to the kernel:
        // zero pages, not the snapshot's. The VMM goes first.
        Err(e) => Err(kill_vmm_then(vmm, e.into())),
    }
}

/// Kills the VMM a session can no longer serve (before its userfaultfd is closed) and
/// returns `error`.
fn kill_vmm_then(
    vmm: Option<&snapbpf_os::terminate::ProcessHandle>,
    error: SessionError,
) -> SessionError {
    match vmm.map(snapbpf_os::terminate::ProcessHandle::kill) {
        Some(Ok(())) => tracing::error!("uffd-handler: killed the VMM: it could not be served"),
        Some(Err(e)) => tracing::error!("uffd-handler: cannot kill the VMM it cannot serve: {e}"),
        None => tracing::error!("uffd-handler: no handle on the VMM it cannot serve"),
    }
    error
}

/// Refuses a VMM: with the extension, one acknowledgement line saying why (the VMM reads
/// it in place of the hello); without, the connection just closes.
fn refuse(stream: &UnixStream, extension: bool, why: &dyn std::error::Error) {
    if extension {
        let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let _ = acknowledge(
            stream,
            &HandlerAck {
                error: Some(snapbpf_os::error_chain(why)),
                ..HandlerAck::default()
            },
        );
    }
}

/// A counting semaphore bounding the sessions served at once.
struct Slots {
    free: std::sync::Mutex<usize>,
}

impl Slots {
    fn new(n: usize) -> Self {
        Self {
            free: std::sync::Mutex::new(n),
        }
    }

    /// Takes a slot if one is free.
    fn try_acquire(&self) -> bool {
        let Ok(mut free) = self.free.lock() else {
            return false;
        };
        if *free == 0 {
            return false;
        }
        *free -= 1;
        true
    }

    fn release(&self) {
        if let Ok(mut free) = self.free.lock() {
            *free += 1;
        }
    }
}
