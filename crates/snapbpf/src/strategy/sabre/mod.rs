//! `sabre`: Sabre (Lazarev et al., OSDI '24), REAP's working set stored compressed and
//! restored through a pipeline that hides decompression behind the read.
//!
//! - **Record** (`snapbpf record --strategy sabre`): REAP's record phase (one invocation,
//!   every fault served on demand over userfaultfd, offsets logged). The pages are sorted
//!   into *partitions*, runs of pages contiguous in the memory file (at most
//!   `MAX_PARTITION_PAGES` (256) each), and compressed into `sabre.stream`; `sabre.parts` (an
//!   [`snapbpf_store::artifact`] bound to the snapshot's memory identity) lists every
//!   partition's file offset, size, compressed size and the CRC32 of its pages. Codecs:
//!   `zstd-dict` (the default: zstd with a dictionary trained on the working set's own pages,
//!   stored at the head of the stream and shared by every partition, as Sabre shares canned
//!   Huffman tables), `zstd` and `lz4`; `level` sets zstd's level.
//! - **Placement**, Sabre's two prefetch designs (its Figure 7), chosen at record time by the
//!   partitions' sparsity as Sabre does (Figure 8: scattered wins once partitions average
//!   more than 4 pages), or forced with `placement=`:
//!   - `single`: the whole working set is one compressed frame, decoded as a stream as the
//!     compressed bytes arrive, one partition at a time into a staging buffer that another
//!     thread installs with `UFFDIO_COPY`.
//!   - `scattered`: one frame per partition; worker threads decompress partitions as soon
//!     as their bytes have arrived and install each straight into its place in guest memory.
//! - **Restore**: a pipeline, not three phases. A reader thread reads the stream
//!   sequentially in 4 MiB `O_DIRECT` reads; decompression starts on the first
//!   chunk; every partition is checked against its CRC32 before it is installed, so a
//!   corrupt stream fails the VM before its vCPU runs and never installs a wrong page.
//!   Faults outside the working set are served on demand from the memory file. The report
//!   gives compressed and raw bytes, the time spent reading, decompressing and installing,
//!   and how much of the decompression the read hid.
//!
//! The module is split by concern: [`format`] (the files and their checks), [`codec`]
//! (compression at record time, checked decoding), [`pipeline`] (the restore).
//!
//! Sabre decompresses on Intel IAA, which we do not have: this is its design with software
//! codecs, as its own Figure 9 measures them. What IAA changes is in `docs/sabre.md`.

use std::time::{Duration, Instant};

use super::interface::{
    self, ExternalBacking, ExternalPlan, ExternalRecorder, Helpers, RecordBacking, RecordReport,
    Restored, Strategy, StrategyError,
};
use super::spec::{OptionInfo, StrategyInfo, StrategyOptions, Vmm};
use crate::snapshot::Snapshot;
use crate::uffd_backend::UffdMemory;
use codec::{Plan, DEFAULT_LEVEL};
use format::{load, partition, PartsHeader, Placement, PARTS_FILE, PARTS_KIND, STREAM_FILE};
use snapbpf_store::artifact;
use snapbpf_store::codec::Codec;
use snapbpf_uffd::PAGE;

mod codec;
mod format;
mod pipeline;

/// Registry row of `sabre`.
pub(super) static INFO: StrategyInfo = StrategyInfo::new::<SabreOptions>(
    "sabre",
    "Sabre: REAP's working set compressed in partitions, read sequentially and decompressed while it is read, installed before the vCPU runs",
)
.options(&[
    OptionInfo::valued(
        "codec",
        "zstd-dict|zstd|lz4",
        "record: the codec (default zstd-dict, a dictionary trained on the working set)",
    ),
    OptionInfo::valued("level", "N", "record: the zstd level (default 3)"),
    OptionInfo::valued(
        "placement",
        "single|scattered",
        "record: one stream into a staging buffer, or a frame per partition installed in place (default: by sparsity, as Sabre)",
    ),
    OptionInfo::valued(
        "threads",
        "N",
        "restore: decompression threads for scattered placement (default: the host's cores)",
    ),
])
.records(&[PARTS_FILE, STREAM_FILE])
.vmms(&[Vmm::Builtin, Vmm::Firecracker])
.loader(super::interface::LoaderFuzz {
    seeds: format::fuzz_seeds,
    check: format::fuzz_check,
});

