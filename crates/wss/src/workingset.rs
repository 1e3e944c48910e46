//! Working sets: the captured pages of a file grouped into contiguous ranges, ordered by
//! first access (SnapBPF paper, section 3.1), and their on-disk format.
//!
//! A working set only holds offsets. It is bound to the identity of the file it was
//! captured from ([`FileIdentity`]: size and content digest, so it stays valid for a copy
//! of that file); [`WorkingSet::read_for`] refuses a working set whose identity does not
//! match the file ("stale").
//!
//! # File format
//!
//! The store's one artifact container ([`snapbpf_store::artifact`]: magic, version, kind,
//! bounded lengths, CRC32) of kind [`KIND`]: its JSON header is the identity and the
//! capture's metadata ([`Header`]); its payload is three little-endian `u64`s per range
//! (start page, page count, first access ns), at most [`MAX_RANGES`]. A file in the
//! pre-container format (magic `SNAPBPFW`) is refused with what to do (record again).
//!
//! ```
//! use snapbpf_wss::workingset::{CaptureMeta, FileIdentity, WorkingSet};
//! let id = FileIdentity { size: 1 << 20, digest: [7; 32] };
//! // page 10 touched first, then 3 and 4, then 11.
//! let ws = WorkingSet::from_pages(id, [(3, 20), (4, 30), (10, 5), (11, 40)], CaptureMeta::default());
//! assert_eq!(ws.ranges[0].start, 10); // [10, 11] first: its earliest access is 5 ns
//! assert_eq!(ws.ranges[1].start, 3);
//! let bytes = ws.to_bytes().unwrap();
//! assert_eq!(WorkingSet::from_bytes(&bytes).unwrap(), ws);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capture::CapturedPages;
pub use snapbpf_store::FileIdentity;

/// File name of SnapBPF's working set in a snapshot directory (its strategy's artifact,
/// which the in-memory store also reads to decide what to keep).
pub const SNAPBPF_FILE: &str = "snapbpf.ws";
/// The artifact kind of a working-set file.
pub const KIND: &str = "snapbpf-ws";
/// The magic of the working-set files snapbpf wrote before they were artifacts.
const OLD_MAGIC: &[u8; 8] = b"SNAPBPFW";
/// Largest number of ranges a working-set file may hold: what the container's payload
/// cap holds (about 11 M ranges: every other page of a 44 GiB file).
pub const MAX_RANGES: u64 = snapbpf_store::artifact::MAX_PAYLOAD / RANGE_BYTES as u64;
/// Largest order histogram accepted.
pub const MAX_HISTOGRAM: u32 = 64;

const PAGE_SIZE: u64 = snapbpf_store::PAGE_SIZE;
const RANGE_BYTES: usize = 24;

/// The JSON header of a working-set file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// The file the offsets refer to.
    pub identity: FileIdentity,
    /// Capture metadata.
    pub meta: CaptureMeta,
}

/// A run of contiguous pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PageRange {
    /// First page index (file offset / 4096).
    pub start: u64,
    /// Number of pages (≥ 1).
    pub pages: u64,
    /// Earliest first access of any page in the range, ns since capture start.
    pub first_access_ns: u64,
}

impl PageRange {
    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.pages)
    }
    /// Byte offset of the range in the file.
    pub fn offset(&self) -> u64 {
        self.start.saturating_mul(PAGE_SIZE)
    }
    /// Length of the range in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.pages * PAGE_SIZE
    }
}

/// How the working set was captured.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CaptureMeta {
    /// Distinct pages.
    pub pages: u64,
    /// Events received.
    pub total_events: u64,
    /// Events lost to ring-buffer overflow (0 for a complete capture).
    pub lost_events: u64,
    /// Duration of the capture(s), ns (summed over merged captures).
    pub capture_ns: u64,
    /// When the (latest) capture was taken, ns since the Unix epoch.
    pub captured_at_unix_ns: u64,
    /// Number of captures merged into this working set.
    pub captures: u32,
    /// Events per folio order.
    pub order_histogram: Vec<u64>,
}

