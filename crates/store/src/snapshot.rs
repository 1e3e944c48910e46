//! The snapshot directory: writing it atomically and opening it, validated.
//!
//! ```text
//! <dir>/memory         raw guest memory, file offset = guest-physical address
//! <dir>/vcpu           vCPU registers (snapbpf_vmm::vcpu_state format: magic, version, CRC),
//!                      for snapshots of snapbpf's own VMM
//! <dir>/vmstate        Firecracker's device and vCPU state, for snapshots it took
//! <dir>/snapshot.json  metadata: function, sizes, guest build, the VMM, identity of `memory`
//! ```
//! The directory is built under a temporary name beside the target and renamed into place,
//! so a crash never leaves a half-written snapshot under the requested name.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use snapbpf_vmm::{VcpuState, VcpuStateError};

use crate::fsutil;
use crate::identity::FileIdentity;
use crate::verify::{self, VerifyError};

/// Name of the guest memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Name of the vCPU state file.
pub const VCPU_FILE: &str = "vcpu";
/// Name of Firecracker's state file in a snapshot it took.
pub const VMSTATE_FILE: &str = "vmstate";
/// Name of the metadata file.
pub const META_FILE: &str = "snapshot.json";
/// Value of `format` in `snapshot.json`.
pub const META_FORMAT: &str = "snapbpf-snapshot";
/// Version of the snapshot directory format.
/// 2: the memory's identity is a tree digest ([`crate::TreeHasher`]).
pub const META_VERSION: u32 = 2;

/// Largest `snapshot.json` accepted (a real one is under 1 KiB).
pub const MAX_META_BYTES: u64 = 1 << 20;
/// Largest `vcpu` file accepted (a real one is a few KiB).
pub const MAX_VCPU_BYTES: u64 = 1 << 20;
/// Largest `vmstate` accepted (Firecracker's is tens of KiB).
pub const MAX_VMSTATE_BYTES: u64 = 16 << 20;

/// The VMM a snapshot was taken with, and restores under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vmm {
    /// snapbpf's own microVM (`snapbpf-vmm`), in the restoring process.
    #[default]
    Builtin,
    /// An unmodified Firecracker, one process per VM, driven through its API.
    Firecracker,
}

impl Vmm {
    /// Every VMM, in the order tables show them.
    pub const ALL: [Vmm; 2] = [Vmm::Builtin, Vmm::Firecracker];

    /// Its name, as on the command line and in `snapshot.json`.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Builtin => "builtin",
            Vmm::Firecracker => "firecracker",
        }
    }

    /// The VMM named `name`.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == name)
            .ok_or_else(|| format!("unknown VMM '{name}' (expected builtin or firecracker)"))
    }
}

/// What `snapshot.json` says about a snapshot Firecracker took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerState {
    /// `firecracker --version` of the Firecracker that took it.
    pub version: String,
    /// Identity of its `vmstate` file.
    pub vmstate: FileIdentity,
}

/// `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Always [`META_FORMAT`].
    pub format: String,
    /// [`META_VERSION`] when written.
    pub version: u32,
    /// Function name.
    pub function: String,
    /// Index of the function in the guest's suite.
    pub function_index: u32,
    /// Bytes of guest memory (= size of `memory`).
    pub mem_bytes: u64,
    /// Guest ABI version.
    pub abi_version: u32,
    /// Digest of the guest image the snapshot was taken with (hex).
    pub guest_digest: String,
    /// Identity of `memory`; strategy artifacts are bound to it.
    pub memory: FileIdentity,
    /// CRC32 of the `vcpu` file (0 for a snapshot Firecracker took, which has none).
    pub vcpu_crc32: u32,
    /// The VMM it was taken with (snapshots of snapbpf 0.1 are the builtin one's).
    #[serde(default)]
    pub vmm: Vmm,
    /// Firecracker's state, for a snapshot it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firecracker: Option<FirecrackerState>,
    /// Time the init phase took in the fresh VM, ms.
    pub init_ms: f64,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
    /// Version of snapbpf that wrote it.
    pub snapbpf_version: String,
}

