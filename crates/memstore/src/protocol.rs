//! The store's wire protocol: one JSON [`Request`] line from the client, one JSON [`Reply`]
//! line back (a `get` reply carries the memfd in `SCM_RIGHTS`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapbpf_store::FileIdentity;

use crate::memfd::Backing;

/// Longest request line.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Longest reply line (a `get` reply lists the memfd's extents).
pub const MAX_REPLY_BYTES: usize = 16 << 20;
/// Longest a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a client waits for the store's reply (a `get` may load a large snapshot).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Load the snapshot in `dir` (no-op if held whole; a trimmed one is loaded whole again
    /// if it fits). A caller that is neither root nor the store's user may add only a
    /// directory it owns, and the snapshot is then its own.
    Add {
        /// Snapshot directory.
        dir: PathBuf,
    },
    /// The memfd of the snapshot whose memory is `memory`, among those the caller may use.
    /// On a miss it is loaded from `dir` if one is named (and the caller may add it, and
    /// its metadata names that memory).
    Get {
        /// The memory's content identity (`snapshot.json`'s `memory`).
        memory: FileIdentity,
        /// Where to load it from on a miss.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<PathBuf>,
    },
    /// Drop the snapshots whose memory is `memory` that the caller may use.
    Evict {
        /// The memory's content identity.
        memory: FileIdentity,
    },
    /// The snapshots held.
    List,
    /// Counters.
    Stats,
}

/// How much of a snapshot's memory the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Residency {
    /// All of it: every page outside the memfd's extents is a zero page of the snapshot
    /// (a hole in the memfd, which reads as zeros).
    Whole,
    /// Only its recorded working set (SnapBPF's `snapbpf.ws`): pages outside the extents
    /// must come from the snapshot's memory file.
    WorkingSet,
}

impl Residency {
    /// How `list` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Whole => "whole",
            Self::WorkingSet => "working-set",
        }
    }
}

/// A run of pages (page index and count, [`snapbpf_store::PAGE_SIZE`] pages) of a
/// snapshot's memory that a memfd holds data for, at the same offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// First page.
    pub page: u64,
    /// Pages (at least one).
    pub pages: u64,
}

impl Extent {
    /// Byte offset.
    pub fn offset(&self) -> u64 {
        self.page * snapbpf_store::PAGE_SIZE
    }
    /// Length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.pages * snapbpf_store::PAGE_SIZE
    }
    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.page + self.pages
    }
}

/// Whether `extents` are non-empty runs, sorted, disjoint and inside `pages` pages: the
/// client refuses a reply whose extents are not.
pub fn extents_are_valid(extents: &[Extent], pages: u64) -> bool {
    let mut next = 0u64;
    extents.iter().all(|e| {
        let ok = e.pages > 0
            && e.page >= next
            && e.page.checked_add(e.pages).is_some_and(|end| end <= pages);
        next = e.page.saturating_add(e.pages);
        ok
    })
}

/// One held snapshot, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Its directory (canonical).
    pub dir: PathBuf,
    /// Its function.
    pub function: String,
    /// Identity of its memory.
    pub memory: FileIdentity,
    /// Bytes of memory the store holds for it (the memfd's allocated pages, measured).
    pub bytes: u64,
    /// How much of it is held.
    pub resident: Residency,
    /// What the memfd's pages are.
    pub backing: Backing,
}

/// The store's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Snapshots held.
    pub snapshots: u64,
    /// Bytes held in memfds (their allocated pages).
    pub bytes: u64,
    /// Capacity in bytes.
    pub capacity: u64,
    /// What the memfds' pages are.
    pub backing: Backing,
    /// `get`s served from memory.
    pub hits: u64,
    /// `get`s that loaded the snapshot first.
    pub misses: u64,
    /// Snapshots evicted to make room.
    pub evictions: u64,
    /// Snapshots trimmed to their working sets to make room.
    pub trims: u64,
}

/// The store's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Why the request failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The snapshot concerned (`add`, `get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// Whether a `get` was served from memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit: Option<bool>,
    /// Where the memfd of a `get` holds data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<Extent>>,
    /// `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<Held>>,
    /// `stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

impl Reply {
    pub(crate) fn error(e: &dyn std::error::Error) -> Self {
        Self {
            error: Some(snapbpf_os::error_chain(e)),
            ..Self::empty()
        }
    }

    /// A reply that says nothing yet (every field absent), to fill.
    pub fn empty() -> Self {
        Self {
            error: None,
            held: None,
            hit: None,
            extents: None,
            snapshots: None,
            stats: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_must_be_sorted_disjoint_and_inside() {
        let e = |page, pages| Extent { page, pages };
        assert!(extents_are_valid(&[], 10));
        assert!(extents_are_valid(&[e(0, 2), e(2, 3), e(9, 1)], 10));
        assert!(!extents_are_valid(&[e(0, 0)], 10), "empty run");
        assert!(!extents_are_valid(&[e(2, 2), e(3, 1)], 10), "overlap");
        assert!(!extents_are_valid(&[e(5, 1), e(2, 1)], 10), "unsorted");
        assert!(!extents_are_valid(&[e(9, 2)], 10), "past the end");
        assert!(!extents_are_valid(&[e(u64::MAX, 2)], u64::MAX), "overflow");
    }
}
