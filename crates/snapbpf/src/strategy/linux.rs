//! `linux-nora` and `linux-ra`: plain demand paging from a `MAP_PRIVATE` mapping of the
//! snapshot's memory file, as vanilla Firecracker restores, with the kernel's fault
//! readahead off (`MADV_RANDOM`) or on with the paper's 128 KiB window.
//!
//! `linux-ra` opens the memory file with the window ([`snapbpf_wss::readahead`]: the
//! window is the open file's, set through the device's `read_ahead_kb`); files without a
//! block device (tmpfs) have no readahead, and the window is then reported as absent.

use snapbpf_vmm::{FaultReadahead, GuestMemory};
use snapbpf_wss::readahead::DEFAULT_WINDOW_KIB;

use super::interface::{ExternalBacking, ExternalPlan, Helpers, Restored, Strategy, StrategyError};
use super::spec::{StrategyInfo, StrategyOptions, Vmm, THP};
use crate::snapshot::Snapshot;

/// Registry row of `linux-nora`.
pub(super) static NORA_INFO: StrategyInfo = StrategyInfo::new::<NoraOptions>(
    "linux-nora",
    "demand paging from a MAP_PRIVATE mapping of the snapshot, readahead off",
)
.vmms(&[Vmm::Builtin, Vmm::Firecracker]);

/// Registry row of `linux-ra`.
pub(super) static RA_INFO: StrategyInfo = StrategyInfo::new::<ReadaheadOptions>(
    "linux-ra",
    "demand paging with the kernel's 128 KiB fault read-around (the paper's baseline)",
)
.options(&[THP])
.vmms(&[Vmm::Builtin, Vmm::Firecracker]);

/// Options of `linux-nora`: none.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NoraOptions {}

impl StrategyOptions for NoraOptions {
    const INFO: &'static StrategyInfo = &NORA_INFO;
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(LinuxPaging::no_readahead())
    }
}

/// Options of `linux-ra`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ReadaheadOptions {
    /// Back guest memory with huge page-cache folios.
    thp: bool,
}

impl StrategyOptions for ReadaheadOptions {
    const INFO: &'static StrategyInfo = &RA_INFO;
    fn set(&mut self, name: &str, _: Option<&str>) -> Result<(), String> {
        match name {
            "thp" => self.thp = true,
            other => return Err(format!("unexpected option {other}")),
        }
        Ok(())
    }
    fn render(&self) -> Vec<String> {
        if self.thp {
            vec!["thp".into()]
        } else {
            Vec::new()
        }
    }
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(LinuxPaging::readahead().with_huge_pages(self.thp))
    }
}

/// Demand paging from the page cache.
#[derive(Debug, Clone, Copy)]
struct LinuxPaging {
    readahead_kib: Option<u64>,
    huge_pages: bool,
}

impl LinuxPaging {
    /// Linux-NoRA: every fault reads one page.
    fn no_readahead() -> Self {
        Self {
            readahead_kib: None,
            huge_pages: false,
        }
    }

    /// Linux-RA with the paper's 128 KiB window.
    fn readahead() -> Self {
        Self {
            readahead_kib: Some(DEFAULT_WINDOW_KIB),
            huge_pages: false,
        }
    }

    /// Backs guest memory with huge page-cache folios (see
    /// [`GuestMemory::use_huge_pages`]): faults then read and map whole 2 MiB folios.
    fn with_huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
    }
}

impl Strategy for LinuxPaging {
    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let (file, window) = super::interface::open_memory(snapshot, self.readahead_kib)?;
        let memory = GuestMemory::map_file_private(&file, snapshot.meta.mem_bytes)?;
        memory.set_fault_readahead(if self.readahead_kib.is_some() {
            FaultReadahead::On
        } else {
            FaultReadahead::Off
        })?;
        if self.huge_pages {
            memory.use_huge_pages()?;
        }
        Ok(Restored {
            readahead_kib: window,
            ..Restored::plain(memory)
        })
    }

    fn check_vmm_options(&self, vmm: Vmm) -> Result<(), StrategyError> {
        if self.huge_pages && vmm != Vmm::Builtin {
            return Err(StrategyError::NeedsBuiltinVmm {
                option: "thp",
                why: "huge pages are advised on the VMM's own mapping of guest memory",
            });
        }
        Ok(())
    }

    fn external(&self, _snapshot: &Snapshot) -> Result<ExternalPlan, StrategyError> {
        self.check_vmm_options(Vmm::Firecracker)?;
        // Firecracker maps the file itself: its window is the device's while it opens it
        // (0 turns read-around off, as MADV_RANDOM does on our own mapping).
        Ok(ExternalPlan {
            backing: ExternalBacking::File {
                readahead_kib: self.readahead_kib.unwrap_or(0),
            },
            helpers: Helpers::none(),
        })
    }
}
