//! Guest memory from the in-memory snapshot store (`snapbpf store serve`,
//! [`snapbpf_memstore`]): the mechanism the store strategies share. Which of these a
//! strategy uses, and what it copies, is its policy.
//!
//! The store hands out a sealed memfd that holds the snapshot's memory at its file
//! offsets, with the extents where it holds data. It holds the snapshot
//! [whole](Residency::Whole) (every other page is a zero page) or, when it was short of
//! memory, only its [working set](Residency::WorkingSet) (every other page must come from
//! the memory file). Both are served correctly here: a page is either the store's, or a
//! zero page the snapshot has, or read from the snapshot's own memory file.

use std::fs::File;
use std::path::{Path, PathBuf};

use snapbpf_memstore::{Backing, Extent, Residency, Served};
use snapbpf_vmm::GuestMemory;

use crate::snapshot::Snapshot;
use crate::strategy::StrategyError;
use snapbpf_wss::readahead::DEFAULT_WINDOW_KIB;

/// Errors of the store strategies.
#[derive(Debug, thiserror::Error)]
pub enum StoreStrategyError {
    /// No store was named.
    #[error("strategy '{0}' restores from an in-memory store here: pass --store SOCKET (started with `snapbpf store serve --socket SOCKET`)")]
    NoStore(&'static str),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] snapbpf_memstore::ClientError),
    /// A private mapping of hugetlbfs memory was asked for.
    #[error("the store at {0} backs snapshots with hugetlbfs pages, which VMs cannot map copy-on-write (each write would copy 2 MiB from the reserved pool and fail with SIGBUS once it runs out): use restore by copy (`snapfaas`), or a store with --huge-pages none or thp")]
    HugetlbPrivate(PathBuf),
}

/// A snapshot's memory as the store served it.
#[derive(Debug)]
pub struct FromStore {
    socket: PathBuf,
    memfd: File,
    served: Served,
}

/// Guest memory built from the store, and what was copied into it.
#[derive(Debug)]
pub struct StoreMemory {
    /// The guest memory.
    pub memory: GuestMemory,
    /// The readahead window set on the memory file's device, to restore (only when pages
    /// come from the memory file too).
    pub readahead_kib: Option<u64>,
    /// Bytes copied into private memory before the vCPU runs.
    pub copied: u64,
}

impl FromStore {
    /// Asks the store at `socket` for `snapshot`'s memory (checked to be that snapshot's).
    pub fn fetch(socket: &Path, snapshot: &Snapshot) -> Result<Self, StrategyError> {
        let served = snapbpf_memstore::get(socket, &snapshot.dir, &snapshot.meta.memory)
            .map_err(StoreStrategyError::from)?;
        Ok(Self {
            socket: socket.to_path_buf(),
            memfd: File::from(
                served
                    .memfd
                    .try_clone()
                    .map_err(StrategyError::io("duplicate the store's memfd"))?,
            ),
            served,
        })
    }

    /// How much of the snapshot the store holds.
    pub fn residency(&self) -> Residency {
        self.served.held.resident
    }

    /// Where the store's memfd holds data.
    pub fn extents(&self) -> &[Extent] {
        &self.served.extents
    }

    /// Guest memory mapped copy-on-write from the store: the memfd itself when the store
    /// holds the whole snapshot; otherwise the memory file, with the memfd's extents
    /// mapped over it, so only the rest is paged from disk, on demand. Reads share the
    /// store's pages with every VM; writes copy.
    pub fn map_private(&self, snapshot: &Snapshot) -> Result<StoreMemory, StrategyError> {
        if self.served.held.backing == Backing::Hugetlb {
            return Err(StoreStrategyError::HugetlbPrivate(self.socket.clone()).into());
        }
        let size = snapshot.meta.mem_bytes;
        match self.residency() {
            Residency::Whole => Ok(StoreMemory {
                memory: GuestMemory::map_file_private(&self.memfd, size)?,
                readahead_kib: None,
                copied: 0,
            }),
            Residency::WorkingSet => {
                let (file, readahead_kib) =
                    crate::strategy::interface::open_memory(snapshot, Some(DEFAULT_WINDOW_KIB))?;
                let memory = GuestMemory::map_file_private(&file, size)?;
                for e in self.extents() {
                    memory.map_file(e.offset(), e.len_bytes(), &self.memfd, e.offset())?;
                }
                Ok(StoreMemory {
                    memory,
                    readahead_kib,
                    copied: 0,
                })
            }
        }
    }

    /// Guest memory holding a private copy of everything the store holds, made before the
    /// vCPU runs (SnapFaaS). With the whole snapshot held, fresh anonymous memory gets the
    /// memfd's data extents (its zero pages stay untouched anonymous zero pages); with
    /// only the working set held, the rest is paged from the memory file on demand.
    pub fn copy_all(&self, snapshot: &Snapshot) -> Result<StoreMemory, StrategyError> {
        let copied = self.extents().iter().map(Extent::len_bytes).sum();
        match self.residency() {
            Residency::Whole => {
                let memory = GuestMemory::anonymous(snapshot.meta.mem_bytes)?;
                for e in self.extents() {
                    // Populating first allocates the pages without a fault exception
                    // each: on a nested host, a pread faulting them in costs ~10x more.
                    memory.populate_write(e.offset(), e.len_bytes())?;
                    memory.fill_from(e.offset(), e.len_bytes(), &self.memfd, e.offset())?;
                }
                Ok(StoreMemory {
                    memory,
                    readahead_kib: None,
                    copied,
                })
            }
            Residency::WorkingSet => {
                let mapped = self.map_private(snapshot)?;
                for e in self.extents() {
                    mapped.memory.populate_write(e.offset(), e.len_bytes())?;
                }
                Ok(StoreMemory { copied, ..mapped })
            }
        }
    }

    /// Guest memory mapped from the store ([`FromStore::map_private`]) with private copies
    /// of `ranges` (page runs) made before the vCPU runs; the rest is paged on demand.
    pub fn copy_ranges(
        &self,
        snapshot: &Snapshot,
        ranges: impl Iterator<Item = (u64, u64)>,
    ) -> Result<StoreMemory, StrategyError> {
        let mapped = self.map_private(snapshot)?;
        let mut copied = 0;
        for (page, pages) in ranges {
            let (gpa, len) = (
                page * snapbpf_store::PAGE_SIZE,
                pages * snapbpf_store::PAGE_SIZE,
            );
            mapped.memory.populate_write(gpa, len)?;
            copied += len;
        }
        Ok(StoreMemory { copied, ..mapped })
    }
}

/// The runs of pages (`(first page, pages)`) the in-memory store may trim the snapshot in
/// `dir` to when it is short of memory: SnapBPF's recorded working set, checked against the
/// memory file the store holds (`snapbpf store serve` hands this to the store).
pub fn trim_ranges(
    dir: &Path,
    memory: &snapbpf_store::FileIdentity,
) -> Result<Vec<(u64, u64)>, snapbpf_wss::workingset::ReadError> {
    let ws = snapbpf_wss::workingset::WorkingSet::read_for(
        &dir.join(snapbpf_wss::workingset::SNAPBPF_FILE),
        memory,
    )?;
    Ok(ws.ranges.iter().map(|r| (r.start, r.pages)).collect())
}
