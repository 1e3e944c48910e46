//! The microVM: one KVM VM with one memory slot and one vCPU, and its run loop.

use std::io::Write;
use std::sync::mpsc;
use std::sync::Once;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use snapbpf_guest_abi::{
    FreshRange, Mailbox, RamLayout, CONSOLE_BYTES, HC_CONSOLE, HC_DONE, HC_FRESH_HINTS, HC_PANIC,
    HC_READY, HYPERCALL_BASE, MAILBOX_GPA, MAILBOX_MAGIC, MAX_HINTS, PAGE_SIZE, PML4_GPA,
    STACK_TOP,
};
use std::mem::offset_of;

use crate::layout::{self, ImageError};
use crate::memory::{GuestMemory, MemoryError};
use crate::vcpu_state::VcpuState;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// /dev/kvm could not be opened, or is not a KVM device.
    #[error("cannot open /dev/kvm: {0} (KVM must be available and usable by this user; snapbpf runs as root)")]
    OpenKvm(kvm_ioctls::Error),
    /// A KVM ioctl failed while setting the VM up.
    #[error("KVM setup failed at {step}: {source}")]
    Kvm {
        /// What was being done.
        step: &'static str,
        /// The error from KVM.
        source: kvm_ioctls::Error,
    },
}

/// Errors booting a guest image in a fresh VM.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image could not be loaded.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Writing boot structures failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Setting the initial registers failed.
    #[error("cannot set initial vCPU registers: {0}")]
    Registers(kvm_ioctls::Error),
}

/// Errors saving or loading vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM register ioctl failed.
    #[error("KVM {step} failed: {source}")]
    Kvm {
        /// Which ioctl.
        step: &'static str,
        /// The error from KVM.
        source: kvm_ioctls::Error,
    },
}

