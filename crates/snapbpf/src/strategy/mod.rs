//! Restore strategies: how a snapshot's memory is brought back for a new VM.
//!
//! A strategy is policy over shared mechanisms (the VMM, page-cache helpers, capture and
//! prefetch engines). It decides how guest memory is backed, what runs beside the vCPU
//! (prefetchers, fault handlers) and what it records ahead of time. Adding a strategy is
//! adding a module here and one line to [`registry`]; nothing else names it.
//!
//! The modules point one way: [`registry`] imports every strategy; a strategy imports
//! [`spec`] (the vocabulary of its registry row and options) and [`interface`] (the trait
//! it implements and the helpers its artifacts go through), and neither of those imports
//! a strategy or the registry.

pub mod interface;
pub mod registry;
pub mod spec;

mod faasnap;
mod linux;
mod reap;
mod sabre;
mod snapbpf;
mod snapfaas;

pub use interface::{
    check_vmm, record, ExternalBacking, ExternalPlan, ExternalRecorder, RecordBacking,
    RecordReport, Strategy, StrategyError,
};
pub use interface::{Helpers, LoaderFuzz, PrefetchReport, Restored, FUZZ_MEMORY_BYTES};
pub use registry::REGISTRY;
pub use spec::{OptionInfo, SpecError, StrategyInfo, StrategySpec};
