//! `snapbpf prefetch`: read a working set ahead into the page cache (VMM-agnostic).

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result};
use snapbpf_wss::prefetch;
use snapbpf_wss::workingset::WorkingSet;

/// Read the ranges of a working set from FILE into the page cache, in recorded order.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file the working set was captured from.
    #[arg(long)]
    file: PathBuf,
    /// The working set (from `snapbpf trace` or `snapbpf record`).
    #[arg(long)]
    ws: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Longest to wait for prefetched pages to become resident.
const RESIDENCY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn run(args: Args) -> Result<()> {
    let file =
        File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let ws = WorkingSet::read(&args.ws)?;
    // Hashed only when the verification cache cannot vouch for the file, with direct
    // reads: checking does not prefetch.
    snapbpf_store::verify::check(&args.file, &ws.identity).with_context(|| {
        format!(
            "working set {} is stale for {}; capture it again",
            args.ws.display(),
            args.file.display()
        )
    })?;
    // Readahead completes asynchronously: wait (bounded) until the pages are resident.
    let done = prefetch::prefetch_until_resident(&file, &ws.ranges, RESIDENCY_WAIT)?;
    let (stats, missing_pages) = (done.stats, done.missing_pages);
    let resident_ms = done.resident_after.as_secs_f64() * 1e3;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"bytes": stats.bytes, "ranges": stats.ranges, "requests": stats.requests,
                               "ms": stats.elapsed.as_secs_f64() * 1e3, "resident_ms": resident_ms,
                               "missing_pages": missing_pages})
        );
    } else {
        println!(
            "prefetched {:.1} MiB in {} ranges ({} requests): issued in {:.2} ms, resident after {:.2} ms, {} pages still missing",
            stats.bytes as f64 / (1 << 20) as f64,
            stats.ranges,
            stats.requests,
            stats.elapsed.as_secs_f64() * 1e3,
            resident_ms,
            missing_pages
        );
    }
    Ok(())
}
