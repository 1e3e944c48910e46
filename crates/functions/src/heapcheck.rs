//! `heapcheck`: an allocator torture test across the snapshot boundary, not a benchmark.
//!
//! Init leaves live buffers interleaved with freed garbage (pages that are free at
//! snapshot time, some sharing a page with live data). Every invocation then allocates,
//! zero-allocates, grows, frees and re-allocates memory that reuses those pages, writes
//! and reads it back, and reads every live init-time buffer. Its checksum covers all of
//! it, so if fresh-allocation filtering ever replaced a page that still held live data, or
//! a zeroed allocation were not zero, the guest's checksum would differ from the host's.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "heapcheck",
    description:
        "allocator torture test across the snapshot boundary (correctness check, not a workload)",
    mem_mib: 64,
    inputs: 2,
    workload: false,
    arg: None,
};

pub(crate) struct HeapCheck {
    /// Live at snapshot: small buffers, each with its own pattern.
    live_small: Vec<Vec<u8>>,
    /// Live at snapshot: one large buffer.
    live_large: Box<[u64]>,
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl HeapCheck {
    pub(crate) fn init() -> Self {
        let mut live_small = Vec::new();
        let mut garbage = Vec::new();
        for i in 0..512u64 {
            // 3 KiB and 9 KiB blocks interleave, so freed blocks share pages with live ones.
            let len = if i % 2 == 0 { 3 << 10 } else { 9 << 10 };
            let block = pattern(i + 1, len);
            if i % 3 == 0 {
                garbage.push(block);
            } else {
                live_small.push(block);
            }
        }
        let big_garbage = vec![0xabu8; 16 << 20];
        let live_large: Box<[u64]> = (0..(4u64 << 20) / 8)
            .map(|i| i.wrapping_mul(0x9e37_79b9))
            .collect();
        drop(big_garbage);
        drop(garbage);
        Self {
            live_small,
            live_large,
        }
    }
}

impl Function for HeapCheck {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        let scale = 1 + input as usize;
        // A zeroed allocation must read as zero, fresh or not.
        let zeroed = vec![0u8; (6 << 20) * scale];
        sum.update_u64(zeroed.iter().map(|&b| u64::from(b)).sum());
        sum.update_u64(zeroed.len() as u64);
        // An uninitialised allocation, written then read.
        let mut written: Vec<u8> = Vec::with_capacity(5 << 20);
        written.extend((0..5usize << 20).map(|i| (i * 7 + input as usize) as u8));
        sum.update(&written[..4096]);
        sum.update(&written[written.len() - 4096..]);
        // Growth by pushes (reallocations, in place or moved).
        let mut grown: Vec<u64> = Vec::new();
        for i in 0..(1u64 << 19) * scale as u64 {
            grown.push(i ^ 0x5555);
        }
        sum.update_u64(grown.iter().fold(0u64, |a, &v| a.wrapping_add(v)));
        drop(written);
        drop(zeroed);
        // Re-allocate over what was just freed: those pages are not fresh any more.
        let again = vec![1u8; 8 << 20];
        sum.update_u64(again.iter().map(|&b| u64::from(b)).sum());
        drop(grown);
        // Every live init-time buffer is intact; modify and restore one.
        for (i, block) in self.live_small.iter_mut().enumerate() {
            sum.update(block);
            if i % 17 == input as usize {
                block[0] = block[0].wrapping_add(1);
                sum.update(&block[..1]);
                block[0] = block[0].wrapping_sub(1);
            }
        }
        sum.update_u64(self.live_large.iter().fold(0u64, |a, &v| a.wrapping_add(v)));
        drop(again);
        sum.value()
    }
}
