//! Restore strategies: how a snapshot's memory is brought back for a new VM.
//!
//! A strategy is policy over shared mechanisms (the VMM, page-cache helpers, capture and
//! prefetch engines). It decides how guest memory is backed, what runs beside the vCPU
//! (prefetchers, fault handlers) and what it records ahead of time. Adding a strategy is
//! adding a module here and registering it in [`registry`]; nothing else names it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::run::{Helpers, PrefetchReport, Restored};
use crate::snapshot::Snapshot;

pub mod faasnap;
pub mod linux;
pub mod reap;
pub mod registry;
pub mod sabre;
pub mod snapbpf;
pub mod snapfaas;

pub use registry::{SpecError, StrategySpec, REGISTRY};

/// Errors of a strategy.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    /// The strategy has nothing to record.
    #[error("strategy '{0}' has no record phase: it restores without artifacts")]
    NothingToRecord(String),
    /// A required artifact is missing.
    #[error("strategy '{strategy}' needs {path}, which does not exist: run `snapbpf record <DIR> --strategy {strategy}` first")]
    MissingArtifact {
        /// Strategy name.
        strategy: String,
        /// Missing file.
        path: PathBuf,
    },
    /// An artifact is stale, corrupt or foreign.
    #[error("{path} cannot be used: {reason}")]
    BadArtifact {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A data file is not the content its metadata was recorded with.
    #[error(
        "a recorded data file is damaged or from another recording (run `snapbpf record` again)"
    )]
    Data(#[source] Box<snapbpf_store::verify::VerifyError>),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] snapbpf_vmm::MemoryError),
    /// The eBPF capture could not start.
    #[error("working-set capture")]
    CaptureStart(#[from] snapbpf_wss::capture::CaptureStartError),
    /// The eBPF capture failed when stopped.
    #[error("working-set capture")]
    CaptureStop(#[from] snapbpf_wss::capture::CaptureStopError),
    /// The capture lost events: the working set would be incomplete.
    #[error("working-set capture: the ring buffer overflowed: {lost} page events were lost, the working set would be incomplete")]
    CaptureLost {
        /// Events lost.
        lost: u64,
    },
    /// A working set cannot be read.
    #[error(transparent)]
    WorkingSet(#[from] snapbpf_wss::workingset::ReadError),
    /// Working sets could not be merged.
    #[error("merging the working sets")]
    Merge(#[from] snapbpf_wss::workingset::MergeError),
    /// A working set could not be written.
    #[error(transparent)]
    WriteWorkingSet(#[from] snapbpf_wss::workingset::WriteError),
    /// An artifact container could not be read or written.
    #[error(transparent)]
    Artifact(#[from] snapbpf_store::artifact::ArtifactError),
    /// The snapshot could not be made cold.
    #[error(transparent)]
    Evict(#[from] snapbpf_store::fsutil::EvictError),
    /// The recorded invocation failed.
    #[error("recorded invocation failed")]
    Record(#[source] Box<crate::run::RunError>),
    /// A userfaultfd operation or handler handshake failed.
    #[error(transparent)]
    Uffd(#[from] snapbpf_uffd::UffdError),
    /// Sabre's compressed working set does not decode.
    #[error("Sabre's compressed working set")]
    Pipeline(#[source] Box<sabre::PipelineError>),
    /// The in-memory snapshot store failed or refused.
    #[error(transparent)]
    Store(#[from] crate::store_memory::StoreStrategyError),
    /// Userfaultfd-backed guest memory could not be set up or served.
    #[error(transparent)]
    Backend(#[from] crate::uffd_backend::BackendError),
    /// The snapshot directory is locked by another snapbpf.
    #[error(transparent)]
    Lock(#[from] snapbpf_os::lock::LockError),
    /// Any other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl StrategyError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// What `record` produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordReport {
    /// Artifact files written, with their sizes in bytes.
    pub artifacts: Vec<(PathBuf, u64)>,
    /// Wall time of the recording, ms.
    pub ms: f64,
    /// Pages in the recorded working set.
    pub pages: u64,
    /// CPU time the capture itself cost, ms: its BPF programs' run time plus the thread
    /// that drained their events (SnapBPF's record; `None` for strategies without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_cpu_ms: Option<f64>,
}

/// A restore strategy.
pub trait Strategy: Send + Sync {
    /// Name, as on the command line.
    fn name(&self) -> &'static str;

    /// Files that must be out of the page cache for a cold start.
    fn cold_files(&self, snapshot: &Snapshot) -> Vec<PathBuf> {
        vec![snapshot.memory_path()]
    }

    /// Checks before any VM starts that the strategy's artifacts exist and belong to
    /// `snapshot`; a stale or corrupt artifact is refused here.
    fn check(&self, _snapshot: &Snapshot) -> Result<(), StrategyError> {
        Ok(())
    }

    /// One line on what this strategy recorded in `snapshot`, once its artifacts pass
    /// the checks of [`Strategy::check`]. `snapbpf inspect` calls it where one of the
    /// strategy's artifacts is present.
    fn describe_recording(&self, snapshot: &Snapshot) -> Result<String, StrategyError> {
        self.check(snapshot)
            .map(|()| "recorded, bound to this snapshot".into())
    }

    /// Re-reads every artifact this strategy recorded beside `snapshot` and checks it
    /// against the content its metadata names, whatever a verification cache says
    /// (`snapbpf verify`). Strategies whose artifacts carry their own checksum, checked on
    /// every read, need not override it.
    fn verify_recording(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        self.check(snapshot)
    }

    /// The ranges of the snapshot's memory file this strategy prefetches, for measuring
    /// how long the device takes to deliver them (`None`: it prefetches nothing from
    /// the memory file itself).
    fn prefetched_ranges(
        &self,
        _snapshot: &Snapshot,
    ) -> Option<Result<Vec<snapbpf_wss::workingset::PageRange>, StrategyError>> {
        None
    }

    /// Bytes of `snapshot` held in memory outside the page cache and shared by every VM
    /// (an in-memory snapshot store's copy), for the run's memory report; counted once.
    fn shared_memory_bytes(&self, _snapshot: &Snapshot) -> u64 {
        0
    }

    /// Builds guest memory for one VM restored from `snapshot`.
    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError>;

    /// Runs one recorded invocation with `input` and writes the strategy's artifacts.
    /// Callers go through [`record`], which locks the snapshot directory.
    fn record(
        &self,
        _snapshot: &Snapshot,
        _input: u32,
        _timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        Err(StrategyError::NothingToRecord(self.name().into()))
    }
}

/// Records `strategy`'s artifacts for `snapshot` holding the directory's exclusive lock:
/// a second `record`, or VMs restoring from the directory meanwhile, would interleave with
/// the artifacts being written. Every front-end records through this.
pub fn record(
    strategy: &dyn Strategy,
    snapshot: &Snapshot,
    input: u32,
    timeout: Duration,
) -> Result<RecordReport, StrategyError> {
    let _lock = snapbpf_os::lock::lock_dir(&snapshot.dir, snapbpf_os::lock::LockMode::Exclusive)?;
    strategy.record(snapshot, input, timeout)
}

/// A strategy's metadata artifact, read and checked by [`read_recorded`].
pub(crate) struct Recorded<H> {
    /// The artifact's header.
    pub header: H,
    /// The artifact's payload.
    pub payload: Vec<u8>,
    /// The artifact file.
    pub path: PathBuf,
    /// The data file recorded beside it.
    pub data_path: PathBuf,
}

/// The refusal of an artifact file, with the reason.
pub(crate) fn bad_artifact(path: &Path, reason: String) -> StrategyError {
    StrategyError::BadArtifact {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads the metadata artifact `meta_file` of `strategy` (kind `kind`) for `snapshot`.
/// Both it and its data file `data_file` must exist, the artifact must be whole
/// (magic, version, checksum), and `memory_of(header)` must be the identity of this
/// snapshot's memory file: an artifact recorded from another snapshot is stale.
pub(crate) fn read_recorded<H: serde::de::DeserializeOwned>(
    snapshot: &Snapshot,
    strategy: &str,
    meta_file: &str,
    data_file: &str,
    kind: &str,
    memory_of: impl Fn(&H) -> &snapbpf_store::FileIdentity,
) -> Result<Recorded<H>, StrategyError> {
    let path = snapshot.artifact_path(meta_file);
    let data_path = snapshot.artifact_path(data_file);
    for p in [&path, &data_path] {
        if !p.exists() {
            return Err(StrategyError::MissingArtifact {
                strategy: strategy.into(),
                path: p.clone(),
            });
        }
    }
    let (header, payload): (H, Vec<u8>) = snapbpf_store::artifact::read(&path, kind)?;
    if memory_of(&header) != &snapshot.meta.memory {
        return Err(bad_artifact(
            &path,
            "it was recorded for another version of the snapshot's memory file (stale: run `snapbpf record` again)".into(),
        ));
    }
    Ok(Recorded {
        header,
        payload,
        path,
        data_path,
    })
}

/// Checks that the data file of a recording at `path` is the content its metadata names
/// (`expected`; `None` in metadata written before data files were bound by content).
/// With `now`, the file is hashed whatever the verification cache says.
pub(crate) fn check_data(
    path: &Path,
    expected: Option<&snapbpf_store::FileIdentity>,
    now: bool,
) -> Result<(), StrategyError> {
    let Some(expected) = expected else {
        return Err(bad_artifact(
            path,
            "its metadata was written by an older snapbpf and names no content checksum (run `snapbpf record` again)".into(),
        ));
    };
    let checked = if now {
        snapbpf_store::verify::check_now(path, expected)
    } else {
        snapbpf_store::verify::check(path, expected)
    };
    checked.map_err(|e| StrategyError::Data(Box::new(e)))
}

/// Runs the invocation of a `record` phase over `restored`. The strategy's recorder (a
/// fault log, a residency scan) runs beside it and is collected by the caller once this
/// returns.
pub(crate) fn run_recorded(
    snapshot: &Snapshot,
    restored: Restored,
    input: u32,
    timeout: Duration,
) -> Result<(), StrategyError> {
    crate::run::run_restored(
        snapshot,
        restored,
        &crate::run::RunOptions { input, timeout },
        Instant::now(),
        crate::run::major_faults(),
    )
    .map(|_| ())
    .map_err(|e| StrategyError::Record(Box::new(e)))
}
