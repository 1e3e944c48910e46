//! snapbpf: fast cold starts of snapshot-restored microVM functions.
//!
//! - [`snapshot`]: taking a snapshot of a function and opening it again, validated.
//! - [`strategy`]: restore strategies (Linux demand paging with and without readahead,
//!   and the prefetching systems), each policy over shared mechanisms.
//! - [`invoke`]: restoring VMs and running invocations, one or many at once, with the
//!   measurements the evaluation reports.
//! - [`capture`]: eBPF capture of the page-cache pages a process brings in from one file.
//! - [`workingset`]: working sets as offset ranges, and their file format.
//! - [`prefetch`]: reading working-set ranges ahead into the page cache.
//! - [`pv`]: the host side of online filtering of fresh guest allocations.
//! - [`uffd`]: userfaultfd page-fault handling and Firecracker's handler handshake.
//! - [`artifact`]: the versioned, checksummed container of strategy artifacts.
//! - [`fsutil`]: atomic writes, file identity, page-cache residency and eviction.

pub mod artifact;
pub mod capture;
pub mod fsutil;
pub mod invoke;
pub mod prefetch;
pub mod pv;
pub mod snapshot;
pub mod strategy;
pub mod uffd;
pub mod workingset;
