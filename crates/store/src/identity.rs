//! The identity of a file that artifacts are bound to: one type for the snapshot's
//! metadata, strategy artifacts and working sets.
//!
//! Identity is content: a copy of a file (another path, filesystem or host) is the same
//! file, an edit that puts the mtime back is not. Checking it cheaply is
//! [`crate::verify`]'s job.
//!
//! The digest is a SHA-256 Merkle tree over 64 KiB leaves ([`TreeHasher`], shaped as in
//! RFC 6962: leaves hashed with a `0x00` prefix, nodes with `0x01`, the tree split at the
//! largest power of two). Two properties follow that a flat SHA-256 cannot give:
//! - **It composes.** The identity of any aligned power-of-two run of leaves (a fleet
//!   chunk) is a node of the file's tree, so a mount that checks every chunk it serves can
//!   check the whole file's identity from the chunks' identities alone, without reading
//!   the file ([`TreeHasher::push_subtree`]).
//! - **Zeros are free.** An aligned run of zero leaves has a digest that depends only on
//!   its length, so hashing a sparse file costs its data, not its size
//!   ([`TreeHasher::update_zeros`]).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes per leaf of the identity's tree: the smallest fleet chunk.
pub const LEAF_BYTES: u64 = 64 << 10;
/// Levels of zero subtrees precomputed: 2^40 leaves of 64 KiB is far past any file.
const ZERO_LEVELS: usize = 41;

/// Identity of a file's content: if either field differs, what was bound to it is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Root of the SHA-256 tree over the contents ([`TreeHasher`]), hex in JSON.
    #[serde(rename = "tree_sha256", with = "hex_digest")]
    pub digest: [u8; 32],
}

impl FileIdentity {
    /// Identity of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut tree = TreeHasher::new();
        tree.update(bytes);
        tree.finish()
    }

    /// Identity of `size` zero bytes, in O(log size).
    pub fn of_zeros(size: u64) -> Self {
        let mut tree = TreeHasher::new();
        tree.update_zeros(size);
        tree.finish()
    }

    /// The digest as lower-case hex.
    pub fn digest_hex(&self) -> String {
        hex(&self.digest)
    }

    /// Names of the fields that differ from `other`.
    pub fn differences(&self, other: &FileIdentity) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.size != other.size {
            d.push("size");
        }
        if self.digest != other.digest {
            d.push("digest");
        }
        d
    }
}

/// Why a run of chunk identities cannot be composed into a file's ([`TreeHasher::push_subtree`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// A chunk that is not a whole power-of-two run of leaves starting on its own
    /// alignment, and not the last.
    #[error("a chunk of {bytes} bytes at offset {offset} is not an aligned power-of-two run of {LEAF_BYTES}-byte leaves, nor the last chunk")]
    Misaligned {
        /// Where it starts.
        offset: u64,
        /// Its length.
        bytes: u64,
    },
}

