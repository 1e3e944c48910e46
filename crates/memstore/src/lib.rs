//! An in-memory snapshot store (SnapFaaS): a long-running process that holds snapshots'
//! memory in sealed memfds and hands a VMM the descriptor over a Unix socket.
//!
//! - **Protocol** ([`protocol`]). A client connects, writes one JSON [`Request`] line (at
//!   most [`MAX_REQUEST_BYTES`], within [`REQUEST_TIMEOUT`]) and reads one JSON [`Reply`]
//!   line. A `get` reply carries the memfd (`SCM_RIGHTS`), the memory's identity (size and
//!   tree digest, checked when the store loaded it) so a VMM never restores a stale copy, and
//!   the extents the memfd holds data for.
//! - **Memory** ([`memfd`]). Each snapshot's memory file is copied into a memfd, zero
//!   pages left as holes, which is then sealed against writes, growing and shrinking: a VMM
//!   copies from it (SnapFaaS) or maps it `MAP_PRIVATE` (SnapBPF over the store), so every
//!   VM of a function shares the store's pages and writes only its own copies. The memfds'
//!   pages are counted once, in the store; 4 KiB, THP or hugetlbfs pages ([`Backing`]).
//! - **Capacity** ([`server`]). Past `capacity` bytes the least recently used snapshots
//!   are first trimmed to their recorded working sets (SnapBPF's `snapbpf.ws`: the rest
//!   is then paged from the memory file on demand), then evicted. A `get` of a snapshot
//!   not held loads it (a miss).
//! - **Shutdown.** SIGINT or SIGTERM stops accepting, finishes the requests in progress,
//!   closes every memfd and removes the socket.

pub mod client;
pub mod memfd;
pub mod protocol;
pub mod server;

pub use client::{get, held_bytes, request, store_key, ClientError, Served};
pub use memfd::{Backing, BackingError};
pub use protocol::{
    Extent, Held, Reply, Request, Residency, Stats, MAX_REPLY_BYTES, MAX_REQUEST_BYTES,
    REPLY_TIMEOUT, REQUEST_TIMEOUT,
};
pub use server::{serve, Config, LoadError, ServeError, Shutdown, TrimTo, MAX_CONCURRENT};
