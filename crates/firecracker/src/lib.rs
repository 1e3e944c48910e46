//! Drives an unmodified Firecracker: mechanism only, no strategy and no snapshot directory.
//!
//! - [`Binary`]: which Firecracker (`--firecracker PATH`, else `$FIRECRACKER`, else
//!   `firecracker` on `PATH`) and its version.
//! - [`Vm`]: one Firecracker process. Its API socket and log live in a private directory
//!   (mode 0700) removed with it; its stdin and stdout are the guest's serial port
//!   ([`Serial`]); it dies with us (`PR_SET_PDEATHSIG`), and is killed, reaped and cleaned
//!   up on drop and on SIGINT/SIGTERM ([`snapbpf_os::interrupt`]). Its API is driven over a
//!   minimal HTTP/1.1 client: boot an ELF, pause, create a full snapshot, load one with
//!   the `File` or `Uffd` memory backend ([`MemBackend`]).
//! - [`guest`]: the line protocol the snapbpf guest speaks on the serial port
//!   ([`snapbpf_guest_abi::serial`]): wait for ready, invoke.
//!
//! Every wait has a deadline, and a Firecracker that fails to start, dies, or answers an
//! API call with an error gives an error naming what failed, with Firecracker's
//! `fault_message` and the last line of its log.
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::{Duration, Instant};
//! use snapbpf_firecracker::{guest, Binary, MachineConfig, MemBackend, Vm};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bin = Binary::locate(None)?;
//! let mut vm = Vm::spawn(&bin)?;
//! let machine = MachineConfig { mem_mib: 64, vcpus: 1, track_dirty_pages: true };
//! vm.boot(Path::new("guest.elf"), "snapbpf.function=0", machine)?;
//! let ready = guest::wait_ready(vm.serial(), Instant::now() + Duration::from_secs(60))?;
//! vm.pause()?;
//! vm.create_snapshot(Path::new("vmstate"), Path::new("memory"))?;
//! drop(vm);
//!
//! let mut vm = Vm::spawn(&bin)?;
//! let took = vm.load_snapshot(Path::new("vmstate"), MemBackend::File(Path::new("memory")))?;
//! let done = guest::invoke(vm.serial(), 0, Instant::now() + Duration::from_secs(60))?;
//! println!("function {} restored in {took:?}: {:016x}", ready.function, done.checksum);
//! # Ok(())
//! # }
//! ```

mod binary;
pub mod guest;
mod http;
mod process;
mod serial;
mod vm;

pub use binary::{Binary, LocateError};
pub use http::HttpError;
pub use serial::{Serial, SerialError, MAX_LINE};
pub use vm::{
    ApiError, MachineConfig, MemBackend, SpawnError, Vm, API_TIMEOUT, CREATE_TIMEOUT, LOAD_TIMEOUT,
    SPAWN_TIMEOUT,
};

/// How an error shows the last line of Firecracker's log: `"; its log: <line>"`, or
/// nothing when the log is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogTail(pub String);

impl std::fmt::Display for LogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "; Firecracker's log: {}", self.0)
        }
    }
}
