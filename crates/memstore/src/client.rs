//! Asking the store: one request per connection.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use snapbpf_store::FileIdentity;

use crate::protocol::{
    extents_are_valid, Extent, Held, Reply, Request, MAX_REPLY_BYTES, REPLY_TIMEOUT,
    REQUEST_TIMEOUT,
};

/// Errors of a client request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server on the socket is not one to trust.
    #[error(transparent)]
    Untrusted(#[from] snapbpf_os::access::ServerCheckError),
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
    /// The store holds another version of the snapshot.
    #[error("the store holds another version of {dir} (its memory is {held:?}, the snapshot's is {expected:?}): evict it and add it again")]
    Stale {
        /// The snapshot directory.
        dir: PathBuf,
        /// What the store holds.
        held: Box<FileIdentity>,
        /// What the snapshot's metadata names.
        expected: Box<FileIdentity>,
    },
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

/// Sends `request` to the store at `socket` and returns its reply and descriptor.
pub fn request(socket: &Path, request: &Request) -> Result<(Reply, Option<OwnedFd>), ClientError> {
    let path = socket.to_path_buf();
    let stream = snapbpf_os::unix::connect_within(socket, Instant::now() + REQUEST_TIMEOUT)
        .map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
    // Whoever can write the socket's directory could have bound it: trust only root or
    // ourselves to hand us memory a VM will run on.
    snapbpf_os::access::check_server(&stream, socket)?;
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
    // The descriptor arrives with the first bytes of the reply; the rest of a long line
    // follows as plain data.
    let (mut body, fd) = snapbpf_os::unix::recv_fd(&stream).map_err(exchange)?;
    while !body.ends_with(b"\n") && !body.is_empty() && body.len() < MAX_REPLY_BYTES {
        let mut more = [0u8; 64 << 10];
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

/// A snapshot's memory as the store hands it out.
#[derive(Debug)]
pub struct Served {
    /// The sealed memfd: the snapshot's memory at its file offsets.
    pub memfd: OwnedFd,
    /// What the store holds (identity checked against the snapshot's).
    pub held: Held,
    /// Where the memfd holds data. With [`crate::Residency::Whole`], every other page
    /// is a zero page of the snapshot; with [`crate::Residency::WorkingSet`], every
    /// other page must come from the memory file.
    pub extents: Vec<Extent>,
    /// Whether the store already held it.
    pub hit: bool,
}

/// The memory of the snapshot in `dir` from the store at `socket`, checked to be
/// `expected` (the snapshot's memory identity): a store holding another version of the
/// snapshot is refused, and so is a reply whose extents do not fit the memory.
pub fn get(socket: &Path, dir: &Path, expected: &FileIdentity) -> Result<Served, ClientError> {
    let (reply, fd) = request(
        socket,
        &Request::Get {
            memory: *expected,
            dir: Some(store_key(dir)?),
        },
    )?;
    let bad = |what: &str| ClientError::BadReply {
        path: socket.to_path_buf(),
        line: what.into(),
    };
    let held = reply
        .held
        .ok_or_else(|| bad("a get reply without the snapshot"))?;
    let memfd = fd.ok_or_else(|| bad("a get reply without the memfd"))?;
    let extents = reply
        .extents
        .ok_or_else(|| bad("a get reply without extents"))?;
    if &held.memory != expected {
        return Err(ClientError::Stale {
            dir: dir.to_path_buf(),
            held: Box::new(held.memory),
            expected: Box::new(*expected),
        });
    }
    if !extents_are_valid(&extents, expected.size / snapbpf_store::PAGE_SIZE) {
        return Err(bad(
            "extents that are unsorted, overlap or pass the memory's end",
        ));
    }
    let size = std::fs::File::from(memfd.try_clone().map_err(|source| ClientError::Exchange {
        path: socket.to_path_buf(),
        source,
    })?)
    .metadata()
    .map(|m| m.len())
    .unwrap_or(0);
    if size != expected.size {
        return Err(bad("a memfd whose size is not the snapshot memory's"));
    }
    // Sealed against every change, so what the store checked is what the VM runs on, and
    // no process holding the memfd (the store included) can change it under the VM.
    if !fully_sealed(&memfd) {
        return Err(bad(
            "a memfd not sealed against writes, growth and shrinking (F_SEAL_WRITE, GROW, SHRINK, SEAL)",
        ));
    }
    Ok(Served {
        memfd,
        held,
        extents,
        hit: reply.hit.unwrap_or(false),
    })
}

/// Whether `memfd` carries every seal the store sets.
fn fully_sealed(memfd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let want = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_GET_SEALS) on a descriptor we own; it only reads its seals.
    let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & want == want
}

/// Bytes the store at `socket` holds, for this caller, of snapshots whose memory is
/// `memory` (0 if none, or if the store cannot be asked): for memory reports.
pub fn held_bytes(socket: &Path, memory: &FileIdentity) -> u64 {
    request(socket, &Request::List)
        .ok()
        .and_then(|(reply, _)| reply.snapshots)
        .map_or(0, |held| {
            held.iter()
                .filter(|h| h.memory == *memory)
                .map(|h| h.bytes)
                .sum()
        })
}
