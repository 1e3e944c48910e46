//! snapbpf: fast cold starts of snapshot-restored microVM functions. The restore engine.
//!
//! The mechanisms live in their own crates: the VMM and its guest memory
//! (`snapbpf-vmm`), the snapshot store (`snapbpf-store`), working-set capture and
//! prefetch (`snapbpf-wss`) and userfaultfd (`snapbpf-uffd`). This crate holds the
//! policy over them and the runs:
//!
//! - [`snapshot`]: taking a snapshot of a function and opening it for this build.
//! - [`strategy`]: restore strategies (Linux demand paging with and without readahead,
//!   and the prefetching systems), each policy over shared mechanisms.
//! - [`run`] (the `snapbpf-run` crate): one VM over memory a strategy restored: the run
//!   primitive, its helper threads and its measurements.
//! - [`launch`]: N VMs at once in N worker processes, and the worker protocol.
//! - [`firecracker`]: snapshots, restores and record phases under an unmodified
//!   Firecracker, one process per VM.
//! - [`measure`]: bounds beside the runs (the device time of a strategy's prefetch).
//! - [`storage_profile`]: VMs on storage of another class (`--device sata`, a blkio throttle).
//! - [`store_memory`]: guest memory from the in-memory snapshot store.
//! - [`profile`]: each function's measured memory behaviour (`snapbpf profile`).
//! - [`pv`]: the host side of online filtering of fresh guest allocations.
//! - [`uffd_backend`]: guest memory served through userfaultfd, in process or by an
//!   external handler.

pub mod firecracker;
pub mod launch;
pub mod measure;
pub mod profile;
pub mod storage_profile;
pub use snapbpf_run as run;
pub mod pv;
pub mod snapshot;
pub mod store_memory;
pub mod strategy;
pub mod uffd_backend;

pub use snapbpf_os::error_chain;
