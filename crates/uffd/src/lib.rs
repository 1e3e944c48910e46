//! userfaultfd for guest memory: the kernel ABI, Firecracker's handler handshake, the
//! runtime that serves faults, and a handler server.
//!
//! - [`abi`]: the descriptor ([`Uffd`]) and the hand-written kernel structures.
//! - [`handshake`]: handing the descriptor and the region list from a VMM to a handler.
//! - [`mod@serve`]: serving faults from a file, installing prefetched pages, stopping.
//! - [`server`]: a handler process's listening loop, one session per VMM; what a session
//!   installs is the caller's policy.
//!
//! Mechanism only: which pages to install before a VM runs (REAP's working set, Sabre's
//! decompressed partitions) is the restore strategy's choice.

pub mod abi;
pub mod handshake;
pub mod serve;
pub mod server;

pub use abi::{Uffd, UffdError};
pub use handshake::{
    acknowledge, check_regions, receive_from_vmm, say_hello, send_to_handler,
    GuestRegionUffdMapping, HandlerAck, HandlerHello, HandlerKind, HandlerReply,
};
pub use serve::{install, ms_since, serve, ServeStats, StopSignal};

/// Page size the handler serves: the guest's.
pub const PAGE: u64 = snapbpf_guest_abi::PAGE_SIZE;

/// The huge page size a VMM may announce for a region backed by hugetlbfs (Firecracker's
/// `huge_pages: "2M"`): such a region is filled, and its faults served, in whole 2 MiB
/// pages, since the kernel fills hugetlb memory only that way.
pub const HUGETLB_PAGE: u64 = 2 << 20;

/// For the crate's tests: a userfaultfd, or `None` after a loud message where the host
/// has none, and a failure under `CI=true`, where every capability must be there.
#[cfg(test)]
pub(crate) fn uffd_or_skip(features: u64) -> Option<Uffd> {
    match Uffd::with_features(features) {
        Ok(uffd) => Some(uffd),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("no userfaultfd (features {features:#x}) and CI=true: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: no userfaultfd (features {features:#x}) here: {e} !!!!!!!!\n"
            );
            None
        }
    }
}
