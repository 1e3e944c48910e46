//! Deterministic synthetic data: the pseudo-random generator and the text generator that
//! every function builds its state and inputs from.
//!
//! Everything here is integer arithmetic (or exact conversions to floats), so the host and
//! the guest produce bit-identical data.

use alloc::vec::Vec;

/// SplitMix64: small, fast, and good enough to fill models, graphs and corpora.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    pub(crate) const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// A uniform integer in `0..bound` (`0` when `bound` is `0`).
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }

    /// A uniform integer in `range.start..range.end`.
    pub(crate) fn in_range(&mut self, range: core::ops::Range<usize>) -> usize {
        range.start + self.below(range.end.saturating_sub(range.start))
    }

    /// A uniform `f32` in `[-1, 1)`, a multiple of 2^-23 (exactly representable).
    pub(crate) fn signed_unit_f32(&mut self) -> f32 {
        const SCALE: f32 = 1.0 / (1u32 << 23) as f32;
        (self.next_u64() >> 40) as f32 * SCALE - 1.0
    }

    /// A uniform `f64` in `[-1, 1)`, a multiple of 2^-52 (exactly representable).
    pub(crate) fn signed_unit_f64(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 52) as f64;
        (self.next_u64() >> 11) as f64 * SCALE - 1.0
    }
}

/// The SplitMix64 finaliser: a bijective 64-bit mixing function.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash of two numbers, used to pick input-dependent subsets of a function's state.
pub(crate) const fn hash2(a: u64, b: u64) -> u64 {
    mix64(mix64(a ^ 0x5851_f42d_4c95_7f2d).wrapping_add(b))
}

/// Syllables words are made of; 32 of them, so a word is its rank in base 32.
const SYLLABLES: [&str; 32] = [
    "ka", "ri", "to", "me", "sa", "lo", "ne", "vi", "da", "pu", "en", "or", "al", "is", "th", "qu",
    "ba", "ce", "fo", "gi", "hu", "ja", "ly", "mo", "ny", "pe", "ro", "st", "ur", "we", "xi", "zo",
];

/// Appends the word of the given frequency `rank` (0 is the most frequent) to `out`.
pub(crate) fn push_word(rank: usize, out: &mut Vec<u8>) {
    let mut rest = rank;
    loop {
        out.extend_from_slice(SYLLABLES[rest % SYLLABLES.len()].as_bytes());
        rest /= SYLLABLES.len();
        if rest == 0 {
            break;
        }
    }
}

/// A word rank drawn from a skewed, roughly Zipf-like distribution over `0..vocabulary`.
pub(crate) fn word_rank(rng: &mut Rng, vocabulary: usize) -> usize {
    let ceiling = rng.below(vocabulary) + 1;
    rng.below(ceiling)
}

/// Generates `len` bytes of English-like prose: words with a skewed frequency
/// distribution, spaces, punctuation and line breaks. Compresses like real text.
pub(crate) fn prose(rng: &mut Rng, len: usize) -> Vec<u8> {
    const VOCABULARY: usize = 20_000;
    let mut text = Vec::with_capacity(len + 64);
    let mut words_in_sentence = 0;
    while text.len() < len {
        push_word(word_rank(rng, VOCABULARY), &mut text);
        words_in_sentence += 1;
        if words_in_sentence > 4 && rng.below(12) == 0 {
            text.extend_from_slice(if rng.below(8) == 0 { b".\n" } else { b". " });
            words_in_sentence = 0;
        } else if rng.below(10) == 0 {
            text.extend_from_slice(b", ");
        } else {
            text.push(b' ');
        }
    }
    text.truncate(len);
    text
}