/// Errors writing a snapshot directory.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Target exists.
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    /// Writing files failed.
    #[error("cannot write snapshot to {path}: {source}")]
    Io {
        /// The path being written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The snapshot to replace is in use.
    #[error(transparent)]
    Busy(#[from] snapbpf_os::lock::LockError),
    /// The VMM could not write its files (Firecracker's snapshot call).
    #[error("the VMM could not write the snapshot")]
    Vmm(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The snapshot written cannot be opened again.
    #[error("the snapshot written to {path} does not open")]
    Reopen {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<OpenError>,
    },
}

/// What a snapshot holds, as the VMM hands it over to be written.
#[derive(Debug)]
pub struct SnapshotContents<'a> {
    /// Function name.
    pub function: &'a str,
    /// Index of the function in the guest's suite.
    pub function_index: u32,
    /// Guest memory, from GPA 0 (read while no vCPU runs).
    pub memory: &'a snapbpf_vmm::GuestMemory,
    /// vCPU state at the snapshot point.
    pub vcpu: &'a VcpuState,
    /// Guest ABI version.
    pub abi_version: u32,
    /// Digest of the guest image (hex).
    pub guest_digest: &'a str,
    /// Time the init phase took, ms.
    pub init_ms: f64,
    /// How the memory file holds zero pages.
    pub layout: MemoryLayout,
}

/// Errors opening a snapshot directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not a directory / missing.
    #[error(
        "{0} is not a snapshot directory (no snapshot.json; create one with `snapbpf snapshot`)"
    )]
    NotSnapshot(PathBuf),
    /// I/O error reading a file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// snapshot.json does not parse.
    #[error("{path} is corrupt: {reason}")]
    CorruptMeta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another format or version.
    #[error("{path} is a snapshot of format '{format}' version {version}; this snapbpf reads '{META_FORMAT}' version {META_VERSION} (re-create it)")]
    Version {
        /// The file.
        path: PathBuf,
        /// Format found.
        format: String,
        /// Version found.
        version: u32,
    },
    /// Guest image differs.
    #[error("snapshot was taken with another guest build (digest {found}, this build has {expected}); re-create it with `snapbpf snapshot`")]
    GuestMismatch {
        /// Digest in the snapshot.
        found: String,
        /// Digest of this build's guest.
        expected: String,
    },
    /// Function no longer exists.
    #[error("snapshot is of function '{0}', which this build does not have")]
    UnknownFunction(String),
    /// memory file changed.
    #[error("{path} does not match the snapshot: {reason}")]
    MemoryMismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The memory file is not the one snapshot.json names.
    #[error("the snapshot's memory file is not the one it was taken with")]
    Memory(#[source] Box<VerifyError>),
    /// vcpu file bad.
    #[error("{path}: {source}")]
    Vcpu {
        /// The file.
        path: PathBuf,
        /// Decode error.
        source: VcpuStateError,
    },
    /// vcpu file differs from the one the metadata names.
    #[error("{0} does not belong to this snapshot (CRC differs from snapshot.json)")]
    VcpuMismatch(PathBuf),
    /// Firecracker's state file differs from the one the metadata names.
    #[error("{0} does not belong to this snapshot (its content differs from snapshot.json)")]
    StateMismatch(PathBuf),
}

/// What an opener can restore, checked against a snapshot's metadata before any of its
/// files is read: the engine knows its guest builds and its function suite; the store
/// knows neither.
pub trait Accept {
    /// Whether snapshots described by `meta` can be restored here;
    /// [`OpenError::GuestMismatch`] or [`OpenError::UnknownFunction`] if not.
    fn accept(&self, meta: &SnapshotMeta) -> Result<(), OpenError>;
}

/// The machine state a snapshot resumes, as its VMM saved it.
#[derive(Debug, Clone)]
pub enum SavedState {
    /// snapbpf's VMM: the vCPU's registers.
    Builtin(Box<VcpuState>),
    /// Firecracker's `vmstate` file, checked against its identity; Firecracker reads it.
    Firecracker(PathBuf),
}

/// An opened, validated snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: SnapshotMeta,
    /// The machine state to resume.
    pub state: SavedState,
    /// The memory file as it was when its content was checked ([`Snapshot::open`]).
    memory_stamp: Option<verify::FileStamp>,
}

