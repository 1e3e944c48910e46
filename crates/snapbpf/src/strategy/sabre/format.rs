//! Sabre's recording on disk: `sabre.parts` (the artifact container: header, then four
//! words per partition) and `sabre.stream` (the dictionary, if any, then the frames), and
//! the checks a recording passes before a byte of its stream is trusted.

use serde::{Deserialize, Serialize};

use super::super::interface::{self, StrategyError};
use crate::snapshot::Snapshot;
use snapbpf_store::artifact;
use snapbpf_store::codec::Codec;
use snapbpf_store::FileIdentity;
use snapbpf_uffd::PAGE;

/// The partitions file: where each partition goes and how to check it.
pub(super) const PARTS_FILE: &str = "sabre.parts";
/// The compressed stream: the dictionary, if any, then the frames.
pub(super) const STREAM_FILE: &str = "sabre.stream";
pub(super) const PARTS_KIND: &str = "sabre-partitions";

/// Largest partition, in pages: longer runs are split, so decompression can start (and
/// spread over threads) before a long run's last byte has arrived.
pub(super) const MAX_PARTITION_PAGES: u64 = 256;
/// Mean partition size, in pages, above which `auto` placement is scattered (Sabre's
/// Figure 8 crossover).
const SCATTERED_ABOVE_PAGES: f64 = 4.0;
/// Largest dictionary a recording may name: far above what is trained
/// ([`super::codec`]'s 110 KiB), far below what a crafted header could make a restore
/// allocate.
pub(super) const MAX_DICT_BYTES: u64 = 16 << 20;

/// Where decompressed partitions go on their way into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Placement {
    /// One frame, decoded as a stream into a staging buffer, installed by another thread.
    Single,
    /// A frame per partition, decompressed in parallel and installed in place.
    Scattered,
}

impl Placement {
    pub(super) fn name(self) -> &'static str {
        match self {
            Placement::Single => "single",
            Placement::Scattered => "scattered",
        }
    }

    /// Sabre's choice for partitions averaging `mean_pages` pages.
    pub(super) fn for_sparsity(mean_pages: f64) -> Self {
        if mean_pages > SCATTERED_ABOVE_PAGES {
            Placement::Scattered
        } else {
            Placement::Single
        }
    }
}

/// Header of `sabre.parts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PartsHeader {
    /// Identity of the snapshot memory file the working set was recorded from.
    pub(super) memory: FileIdentity,
    /// Page size of the partitions.
    pub(super) page_size: u64,
    /// Codec of the stream.
    pub(super) codec: Codec,
    /// zstd level (unused by LZ4).
    pub(super) level: i32,
    /// Layout of the stream.
    pub(super) placement: Placement,
    /// Partitions (= entries in the payload).
    pub(super) partitions: u64,
    /// Pages in all partitions.
    pub(super) pages: u64,
    /// Size of `sabre.stream`.
    pub(super) stream_bytes: u64,
    /// Size of the dictionary at the head of the stream (0: none).
    pub(super) dict_bytes: u64,
    /// Input of the recorded invocation.
    pub(super) input: u32,
    /// Wall time of the compression at record time, ms.
    pub(super) compress_ms: f64,
    /// CPU time of the compression at record time (dictionary training included), s.
    pub(super) compress_cpu_s: f64,
}

/// One partition: a run of pages contiguous in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Partition {
    /// File offset of its first page.
    pub(super) offset: u64,
    /// Pages in it.
    pub(super) pages: u64,
    /// Its frame's size in the stream (scattered), 0 in a single stream.
    pub(super) compressed: u64,
    /// CRC32 of its pages.
    pub(super) crc32: u32,
}

impl Partition {
    pub(super) fn raw_bytes(&self) -> usize {
        (self.pages * PAGE) as usize
    }
}

/// A validated recording.
#[derive(Debug, Clone)]
pub(super) struct Recording {
    /// Its header.
    pub(super) header: PartsHeader,
    /// Its partitions, in file order.
    pub(super) partitions: Vec<Partition>,
}

impl Recording {
    /// Bytes of the pages it holds.
    pub(super) fn raw_bytes(&self) -> u64 {
        self.header.pages * PAGE
    }
}

/// Groups page offsets into partitions: sorted, deduplicated runs of contiguous pages,
/// none longer than [`MAX_PARTITION_PAGES`]. Returns (offset, pages) pairs.
pub(super) fn partition(offsets: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = offsets.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for off in sorted {
        match runs.last_mut() {
            Some((start, pages))
                if *start + *pages * PAGE == off && *pages < MAX_PARTITION_PAGES =>
            {
                *pages += 1
            }
            _ => runs.push((off, 1)),
        }
    }
    runs
}

