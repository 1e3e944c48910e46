//! Content verification: is this file the one its metadata names?
//!
//! A file's identity is its content ([`FileIdentity`]: size and tree digest), so a snapshot
//! stays valid wherever it is copied (`cp -r`, `rsync`, `tar`, another host). Hashing a
//! multi-GB memory file on every restore would cost seconds, so a successful verification
//! is remembered in the file's directory (`.snapbpf-verified`) under a cheap key the
//! kernel maintains: size, mtime, ctime, inode and device. The key only decides when to
//! hash again: a copy has another inode, an edit changes ctime (which, unlike mtime,
//! cannot be put back), so either makes the next check hash the file again.
//!
//! Hashing reads with `O_DIRECT` where the filesystem allows it, so verifying a file does
//! not pull it into the page cache and a cold start that follows stays cold.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::identity::{FileIdentity, TreeHasher};

/// Name of the cache of verified files, one per directory.
pub const CACHE_FILE: &str = ".snapbpf-verified";
const CACHE_FORMAT: &str = "snapbpf-verified";
/// 2: identities are tree digests ([`TreeHasher`]), no longer flat SHA-256.
const CACHE_VERSION: u32 = 2;
/// Largest cache file read (an entry is ~200 bytes).
const MAX_CACHE_BYTES: u64 = 1 << 20;
/// Bytes hashed per read.
const CHUNK: u64 = 8 << 20;

/// Why a file is not the one its metadata names.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another size than recorded.
    #[error("{path} is {found} bytes, its metadata says {expected} (truncated, or another file)")]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The recorded size.
        expected: u64,
    },
    /// Same size, other content.
    #[error("{path} has changed: its digest is {found}, its metadata says {expected}")]
    Digest {
        /// The file.
        path: PathBuf,
        /// The digest of what is there.
        found: String,
        /// The recorded digest.
        expected: String,
    },
    /// The file changed while it was being hashed.
    #[error("{0} changed while it was being verified; try again once nothing writes to it")]
    Unstable(PathBuf),
}

/// The cheap key a verification is cached under: anything that rewrites, replaces or
/// copies the file changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    dev: u64,
}

impl StatKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    key: StatKey,
    identity: FileIdentity,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    format: String,
    version: u32,
    files: BTreeMap<String, CacheEntry>,
    /// CRC32 of `files` as JSON: a damaged cache vouches for nothing.
    #[serde(default)]
    crc32: u32,
}

/// CRC32 of the cache's entries, serialised.
fn entries_crc(files: &BTreeMap<String, CacheEntry>) -> u32 {
    serde_json::to_vec(files)
        .map(|b| crc32fast::hash(&b))
        .unwrap_or(0)
}

