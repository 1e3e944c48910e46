//! `sabre`: Sabre (Lazarev et al., OSDI '24), REAP's working set stored compressed and
//! restored through a pipeline that hides decompression behind the read.
//!
//! - **Record** (`snapbpf record --strategy sabre`): REAP's record phase (one invocation,
//!   every fault served on demand over userfaultfd, offsets logged). The pages are sorted
//!   into *partitions*, runs of pages contiguous in the memory file (at most
//!   [`MAX_PARTITION_PAGES`] each), and compressed into `sabre.stream`; `sabre.parts` (an
//!   [`snapbpf_store::artifact`] bound to the snapshot's memory identity) lists every
//!   partition's file offset, size, compressed size and the CRC32 of its pages. Codecs:
//!   `zstd-dict` (the default: zstd with a dictionary trained on the working set's own pages,
//!   stored at the head of the stream and shared by every partition, as Sabre shares canned
//!   Huffman tables), `zstd` and `lz4`; `level` sets zstd's level.
//! - **Placement**, Sabre's two prefetch designs (its Figure 7), chosen at record time by the
//!   partitions' sparsity as Sabre does (Figure 8: scattered wins once partitions average
//!   more than [`SCATTERED_ABOVE_PAGES`] pages), or forced with `placement=`:
//!   - `single`: the whole working set is one compressed frame, decoded as a stream as the
//!     compressed bytes arrive, one partition at a time into a staging buffer that another
//!     thread installs with `UFFDIO_COPY`.
//!   - `scattered`: one frame per partition; worker threads decompress partitions as soon
//!     as their bytes have arrived and install each straight into its place in guest memory.
//! - **Restore**: a pipeline, not three phases. A reader thread reads the stream
//!   sequentially in [`CHUNK_BYTES`] `O_DIRECT` reads; decompression starts on the first
//!   chunk; every partition is checked against its CRC32 before it is installed, so a
//!   corrupt stream fails the VM before its vCPU runs and never installs a wrong page.
//!   Faults outside the working set are served on demand from the memory file. The report
//!   gives compressed and raw bytes, the time spent reading, decompressing and installing,
//!   and how much of the decompression the read hid.
//!
//! Sabre decompresses on Intel IAA, which we do not have: this is its design with software
//! codecs, as its own Figure 9 measures them. What IAA changes is in `docs/sabre.md`.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::registry::{parse_as, OptionInfo, StrategyInfo, StrategyOptions, StrategySpec};
use super::{PrefetchReport, RecordReport, Restored, Strategy, StrategyError};
use crate::snapshot::Snapshot;
use crate::uffd_backend::UffdMemory;
use snapbpf_run::CompressionReport;
use snapbpf_store::artifact;
use snapbpf_store::codec::{FrameCompressor, FrameDecompressor};
use snapbpf_store::fsutil::AlignedBuf;
use snapbpf_store::FileIdentity;
use snapbpf_uffd::{GuestRegionUffdMapping, Uffd, PAGE};

/// The partitions file: where each partition goes and how to check it.
pub const PARTS_FILE: &str = "sabre.parts";
/// The compressed stream: the dictionary, if any, then the frames.
pub const STREAM_FILE: &str = "sabre.stream";
const PARTS_KIND: &str = "sabre-partitions";

/// Largest partition, in pages: longer runs are split, so decompression can start (and
/// spread over threads) before a long run's last byte has arrived.
pub const MAX_PARTITION_PAGES: u64 = 256;
/// Mean partition size, in pages, above which `auto` placement is scattered (Sabre's
/// Figure 8 crossover).
pub const SCATTERED_ABOVE_PAGES: f64 = 4.0;
/// Size of each sequential read of the stream.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Reads in flight ahead of decompression (bounds the reader's memory).
const CHUNKS_AHEAD: usize = 8;
/// Size of a trained dictionary (zstd's default).
const DICT_BYTES: usize = 112_640;
/// Most pages a dictionary is trained on (8 MiB).
const DICT_TRAINING_PAGES: usize = 2048;
/// The zstd level when none is given (Sabre's Figure 9 uses 3, 10 and 20).
pub const DEFAULT_LEVEL: i32 = 3;

pub use snapbpf_store::codec::Codec;

/// Where decompressed partitions go on their way into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// One frame, decoded as a stream into a staging buffer, installed by another thread.
    Single,
    /// A frame per partition, decompressed in parallel and installed in place.
    Scattered,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Single => "single",
            Placement::Scattered => "scattered",
        }
    }

    /// Sabre's choice for partitions averaging `mean_pages` pages.
    pub fn for_sparsity(mean_pages: f64) -> Self {
        if mean_pages > SCATTERED_ABOVE_PAGES {
            Placement::Scattered
        } else {
            Placement::Single
        }
    }
}

/// Header of `sabre.parts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartsHeader {
    /// Identity of the snapshot memory file the working set was recorded from.
    pub memory: FileIdentity,
    /// Page size of the partitions.
    pub page_size: u64,
    /// Codec of the stream.
    pub codec: Codec,
    /// zstd level (unused by LZ4).
    pub level: i32,
    /// Layout of the stream.
    pub placement: Placement,
    /// Partitions (= entries in the payload).
    pub partitions: u64,
    /// Pages in all partitions.
    pub pages: u64,
    /// Size of `sabre.stream`.
    pub stream_bytes: u64,
    /// Size of the dictionary at the head of the stream (0: none).
    pub dict_bytes: u64,
    /// Input of the recorded invocation.
    pub input: u32,
    /// Wall time of the compression at record time, ms.
    pub compress_ms: f64,
    /// CPU time of the compression at record time (dictionary training included), s.
    pub compress_cpu_s: f64,
}