/// A working set: ranges of one file, in prefetch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSet {
    /// The file the offsets refer to.
    pub identity: FileIdentity,
    /// Capture metadata.
    pub meta: CaptureMeta,
    /// Contiguous, non-overlapping ranges, sorted by `first_access_ns` (ties by start).
    pub ranges: Vec<PageRange>,
}

/// Why a byte buffer is not a valid working set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The container is damaged, truncated or of another kind (its reason).
    #[error("{0}")]
    Container(String),
    /// Written by snapbpf before working sets were artifacts.
    #[error("written by an older snapbpf (the pre-container working-set format): run `snapbpf record` again")]
    OldFormat,
    /// A count exceeds its limit.
    #[error("working-set {what} count {count} exceeds the limit {max}")]
    TooLarge {
        /// Which count.
        what: &'static str,
        /// The count found.
        count: u64,
        /// Its limit.
        max: u64,
    },
    /// Checksummed but semantically invalid content.
    #[error("invalid working set: {0}")]
    Invalid(String),
}

/// Errors of [`WorkingSet::read`] and [`WorkingSet::read_for`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read working set {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's content is invalid.
    #[error("working set {path}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        source: DecodeError,
    },
    /// The working set was captured from a different version of the file.
    #[error(
        "working set {path} is stale: it was captured from a file that differs in {fields:?} \
         (expected {expected:?}, working set has {found:?}); re-record it"
    )]
    Stale {
        /// The working-set file.
        path: PathBuf,
        /// Differing fields.
        fields: Vec<&'static str>,
        /// Identity of the file now.
        expected: Box<FileIdentity>,
        /// Identity recorded in the working set.
        found: Box<FileIdentity>,
    },
}

/// Errors of [`WorkingSet::write_atomic`].
#[derive(Debug, thiserror::Error)]
#[error("cannot write working set {path}")]
pub struct WriteError {
    /// The destination.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Errors of [`WorkingSet::merge`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    /// No working sets were given.
    #[error("nothing to merge")]
    Empty,
    /// The working sets belong to different files.
    #[error("cannot merge working sets of different files (they differ in {fields:?})")]
    IdentityMismatch {
        /// Differing fields.
        fields: Vec<&'static str>,
    },
}

impl WorkingSet {
    /// Builds a working set from `(page index, first access ns)` pairs (duplicates keep
    /// the earliest time): contiguous pages become one range, ranges are sorted by their
    /// earliest access. `meta.pages` is set to the number of distinct pages.
    pub fn from_pages(
        identity: FileIdentity,
        pages: impl IntoIterator<Item = (u64, u64)>,
        mut meta: CaptureMeta,
    ) -> Self {
        let mut map: BTreeMap<u64, u64> = BTreeMap::new();
        for (p, t) in pages {
            map.entry(p).and_modify(|e| *e = (*e).min(t)).or_insert(t);
        }
        meta.pages = map.len() as u64;
        WorkingSet {
            identity,
            meta,
            ranges: group(&map),
        }
    }

    /// Builds a working set from a capture.
    pub fn from_capture(identity: FileIdentity, capture: &CapturedPages) -> Self {
        let meta = CaptureMeta {
            pages: 0,
            total_events: capture.total_events,
            lost_events: capture.lost_events,
            capture_ns: u64::try_from(capture.duration.as_nanos()).unwrap_or(u64::MAX),
            captured_at_unix_ns: unix_now_ns(),
            captures: 1,
            order_histogram: trim_histogram(&capture.order_histogram),
        };
        Self::from_pages(identity, capture.iter(), meta)
    }