impl Snapshot {
    /// Path of the memory file.
    pub fn memory_path(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    /// Path of a strategy artifact in the snapshot directory.
    pub fn artifact_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The VMM it restores under.
    pub fn vmm(&self) -> Vmm {
        self.meta.vmm
    }

    /// The vCPU state, for a snapshot of snapbpf's own VMM.
    pub fn vcpu(&self) -> Option<&VcpuState> {
        match &self.state {
            SavedState::Builtin(vcpu) => Some(vcpu),
            SavedState::Firecracker(_) => None,
        }
    }

    /// Opens and validates `dir`: metadata format, what the caller can run (`accept`
    /// checks the metadata: the guest build, the function), the memory file's content and
    /// the vCPU file's checksum. The memory file is hashed only when [`crate::verify`]
    /// cannot vouch for it (the first open of a copy), with direct reads that leave the
    /// page cache as it was.
    ///
    /// The check is made on one descriptor, and remembered by its stamp
    /// ([`verify::FileStamp`]): every later open of the memory file for a restore is
    /// confirmed against it ([`Snapshot::confirm_memory`]), so a file swapped in at the
    /// path after the check is refused, not restored.
    pub fn open(dir: &Path, accept: &dyn Accept) -> Result<Self, OpenError> {
        let mut snapshot = Self::open_metadata(dir, accept)?;
        let path = snapshot.memory_path();
        let memory_err = |e| OpenError::Memory(Box::new(e));
        let (file, _) = fsutil::open_direct(&path).map_err(|source| {
            memory_err(verify::VerifyError::Io {
                path: path.clone(),
                source,
            })
        })?;
        let stamp = verify::check_open(&file, &path, &snapshot.meta.memory).map_err(memory_err)?;
        snapshot.memory_stamp = Some(stamp);
        Ok(snapshot)
    }

    /// Refuses `file`, just opened from [`Snapshot::memory_path`], unless it is the memory
    /// file whose content [`Snapshot::open`] checked, unchanged since (another file
    /// renamed into place, or one written to, has another stamp). A snapshot opened
    /// without the check ([`Snapshot::open_metadata`]) confirms nothing.
    pub fn confirm_memory(&self, file: &File) -> Result<(), OpenError> {
        let Some(stamp) = self.memory_stamp else {
            return Ok(());
        };
        let found = verify::FileStamp::of(file).map_err(|source| OpenError::Io {
            path: self.memory_path(),
            source,
        })?;
        if found != stamp {
            return Err(OpenError::MemoryMismatch {
                path: self.memory_path(),
                reason: "it was replaced or changed since its content was checked".into(),
            });
        }
        Ok(())
    }

    /// [`Snapshot::open`] without the memory file's content check (its size is checked):
    /// for `snapbpf verify`, which hashes it itself, whatever any cache says.
    pub fn open_metadata(dir: &Path, accept: &dyn Accept) -> Result<Self, OpenError> {
        let meta_path = dir.join(META_FILE);
        if !meta_path.is_file() {
            return Err(OpenError::NotSnapshot(dir.to_path_buf()));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        let raw = fsutil::read_regular(&meta_path, MAX_META_BYTES).map_err(io(&meta_path))?;
        let meta = parse_meta(&raw, &meta_path)?;
        accept.accept(&meta)?;
        let memory = dir.join(MEMORY_FILE);
        let mismatch = |reason: String| OpenError::MemoryMismatch {
            path: memory.clone(),
            reason,
        };
        if meta.memory.size != meta.mem_bytes {
            return Err(mismatch("snapshot.json sizes disagree".into()));
        }
        snapbpf_vmm::memory::check_size(meta.mem_bytes).map_err(|e| mismatch(e.to_string()))?;
        let size = fsutil::open_regular(&memory)
            .and_then(|f| f.metadata())
            .map_err(io(&memory))?
            .len();
        if size != meta.mem_bytes {
            return Err(mismatch(format!(
                "it is {size} bytes, snapshot.json says {}",
                meta.mem_bytes
            )));
        }
        let state = match (meta.vmm, &meta.firecracker) {
            (Vmm::Builtin, _) => SavedState::Builtin(Box::new(read_vcpu(dir, &meta)?)),
            (Vmm::Firecracker, Some(fc)) => {
                let path = dir.join(VMSTATE_FILE);
                let bytes = fsutil::read_regular(&path, MAX_VMSTATE_BYTES).map_err(io(&path))?;
                // Small enough to hash on every open: what Firecracker will restore is
                // what the snapshot was taken with.
                if FileIdentity::of_bytes(&bytes) != fc.vmstate {
                    return Err(OpenError::StateMismatch(path));
                }
                SavedState::Firecracker(path)
            }
            (Vmm::Firecracker, None) => {
                return Err(OpenError::CorruptMeta {
                    path: meta_path,
                    reason: "a Firecracker snapshot without its firecracker section".into(),
                })
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            state,
            memory_stamp: None,
        })
    }
}

/// Reads and checks the `vcpu` file of a snapshot of snapbpf's own VMM.
fn read_vcpu(dir: &Path, meta: &SnapshotMeta) -> Result<VcpuState, OpenError> {
    let vcpu_path = dir.join(VCPU_FILE);
    let vcpu_bytes =
        fsutil::read_regular(&vcpu_path, MAX_VCPU_BYTES).map_err(|source| OpenError::Io {
            path: vcpu_path.clone(),
            source,
        })?;
    let vcpu = VcpuState::from_bytes(&vcpu_bytes).map_err(|source| OpenError::Vcpu {
        path: vcpu_path.clone(),
        source,
    })?;
    if crc32fast::hash(&vcpu_bytes) != meta.vcpu_crc32 {
        return Err(OpenError::VcpuMismatch(vcpu_path));
    }
    Ok(vcpu)
}

/// Parses `snapshot.json` (read from `path`, named in errors): format and version first,
/// then the fields.
pub fn parse_meta(raw: &[u8], path: &Path) -> Result<SnapshotMeta, OpenError> {
    let value: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| OpenError::CorruptMeta {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
    let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if format != META_FORMAT || version != u64::from(META_VERSION) {
        return Err(OpenError::Version {
            path: path.to_path_buf(),
            format: format.to_string(),
            version: u32::try_from(version).unwrap_or(u32::MAX),
        });
    }
    serde_json::from_value(value).map_err(|e| OpenError::CorruptMeta {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes `contents` (snapbpf's own VMM's memory and vCPU) as a snapshot directory at
/// `out`, atomically (see [`write_with`]).
pub fn write(
    out: &Path,
    contents: &SnapshotContents<'_>,
    force: bool,
    accept: &dyn Accept,
) -> Result<Snapshot, WriteError> {
    write_with(out, force, accept, |tmp| {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WriteError::Io { path, source }
        };
        let memory_path = tmp.join(MEMORY_FILE);
        let digest = write_memory(&memory_path, contents.memory, contents.layout)
            .map_err(io(&memory_path))?;
        let memory = FileIdentity {
            size: contents.memory.len(),
            digest,
        };
        verify::remember(&memory_path, memory).map_err(io(&memory_path))?;
        let vcpu_path = tmp.join(VCPU_FILE);
        let vcpu_bytes = contents.vcpu.to_bytes();
        fsutil::write_atomic(&vcpu_path, &vcpu_bytes).map_err(io(&vcpu_path))?;
        Ok(SnapshotMeta {
            format: META_FORMAT.into(),
            version: META_VERSION,
            function: contents.function.into(),
            function_index: contents.function_index,
            mem_bytes: memory.size,
            abi_version: contents.abi_version,
            guest_digest: contents.guest_digest.into(),
            memory,
            vcpu_crc32: crc32fast::hash(&vcpu_bytes),
            vmm: Vmm::Builtin,
            firecracker: None,
            init_ms: contents.init_ms,
            created_unix: 0,
            snapbpf_version: String::new(),
        })
    })
}

/// Writes a snapshot directory at `out`, atomically: `fill` writes the VMM's files into a
/// fresh temporary directory beside `out` (created with `create_dir`, so nothing another
/// process made is reused) and returns the metadata (`format`, `version`, `created_unix`
/// and `snapbpf_version` are set here); `snapshot.json` is written, every file synced, and
/// the directory renamed into place; with `force`, an existing `out` is replaced (moved
/// aside first, so the rename stays atomic). Opens the result again to check it.
pub fn write_with(
    out: &Path,
    force: bool,
    accept: &dyn Accept,
    fill: impl FnOnce(&Path) -> Result<SnapshotMeta, WriteError>,
) -> Result<Snapshot, WriteError> {
    if out.exists() && !force {
        return Err(WriteError::Exists(out.to_path_buf()));
    }
    let parent = fsutil::parent_dir(out);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    remove_stale_temporaries(&parent, &name);
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Io { path, source }
    };
    let undo_tmp = tmp.clone();
    let _interrupted =
        snapbpf_os::interrupt::on_interrupt("removed the unfinished snapshot", move || {
            let _ = std::fs::remove_dir_all(&undo_tmp);
        });
    let result = (|| {
        let _ = std::fs::remove_dir_all(&tmp);
        // `create`, not `create_dir_all`: it fails on anything already there. 0700: a
        // snapshot is a tenant's memory; no other local user may even list it.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io(&tmp))?;
        let mut meta = fill(&tmp)?;
        meta.format = META_FORMAT.into();
        meta.version = META_VERSION;
        meta.created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        meta.snapbpf_version = env!("CARGO_PKG_VERSION").into();
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| io(&tmp)(e.into()))?;
        let meta_path = tmp.join(META_FILE);
        fsutil::write_atomic(&meta_path, &json).map_err(io(&meta_path))?;
        fsutil::sync_dir(&tmp).map_err(io(&tmp))?;
        if force && out.exists() {
            // Not from under a `record` or running VMs.
            let _busy = snapbpf_os::lock::lock_dir(out, snapbpf_os::lock::LockMode::Exclusive)?;
            // One atomic exchange: at every instant `out` is the old snapshot or the new
            // one. The old one, now at the temporary's name, goes after; a crash before
            // that leaves it as a stale temporary, which the next write removes.
            rename_with(&tmp, out, libc::RENAME_EXCHANGE).map_err(io(out))?;
            fsutil::sync_dir(&parent).map_err(io(&parent))?;
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
            return Ok(());
        }
        // Never over something that appeared meanwhile (rename(2) would replace an empty
        // directory): without --force that is an error, with it a retry is the caller's.
        rename_with(&tmp, out, libc::RENAME_NOREPLACE).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => WriteError::Exists(out.to_path_buf()),
            _ => io(out)(e),
        })?;
        fsutil::sync_dir(&parent).map_err(io(&parent))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Snapshot::open(out, accept).map_err(|source| WriteError::Reopen {
        path: out.to_path_buf(),
        source: Box::new(source),
    })
}

/// Removes the temporaries (`.NAME.tmp-PID`, and `.NAME.old-PID` of earlier versions) that
/// snapshot writes of `name` into `parent` left when their process died: a killed
/// `snapshot` leaves gigabytes. Those of live processes are theirs; failures only cost
/// disk space, so they are logged, not returned.
pub fn remove_stale_temporaries(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_prefix(name))
        else {
            continue;
        };
        let Some(pid) = rest
            .strip_prefix(".tmp-")
            .or_else(|| rest.strip_prefix(".old-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(
                "removed {}, left by process {pid}, which is gone",
                path.display()
            ),
            Err(e) => tracing::warn!(
                "cannot remove {}, left by process {pid}: {e}",
                path.display()
            ),
        }
    }
}

/// How a memory file holds its zero pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryLayout {
    /// As holes: the file costs disk blocks for its data only, and writing it costs the
    /// pages the guest touched, not its size (untouched guest memory is never read).
    #[default]
    Sparse,
    /// As data, every byte written, as Firecracker writes a full snapshot: a restore then
    /// reads zero pages from the device like any other (the paper's setting).
    Dense,
}

