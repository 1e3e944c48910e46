//! The snapshot directory: creating it from a freshly booted function and opening it.
//!
//! ```text
//! <dir>/memory         raw guest memory, file offset = guest-physical address
//! <dir>/vcpu           vCPU registers (snapbpf_vmm::vcpu_state format: magic, version, CRC)
//! <dir>/snapshot.json  metadata: function, sizes, guest build, identity of `memory`
//! ```
//! The directory is built under a temporary name beside the target and renamed into place,
//! so a crash never leaves a half-written snapshot under the requested name.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use snapbpf_vmm::{
    BootError, CreateError, GuestEvent, GuestMemory, IgnoreHints, MemoryError, MicroVm, RunError,
    StateError, VcpuState, VcpuStateError,
};

use crate::fsutil::{self, FileIdentity};

/// Name of the guest memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Name of the vCPU state file.
pub const VCPU_FILE: &str = "vcpu";
/// Name of the metadata file.
pub const META_FILE: &str = "snapshot.json";
/// Value of `format` in `snapshot.json`.
pub const META_FORMAT: &str = "snapbpf-snapshot";
/// Version of the snapshot directory format.
pub const META_VERSION: u32 = 1;

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
    /// CRC32 of the `vcpu` file.
    pub vcpu_crc32: u32,
    /// Time the init phase took in the fresh VM, ms.
    pub init_ms: f64,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
    /// Version of snapbpf that wrote it.
    pub snapbpf_version: String,
}

/// Errors taking a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Unknown function.
    #[error("unknown function '{0}' (see `snapbpf functions`)")]
    UnknownFunction(String),
    /// Target exists.
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    /// Memory size not usable.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// VM creation failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// Boot failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The guest failed during init.
    #[error("function init failed: {0}")]
    Run(#[from] RunError),
    /// The guest reported something other than ready.
    #[error("guest finished an invocation before reporting ready")]
    NotReady,
    /// Reading the vCPU state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Writing files failed.
    #[error("cannot write snapshot to {path}: {source}")]
    Io {
        /// The path being written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
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
}

/// An opened, validated snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: SnapshotMeta,
    /// The vCPU state to resume.
    pub vcpu: VcpuState,
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

    /// Opens and validates `dir`: metadata format, guest build, the memory file's size and
    /// identity, and the vCPU file's checksum. Does not read `memory` (that would warm it).
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let meta_path = dir.join(META_FILE);
        if !meta_path.is_file() {
            return Err(OpenError::NotSnapshot(dir.to_path_buf()));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        let raw = std::fs::read(&meta_path).map_err(io(&meta_path))?;
        let value: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| OpenError::CorruptMeta {
                path: meta_path.clone(),
                reason: e.to_string(),
            })?;
        let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if format != META_FORMAT || version != META_VERSION {
            return Err(OpenError::Version {
                path: meta_path,
                format: format.to_string(),
                version,
            });
        }
        let meta: SnapshotMeta =
            serde_json::from_value(value).map_err(|e| OpenError::CorruptMeta {
                path: meta_path.clone(),
                reason: e.to_string(),
            })?;
        let expected = guest_digest_hex();
        if meta.guest_digest != expected {
            return Err(OpenError::GuestMismatch {
                found: meta.guest_digest,
                expected,
            });
        }
        if snapbpf_functions::index_of(&meta.function) != Some(meta.function_index) {
            return Err(OpenError::UnknownFunction(meta.function));
        }
        let memory = dir.join(MEMORY_FILE);
        let mismatch = |reason: String| OpenError::MemoryMismatch {
            path: memory.clone(),
            reason,
        };
        if meta.memory.size != meta.mem_bytes {
            return Err(mismatch("snapshot.json sizes disagree".into()));
        }
        snapbpf_vmm::memory::check_size(meta.mem_bytes).map_err(|e| mismatch(e.to_string()))?;
        match meta.memory.check(&memory) {
            Ok(None) => {}
            Ok(Some(reason)) => return Err(mismatch(reason)),
            Err(e) => return Err(io(&memory)(e)),
        }
        let vcpu_path = dir.join(VCPU_FILE);
        let vcpu_bytes = std::fs::read(&vcpu_path).map_err(io(&vcpu_path))?;
        let vcpu = VcpuState::from_bytes(&vcpu_bytes).map_err(|source| OpenError::Vcpu {
            path: vcpu_path.clone(),
            source,
        })?;
        if crc32fast::hash(&vcpu_bytes) != meta.vcpu_crc32 {
            return Err(OpenError::VcpuMismatch(vcpu_path));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            vcpu,
        })
    }
}

/// Hex digest of the embedded guest image.
pub fn guest_digest_hex() -> String {
    format!("{:016x}", snapbpf_guest_image::guest_digest())
}

/// Options for [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Guest memory in MiB; `None` takes the function's default.
    pub mem_mib: Option<u32>,
    /// Replace an existing directory.
    pub force: bool,
    /// Longest the init phase may run.
    pub timeout: Duration,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            mem_mib: None,
            force: false,
            timeout: Duration::from_secs(300),
        }
    }
}

