//! Restore strategies: how a snapshot's memory is brought back for a new VM.
//!
//! A strategy is policy over shared mechanisms (the VMM, page-cache helpers, capture and
//! prefetch engines). It decides how guest memory is backed, what runs beside the vCPU
//! (prefetchers, fault handlers) and what it records ahead of time. Adding a strategy is
//! adding a module here and registering it in [`registry`]; nothing else names it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapbpf_vmm::{ExitHandler, GuestMemory};

use crate::snapshot::Snapshot;

pub mod faasnap;
pub mod linux;
pub mod reap;
pub mod registry;
pub mod snapbpf;

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
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] snapbpf_vmm::MemoryError),
    /// The eBPF capture failed or was incomplete.
    #[error("working-set capture: {0}")]
    Capture(String),
    /// The recorded invocation failed.
    #[error("recorded invocation failed: {0}")]
    Record(Box<crate::invoke::RunOneError>),
    /// A userfaultfd operation or handler handshake failed.
    #[error(transparent)]
    Uffd(#[from] crate::uffd::UffdError),
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

/// Prefetch activity of one restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefetchReport {
    /// Bytes requested.
    pub bytes: u64,
    /// Contiguous ranges requested.
    pub ranges: u64,
    /// Wall time of the prefetch, ms.
    pub ms: f64,
}

/// What a strategy reports about one restore after the invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Prefetch done for this VM, if any.
    pub prefetch: Option<PrefetchReport>,
    /// Readahead window of the memory file, KiB, when the strategy sets one.
    pub readahead_kib: Option<u64>,
}

/// Guest memory built for one VM, with what runs beside it.
pub struct Restored {
    /// Guest memory to give the VM.
    pub memory: GuestMemory,
    /// Handles the guest's hypercalls for this strategy.
    pub handler: Box<dyn ExitHandler + Send>,
    /// Ask the guest for fresh-allocation hints (PV filtering); `handler` acts on them.
    pub pv_hints: bool,
    /// Collects the strategy's report once the invocation is over (joins helper threads).
    pub finish: Box<dyn FnOnce() -> RestoreReport + Send>,
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored")
            .field("memory", &self.memory)
            .finish_non_exhaustive()
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

    /// The ranges of the snapshot's memory file this strategy prefetches, for measuring
    /// how long the device takes to deliver them (`None`: it prefetches nothing from
    /// the memory file itself).
    fn prefetched_ranges(
        &self,
        _snapshot: &Snapshot,
    ) -> Option<Result<Vec<crate::workingset::PageRange>, StrategyError>> {
        None
    }

    /// Builds guest memory for one VM restored from `snapshot`.
    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError>;

    /// Runs one recorded invocation with `input` and writes the strategy's artifacts.
    fn record(
        &self,
        _snapshot: &Snapshot,
        _input: u32,
        _timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        Err(StrategyError::NothingToRecord(self.name().into()))
    }
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
    memory_of: impl Fn(&H) -> &crate::fsutil::FileIdentity,
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
    let (header, payload): (H, Vec<u8>) =
        crate::artifact::read(&path, kind).map_err(|e| match e {
            crate::artifact::ArtifactError::Corrupt { reason, .. } => bad_artifact(&path, reason),
            crate::artifact::ArtifactError::Io { source, .. } => {
                bad_artifact(&path, source.to_string())
            }
        })?;
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

/// Checks that the data file of a recording holds the `expected` bytes its metadata
/// (`what`) describes.
pub(crate) fn check_data_len(path: &Path, expected: u64, what: &str) -> Result<(), StrategyError> {
    let len = std::fs::metadata(path)
        .map_err(|e| bad_artifact(path, e.to_string()))?
        .len();
    if len != expected {
        return Err(bad_artifact(
            path,
            format!(
                "{len} bytes, the {what} expects {expected} (truncated or from another recording)"
            ),
        ));
    }
    Ok(())
}

/// Runs the invocation of a `record` phase over `memory` and returns what `collect`
/// gathers once the vCPU has stopped (a fault log, a residency scan).
///
/// The shared tail of every strategy's record phase: the memory, exit handler and
/// collector differ, the run and its error handling do not.
pub(crate) fn run_recorded<T: Send + 'static>(
    snapshot: &Snapshot,
    memory: GuestMemory,
    handler: Box<dyn ExitHandler + Send>,
    pv_hints: bool,
    opts: &crate::invoke::RunOptions,
    collect: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StrategyError> {
    let slot: Arc<Mutex<Option<T>>> = Arc::default();
    let sink = slot.clone();
    let restored = Restored {
        memory,
        handler,
        pv_hints,
        finish: Box::new(move || {
            let collected = collect();
            if let Ok(mut s) = sink.lock() {
                *s = Some(collected);
            }
            RestoreReport::default()
        }),
    };
    crate::invoke::run_restored(
        snapshot,
        restored,
        opts,
        Instant::now(),
        crate::invoke::major_faults(),
    )
    .map_err(|e| StrategyError::Record(Box::new(e)))?;
    let collected = slot.lock().ok().and_then(|mut s| s.take());
    collected.ok_or_else(|| {
        StrategyError::io("record")(std::io::Error::other("the recorder reported nothing"))
    })
}
