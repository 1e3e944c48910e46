//! `footprint`: a function whose memory is chosen by its argument, so scale can be measured
//! without changing the paper's functions (issue 27). Not a workload of the paper.
//!
//! Its argument is `<init MiB>:<working set MiB>` (default `32:8`):
//! - **Init** allocates `init` MiB in blocks of [`BLOCK_BYTES`] and writes every word
//!   with a value derived from its position (never zero, so every page is data in the
//!   snapshot).
//! - **An invocation** reads `working set` MiB of that state: every word of one page in
//!   each run of `init / working set` pages, the page within the run chosen by the input,
//!   so the working set is spread evenly over the whole footprint (no read-ahead window
//!   covers it by accident) and inputs read different pages. It allocates nothing.
//!
//! The checksum folds the sum of every page read, so a page served wrong (zero, stale or
//! another page's contents) changes it.

use alloc::vec::Vec;

use crate::{ArgSpec, Checksum, Function, FunctionInfo};

/// Default argument: 32 MiB at init, 8 MiB read per invocation.
const DEFAULT_ARG: u64 = pack(32, 8);

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "footprint",
    description: "reads a chosen working set spread over a chosen init footprint (argument <init MiB>:<working set MiB>): scale measurement, not a workload",
    mem_mib: 96,
    inputs: 4,
    workload: false,
    arg: Some(ArgSpec {
        syntax: "<init MiB>:<working set MiB>",
        default: DEFAULT_ARG,
        parse,
        render,
        mem_mib,
    }),
};

/// Bytes of one block of the state: large allocations stay within one RAM region.
pub const BLOCK_BYTES: usize = 64 << 20;
const PAGE_BYTES: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE_BYTES / 8;
/// Room beyond the state for the image, the stack and the allocator, in MiB.
const OVERHEAD_MIB: u64 = 32;

const fn pack(init_mib: u64, ws_mib: u64) -> u64 {
    (init_mib << 32) | ws_mib
}

/// `(init MiB, working set MiB)` of an argument.
pub fn unpack(arg: u64) -> (u64, u64) {
    (arg >> 32, arg & 0xffff_ffff)
}

fn parse(text: &str) -> Option<u64> {
    let (init, ws) = text.split_once(':')?;
    let (init, ws) = (init.parse::<u32>().ok()?, ws.parse::<u32>().ok()?);
    (ws > 0 && ws <= init).then(|| pack(u64::from(init), u64::from(ws)))
}

fn render(arg: u64, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    let (init, ws) = unpack(arg);
    write!(out, "{init}:{ws}")
}

/// Guest memory the argument needs by default: the state and a quarter more (the suite's
/// rule for heap fragmentation, which also covers the page ledger's 2 bytes per 4 KiB),
/// plus the image and stack, rounded up to 2 MiB. Memory the state does not use is never
/// touched, so it costs neither snapshot blocks nor restore time.
fn mem_mib(arg: u64) -> u32 {
    let (init, _) = unpack(arg);
    let need = init + init / 4 + OVERHEAD_MIB;
    u32::try_from(need.next_multiple_of(2)).unwrap_or(u32::MAX)
}

pub(crate) struct Footprint {
    /// The state, with room for one page more in each block: it starts at the block's
    /// first page boundary ([`skip_of`]).
    blocks: Vec<Vec<u64>>,
    /// Pages in the state.
    pages: usize,
    /// Pages read per invocation.
    ws_pages: usize,
}

/// Words of `block` before its first page boundary. The allocator aligns a block to 8
/// bytes only, and a "page" read across a boundary would touch two guest pages, doubling
/// the working set the function declares; the state starts after them, so its values
/// (and the checksum) do not depend on where the heap put a block.
fn skip_of(block: &[u64]) -> usize {
    (PAGE_BYTES - block.as_ptr() as usize % PAGE_BYTES) % PAGE_BYTES / 8
}

/// The value of word `i` of the state: never zero.
fn word(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

impl Footprint {
    pub(crate) fn init(arg: u64) -> Self {
        let (init_mib, ws_mib) = unpack(arg);
        let total = (init_mib as usize) << 20;
        let mut blocks = Vec::new();
        let mut done = 0usize;
        while done < total {
            let len = (total - done).min(BLOCK_BYTES) / 8;
            // One page more than the block's pages, so they fit after the first boundary.
            let room = len + WORDS_PER_PAGE;
            let mut block: Vec<u64> = Vec::new();
            if block.try_reserve_exact(room).is_err() {
                panic!("footprint: no memory for {init_mib} MiB of state; give the VM more (--mem-mib)");
            }
            // The reserved buffer stays where it is: the block never grows past `room`.
            let skip = skip_of(&block);
            // Padding, nonzero like the state so every page of the block is data.
            block.extend((0..skip).map(|_| 1));
            block.extend((0..len).map(|i| word(done / 8 + i)));
            block.extend((0..WORDS_PER_PAGE - skip).map(|_| 1));
            blocks.push(block);
            done += len * 8;
        }
        Self {
            blocks,
            pages: total / PAGE_BYTES,
            ws_pages: ((ws_mib as usize) << 20) / PAGE_BYTES,
        }
    }

    fn page(&self, page: usize) -> &[u64] {
        let per_block = BLOCK_BYTES / PAGE_BYTES;
        let block = &self.blocks[page / per_block];
        let at = skip_of(block) + (page % per_block) * WORDS_PER_PAGE;
        &block[at..at + WORDS_PER_PAGE]
    }
}

impl Function for Footprint {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        let stride = (self.pages / self.ws_pages.max(1)).max(1);
        let phase = input as usize % stride;
        for run in 0..self.ws_pages.min(self.pages) {
            let page = run * stride + phase;
            let total = self
                .page(page)
                .iter()
                .fold(0u64, |a, &w| a.rotate_left(1) ^ w);
            sum.update_u64(total);
        }
        sum.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page the function reads is one whole guest page, so its working set is the
    /// declared one, not twice it.
    #[test]
    fn pages_read_are_page_aligned() {
        let footprint = Footprint::init(pack(130, 2));
        assert_eq!(footprint.blocks.len(), 3);
        for page in [0, 1, footprint.pages / 2, footprint.pages - 1] {
            let words = footprint.page(page);
            assert_eq!(words.as_ptr() as usize % PAGE_BYTES, 0, "page {page}");
            assert_eq!(words.len(), WORDS_PER_PAGE);
            assert_eq!(words[0], word(page * WORDS_PER_PAGE), "page {page}");
        }
    }

    /// The checksum is a function of the argument and the input only (a reference boot
    /// may place the heap elsewhere than the snapshotted VM did): recomputed here from
    /// the definition, with no addresses.
    #[test]
    fn checksum_follows_from_the_definition() {
        let arg = pack(130, 2);
        let mut footprint = Footprint::init(arg);
        for input in 0..3u32 {
            let pages = footprint.pages;
            let ws_pages = footprint.ws_pages;
            let stride = pages / ws_pages;
            let mut want = Checksum::new();
            for run in 0..ws_pages {
                let page = run * stride + input as usize % stride;
                let total = (0..WORDS_PER_PAGE)
                    .map(|j| word(page * WORDS_PER_PAGE + j))
                    .fold(0u64, |a, w| a.rotate_left(1) ^ w);
                want.update_u64(total);
            }
            assert_eq!(footprint.invoke(input), want.value(), "input {input}");
        }
    }
}
