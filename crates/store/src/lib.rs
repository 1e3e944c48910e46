//! The snapshot store: how snapbpf keeps snapshots and what is bound to them.
//!
//! - [`snapshot`]: the snapshot directory (`memory`, `vcpu`, `snapshot.json`), written
//!   atomically and opened only after validation.
//! - [`identity`]: the one identity type that binds artifacts to a snapshot's memory file.
//! - [`verify`]: checks a file against its identity, hashing only when a cheap key says
//!   it may have changed (first use, a copy, an edit).
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
pub mod snapshot;
pub mod verify;

pub use identity::{FileIdentity, TreeHasher};
pub use snapshot::{OpenError, Snapshot, SnapshotMeta};

/// The one page size of snapshots, working sets and artifacts (x86-64 base pages): the
/// guest ABI's.
pub const PAGE_SIZE: u64 = snapbpf_vmm::abi::PAGE_SIZE;
