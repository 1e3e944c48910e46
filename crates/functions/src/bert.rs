//! `bert`: transformer-encoder inference, as FaaSMem's `bert` does.
//!
//! FaaSMem's bert serves a BERT model: it tokenises a sentence and runs the encoder stack
//! (multi-head self-attention and a feed-forward network per layer) and a classifier. Here a
//! 9-layer encoder of BERT-base width (hidden 768, 12 heads, feed-forward 3072) with an
//! 8192-token embedding and two task heads is built at init from generated weights. Input 0
//! classifies an 8-token sentence with head 0, input 1 a 10-token sentence with head 1.
//!
//! Memory behaviour: the largest working set of the suite. The state holds about 267 MiB of
//! `f32` weights (243 MiB of encoder layers, 24 MiB of embeddings); an invocation reads every
//! encoder layer in full (243 MiB), a few embedding rows and one head, and walks about 57 %
//! of a 48 MiB runtime heap: about 272 MiB touched per invocation (estimate). Activations
//! are fresh allocations of a few hundred KiB.

use alloc::vec;
use alloc::vec::Vec;

use crate::linalg::{dot, layer_norm, mat_mul_tokens, softmax};
use crate::runtime::Runtime;
use crate::synth::Rng;
use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "bert",
    description: "9-layer BERT-base-width transformer encoder classifying a short sentence",
    mem_mib: 512,
    inputs: 2,
    workload: true,
    arg: None,
};

/// Width of the hidden state.
const HIDDEN: usize = 768;
/// Number of attention heads.
const HEADS: usize = 12;
/// Width of one attention head.
const HEAD_WIDTH: usize = HIDDEN / HEADS;
/// Width of the feed-forward network's inner layer.
const FEED_FORWARD: usize = 3072;
/// Number of encoder layers.
const LAYERS: usize = 9;
/// Number of tokens in the embedding table.
const VOCABULARY: usize = 8192;
/// Longest sentence, in tokens.
const MAX_POSITIONS: usize = 64;
/// Number of classifier heads (tasks), one per input.
const TASKS: usize = 2;
/// Number of labels of each classifier.
const LABELS: usize = 16;
/// Sentence length per input.
const SENTENCE_TOKENS: [usize; TASKS] = [8, 10];
/// Payload bytes of the simulated runtime heap (PyTorch, transformers, the interpreter).
const RUNTIME_BYTES: usize = 48 << 20;

/// A fully connected layer: `rows` outputs over `columns` inputs, row-major.
struct Dense {
    weights: Vec<f32>,
    bias: Vec<f32>,
    columns: usize,
}

impl Dense {
    fn random(rng: &mut Rng, rows: usize, columns: usize) -> Self {
        let scale = 1.0 / libm::sqrtf(columns as f32);
        Self {
            weights: (0..rows * columns)
                .map(|_| rng.signed_unit_f32() * scale)
                .collect(),
            bias: (0..rows).map(|_| rng.signed_unit_f32() * 0.02).collect(),
            columns,
        }
    }

    /// Applies the layer to each of the `tokens` rows of `inputs`, into fresh outputs.
    fn apply(&self, inputs: &[f32], tokens: usize) -> Vec<f32> {
        let mut outputs = vec![0.0f32; tokens * self.bias.len()];
        mat_mul_tokens(
            &self.weights,
            &self.bias,
            inputs,
            self.columns,
            &mut outputs,
        );
        outputs
    }
}

/// Gain and shift of a layer normalisation.
struct LayerNorm {
    gain: Vec<f32>,
    shift: Vec<f32>,
}

impl LayerNorm {
    fn new() -> Self {
        Self {
            gain: vec![1.0; HIDDEN],
            shift: vec![0.0; HIDDEN],
        }
    }

    /// Normalises each token row of `tokens`.
    fn apply(&self, tokens: &mut [f32]) {
        for token in tokens.chunks_exact_mut(HIDDEN) {
            layer_norm(token, &self.gain, &self.shift);
        }
    }
}

/// One post-norm transformer encoder layer.
struct EncoderLayer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_output: Dense,
    attention_norm: LayerNorm,
    feed_forward_in: Dense,
    feed_forward_out: Dense,
    output_norm: LayerNorm,
}

impl EncoderLayer {
    fn random(rng: &mut Rng) -> Self {
        Self {
            query: Dense::random(rng, HIDDEN, HIDDEN),
            key: Dense::random(rng, HIDDEN, HIDDEN),
            value: Dense::random(rng, HIDDEN, HIDDEN),
            attention_output: Dense::random(rng, HIDDEN, HIDDEN),
            attention_norm: LayerNorm::new(),
            feed_forward_in: Dense::random(rng, FEED_FORWARD, HIDDEN),
            feed_forward_out: Dense::random(rng, HIDDEN, FEED_FORWARD),
            output_norm: LayerNorm::new(),
        }
    }