fn cache_path(path: &Path) -> PathBuf {
    fsutil::parent_dir(path).join(CACHE_FILE)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The cache of `path`'s directory; empty when absent or unreadable (it only saves work).
fn load_cache(path: &Path) -> Cache {
    fsutil::read_regular(&cache_path(path), MAX_CACHE_BYTES)
        .ok()
        .and_then(|raw| parse_cache(&raw))
        .unwrap_or_default()
}

/// Parses the bytes of a verification cache: its format, version and checksum first.
fn parse_cache(raw: &[u8]) -> Option<Cache> {
    serde_json::from_slice::<Cache>(raw).ok().filter(|c| {
        c.format == CACHE_FORMAT && c.version == CACHE_VERSION && c.crc32 == entries_crc(&c.files)
    })
}

/// The files a verification cache's bytes vouch for, by name, with the content identity
/// each is recorded with; `None` when the bytes are not a valid cache (for fuzzing the
/// parser: the cache is read only through [`check`]).
pub fn vouched_identities(raw: &[u8]) -> Option<Vec<(String, FileIdentity)>> {
    parse_cache(raw).map(|c| {
        c.files
            .into_iter()
            .map(|(name, entry)| (name, entry.identity))
            .collect()
    })
}

/// Records that the file at `path`, as `meta` describes it now, has `identity`. Best
/// effort: a read-only directory only means the next check hashes again.
fn store_cache(path: &Path, meta: &std::fs::Metadata, identity: FileIdentity) {
    let mut cache = load_cache(path);
    cache.format = CACHE_FORMAT.into();
    cache.version = CACHE_VERSION;
    cache.files.insert(
        file_name(path),
        CacheEntry {
            key: StatKey::of(meta),
            identity,
        },
    );
    cache.crc32 = entries_crc(&cache.files);
    let written = serde_json::to_vec_pretty(&cache)
        .map_err(std::io::Error::from)
        .and_then(|json| fsutil::replace_unsynced(&cache_path(path), &json));
    if let Err(e) = written {
        tracing::debug!(
            "cannot remember the verification of {}: {e}",
            path.display()
        );
    }
}

/// A file whose content a filesystem has checked itself (a snapbpf mount checks every
/// chunk against the digest its manifest names), as the kernel will describe it.
#[derive(Debug, Clone)]
pub struct Vouched {
    /// Its name in the directory.
    pub name: String,
    /// What `stat` reports for it: size, mtime and ctime (ns), inode, device.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Device number.
    pub dev: u64,
    /// Its content.
    pub identity: FileIdentity,
}

/// The bytes of a verification cache (`.snapbpf-verified`) vouching for `files`: what a
/// filesystem that checks content itself serves in each directory, so [`check`] trusts
/// its files without reading them whole.
pub fn vouch(files: &[Vouched]) -> Vec<u8> {
    let files: BTreeMap<String, CacheEntry> = files
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                CacheEntry {
                    key: StatKey {
                        size: f.size,
                        mtime_ns: f.mtime_ns,
                        ctime_ns: f.ctime_ns,
                        inode: f.inode,
                        dev: f.dev,
                    },
                    identity: f.identity,
                },
            )
        })
        .collect();
    let cache = Cache {
        format: CACHE_FORMAT.into(),
        version: CACHE_VERSION,
        crc32: entries_crc(&files),
        files,
    };
    serde_json::to_vec_pretty(&cache).unwrap_or_default()
}

/// The identity of the file at `path` if the cache vouches for it as it is now.
fn cached(path: &Path, meta: &std::fs::Metadata) -> Option<FileIdentity> {
    let cache = load_cache(path);
    let entry = cache.files.get(&file_name(path))?;
    (entry.key == StatKey::of(meta)).then_some(entry.identity)
}

/// The identity of the first `len` bytes of `file`: its data extents read in
/// page-aligned chunks, its holes taken as zeros without reading them (a sparse memory
/// file costs its data, not its size).
pub fn hash_file(file: &File, len: u64) -> std::io::Result<FileIdentity> {
    let mut buf = fsutil::AlignedBuf::new(CHUNK)?;
    let mut tree = TreeHasher::new();
    let mut at = 0u64;
    for (start, end) in fsutil::data_extents(file, len)? {
        tree.update_zeros(start - at);
        at = start;
        while at < end {
            let n = fsutil::read_at(file, buf.as_mut_slice(), at)?;
            if n == 0 {
                break;
            }
            // Direct reads are whole blocks: a block past the extent's end is the next
            // extent's (or a hole's) and is read again there.
            let n = (n as u64).min(end - at);
            tree.update(&buf.as_slice()[..n as usize]);
            at += n;
        }
        if at < end {
            break;
        }
    }
    if at < len {
        // The file ended early, or it is sparse up to its end.
        let size = file.metadata()?.len();
        if size < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("read {at} bytes of a {len}-byte file"),
            ));
        }
        tree.update_zeros(len - at);
    }
    Ok(tree.finish())
}

