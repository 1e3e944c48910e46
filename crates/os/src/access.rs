//! Who may talk to whom over snapbpf's Unix sockets: a server's socket is created with an
//! explicit mode in a directory it controls, every peer's `SO_PEERCRED` is checked against
//! an allow list before it is served, and a client checks that the server listening is
//! root or itself before it trusts a byte of it (see `docs/security.md`).
//!
//! The peer check is the authority: the socket's mode only keeps others from connecting at
//! all, and the kernel records a peer's credentials when it connects, so a connection made
//! in the instant between `bind` and `chmod` is refused like any other.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where snapbpf's servers put their sockets unless told otherwise: a directory root
/// creates 0700 (0750 with a group), not the world-writable `/tmp`.
pub const DEFAULT_SOCKET_DIR: &str = "/run/snapbpf";

/// The process, user and group of a socket's peer, as the kernel recorded them when it
/// connected (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its process id (in our pid namespace; 0 if it is in none of ours).
    pub pid: i32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
}

impl PeerCredentials {
    /// Whether the peer is root or this process's own user: trusted with everything a
    /// server holds, and trusted as a server.
    pub fn is_root_or_self(&self) -> bool {
        self.uid == 0 || self.uid == effective_uid()
    }
}

impl std::fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}, uid {}, gid {}", self.pid, self.uid, self.gid)
    }
}

/// The credentials of `stream`'s peer.
pub fn peer_credentials(stream: &UnixStream) -> std::io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into our ucred and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PeerCredentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Who a server serves: its own user and root always; the users listed; and, with a group,
/// processes whose effective group is it (the socket is then 0660 and of that group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Further user ids allowed.
    pub uids: Vec<u32>,
    /// A group whose members are allowed, and that owns the socket.
    pub gid: Option<u32>,
}

impl AccessPolicy {
    /// Whether the peer `cred` may be served.
    pub fn admits(&self, cred: &PeerCredentials) -> bool {
        cred.is_root_or_self() || self.uids.contains(&cred.uid) || self.gid == Some(cred.gid)
    }

    /// The mode of the socket: 0600, 0660 with a group, 0666 with other users allowed
    /// (who they are is then the peer check's to decide: a mode names no single user).
    fn socket_mode(&self) -> u32 {
        if !self.uids.is_empty() {
            0o666
        } else if self.gid.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// The mode of a socket directory the server creates: 0700, 0750 with a group, 0711
    /// with other users allowed (they may reach the socket, not list the directory).
    fn dir_mode(&self) -> u32 {
        if !self.uids.is_empty() {
            0o711
        } else if self.gid.is_some() {
            0o750
        } else {
            0o700
        }
    }

    /// Checks the peer of `stream`: its credentials if admitted.
    pub fn check(&self, stream: &UnixStream) -> Result<PeerCredentials, PeerError> {
        let cred = peer_credentials(stream).map_err(PeerError::Credentials)?;
        if self.admits(&cred) {
            Ok(cred)
        } else {
            Err(PeerError::NotAllowed(cred))
        }
    }
}

/// A peer that may not be served, or whose credentials are unknown.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// `SO_PEERCRED` failed.
    #[error("cannot read the peer's credentials")]
    Credentials(#[source] std::io::Error),
    /// The peer is not on the allow list.
    #[error("peer ({0}) is not allowed: only root, this server's user and the users or group it was started with are")]
    NotAllowed(PeerCredentials),
}

/// Why a server could not listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Something other than a socket is at the path; it is left alone.
    #[error("{0} exists and is not a socket; remove it or choose another path")]
    NotASocket(PathBuf),
    /// A live server answers there: starting a second would orphan it.
    #[error("another server is listening on {path} ({peer}); stop it first")]
    InUse {
        /// The socket.
        path: PathBuf,
        /// Who answered.
        peer: PeerCredentials,
    },
    /// A server that is not root nor this user listens there.
    #[error("a server of another user is listening on {path} ({peer})")]
    Foreign {
        /// The socket.
        path: PathBuf,
        /// Who answered.
        peer: PeerCredentials,
    },
    /// The socket's directory could not be created or set up.
    #[error("cannot prepare the socket directory {path}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// `bind`, `chmod` or `chown` of the socket failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// Binds a listening socket at `path` for `policy`: the parent directory is created 0700
/// (0750 and of the policy's group; 0711 with other users allowed) if missing; a stale
/// socket (nobody answers) is replaced, but a live server's is not, nor anything that is
/// not a socket; the socket is then set to 0600 (0660 and the group's, with a group; 0666 with other users allowed, whom
/// the peer check then sorts).
pub fn listen(path: &Path, policy: &AccessPolicy) -> Result<UnixListener, ListenError> {
    let bind_err = |source| ListenError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let dir_err = |source| ListenError::Directory {
                path: dir.to_path_buf(),
                source,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(policy.dir_mode())
                .create(dir)
                .map_err(dir_err)?;
            if let Some(gid) = policy.gid {
                std::os::unix::fs::chown(dir, None, Some(gid)).map_err(dir_err)?;
            }
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            match crate::unix::connect_within(path, Instant::now() + Duration::from_secs(1)) {
                Ok(stream) => {
                    let peer = peer_credentials(&stream).map_err(bind_err)?;
                    return Err(ListenError::InUse {
                        path: path.to_path_buf(),
                        peer,
                    });
                }
                // Nobody listens: a server that died left it.
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    let _ = std::fs::remove_file(path);
                }
                Err(e) => return Err(bind_err(e)),
            }
        }
        Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    // No umask games: the mask is the whole process's, and another thread's directory
    // would lose its search bits. A peer that connects before the chmod is still checked.
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let set_up = (|| {
        if let Some(gid) = policy.gid {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(policy.socket_mode()))
    })();
    if let Err(e) = set_up {
        let _ = std::fs::remove_file(path);
        return Err(bind_err(e));
    }
    Ok(listener)
}