    /// Runs the layer over the `tokens` rows of `states`, in place.
    fn forward(&self, states: &mut [f32], tokens: usize) {
        let queries = self.query.apply(states, tokens);
        let keys = self.key.apply(states, tokens);
        let values = self.value.apply(states, tokens);
        let mut context = vec![0.0f32; tokens * HIDDEN];
        let mut scores = vec![0.0f32; tokens];
        let scale = 1.0 / libm::sqrtf(HEAD_WIDTH as f32);
        for head in 0..HEADS {
            let lanes = head * HEAD_WIDTH..(head + 1) * HEAD_WIDTH;
            for query_token in 0..tokens {
                let query = &queries[query_token * HIDDEN..][lanes.clone()];
                for (key_token, score) in scores.iter_mut().enumerate() {
                    let key = &keys[key_token * HIDDEN..][lanes.clone()];
                    *score = dot(query, key) * scale;
                }
                softmax(&mut scores);
                let out = &mut context[query_token * HIDDEN..][lanes.clone()];
                for (value_token, &weight) in scores.iter().enumerate() {
                    let value = &values[value_token * HIDDEN..][lanes.clone()];
                    for (o, v) in out.iter_mut().zip(value) {
                        *o += weight * v;
                    }
                }
            }
        }
        let attended = self.attention_output.apply(&context, tokens);
        for (s, a) in states.iter_mut().zip(&attended) {
            *s += a;
        }
        self.attention_norm.apply(states);
        let mut inner = self.feed_forward_in.apply(states, tokens);
        for x in inner.iter_mut() {
            *x = gelu(*x);
        }
        let projected = self.feed_forward_out.apply(&inner, tokens);
        for (s, p) in states.iter_mut().zip(&projected) {
            *s += p;
        }
        self.output_norm.apply(states);
    }
}

/// The GELU activation (tanh approximation, as BERT uses).
fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + libm::tanhf(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

pub(crate) struct Bert {
    token_embedding: Vec<f32>,
    position_embedding: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    classifiers: Vec<Dense>,
    runtime: Runtime,
}

impl Bert {
    pub(crate) fn init() -> Self {
        let runtime = Runtime::build(RUNTIME_BYTES, 0x6265_7274);
        let mut rng = Rng::new(0x0065_6e63_6f64_6572);
        let token_embedding = (0..VOCABULARY * HIDDEN)
            .map(|_| rng.signed_unit_f32())
            .collect();
        let position_embedding = (0..MAX_POSITIONS * HIDDEN)
            .map(|_| rng.signed_unit_f32() * 0.1)
            .collect();
        let layers = (0..LAYERS)
            .map(|_| EncoderLayer::random(&mut rng))
            .collect();
        let classifiers = (0..TASKS)
            .map(|_| Dense::random(&mut rng, LABELS, HIDDEN))
            .collect();
        Self {
            token_embedding,
            position_embedding,
            embedding_norm: LayerNorm::new(),
            layers,
            classifiers,
            runtime,
        }
    }

    /// The token ids of the sentence `input` classifies.
    fn sentence(input: u32) -> Vec<usize> {
        let mut rng = Rng::new(0x7365_6e74 + u64::from(input));
        let len = SENTENCE_TOKENS[input as usize % TASKS];
        (0..len).map(|_| rng.below(VOCABULARY)).collect()
    }

    /// Encodes `sentence` and returns the logits of classifier `task`.
    fn classify(&self, sentence: &[usize], task: usize) -> Vec<f32> {
        let tokens = sentence.len().min(MAX_POSITIONS);
        let mut states = vec![0.0f32; tokens * HIDDEN];
        for (position, (&token, state)) in sentence
            .iter()
            .zip(states.chunks_exact_mut(HIDDEN))
            .enumerate()
        {
            let word = &self.token_embedding[token * HIDDEN..(token + 1) * HIDDEN];
            let place = &self.position_embedding[position * HIDDEN..(position + 1) * HIDDEN];
            for ((s, w), p) in state.iter_mut().zip(word).zip(place) {
                *s = w + p;
            }
        }
        self.embedding_norm.apply(&mut states);
        for layer in &self.layers {
            layer.forward(&mut states, tokens);
        }
        // Classify from the first token's final state, as BERT's [CLS] token.
        self.classifiers[task % TASKS].apply(&states[..HIDDEN], 1)
    }
}

impl Function for Bert {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        sum.update_u64(self.runtime.walk(input));
        let logits = self.classify(&Self::sentence(input), input as usize);
        for logit in logits {
            sum.update(&logit.to_bits().to_le_bytes());
        }
        sum.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_reference_points() {
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(1.0) - 0.841_192).abs() < 1e-4);
        assert!(gelu(-10.0).abs() < 1e-4);
    }

    #[test]
    fn encoder_layer_keeps_states_normalised_and_finite() {
        let mut rng = Rng::new(3);
        let layer = EncoderLayer::random(&mut rng);
        let tokens = 3;
        let mut states: Vec<f32> = (0..tokens * HIDDEN)
            .map(|_| rng.signed_unit_f32())
            .collect();
        layer.forward(&mut states, tokens);
        for token in states.chunks_exact(HIDDEN) {
            let mean = token.iter().sum::<f32>() / HIDDEN as f32;
            assert!(mean.abs() < 1e-3, "mean {mean}");
            assert!(token.iter().all(|v| v.is_finite()));
        }
    }
}
