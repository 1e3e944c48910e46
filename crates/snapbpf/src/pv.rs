//! The host side of online filtering of fresh guest allocations (paper section 3.2).
//!
//! The guest runtime reports, in batched hypercalls, guest-physical ranges that were free
//! when the snapshot was taken and that it is about to hand out (`crates/guest/src/heap.rs`
//! explains when a page qualifies and why replacing it is safe). [`FreshAnonymizer`] backs
//! each reported range with anonymous zero memory by mapping it `MAP_FIXED` over the
//! snapshot mapping, before the guest touches it: the first touch is then a zero-page fault
//! with no snapshot I/O.
//!
//! # Mapping to the paper's mechanism
//! SnapBPF's guest kernel marks fresh allocations in its page-table entries by setting the
//! PFN's most significant bit; a patched KVM sees the nested fault on the mirrored PFN,
//! serves it with anonymous memory and maps it at both addresses. That needs a patched host
//! KVM, which we cannot have. Here the guest's allocator is the "marking" side and the
//! hypercall is the "detection" side: the same information (this page's snapshot contents
//! are dead) reaches the host at the same time (before the first touch), with no snapshot
//! scan, at the cost of one VM exit per batch instead of none.

use snapbpf_vmm::FreshRun;
use snapbpf_vmm::{ExitHandler, GuestMemory, MemoryError};

/// Backs fresh guest ranges with anonymous memory.
#[derive(Debug, Default)]
pub struct FreshAnonymizer {
    /// Bytes remapped so far.
    pub fresh_bytes: u64,
    /// Ranges remapped so far.
    pub ranges: u64,
    /// Back the whole 2 MiB blocks of each range with transparent huge pages.
    pub huge_pages: bool,
    /// Bytes advised huge so far.
    pub huge_bytes: u64,
}

impl FreshAnonymizer {
    /// An anonymizer that backs whole 2 MiB blocks of fresh ranges with huge pages (where
    /// transparent huge pages are on) when `huge_pages`, else 4 KiB pages.
    pub fn new(huge_pages: bool) -> Self {
        Self {
            huge_pages,
            ..Self::default()
        }
    }
}

impl ExitHandler for FreshAnonymizer {
    fn fresh_ranges(&mut self, mem: &GuestMemory, ranges: &[FreshRun]) -> Result<(), MemoryError> {
        for r in ranges {
            // Refuses ranges that are not whole pages inside guest memory.
            if self.huge_pages {
                self.huge_bytes += mem.map_anonymous_huge(r.offset, r.len)?;
            } else {
                mem.map_anonymous(r.offset, r.len)?;
            }
            self.fresh_bytes = self.fresh_bytes.saturating_add(r.len);
            self.ranges += 1;
        }
        Ok(())
    }
}