    /// Union of several working sets of the same file. A page's first access is the
    /// earliest over all inputs; ranges are regrouped and re-sorted. Metadata counters
    /// are summed.
    pub fn merge(sets: &[WorkingSet]) -> Result<WorkingSet, MergeError> {
        let first = sets.first().ok_or(MergeError::Empty)?;
        for s in &sets[1..] {
            let fields = first.identity.differences(&s.identity);
            if !fields.is_empty() {
                return Err(MergeError::IdentityMismatch { fields });
            }
        }
        let mut meta = CaptureMeta::default();
        for s in sets {
            // Counters come from files: saturate rather than overflow.
            meta.total_events = meta.total_events.saturating_add(s.meta.total_events);
            meta.lost_events = meta.lost_events.saturating_add(s.meta.lost_events);
            meta.capture_ns = meta.capture_ns.saturating_add(s.meta.capture_ns);
            meta.captured_at_unix_ns = meta.captured_at_unix_ns.max(s.meta.captured_at_unix_ns);
            meta.captures = meta.captures.saturating_add(s.meta.captures);
            if meta.order_histogram.len() < s.meta.order_histogram.len() {
                meta.order_histogram.resize(s.meta.order_histogram.len(), 0);
            }
            for (a, b) in meta.order_histogram.iter_mut().zip(&s.meta.order_histogram) {
                *a = a.saturating_add(*b);
            }
        }
        let pages = sets.iter().flat_map(|s| s.pages());
        Ok(Self::from_pages(first.identity, pages, meta))
    }

    /// Every page with its range's first access time (the per-page times are not kept).
    pub fn pages(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges
            .iter()
            .flat_map(|r| (r.start..r.end()).map(move |p| (p, r.first_access_ns)))
    }

