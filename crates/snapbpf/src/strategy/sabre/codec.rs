//! Sabre's codecs: compressing a recorded working set into partitions at record time
//! (with a dictionary trained on its own pages for `zstd-dict`), and decoding frames and
//! streams back, every partition checked against its CRC32 before it is handed on.

use std::io::Read;
use std::time::Instant;

use super::super::interface::StrategyError;
use super::format::{Partition, Placement, Recording};
use super::pipeline::PipelineError;
use snapbpf_store::codec::{Codec, FrameCompressor, FrameDecompressor};
use snapbpf_uffd::PAGE;

/// Size of a trained dictionary (zstd's default).
const DICT_BYTES: usize = 112_640;
/// Most pages a dictionary is trained on (8 MiB).
const DICT_TRAINING_PAGES: usize = 2048;
/// The zstd level when none is given (Sabre's Figure 9 uses 3, 10 and 20).
pub(super) const DEFAULT_LEVEL: i32 = 3;

/// What to record.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) codec: Codec,
    pub(super) level: i32,
    pub(super) placement: Placement,
}

/// A compressed working set.
pub(super) struct Compressed {
    pub(super) stream: Vec<u8>,
    pub(super) partitions: Vec<Partition>,
    pub(super) dict_bytes: u64,
    pub(super) wall_ms: f64,
    pub(super) cpu_s: f64,
}

/// Compresses `raw` partitions (file offset, pages) as `plan` says.
pub(super) fn compress(raw: &[(u64, Vec<u8>)], plan: Plan) -> Result<Compressed, StrategyError> {
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

/// Checks one decompressed partition against its entry.
pub(super) fn check_partition(
    index: usize,
    p: &Partition,
    data: &[u8],
) -> Result<(), PipelineError> {
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

/// A decoder of the single placement's one frame, reading from `input`.
pub(super) fn stream_decoder<'a, R: std::io::BufRead + 'a>(
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
pub(super) struct FrameDecoder(FrameDecompressor);

impl FrameDecoder {
    pub(super) fn new(codec: Codec, dict: &[u8]) -> Result<Self, PipelineError> {
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
    pub(super) fn decode<'o>(
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

/// Decodes the whole recording from `stream` serially (no guest memory), checking every
/// partition, and hands each to `each`: `snapbpf verify`, and the tests.
pub(super) fn decode_all(
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
    use super::super::format::{partition, PartsHeader, MAX_PARTITION_PAGES};
    use super::*;
    use snapbpf_store::FileIdentity;

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