/// Hashes the file at `path` now, whatever the cache says, and remembers the result.
pub fn identify_now(path: &Path) -> Result<FileIdentity, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (file, direct) = fsutil::open_direct(path).map_err(io)?;
    if !direct {
        tracing::debug!(
            "{} hashed with buffered reads (no O_DIRECT here)",
            path.display()
        );
    }
    hash_open(&file, path).map(|(identity, _)| identity)
}

/// Hashes the open `file` (opened from `path`) whatever the cache says, refuses it if it
/// changed meanwhile, and remembers the result; returns its identity and stamp.
fn hash_open(file: &File, path: &Path) -> Result<(FileIdentity, FileStamp), VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let before = file.metadata().map_err(io)?;
    let found = hash_file(file, before.len()).map_err(io)?;
    let after = file.metadata().map_err(io)?;
    if StatKey::of(&before) != StatKey::of(&after) {
        return Err(VerifyError::Unstable(path.to_path_buf()));
    }
    store_cache(path, &after, found);
    Ok((found, FileStamp(StatKey::of(&after))))
}

/// `stat` of the regular file at `path` (see [`fsutil::open_regular`]).
fn stat_regular(path: &Path) -> Result<std::fs::Metadata, VerifyError> {
    fsutil::open_regular(path)
        .and_then(|f| f.metadata())
        .map_err(|source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The identity of the file at `path`: from the cache when its key matches, else hashed.
pub fn identify(path: &Path) -> Result<FileIdentity, VerifyError> {
    let meta = stat_regular(path)?;
    match cached(path, &meta) {
        Some(identity) => Ok(identity),
        None => identify_now(path),
    }
}

fn compare(path: &Path, found: FileIdentity, expected: &FileIdentity) -> Result<(), VerifyError> {
    if found.size != expected.size {
        return Err(VerifyError::Size {
            path: path.to_path_buf(),
            found: found.size,
            expected: expected.size,
        });
    }
    if found.digest != expected.digest {
        return Err(VerifyError::Digest {
            path: path.to_path_buf(),
            found: found.digest_hex(),
            expected: expected.digest_hex(),
        });
    }
    Ok(())
}

/// Checks that the file at `path` is `expected`, hashing it only when the cache cannot
/// vouch for it (first use, after a copy or an edit). A size mismatch is caught without
/// reading.
pub fn check(path: &Path, expected: &FileIdentity) -> Result<(), VerifyError> {
    let meta = stat_regular(path)?;
    if meta.len() != expected.size {
        return Err(VerifyError::Size {
            path: path.to_path_buf(),
            found: meta.len(),
            expected: expected.size,
        });
    }
    let found = match cached(path, &meta) {
        Some(identity) => identity,
        None => identify_now(path)?,
    };
    compare(path, found, expected)
}

/// What the kernel reports about an open file that any rewrite, replacement or copy
/// changes (size, mtime, ctime, inode, device): a file opened later with the same stamp
/// is the file that was checked, unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp(StatKey);

impl FileStamp {
    /// The stamp of `file` now.
    pub fn of(file: &File) -> std::io::Result<Self> {
        file.metadata().map(|m| Self(StatKey::of(&m)))
    }
}

/// Checks that the open `file` (opened from `path`, whose directory's cache is consulted
/// by that name) is `expected`, hashing that descriptor when the cache cannot vouch for
/// it, and returns its stamp: what was checked is this descriptor, not whatever the path
/// names a moment later. Open it with [`fsutil::open_direct`] to leave the page cache
/// as it was.
pub fn check_open(
    file: &File,
    path: &Path,
    expected: &FileIdentity,
) -> Result<FileStamp, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(io)?.len();
    if size != expected.size {
        return Err(VerifyError::Size {
            path: path.to_path_buf(),
            found: size,
            expected: expected.size,
        });
    }
    let (found, stamp) = identify_open(file, path)?;
    compare(path, found, expected)?;
    Ok(stamp)
}

/// The identity of the open `file` (opened from `path`), from its directory's cache when
/// that vouches for the descriptor as it is, else hashed from the descriptor; and its
/// stamp then.
pub fn identify_open(file: &File, path: &Path) -> Result<(FileIdentity, FileStamp), VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let before = file.metadata().map_err(io)?;
    if !before.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    match cached(path, &before) {
        Some(found) => Ok((found, FileStamp(StatKey::of(&before)))),
        None => hash_open(file, path),
    }
}

