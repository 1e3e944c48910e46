//! The manifest of a pushed snapshot: every file of its directory as a list of chunks,
//! and the snapshot's identity. It is written last, in one PUT, so a manifest never names
//! a chunk that is not there yet; it is the store's artifact container (magic, version,
//! CRC32), bounded and checked before use.

use std::path::Path;

use serde::{Deserialize, Serialize};
use snapbpf_store::FileIdentity;

/// Artifact kind of a manifest.
pub const KIND: &str = "fleet-manifest";
/// Smallest and largest chunk size accepted.
pub const CHUNK_SIZES: std::ops::RangeInclusive<u64> = (64 << 10)..=(64 << 20);
/// Most files in a snapshot directory.
pub const MAX_FILES: usize = 256;
/// Largest file pushed (1 TiB).
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// Longest manifest object read from a bucket (a manifest lists a chunk in well under 100
/// bytes: this is millions of chunks).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// One chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Its content (`None`: all zeros, not stored).
    pub id: Option<FileIdentity>,
    /// Bytes its object holds (compressed), 0 for a zero chunk.
    pub stored: u64,
}

/// One file of the snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its name in the directory.
    pub name: String,
    /// Its identity (size and tree digest: its chunks compose into it).
    pub id: FileIdentity,
    /// Its chunks, in order; the last may be short.
    pub chunks: Vec<ChunkRef>,
}

/// A pushed snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Its name under the location.
    pub name: String,
    /// The function it runs.
    pub function: String,
    /// Identity of its memory file.
    pub memory: FileIdentity,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Its files.
    pub files: Vec<FileEntry>,
    /// When it was pushed, ns since the Unix epoch.
    pub pushed_unix_ns: u64,
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The container is damaged or not a manifest.
    #[error(transparent)]
    Container(#[from] snapbpf_store::artifact::ArtifactError),
    /// It is whole but inconsistent.
    #[error("manifest {key} is inconsistent: {reason}")]
    Invalid {
        /// Its key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The object key of the manifest of snapshot `name`.
pub fn key(name: &str) -> String {
    format!("snapshots/{name}/manifest")
}

/// The name of the snapshot whose manifest is at `relative_key` (a key under the
/// location's prefix), if it is one.
pub fn name_of(relative_key: &str) -> Option<&str> {
    relative_key
        .strip_prefix("snapshots/")?
        .strip_suffix("/manifest")
        // A name becomes a directory of the mount: never `.`, `..` or hidden.
        .filter(|n| valid_file_name(n))
}

/// Whether `name` can be a file of a mounted snapshot directory.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\0')
}

impl FileEntry {
    /// The chunk holding byte `offset`, and where in it.
    pub fn chunk_at(&self, offset: u64, chunk_size: u64) -> Option<(usize, u64)> {
        let index = usize::try_from(offset / chunk_size).ok()?;
        (index < self.chunks.len()).then_some((index, offset % chunk_size))
    }

    /// Raw length of chunk `index`.
    pub fn chunk_len(&self, index: usize, chunk_size: u64) -> u64 {
        let start = index as u64 * chunk_size;
        self.id.size.saturating_sub(start).min(chunk_size)
    }
}

/// The container header of a manifest: the manifest itself is the payload, whose cap
/// (256 MiB, [`snapbpf_store::artifact::MAX_PAYLOAD`]) holds millions of chunks, where the
/// header's (1 MiB) would stop a push at about nine thousand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ContainerHeader {
    /// [`PAYLOAD_FORMAT`].
    payload: u32,
}

/// The payload's format: the manifest as JSON.
const PAYLOAD_FORMAT: u32 = 1;

