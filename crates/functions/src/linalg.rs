//! Small dense `f32` kernels shared by the neural-network functions (`rnn`, `bert`).
//!
//! Reductions use a fixed number of independent lanes combined in a fixed order, so the
//! compiler can vectorise them without reassociating, and results are identical on the
//! host and in the guest.

/// Number of independent partial sums a dot product keeps.
const LANES: usize = 8;

/// The dot product of `a` and `b` (over the shorter length).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut lanes = [0.0f32; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += x * y;
    }
    let pairs = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

/// `out[r] = bias[r] + weights[r] · input` for a row-major `weights` of `out.len()` rows of
/// `input.len()` columns.
pub(crate) fn mat_vec(weights: &[f32], bias: &[f32], input: &[f32], out: &mut [f32]) {
    let columns = input.len();
    for ((row, &b), o) in weights.chunks_exact(columns).zip(bias).zip(out.iter_mut()) {
        *o = b + dot(row, input);
    }
}

/// For every token `t`, `outputs[t][r] = bias[r] + weights[r] · inputs[t]`.
///
/// `inputs` and `outputs` hold one row per token (`columns` and `bias.len()` wide). Each
/// weight row is loaded once and applied to all tokens while it is in cache.
pub(crate) fn mat_mul_tokens(
    weights: &[f32],
    bias: &[f32],
    inputs: &[f32],
    columns: usize,
    outputs: &mut [f32],
) {
    let rows = bias.len();
    for (r, (row, &b)) in weights.chunks_exact(columns).zip(bias).enumerate() {
        for (input, output) in inputs
            .chunks_exact(columns)
            .zip(outputs.chunks_exact_mut(rows))
        {
            output[r] = b + dot(row, input);
        }
    }
}

/// The logistic sigmoid.
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// Normalises `values` to zero mean and unit variance, then scales and shifts them.
pub(crate) fn layer_norm(values: &mut [f32], gain: &[f32], shift: &[f32]) {
    let n = values.len() as f32;
    let mean = values.iter().sum::<f32>() / n;
    let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inverse_deviation = 1.0 / libm::sqrtf(variance + 1e-5);
    for ((v, g), s) in values.iter_mut().zip(gain).zip(shift) {
        *v = (*v - mean) * inverse_deviation * g + s;
    }
}

/// Replaces `values` by their softmax.
pub(crate) fn softmax(values: &mut [f32]) {
    let max = values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut total = 0.0f32;
    for v in values.iter_mut() {
        *v = libm::expf(*v - max);
        total += *v;
    }
    for v in values.iter_mut() {
        *v /= total;
    }
}

/// Index of the largest value (the first one on ties; 0 for an empty slice).
pub(crate) fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_on_integers() {
        let a: alloc::vec::Vec<f32> = (0..37).map(|i| i as f32).collect();
        let b: alloc::vec::Vec<f32> = (0..37).map(|i| (i % 5) as f32).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), naive);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut v = [1.0, 2.0, 3.0, -1.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&v), 2);
    }
}