/// One partition: a run of pages contiguous in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// File offset of its first page.
    pub offset: u64,
    /// Pages in it.
    pub pages: u64,
    /// Its frame's size in the stream (scattered), 0 in a single stream.
    pub compressed: u64,
    /// CRC32 of its pages.
    pub crc32: u32,
}

impl Partition {
    fn raw_bytes(&self) -> usize {
        (self.pages * PAGE) as usize
    }
}

/// A validated recording.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Its header.
    pub header: PartsHeader,
    /// Its partitions, in file order.
    pub partitions: Vec<Partition>,
}

impl Recording {
    /// Bytes of the pages it holds.
    pub fn raw_bytes(&self) -> u64 {
        self.header.pages * PAGE
    }
}

/// Groups page offsets into partitions: sorted, deduplicated runs of contiguous pages,
/// none longer than [`MAX_PARTITION_PAGES`]. Returns (offset, pages) pairs.
pub fn partition(offsets: &[u64]) -> Vec<(u64, u64)> {
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

/// Loads `sabre.parts` and checks it against `snapshot` and the stream's size.
pub fn load(snapshot: &Snapshot) -> Result<Recording, StrategyError> {
    let super::Recorded {
        header,
        payload,
        path,
        data_path,
    } = super::read_recorded(
        snapshot,
        "sabre",
        PARTS_FILE,
        STREAM_FILE,
        PARTS_KIND,
        |h: &PartsHeader| &h.memory,
    )?;
    let bad = |reason: String| super::bad_artifact(&path, reason);
    let words = artifact::u64s(&payload).ok_or_else(|| bad("payload is not u64s".into()))?;
    if words.len() as u64 != header.partitions * 4 {
        return Err(bad(format!(
            "{} partitions announced, {} stored",
            header.partitions,
            words.len() / 4
        )));
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
    let mem = snapshot.meta.mem_bytes;
    let mut pages = 0u64;
    let mut frames = 0u64;
    let mut end = 0u64;
    for p in &partitions {
        let fits = p.offset % PAGE == 0
            && (1..=MAX_PARTITION_PAGES).contains(&p.pages)
            && p.offset >= end
            && p.offset + p.pages * PAGE <= mem;
        if !fits {
            return Err(bad(format!(
                "partition at {} of {} pages is misplaced",
                p.offset, p.pages
            )));
        }
        end = p.offset + p.pages * PAGE;
        pages += p.pages;
        frames = frames.saturating_add(p.compressed);
    }
    let frames_fit = match header.placement {
        Placement::Scattered => {
            partitions.iter().all(|p| p.compressed > 0)
                && header.dict_bytes + frames == header.stream_bytes
        }
        Placement::Single => frames == 0 && header.dict_bytes < header.stream_bytes,
    };
    if header.page_size != PAGE
        || pages != header.pages
        || partitions.is_empty()
        || !frames_fit
        || (header.dict_bytes > 0 && header.codec != Codec::ZstdDict)
    {
        return Err(bad("inconsistent partitions, sizes or codec".into()));
    }
    let len = std::fs::metadata(&data_path)
        .map_err(StrategyError::io(format!("stat {}", data_path.display())))?
        .len();
    if len != header.stream_bytes {
        return Err(super::bad_artifact(
            &data_path,
            format!(
                "{len} bytes, the partitions file expects {} (truncated or from another recording)",
                header.stream_bytes
            ),
        ));
    }
    Ok(Recording { header, partitions })
}

/// Registry row of `sabre`.
pub static INFO: StrategyInfo = StrategyInfo {
    name: "sabre",
    description: "Sabre: REAP's working set compressed in partitions, read sequentially and decompressed while it is read, installed before the vCPU runs",
    options: &[
        OptionInfo {
            name: "codec",
            value: Some("zstd-dict|zstd|lz4"),
            help: "record: the codec (default zstd-dict, a dictionary trained on the working set)",
        },
        OptionInfo {
            name: "level",
            value: Some("N"),
            help: "record: the zstd level (default 3)",
        },
        OptionInfo {
            name: "placement",
            value: Some("single|scattered"),
            help: "record: one stream into a staging buffer, or a frame per partition installed in place (default: by sparsity, as Sabre)",
        },
        OptionInfo {
            name: "threads",
            value: Some("N"),
            help: "restore: decompression threads for scattered placement (default: the host's cores)",
        },
    ],
    required: &[],
    record: true,
    artifacts: &[PARTS_FILE, STREAM_FILE],
    parse: |o| parse_as(o).map(StrategySpec::Sabre),
};

/// Options of `sabre`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SabreOptions {
    /// Codec to record with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<Codec>,
    /// zstd level to record with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
    /// Placement to record for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Decompression threads at restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

impl StrategyOptions for SabreOptions {
    const INFO: &'static StrategyInfo = &INFO;
    fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        let value = value.ok_or_else(|| format!("{name} needs a value"))?;
        match name {
            "codec" => self.codec = Some(Codec::parse(value)?),
            "level" => {
                let level: i32 = value
                    .parse()
                    .map_err(|_| format!("'{value}' is not a level"))?;
                if !zstd::compression_level_range().contains(&level) {
                    return Err(format!(
                        "level {level} is outside zstd's {:?}",
                        zstd::compression_level_range()
                    ));
                }
                self.level = Some(level);
            }
            "placement" => {
                self.placement = Some(match value {
                    "single" => Placement::Single,
                    "scattered" => Placement::Scattered,
                    other => {
                        return Err(format!("unknown placement '{other}' (single, scattered)"))
                    }
                })
            }
            "threads" => {
                let n: u32 = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("'{value}' is not a thread count (1-64)"))?;
                self.threads = Some(n);
            }
            other => return Err(format!("unexpected option {other}")),
        }
        Ok(())
    }
    fn render(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = self.codec {
            out.push(format!("codec={}", c.name()));
        }
        if let Some(l) = self.level {
            out.push(format!("level={l}"));
        }
        if let Some(p) = self.placement {
            out.push(format!("placement={}", p.name()));
        }
        if let Some(t) = self.threads {
            out.push(format!("threads={t}"));
        }
        out
    }
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(Sabre {
            options: self.clone(),
        })
    }
}