/// Boots `function` in a fresh VM, runs its init phase and writes a snapshot to `out`.
pub fn create(function: &str, out: &Path, opts: &CreateOptions) -> Result<Snapshot, SnapshotError> {
    let info = snapbpf_functions::info(function)
        .ok_or_else(|| SnapshotError::UnknownFunction(function.to_string()))?;
    let index = snapbpf_functions::index_of(function)
        .ok_or_else(|| SnapshotError::UnknownFunction(function.to_string()))?;
    if out.exists() && !opts.force {
        return Err(SnapshotError::Exists(out.to_path_buf()));
    }
    let mem_bytes = u64::from(opts.mem_mib.unwrap_or(info.mem_mib)) << 20;
    let started = Instant::now();
    let mut vm = MicroVm::new(GuestMemory::anonymous(mem_bytes)?)?;
    vm.boot(snapbpf_guest_image::GUEST_ELF, index)?;
    match vm.run(&mut IgnoreHints, opts.timeout)? {
        GuestEvent::Ready => {}
        GuestEvent::Done { .. } => return Err(SnapshotError::NotReady),
    }
    let init_ms = started.elapsed().as_secs_f64() * 1e3;
    let state = vm.save_state()?;

    let parent = fsutil::parent_dir(out);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let result = (|| {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let memory_path = tmp.join(MEMORY_FILE);
        let sha256 =
            write_memory(&memory_path, vm.memory().as_slice()).map_err(io(&memory_path))?;
        let vcpu_path = tmp.join(VCPU_FILE);
        let vcpu_bytes = state.to_bytes();
        fsutil::write_atomic(&vcpu_path, &vcpu_bytes).map_err(io(&vcpu_path))?;
        let meta = SnapshotMeta {
            format: META_FORMAT.into(),
            version: META_VERSION,
            function: function.into(),
            function_index: index,
            mem_bytes,
            abi_version: snapbpf_guest_abi_version(),
            guest_digest: guest_digest_hex(),
            memory: FileIdentity::of(&memory_path, sha256).map_err(io(&memory_path))?,
            vcpu_crc32: crc32fast::hash(&vcpu_bytes),
            init_ms,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            snapbpf_version: env!("CARGO_PKG_VERSION").into(),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| io(&tmp)(e.into()))?;
        let meta_path = tmp.join(META_FILE);
        fsutil::write_atomic(&meta_path, &json).map_err(io(&meta_path))?;
        if out.exists() {
            // --force: move the old snapshot aside first so the rename is atomic.
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            std::fs::rename(out, &old).map_err(io(out))?;
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(&tmp, out).map_err(io(out))?;
        fsutil::sync_dir(&parent).map_err(io(&parent))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Snapshot::open(out).map_err(|e| SnapshotError::Io {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn snapbpf_guest_abi_version() -> u32 {
    snapbpf_vmm::abi::ABI_VERSION
}

/// Writes guest memory densely (no holes: a hole would make "reading" free pages cost no
/// I/O, unlike a real snapshot) and returns its SHA-256.
fn write_memory(path: &Path, mem: &[u8]) -> std::io::Result<String> {
    let mut file = File::create(path)?;
    let mut hasher = Sha256::new();
    for chunk in mem.chunks(8 << 20) {
        hasher.update(chunk);
        file.write_all(chunk)?;
    }
    file.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh boot's results: the reference a restored snapshot must reproduce.
#[derive(Debug, Clone)]
pub struct FreshBoot {
    /// Time of the init phase, ms.
    pub init_ms: f64,
    /// Per invocation: checksum and wall time in ms.
    pub invocations: Vec<(u64, f64)>,
}

/// Boots `function` in a fresh VM, runs init and then `invocations` invocations with
/// `input` in the same VM (the first cold in guest memory, the rest fully warm).
pub fn fresh_boot(
    function: &str,
    input: u32,
    invocations: u32,
    mem_mib: Option<u32>,
    timeout: Duration,
) -> Result<FreshBoot, SnapshotError> {
    let info = snapbpf_functions::info(function)
        .ok_or_else(|| SnapshotError::UnknownFunction(function.to_string()))?;
    let index = snapbpf_functions::index_of(function)
        .ok_or_else(|| SnapshotError::UnknownFunction(function.to_string()))?;
    let mem_bytes = u64::from(mem_mib.unwrap_or(info.mem_mib)) << 20;
    let started = Instant::now();
    let mut vm = MicroVm::new(GuestMemory::anonymous(mem_bytes)?)?;
    vm.boot(snapbpf_guest_image::GUEST_ELF, index)?;
    if vm.run(&mut IgnoreHints, timeout)? != GuestEvent::Ready {
        return Err(SnapshotError::NotReady);
    }
    let init_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut results = Vec::new();
    for _ in 0..invocations.max(1) {
        vm.set_input(input)?;
        let t = Instant::now();
        match vm.run(&mut IgnoreHints, timeout)? {
            GuestEvent::Done { checksum } => {
                results.push((checksum, t.elapsed().as_secs_f64() * 1e3))
            }
            GuestEvent::Ready => return Err(SnapshotError::NotReady),
        }
    }
    Ok(FreshBoot {
        init_ms,
        invocations: results,
    })
}
