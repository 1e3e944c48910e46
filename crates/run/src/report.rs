//! What a (possibly concurrent) invocation reports: the output of `snapbpf invoke --json`
//! and the raw samples of `snapbpf bench`.

use serde::{Deserialize, Serialize};

use crate::{PrefetchReport, RunReport};

/// System memory of a run, counted once for shared page cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    /// `page_cache_kib` + `store_kib` + `anon_kib`.
    pub total_kib: u64,
    /// Resident page cache of the snapshot's files.
    pub page_cache_kib: u64,
    /// Sum of the VM processes' private anonymous memory.
    pub anon_kib: u64,
    /// The in-memory snapshot store's copy of this snapshot, counted once however many VMs
    /// restored from it (0 without a store).
    #[serde(default)]
    pub store_kib: u64,
}

/// The output of `snapbpf invoke --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeReport {
    /// Function name.
    pub function: String,
    /// Strategy label.
    pub strategy: String,
    /// Input number.
    pub input: u32,
    /// Whether the snapshot's files were evicted before the run.
    pub cold: bool,
    /// Number of VMs.
    pub concurrency: u32,
    /// One entry per VM.
    pub runs: Vec<RunReport>,
    /// System memory with all VMs alive after their invocation.
    pub memory: MemoryReport,
    /// Prefetch summed over the VMs.
    pub prefetch: PrefetchReport,
}
