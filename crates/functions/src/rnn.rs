//! `rnn`: character-level LSTM text generation, as FunctionBench's `rnn_serving` does.
//!
//! FunctionBench's rnn_serving loads a PyTorch LSTM and generates a name for a given language
//! and start letter, one token at a time. Here a 2-layer LSTM (hidden size 768) with a 4096
//! token embedding and four language-specific output heads is built at init; an invocation
//! generates `STEPS` tokens greedily from an input-dependent start token, using head 0 for
//! input 0 and head 1 for input 1.
//!
//! Memory behaviour: model-bound. The state holds 96 MiB of `f32` weights (embedding
//! 12 MiB, LSTM layers 36 MiB, four heads 48 MiB); an invocation reads both LSTM layers and
//! one head in full on every step, a few embedding rows, and about 57 % of a 32 MiB runtime
//! heap: about 67 MiB touched per invocation (estimate). Fresh allocations are a few KiB.

use alloc::vec;
use alloc::vec::Vec;

use crate::linalg::{argmax, dot, mat_vec, sigmoid};
use crate::runtime::Runtime;
use crate::synth::Rng;
use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "rnn",
    description: "greedy token generation with a 2-layer LSTM and per-language output heads",
    mem_mib: 256,
    inputs: 2,
    workload: true,
    arg: None,
};

/// Width of token embeddings and of the LSTM state.
const HIDDEN: usize = 768;
/// Number of stacked LSTM layers.
const LAYERS: usize = 2;
/// Number of tokens.
const VOCABULARY: usize = 4096;
/// Number of language-specific output heads (only the first `INFO.inputs` are used).
const LANGUAGES: usize = 4;
/// Tokens generated per invocation.
const STEPS: usize = 20;
/// Payload bytes of the simulated runtime heap (PyTorch and the interpreter).
const RUNTIME_BYTES: usize = 32 << 20;

/// One LSTM layer: the four gates (input, forget, cell, output) stacked row-wise, each row
/// over the concatenation `[x; h]`.
struct LstmLayer {
    gate_weights: Vec<f32>,
    gate_bias: Vec<f32>,
}

/// A linear map from the hidden state to token logits.
struct OutputHead {
    weights: Vec<f32>,
    bias: Vec<f32>,
}

pub(crate) struct Rnn {
    embedding: Vec<f32>,
    layers: Vec<LstmLayer>,
    heads: Vec<OutputHead>,
    runtime: Runtime,
}

/// `count` weights uniform in `[-scale, scale)`.
fn uniform(rng: &mut Rng, count: usize, scale: f32) -> Vec<f32> {
    (0..count).map(|_| rng.signed_unit_f32() * scale).collect()
}

impl Rnn {
    pub(crate) fn init() -> Self {
        let runtime = Runtime::build(RUNTIME_BYTES, 0x0072_6e6e);
        let mut rng = Rng::new(0x6c73_746d);
        let scale = 1.0 / libm::sqrtf(HIDDEN as f32);
        let embedding = uniform(&mut rng, VOCABULARY * HIDDEN, 1.0);
        let layers = (0..LAYERS)
            .map(|_| LstmLayer {
                gate_weights: uniform(&mut rng, 4 * HIDDEN * 2 * HIDDEN, scale),
                gate_bias: uniform(&mut rng, 4 * HIDDEN, scale),
            })
            .collect();
        let heads = (0..LANGUAGES)
            .map(|_| OutputHead {
                weights: uniform(&mut rng, VOCABULARY * HIDDEN, scale * 4.0),
                bias: uniform(&mut rng, VOCABULARY, 0.1),
            })
            .collect();
        Self {
            embedding,
            layers,
            heads,
            runtime,
        }
    }

    /// Generates `STEPS` tokens for `input`, feeding each into `sum`, and returns them.
    fn generate(&self, input: u32, sum: &mut Checksum) -> Vec<usize> {
        let head = &self.heads[input as usize % LANGUAGES];
        let mut hidden = vec![0.0f32; LAYERS * HIDDEN];
        let mut cell = vec![0.0f32; LAYERS * HIDDEN];
        let mut concatenated = vec![0.0f32; 2 * HIDDEN];
        let mut gates = vec![0.0f32; 4 * HIDDEN];
        let mut logits = vec![0.0f32; VOCABULARY];
        let mut token = (0x51 + 37 * input as usize) % VOCABULARY;
        let mut generated = Vec::with_capacity(STEPS);
        for _ in 0..STEPS {
            concatenated[..HIDDEN]
                .copy_from_slice(&self.embedding[token * HIDDEN..(token + 1) * HIDDEN]);
            for (layer_index, layer) in self.layers.iter().enumerate() {
                let state = layer_index * HIDDEN..(layer_index + 1) * HIDDEN;
                concatenated[HIDDEN..].copy_from_slice(&hidden[state.clone()]);
                mat_vec(
                    &layer.gate_weights,
                    &layer.gate_bias,
                    &concatenated,
                    &mut gates,
                );
                let (h, c) = (&mut hidden[state.clone()], &mut cell[state]);
                for unit in 0..HIDDEN {
                    let input_gate = sigmoid(gates[unit]);
                    let forget_gate = sigmoid(gates[HIDDEN + unit]);
                    let candidate = libm::tanhf(gates[2 * HIDDEN + unit]);
                    let output_gate = sigmoid(gates[3 * HIDDEN + unit]);
                    c[unit] = forget_gate * c[unit] + input_gate * candidate;
                    h[unit] = output_gate * libm::tanhf(c[unit]);
                }
                // The next layer's input is this layer's output.
                concatenated[..HIDDEN].copy_from_slice(h);
            }
            mat_vec(
                &head.weights,
                &head.bias,
                &concatenated[..HIDDEN],
                &mut logits,
            );
            token = argmax(&logits);
            generated.push(token);
            sum.update_u64(token as u64);
            sum.update(&logits[token].to_bits().to_le_bytes());
        }
        sum.update(&dot(&hidden, &cell).to_bits().to_le_bytes());
        generated
    }
}

impl Function for Rnn {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        sum.update_u64(self.runtime.walk(input));
        let _tokens = self.generate(input, &mut sum);
        sum.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_not_stuck_on_one_token() {
        let rnn = Rnn::init();
        let mut first = Checksum::new();
        let tokens = rnn.generate(0, &mut first);
        let mut second = Checksum::new();
        assert_eq!(rnn.generate(0, &mut second), tokens);
        assert_eq!(first.value(), second.value());
        assert!(tokens.iter().any(|&t| t != tokens[0]), "{tokens:?}");
        assert!(rnn
            .layers
            .iter()
            .all(|l| l.gate_weights.iter().all(|w| w.is_finite())));
    }
}
