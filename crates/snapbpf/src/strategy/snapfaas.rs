//! `snapfaas`: SnapFaaS (its poster, `../shared/seeds/002_*`), restore by copy from an
//! in-memory snapshot store.
//!
//! SnapFaaS keeps snapshots in memory and restores a VM by copying the snapshot's memory
//! from there into the VM's memory before it runs. Here the store is `snapbpf store serve`
//! (`snapbpf_memstore`). The VM's guest memory is private anonymous memory, and the whole
//! snapshot is copied into it from the store's sealed memfd (one `pread` straight into
//! guest memory, no disk I/O) before the vCPU runs. The memfd's identity is checked against
//! the snapshot's first: a store holding another version of the snapshot is refused.
//! Each VM holds its own copy; the store's copy is shared and counted once.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::registry::{parse_as, OptionInfo, StrategyInfo, StrategyOptions, StrategySpec};
use super::{PrefetchReport, Restored, Strategy, StrategyError};
use crate::snapshot::Snapshot;
use snapbpf_vmm::GuestMemory;

/// Registry row of `snapfaas`.
pub static INFO: StrategyInfo = StrategyInfo {
    name: "snapfaas",
    description: "SnapFaaS: the snapshot's memory copied from an in-memory snapshot store (`snapbpf store serve`) into the VM before it runs",
    options: &[OptionInfo {
        name: "store",
        value: Some("SOCKET"),
        help: "the snapshot store's socket (required; `invoke --store SOCKET` sets it)",
    }],
    record: false,
    artifacts: &[],
    parse: |o| parse_as(o).map(StrategySpec::Snapfaas),
};

/// Options of `snapfaas`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapfaasOptions {
    /// The store's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<PathBuf>,
}

impl StrategyOptions for SnapfaasOptions {
    const INFO: &'static StrategyInfo = &INFO;
    fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        match (name, value) {
            ("store", Some(path)) if !path.is_empty() => self.store = Some(PathBuf::from(path)),
            ("store", _) => return Err("needs a socket path".into()),
            (other, _) => return Err(format!("unexpected option {other}")),
        }
        Ok(())
    }
    fn render(&self) -> Vec<String> {
        self.store
            .iter()
            .map(|p| format!("store={}", p.display()))
            .collect()
    }
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(Snapfaas {
            store: self.store.clone(),
        })
    }
}

/// Errors of the store strategies.
#[derive(Debug, thiserror::Error)]
pub enum StoreStrategyError {
    /// No store was named.
    #[error("strategy 'snapfaas' restores from an in-memory store: pass --store SOCKET (started with `snapbpf store serve --socket SOCKET`)")]
    NoStore,
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] snapbpf_memstore::ClientError),
}

/// SnapFaaS.
#[derive(Debug, Clone, Default)]
pub struct Snapfaas {
    /// The store's socket.
    pub store: Option<PathBuf>,
}

impl Strategy for Snapfaas {
    fn name(&self) -> &'static str {
        "snapfaas"
    }

    fn check(&self, _snapshot: &Snapshot) -> Result<(), StrategyError> {
        self.store
            .as_ref()
            .map(|_| ())
            .ok_or_else(|| StrategyError::from(StoreStrategyError::NoStore))
    }

    fn shared_memory_bytes(&self, snapshot: &Snapshot) -> u64 {
        self.store.as_ref().map_or(0, |socket| {
            snapbpf_memstore::held_bytes(socket, &snapshot.dir)
        })
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let socket = self.store.as_ref().ok_or(StoreStrategyError::NoStore)?;
        let started = Instant::now();
        let (memfd, held, _hit) =
            snapbpf_memstore::get(socket, &snapshot.dir, &snapshot.meta.memory)
                .map_err(StoreStrategyError::from)?;
        let memfd = File::from(memfd);
        let memory = GuestMemory::anonymous(snapshot.meta.mem_bytes)?;
        memory.fill_from(0, held.bytes.min(snapshot.meta.mem_bytes), &memfd, 0)?;
        Ok(Restored {
            prefetched: Some(PrefetchReport {
                bytes: held.bytes,
                ranges: 1,
                ms: started.elapsed().as_secs_f64() * 1e3,
                compression: None,
            }),
            ..Restored::plain(memory)
        })
    }
}