/// Errors while the guest runs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// KVM_RUN failed.
    #[error("KVM_RUN failed: {0}")]
    Kvm(kvm_ioctls::Error),
    /// A page of guest memory could not be brought in: the file behind it failed to read
    /// (an I/O error from the disk, or from a mount that could not fetch it).
    #[error("guest memory could not be faulted in: reading the file behind it failed (see the mount's or the kernel's log)")]
    MemoryFault(#[source] kvm_ioctls::Error),
    /// The guest triple-faulted (an exception with no IDT, e.g. a bad memory access).
    #[error("guest triple fault (unhandled exception) at rip {rip:#x}")]
    TripleFault {
        /// Instruction pointer at shutdown, if it could be read.
        rip: u64,
    },
    /// The guest accessed an address that is neither RAM nor a hypercall.
    #[error("guest {kind} of {len} bytes at unknown MMIO address {addr:#x}")]
    UnknownMmio {
        /// "read" or "write".
        kind: &'static str,
        /// Guest-physical address.
        addr: u64,
        /// Access size.
        len: usize,
    },
    /// KVM reported an exit the VMM does not expect from this guest.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
    /// The guest ran longer than allowed.
    #[error("guest did not finish within {0:?}")]
    Timeout(Duration),
    /// The guest runtime panicked.
    #[error("guest panic: {0}")]
    GuestPanic(String),
    /// The exit handler could not act on a fresh-allocation hint.
    #[error("fresh-allocation hint failed")]
    Hint(#[source] MemoryError),
    /// Guest memory access failed while handling an exit.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Another thread raised the run's [`AbortSignal`]: it can no longer give the guest
    /// correct memory, so the vCPU was stopped rather than let run on pages it was not
    /// given. The raiser reports the cause.
    #[error("the vCPU was stopped: a helper could not serve guest memory")]
    Aborted,
}

/// A request, from any thread, to stop a VM's vCPU now: a page-fault handler that can no
/// longer serve correct pages raises it (fail closed). The vCPU is kicked out of
/// `KVM_RUN` (a fault it waits on is interrupted) and the run ends with
/// [`RunError::Aborted`].
#[derive(Debug, Clone, Default)]
pub struct AbortSignal(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl AbortSignal {
    /// A signal not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the vCPU to stop.
    pub fn raise(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`AbortSignal::raise`] was called.
    pub fn is_raised(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A guest event that ends [`MicroVm::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// The init phase finished: the VM is ready to be snapshotted.
    Ready,
    /// An invocation finished with this output checksum.
    Done {
        /// Checksum of the invocation's output.
        checksum: u64,
    },
}

/// A run of guest RAM named by a fresh-allocation hint, as RAM offsets (the guest's
/// guest-physical hint, converted by the VMM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshRun {
    /// RAM offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Receives the hypercalls a strategy may act on while the guest runs.
pub trait ExitHandler {
    /// The guest is about to use these runs of RAM, which were free when the snapshot was
    /// taken. A filtering strategy backs them with anonymous memory.
    fn fresh_ranges(&mut self, mem: &GuestMemory, ranges: &[FreshRun]) -> Result<(), MemoryError>;
}

/// An [`ExitHandler`] that ignores hints: the guest memory stays as it is.
#[derive(Debug, Default)]
pub struct IgnoreHints;

impl ExitHandler for IgnoreHints {
    fn fresh_ranges(&mut self, _: &GuestMemory, _: &[FreshRun]) -> Result<(), MemoryError> {
        Ok(())
    }
}

/// Counters of the exits a run took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// Every return from KVM_RUN.
    pub exits: u64,
    /// Fresh-allocation hint hypercalls.
    pub hint_exits: u64,
    /// Bytes covered by fresh-allocation hints.
    pub hinted_bytes: u64,
}

/// A KVM microVM with one vCPU.
#[derive(Debug)]
pub struct MicroVm {
    vcpu: VcpuFd,
    vm: VmFd,
    _kvm: Kvm,
    mem: GuestMemory,
    stats: ExitStats,
}

fn kvm_step(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CreateError {
    move |source| CreateError::Kvm { step, source }
}

impl MicroVm {
    /// Creates a VM whose RAM is `mem`, with one vCPU exposing the host's supported CPUID.
    pub fn new(mem: GuestMemory) -> Result<Self, CreateError> {
        let kvm = Kvm::new().map_err(CreateError::OpenKvm)?;
        if kvm.get_api_version() != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(CreateError::OpenKvm(kvm_ioctls::Error::new(libc::ENOTTY)));
        }
        let vm = kvm.create_vm().map_err(kvm_step("KVM_CREATE_VM"))?;
        // One slot per RAM region, both over the one mapping: the file's image.
        let layout = RamLayout::builtin(mem.len());
        for (slot, region) in [Some(layout.low()), layout.high()]
            .into_iter()
            .flatten()
            .enumerate()
        {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.gpa,
                memory_size: region.len,
                userspace_addr: mem.host_base() as u64 + region.offset,
            };
            // SAFETY: the region lies inside the mapping owned by `mem` (the layout splits
            // exactly its length), which this MicroVm owns and drops only after the VM fd
            // (field order: `vcpu`, `vm` drop before `mem`).
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_step("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let vcpu = vm.create_vcpu(0).map_err(kvm_step("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_step("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(kvm_step("KVM_SET_CPUID2"))?;
        Ok(Self {
            vcpu,
            vm,
            _kvm: kvm,
            mem,
            stats: ExitStats::default(),
        })
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Counters of the exits taken so far.
    pub fn exit_stats(&self) -> ExitStats {
        self.stats
    }

    /// Loads `image` and prepares the vCPU to start it at CPL 3.
    pub fn boot(
        &mut self,
        image: &[u8],
        function: u32,
        function_arg: u64,
    ) -> Result<(), BootError> {
        let loaded = layout::load_elf(&self.mem, image)?;
        layout::build_page_tables(&self.mem)?;
        layout::init_mailbox(&self.mem, function, function_arg, loaded.end, false)?;
        let mut state = VcpuState {
            sregs: self.vcpu.get_sregs().map_err(BootError::Registers)?,
            ..VcpuState::default()
        };
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x18 | 3,
            type_: 0xb,
            present: 1,
            dpl: 3,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..kvm_segment::default()
        };
        let data = kvm_segment {
            selector: 0x20 | 3,
            type_: 0x3,
            db: 1,
            l: 0,
            ..code
        };
        let s = &mut state.sregs;
        s.cs = code;
        (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
        // CR0: PE | MP | ET | NE | WP | PG. EM clear so SSE executes.
        s.cr0 = 0x8001_0033;
        // CR4: PAE | OSFXSR | OSXMMEXCPT. OSXSAVE stays clear: the guest uses SSE only.
        s.cr4 = 0x620;
        s.cr3 = PML4_GPA;
        // EFER: LME | LMA.
        s.efer = 0x500;
        // No IDT: any exception escalates to a triple fault the VMM reports.
        s.idt.base = 0;
        s.idt.limit = 0;
        state.regs.rip = loaded.entry;
        state.regs.rsp = STACK_TOP;
        state.regs.rflags = 0x2;
        state.fpu.fcw = 0x37f;
        state.fpu.mxcsr = 0x1f80;
        self.set_state(&state).map_err(|e| match e {
            StateError::Kvm { source, .. } => BootError::Registers(source),
        })?;
        Ok(())
    }

    /// Loads saved register state into the vCPU.
    pub fn set_state(&mut self, state: &VcpuState) -> Result<(), StateError> {
        let kvm = |step| move |source| StateError::Kvm { step, source };
        self.vcpu
            .set_sregs(&state.sregs)
            .map_err(kvm("KVM_SET_SREGS"))?;
        self.vcpu
            .set_regs(&state.regs)
            .map_err(kvm("KVM_SET_REGS"))?;
        self.vcpu.set_fpu(&state.fpu).map_err(kvm("KVM_SET_FPU"))?;
        Ok(())
    }

    /// Saves the vCPU's register state, first completing any instruction KVM left half
    /// done at the last exit (an MMIO write), so the state resumes after it.
    pub fn save_state(&mut self) -> Result<VcpuState, StateError> {
        let kvm = |step| move |source| StateError::Kvm { step, source };
        self.vcpu.set_kvm_immediate_exit(1);
        let completed = self.vcpu.run().map(|_| ()).map_err(|e| e.errno());
        self.vcpu.set_kvm_immediate_exit(0);
        match completed {
            Ok(()) | Err(libc::EINTR) => {}
            Err(errno) => {
                return Err(StateError::Kvm {
                    step: "KVM_RUN (complete pending I/O)",
                    source: kvm_ioctls::Error::new(errno),
                })
            }
        }
        Ok(VcpuState {
            regs: self.vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: self.vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            fpu: self.vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?,
        })
    }

    /// Writes the input of the next invocation into the mailbox.
    pub fn set_input(&mut self, input: u32) -> Result<(), MemoryError> {
        layout::set_input(&self.mem, input)
    }

    /// Turns fresh-allocation hints on or off for the following invocations.
    pub fn set_hints_enabled(&mut self, enabled: bool) -> Result<(), MemoryError> {
        layout::set_hints_enabled(&self.mem, enabled)
    }

    /// Checks that guest memory holds a mailbox of this ABI (a restored snapshot).
    pub fn mailbox_matches_abi(&self) -> Result<bool, MemoryError> {
        let (magic, version) = layout::mailbox_identity(&self.mem)?;
        Ok(magic == MAILBOX_MAGIC && version == snapbpf_guest_abi::ABI_VERSION)
    }

    /// Runs the vCPU until the guest reports ready or done, an error, or `timeout`.
    pub fn run(
        &mut self,
        handler: &mut dyn ExitHandler,
        timeout: Duration,
    ) -> Result<GuestEvent, RunError> {
        self.run_abortable(handler, timeout, &AbortSignal::new())
    }

    /// [`MicroVm::run`], also ended by `abort` being raised from another thread.
    pub fn run_abortable(
        &mut self,
        handler: &mut dyn ExitHandler,
        timeout: Duration,
        abort: &AbortSignal,
    ) -> Result<GuestEvent, RunError> {
        let deadline = Instant::now() + timeout;
        let _watchdog = Watchdog::arm(timeout, abort.clone());
        loop {
            if abort.is_raised() {
                return Err(RunError::Aborted);
            }
            let exit = self.vcpu.run();
            self.stats.exits += 1;
            let exit = match exit {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if abort.is_raised() {
                        return Err(RunError::Aborted);
                    }
                    if Instant::now() >= deadline {
                        return Err(RunError::Timeout(timeout));
                    }
                    continue;
                }
                Err(e) if e.errno() == libc::EFAULT => return Err(RunError::MemoryFault(e)),
                Err(e) => return Err(RunError::Kvm(e)),
            };
            let (offset, value) = match exit {
                VcpuExit::MmioWrite(addr, data)
                    if (HYPERCALL_BASE..HYPERCALL_BASE + PAGE_SIZE).contains(&addr)
                        && data.len() == 8 =>
                {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(data);
                    (addr - HYPERCALL_BASE, u64::from_le_bytes(v))
                }
                VcpuExit::MmioWrite(addr, data) => {
                    return Err(RunError::UnknownMmio {
                        kind: "write",
                        addr,
                        len: data.len(),
                    })
                }
                VcpuExit::MmioRead(addr, data) => {
                    return Err(RunError::UnknownMmio {
                        kind: "read",
                        addr,
                        len: data.len(),
                    })
                }
                VcpuExit::Shutdown => {
                    let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    return Err(RunError::TripleFault { rip });
                }
                VcpuExit::Intr => {
                    if abort.is_raised() {
                        return Err(RunError::Aborted);
                    }
                    if Instant::now() >= deadline {
                        return Err(RunError::Timeout(timeout));
                    }
                    continue;
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    return Err(RunError::UnexpectedExit(format!(
                        "entry failed (hardware reason {reason:#x}, cpu {cpu})"
                    )))
                }
                other => return Err(RunError::UnexpectedExit(format!("{other:?}"))),
            };
            match offset {
                HC_READY if value == MAILBOX_MAGIC => return Ok(GuestEvent::Ready),
                HC_DONE => return Ok(GuestEvent::Done { checksum: value }),
                HC_CONSOLE => {
                    let msg = self.console_message(value)?;
                    // Best effort: a closed stderr must not end the VM (eprintln would panic).
                    let _ = writeln!(std::io::stderr(), "[guest] {}", msg.trim_end());
                }
                HC_PANIC => return Err(RunError::GuestPanic(self.console_message(value)?)),
                HC_FRESH_HINTS => {
                    let ranges = self.read_hints(value)?;
                    self.stats.hint_exits += 1;
                    // The guest chooses the lengths: count only what the handler accepted,
                    // and never overflow.
                    handler
                        .fresh_ranges(&self.mem, &ranges)
                        .map_err(RunError::Hint)?;
                    self.stats.hinted_bytes = ranges
                        .iter()
                        .fold(self.stats.hinted_bytes, |sum, r| sum.saturating_add(r.len));
                }
                _ => {
                    return Err(RunError::UnknownMmio {
                        kind: "write",
                        addr: HYPERCALL_BASE + offset,
                        len: 8,
                    })
                }
            }
        }
    }

    fn console_message(&self, len: u64) -> Result<String, MemoryError> {
        let len = (len as usize).min(CONSOLE_BYTES);
        let mut buf = vec![0u8; len];
        self.mem
            .read(MAILBOX_GPA + offset_of!(Mailbox, console) as u64, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The guest's hints, as RAM offsets: a hint that does not lie in one RAM region is
    /// refused.
    fn read_hints(&self, count: u64) -> Result<Vec<FreshRun>, MemoryError> {
        let count = (count as usize).min(MAX_HINTS);
        let base = MAILBOX_GPA + offset_of!(Mailbox, hints) as u64;
        let layout = RamLayout::builtin(self.mem.len());
        (0..count)
            .map(|i| {
                let at = base + (i * std::mem::size_of::<FreshRange>()) as u64;
                let (gpa, len) = (self.mem.read_u64(at)?, self.mem.read_u64(at + 8)?);
                let offset = layout.offset_of(gpa, len).ok_or(MemoryError::OutOfRange {
                    offset: gpa,
                    len,
                    size: self.mem.len(),
                })?;
                Ok(FreshRun { offset, len })
            })
            .collect()
    }

    /// The VM file descriptor, for strategies that need VM-level ioctls.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }
}

/// Interrupts KVM_RUN on the current thread once a timeout passes or an abort is raised,
/// by sending it a signal whose handler does nothing (so KVM_RUN returns EINTR) until the
/// run loop ends.
struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the watchdog looks at the abort signal.
const ABORT_POLL: Duration = Duration::from_millis(5);

extern "C" fn noop_signal_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

impl Watchdog {
    fn arm(timeout: Duration, abort: AbortSignal) -> Self {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            // Without the handler, the signal would kill the process instead of only
            // interrupting KVM_RUN. Failing to install it only loses the timeout.
            if let Err(e) =
                vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_signal_handler)
            {
                tracing::warn!("cannot install the vCPU timeout signal handler: {e}");
            }
        });
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let (cancel, cancelled) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vcpu-watchdog".into())
            .spawn(move || {
                let deadline = Instant::now() + timeout;
                // Short naps, so an abort stops the vCPU within a few ms.
                while !abort.is_raised() && Instant::now() < deadline {
                    let nap = deadline
                        .saturating_duration_since(Instant::now())
                        .min(ABORT_POLL);
                    if cancelled.recv_timeout(nap) != Err(mpsc::RecvTimeoutError::Timeout) {
                        return;
                    }
                }
                // Keep kicking: a signal that lands between two KVM_RUN calls is lost.
                while cancelled.recv_timeout(Duration::from_millis(20))
                    == Err(mpsc::RecvTimeoutError::Timeout)
                {
                    // SAFETY: `target` is the vCPU thread, alive until this watchdog is
                    // dropped (it joins us first); the signal has a no-op handler.
                    unsafe { libc::pthread_kill(target, kick_signal()) };
                }
            })
            .ok();
        Self {
            cancel: Some(cancel),
            thread,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
