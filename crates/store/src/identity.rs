//! The identity of a file that artifacts are bound to: one type for the snapshot's
//! metadata, strategy artifacts and working sets.
//!
//! Identity is content: a copy of a file (another path, filesystem or host) is the same
//! file, an edit that puts the mtime back is not. Checking it cheaply is
//! [`crate::verify`]'s job.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Identity of a file's content: if either field differs, what was bound to it is stale.
/// JSON also accepts (and ignores) the `mtime_ns`, `inode` and `dev` fields that snapbpf
/// 0.1 recorded, so snapshots written by it still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the contents (zeros when unknown), hex in JSON.
    #[serde(rename = "sha256", with = "hex_digest")]
    pub digest: [u8; 32],
}

impl FileIdentity {
    /// Identity of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self {
            size: bytes.len() as u64,
            digest: Sha256::digest(bytes).into(),
        }
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
            digest: [0xab; 32],
        };
        let json = serde_json::to_string(&id).expect("json");
        assert!(
            json.contains(&format!("\"sha256\":\"{}\"", "ab".repeat(32))),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<FileIdentity>(&json).ok(), Some(id));
        assert!(serde_json::from_str::<FileIdentity>(&json.replace("abab", "zz")).is_err());
        // What snapbpf 0.1 wrote.
        let old = format!(
            r#"{{"size":1,"mtime_ns":2,"inode":3,"dev":4,"sha256":"{}"}}"#,
            "ab".repeat(32)
        );
        assert_eq!(serde_json::from_str::<FileIdentity>(&old).ok(), Some(id));
    }
}
