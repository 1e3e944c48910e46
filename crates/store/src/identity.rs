//! The identity of a file that artifacts are bound to: one type for the snapshot's
//! metadata, strategy artifacts and working sets.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Identity of a file: if any field changes, what was bound to it is stale. `digest` is
/// the content's SHA-256, computed when the file was written; the other fields are
/// checked on every open because they cost nothing (reading the content would pull it
/// into the page cache and spoil a cold start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Device number (userspace `st_dev`).
    pub dev: u64,
    /// SHA-256 of the contents (zeros when unknown), hex in JSON.
    #[serde(rename = "sha256", with = "hex_digest")]
    pub digest: [u8; 32],
}

impl FileIdentity {
    /// Identity from `stat` data plus a digest the caller computed.
    pub fn from_metadata(meta: &std::fs::Metadata, digest: [u8; 32]) -> Self {
        Self {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            inode: meta.ino(),
            dev: meta.dev(),
            digest,
        }
    }

    /// Identity of the file at `path` as it is now, with a known digest.
    pub fn of(path: &Path, digest: [u8; 32]) -> std::io::Result<Self> {
        Ok(Self::from_metadata(&std::fs::metadata(path)?, digest))
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
        if self.mtime_ns != other.mtime_ns {
            d.push("mtime");
        }
        if self.inode != other.inode {
            d.push("inode");
        }
        if self.dev != other.dev {
            d.push("dev");
        }
        if self.digest != other.digest {
            d.push("digest");
        }
        d
    }

    /// Compares the cheap fields with the file at `path` as it is now; returns what
    /// differs, in words.
    pub fn check(&self, path: &Path) -> std::io::Result<Option<String>> {
        let now = Self::of(path, self.digest)?;
        Ok(if now.size != self.size {
            Some(format!(
                "size is {} bytes, expected {}",
                now.size, self.size
            ))
        } else if now.inode != self.inode || now.dev != self.dev {
            Some("it was replaced by another file".into())
        } else if now.mtime_ns != self.mtime_ns {
            Some("it was modified".into())
        } else {
            None
        })
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

    #[test]
    fn json_keeps_the_digest_as_hex() {
        let id = FileIdentity {
            size: 1,
            mtime_ns: 2,
            inode: 3,
            dev: 4,
            digest: [0xab; 32],
        };
        let json = serde_json::to_string(&id).expect("json");
        assert!(
            json.contains(&format!("\"sha256\":\"{}\"", "ab".repeat(32))),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<FileIdentity>(&json).ok(), Some(id));
        assert!(serde_json::from_str::<FileIdentity>(&json.replace("abab", "zz")).is_err());
    }
}
