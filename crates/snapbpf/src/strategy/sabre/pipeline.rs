//! Sabre's restore pipeline: a reader thread streams `sabre.stream` in [`CHUNK_BYTES`]
//! `O_DIRECT` reads, decompression starts on the first chunk, and every partition is
//! checked against its CRC32 before `UFFDIO_COPY` installs it, so a corrupt stream fails the
//! VM before its vCPU runs and never installs a wrong page.

use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::super::interface::{PrefetchReport, StrategyError};
use super::codec::{check_partition, stream_decoder, FrameDecoder};
use super::format::{Partition, Placement, Recording};
use snapbpf_store::fsutil::AlignedBuf;
use snapbpf_uffd::{GuestRegionUffdMapping, Uffd, PAGE};

/// Size of each sequential read of the stream.
pub(super) const CHUNK_BYTES: usize = 4 << 20;
/// Reads in flight ahead of decompression (bounds the reader's memory).
const CHUNKS_AHEAD: usize = 8;

/// The key of Sabre's own part of a prefetch report (`prefetch.compression` in JSON).
pub(super) const COMPRESSION: &str = "compression";

/// How a compressed working set was restored: Sabre's part of the prefetch report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct CompressionReport {
    /// Bytes read: the compressed stream.
    pub(super) compressed_bytes: u64,
    /// Bytes of pages it holds.
    pub(super) raw_bytes: u64,
    /// Time spent in reads, ms.
    pub(super) read_ms: f64,
    /// Time spent decompressing, summed over threads, ms.
    pub(super) decompress_ms: f64,
    /// Time spent installing pages, summed over threads, ms.
    pub(super) install_ms: f64,
    /// Share of the decompression time the pipeline overlapped with other work (0 to 1):
    /// (read + decompress + install - wall) / decompress.
    pub(super) decompress_hidden: f64,
}

/// Errors of a Sabre restore's pipeline.
#[derive(Debug, thiserror::Error)]
pub(super) enum PipelineError {
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
        StrategyError::own(super::INFO.name, e)
    }
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
pub(super) fn prefetch(
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
    let report = PrefetchReport {
        bytes: rec.raw_bytes(),
        ranges: rec.partitions.len() as u64,
        ms: ms(wall),
        ..PrefetchReport::default()
    };
    Ok(report.with_part(
        COMPRESSION,
        &CompressionReport {
            compressed_bytes: rec.header.stream_bytes,
            raw_bytes: rec.raw_bytes(),
            read_ms: ms(read),
            decompress_ms: ms(decompress),
            install_ms: ms(install),
            decompress_hidden: hidden,
        },
    ))
}

/// A pipeline's report as a handler's acknowledgement (what another process's VMM is
/// told it installed; the compression details stay in this process's log).
pub(super) fn ack_of(report: &PrefetchReport) -> snapbpf_uffd::HandlerAck {
    if let Some(c) = report.part::<CompressionReport>(COMPRESSION) {
        tracing::debug!(
            "sabre: {} compressed bytes read in {:.1} ms, decompressed in {:.1} ms ({:.0} % hidden)",
            c.compressed_bytes,
            c.read_ms,
            c.decompress_ms,
            c.decompress_hidden * 100.0
        );
    }
    snapbpf_uffd::HandlerAck {
        bytes: report.bytes,
        ranges: report.ranges,
        ms: report.ms,
        error: None,
    }
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
