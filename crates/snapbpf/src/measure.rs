//! Measurements beside the runs: the bounds a cold start is compared with.

use std::time::Duration;

use snapbpf_store::fsutil;
use snapbpf_wss::prefetch::{self, PrefetchError};

use crate::snapshot::Snapshot;
use crate::strategy::{StrategyError, StrategySpec};

/// Longest the device may take to deliver a working set.
pub const DEVICE_WAIT: Duration = Duration::from_secs(60);

/// How long the device took to deliver a strategy's prefetched ranges, with no VM running.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTime {
    /// Bytes of the ranges.
    pub bytes: u64,
    /// Contiguous ranges.
    pub ranges: u64,
    /// One time per repetition, ms: from a cold file until every page is resident.
    pub ms: Vec<f64>,
}

/// Errors measuring the device time.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The strategy's ranges could not be read.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// The memory file could not be made cold.
    #[error(transparent)]
    Evict(#[from] fsutil::EvictError),
    /// The memory file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The prefetch failed.
    #[error(transparent)]
    Prefetch(#[from] PrefetchError),
    /// Pages were still not resident after [`DEVICE_WAIT`].
    #[error("{pages} pages were still not resident after {DEVICE_WAIT:?}")]
    Incomplete {
        /// Pages missing.
        pages: u64,
    },
}

/// Times `repeat` cold reads of the ranges `spec` prefetches from `snapshot`'s memory
/// file, by the prefetcher, until every page is resident: the device's bound on a cold
/// start. `None` when the strategy prefetches nothing from the memory file.
pub fn device_time(
    snapshot: &Snapshot,
    spec: &StrategySpec,
    repeat: u32,
) -> Option<Result<DeviceTime, MeasureError>> {
    let ranges = spec.build().prefetched_ranges(snapshot)?;
    Some((|| {
        let ranges = ranges?;
        let path = snapshot.memory_path();
        let file = std::fs::File::open(&path).map_err(|source| MeasureError::Open {
            path: path.clone(),
            source,
        })?;
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..repeat {
            fsutil::evict(&path)?;
            let done = prefetch::prefetch_until_resident(&file, &ranges, DEVICE_WAIT)?;
            if done.missing_pages > 0 {
                return Err(MeasureError::Incomplete {
                    pages: done.missing_pages,
                });
            }
            bytes = done.stats.bytes;
            ms.push(done.resident_after.as_secs_f64() * 1e3);
        }
        Ok(DeviceTime {
            bytes,
            ranges: ranges.len() as u64,
            ms,
        })
    })())
}
