//! `pyaes`: AES-128-CTR encryption of a message, as FunctionBench's pyaes does.

use aes::cipher::{KeyIvInit, StreamCipher};
use alloc::vec::Vec;

use crate::{Checksum, Function, FunctionInfo};

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "pyaes",
    description: "AES-128-CTR encryption of a generated message",
    mem_mib: 64,
    inputs: 2,
};

/// Size of the plaintext corpus built at init; each input encrypts a window of it.
const CORPUS_BYTES: usize = 4 << 20;

pub(crate) struct Pyaes {
    corpus: Vec<u8>,
}

impl Pyaes {
    pub(crate) fn init() -> Self {
        // A deterministic text-like corpus (xorshift over a small alphabet).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let corpus = (0..CORPUS_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"abcdefghijklmnopqrstuvwxyz .,\n"[(state % 30) as usize]
            })
            .collect();
        Self { corpus }
    }
}

impl Function for Pyaes {
    fn invoke(&mut self, input: u32) -> u64 {
        let len = CORPUS_BYTES / 2;
        let start = (input as usize * CORPUS_BYTES / 4) % (CORPUS_BYTES - len);
        let mut buf = self.corpus[start..start + len].to_vec();
        let key = [input as u8 ^ 0x2b; 16];
        let iv = [0x42u8; 16];
        let mut cipher = Aes128Ctr::new(&key.into(), &iv.into());
        cipher.apply_keystream(&mut buf);
        let mut sum = Checksum::new();
        sum.update(&buf);
        sum.value()
    }
}
