//! The engine under an unmodified Firecracker: snapshots it takes, VMs it restores and
//! record phases it runs, one Firecracker process per VM, driven through its API
//! ([`snapbpf_firecracker`]).
//!
//! A strategy says how guest memory is backed ([`ExternalPlan`](crate::strategy::ExternalPlan)): Firecracker's File
//! backend maps the memory file privately (opened with the strategy's read-around window,
//! which the device holds only while Firecracker opens it), or its Uffd backend hands the
//! userfaultfd to a handler thread in this process, which installs the strategy's working
//! set first and then serves every fault from the memory file. Helpers the strategy
//! starts (SnapBPF's prefetcher) run here, beside the Firecracker process, and are joined
//! once the invocation is over: a helper that failed fails the run.
//!
//! The guest is the one image snapbpf's own VMM runs (`snapbpf-guest-image`): under
//! Firecracker it builds its own page tables, enters ring 3 and talks over the serial
//! port (Firecracker's stdin and stdout): a ready line after init (the snapshot point), an
//! input line per invocation, a result line with the checksum.
//!
//! What an unmodified Firecracker cannot do: act on the guest's fresh-allocation hints
//! (PV filtering needs the VMM to map anonymous memory over a range of guest memory when
//! told, which Firecracker's API has no call for), or let this process map guest memory
//! (premapping, huge-page advice): strategies and options that need either are refused
//! before any VM starts.

use std::path::Path;
use std::time::{Duration, Instant};

use snapbpf_firecracker::{guest, Binary, MachineConfig, MemBackend, Vm};
use snapbpf_store::snapshot::{self as store, FirecrackerState, SnapshotMeta, Vmm};
use snapbpf_store::FileIdentity;

use crate::run::{RunOptions, RunReport};
use crate::snapshot::{Snapshot, SnapshotError, ThisBuild};
use crate::strategy::{
    ExternalBacking, ExternalRecorder, RecordBacking, StrategyError, StrategySpec,
};
use crate::uffd_backend::{self, OneVmm};

/// The guest's kernel command line for `call`: its function index and, for a function
/// that takes one, its argument.
fn command_line(call: &snapbpf_functions::Call) -> String {
    use snapbpf_vmm::abi::serial::{CMDLINE_ARG, CMDLINE_FUNCTION};
    match call.info.arg {
        Some(_) => format!("{CMDLINE_FUNCTION}{} {CMDLINE_ARG}{}", call.index, call.arg),
        None => format!("{CMDLINE_FUNCTION}{}", call.index),
    }
}

/// Longest a Firecracker may take to load a snapshot and resume, or to boot to ready
/// beyond the function's init timeout.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);