    /// Total pages in all ranges.
    pub fn total_pages(&self) -> u64 {
        // Validated ranges are disjoint pages of one file, so this cannot overflow; an
        // unvalidated one saturates.
        self.ranges
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.pages))
    }

    /// Total bytes in all ranges.
    pub fn total_bytes(&self) -> u64 {
        self.total_pages().saturating_mul(PAGE_SIZE)
    }

    /// Serialises as an artifact of kind [`KIND`] (fails only for a histogram too large
    /// for the container's header, which no capture produces).
    pub fn to_bytes(&self) -> std::io::Result<Vec<u8>> {
        let header = Header {
            identity: self.identity,
            meta: self.meta.clone(),
        };
        let words: Vec<u64> = self
            .ranges
            .iter()
            .flat_map(|r| [r.start, r.pages, r.first_access_ns])
            .collect();
        snapbpf_store::artifact::encode(KIND, &header, &snapbpf_store::artifact::u64_bytes(&words))
    }

    /// Parses a working-set artifact: the container's checks (bounded lengths, CRC), then
    /// the counts, then [`WorkingSet::validate`].
    pub fn from_bytes(data: &[u8]) -> Result<WorkingSet, DecodeError> {
        if data.starts_with(OLD_MAGIC) {
            return Err(DecodeError::OldFormat);
        }
        let (header, payload): (Header, Vec<u8>) =
            snapbpf_store::artifact::decode(data, KIND, Path::new("working set")).map_err(|e| {
                match e {
                    snapbpf_store::artifact::ArtifactError::Corrupt { reason, .. } => {
                        DecodeError::Container(reason)
                    }
                    other => DecodeError::Container(other.to_string()),
                }
            })?;
        let hist = header.meta.order_histogram.len() as u64;
        if hist > u64::from(MAX_HISTOGRAM) {
            return Err(DecodeError::TooLarge {
                what: "order histogram",
                count: hist,
                max: u64::from(MAX_HISTOGRAM),
            });
        }
        if payload.len() % RANGE_BYTES != 0 {
            return Err(DecodeError::Invalid(format!(
                "{} payload bytes are not whole ranges",
                payload.len()
            )));
        }
        let count = (payload.len() / RANGE_BYTES) as u64;
        if count > MAX_RANGES {
            return Err(DecodeError::TooLarge {
                what: "range",
                count,
                max: MAX_RANGES,
            });
        }
        let words = snapbpf_store::artifact::u64s(&payload)
            .ok_or_else(|| DecodeError::Invalid("the payload is not u64s".into()))?;
        let ranges = words
            .chunks_exact(3)
            .map(|w| PageRange {
                start: w[0],
                pages: w[1],
                first_access_ns: w[2],
            })
            .collect();
        let ws = WorkingSet {
            identity: header.identity,
            meta: header.meta,
            ranges,
        };
        ws.validate()?;
        Ok(ws)
    }

    /// Checks that ranges are non-empty, inside the file, non-overlapping and sorted by
    /// first access.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let file_pages = self.identity.size.div_ceil(PAGE_SIZE);
        let mut sorted: Vec<&PageRange> = self.ranges.iter().collect();
        for (i, r) in self.ranges.iter().enumerate() {
            if r.pages == 0 {
                return Err(DecodeError::Invalid(format!("range {i} is empty")));
            }
            let end = r.start.checked_add(r.pages).ok_or_else(|| {
                DecodeError::Invalid(format!("range {i} overflows the page index"))
            })?;
            if end > file_pages {
                return Err(DecodeError::Invalid(format!(
                    "range {i} (pages {}..{end}) is beyond the end of the {file_pages}-page file",
                    r.start
                )));
            }
            if i > 0 && self.ranges[i - 1].first_access_ns > r.first_access_ns {
                return Err(DecodeError::Invalid(format!(
                    "range {i} is out of first-access order"
                )));
            }
        }
        sorted.sort_by_key(|r| r.start);
        for w in sorted.windows(2) {
            if w[0].end() > w[1].start {
                return Err(DecodeError::Invalid(format!(
                    "ranges at pages {} and {} overlap",
                    w[0].start, w[1].start
                )));
            }
        }
        Ok(())
    }

    /// Reads and validates a working-set file (a regular file, size-bounded before
    /// reading).
    pub fn read(path: &Path) -> Result<WorkingSet, ReadError> {
        let max = snapbpf_store::artifact::MAX_PAYLOAD
            + u64::from(snapbpf_store::artifact::MAX_HEADER)
            + 64;
        let data =
            snapbpf_store::fsutil::read_regular(path, max).map_err(|source| ReadError::Io {
                path: path.to_owned(),
                source,
            })?;
        Self::from_bytes(&data).map_err(|source| ReadError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a working-set file and checks that it belongs to the file `expected`
    /// describes; a mismatch is [`ReadError::Stale`].
    pub fn read_for(path: &Path, expected: &FileIdentity) -> Result<WorkingSet, ReadError> {
        let ws = Self::read(path)?;
        let fields = expected.differences(&ws.identity);
        if !fields.is_empty() {
            return Err(ReadError::Stale {
                path: path.to_owned(),
                fields,
                expected: Box::new(*expected),
                found: Box::new(ws.identity),
            });
        }
        Ok(ws)
    }

    /// Writes atomically ([`snapbpf_store::fsutil::write_atomic`]: a temporary file
    /// written, synced and renamed over `path`, the directory synced).
    pub fn write_atomic(&self, path: &Path) -> Result<(), WriteError> {
        let err = |source| WriteError {
            path: path.to_owned(),
            source,
        };
        let bytes = self.to_bytes().map_err(err)?;
        snapbpf_store::fsutil::write_atomic(path, &bytes).map_err(err)
    }
}

/// Groups pages (with first access times) into contiguous ranges sorted by earliest
/// access, ties broken by start page.
fn group(pages: &BTreeMap<u64, u64>) -> Vec<PageRange> {
    let mut ranges: Vec<PageRange> = Vec::new();
    for (&p, &t) in pages {
        match ranges.last_mut() {
            Some(r) if r.end() == p => {
                r.pages += 1;
                r.first_access_ns = r.first_access_ns.min(t);
            }
            _ => ranges.push(PageRange {
                start: p,
                pages: 1,
                first_access_ns: t,
            }),
        }
    }
    ranges.sort_by_key(|r| (r.first_access_ns, r.start));
    ranges
}

fn trim_histogram(h: &[u64]) -> Vec<u64> {
    let len = h.iter().rposition(|&v| v != 0).map_or(0, |i| i + 1);
    h[..len.min(MAX_HISTOGRAM as usize)].to_vec()
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> FileIdentity {
        FileIdentity {
            size: 1 << 30,
            digest: [7; 32],
        }
    }

    fn sample() -> WorkingSet {
        let meta = CaptureMeta {
            total_events: 9,
            lost_events: 0,
            capture_ns: 5_000,
            captured_at_unix_ns: 1,
            captures: 1,
            order_histogram: vec![5, 0, 1],
            ..CaptureMeta::default()
        };
        WorkingSet::from_pages(
            id(),
            [
                (100, 50),
                (101, 10),
                (102, 70),
                (5, 30),
                (7, 20),
                (8, 90),
                (1000, 0),
            ],
            meta,
        )
    }

    #[test]
    fn grouping_and_order() {
        let ws = sample();
        let r: Vec<(u64, u64, u64)> = ws
            .ranges
            .iter()
            .map(|r| (r.start, r.pages, r.first_access_ns))
            .collect();
        assert_eq!(r, vec![(1000, 1, 0), (100, 3, 10), (7, 2, 20), (5, 1, 30)]);
        assert_eq!(ws.meta.pages, 7);
        assert_eq!(ws.total_pages(), 7);
        ws.validate().unwrap();
    }

    /// A file may claim a range as large as the page index allows: counting it never
    /// overflows.
    #[test]
    fn counters_a_file_controls_never_overflow() {
        let huge = FileIdentity {
            size: u64::MAX,
            digest: [1; 32],
        };
        let ws = WorkingSet {
            identity: huge,
            meta: CaptureMeta {
                total_events: u64::MAX,
                captures: u32::MAX,
                order_histogram: vec![u64::MAX],
                ..CaptureMeta::default()
            },
            ranges: vec![PageRange {
                start: 0,
                pages: u64::MAX / PAGE_SIZE + 1,
                first_access_ns: 0,
            }],
        };
        let parsed = WorkingSet::from_bytes(&ws.to_bytes().unwrap()).expect("a valid file");
        assert_eq!(parsed.total_bytes(), u64::MAX);
        // Merging visits every page: with the counters at their limits, not the ranges.
        let mut small = parsed;
        small.ranges[0].pages = 3;
        let merged = WorkingSet::merge(&[small.clone(), small]).expect("merge");
        assert_eq!(merged.meta.total_events, u64::MAX);
        assert_eq!(merged.meta.captures, u32::MAX);
    }

    #[test]
    fn round_trip() {
        let ws = sample();
        let b = ws.to_bytes().unwrap();
        assert_eq!(WorkingSet::from_bytes(&b).unwrap(), ws);
        let empty = WorkingSet::from_pages(id(), [], CaptureMeta::default());
        assert_eq!(
            WorkingSet::from_bytes(&empty.to_bytes().unwrap()).unwrap(),
            empty
        );
    }

    #[test]
    fn file_round_trip_and_stale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ws");
        let ws = sample();
        ws.write_atomic(&p).unwrap();
        // overwrite works too
        ws.write_atomic(&p).unwrap();
        assert_eq!(WorkingSet::read(&p).unwrap(), ws);
        assert_eq!(WorkingSet::read_for(&p, &id()).unwrap(), ws);
        let mut other = id();
        other.size += 4096;
        other.digest[0] = 0;
        match WorkingSet::read_for(&p, &other) {
            Err(ReadError::Stale { fields, .. }) => assert_eq!(fields, vec!["size", "digest"]),
            r => panic!("expected Stale, got {r:?}"),
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
        match WorkingSet::read(&dir.path().join("missing")) {
            Err(ReadError::Io { .. }) => {}
            r => panic!("expected Io, got {r:?}"),
        }
    }

    #[test]
    fn damage_is_refused() {
        let b = sample().to_bytes().unwrap();
        let mut other = b.clone();
        other[0] = b'X';
        assert!(matches!(
            WorkingSet::from_bytes(&other),
            Err(DecodeError::Container(_))
        ));
        assert_eq!(
            WorkingSet::from_bytes(b"SNAPBPFW\x01\0\0\0"),
            Err(DecodeError::OldFormat)
        );
        for len in 0..b.len() {
            assert!(
                matches!(
                    WorkingSet::from_bytes(&b[..len]),
                    Err(DecodeError::Container(_))
                ),
                "truncated to {len}"
            );
        }
        // A bit flipped in the header, in a range and in the CRC itself.
        for pos in [40, b.len() - 10, b.len() - 1] {
            let mut c = b.clone();
            c[pos] ^= 0x10;
            assert!(
                matches!(WorkingSet::from_bytes(&c), Err(DecodeError::Container(_))),
                "pos {pos}"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert!(WorkingSet::from_bytes(&long).is_err());
    }

    #[test]
    fn absurd_counts_refused() {
        let mut ws = sample();
        ws.meta.order_histogram = vec![1; MAX_HISTOGRAM as usize + 1];
        assert!(matches!(
            WorkingSet::from_bytes(&ws.to_bytes().unwrap()),
            Err(DecodeError::TooLarge {
                what: "order histogram",
                ..
            })
        ));
        let header = Header {
            identity: id(),
            meta: CaptureMeta::default(),
        };
        let bytes = snapbpf_store::artifact::encode(KIND, &header, &[0u8; 25]).unwrap();
        assert!(matches!(
            WorkingSet::from_bytes(&bytes),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn invalid_content_with_valid_crc() {
        // overlapping ranges
        let mut ws = sample();
        ws.ranges.push(PageRange {
            start: 101,
            pages: 1,
            first_access_ns: 1000,
        });
        assert!(matches!(
            WorkingSet::from_bytes(&ws.to_bytes().unwrap()),
            Err(DecodeError::Invalid(_))
        ));
        // beyond end of file
        let mut ws = sample();
        ws.identity.size = 4096 * 500;
        assert!(matches!(
            WorkingSet::from_bytes(&ws.to_bytes().unwrap()),
            Err(DecodeError::Invalid(_))
        ));
        // empty range
        let mut ws = sample();
        ws.ranges[0].pages = 0;
        assert!(matches!(
            WorkingSet::from_bytes(&ws.to_bytes().unwrap()),
            Err(DecodeError::Invalid(_))
        ));
        // out of order
        let mut ws = sample();
        ws.ranges.swap(0, 1);
        assert!(matches!(
            WorkingSet::from_bytes(&ws.to_bytes().unwrap()),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn merge_union_earliest() {
        let a = WorkingSet::from_pages(
            id(),
            [(1, 100), (2, 110), (10, 5)],
            CaptureMeta {
                captures: 1,
                total_events: 3,
                order_histogram: vec![3],
                ..Default::default()
            },
        );
        let b = WorkingSet::from_pages(
            id(),
            [(3, 1), (10, 50), (20, 60)],
            CaptureMeta {
                captures: 1,
                total_events: 3,
                lost_events: 2,
                order_histogram: vec![1, 1],
                ..Default::default()
            },
        );
        let m = WorkingSet::merge(&[a, b.clone()]).unwrap();
        let r: Vec<(u64, u64, u64)> = m
            .ranges
            .iter()
            .map(|r| (r.start, r.pages, r.first_access_ns))
            .collect();
        // 1,2 (from a, pages 100/110) and 3 (from b, 1) join into one range at time 1.
        assert_eq!(r, vec![(1, 3, 1), (10, 1, 5), (20, 1, 60)]);
        assert_eq!(m.meta.captures, 2);
        assert_eq!(m.meta.total_events, 6);
        assert_eq!(m.meta.lost_events, 2);
        assert_eq!(m.meta.order_histogram, vec![4, 1]);
        assert_eq!(m.meta.pages, 5);
        let mut other = b;
        other.identity.digest[3] ^= 1;
        assert_eq!(
            WorkingSet::merge(&[m, other]),
            Err(MergeError::IdentityMismatch {
                fields: vec!["digest"]
            })
        );
        assert_eq!(WorkingSet::merge(&[]), Err(MergeError::Empty));
    }
}