/// The partitions of a recording whose header and payload agree with each other and fit
/// a memory file of `mem` bytes. Every sum and product is checked: a crafted file with a
/// valid checksum must not wrap an offset into range or a size into agreement.
pub(super) fn validate(
    header: &PartsHeader,
    payload: &[u8],
    mem: u64,
) -> Result<Vec<Partition>, String> {
    let words = artifact::u64s(payload).ok_or("payload is not u64s")?;
    if Some(words.len() as u64) != header.partitions.checked_mul(4) {
        return Err(format!(
            "{} partitions announced, {} stored",
            header.partitions,
            words.len() / 4
        ));
    }
    let partitions: Vec<Partition> = words
        .chunks_exact(4)
        .map(|w| Partition {
            offset: w[0],
            pages: w[1],
            compressed: w[2],
            crc32: w[3] as u32,
        })
        .collect();
    let mut pages = 0u64;
    let mut frames = 0u64;
    let mut end = 0u64;
    // Every sum is checked: a crafted file with a valid checksum must not wrap an offset
    // into range or a size into agreement.
    for p in &partitions {
        let last = (1..=MAX_PARTITION_PAGES)
            .contains(&p.pages)
            .then(|| p.offset.checked_add(p.pages * PAGE))
            .flatten();
        let fits = p.offset % PAGE == 0
            && p.offset >= end
            && last.is_some_and(|last| last <= mem)
            && p.compressed <= header.stream_bytes;
        let (Some(last), true) = (last, fits) else {
            return Err(format!(
                "partition at {} of {} pages is misplaced",
                p.offset, p.pages
            ));
        };
        end = last;
        pages += p.pages;
        frames = frames
            .checked_add(p.compressed)
            .ok_or("its frame sizes overflow")?;
    }
    let frames_fit = match header.placement {
        Placement::Scattered => {
            partitions.iter().all(|p| p.compressed > 0)
                && header.dict_bytes.checked_add(frames) == Some(header.stream_bytes)
        }
        Placement::Single => frames == 0 && header.dict_bytes < header.stream_bytes,
    };
    if header.page_size != PAGE
        || pages != header.pages
        || partitions.is_empty()
        || !frames_fit
        || header.dict_bytes > MAX_DICT_BYTES
        || (header.dict_bytes > 0 && header.codec != Codec::ZstdDict)
    {
        return Err("inconsistent partitions, sizes or codec".into());
    }
    Ok(partitions)
}

/// A recording as the record phase writes it, for fuzzing: a single stream with a
/// dictionary and scattered frames.
pub(super) fn fuzz_seeds() -> Vec<Vec<u8>> {
    let partitions = [(0u64, 2u64, 100u64), (5 * PAGE, 1, 60)];
    [Placement::Scattered, Placement::Single]
        .into_iter()
        .filter_map(|placement| {
            let scattered = placement == Placement::Scattered;
            let frames: u64 = partitions.iter().map(|p| p.2).sum();
            let header = PartsHeader {
                memory: interface::fuzz_memory(),
                page_size: PAGE,
                codec: Codec::ZstdDict,
                level: 3,
                placement,
                partitions: 2,
                pages: 3,
                stream_bytes: 4096 + if scattered { frames } else { 500 },
                dict_bytes: 4096,
                input: 0,
                compress_ms: 1.0,
                compress_cpu_s: 0.001,
            };
            let words: Vec<u64> = partitions
                .iter()
                .flat_map(|&(offset, pages, compressed)| {
                    [offset, pages, if scattered { compressed } else { 0 }, 7]
                })
                .collect();
            artifact::encode(PARTS_KIND, &header, &artifact::u64_bytes(&words)).ok()
        })
        .collect()
}

/// The loader's checks on one partitions file's bytes, for fuzzing.
pub(super) fn fuzz_check(bytes: &[u8]) -> bool {
    interface::decode_for_fuzz(bytes, PARTS_KIND, |h: &PartsHeader| &h.memory)
        .is_some_and(|(h, p)| validate(&h, &p, interface::FUZZ_MEMORY_BYTES).is_ok())
}

/// Loads `sabre.parts` and checks it against `snapshot` and the stream's size.
pub(super) fn load(snapshot: &Snapshot) -> Result<Recording, StrategyError> {
    let interface::Recorded {
        header,
        payload,
        path,
        data_path,
    } = interface::read_recorded(
        snapshot,
        super::INFO.name,
        PARTS_FILE,
        STREAM_FILE,
        PARTS_KIND,
        |h: &PartsHeader| &h.memory,
    )?;
    let partitions = validate(&header, &payload, snapshot.meta.mem_bytes)
        .map_err(|reason| interface::bad_artifact(&path, reason))?;
    let len = std::fs::metadata(&data_path)
        .map_err(StrategyError::io(format!("stat {}", data_path.display())))?
        .len();
    if len != header.stream_bytes {
        return Err(interface::bad_artifact(
            &data_path,
            format!(
                "{len} bytes, the partitions file expects {} (truncated or from another recording)",
                header.stream_bytes
            ),
        ));
    }
    Ok(Recording { header, partitions })
}