/// Checks that the file at `path` is `expected` by hashing it now (`snapbpf verify`).
pub fn check_now(path: &Path, expected: &FileIdentity) -> Result<(), VerifyError> {
    compare(path, identify_now(path)?, expected)
}

/// Records the identity of a file its writer just hashed while writing it, so the first
/// check does not hash it again.
pub fn remember(path: &Path, identity: FileIdentity) -> std::io::Result<()> {
    let meta = fsutil::open_regular(path)?.metadata()?;
    if meta.len() != identity.size {
        return Err(std::io::Error::other(
            "the file is not the size its writer hashed",
        ));
    }
    store_cache(path, &meta, identity);
    Ok(())
}

/// Writes `bytes` to `path` atomically ([`fsutil::write_atomic`]) and returns their
/// identity, remembered as verified.
pub fn write_identified(path: &Path, bytes: &[u8]) -> std::io::Result<FileIdentity> {
    fsutil::write_atomic(path, bytes)?;
    let identity = FileIdentity::of_bytes(bytes);
    remember(path, identity)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_verifies_and_an_edit_with_mtime_put_back_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let bytes: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i % 251) as u8).collect();
        let id = write_identified(&a, &bytes).expect("write");
        assert_eq!(id, FileIdentity::of_bytes(&bytes));
        check(&a, &id).expect("the file as written");

        let other = tempfile::tempdir().expect("tempdir");
        let b = other.path().join("a");
        std::fs::copy(&a, &b).expect("copy");
        check(&b, &id).expect("a copy is the same file");

        // One byte changed, same size, mtime put back: the cached key no longer
        // matches (ctime moved), so the check hashes and refuses.
        let mtime = std::fs::metadata(&b)
            .expect("stat")
            .modified()
            .expect("mtime");
        let mut changed = bytes.clone();
        changed[5000] ^= 1;
        std::fs::write(&b, &changed).expect("edit");
        let f = File::options().write(true).open(&b).expect("open");
        f.set_modified(mtime).expect("put mtime back");
        drop(f);
        let e = check(&b, &id).expect_err("edited");
        assert!(matches!(e, VerifyError::Digest { .. }), "{e}");
        let e = check_now(&b, &id).expect_err("edited");
        assert!(e.to_string().contains("has changed"), "{e}");

        std::fs::write(&b, &bytes[..100]).expect("truncate");
        let e = check(&b, &id).expect_err("truncated");
        assert!(matches!(e, VerifyError::Size { found: 100, .. }), "{e}");
    }

    #[test]
    fn a_damaged_cache_vouches_for_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let id = write_identified(&a, b"some contents").expect("write");
        let cache = dir.path().join(CACHE_FILE);
        let text = std::fs::read_to_string(&cache).expect("read the cache");
        // The entry now claims another digest, with the file's stat key intact.
        let forged = text.replace(&id.digest_hex(), &"00".repeat(32));
        assert_ne!(forged, text);
        std::fs::write(&cache, forged).expect("write");
        // Were the entry trusted, the check would fail on the forged digest; it hashes.
        check(&a, &id).expect("the file is hashed again, and is fine");
    }

    #[test]
    fn a_planted_cache_entry_for_another_file_vouches_for_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let id = write_identified(&a, b"the real contents").expect("write");
        // Replace the file by another one of the same size: new inode and ctime.
        let tmp = dir.path().join("b");
        std::fs::write(&tmp, b"the fake contents").expect("write");
        std::fs::rename(&tmp, &a).expect("replace");
        assert!(
            check(&a, &id).is_err(),
            "the cache entry was for the old inode"
        );
    }
}
