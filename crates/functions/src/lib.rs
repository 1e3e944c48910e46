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
//! Beside the suite, `footprint` (not a workload) takes an argument: its init footprint
//! and the working set each invocation reads, for the scale measurements. A function
//! with its argument is a [`Call`], written `name` or `name:argument`
//! (`footprint:6144:64`) wherever the command line, a snapshot or a benchmark names a
//! function.
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
pub mod footprint;
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
    /// The argument the function takes, if any (see [`Call`]).
    pub arg: Option<ArgSpec>,
}

/// The argument a function takes: how it is written and what it needs.
#[derive(Debug, Clone, Copy)]
pub struct ArgSpec {
    /// How the argument is written, for messages.
    pub syntax: &'static str,
    /// The argument when a call names none.
    pub default: u64,
    /// Parses the written argument; `None` when it is malformed or out of range.
    pub parse: fn(&str) -> Option<u64>,
    /// Writes the argument as [`ArgSpec::parse`] reads it.
    pub render: fn(u64, &mut dyn core::fmt::Write) -> core::fmt::Result,
    /// Guest memory the function needs with this argument, in MiB.
    pub mem_mib: fn(u64) -> u32,
}

/// A function of the suite with its argument: what one VM runs.
///
/// Written `name` (the function's default argument, if it takes one) or
/// `name:argument`; [`Call::parse`] reads that and [`core::fmt::Display`] writes it back
/// in canonical form.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The function.
    pub info: &'static FunctionInfo,
    /// Its index in [`FUNCTIONS`], the number the VMM passes to the guest.
    pub index: u32,
    /// Its argument (0 for a function that takes none).
    pub arg: u64,
}

/// Why a written call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No function has this name.
    UnknownFunction,
    /// The function takes no argument but one was given.
    NoArgument,
    /// The argument does not parse; the syntax it should follow.
    BadArgument(&'static str),
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownFunction => {
                write!(f, "no function of that name (see `snapbpf functions`)")
            }
            Self::NoArgument => write!(f, "the function takes no argument"),
            Self::BadArgument(syntax) => write!(f, "its argument is written {syntax}"),
        }
    }
}

impl core::error::Error for CallError {}

impl Call {
    /// Reads `name` or `name:argument`.
    pub fn parse(text: &str) -> Result<Self, CallError> {
        let (name, arg) = match text.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (text, None),
        };
        let index = index_of(name).ok_or(CallError::UnknownFunction)?;
        let info = &FUNCTIONS[index as usize];
        let arg = match (info.arg, arg) {
            (None, None) => 0,
            (None, Some(_)) => return Err(CallError::NoArgument),
            (Some(spec), None) => spec.default,
            (Some(spec), Some(text)) => {
                (spec.parse)(text).ok_or(CallError::BadArgument(spec.syntax))?
            }
        };
        Ok(Self { info, index, arg })
    }

    /// Guest memory this call needs by default, in MiB.
    pub fn mem_mib(&self) -> u32 {
        match self.info.arg {
            Some(spec) => self.info.mem_mib.max((spec.mem_mib)(self.arg)),
            None => self.info.mem_mib,
        }
    }

    /// Runs the init phase.
    pub fn init(&self) -> Box<dyn Function> {
        match init(self.index, self.arg) {
            Some(function) => function,
            None => unreachable!("a Call names a function of FUNCTIONS"),
        }
    }
}

impl core::fmt::Display for Call {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.info.name)?;
        if let Some(spec) = self.info.arg {
            f.write_str(":")?;
            (spec.render)(self.arg, f)?;
        }
        Ok(())
    }
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
    footprint::INFO,
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

/// Runs the init phase of the function at `index` in [`FUNCTIONS`] with argument `arg`
/// (ignored by a function that takes none).
pub fn init(index: u32, arg: u64) -> Option<Box<dyn Function>> {
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
        "footprint" => boxed(info, footprint::Footprint::init(arg)),
        _ => return None,
    })
}
