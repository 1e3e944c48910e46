//! The container format of strategy artifacts (traces, working-set metadata).
//!
//! ```text
//! magic        8 bytes  "SNBPARTF"
//! version      u32 LE   ARTIFACT_VERSION
//! kind        16 bytes  NUL-padded ASCII, e.g. "reap-trace"
//! header_len   u32 LE   at most MAX_HEADER bytes
//! header       JSON     kind-specific; always binds the artifact to the snapshot's memory
//! payload_len  u64 LE   at most MAX_PAYLOAD bytes and what the file holds
//! payload      bytes    kind-specific binary (offsets, regions)
//! crc32        u32 LE   CRC32 of every byte before it
//! ```
//! Deserialisation is bounded: lengths are checked against the file's size and fixed caps
//! before anything is allocated, and the CRC is verified before the header is parsed.
//! Files are written atomically ([`crate::fsutil::write_atomic`]).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Magic bytes at the start of every artifact.
pub const ARTIFACT_MAGIC: &[u8; 8] = b"SNBPARTF";
/// Version of the container format.
pub const ARTIFACT_VERSION: u32 = 1;
/// Largest accepted header.
pub const MAX_HEADER: u32 = 1 << 20;
/// Largest accepted payload (offsets of 3 GiB of pages are 6 MiB; leave room).
pub const MAX_PAYLOAD: u64 = 256 << 20;

const KIND_LEN: usize = 16;
const FIXED: usize = 8 + 4 + KIND_LEN + 4;

/// Errors reading or writing an artifact container.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not an artifact of this kind and version, or it is damaged.
    #[error("{path} cannot be used: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Serialises `header` and `payload` as an artifact of `kind` and writes it atomically.
pub fn write<H: Serialize>(
    path: &Path,
    kind: &str,
    header: &H,
    payload: &[u8],
) -> Result<u64, ArtifactError> {
    let io = |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    };
    let out = encode(kind, header, payload).map_err(io)?;
    crate::fsutil::write_atomic(path, &out).map_err(io)?;
    Ok(out.len() as u64)
}

/// The bytes of an artifact of `kind` holding `header` and `payload`.
pub fn encode<H: Serialize>(kind: &str, header: &H, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let header = serde_json::to_vec(header)?;
    if kind.len() > KIND_LEN || header.len() > MAX_HEADER as usize {
        return Err(std::io::Error::other("artifact kind or header too large"));
    }
    let mut out = Vec::with_capacity(FIXED + header.len() + 12 + payload.len());
    out.extend_from_slice(ARTIFACT_MAGIC);
    out.extend_from_slice(&ARTIFACT_VERSION.to_le_bytes());
    let mut k = [0u8; KIND_LEN];
    k[..kind.len()].copy_from_slice(kind.as_bytes());
    out.extend_from_slice(&k);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Reads an artifact of `kind`: checks magic, version, kind, lengths and CRC, then parses
/// the header. Returns the header and the payload.
pub fn read<H: DeserializeOwned>(path: &Path, kind: &str) -> Result<(H, Vec<u8>), ArtifactError> {
    let corrupt = |reason: String| ArtifactError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = crate::fsutil::read_regular(path, MAX_PAYLOAD + u64::from(MAX_HEADER) + 64)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidData => corrupt(source.to_string()),
            _ => ArtifactError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    decode(&bytes, kind, path)
}

/// Parses the bytes of an artifact of `kind` read from `path` (named in errors): the
/// checks of [`read`], without the file.
pub fn decode<H: DeserializeOwned>(
    bytes: &[u8],
    kind: &str,
    path: &Path,
) -> Result<(H, Vec<u8>), ArtifactError> {
    let corrupt = |reason: String| ArtifactError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    // The magic first: a foreign file is named as foreign even when it is short.
    let magic_len = bytes.len().min(ARTIFACT_MAGIC.len());
    if bytes[..magic_len] != ARTIFACT_MAGIC[..magic_len] {
        return Err(corrupt("not a snapbpf artifact (bad magic)".into()));
    }
    if bytes.len() < FIXED + 8 + 4 {
        return Err(corrupt("truncated (shorter than the fixed header)".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != ARTIFACT_VERSION {
        return Err(corrupt(format!(
            "artifact format version {version}, this snapbpf reads {ARTIFACT_VERSION} (record again)"
        )));
    }
    let found_kind = String::from_utf8_lossy(&bytes[12..12 + KIND_LEN])
        .trim_end_matches('\0')
        .to_string();
    if found_kind != kind {
        return Err(corrupt(format!(
            "holds a '{found_kind}', expected a '{kind}'"
        )));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
    if crc32fast::hash(body) != crc {
        return Err(corrupt("CRC mismatch (truncated or damaged)".into()));
    }
    let header_len = u32::from_le_bytes(body[FIXED - 4..FIXED].try_into().unwrap_or_default());
    if header_len > MAX_HEADER || FIXED + header_len as usize + 8 > body.len() {
        return Err(corrupt(format!("bad header length {header_len}")));
    }
    let header_end = FIXED + header_len as usize;
    let header: H = serde_json::from_slice(&body[FIXED..header_end])
        .map_err(|e| corrupt(format!("bad header: {e}")))?;
    let payload_len = u64::from_le_bytes(
        body[header_end..header_end + 8]
            .try_into()
            .unwrap_or_default(),
    );
    let payload = &body[header_end + 8..];
    if payload_len > MAX_PAYLOAD || payload_len != payload.len() as u64 {
        return Err(corrupt(format!(
            "payload length {payload_len} does not match the file"
        )));
    }
    Ok((header, payload.to_vec()))
}

/// Little-endian `u64`s of `payload`, refusing a length that is not a multiple of 8.
pub fn u64s(payload: &[u8]) -> Option<Vec<u64>> {
    if !payload.len().is_multiple_of(8) {
        return None;
    }
    Some(
        payload
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect(),
    )
}

/// `values` as little-endian bytes.
pub fn u64_bytes(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct H {
        a: u32,
    }

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x");
        write(&p, "test-kind", &H { a: 7 }, &u64_bytes(&[1, 2, 3])).expect("write");
        let (h, payload): (H, Vec<u8>) = read(&p, "test-kind").expect("read");
        assert_eq!(h, H { a: 7 });
        assert_eq!(u64s(&payload), Some(vec![1, 2, 3]));
        assert!(read::<H>(&p, "other").is_err());
        let mut bytes = std::fs::read(&p).expect("read");
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        std::fs::write(&p, &bytes).expect("write");
        let e = read::<H>(&p, "test-kind").expect_err("damaged");
        assert!(e.to_string().contains("CRC"), "{e}");
        std::fs::write(&p, &bytes[..20]).expect("write");
        assert!(read::<H>(&p, "test-kind").is_err());
    }
}