/// Sabre.
#[derive(Debug, Clone, Default)]
pub struct Sabre {
    /// Its options.
    pub options: SabreOptions,
}

impl Sabre {
    fn threads(&self) -> usize {
        self.options.threads.map(|t| t as usize).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

impl Strategy for Sabre {
    fn name(&self) -> &'static str {
        "sabre"
    }

    fn cold_files(&self, snapshot: &Snapshot) -> Vec<PathBuf> {
        vec![
            snapshot.memory_path(),
            snapshot.artifact_path(PARTS_FILE),
            snapshot.artifact_path(STREAM_FILE),
        ]
    }

    fn check(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        let rec = load(snapshot)?;
        // Record-time options given to a restore must match what was recorded.
        let h = &rec.header;
        let differs = self.options.codec.is_some_and(|c| c != h.codec)
            || self.options.placement.is_some_and(|p| p != h.placement)
            || self
                .options
                .level
                .is_some_and(|l| l != h.level && h.codec != Codec::Lz4);
        if differs {
            return Err(super::bad_artifact(
                &snapshot.artifact_path(PARTS_FILE),
                format!(
                    "recorded with codec={} level={} placement={}, not the options given: run `snapbpf record --strategy {}` again",
                    h.codec.name(),
                    h.level,
                    h.placement.name(),
                    StrategySpec::Sabre(self.options.clone()).to_arg()
                ),
            ));
        }
        Ok(())
    }

    fn verify_recording(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        let rec = load(snapshot)?;
        let (stream, _) = snapbpf_store::fsutil::read_direct(&snapshot.artifact_path(STREAM_FILE))
            .map_err(StrategyError::io("read the stream"))?;
        decode_all(&rec, stream.as_slice(), |_, _| Ok(()))
    }

    fn describe_recording(&self, snapshot: &Snapshot) -> Result<String, StrategyError> {
        let r = load(snapshot)?;
        let h = &r.header;
        Ok(format!(
            "{} pages in {} partitions, {} level {}, {} placement, ratio {:.3} ({} bytes), compressed in {:.0} ms ({:.3} CPU s), recorded with input {}",
            h.pages,
            h.partitions,
            h.codec.name(),
            h.level,
            h.placement.name(),
            r.raw_bytes() as f64 / h.stream_bytes as f64,
            h.stream_bytes,
            h.compress_ms,
            h.compress_cpu_s,
            h.input
        ))
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let path = snapshot.memory_path();
        let memory_file =
            File::open(&path).map_err(StrategyError::io(format!("open {}", path.display())))?;
        let memory = UffdMemory::new(snapshot.meta.mem_bytes)?;
        let recording = load(snapshot)?;
        let stream_path = snapshot.artifact_path(STREAM_FILE);
        let threads = self.threads();
        Ok(memory.serve_in_process(memory_file, move |uffd, regions| {
            Ok(prefetch(uffd, regions, &recording, &stream_path, threads)?)
        })?)
    }

    fn record(
        &self,
        snapshot: &Snapshot,
        input: u32,
        timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        let started = Instant::now();
        let log = super::reap::record_faults(snapshot, input, timeout)?;
        let runs = partition(&log);
        let mean = log.len() as f64 / runs.len().max(1) as f64;
        let plan = Plan {
            codec: self.options.codec.unwrap_or(Codec::ZstdDict),
            level: self.options.level.unwrap_or(DEFAULT_LEVEL),
            placement: self
                .options
                .placement
                .unwrap_or_else(|| Placement::for_sparsity(mean)),
        };
        let mem_path = snapshot.memory_path();
        let mem = File::open(&mem_path)
            .map_err(StrategyError::io(format!("open {}", mem_path.display())))?;
        let mut raw = Vec::with_capacity(runs.len());
        for &(offset, pages) in &runs {
            let mut buf = vec![0u8; (pages * PAGE) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&mem, &mut buf, offset)
                .map_err(StrategyError::io(format!("read {}", mem_path.display())))?;
            raw.push((offset, buf));
        }
        let compressed = compress(&raw, plan)?;
        let stream_path = snapshot.artifact_path(STREAM_FILE);
        snapbpf_store::fsutil::write_atomic(&stream_path, &compressed.stream).map_err(
            StrategyError::io(format!("write {}", stream_path.display())),
        )?;
        let header = PartsHeader {
            memory: snapshot.meta.memory,
            page_size: PAGE,
            codec: plan.codec,
            level: plan.level,
            placement: plan.placement,
            partitions: compressed.partitions.len() as u64,
            pages: compressed.partitions.iter().map(|p| p.pages).sum(),
            stream_bytes: compressed.stream.len() as u64,
            dict_bytes: compressed.dict_bytes,
            input,
            compress_ms: compressed.wall_ms,
            compress_cpu_s: compressed.cpu_s,
        };
        let words: Vec<u64> = compressed
            .partitions
            .iter()
            .flat_map(|p| [p.offset, p.pages, p.compressed, u64::from(p.crc32)])
            .collect();
        let parts_path = snapshot.artifact_path(PARTS_FILE);
        let parts_bytes = artifact::write(
            &parts_path,
            PARTS_KIND,
            &header,
            &artifact::u64_bytes(&words),
        )?;
        tracing::info!(
            "sabre record: {} pages in {} partitions (mean {mean:.1} pages), {} {} placement, ratio {:.2}, compressed in {:.0} ms ({:.2} CPU s)",
            header.pages,
            header.partitions,
            plan.codec.name(),
            plan.placement.name(),
            (header.pages * PAGE) as f64 / header.stream_bytes as f64,
            compressed.wall_ms,
            compressed.cpu_s
        );
        Ok(RecordReport {
            artifacts: vec![
                (stream_path, header.stream_bytes),
                (parts_path, parts_bytes),
            ],
            ms: snapbpf_uffd::ms_since(started),
            pages: header.pages,
            capture_cpu_ms: None,
        })
    }
}

/// What to record.
#[derive(Debug, Clone, Copy)]
struct Plan {
    codec: Codec,
    level: i32,
    placement: Placement,
}

/// A compressed working set.
struct Compressed {
    stream: Vec<u8>,
    partitions: Vec<Partition>,
    dict_bytes: u64,
    wall_ms: f64,
    cpu_s: f64,
}

/// Compresses `raw` partitions (file offset, pages) as `plan` says.
fn compress(raw: &[(u64, Vec<u8>)], plan: Plan) -> Result<Compressed, StrategyError> {
    let started = Instant::now();
    let cpu_before = thread_cpu_s();
    let dict = match plan.codec {
        Codec::ZstdDict => train_dictionary(raw),
        _ => Vec::new(),
    };
    let mut stream = dict.clone();
    let mut partitions = Vec::with_capacity(raw.len());
    let entry = |offset: u64, data: &[u8], compressed: u64| Partition {
        offset,
        pages: data.len() as u64 / PAGE,
        compressed,
        crc32: crc32fast::hash(data),
    };
    match plan.placement {
        Placement::Scattered => {
            let mut frames = FrameCompressor::new(plan.codec, plan.level, &dict)
                .map_err(StrategyError::io("frame compressor"))?;
            for (offset, data) in raw {
                let frame = frames
                    .compress(data)
                    .map_err(StrategyError::io("compress a partition"))?;
                partitions.push(entry(*offset, data, frame.len() as u64));
                stream.extend_from_slice(&frame);
            }
        }
        Placement::Single => {
            let mut out = Vec::new();
            match plan.codec {
                Codec::Lz4 => {
                    let mut enc = lz4_flex::frame::FrameEncoder::new(&mut out);
                    for (_, data) in raw {
                        std::io::Write::write_all(&mut enc, data)
                            .map_err(StrategyError::io("lz4 compress"))?;
                    }
                    enc.finish()
                        .map_err(|e| StrategyError::io("lz4 compress")(std::io::Error::other(e)))?;
                }
                _ => {
                    let mut enc =
                        zstd::stream::Encoder::with_dictionary(&mut out, plan.level, &dict)
                            .map_err(StrategyError::io("zstd compressor"))?;
                    for (_, data) in raw {
                        std::io::Write::write_all(&mut enc, data)
                            .map_err(StrategyError::io("zstd compress"))?;
                    }
                    enc.finish().map_err(StrategyError::io("zstd compress"))?;
                }
            }
            for (offset, data) in raw {
                partitions.push(entry(*offset, data, 0));
            }
            stream.extend_from_slice(&out);
        }
    }
    Ok(Compressed {
        stream,
        partitions,
        dict_bytes: dict.len() as u64,
        wall_ms: snapbpf_uffd::ms_since(started),
        cpu_s: thread_cpu_s() - cpu_before,
    })
}

/// A zstd dictionary trained on the working set's pages: one-page samples spread evenly
/// over it, at most [`DICT_TRAINING_PAGES`] (zstd's guidance is about 100 times the
/// dictionary's size; training on all of a large working set takes seconds per 100 MiB
/// and gains nothing). Empty where there are too few pages to train on (zstd then
/// compresses without one).
fn train_dictionary(raw: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let pages: Vec<&[u8]> = raw
        .iter()
        .flat_map(|(_, data)| data.chunks(PAGE as usize))
        .collect();
    if pages.len() < 64 {
        return Vec::new();
    }
    let stride = pages.len().div_ceil(DICT_TRAINING_PAGES);
    let samples: Vec<&[u8]> = pages.iter().step_by(stride).copied().collect();
    let flat = samples.concat();
    let sizes: Vec<usize> = samples.iter().map(|s| s.len()).collect();
    match zstd::dict::from_continuous(&flat, &sizes, DICT_BYTES) {
        Ok(dict) => dict,
        Err(e) => {
            tracing::warn!("sabre: no dictionary could be trained ({e}); zstd without one");
            Vec::new()
        }
    }
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into our local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Errors of a Sabre restore's pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The stream could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The stream.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The stream ended before the partitions file says it does.
    #[error("the compressed stream ends early (truncated)")]
    Truncated,
    /// The codec refused a frame.
    #[error("partition {index} (file offset {offset}) does not decompress")]
    Decode {
        /// Partition index.
        index: usize,
        /// Its file offset.
        offset: u64,
        /// The codec's error.
        #[source]
        source: std::io::Error,
    },
    /// A partition decompressed to the wrong size or contents.
    #[error("partition {index} (file offset {offset}) decompressed to {what}: the stream is corrupt; nothing of it was installed")]
    Mismatch {
        /// Partition index.
        index: usize,
        /// Its file offset.
        offset: u64,
        /// What came out.
        what: String,
    },
    /// Bytes follow the last frame.
    #[error("the compressed stream has bytes after its last partition")]
    Trailing,
    /// Installing into guest memory failed.
    #[error("installing partition {index}")]
    Install {
        /// Partition index.
        index: usize,
        /// The userfaultfd error.
        #[source]
        source: snapbpf_uffd::UffdError,
    },
    /// A pipeline thread could not start or died.
    #[error("a pipeline thread failed: {0}")]
    Thread(&'static str),
}

impl From<PipelineError> for StrategyError {
    fn from(e: PipelineError) -> Self {
        StrategyError::Pipeline(Box::new(e))
    }
}

/// Checks one decompressed partition against its entry.
fn check_partition(index: usize, p: &Partition, data: &[u8]) -> Result<(), PipelineError> {
    let mismatch = |what: String| PipelineError::Mismatch {
        index,
        offset: p.offset,
        what,
    };
    if data.len() != p.raw_bytes() {
        return Err(mismatch(format!(
            "{} bytes, not {}",
            data.len(),
            p.raw_bytes()
        )));
    }
    if crc32fast::hash(data) != p.crc32 {
        return Err(mismatch("pages whose CRC32 differs".into()));
    }
    Ok(())
}

/// The stream, as it arrives from the reader thread: a `Read` that blocks for the next
/// chunk, handing emptied chunks back for reuse.
struct Incoming {
    chunks: mpsc::Receiver<(AlignedBuf, usize)>,
    recycle: mpsc::SyncSender<AlignedBuf>,
    current: Option<(AlignedBuf, usize, usize)>,
}

impl std::io::BufRead for Incoming {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        let exhausted = self.current.as_ref().is_none_or(|(_, len, pos)| pos >= len);
        if exhausted {
            if let Some((buf, _, _)) = self.current.take() {
                let _ = self.recycle.try_send(buf);
            }
            // The reader is done (or failed, and says so itself): end of stream.
            if let Ok((buf, len)) = self.chunks.recv() {
                self.current = Some((buf, len, 0));
            }
        }
        Ok(match &self.current {
            Some((buf, len, pos)) => &buf.as_slice()[*pos..*len],
            None => &[],
        })
    }

    fn consume(&mut self, n: usize) {
        if let Some((_, len, pos)) = &mut self.current {
            *pos = (*pos + n).min(*len);
        }
    }
}

impl Read for Incoming {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Reads `path` front to back in [`CHUNK_BYTES`] direct reads, sending each chunk on;
/// returns the time spent in reads. A failed read ends the stream early for the consumer
/// and is returned here. Stops early when the consumer is gone.
fn read_stream(
    path: &std::path::Path,
    len: u64,
    chunks: mpsc::SyncSender<(AlignedBuf, usize)>,
    recycle: mpsc::Receiver<AlignedBuf>,
) -> std::io::Result<Duration> {
    let mut busy = Duration::ZERO;
    let (file, _) = snapbpf_store::fsutil::open_direct(path)?;
    let mut offset = 0u64;
    let mut allocated = 0usize;
    while offset < len {
        let mut buf = match recycle.try_recv() {
            Ok(b) => b,
            Err(_) if allocated < CHUNKS_AHEAD => {
                allocated += 1;
                AlignedBuf::new(CHUNK_BYTES as u64)?
            }
            Err(_) => match recycle.recv() {
                Ok(b) => b,
                Err(_) => return Ok(busy),
            },
        };
        let want = ((len - offset) as usize).min(CHUNK_BYTES);
        let started = Instant::now();
        let mut got = 0usize;
        while got < want {
            // O_DIRECT wants block-sized requests: ask for the rest of the buffer.
            let n = snapbpf_store::fsutil::read_at(
                &file,
                &mut buf.as_mut_slice()[got..],
                offset + got as u64,
            )?;
            if n == 0 {
                // The file shrank: the consumer sees the stream end early.
                break;
            }
            got += n;
        }
        busy += started.elapsed();
        let got = got.min(want);
        if chunks.send((buf, got)).is_err() || got < want {
            return Ok(busy);
        }
        offset += got as u64;
    }
    Ok(busy)
}

/// Prefetches the recording into guest memory through the pipeline; returns its report.
fn prefetch(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    rec: &Recording,
    stream_path: &std::path::Path,
    threads: usize,
) -> Result<PrefetchReport, PipelineError> {
    let started = Instant::now();
    let (chunk_tx, chunk_rx) = mpsc::sync_channel(CHUNKS_AHEAD);
    let (recycle_tx, recycle_rx) = mpsc::sync_channel(CHUNKS_AHEAD);
    let len = rec.header.stream_bytes;
    let path = stream_path.to_path_buf();
    let times = std::thread::scope(|s| {
        let reader = std::thread::Builder::new()
            .name("sabre-read".into())
            .spawn_scoped(s, move || read_stream(&path, len, chunk_tx, recycle_rx))
            .map_err(|_| PipelineError::Thread("reader"))?;
        let mut incoming = Incoming {
            chunks: chunk_rx,
            recycle: recycle_tx,
            current: None,
        };
        let outcome = match rec.header.placement {
            Placement::Single => single(uffd, regions, rec, &mut incoming),
            Placement::Scattered => scattered(uffd, regions, rec, &mut incoming, threads),
        };
        // Unblock the reader if we stopped early, then collect its time. A failed read
        // explains whatever the consumer saw (a stream that ended early).
        drop(incoming);
        let read = reader
            .join()
            .map_err(|_| PipelineError::Thread("reader"))?
            .map_err(|source| PipelineError::Read {
                path: stream_path.to_path_buf(),
                source,
            })?;
        outcome.map(|t| (read, t))
    });
    let (read, (decompress, install)) = times?;
    let wall = started.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let serial = read + decompress + install;
    let hidden = if decompress.is_zero() {
        0.0
    } else {
        (serial.saturating_sub(wall).as_secs_f64() / decompress.as_secs_f64()).clamp(0.0, 1.0)
    };
    Ok(PrefetchReport {
        bytes: rec.raw_bytes(),
        ranges: rec.partitions.len() as u64,
        ms: ms(wall),
        first_request_ms: None,
        compression: Some(CompressionReport {
            compressed_bytes: rec.header.stream_bytes,
            raw_bytes: rec.raw_bytes(),
            read_ms: ms(read),
            decompress_ms: ms(decompress),
            install_ms: ms(install),
            decompress_hidden: hidden,
        }),
    })
}

/// Host address of a partition's first page in guest memory.
fn destination(
    regions: &[GuestRegionUffdMapping],
    index: usize,
    p: &Partition,
) -> Result<u64, PipelineError> {
    regions
        .iter()
        .find_map(|r| {
            let last = p.offset + p.pages * PAGE - 1;
            r.host_addr(last)?;
            r.host_addr(p.offset)
        })
        .ok_or(PipelineError::Install {
            index,
            source: snapbpf_uffd::UffdError::Stray(p.offset),
        })
}

fn read_dict(incoming: &mut Incoming, rec: &Recording) -> Result<Vec<u8>, PipelineError> {
    let mut dict = vec![0u8; rec.header.dict_bytes as usize];
    incoming.read_exact(&mut dict).map_err(eof_as_truncated)?;
    Ok(dict)
}

fn eof_as_truncated(e: std::io::Error) -> PipelineError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        PipelineError::Truncated
    } else {
        PipelineError::Decode {
            index: 0,
            offset: 0,
            source: e,
        }
    }
}

