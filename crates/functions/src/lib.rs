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
//!
//! Every function also carries a simulated language-runtime heap (module `runtime`) that
//! its invocations partly walk, as a Python function's interpreter and libraries are.
//!
//! The suite mirrors the paper's workloads (FunctionBench and FaaSMem). "Touched" is an
//! estimate from the data-structure sizes (see each module's documentation); "referenced"
//! was measured on the host by the ignored test `measure_referenced_memory_per_invocation`
//! (pages referenced during one invocation, mostly state pages since the host allocator
//! unmaps large freed buffers); "fresh" is memory allocated and freed within one invocation.
//!
//! | function       | mem_mib | state MiB | touched MiB (estimate) | referenced MiB | fresh MiB |
//! |----------------|---------|-----------|------------------------|----------------|-----------|
//! | `pyaes`        | 64      | 21        | ~14                    | 14 / 16        | 2         |
//! | `gzip`         | 64      | 23        | ~14                    | 18 / 18        | 3         |
//! | `linpack`      | 64      | 25        | ~18 / ~21 (fresh)      | 22 / 24        | 4 / 6     |
//! | `image`        | 192     | 39        | ~115 (fresh)           | 56 / 56        | 91        |
//! | `rnn`          | 256     | 130       | ~67                    | 73 / 73        | < 1       |
//! | `bert`         | 512     | 318       | ~272                   | 279 / 280      | 3         |
//! | `graph_bfs`    | 192     | 97        | ~85 / ~67              | 87 / 68        | 16        |
//! | `html_serving` | 160     | 72        | ~45                    | 43 / 43        | 3         |
//!
//! (`a / b` is input 0 / input 1.)
//!
//! Determinism rules for code in this crate: only `core` and `alloc`, no hashing with random
//! seeds, floating point only through plain IEEE operations and the `libm` crate, and a
//! fixed evaluation order for every reduction.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

use alloc::boxed::Box;

mod bert;
mod checksum;
pub mod faultprobe;
mod graph_bfs;
mod gzip;
mod heapcheck;
mod html_serving;
mod image;
mod linalg;
mod linpack;
mod pyaes;
mod rnn;
pub mod runtime;
mod synth;
#[cfg(test)]
mod tests;

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
    /// Number of distinct inputs the function accepts (`0..inputs`); larger input numbers
    /// are taken modulo `inputs`.
    pub inputs: u32,
    /// A serverless workload of the evaluation; `false` for correctness checks, which
    /// benchmarks leave out.
    pub workload: bool,
}

/// A function whose init phase has run and which can serve invocations.
pub trait Function {
    /// Serves one invocation for `input` and returns the checksum of its output.
    ///
    /// Must be deterministic: the same function, state and input give the same checksum on
    /// the host and in the guest. Functions returned by [`init`] take `input` modulo
    /// [`FunctionInfo::inputs`]. An invocation frees all the memory it allocates and leaves
    /// the state as it found it, so invocations can repeat.
    fn invoke(&mut self, input: u32) -> u64;
}

/// A function with its input count, mapping out-of-range inputs back into `0..inputs`.
struct InputsModulo<F> {
    inputs: u32,
    function: F,
}

impl<F: Function> Function for InputsModulo<F> {
    fn invoke(&mut self, input: u32) -> u64 {
        self.function.invoke(input % self.inputs)
    }
}

/// Boxes `function`, whose description is `info`, behind the input mapping.
fn boxed<F: Function + 'static>(info: &FunctionInfo, function: F) -> Box<dyn Function> {
    Box::new(InputsModulo {
        inputs: info.inputs.max(1),
        function,
    })
}

/// Every function of the suite.
pub const FUNCTIONS: &[FunctionInfo] = &[
    pyaes::INFO,
    gzip::INFO,
    linpack::INFO,
    image::INFO,
    rnn::INFO,
    bert::INFO,
    graph_bfs::INFO,
    html_serving::INFO,
    heapcheck::INFO,
    faultprobe::INFO,
];

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
        "pyaes" => boxed(info, pyaes::Pyaes::init()),
        "gzip" => boxed(info, gzip::Gzip::init()),
        "linpack" => boxed(info, linpack::Linpack::init()),
        "image" => boxed(info, image::Image::init()),
        "rnn" => boxed(info, rnn::Rnn::init()),
        "bert" => boxed(info, bert::Bert::init()),
        "graph_bfs" => boxed(info, graph_bfs::GraphBfs::init()),
        "html_serving" => boxed(info, html_serving::HtmlServing::init()),
        "heapcheck" => boxed(info, heapcheck::HeapCheck::init()),
        "faultprobe" => boxed(info, faultprobe::FaultProbe::init()),
        _ => return None,
    })
}