/// Errors of a VM under Firecracker.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    /// No usable Firecracker binary.
    #[error(transparent)]
    Locate(#[from] snapbpf_firecracker::LocateError),
    /// Firecracker did not start.
    #[error(transparent)]
    Spawn(#[from] snapbpf_firecracker::SpawnError),
    /// An API call failed (Firecracker's log says why).
    #[error(transparent)]
    Api(#[from] snapbpf_firecracker::ApiError),
    /// The guest did not answer as the protocol says.
    #[error(transparent)]
    Guest(#[from] snapbpf_firecracker::guest::GuestError),
    /// The strategy refused or failed.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// The snapshot is unusable.
    #[error(transparent)]
    Open(#[from] store::OpenError),
    /// The page-fault handler beside Firecracker failed.
    #[error(transparent)]
    Handler(#[from] uffd_backend::BackendError),
    /// The device's readahead window could not be set while Firecracker opened the file.
    #[error(transparent)]
    Readahead(#[from] snapbpf_wss::readahead::ReadaheadError),
    /// A helper thread failed: the run is void.
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    /// The guest is not the one the snapshot was taken with.
    #[error("the guest under Firecracker reports ABI {abi} and function {function}; snapbpf expects ABI {} and function {expected}", snapbpf_vmm::abi::ABI_VERSION)]
    WrongGuest {
        /// ABI the guest reported.
        abi: u32,
        /// Function it runs.
        function: u32,
        /// Function expected.
        expected: u32,
    },
    /// A file could not be read or written.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FirecrackerError {
    let context = context.into();
    move |source| FirecrackerError::Io { context, source }
}

/// The Firecracker to run: `--firecracker PATH` (which the CLI puts in `$FIRECRACKER`,
/// so worker processes inherit it), else `$FIRECRACKER`, else `firecracker` on `PATH`.
pub fn binary() -> Result<Binary, FirecrackerError> {
    Ok(Binary::locate(None)?)
}

/// The embedded guest image in a private temporary file, for Firecracker to load.
fn guest_image() -> Result<tempfile::NamedTempFile, FirecrackerError> {
    let mut file = tempfile::Builder::new()
        .prefix("snapbpf-guest-")
        .suffix(".elf")
        .tempfile()
        .map_err(io("create the guest image file"))?;
    std::io::Write::write_all(&mut file, snapbpf_guest_image::GUEST_ELF)
        .map_err(io("write the guest image file"))?;
    Ok(file)
}

/// Boots `function` under Firecracker, runs its init phase and writes a snapshot of it to
/// `out`: Firecracker's memory file and `vmstate` beside `snapshot.json`, which records
/// Firecracker's version.
pub fn take_snapshot(
    call: &snapbpf_functions::Call,
    mem_bytes: u64,
    out: &Path,
    force: bool,
    timeout: Duration,
    layout: crate::snapshot::MemoryLayout,
) -> Result<Snapshot, SnapshotError> {
    let fc = |e: FirecrackerError| SnapshotError::Firecracker(Box::new(e));
    let bin = binary().map_err(fc)?;
    let image = guest_image().map_err(fc)?;
    let started = Instant::now();
    let mut vm = Vm::spawn(&bin).map_err(|e| fc(e.into()))?;
    let machine = MachineConfig {
        mem_mib: u32::try_from(mem_bytes >> 20).unwrap_or(u32::MAX),
        vcpus: 1,
        // Sparse: Firecracker writes only the pages written since boot (a Diff snapshot
        // over zeros), instead of every page of guest memory.
        track_dirty_pages: layout == crate::snapshot::MemoryLayout::Sparse,
    };
    let index = call.index;
    vm.boot(image.path(), &command_line(call), machine)
        .map_err(|e| fc(e.into()))?;
    let ready = guest::wait_ready(vm.serial(), Instant::now() + timeout + LOAD_DEADLINE)
        .map_err(|e| fc(e.into()))?;
    if ready.abi != snapbpf_vmm::abi::ABI_VERSION || ready.function != index {
        return Err(fc(FirecrackerError::WrongGuest {
            abi: ready.abi,
            function: ready.function,
            expected: index,
        }));
    }
    let init_ms = started.elapsed().as_secs_f64() * 1e3;
    vm.pause().map_err(|e| fc(e.into()))?;
    let version = bin.version().to_string();
    let written = store::write_with(out, force, &ThisBuild, |tmp| {
        let memory_path = tmp.join(store::MEMORY_FILE);
        let vmstate_path = tmp.join(store::VMSTATE_FILE);
        vm.create_snapshot(&vmstate_path, &memory_path)
            .map_err(|e| store::WriteError::Vmm(Box::new(e)))?;
        let write_io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| store::WriteError::Io { path, source }
        };
        for path in [&memory_path, &vmstate_path] {
            snapbpf_store::fsutil::restrict(path).map_err(write_io(path))?;
        }
        if layout == crate::snapshot::MemoryLayout::Sparse {
            // Pages written with zeros are data in Firecracker's file: they become holes
            // too, so the file costs its data's blocks and hashing it its data's reads.
            let punched = snapbpf_store::fsutil::punch_zero_pages(&memory_path)
                .map_err(write_io(&memory_path))?;
            tracing::debug!("{punched} zero bytes of Firecracker's memory file made holes");
        }
        let memory =
            snapbpf_store::verify::identify(&memory_path).map_err(|e| store::WriteError::Io {
                path: memory_path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        snapbpf_store::verify::remember(&memory_path, memory).map_err(write_io(&memory_path))?;
        let vmstate = std::fs::read(&vmstate_path).map_err(write_io(&vmstate_path))?;
        Ok(SnapshotMeta {
            format: String::new(),
            version: 0,
            function: call.to_string(),
            function_index: index,
            mem_bytes: memory.size,
            abi_version: snapbpf_vmm::abi::ABI_VERSION,
            guest_digest: crate::snapshot::guest_digest_hex(),
            memory,
            vcpu_crc32: 0,
            vmm: Vmm::Firecracker,
            firecracker: Some(FirecrackerState {
                version: version.clone(),
                vmstate: FileIdentity::of_bytes(&vmstate),
            }),
            init_ms,
            created_unix: 0,
            snapbpf_version: String::new(),
        })
    });
    // Firecracker goes with `vm`; the snapshot was written (or failed) first.
    Ok(written?)
}

/// A VM restored under Firecracker that has reported its result and is kept alive until
/// the launcher has measured the run's memory; dropping it kills Firecracker and stops
/// what ran beside it.
#[derive(Debug)]
pub struct Running {
    vm: Vm,
    handler: Option<OneVmm>,
}

impl Running {
    /// Stops the handler beside Firecracker and returns the faults it logged; Firecracker
    /// itself goes when the value drops. (Its guest has reported its result and only polls
    /// the serial port: it takes no more faults.)
    fn stop_handler(&mut self) -> Result<Vec<u64>, uffd_backend::BackendError> {
        match self.handler.take() {
            Some(handler) => handler.finish(),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_handler();
    }
}

/// Restores one VM from the Firecracker snapshot at `dir` under `spec` and runs one
/// invocation. Timing starts at the call, as for snapbpf's own VMM: opening the snapshot,
/// starting Firecracker and loading count as restore.
pub fn run_one(
    dir: &Path,
    spec: &StrategySpec,
    opts: &RunOptions,
) -> Result<(RunReport, Running), FirecrackerError> {
    let cpu_before = crate::run::process_cpu();
    let started = Instant::now();
    let snapshot = crate::snapshot::open(dir)?;
    crate::strategy::check_vmm(spec, Vmm::Firecracker)?;
    let plan = spec.build().external(&snapshot)?;
    let bin = binary()?;
    let (vm, handler, readahead_kib, load) = load(&bin, &snapshot, plan.backing, false)?;
    let mut running = Running { vm, handler };
    let restored = Instant::now();
    let done = guest::invoke(
        running.vm.serial(),
        opts.input,
        Instant::now() + opts.timeout,
    );
    let finished = Instant::now();
    // The helpers are joined on every path; one that failed voids the run.
    let helped = plan.helpers.finish();
    let done = done?;
    let mut prefetch = helped?;
    if let Some(handler) = &running.handler {
        if let Some(installed) = handler.installed() {
            prefetch = Some(match prefetch {
                Some(p) => p.merge(&installed),
                None => installed,
            });
        }
    }
    let (rss_anon_kib, rss_file_kib) =
        running.vm.rss_kib().map_err(io("read Firecracker's RSS"))?;
    tracing::debug!(
        "firecracker: load {:.2} ms, invocation {} cycles",
        load.as_secs_f64() * 1e3,
        done.cycles
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let report = RunReport {
        e2e_ms: ms(finished - started),
        restore_ms: ms(restored - started),
        exec_ms: ms(finished - restored),
        checksum: format!("{:016x}", done.checksum),
        major_faults: major_faults(running.vm.pid()),
        rss_anon_kib,
        rss_file_kib,
        written_kib: 0,
        hint_exits: 0,
        fresh_bytes: 0,
        readahead_kib,
        prefetch,
        load_ms: Some(ms(load)),
        // Firecracker's process lives for this VM only; this process's share is the
        // handler and prefetch threads beside it.
        cpu_ms: cpu_of(running.vm.pid())
            .map(|fc| ms(fc + crate::run::process_cpu().saturating_sub(cpu_before))),
    };
    Ok((report, running))
}

/// Starts Firecracker and loads `snapshot` into it with memory backed as `backing`
/// (`record`: a userfaultfd handler that logs every fault). Returns the VM, the handler
/// beside it, the read-around window its memory file got, and the load call's time.
fn load(
    bin: &Binary,
    snapshot: &Snapshot,
    backing: ExternalBacking,
    record: bool,
) -> Result<(Vm, Option<OneVmm>, Option<u64>, Duration), FirecrackerError> {
    let vmstate = match &snapshot.state {
        store::SavedState::Firecracker(path) => path.clone(),
        store::SavedState::Builtin(_) => {
            return Err(StrategyError::UnsupportedVmm {
                strategy: "firecracker",
                vmm: Vmm::Builtin.name(),
                supported: Vmm::Firecracker.name().into(),
            }
            .into())
        }
    };
    let memory = snapshot.memory_path();
    let mut vm = Vm::spawn(bin)?;
    match backing {
        ExternalBacking::File { readahead_kib } => {
            // Firecracker opens the memory file itself: it gets this process's descriptor
            // of the file whose content was checked (its /proc link, which opens that
            // inode), not the path, which might name another file by then.
            let (checked, _) = crate::strategy::interface::open_memory(snapshot, None)?;
            let link = std::path::PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                std::os::fd::AsRawFd::as_raw_fd(&checked)
            ));
            let (loaded, window) =
                snapbpf_wss::readahead::with_window(&memory, readahead_kib, || {
                    vm.load_snapshot(&vmstate, MemBackend::File(&link))
                })?;
            drop(checked);
            Ok((vm, None, window, loaded?))
        }
        ExternalBacking::Userfault { install } => {
            let (source, _) = crate::strategy::interface::open_memory(snapshot, None)?;
            let handler = OneVmm::start(source, install, record)?;
            let loaded = vm.load_snapshot(&vmstate, MemBackend::Uffd(handler.socket()))?;
            Ok((vm, Some(handler), None, loaded))
        }
        ExternalBacking::Handler { socket } => {
            let loaded = vm.load_snapshot(&vmstate, MemBackend::Uffd(&socket))?;
            Ok((vm, None, None, loaded))
        }
    }
}

/// Major faults of process `pid` so far (all its threads: Firecracker's vCPU thread takes
/// the guest's).
/// CPU time (user + system) process `pid` has used, at the clock tick's resolution.
fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

fn major_faults(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            rest.split_whitespace().nth(9)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A record phase's invocation under Firecracker ([`ExternalRecorder`]).
#[derive(Debug)]
pub struct Recorder<'a> {
    snapshot: &'a Snapshot,
    input: u32,
    timeout: Duration,
}

impl<'a> Recorder<'a> {
    /// Records `snapshot` running `input`, for at most `timeout`.
    pub fn new(snapshot: &'a Snapshot, input: u32, timeout: Duration) -> Self {
        Self {
            snapshot,
            input,
            timeout,
        }
    }

    fn run_recorded(&self, backing: RecordBacking) -> Result<Vec<u64>, FirecrackerError> {
        let bin = binary()?;
        let external = match backing {
            RecordBacking::File => ExternalBacking::File { readahead_kib: 0 },
            RecordBacking::Userfault => ExternalBacking::Userfault { install: None },
        };
        let record = backing == RecordBacking::Userfault;
        let (vm, handler, _, _) = load(&bin, self.snapshot, external, record)?;
        let mut running = Running { vm, handler };
        guest::invoke(
            running.vm.serial(),
            self.input,
            Instant::now() + self.timeout,
        )?;
        let log = running.stop_handler()?;
        if record && log.is_empty() {
            return Err(io("record")(std::io::Error::other(
                "the recorded invocation faulted no page",
            )));
        }
        Ok(log)
    }
}

impl ExternalRecorder for Recorder<'_> {
    fn run(&self, backing: RecordBacking) -> Result<Vec<u64>, StrategyError> {
        self.run_recorded(backing)
            .map_err(|e| StrategyError::RecordElsewhere(Box::new(e)))
    }
}