/// A decoder of the single placement's one frame, reading from `input`.
fn stream_decoder<'a, R: std::io::BufRead + 'a>(
    codec: Codec,
    input: R,
    dict: &[u8],
) -> Result<Box<dyn Read + 'a>, PipelineError> {
    Ok(match codec {
        Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
        _ => Box::new(
            zstd::stream::read::Decoder::with_dictionary(input, dict).map_err(|source| {
                PipelineError::Decode {
                    index: 0,
                    offset: 0,
                    source,
                }
            })?,
        ),
    })
}

/// Decompresses the scattered placement's frames, one partition at a time.
struct FrameDecoder(FrameDecompressor);

impl FrameDecoder {
    fn new(codec: Codec, dict: &[u8]) -> Result<Self, PipelineError> {
        FrameDecompressor::new(codec, dict)
            .map(Self)
            .map_err(|source| PipelineError::Decode {
                index: 0,
                offset: 0,
                source,
            })
    }

    /// Decompresses partition `index`'s `frame` into `out` (resized to the partition),
    /// checks it, and returns the checked pages.
    fn decode<'o>(
        &mut self,
        index: usize,
        p: &Partition,
        frame: &[u8],
        out: &'o mut Vec<u8>,
    ) -> Result<&'o [u8], PipelineError> {
        out.resize(p.raw_bytes(), 0);
        let n = self
            .0
            .decompress_into(frame, &mut out[..])
            .map_err(|source| PipelineError::Decode {
                index,
                offset: p.offset,
                source,
            })?;
        check_partition(index, p, &out[..n])?;
        Ok(&out[..n])
    }
}

