//! `pyaes`: AES-128-CTR encryption of a message, as FunctionBench's `pyaes` does.
//!
//! FunctionBench's pyaes encrypts a generated message with a pure-Python AES. Here the
//! message is a window of a text corpus built at init, encrypted `ROUNDS` times over (each
//! round with its own key, standing in for pure Python's slowness); input 0 encrypts the
//! first half of the corpus and input 1 the middle half, so the two share a quarter of it.
//!
//! Memory behaviour: a small working set. Per invocation it reads a 2 MiB corpus window,
//! writes a fresh 2 MiB ciphertext buffer, and walks about 57 % of a 16 MiB runtime heap:
//! roughly 14 MiB touched (estimate).

use aes::cipher::{KeyIvInit, StreamCipher};
use alloc::vec::Vec;

use crate::runtime::Runtime;
use crate::synth::{prose, Rng};
use crate::{Checksum, Function, FunctionInfo};

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "pyaes",
    description: "AES-128-CTR encryption of a window of a generated text corpus",
    mem_mib: 64,
    inputs: 2,
    workload: true,
    arg: None,
};

/// Size of the plaintext corpus built at init; each input encrypts a window of it.
const CORPUS_BYTES: usize = 4 << 20;
/// Size of the window one invocation encrypts.
const MESSAGE_BYTES: usize = CORPUS_BYTES / 2;
/// Number of times the message is encrypted, each time with a different key.
const ROUNDS: u8 = 16;
/// Payload bytes of the simulated runtime heap.
const RUNTIME_BYTES: usize = 16 << 20;

pub(crate) struct Pyaes {
    corpus: Vec<u8>,
    runtime: Runtime,
}

impl Pyaes {
    pub(crate) fn init() -> Self {
        let runtime = Runtime::build(RUNTIME_BYTES, 0x0070_7961_6573);
        let corpus = prose(&mut Rng::new(0x9e37_79b9_7f4a_7c15), CORPUS_BYTES);
        Self { corpus, runtime }
    }
}

impl Function for Pyaes {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        sum.update_u64(self.runtime.walk(input));
        let start = (input as usize * CORPUS_BYTES / 4) % (CORPUS_BYTES - MESSAGE_BYTES + 1);
        let mut message = self.corpus[start..start + MESSAGE_BYTES].to_vec();
        let nonce = [0x42u8; 16];
        for round in 0..ROUNDS {
            let key = [input as u8 ^ 0x2b ^ round.wrapping_mul(0x1d); 16];
            let mut cipher = Aes128Ctr::new(&key.into(), &nonce.into());
            cipher.apply_keystream(&mut message);
        }
        sum.update(&message);
        sum.value()
    }
}