/// Writes guest memory to a new file at `path` laid out as `layout` and returns its
/// identity's digest. A sparse write reads only the ranges the host's page tables say the
/// guest may have touched ([`snapbpf_vmm::GuestMemory::touched_ranges`]) and writes only
/// their pages that are not all zeros; everything else is a hole, hashed as zeros.
fn write_memory(
    path: &Path,
    mem: &snapbpf_vmm::GuestMemory,
    layout: MemoryLayout,
) -> std::io::Result<[u8; 32]> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let other = |e: snapbpf_vmm::MemoryError| std::io::Error::other(e.to_string());
    let ranges = match layout {
        // Without pagemap (a kernel built without it), every page is read: the file is
        // still sparse, only the write costs the guest's size.
        MemoryLayout::Sparse => mem.touched_ranges().unwrap_or_else(|e| {
            tracing::warn!("reading all of guest memory for the snapshot: {e}");
            None
        }),
        MemoryLayout::Dense => None,
    }
    .unwrap_or_else(|| vec![(0, mem.len())]);
    file.set_len(mem.len())?;
    let mut hasher = crate::identity::TreeHasher::new();
    let mut chunk = vec![0u8; 8 << 20];
    let mut hashed = 0u64;
    for (start, len) in ranges {
        hasher.update_zeros(start - hashed);
        let mut gpa = start;
        while gpa < start + len {
            let n = (start + len - gpa).min(chunk.len() as u64) as usize;
            let data = &mut chunk[..n];
            mem.read(gpa, data).map_err(other)?;
            hasher.update(data);
            if layout == MemoryLayout::Dense {
                file.write_all_at(data, gpa)?;
            } else {
                for run in fsutil::data_page_runs(data) {
                    file.write_all_at(&data[run.clone()], gpa + run.start as u64)?;
                }
            }
            gpa += n as u64;
        }
        hashed = start + len;
    }
    hasher.update_zeros(mem.len() - hashed);
    file.sync_all()?;
    Ok(hasher.finish().digest)
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_with(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: renameat2 reads two NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
