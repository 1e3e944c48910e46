//! The function suite run inside snapbpf's microVMs.
//!
//! Every function is plain `no_std` + `alloc` Rust so the same code runs in two places:
//! freestanding inside the guest (crate `snapbpf-guest`) and on the host as the reference
//! run that tests compare guest checksums against.
//!
//! A function has two phases, as a snapshotted serverless function does:
//! - [`init`] builds its initialised state (models, tables, runtime footprint). The guest
//!   reports ready after it, and the snapshot captures that state.
//! - [`Function::invoke`] serves one request for an input number, reading part of the state
//!   and allocating fresh working memory, and returns a checksum of its output.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

use alloc::boxed::Box;

mod checksum;
mod pyaes;

pub use checksum::Checksum;

/// Static description of one function of the suite.
#[derive(Debug, Clone, Copy)]
pub struct FunctionInfo {
    /// Name used on the command line and in snapshots.
    pub name: &'static str,
    /// One-line description of what the function computes.
    pub description: &'static str,
    /// Guest memory, in MiB, the function's VM gets by default.
    pub mem_mib: u32,
    /// Number of distinct inputs the function accepts (`0..inputs`).
    pub inputs: u32,
}

/// A function whose init phase has run and which can serve invocations.
pub trait Function {
    /// Serves one invocation for `input` and returns the checksum of its output.
    ///
    /// Must be deterministic: the same function, state and input give the same checksum on
    /// the host and in the guest.
    fn invoke(&mut self, input: u32) -> u64;
}

/// Every function of the suite.
pub const FUNCTIONS: &[FunctionInfo] = &[pyaes::INFO];

/// Looks a function up by name.
pub fn info(name: &str) -> Option<&'static FunctionInfo> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// Index of a function in [`FUNCTIONS`], the number the VMM passes to the guest.
pub fn index_of(name: &str) -> Option<u32> {
    FUNCTIONS
        .iter()
        .position(|f| f.name == name)
        .map(|i| i as u32)
}

/// Runs the init phase of the function at `index` in [`FUNCTIONS`].
pub fn init(index: u32) -> Option<Box<dyn Function>> {
    let info = FUNCTIONS.get(index as usize)?;
    Some(match info.name {
        "pyaes" => Box::new(pyaes::Pyaes::init()),
        _ => return None,
    })
}
