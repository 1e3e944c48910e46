//! Taking snapshots of functions and opening them for this build.
//!
//! The snapshot directory itself (format, validation, atomic writing) is the store's
//! ([`snapbpf_store::snapshot`]); this module boots the function in a fresh VM, runs its
//! init phase and hands the store what to write, and opens snapshots against the guest
//! image this build embeds.

use std::path::Path;
use std::time::{Duration, Instant};

use snapbpf_store::snapshot::{self as store, SnapshotContents};
pub use snapbpf_store::snapshot::{
    MemoryLayout, OpenError, Snapshot, SnapshotMeta, Vmm, WriteError,
};
use snapbpf_vmm::{
    BootError, CreateError, GuestEvent, GuestMemory, IgnoreHints, MemoryError, MicroVm, RunError,
    StateError,
};

/// Errors taking a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The function (or its argument) is not one this build runs.
    #[error("cannot run function '{text}'")]
    UnknownFunction {
        /// The function as written.
        text: String,
        /// What is wrong with it.
        #[source]
        source: snapbpf_functions::CallError,
    },
    /// Target exists.
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(std::path::PathBuf),
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
    #[error("function init failed")]
    Run(#[from] RunError),
    /// The guest reported something other than ready.
    #[error("guest finished an invocation before reporting ready")]
    NotReady,
    /// Reading the vCPU state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Firecracker could not take the snapshot.
    #[error("under Firecracker")]
    Firecracker(#[source] Box<crate::firecracker::FirecrackerError>),
    /// Writing the snapshot failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Hex digest of the embedded guest image: snapshots taken with another guest build are
/// refused.
pub fn guest_digest_hex() -> String {
    format!("{:016x}", snapbpf_guest_image::guest_digest())
}

/// What this build restores: snapshots of its own guest image and of a function of its
/// suite, at the suite's index.
#[derive(Debug, Clone, Copy)]
pub struct ThisBuild;

impl snapbpf_store::snapshot::Accept for ThisBuild {
    fn accept(&self, meta: &SnapshotMeta) -> Result<(), OpenError> {
        let expected = guest_digest_hex();
        if meta.guest_digest != expected {
            return Err(OpenError::GuestMismatch {
                found: meta.guest_digest.clone(),
                expected,
            });
        }
        let call = snapbpf_functions::Call::parse(&meta.function);
        if call.map(|c| c.index).ok() != Some(meta.function_index) {
            return Err(OpenError::UnknownFunction(meta.function.clone()));
        }
        Ok(())
    }
}

/// Opens and validates the snapshot at `dir` for this build's guest.
pub fn open(dir: &Path) -> Result<Snapshot, OpenError> {
    Snapshot::open(dir, &ThisBuild)
}

/// Opens the snapshot at `dir` for this build's guest without checking the memory file's
/// content (see [`Snapshot::open_metadata`]).
pub fn open_metadata(dir: &Path) -> Result<Snapshot, OpenError> {
    Snapshot::open_metadata(dir, &ThisBuild)
}

/// Reuses a valid snapshot of `function` for this build at `dir`, or takes a new one
/// there (replacing whatever is not one), with snapbpf's own VMM.
pub fn ensure(function: &str, dir: &Path) -> Result<Snapshot, SnapshotError> {
    ensure_under(function, dir, Vmm::Builtin)
}

/// [`ensure`] for a snapshot taken with `vmm`.
pub fn ensure_under(function: &str, dir: &Path, vmm: Vmm) -> Result<Snapshot, SnapshotError> {
    ensure_with(function, dir, vmm, MemoryLayout::Sparse)
}

/// [`ensure_under`] for a memory file laid out as `layout` (one laid out otherwise is
/// taken again: a dense file holds a block for every byte, a sparse one fewer).
pub fn ensure_with(
    function: &str,
    dir: &Path,
    vmm: Vmm,
    layout: MemoryLayout,
) -> Result<Snapshot, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(s) = open(dir) {
        let dense = std::fs::metadata(s.memory_path()).is_ok_and(|m| m.blocks() * 512 >= m.len());
        let found = if dense {
            MemoryLayout::Dense
        } else {
            MemoryLayout::Sparse
        };
        let wanted = parse_call(function)?.to_string();
        if s.meta.function == wanted && s.vmm() == vmm && found == layout {
            return Ok(s);
        }
    }
    create(
        function,
        dir,
        &CreateOptions {
            force: true,
            vmm,
            layout,
            ..CreateOptions::default()
        },
    )
}

/// Reads a function as written (`name` or `name:argument`).
pub fn parse_call(text: &str) -> Result<snapbpf_functions::Call, SnapshotError> {
    snapbpf_functions::Call::parse(text).map_err(|source| SnapshotError::UnknownFunction {
        text: text.to_string(),
        source,
    })
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
    /// The VMM that boots the function and takes the snapshot.
    pub vmm: Vmm,
    /// How the memory file holds zero pages (sparse by default).
    pub layout: MemoryLayout,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            mem_mib: None,
            force: false,
            timeout: Duration::from_secs(300),
            vmm: Vmm::Builtin,
            layout: MemoryLayout::Sparse,
        }
    }
}

/// Boots `function` in a fresh VM, runs its init phase and writes a snapshot to `out`.
pub fn create(function: &str, out: &Path, opts: &CreateOptions) -> Result<Snapshot, SnapshotError> {
    let call = parse_call(function)?;
    let function = &call.to_string();
    if out.exists() && !opts.force {
        return Err(SnapshotError::Exists(out.to_path_buf()));
    }
    let mem_bytes = u64::from(opts.mem_mib.unwrap_or(call.mem_mib())) << 20;
    snapbpf_vmm::memory::check_size(mem_bytes)?;
    if opts.vmm == Vmm::Firecracker {
        return crate::firecracker::take_snapshot(
            &call,
            mem_bytes,
            out,
            opts.force,
            opts.timeout,
            opts.layout,
        );
    }
    let started = Instant::now();
    let mut vm = MicroVm::new(GuestMemory::anonymous(mem_bytes)?)?;
    vm.boot(snapbpf_guest_image::GUEST_ELF, call.index, call.arg)?;
    match vm.run(&mut IgnoreHints, opts.timeout)? {
        GuestEvent::Ready => {}
        GuestEvent::Done { .. } => return Err(SnapshotError::NotReady),
    }
    let init_ms = started.elapsed().as_secs_f64() * 1e3;
    let state = vm.save_state()?;
    let digest = guest_digest_hex();
    Ok(store::write(
        out,
        &SnapshotContents {
            function,
            function_index: call.index,
            memory: vm.memory(),
            vcpu: &state,
            abi_version: snapbpf_vmm::abi::ABI_VERSION,
            guest_digest: &digest,
            init_ms,
            layout: opts.layout,
        },
        opts.force,
        &ThisBuild,
    )?)
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
    let call = parse_call(function)?;
    let mem_bytes = u64::from(mem_mib.unwrap_or(call.mem_mib())) << 20;
    let started = Instant::now();
    let mut vm = MicroVm::new(GuestMemory::anonymous(mem_bytes)?)?;
    vm.boot(snapbpf_guest_image::GUEST_ELF, call.index, call.arg)?;
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