/// Options of `sabre`.
#[derive(Debug, Clone, Default)]
pub(super) struct SabreOptions {
    /// Codec to record with.
    codec: Option<Codec>,
    /// zstd level to record with.
    level: Option<i32>,
    /// Placement to record for.
    placement: Option<Placement>,
    /// Decompression threads at restore.
    threads: Option<u32>,
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
struct Sabre {
    /// Its options.
    options: SabreOptions,
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
            return Err(interface::bad_artifact(
                &snapshot.artifact_path(PARTS_FILE),
                format!(
                    "recorded with codec={} level={} placement={}, not the options given: run `snapbpf record --strategy {}` again",
                    h.codec.name(),
                    h.level,
                    h.placement.name(),
                    render_spec(&self.options)
                ),
            ));
        }
        Ok(())
    }

    fn verify_recording(&self, snapshot: &Snapshot) -> Result<(), StrategyError> {
        let rec = load(snapshot)?;
        let (stream, _) = snapbpf_store::fsutil::read_direct(&snapshot.artifact_path(STREAM_FILE))
            .map_err(StrategyError::io("read the stream"))?;
        codec::decode_all(&rec, stream.as_slice(), |_, _| Ok(()))
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
        let (memory_file, _) = super::interface::open_memory(snapshot, None)?;
        let memory = UffdMemory::new(snapshot.meta.mem_bytes)?;
        let recording = load(snapshot)?;
        let stream_path = snapshot.artifact_path(STREAM_FILE);
        let threads = self.threads();
        Ok(memory.serve_in_process(memory_file, move |uffd, regions| {
            Ok(pipeline::prefetch(
                uffd,
                regions,
                &recording,
                &stream_path,
                threads,
            )?)
        })?)
    }

    fn external(&self, snapshot: &Snapshot) -> Result<ExternalPlan, StrategyError> {
        Ok(ExternalPlan {
            backing: ExternalBacking::Userfault {
                install: Some(self.install(snapshot)?),
            },
            helpers: Helpers::none(),
        })
    }

    fn record_external(
        &self,
        snapshot: &Snapshot,
        input: u32,
        recorder: &dyn ExternalRecorder,
    ) -> Result<RecordReport, StrategyError> {
        let started = Instant::now();
        let log = recorder.run(RecordBacking::Userfault)?;
        self.record_log(snapshot, &log, input, started)
    }

    fn record(
        &self,
        snapshot: &Snapshot,
        input: u32,
        timeout: Duration,
    ) -> Result<RecordReport, StrategyError> {
        let started = Instant::now();
        let log = crate::uffd_backend::record_faults(snapshot, input, timeout)?;
        self.record_log(snapshot, &log, input, started)
    }
}

impl Sabre {
    /// The pipeline as a handler's policy: reads, decompresses, checks and installs the
    /// recording before the vCPU runs (in this process, or for Firecracker's Uffd backend).
    fn install(
        &self,
        snapshot: &Snapshot,
    ) -> Result<std::sync::Arc<snapbpf_uffd::server::Prefetch>, StrategyError> {
        let recording = load(snapshot)?;
        let stream_path = snapshot.artifact_path(STREAM_FILE);
        let threads = self.threads();
        Ok(std::sync::Arc::new(move |uffd, regions, _memory| {
            let report = pipeline::prefetch(uffd, regions, &recording, &stream_path, threads)?;
            Ok(pipeline::ack_of(&report))
        }))
    }

    /// Compresses the pages `log` recorded (in fault order) into the stream and writes the
    /// partitions file: the record phase after its invocation, under either VMM.
    fn record_log(
        &self,
        snapshot: &Snapshot,
        log: &[u64],
        input: u32,
        started: Instant,
    ) -> Result<RecordReport, StrategyError> {
        let runs = partition(log);
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
        let (mem, _) = super::interface::open_memory(snapshot, None)?;
        let mut raw = Vec::with_capacity(runs.len());
        for &(offset, pages) in &runs {
            let mut buf = vec![0u8; (pages * PAGE) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&mem, &mut buf, offset)
                .map_err(StrategyError::io(format!("read {}", mem_path.display())))?;
            raw.push((offset, buf));
        }
        let compressed = codec::compress(&raw, plan)?;
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

/// `options` as the command line writes them (`sabre:codec=lz4`), for messages.
fn render_spec(options: &SabreOptions) -> String {
    let mut s = INFO.name.to_string();
    for o in StrategyOptions::render(options) {
        s.push(':');
        s.push_str(&o);
    }
    s
}