/// Single-chunk placement: this thread decodes the one stream partition by partition into
/// staging buffers; an installer thread copies each into guest memory as it completes.
/// Returns (decompress time, install time).
fn single(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    rec: &Recording,
    incoming: &mut Incoming,
) -> Result<(Duration, Duration), PipelineError> {
    let dict = read_dict(incoming, rec)?;
    let mut decoder = stream_decoder(rec.header.codec, &mut *incoming, &dict)?;
    let (full_tx, full_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(4);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    let times = std::thread::scope(|s| {
        let installer = std::thread::Builder::new()
            .name("sabre-install".into())
            .spawn_scoped(s, move || -> Result<Duration, PipelineError> {
                let mut busy = Duration::ZERO;
                for (index, data) in full_rx {
                    let p = &rec.partitions[index];
                    let dst = destination(regions, index, p)?;
                    let t = Instant::now();
                    uffd.copy(dst, &data)
                        .map_err(|source| PipelineError::Install { index, source })?;
                    busy += t.elapsed();
                    let _ = empty_tx.send(data);
                }
                Ok(busy)
            })
            .map_err(|_| PipelineError::Thread("installer"))?;
        let mut decompress = Duration::ZERO;
        let decoded = (|| {
            for (index, p) in rec.partitions.iter().enumerate() {
                let mut data = empty_rx.try_recv().unwrap_or_default();
                data.resize(p.raw_bytes(), 0);
                let t = Instant::now();
                decoder.read_exact(&mut data).map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => PipelineError::Mismatch {
                        index,
                        offset: p.offset,
                        what: "fewer bytes than its pages (the stream ends early)".into(),
                    },
                    _ => PipelineError::Decode {
                        index,
                        offset: p.offset,
                        source: e,
                    },
                })?;
                decompress += t.elapsed();
                check_partition(index, p, &data)?;
                if full_tx.send((index, data)).is_err() {
                    // The installer failed; its error is the one to report.
                    return Ok(());
                }
            }
            let mut probe = [0u8; 1];
            match decoder.read(&mut probe) {
                Ok(0) => Ok(()),
                _ => Err(PipelineError::Trailing),
            }
        })();
        drop(full_tx);
        let installed = installer
            .join()
            .map_err(|_| PipelineError::Thread("installer"))?;
        decoded?;
        Ok((decompress, installed?))
    })?;
    // The frame ended: nothing may follow it.
    drop(decoder);
    let mut probe = [0u8; 1];
    if !matches!(incoming.read(&mut probe), Ok(0)) {
        return Err(PipelineError::Trailing);
    }
    Ok(times)
}

