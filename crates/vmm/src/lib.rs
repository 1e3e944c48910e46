//! A minimal KVM microVM for snapshot-restored serverless functions.
//!
//! One memory region at GPA 0, one vCPU, no devices and no interrupts: the guest is a
//! freestanding program that runs at CPL 3 on page tables the VMM builds and talks to the
//! VMM through MMIO hypercalls (see [`snapbpf_guest_abi`]). This keeps every guest
//! instruction native on hosts whose nested KVM emulates ring 0.
//!
//! The crate is mechanism only. How guest memory is backed (anonymous, a private file
//! mapping of a snapshot, userfaultfd) is decided by the caller, which passes a
//! [`GuestMemory`] to [`MicroVm::new`] and an [`ExitHandler`] to [`MicroVm::run`].
//!
//! ```no_run
//! use std::time::Duration;
//! use snapbpf_vmm::{GuestEvent, GuestMemory, IgnoreHints, MicroVm};
//! # fn demo(image: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let mut vm = MicroVm::new(GuestMemory::anonymous(64 << 20)?)?;
//! vm.boot(image, 0, 0)?;
//! assert_eq!(vm.run(&mut IgnoreHints, Duration::from_secs(10))?, GuestEvent::Ready);
//! let state = vm.save_state()?; // snapshot point
//! vm.set_input(0)?;
//! let GuestEvent::Done { checksum } = vm.run(&mut IgnoreHints, Duration::from_secs(10))? else {
//!     unreachable!()
//! };
//! # let _ = (state, checksum); Ok(()) }
//! ```

pub mod layout;
pub mod memory;
pub mod vcpu_state;
pub mod vm;

pub use memory::{huge_pages_available, FaultReadahead, GuestMemory, MemoryError, Populator};
pub use snapbpf_guest_abi as abi;
pub use vcpu_state::{VcpuState, VcpuStateError};
pub use vm::{
    AbortSignal, BootError, CreateError, ExitHandler, ExitStats, FreshRun, GuestEvent, IgnoreHints,
    MicroVm, RunError, StateError,
};
