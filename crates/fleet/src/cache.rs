//! The host's chunk cache: raw chunks on local disk, each in a file named by its identity digest,
//! bounded in bytes (least recently used go first).
//!
//! Every mount on the host may share one cache directory; a second "host" is another
//! directory. A file is written under a temporary name and renamed into place, so a name
//! only ever holds a whole chunk. Every read from disk is hashed again: one that does not
//! hash to its name (a crash mid-write on a filesystem without ordered renames, a damaged
//! disk, a file changed under the cache) is deleted and fetched again; the disk is not
//! trusted with a tenant's memory between two reads any more than the bucket is. Reads use `O_DIRECT`, and written files are dropped from the page cache,
//! so the host's memory holds a chunk once: in the mounted files VMs map, not again here.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use snapbpf_store::{fsutil, FileIdentity};

struct Entry {
    bytes: u64,
    last_used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<[u8; 32], Entry>,
    bytes: u64,
    clock: u64,
}

/// A chunk cache directory.
pub struct ChunkCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    /// Chunks waiting for the writer thread (written off the read path: a read never
    /// waits for the local disk to take a copy).
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Queued>>>,
}

/// A chunk waiting to be written: its identity and content.
type Queued = (FileIdentity, std::sync::Arc<Vec<u8>>);

/// Chunks queued for writing at most; more are not kept (a later read fetches them again).
const WRITE_QUEUE: usize = 64;

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn parse_name(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ChunkCache {
    /// Opens (creating it) the cache in `dir`, holding at most `capacity` bytes; what an
    /// earlier run left there is kept, temporary files are removed.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        // 0700 where it creates it, and chunks 0600: a chunk is a piece of a tenant's
        // memory, and no other user may read one.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut state = State::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            match parse_name(&name) {
                Some(digest) => {
                    state.clock += 1;
                    state.bytes += meta.len();
                    state.entries.insert(
                        digest,
                        Entry {
                            bytes: meta.len(),
                            last_used: state.clock,
                        },
                    );
                }
                // A temporary file of a write a crash cut short.
                None if name.starts_with('.') => {
                    let _ = std::fs::remove_file(entry.path());
                }
                None => {}
            }
        }
        let cache = Self {
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(state),
            queue: Mutex::new(None),
        };
        cache.shrink();
        Ok(cache)
    }

    /// Starts the thread that writes queued chunks (the cache then keeps chunks given to
    /// [`ChunkCache::keep`]); it ends when the cache is dropped.
    pub fn start_writer(self: &std::sync::Arc<Self>) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Queued>(WRITE_QUEUE);
        let cache = std::sync::Arc::downgrade(self);
        std::thread::Builder::new()
            .name("chunk-cache".into())
            .spawn(move || {
                for (id, raw) in rx {
                    let Some(cache) = cache.upgrade() else { break };
                    cache.put(&id, &raw);
                }
            })?;
        *self.queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Ok(())
    }

    /// Queues `raw`, the checked content of `id`, for the writer thread (written now where
    /// none runs); dropped when the queue is full.
    pub fn keep(&self, id: &FileIdentity, raw: std::sync::Arc<Vec<u8>>) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match queue {
            Some(tx) => {
                let _ = tx.try_send((*id, raw));
            }
            None => self.put(id, &raw),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, id: &FileIdentity) -> PathBuf {
        self.dir.join(id.digest_hex())
    }

    /// Bytes held, and the capacity.
    pub fn usage(&self) -> (u64, u64) {
        (self.lock().bytes, self.capacity)
    }

    /// The chunk `id` if the cache holds it whole.
    pub fn get(&self, id: &FileIdentity) -> Option<Vec<u8>> {
        {
            let mut state = self.lock();
            state.clock += 1;
            let now = state.clock;
            state.entries.get_mut(&id.digest)?.last_used = now;
        }
        let path = self.path(id);
        let data = fsutil::read_direct(&path)
            .ok()
            .map(|(buf, _)| buf.as_slice().to_vec());
        match data {
            Some(d) if FileIdentity::of_bytes(&d) == *id => Some(d),
            other => {
                if other.is_some() {
                    tracing::warn!(
                        "chunk cache: {} is damaged; fetching it again",
                        path.display()
                    );
                }
                self.forget(id);
                None
            }
        }
    }

    fn forget(&self, id: &FileIdentity) {
        let mut state = self.lock();
        if let Some(e) = state.entries.remove(&id.digest) {
            state.bytes = state.bytes.saturating_sub(e.bytes);
        }
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Keeps `raw`, the content of `id` (checked by the caller). Best effort: a cache
    /// that cannot write only costs fetches.
    pub fn put(&self, id: &FileIdentity, raw: &[u8]) {
        if raw.len() as u64 > self.capacity {
            return;
        }
        if let Err(e) = self.write(id, raw) {
            tracing::warn!("chunk cache: cannot keep {}: {e}", id.digest_hex());
            return;
        }
        {
            let mut state = self.lock();
            state.clock += 1;
            let last_used = state.clock;
            if let Some(old) = state.entries.insert(
                id.digest,
                Entry {
                    bytes: raw.len() as u64,
                    last_used,
                },
            ) {
                state.bytes = state.bytes.saturating_sub(old.bytes);
            }
            state.bytes += raw.len() as u64;
        }
        self.shrink();
    }

    fn write(&self, id: &FileIdentity, raw: &[u8]) -> std::io::Result<()> {
        let (mut file, tmp) = fsutil::create_exclusive(&self.dir, "chunk")?;
        let written = file
            .write_all(raw)
            .and_then(|()| fsutil::drop_cached(&file))
            .and_then(|()| std::fs::rename(&tmp, self.path(id)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Removes least recently used chunks until the cache fits its capacity.
    fn shrink(&self) {
        let mut state = self.lock();
        while state.bytes > self.capacity {
            let Some(victim) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(d, _)| *d)
            else {
                break;
            };
            if let Some(e) = state.entries.remove(&victim) {
                state.bytes = state.bytes.saturating_sub(e.bytes);
            }
            let _ = std::fs::remove_file(self.dir.join(snapbpf_store::identity::hex(&victim)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_survives_reopening_and_drops_damage() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("scratch");
        let chunk = |b: u8| vec![b; 64 << 10];
        let ids: Vec<_> = (1..=4u8)
            .map(|b| FileIdentity::of_bytes(&chunk(b)))
            .collect();
        let cache = ChunkCache::open(dir.path(), 3 * (64 << 10)).expect("open");
        for (i, id) in ids.iter().enumerate() {
            cache.put(id, &chunk(i as u8 + 1));
        }
        assert_eq!(cache.usage().0, 3 * (64 << 10));
        assert!(cache.get(&ids[0]).is_none(), "the least recently used went");
        assert_eq!(cache.get(&ids[3]), Some(chunk(4)));
        drop(cache);
        let cache = ChunkCache::open(dir.path(), 3 * (64 << 10)).expect("reopen");
        assert_eq!(cache.get(&ids[1]), Some(chunk(2)), "kept across runs");
        // A damaged file is refused and forgotten.
        std::fs::write(dir.path().join(ids[2].digest_hex()), chunk(9)).expect("damage");
        let cache = ChunkCache::open(dir.path(), 3 * (64 << 10)).expect("reopen");
        assert!(cache.get(&ids[2]).is_none());
        assert!(!dir.path().join(ids[2].digest_hex()).exists());
        // A file changed after it was read and checked once, to the same length, is
        // refused on the next read too (each read is hashed).
        assert_eq!(cache.get(&ids[1]), Some(chunk(2)));
        std::fs::write(dir.path().join(ids[1].digest_hex()), chunk(7)).expect("swap");
        assert!(
            cache.get(&ids[1]).is_none(),
            "a swapped chunk is not served"
        );
    }
}