fn leaf_digest(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn node_digest(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The digest of 2^level zero leaves, for each level.
fn zero_subtrees() -> &'static [[u8; 32]; ZERO_LEVELS] {
    static ZEROS: OnceLock<[[u8; 32]; ZERO_LEVELS]> = OnceLock::new();
    ZEROS.get_or_init(|| {
        let mut levels = [[0u8; 32]; ZERO_LEVELS];
        levels[0] = leaf_digest(&[0u8; LEAF_BYTES as usize]);
        for level in 1..ZERO_LEVELS {
            levels[level] = node_digest(&levels[level - 1], &levels[level - 1]);
        }
        levels
    })
}

/// Streaming computation of a [`FileIdentity`]: bytes, runs of zeros and whole subtrees
/// (chunks whose identity is already known) in file order.
///
/// Complete subtrees are kept as a binary counter (one per set bit of the leaf count);
/// [`TreeHasher::finish`] folds them from the right, which is RFC 6962's split at the
/// largest power of two.
#[derive(Clone, Debug)]
pub struct TreeHasher {
    /// Complete subtrees, levels strictly decreasing from the bottom.
    stack: Vec<(u32, [u8; 32])>,
    /// The leaf being filled.
    leaf: Sha256,
    /// Bytes in it.
    leaf_fill: u64,
    /// Bytes taken so far.
    size: u64,
    /// A last, short subtree pushed by [`TreeHasher::push_subtree`]: nothing may follow.
    tail: Option<[u8; 32]>,
}

impl Default for TreeHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeHasher {
    /// An empty tree.
    pub fn new() -> Self {
        let mut leaf = Sha256::new();
        leaf.update([0u8]);
        Self {
            stack: Vec::new(),
            leaf,
            leaf_fill: 0,
            size: 0,
            tail: None,
        }
    }

    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether nothing was taken yet.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn push(&mut self, mut level: u32, mut digest: [u8; 32]) {
        while let Some(&(top, left)) = self.stack.last() {
            if top != level {
                break;
            }
            self.stack.pop();
            digest = node_digest(&left, &digest);
            level += 1;
        }
        self.stack.push((level, digest));
    }

    fn close_leaf(&mut self) {
        let full = std::mem::replace(&mut self.leaf, Sha256::new());
        self.leaf.update([0u8]);
        self.leaf_fill = 0;
        self.push(0, full.finalize().into());
    }

    /// Takes `data`.
    ///
    /// # Panics
    /// After a short [`TreeHasher::push_subtree`] (a caller's bug: it was the last).
    pub fn update(&mut self, mut data: &[u8]) {
        assert!(self.tail.is_none(), "bytes after the last chunk");
        while !data.is_empty() {
            if self.leaf_fill == 0 && data.len() as u64 >= LEAF_BYTES {
                let (whole, rest) = data.split_at(LEAF_BYTES as usize);
                self.push(0, leaf_digest(whole));
                self.size += LEAF_BYTES;
                data = rest;
                continue;
            }
            let take = (LEAF_BYTES - self.leaf_fill).min(data.len() as u64) as usize;
            self.leaf.update(&data[..take]);
            self.leaf_fill += take as u64;
            self.size += take as u64;
            data = &data[take..];
            if self.leaf_fill == LEAF_BYTES {
                self.close_leaf();
            }
        }
    }

    /// Takes `len` zero bytes: whole aligned runs of zero leaves cost one step per run.
    pub fn update_zeros(&mut self, mut len: u64) {
        static ZERO_LEAF: [u8; LEAF_BYTES as usize] = [0u8; LEAF_BYTES as usize];
        while len > 0 {
            if self.leaf_fill != 0 || len < LEAF_BYTES {
                let take = (LEAF_BYTES - self.leaf_fill).min(len);
                self.update(&ZERO_LEAF[..take as usize]);
                len -= take;
                continue;
            }
            assert!(self.tail.is_none(), "bytes after the last chunk");
            let leaves = self.size / LEAF_BYTES;
            // The largest run that starts on its own alignment and fits.
            let align = if leaves == 0 {
                ZERO_LEVELS as u32 - 1
            } else {
                leaves.trailing_zeros().min(ZERO_LEVELS as u32 - 1)
            };
            let fits = 63 - (len / LEAF_BYTES).leading_zeros();
            let level = align.min(fits);
            self.push(level, zero_subtrees()[level as usize]);
            let bytes = LEAF_BYTES << level;
            self.size += bytes;
            len -= bytes;
        }
    }

    /// Takes a chunk of `bytes` bytes whose identity's digest is `digest`, without its
    /// data: a whole aligned power-of-two run of leaves, or the file's last chunk (after
    /// which nothing more can be taken).
    pub fn push_subtree(&mut self, bytes: u64, digest: [u8; 32]) -> Result<(), ComposeError> {
        let misaligned = ComposeError::Misaligned {
            offset: self.size,
            bytes,
        };
        if self.tail.is_some() || self.leaf_fill != 0 || bytes == 0 {
            return Err(misaligned);
        }
        let leaves = bytes / LEAF_BYTES;
        let whole = bytes.is_multiple_of(LEAF_BYTES) && leaves.is_power_of_two();
        if whole && (self.size / LEAF_BYTES).is_multiple_of(leaves) {
            self.push(leaves.trailing_zeros(), digest);
        } else {
            // A short last chunk: a subtree of the tree's right spine only if everything
            // before it is whole subtrees at least as large (the fold is right-associative).
            let smallest = self.stack.last().map_or(u32::MAX, |&(level, _)| level);
            let needed = 64 - (bytes.div_ceil(LEAF_BYTES) - 1).leading_zeros();
            if smallest < needed {
                return Err(misaligned);
            }
            self.tail = Some(digest);
        }
        self.size += bytes;
        Ok(())
    }

    /// The identity of everything taken.
    pub fn finish(mut self) -> FileIdentity {
        let size = self.size;
        let mut root = match self.tail.take() {
            Some(tail) => Some(tail),
            None if self.leaf_fill > 0 || self.stack.is_empty() => {
                Some(std::mem::take(&mut self.leaf).finalize().into())
            }
            None => None,
        };
        while let Some((_, left)) = self.stack.pop() {
            root = Some(match root {
                Some(right) => node_digest(&left, &right),
                None => left,
            });
        }
        FileIdentity {
            size,
            digest: root.unwrap_or_default(),
        }
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

mod hex_digest {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(digest: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(digest))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(serde::de::Error::custom(format!(
                "a SHA-256 digest is 64 hex digits, got {}",
                bytes.len()
            )));
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&bytes[2 * i..2 * i + 2])
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| serde::de::Error::custom("digest is not hex"))?;
            *byte = pair;
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6962's Merkle tree hash, written as the RFC writes it.
    fn reference(data: &[u8]) -> [u8; 32] {
        let leaves: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(LEAF_BYTES as usize).collect()
        };
        fn mth(leaves: &[&[u8]]) -> [u8; 32] {
            if leaves.len() == 1 {
                return leaf_digest(leaves[0]);
            }
            let k = leaves.len().next_power_of_two() / 2;
            node_digest(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
        mth(&leaves)
    }

    /// Bytes of a test file: `len` bytes, zero outside the runs `data` marks.
    fn file(len: usize, seed: u8, zero_from: usize, zero_to: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                if (zero_from..zero_to).contains(&i) {
                    0
                } else {
                    (i as u8).wrapping_mul(31).wrapping_add(seed) | 1
                }
            })
            .collect()
    }

    const MAX: usize = 20 * LEAF_BYTES as usize + 777;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn streaming_in_any_pieces_is_the_rfc_tree(
            len in 0..MAX, cut in 0..MAX, seed in any::<u8>()
        ) {
            let bytes = file(len, seed, 0, 0);
            let cut = cut.min(len);
            let mut tree = TreeHasher::new();
            tree.update(&bytes[..cut]);
            tree.update(&bytes[cut..]);
            prop_assert_eq!(tree.finish(), FileIdentity { size: len as u64, digest: reference(&bytes) });
        }

        #[test]
        fn a_run_of_zeros_hashes_as_its_bytes(
            len in 0..MAX, from in 0..MAX, to in 0..MAX, seed in any::<u8>()
        ) {
            let (from, to) = (from.min(to).min(len), to.max(from).min(len));
            let bytes = file(len, seed, from, to);
            let mut tree = TreeHasher::new();
            tree.update(&bytes[..from]);
            tree.update_zeros((to - from) as u64);
            tree.update(&bytes[to..]);
            prop_assert_eq!(tree.finish(), FileIdentity::of_bytes(&bytes));
        }

        #[test]
        fn chunk_identities_compose_into_the_files(
            len in 1..MAX, level in 0u32..4, seed in any::<u8>()
        ) {
            let bytes = file(len, seed, len / 3, len / 2);
            let chunk = (LEAF_BYTES << level) as usize;
            let mut tree = TreeHasher::new();
            for piece in bytes.chunks(chunk) {
                let id = FileIdentity::of_bytes(piece);
                prop_assert_eq!(tree.push_subtree(id.size, id.digest), Ok(()));
            }
            prop_assert_eq!(tree.finish(), FileIdentity::of_bytes(&bytes));
        }
    }

    #[test]
    fn misaligned_chunks_and_chunks_after_the_last_are_refused() {
        let leaf = FileIdentity::of_zeros(LEAF_BYTES);
        let mut tree = TreeHasher::new();
        tree.push_subtree(LEAF_BYTES, leaf.digest)
            .expect("first leaf");
        // Two leaves at leaf 1: not on their alignment, and more than the last could be.
        assert!(tree.clone().push_subtree(2 * LEAF_BYTES, [7; 32]).is_err());
        tree.push_subtree(100, [7; 32]).expect("a short last chunk");
        assert!(tree.push_subtree(LEAF_BYTES, leaf.digest).is_err());
        assert_eq!(FileIdentity::of_zeros(0), FileIdentity::of_bytes(&[]));
        let big = 5 * LEAF_BYTES + 3;
        assert_eq!(
            FileIdentity::of_zeros(big),
            FileIdentity::of_bytes(&vec![0; big as usize])
        );
    }

    #[test]
    fn json_keeps_the_digest_as_hex() {
        let id = FileIdentity {
            size: 1,
            digest: [0xab; 32],
        };
        let json = serde_json::to_string(&id).expect("json");
        assert!(
            json.contains(&format!("\"tree_sha256\":\"{}\"", "ab".repeat(32))),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<FileIdentity>(&json).ok(), Some(id));
        assert!(serde_json::from_str::<FileIdentity>(&json.replace("abab", "zz")).is_err());
        // A flat SHA-256 (what snapbpf recorded before the tree) is not taken for a tree.
        let flat = format!(r#"{{"size":1,"sha256":"{}"}}"#, "ab".repeat(32));
        assert!(serde_json::from_str::<FileIdentity>(&flat).is_err());
    }
}
