//! What a strategy is to the engine: the [`Strategy`] trait, its errors, its record
//! report, and the helpers every strategy's artifacts go through (read, bind, check).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::run::{Helpers, PrefetchReport, Restored};
use crate::snapshot::Snapshot;

use super::spec::{StrategySpec, Vmm};

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
    /// The working set the eBPF capture records is missing.
    #[error("{path} does not exist: run `snapbpf record <DIR> --strategy snapbpf` first (the eBPF capture of the working set)")]
    MissingWorkingSet {
        /// The file.
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
    /// The memory file opened for the restore is not the one whose content was checked.
    #[error(transparent)]
    MemoryFile(Box<crate::snapshot::OpenError>),
    /// A working set cannot be read.
    #[error(transparent)]
    WorkingSet(#[from] snapbpf_wss::workingset::ReadError),
    /// An artifact container could not be read or written.
    #[error(transparent)]
    Artifact(#[from] snapbpf_store::artifact::ArtifactError),
    /// The snapshot could not be made cold.
    #[error(transparent)]
    Evict(#[from] snapbpf_store::fsutil::EvictError),
    /// The recorded invocation failed.
    #[error("recorded invocation failed")]
    Record(#[source] Box<crate::run::RunError>),
    /// The recorded invocation under another VMM (Firecracker) failed.
    #[error("recorded invocation failed")]
    RecordElsewhere(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A userfaultfd operation or handler handshake failed.
    #[error(transparent)]
    Uffd(#[from] snapbpf_uffd::UffdError),
    /// The in-memory snapshot store failed or refused.
    #[error(transparent)]
    Store(#[from] crate::store_memory::StoreStrategyError),
    /// A file could not be opened with its readahead window.
    #[error(transparent)]
    Readahead(#[from] snapbpf_wss::readahead::ReadaheadError),
    /// Userfaultfd-backed guest memory could not be set up or served.
    #[error(transparent)]
    Backend(#[from] crate::uffd_backend::BackendError),
    /// The snapshot directory is locked by another snapbpf.
    #[error(transparent)]
    Lock(#[from] snapbpf_os::lock::LockError),
    /// The strategy does not run under the snapshot's VMM (its row says which it does).
    #[error("strategy '{strategy}' does not run under the {vmm} VMM (it runs under: {supported})")]
    UnsupportedVmm {
        /// The strategy.
        strategy: &'static str,
        /// The snapshot's VMM.
        vmm: &'static str,
        /// The VMMs it runs under.
        supported: String,
    },
    /// An option of the strategy needs the VMM to map memory in this process.
    #[error("strategy option '{option}' needs snapbpf's own VMM ({why})")]
    NeedsBuiltinVmm {
        /// The option.
        option: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A row lists a VMM whose plan the strategy does not give (a bug in the strategy).
    #[error("the strategy lists a VMM it has no plan for")]
    NoExternalPlan,
    /// A strategy's own failure: its module's typed error, kept whole as the source.
    #[error("{strategy}")]
    Own {
        /// The strategy.
        strategy: &'static str,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// The failure `source` of `strategy`, in that strategy's own error type.
    pub fn own(
        strategy: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Own {
            strategy,
            source: Box::new(source),
        }
    }

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

    /// What a page-fault handler serving this strategy's VMs installs before each runs
    /// (REAP's recorded working set), for `snapbpf uffd-handler` and for VMMs whose memory
    /// an external handler fills (Firecracker's Uffd backend); `None` where the strategy
    /// has no such policy, and every fault is served on demand.
    fn handler_prefetch(
        &self,
        _snapshot: &Snapshot,
    ) -> Result<Option<std::sync::Arc<snapbpf_uffd::server::Prefetch>>, StrategyError> {
        Ok(None)
    }

    /// Builds guest memory for one VM restored from `snapshot` by snapbpf's own VMM, in
    /// this process.
    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError>;

    /// Refuses options this strategy cannot honour under `vmm` (one that needs the VMM to
    /// map guest memory in this process, under a VMM that maps it in its own).
    fn check_vmm_options(&self, _vmm: Vmm) -> Result<(), StrategyError> {
        Ok(())
    }

    /// How a VMM that maps guest memory itself, in a process of its own (Firecracker),
    /// backs it for one VM restored from `snapshot`, and what runs beside it here. Only
    /// called for VMMs the strategy's row lists.
    fn external(&self, _snapshot: &Snapshot) -> Result<ExternalPlan, StrategyError> {
        Err(StrategyError::NoExternalPlan)
    }

    /// [`Strategy::record`] under such a VMM: `recorder` runs the recorded invocation with
    /// memory backed as the strategy asks, and the strategy captures around it.
    fn record_external(
        &self,
        _snapshot: &Snapshot,
        _input: u32,
        _recorder: &dyn ExternalRecorder,
    ) -> Result<RecordReport, StrategyError> {
        Err(StrategyError::NoExternalPlan)
    }

    /// Runs one recorded invocation with `input` and writes the strategy's artifacts.
    /// Callers go through [`record`], which locks the snapshot directory; strategies whose
    /// row records nothing keep the default.
    fn record(
        &self,
        _snapshot: &Snapshot,
        _input: u32,
        _timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        Err(StrategyError::NothingToRecord("this strategy".into()))
    }
}

/// How a VMM that maps guest memory in its own process backs it for a strategy.
pub enum ExternalBacking {
    /// The memory file, mapped privately by the VMM (Firecracker's File backend), opened
    /// while its device's read-around window is `readahead_kib` (0: off), since a file's
    /// window is fixed when it is opened.
    File {
        /// The read-around window, KiB.
        readahead_kib: u64,
    },
    /// Anonymous memory whose missing pages the VMM hands to a userfaultfd handler in the
    /// restoring process (Firecracker's Uffd backend): `install` runs first, before the
    /// vCPU; every other fault is served from the memory file on demand.
    Userfault {
        /// What the handler installs first.
        install: Option<std::sync::Arc<snapbpf_uffd::server::Prefetch>>,
    },
    /// Anonymous memory whose userfaultfd the VMM hands to the handler process listening
    /// on `socket` (`snapbpf uffd-handler`, or Firecracker's own handlers).
    Handler {
        /// The handler's socket.
        socket: std::path::PathBuf,
    },
}

impl std::fmt::Debug for ExternalBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { readahead_kib } => write!(f, "File {{ readahead_kib: {readahead_kib} }}"),
            Self::Userfault { install } => {
                write!(f, "Userfault {{ install: {} }}", install.is_some())
            }
            Self::Handler { socket } => write!(f, "Handler {{ socket: {} }}", socket.display()),
        }
    }
}

/// One VM's memory under an external VMM: the backing, and what runs beside the VMM in
/// the restoring process.
#[derive(Debug)]
pub struct ExternalPlan {
    /// How the VMM backs guest memory.
    pub backing: ExternalBacking,
    /// Threads started before the VMM loads the snapshot (a prefetcher), stopped and
    /// joined once the invocation is over, as beside snapbpf's VMM.
    pub helpers: Helpers,
}

/// How a record phase under an external VMM backs guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordBacking {
    /// The memory file mapped privately with read-around off: exactly the pages the guest
    /// touches are read (what an eBPF capture of the page cache sees).
    File,
    /// Userfaultfd: every fault served on demand from the memory file, and logged.
    Userfault,
}

/// Runs one recorded invocation of a snapshot under an external VMM.
pub trait ExternalRecorder {
    /// Runs it with memory backed as `backing`; for [`RecordBacking::Userfault`], returns
    /// the file offsets of the pages faulted, in fault order (empty otherwise).
    fn run(&self, backing: RecordBacking) -> Result<Vec<u64>, StrategyError>;
}

/// Records the artifacts of `spec`'s strategy for `snapshot` under the VMM the snapshot
/// was taken with, holding the directory's exclusive lock: a second `record`, or VMs
/// restoring from the directory meanwhile, would interleave with the artifacts being
/// written. Every front-end records through this.
pub fn record(
    spec: &StrategySpec,
    snapshot: &Snapshot,
    input: u32,
    timeout: Duration,
) -> Result<RecordReport, StrategyError> {
    if !spec.info().record {
        return Err(StrategyError::NothingToRecord(spec.name().into()));
    }
    check_vmm(spec, snapshot.vmm())?;
    let _lock = snapbpf_os::lock::lock_dir(&snapshot.dir, snapbpf_os::lock::LockMode::Exclusive)?;
    let strategy = spec.build();
    match snapshot.vmm() {
        Vmm::Builtin => strategy.record(snapshot, input, timeout),
        Vmm::Firecracker => {
            let recorder = crate::firecracker::Recorder::new(snapshot, input, timeout);
            strategy.record_external(snapshot, input, &recorder)
        }
    }
}

/// Refuses `spec` for a snapshot of `vmm` unless its row lists that VMM and its options
/// can be honoured there.
pub fn check_vmm(spec: &StrategySpec, vmm: Vmm) -> Result<(), StrategyError> {
    let info = spec.info();
    if info.supports(vmm) {
        return spec.build().check_vmm_options(vmm);
    }
    Err(StrategyError::UnsupportedVmm {
        strategy: info.name,
        vmm: vmm.name(),
        supported: info
            .vmms
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(", "),
    })
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

/// A strategy's artifact loader as a fuzzer drives it: artifacts its record phase could
/// have written, to mutate, and the loader's own checks on one artifact's bytes (the
/// container, the binding, every size and offset), as if read beside a snapshot whose
/// memory is [`FUZZ_MEMORY_BYTES`] zero bytes.
#[derive(Debug, Clone, Copy)]
pub struct LoaderFuzz {
    /// Valid artifacts.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Decodes and checks one artifact; whether it was accepted. It must never panic.
    pub check: fn(&[u8]) -> bool,
}

/// Guest memory size of the snapshot a [`LoaderFuzz`] checks artifacts against.
pub const FUZZ_MEMORY_BYTES: u64 = 64 << 20;

/// The identity of the memory a [`LoaderFuzz`] checks artifacts against.
pub(crate) fn fuzz_memory() -> snapbpf_store::FileIdentity {
    snapbpf_store::FileIdentity::of_zeros(FUZZ_MEMORY_BYTES)
}

/// Decodes an artifact of `kind` from `bytes` for a [`LoaderFuzz`], as
/// [`read_recorded`] does from a file: `None` unless whole and bound to [`fuzz_memory`].
pub(crate) fn decode_for_fuzz<H: serde::de::DeserializeOwned>(
    bytes: &[u8],
    kind: &str,
    memory_of: impl Fn(&H) -> &snapbpf_store::FileIdentity,
) -> Option<(H, Vec<u8>)> {
    let (header, payload): (H, Vec<u8>) =
        snapbpf_store::artifact::decode(bytes, kind, Path::new("fuzz")).ok()?;
    (memory_of(&header) == &fuzz_memory()).then_some((header, payload))
}

/// Opens the snapshot's memory file, with the read-around window `readahead_kib` when
/// given, and confirms it is the file whose content [`crate::snapshot::open`] checked
/// ([`Snapshot::confirm_memory`]): every restore and record maps or reads the memory
/// through this.
pub(crate) fn open_memory(
    snapshot: &Snapshot,
    readahead_kib: Option<u64>,
) -> Result<(std::fs::File, Option<u64>), StrategyError> {
    let path = snapshot.memory_path();
    let (file, window) = match readahead_kib {
        Some(kib) => snapbpf_wss::readahead::open_with_window(&path, kib)?,
        None => (
            std::fs::File::open(&path)
                .map_err(StrategyError::io(format!("open {}", path.display())))?,
            None,
        ),
    };
    snapshot
        .confirm_memory(&file)
        .map_err(|e| StrategyError::MemoryFile(Box::new(e)))?;
    Ok((file, window))
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
        crate::run::process_cpu(),
    )
    .map(|_| ())
    .map_err(|e| StrategyError::Record(Box::new(e)))
}

/// The working set recorded beside `snapshot` as file offsets (the eBPF capture's,
/// `snapbpf_wss::workingset::SNAPBPF_FILE`; every strategy that uses it reads it through
/// this), checked to belong to the snapshot's memory file.
pub(crate) fn recorded_working_set(
    snapshot: &Snapshot,
) -> Result<snapbpf_wss::workingset::WorkingSet, StrategyError> {
    let path = snapshot.artifact_path(snapbpf_wss::workingset::SNAPBPF_FILE);
    if !path.exists() {
        return Err(StrategyError::MissingWorkingSet { path });
    }
    snapbpf_wss::workingset::WorkingSet::read_for(&path, &snapshot.meta.memory).map_err(|e| match e
    {
        snapbpf_wss::workingset::ReadError::Stale { fields, .. } => StrategyError::BadArtifact {
            path: path.clone(),
            reason: format!(
                "stale: recorded for a memory file that differs in {}; run `snapbpf record` again",
                fields.join(", ")
            ),
        },
        other => other.into(),
    })
}
