//! `gzip`: gzip compression of generated text, as FunctionBench's `gzip_compression` does.
//!
//! FunctionBench's gzip_compression writes a file of generated content and gzips it. Here
//! the content is a window of an English-like corpus built at init, compressed with DEFLATE
//! (miniz_oxide, level 6) into a complete gzip member (header, deflate stream, CRC-32,
//! size). Input 0 compresses bytes `0..3 MiB` of the corpus, input 1 bytes `2..5 MiB`.
//!
//! Memory behaviour: a small working set. Per invocation it reads a 3 MiB window, allocates
//! the compressor's tables (a few hundred KiB) and a fresh output buffer (about 1.5 MiB),
//! and walks about 57 % of a 16 MiB runtime heap: roughly 14 MiB touched (estimate).

use alloc::vec::Vec;

use crate::runtime::Runtime;
use crate::synth::{prose, Rng};
use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "gzip",
    description: "gzip (DEFLATE level 6) compression of a window of generated text",
    mem_mib: 64,
    inputs: 2,
    workload: true,
    arg: None,
};

/// Size of the text corpus built at init.
const CORPUS_BYTES: usize = 6 << 20;
/// Size of the window one invocation compresses.
const WINDOW_BYTES: usize = 3 << 20;
/// Distance between the windows of consecutive inputs.
const WINDOW_STRIDE: usize = 2 << 20;
/// DEFLATE compression level, gzip's default.
const LEVEL: u8 = 6;
/// Payload bytes of the simulated runtime heap.
const RUNTIME_BYTES: usize = 16 << 20;

pub(crate) struct Gzip {
    corpus: Vec<u8>,
    runtime: Runtime,
}

impl Gzip {
    pub(crate) fn init() -> Self {
        let runtime = Runtime::build(RUNTIME_BYTES, 0x677a_6970);
        let corpus = prose(&mut Rng::new(0x0067_7a69_7000), CORPUS_BYTES);
        Self { corpus, runtime }
    }

    /// The corpus window `input` compresses.
    fn window(&self, input: u32) -> &[u8] {
        let start = (input as usize * WINDOW_STRIDE) % (CORPUS_BYTES - WINDOW_BYTES + 1);
        &self.corpus[start..start + WINDOW_BYTES]
    }
}

impl Function for Gzip {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        sum.update_u64(self.runtime.walk(input));
        let member = gzip_member(self.window(input));
        sum.update(&member);
        sum.value()
    }
}

/// Compresses `data` into one gzip member (RFC 1952).
pub(crate) fn gzip_member(data: &[u8]) -> Vec<u8> {
    // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unknown.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let deflated = miniz_oxide::deflate::compress_to_vec(data, LEVEL);
    let mut member = Vec::with_capacity(HEADER.len() + deflated.len() + 8);
    member.extend_from_slice(&HEADER);
    member.extend_from_slice(&deflated);
    member.extend_from_slice(&crc32(data).to_le_bytes());
    member.extend_from_slice(&(data.len() as u32).to_le_bytes());
    member
}

/// CRC-32 (IEEE 802.3, reflected, as gzip uses), computed with a nibble table.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 16] = {
        let mut table = [0u32; 16];
        let mut i = 0;
        while i < 16 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 4 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        crc = (crc >> 4) ^ TABLE[(crc & 15) as usize];
        crc = (crc >> 4) ^ TABLE[(crc & 15) as usize];
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn member_inflates_back_to_the_window() {
        let gzip = Gzip::init();
        for input in 0..INFO.inputs {
            let window = gzip.window(input);
            let member = gzip_member(window);
            let deflated = &member[10..member.len() - 8];
            let inflated = miniz_oxide::inflate::decompress_to_vec(deflated).expect("valid stream");
            assert_eq!(inflated, window);
            let trailer = &member[member.len() - 8..];
            assert_eq!(trailer[..4], crc32(window).to_le_bytes());
            assert!(member.len() < window.len() / 2, "text should compress well");
        }
    }
}