impl Manifest {
    /// Its object bytes.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let json = serde_json::to_vec(self)?;
        let header = ContainerHeader {
            payload: PAYLOAD_FORMAT,
        };
        snapbpf_store::artifact::encode(KIND, &header, &json)
    }

    /// Parses and checks the manifest object at `key`.
    pub fn decode(bytes: &[u8], key: &str) -> Result<Self, ManifestError> {
        let (header, json): (ContainerHeader, Vec<u8>) =
            snapbpf_store::artifact::decode(bytes, KIND, Path::new(key))?;
        let invalid = |reason: String| ManifestError::Invalid {
            key: key.to_string(),
            reason,
        };
        if header.payload != PAYLOAD_FORMAT {
            return Err(invalid(format!("payload format {}", header.payload)));
        }
        let manifest: Manifest = serde_json::from_slice(&json)
            .map_err(|e| invalid(format!("its payload is not a manifest: {e}")))?;
        manifest
            .validate()
            .map_err(|reason| ManifestError::Invalid {
                key: key.to_string(),
                reason,
            })?;
        Ok(manifest)
    }

    /// The file named `name`.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    fn validate(&self) -> Result<(), String> {
        if !CHUNK_SIZES.contains(&self.chunk_size) || !self.chunk_size.is_power_of_two() {
            return Err(format!(
                "chunk size {} is not a power of two in 64 KiB..64 MiB",
                self.chunk_size
            ));
        }
        if self.files.len() > MAX_FILES {
            return Err(format!("{} files (at most {MAX_FILES})", self.files.len()));
        }
        let mut names = std::collections::BTreeSet::new();
        for f in &self.files {
            if !valid_file_name(&f.name) || !names.insert(f.name.as_str()) {
                return Err(format!("file name {:?} is invalid or repeated", f.name));
            }
            if f.id.size > MAX_FILE_BYTES {
                return Err(format!("{} is {} bytes", f.name, f.id.size));
            }
            let want = f.id.size.div_ceil(self.chunk_size);
            if f.chunks.len() as u64 != want {
                return Err(format!(
                    "{} has {} chunks, its size needs {want}",
                    f.name,
                    f.chunks.len()
                ));
            }
            // The file's identity must follow from its chunks' (a tree digest composes),
            // so vouching for it after checking every chunk served vouches for the truth.
            let mut tree = snapbpf_store::TreeHasher::new();
            for (i, c) in f.chunks.iter().enumerate() {
                let len = f.chunk_len(i, self.chunk_size);
                match c.id {
                    Some(id) if id.size != len => {
                        return Err(format!("{} chunk {i} is {} bytes", f.name, id.size));
                    }
                    Some(id) => tree
                        .push_subtree(id.size, id.digest)
                        .map_err(|e| format!("{}: {e}", f.name))?,
                    None => tree.update_zeros(len),
                }
            }
            if tree.finish() != f.id {
                return Err(format!(
                    "{}'s identity does not follow from its chunks' (a forged or damaged manifest)",
                    f.name
                ));
            }
        }
        match self.file(snapbpf_store::snapshot::MEMORY_FILE) {
            Some(m) if m.id == self.memory => Ok(()),
            _ => Err("its memory file is missing or not the snapshot's".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_of(bytes: &[u8], chunk_size: u64) -> Manifest {
        let chunks = bytes
            .chunks(chunk_size as usize)
            .map(|c| ChunkRef {
                id: c.iter().any(|&b| b != 0).then(|| FileIdentity::of_bytes(c)),
                stored: 0,
            })
            .collect();
        let id = FileIdentity::of_bytes(bytes);
        Manifest {
            name: "f".into(),
            function: "f".into(),
            memory: id,
            chunk_size,
            files: vec![FileEntry {
                name: snapbpf_store::snapshot::MEMORY_FILE.into(),
                id,
                chunks,
            }],
            pushed_unix_ns: 0,
        }
    }

    #[test]
    fn a_manifest_of_any_chunk_count_round_trips() {
        // 40 000 chunks: about 4.6 MB of JSON, past the container header's 1 MiB cap
        // that bounded pushes at ~9 100 chunks before.
        let chunk = *CHUNK_SIZES.start();
        let mut bytes = vec![0u8; 40_000 * chunk as usize];
        for (i, c) in bytes.chunks_mut(chunk as usize).enumerate() {
            c[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        }
        let manifest = manifest_of(&bytes, chunk);
        let encoded = manifest.encode().expect("encode");
        assert!(encoded.len() > 1 << 22, "{} bytes", encoded.len());
        let decoded = Manifest::decode(&encoded, "k").expect("decode");
        assert_eq!(decoded, manifest);
    }

    #[test]
    fn a_files_identity_must_follow_from_its_chunks() {
        let chunk = *CHUNK_SIZES.start();
        let mut bytes = vec![0u8; 5 * chunk as usize + 1234];
        bytes[chunk as usize + 7] = 1;
        bytes[4 * chunk as usize] = 2;
        let good = manifest_of(&bytes, chunk);
        assert_eq!(good.validate(), Ok(()));
        // A bucket that names other content under the same file identity (so that a
        // mount would vouch for it) is refused at once.
        let mut forged = good.clone();
        forged.files[0].chunks[1].id = Some(FileIdentity::of_bytes(&vec![9u8; chunk as usize]));
        assert!(forged.validate().unwrap_err().contains("does not follow"));
        let mut forged = good.clone();
        forged.files[0].chunks[2] = forged.files[0].chunks[1];
        assert!(forged.validate().is_err());
        let mut forged = good;
        forged.files[0].chunks[1].id = None;
        assert!(forged.validate().is_err());
    }

    #[test]
    fn a_key_names_a_snapshot_only_if_the_name_can_be_a_directory() {
        assert_eq!(name_of("snapshots/bert/manifest"), Some("bert"));
        for bad in [
            "snapshots/./manifest",
            "snapshots/../manifest",
            "snapshots/.hidden/manifest",
            "snapshots//manifest",
            "snapshots/a/b/manifest",
            "chunks/x",
        ] {
            assert_eq!(name_of(bad), None, "{bad}");
        }
    }
}
