//! `faultprobe`: touches one word per 4 KiB page of a large region and does nothing else,
//! so an invocation's time is its page faults. The bench restores it under strategies that
//! fault in one way each and divides by the faults taken: the host's cost of a 4 KiB read
//! fault on a page-cache mapping, of a 4 KiB anonymous write fault and of a 2 MiB fault,
//! as our VMM meets them. Not a workload.
//!
//! - Input 0 reads one word of every page of the 64 MiB built at init (snapshot data).
//! - Input 1 writes one word of every page of a fresh 64 MiB allocation (never in the
//!   snapshot: the guest's allocator reports it fresh).

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "faultprobe",
    description: "one word per 4 KiB page of 64 MiB, read from the snapshot (input 0) or written fresh (input 1): fault-cost calibration, not a workload",
    mem_mib: 192,
    inputs: 2,
    workload: false,
    arg: None,
};

/// Bytes of the region each invocation touches.
pub const REGION_BYTES: usize = 64 << 20;
/// Pages of that region: the faults an invocation takes at 4 KiB.
pub const REGION_PAGES: usize = REGION_BYTES / 4096;
const WORDS_PER_PAGE: usize = 4096 / 8;

pub(crate) struct FaultProbe {
    state: Box<[u64]>,
}

impl FaultProbe {
    pub(crate) fn init() -> Self {
        Self {
            state: (0..REGION_BYTES as u64 / 8)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
                .collect(),
        }
    }
}

impl Function for FaultProbe {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        if input == 0 {
            let total = self
                .state
                .iter()
                .step_by(WORDS_PER_PAGE)
                .fold(0u64, |a, &w| a.wrapping_add(w));
            sum.update_u64(total);
        } else {
            let mut fresh: Vec<u64> = Vec::with_capacity(REGION_BYTES / 8);
            let spare = fresh.spare_capacity_mut();
            for (page, word) in spare.iter_mut().step_by(WORDS_PER_PAGE).enumerate() {
                word.write(page as u64);
            }
            // The writes are the measurement: keep them.
            core::hint::black_box(&mut *spare);
            sum.update_u64(spare.len() as u64);
        }
        sum.value()
    }
}
