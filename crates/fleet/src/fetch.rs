//! Fetching chunks: from a small in-memory set of recent chunks, else the host's chunk
//! cache, else the object store. Each chunk is fetched once however many readers want it
//! at once (the first fetches, the others wait for it), at most `parallel` GETs run at a
//! time, and every object is checked against its digest before anyone reads it: a fetch
//! that fails or brings other content is an error, never data.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use snapbpf_store::FileIdentity;

use crate::cache::ChunkCache;
use crate::chunk::{self, ChunkError};
use crate::remote::{Remote, RemoteError};

/// Why a chunk could not be had.
#[derive(Debug, thiserror::Error, Clone)]
#[error("{0}")]
pub struct FetchError(pub String);

fn fetch_error(e: &dyn std::error::Error) -> FetchError {
    FetchError(snapbpf_os::error_chain(e))
}

/// What fetching has done so far (cumulative; a restore's share is the difference of two
/// readings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchStats {
    /// GETs that completed.
    pub requests: u64,
    /// Object bytes those GETs brought (compressed, as on the wire).
    pub bytes: u64,
    /// Chunk bytes they decoded to.
    pub raw_bytes: u64,
    /// Chunks read from the host's chunk cache.
    pub cache_hits: u64,
    /// Chunks served from memory (recently used).
    pub memory_hits: u64,
    /// Readers that waited for a fetch another had started.
    pub joined: u64,
    /// Fetches that failed (a request, or an object that did not check out).
    pub errors: u64,
    /// Sum of the GETs' times to first byte, ns.
    pub ttfb_ns: u64,
    /// Sum of the GETs' whole times, ns.
    pub get_ns: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
    raw_bytes: AtomicU64,
    cache_hits: AtomicU64,
    memory_hits: AtomicU64,
    joined: AtomicU64,
    errors: AtomicU64,
    ttfb_ns: AtomicU64,
    get_ns: AtomicU64,
}

type Outcome = Result<Arc<Vec<u8>>, FetchError>;

#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

/// Recently used chunks, bounded in bytes.
#[derive(Default)]
struct Recent {
    chunks: HashMap<[u8; 32], Arc<Vec<u8>>>,
    order: VecDeque<[u8; 32]>,
    bytes: u64,
}

/// A counting semaphore for GETs in flight.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn take(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// Fetches chunks for a mount.
pub struct Fetcher {
    remote: Remote,
    cache: Arc<ChunkCache>,
    in_flight: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    recent: Mutex<Recent>,
    recent_capacity: u64,
    slots: Slots,
    counters: Counters,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("remote", &self.remote)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher over `remote` and `cache`, with at most `parallel` GETs at once and
    /// `recent_bytes` of recently used chunks kept in memory.
    pub fn new(remote: Remote, cache: ChunkCache, parallel: usize, recent_bytes: u64) -> Self {
        let cache = Arc::new(cache);
        if let Err(e) = cache.start_writer() {
            tracing::warn!("chunk cache: no writer thread ({e}); chunks are written as fetched");
        }
        Self {
            remote,
            cache,
            in_flight: Mutex::new(HashMap::new()),
            recent: Mutex::new(Recent::default()),
            recent_capacity: recent_bytes,
            slots: Slots {
                free: Mutex::new(parallel.max(1)),
                freed: Condvar::new(),
            },
            counters: Counters::default(),
        }
    }

    /// The object store it fetches from.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The chunk cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// Counters so far.
    pub fn stats(&self) -> FetchStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FetchStats {
            requests: get(&c.requests),
            bytes: get(&c.bytes),
            raw_bytes: get(&c.raw_bytes),
            cache_hits: get(&c.cache_hits),
            memory_hits: get(&c.memory_hits),
            joined: get(&c.joined),
            errors: get(&c.errors),
            ttfb_ns: get(&c.ttfb_ns),
            get_ns: get(&c.get_ns),
        }
    }

    /// The chunk with identity `id`, checked.
    pub fn chunk(&self, id: &FileIdentity) -> Outcome {
        if let Some(hit) = self.recent(id) {
            self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let (flight, leader) = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&id.digest) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::default());
                    in_flight.insert(id.digest, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            self.counters.joined.fetch_add(1, Ordering::Relaxed);
            let mut outcome = flight.outcome.lock().unwrap_or_else(|e| e.into_inner());
            while outcome.is_none() {
                outcome = flight.done.wait(outcome).unwrap_or_else(|e| e.into_inner());
            }
            return outcome
                .clone()
                .unwrap_or_else(|| Err(FetchError("no outcome".into())));
        }
        let outcome = self.fetch(id);
        if let Ok(data) = &outcome {
            self.remember(id, data.clone());
        } else {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        *flight.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome.clone());
        flight.done.notify_all();
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id.digest);
        outcome
    }

    fn fetch(&self, id: &FileIdentity) -> Outcome {
        if let Some(data) = self.cache.get(id) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::new(data));
        }
        let key = self.remote.location().key(&chunk::key(id));
        let got = {
            let _slot = self.slots.take();
            let started = Instant::now();
            let got = self
                .remote
                .get(&key, chunk::max_object_bytes(id.size))
                .map_err(|e: RemoteError| fetch_error(&e))?;
            self.counters
                .get_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            got
        };
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(got.bytes.len() as u64, Ordering::Relaxed);
        c.ttfb_ns
            .fetch_add(got.ttfb.as_nanos() as u64, Ordering::Relaxed);
        let raw = chunk::decode(&got.bytes, id).map_err(|e: ChunkError| fetch_error(&e))?;
        c.raw_bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
        let raw = Arc::new(raw);
        self.cache.keep(id, raw.clone());
        Ok(raw)
    }

    fn recent(&self, id: &FileIdentity) -> Option<Arc<Vec<u8>>> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chunks
            .get(&id.digest)
            .cloned()
    }

    fn remember(&self, id: &FileIdentity, data: Arc<Vec<u8>>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.chunks.insert(id.digest, data.clone()).is_none() {
            recent.bytes += data.len() as u64;
            recent.order.push_back(id.digest);
        }
        while recent.bytes > self.recent_capacity {
            let Some(old) = recent.order.pop_front() else {
                break;
            };
            if let Some(d) = recent.chunks.remove(&old) {
                recent.bytes = recent.bytes.saturating_sub(d.len() as u64);
            }
        }
    }
}
