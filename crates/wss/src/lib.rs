//! Working sets as file offsets (the SnapBPF paper, section 3.1): capture, format and
//! prefetch, on any file of any process.
//!
//! - [`capture`]: eBPF capture of the page-cache pages a process brings in from one file
//!   (owns the BPF program, `src/bpf/capture.bpf.c`, built by `build.rs` with clang).
//! - [`workingset`]: working sets as offset ranges in first-access order, and their file
//!   format (magic, version, CRC, bound to the file's identity).
//! - [`prefetch`]: reading ranges ahead into the page cache, and mapping them into guest
//!   memory from helper threads.
//! - [`readahead`]: opening a file with a chosen fault read-around window.

pub mod capture;
pub mod prefetch;
pub mod readahead;
pub mod workingset;
