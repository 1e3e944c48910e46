//! Chunk objects: one fixed-size block of a snapshot file, compressed as one frame and
//! stored under the identity digest of its raw bytes (`chunks/<hex>`), so identical blocks of any
//! snapshot, any version, are stored once. An object is the store's artifact container
//! (magic, version, CRC32) with the codec and raw length in its header; what it decodes to
//! is checked against the digest it is named by before anyone sees it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use snapbpf_store::codec::{Codec, FrameCompressor, FrameDecompressor};
use snapbpf_store::FileIdentity;

/// Artifact kind of a chunk object.
pub const KIND: &str = "fleet-chunk";
/// zstd level chunks are compressed with (fast, and 2–3x on snapshot memory).
pub const LEVEL: i32 = 3;

/// Longest stored object a chunk of `raw_bytes` can be: zstd's worst case on incompressible
/// data (a block header per 128 KiB) and the container's framing.
pub fn max_object_bytes(raw_bytes: u64) -> u64 {
    raw_bytes + (raw_bytes >> 7) + (64 << 10)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Header {
    /// `None`: stored raw (compression would not have shrunk it).
    codec: Option<Codec>,
    /// Bytes it decodes to.
    raw: u64,
}

/// Why a chunk object cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The container is damaged or not a chunk.
    #[error(transparent)]
    Container(#[from] snapbpf_store::artifact::ArtifactError),
    /// The frame does not decode to the size recorded.
    #[error("chunk {key}: its frame does not decode to {raw} bytes")]
    Decode {
        /// Its key.
        key: String,
        /// Bytes expected.
        raw: u64,
        /// The codec's error.
        #[source]
        source: std::io::Error,
    },
    /// It decodes, but not to the content it is named by.
    #[error("chunk {key} holds other content than its name says (digest {found})")]
    Digest {
        /// Its key.
        key: String,
        /// The digest of what it decoded to.
        found: String,
    },
}

/// The object key of the chunk with identity `id`, under `prefix` (made by
/// [`crate::url::Location::key`]).
pub fn key(id: &FileIdentity) -> String {
    format!("chunks/{}", id.digest_hex())
}

/// Encodes chunks, reusing one compressor.
#[derive(Debug)]
pub struct Encoder(FrameCompressor);

impl Encoder {
    /// A zstd encoder at [`LEVEL`].
    pub fn new() -> std::io::Result<Self> {
        FrameCompressor::new(Codec::Zstd, LEVEL, &[]).map(Self)
    }

    /// The object for `raw`: compressed, or raw where compressing would not shrink it.
    pub fn encode(&mut self, raw: &[u8]) -> std::io::Result<Vec<u8>> {
        let frame = self.0.compress(raw)?;
        let (codec, payload) = if frame.len() < raw.len() {
            (Some(Codec::Zstd), frame.as_slice())
        } else {
            (None, raw)
        };
        snapbpf_store::artifact::encode(
            KIND,
            &Header {
                codec,
                raw: raw.len() as u64,
            },
            payload,
        )
    }
}

/// Decodes `object`, named `id`, checking the container, the frame and the digest.
pub fn decode(object: &[u8], id: &FileIdentity) -> Result<Vec<u8>, ChunkError> {
    let key = key(id);
    let (header, payload): (Header, Vec<u8>) =
        snapbpf_store::artifact::decode(object, KIND, Path::new(&key))?;
    let raw = match header.codec {
        None => payload,
        Some(codec) => {
            let bad = |source| ChunkError::Decode {
                key: key.clone(),
                raw: header.raw,
                source,
            };
            if header.raw != id.size {
                return Err(bad(std::io::Error::other(format!(
                    "its header says {} bytes, its name {}",
                    header.raw, id.size
                ))));
            }
            let mut out = vec![0u8; id.size as usize];
            let n = FrameDecompressor::new(codec, &[])
                .and_then(|mut d| d.decompress_into(&payload, &mut out))
                .map_err(bad)?;
            if n as u64 != id.size {
                return Err(bad(std::io::Error::other(format!("decoded {n} bytes"))));
            }
            out
        }
    };
    let found = FileIdentity::of_bytes(&raw);
    if &found != id {
        return Err(ChunkError::Digest {
            key,
            found: found.digest_hex(),
        });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_refuse_damage() {
        let text: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 97) as u8).collect();
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut enc = Encoder::new().expect("encoder");
        for raw in [&text, &noise] {
            let id = FileIdentity::of_bytes(raw);
            let object = enc.encode(raw).expect("encode");
            assert_eq!(&decode(&object, &id).expect("decode"), raw);
            // A flipped byte anywhere is refused, never decoded into other content.
            for at in [0, object.len() / 2, object.len() - 1] {
                let mut bad = object.clone();
                bad[at] ^= 0x40;
                assert!(decode(&bad, &id).is_err(), "flip at {at}");
            }
            // Another chunk's object under this name is refused.
            let other = FileIdentity::of_bytes(b"other");
            assert!(matches!(
                decode(&object, &other),
                Err(ChunkError::Digest { .. } | ChunkError::Decode { .. })
            ));
        }
        assert!(enc.encode(&text).expect("encode").len() < text.len() / 10);
    }
}
