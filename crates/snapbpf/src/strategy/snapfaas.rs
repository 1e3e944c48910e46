//! `snapfaas`: SnapFaaS (its poster, `../shared/seeds/002_*`), restore by copy from an
//! in-memory snapshot store.
//!
//! SnapFaaS keeps snapshots in memory and restores a VM by copying the snapshot's memory
//! from there into the VM's memory before it runs. Here the store is `snapbpf store serve`
//! (`snapbpf_memstore`), which holds each snapshot's data pages in a sealed memfd; the
//! memfd's identity is checked against the snapshot's first, so a store holding another
//! version of the snapshot is refused. Each VM holds its own copy; the store's copy is
//! shared and counted once.
//!
//! - `copy=all` (the default, and the poster's design: "SnapFaaS currently restores memory
//!   through memory copying" of the snapshot's dirty memory): every data page the store
//!   holds is copied into the VM's private anonymous memory (`pread` straight into guest
//!   memory) before the vCPU runs; the snapshot's zero pages stay untouched zero pages.
//! - `copy=ws` (the poster's further work, "on-demand restoration"): only SnapBPF's
//!   recorded working set is copied before the vCPU runs; guest memory maps the store's
//!   memfd copy-on-write, so the rest is paged from the store's memory on demand.
//!
//! Where the store, short of memory, holds only a snapshot's working set, what it does not
//! hold is paged from the snapshot's memory file on demand.

use std::path::PathBuf;
use std::time::Instant;

use super::interface::{self, PrefetchReport, Restored, Strategy, StrategyError};
use super::spec::{OptionInfo, OptionRole, StrategyInfo, StrategyOptions};
use crate::snapshot::Snapshot;
use crate::store_memory::{FromStore, StoreStrategyError};

/// Registry row of `snapfaas`.
pub(super) static INFO: StrategyInfo = StrategyInfo::new::<SnapfaasOptions>(
    "snapfaas",
    "SnapFaaS: the snapshot's memory copied from an in-memory snapshot store (`snapbpf store serve`) into the VM before it runs",
)
.options(&[
    OptionInfo::valued("store", "SOCKET", "the snapshot store's socket (required)")
        .role(OptionRole::StoreSocket)
        .required(),
    OptionInfo::valued(
        "copy",
        "all|ws",
        "copy every data page before the vCPU runs (all, SnapFaaS's poster), or only SnapBPF's recorded working set and page the rest from the store on demand (ws; needs `snapbpf record DIR --strategy snapbpf`)",
    ),
])
// copy=ws reads SnapBPF's recorded working set.
.reads(&[snapbpf_wss::workingset::SNAPBPF_FILE]);

/// What a restore copies before the vCPU runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Copy {
    /// Every data page the store holds.
    #[default]
    All,
    /// SnapBPF's recorded working set; the rest on demand.
    Ws,
}

/// Options of `snapfaas`.
#[derive(Debug, Clone, Default)]
pub(super) struct SnapfaasOptions {
    /// The store's socket.
    store: Option<PathBuf>,
    /// What is copied before the vCPU runs.
    copy: Copy,
}

impl StrategyOptions for SnapfaasOptions {
    const INFO: &'static StrategyInfo = &INFO;
    fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        match (name, value) {
            ("store", Some(path)) if !path.is_empty() => self.store = Some(PathBuf::from(path)),
            ("store", _) => return Err("needs a socket path".into()),
            ("copy", Some("all")) => self.copy = Copy::All,
            ("copy", Some("ws")) => self.copy = Copy::Ws,
            ("copy", _) => return Err("is all or ws".into()),
            (other, _) => return Err(format!("unexpected option {other}")),
        }
        Ok(())
    }
    fn render(&self) -> Vec<String> {
        self.store
            .iter()
            .map(|p| format!("store={}", p.display()))
            .chain((self.copy == Copy::Ws).then(|| "copy=ws".to_string()))
            .collect()
    }
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(Snapfaas {
            store: self.store.clone(),
            copy: self.copy,
        })
    }
}

/// SnapFaaS.
#[derive(Debug, Clone, Default)]
struct Snapfaas {
    /// The store's socket.
    store: Option<PathBuf>,
    /// What a restore copies before the vCPU runs.
    copy: Copy,
}

impl Strategy for Snapfaas {
    fn check(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        if self.store.is_none() {
            return Err(StoreStrategyError::NoStore(INFO.name).into());
        }
        if self.copy == Copy::Ws {
            interface::recorded_working_set(snapshot)?;
        }
        Ok(())
    }

    fn shared_memory_bytes(&self, snapshot: &Snapshot) -> u64 {
        self.store.as_ref().map_or(0, |socket| {
            snapbpf_memstore::held_bytes(socket, &snapshot.meta.memory)
        })
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let socket = self
            .store
            .as_ref()
            .ok_or(StoreStrategyError::NoStore(INFO.name))?;
        let started = Instant::now();
        let from = FromStore::fetch(socket, snapshot)?;
        let (built, ranges) = match self.copy {
            Copy::All => (from.copy_all(snapshot)?, from.extents().len()),
            Copy::Ws => {
                let ws = interface::recorded_working_set(snapshot)?;
                let ranges = ws.ranges.iter().map(|r| (r.start, r.pages));
                (from.copy_ranges(snapshot, ranges)?, ws.ranges.len())
            }
        };
        Ok(Restored {
            prefetched: Some(PrefetchReport {
                bytes: built.copied,
                ranges: ranges as u64,
                ms: started.elapsed().as_secs_f64() * 1e3,
                ..PrefetchReport::default()
            }),
            readahead_kib: built.readahead_kib,
            ..Restored::plain(built.memory)
        })
    }
}