/// A server that a client will not trust.
#[derive(Debug, thiserror::Error)]
pub enum ServerCheckError {
    /// `SO_PEERCRED` failed.
    #[error("cannot read the server's credentials")]
    Credentials(#[source] std::io::Error),
    /// The server is neither root nor this user: anyone can bind a socket at a path they
    /// can write, and would then choose what a VM runs on.
    #[error(
        "the server on {path} runs as uid {uid}, neither root nor this user; refusing to trust it"
    )]
    Untrusted {
        /// The socket.
        path: PathBuf,
        /// The server's user.
        uid: u32,
    },
}

/// Checks that the server at the other end of `stream` (connected to `path`) runs as root
/// or as this process's user.
pub fn check_server(stream: &UnixStream, path: &Path) -> Result<PeerCredentials, ServerCheckError> {
    let cred = peer_credentials(stream).map_err(ServerCheckError::Credentials)?;
    if cred.is_root_or_self() {
        Ok(cred)
    } else {
        Err(ServerCheckError::Untrusted {
            path: path.to_path_buf(),
            uid: cred.uid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_socket_is_owner_only_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        // SAFETY: umask cannot fail; this test's process mask only.
        let old = unsafe { libc::umask(0) };
        let listener = listen(&path, &AccessPolicy::default());
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let _listener = listener.expect("listen");
        let mode = std::fs::symlink_metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600, "socket mode {mode:o}");
    }

    #[test]
    fn a_live_server_is_not_replaced_and_a_dead_ones_socket_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let first = listen(&path, &AccessPolicy::default()).expect("first");
        let err = listen(&path, &AccessPolicy::default()).expect_err("second");
        assert!(matches!(err, ListenError::InUse { .. }), "{err}");
        drop(first);
        // The socket file stays behind a dead server: it is stale, and replaced.
        assert!(path.exists());
        let _second = listen(&path, &AccessPolicy::default()).expect("over a stale socket");
    }

    #[test]
    fn anything_but_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        std::fs::write(&path, b"keep").expect("write");
        let err = listen(&path, &AccessPolicy::default()).expect_err("a file");
        assert!(matches!(err, ListenError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"keep");
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run").join("s.sock");
        let _l = listen(&path, &AccessPolicy::default()).expect("listen");
        let mode = std::fs::metadata(dir.path().join("run"))
            .expect("stat")
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn the_policy_admits_root_self_and_the_listed() {
        let me = effective_uid();
        let p = AccessPolicy {
            uids: vec![4242],
            gid: Some(777),
        };
        let cred = |uid, gid| PeerCredentials { pid: 1, uid, gid };
        assert!(p.admits(&cred(0, 0)));
        assert!(p.admits(&cred(me, 1)));
        assert!(p.admits(&cred(4242, 1)));
        assert!(p.admits(&cred(5000, 777)));
        if me != 5000 {
            assert!(!p.admits(&cred(5000, 1)));
            assert!(!AccessPolicy::default().admits(&cred(5000, 777)));
        }
    }
}
