//! Frame codecs: a block of snapshot pages compressed as one self-contained frame, and
//! decompressed into a buffer of known size. Sabre's scattered placement compresses each
//! partition this way; the fleet's object-store chunks are such frames too.

use serde::{Deserialize, Serialize};

/// A compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// zstd with a dictionary (trained by the caller on the data it compresses).
    ZstdDict,
    /// zstd without a dictionary.
    Zstd,
    /// LZ4 (block format).
    Lz4,
}

impl Codec {
    /// Its name, as options and reports write it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::ZstdDict => "zstd-dict",
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }

    /// The codec named `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "zstd-dict" => Ok(Codec::ZstdDict),
            "zstd" => Ok(Codec::Zstd),
            "lz4" => Ok(Codec::Lz4),
            other => Err(format!("unknown codec '{other}' (zstd-dict, zstd, lz4)")),
        }
    }
}

/// Compresses blocks into frames, reusing one compression context.
pub enum FrameCompressor {
    /// zstd (with or without a dictionary).
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    /// LZ4 blocks.
    Lz4,
}

impl std::fmt::Debug for FrameCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Zstd(_) => "FrameCompressor::Zstd",
            Self::Lz4 => "FrameCompressor::Lz4",
        })
    }
}

impl FrameCompressor {
    /// A compressor for `codec` at zstd `level`, with `dict` (empty for none).
    pub fn new(codec: Codec, level: i32, dict: &[u8]) -> std::io::Result<Self> {
        Ok(match codec {
            Codec::Lz4 => Self::Lz4,
            Codec::Zstd | Codec::ZstdDict => Self::Zstd(Box::new(
                zstd::bulk::Compressor::with_dictionary(level, dict)?,
            )),
        })
    }

    /// `data` as one frame.
    pub fn compress(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Zstd(c) => c.compress(data),
            Self::Lz4 => Ok(lz4_flex::block::compress(data)),
        }
    }
}

/// Decompresses frames, reusing one decompression context.
pub enum FrameDecompressor {
    /// zstd (with or without a dictionary).
    Zstd(Box<zstd::bulk::Decompressor<'static>>),
    /// LZ4 blocks.
    Lz4,
}

impl std::fmt::Debug for FrameDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Zstd(_) => "FrameDecompressor::Zstd",
            Self::Lz4 => "FrameDecompressor::Lz4",
        })
    }
}

impl FrameDecompressor {
    /// A decompressor for `codec` with `dict` (empty for none).
    pub fn new(codec: Codec, dict: &[u8]) -> std::io::Result<Self> {
        Ok(match codec {
            Codec::Lz4 => Self::Lz4,
            Codec::Zstd | Codec::ZstdDict => {
                Self::Zstd(Box::new(zstd::bulk::Decompressor::with_dictionary(dict)?))
            }
        })
    }

    /// Decompresses `frame` into `out` (the block's size), returning the bytes written.
    /// A frame that decodes to more than `out` holds, or does not decode, is an error.
    pub fn decompress_into(&mut self, frame: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Zstd(d) => d.decompress_to_buffer(frame, out),
            Self::Lz4 => {
                lz4_flex::block::decompress_into(frame, out).map_err(std::io::Error::other)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_damage() {
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i / 7 % 251) as u8).collect();
        for codec in [Codec::Zstd, Codec::Lz4] {
            let frame = FrameCompressor::new(codec, 3, &[])
                .and_then(|mut c| c.compress(&data))
                .expect("compress");
            assert!(frame.len() < data.len() / 4, "{codec:?} compresses");
            let mut d = FrameDecompressor::new(codec, &[]).expect("decompressor");
            let mut out = vec![0u8; data.len()];
            assert_eq!(
                d.decompress_into(&frame, &mut out).expect("decode"),
                data.len()
            );
            assert!(out == data);
            let mut small = vec![0u8; data.len() / 2];
            assert!(d.decompress_into(&frame, &mut small).is_err(), "too small");
            let mut cut = frame.clone();
            cut.truncate(frame.len() / 2);
            let mut out = vec![0u8; data.len()];
            assert!(
                d.decompress_into(&cut, &mut out)
                    .map_or(true, |n| n != data.len()),
                "{codec:?}: a truncated frame does not decode whole"
            );
        }
        assert_eq!(Codec::parse("zstd-dict"), Ok(Codec::ZstdDict));
        assert!(Codec::parse("gzip").is_err());
    }
}
