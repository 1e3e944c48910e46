//! The snapshot store: how snapbpf keeps snapshots and what is bound to them.
//!
//! - [`snapshot`]: the snapshot directory (`memory`, `vcpu`, `snapshot.json`), written
//!   atomically and opened only after validation.
//! - [`identity`]: the one identity type that binds artifacts to a snapshot's memory file.
//! - [`verify`]: checks a file against its identity, hashing only when a cheap key says
//!   it may have changed (first use, a copy, an edit).
//! - [`interrupt`]: what to undo when SIGINT/SIGTERM cut work short (temporary
//!   directories, changed device settings, worker processes).
//! - [`lock`]: shared (restore) and exclusive (record) locks on snapshot directories.
//! - [`artifact`]: the one versioned, checksummed container for strategies' saved state.
//! - [`codec`]: frame compression (zstd, LZ4) for compressed working sets and chunks.
//! - [`fsutil`]: atomic writes, page-cache residency and eviction, whole-file direct reads.
//!
//! It depends on the VMM (for the vCPU state format) and nothing above it, so the
//! evaluation harness and every mechanism crate can use it.

pub mod artifact;
pub mod codec;
pub mod fsutil;
pub mod identity;
pub mod interrupt;
pub mod lock;
pub mod snapshot;
pub mod unix;
pub mod verify;

pub use identity::FileIdentity;
pub use snapshot::{OpenError, Snapshot, SnapshotMeta};

/// An error and its sources on one line, each cause once: how the CLI, the worker
/// protocol and the page-fault handler's refusals print errors.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// The one page size of snapshots, working sets and artifacts (x86-64 base pages): the
/// guest ABI's.
pub const PAGE_SIZE: u64 = snapbpf_vmm::abi::PAGE_SIZE;