/// Scattered placement: this thread cuts each partition's frame out of the stream as it
/// arrives and hands it to `threads` workers, which decompress, check and install it in
/// place. Returns (decompress time, install time), summed over workers.
fn scattered(
    uffd: &Uffd,
    regions: &[GuestRegionUffdMapping],
    rec: &Recording,
    incoming: &mut Incoming,
    threads: usize,
) -> Result<(Duration, Duration), PipelineError> {
    let dict = read_dict(incoming, rec)?;
    let (work_tx, work_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(threads * 4);
    let work_rx = std::sync::Mutex::new(work_rx);
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for n in 0..threads.max(1) {
            let (work_rx, dict) = (&work_rx, &dict);
            let worker = std::thread::Builder::new()
                .name(format!("sabre-decompress-{n}"))
                .spawn_scoped(s, move || -> Result<(Duration, Duration), PipelineError> {
                    let mut frames = FrameDecoder::new(rec.header.codec, dict)?;
                    let (mut decompress, mut install) = (Duration::ZERO, Duration::ZERO);
                    let mut out = Vec::new();
                    loop {
                        let next = match work_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return Err(PipelineError::Thread("decompressor")),
                        };
                        let Ok((index, frame)) = next else {
                            return Ok((decompress, install));
                        };
                        let p = &rec.partitions[index];
                        let t = Instant::now();
                        let pages = frames.decode(index, p, &frame, &mut out)?;
                        decompress += t.elapsed();
                        let dst = destination(regions, index, p)?;
                        let t = Instant::now();
                        uffd.copy(dst, pages)
                            .map_err(|source| PipelineError::Install { index, source })?;
                        install += t.elapsed();
                    }
                })
                .map_err(|_| PipelineError::Thread("decompressor"))?;
            workers.push(worker);
        }
        let fed = (|| {
            for (index, p) in rec.partitions.iter().enumerate() {
                let mut frame = vec![0u8; p.compressed as usize];
                incoming.read_exact(&mut frame).map_err(eof_as_truncated)?;
                if work_tx.send((index, frame)).is_err() {
                    // Every worker stopped: their errors are the ones to report.
                    return Ok(());
                }
            }
            let mut probe = [0u8; 1];
            match incoming.read(&mut probe) {
                Ok(0) => Ok(()),
                _ => Err(PipelineError::Trailing),
            }
        })();
        drop(work_tx);
        let mut totals = (Duration::ZERO, Duration::ZERO);
        let mut first_err = None;
        for w in workers {
            match w.join() {
                Ok(Ok((d, i))) => {
                    totals.0 += d;
                    totals.1 += i;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(PipelineError::Thread("decompressor"));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        fed?;
        Ok(totals)
    })
}

/// Decodes the whole recording from `stream` serially (no guest memory), checking every
/// partition, and hands each to `each`: `snapbpf verify`, and the tests.
pub fn decode_all(
    rec: &Recording,
    stream: &[u8],
    mut each: impl FnMut(&Partition, &[u8]) -> Result<(), StrategyError>,
) -> Result<(), StrategyError> {
    let dict_len = rec.header.dict_bytes as usize;
    let dict = stream.get(..dict_len).ok_or(PipelineError::Truncated)?;
    let mut rest = &stream[dict_len..];
    match rec.header.placement {
        Placement::Single => {
            let mut decoder = stream_decoder(rec.header.codec, &mut rest, dict)?;
            for (index, p) in rec.partitions.iter().enumerate() {
                let mut data = vec![0u8; p.raw_bytes()];
                decoder
                    .read_exact(&mut data)
                    .map_err(|source| PipelineError::Decode {
                        index,
                        offset: p.offset,
                        source,
                    })?;
                check_partition(index, p, &data)?;
                each(p, &data)?;
            }
            let mut probe = [0u8; 1];
            if !matches!(decoder.read(&mut probe), Ok(0)) {
                return Err(PipelineError::Trailing.into());
            }
            drop(decoder);
            if !rest.is_empty() {
                return Err(PipelineError::Trailing.into());
            }
        }
        Placement::Scattered => {
            let mut frames = FrameDecoder::new(rec.header.codec, dict)?;
            let mut out = Vec::new();
            for (index, p) in rec.partitions.iter().enumerate() {
                let frame = rest
                    .get(..p.compressed as usize)
                    .ok_or(PipelineError::Truncated)?;
                rest = &rest[p.compressed as usize..];
                each(p, frames.decode(index, p, frame, &mut out)?)?;
            }
            if !rest.is_empty() {
                return Err(PipelineError::Trailing.into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_sorted_runs_capped_in_length() {
        let p = |i: u64| i * PAGE;
        let offsets = [p(9), p(3), p(4), p(5), p(20), p(4), p(10)];
        assert_eq!(partition(&offsets), vec![(p(3), 3), (p(9), 2), (p(20), 1)]);
        let long: Vec<u64> = (0..MAX_PARTITION_PAGES + 3).map(p).collect();
        assert_eq!(
            partition(&long),
            vec![(0, MAX_PARTITION_PAGES), (p(MAX_PARTITION_PAGES), 3)]
        );
        assert_eq!(Placement::for_sparsity(1.5), Placement::Single);
        assert_eq!(Placement::for_sparsity(12.0), Placement::Scattered);
    }

    /// Pages with the structure of a real heap, so every codec has something to find.
    fn pages(n: u64) -> Vec<(u64, Vec<u8>)> {
        let runs = partition(&(0..n).map(|i| (i * 3 / 2) * PAGE).collect::<Vec<_>>());
        runs.iter()
            .map(|&(offset, pages)| {
                let data = (0..pages * PAGE)
                    .map(|i| {
                        let at = offset + i;
                        if at % 64 < 8 {
                            (at / 4096) as u8
                        } else {
                            b"abcdefgh"[(at % 8) as usize]
                        }
                    })
                    .collect();
                (offset, data)
            })
            .collect()
    }

    fn recording(c: &Compressed, plan: Plan) -> Recording {
        Recording {
            header: PartsHeader {
                memory: FileIdentity {
                    size: 0,
                    digest: [0; 32],
                },
                page_size: PAGE,
                codec: plan.codec,
                level: plan.level,
                placement: plan.placement,
                partitions: c.partitions.len() as u64,
                pages: c.partitions.iter().map(|p| p.pages).sum(),
                stream_bytes: c.stream.len() as u64,
                dict_bytes: c.dict_bytes,
                input: 0,
                compress_ms: 0.0,
                compress_cpu_s: 0.0,
            },
            partitions: c.partitions.clone(),
        }
    }

    /// Every codec and placement round-trips; a flipped byte, a truncated stream, stray
    /// trailing bytes and a wrong size are refused, never decoded into pages.
    #[test]
    fn every_codec_and_placement_round_trips_and_refuses_damage() {
        let raw = pages(400);
        for codec in [Codec::ZstdDict, Codec::Zstd, Codec::Lz4] {
            for placement in [Placement::Single, Placement::Scattered] {
                let plan = Plan {
                    codec,
                    level: 3,
                    placement,
                };
                let c = compress(&raw, plan).expect("compress");
                let rec = recording(&c, plan);
                let mut seen = Vec::new();
                decode_all(&rec, &c.stream, |p, data| {
                    seen.push((p.offset, data.to_vec()));
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{codec:?} {placement:?}: {e}"));
                assert_eq!(seen, raw, "{codec:?} {placement:?}");
                assert!(
                    c.stream.len() * 2 < raw.iter().map(|(_, d)| d.len()).sum::<usize>(),
                    "{codec:?} {placement:?} compresses structured pages"
                );

                let mut flipped = c.stream.clone();
                let at = flipped.len() - 40;
                flipped[at] ^= 0x5a;
                assert!(
                    decode_all(&rec, &flipped, |_, _| Ok(())).is_err(),
                    "{codec:?} {placement:?}: a flipped byte"
                );
                let short = &c.stream[..c.stream.len() - 7];
                assert!(
                    decode_all(&rec, short, |_, _| Ok(())).is_err(),
                    "{codec:?} {placement:?}: truncated"
                );
                let mut long = c.stream.clone();
                long.push(0);
                assert!(
                    decode_all(&rec, &long, |_, _| Ok(())).is_err(),
                    "{codec:?} {placement:?}: a trailing byte"
                );
                let mut wrong = rec.clone();
                wrong.partitions[0].pages += 1;
                assert!(
                    decode_all(&wrong, &c.stream, |_, _| Ok(())).is_err(),
                    "{codec:?} {placement:?}: a partition of the wrong size"
                );
            }
        }
    }
}
