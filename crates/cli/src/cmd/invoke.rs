//! `snapbpf invoke`: restore VMs from a snapshot under a strategy and run invocations.

use anyhow::Result;
use snapbpf::launch::{self, InvokeReport, InvokeRequest};
use snapbpf::run::RunOptions;
use std::path::PathBuf;

use super::strategy_args::StrategyArgs;

/// Restore VMs from a snapshot and run one invocation in each.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory, or `s3://BUCKET/PREFIX/NAME` (pushed with `snapbpf push`; it is
    /// mounted for the run, with the chunk cache `--cache`).
    dir: String,
    #[command(flatten)]
    strategy: StrategyArgs,
    /// Input number.
    #[arg(long, default_value_t = 0)]
    input: u32,
    /// Evict the snapshot from the page cache first (otherwise it is loaded fully: warm).
    #[arg(long)]
    cold: bool,
    /// Leave the page cache as it is (neither evict nor load): to compose with a prefetch
    /// run beside the VMM, e.g. `snapbpf prefetch` started at the same time.
    #[arg(long, conflicts_with = "cold")]
    as_is: bool,
    /// Number of VMs restored and run at once, one process each.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Longest an invocation may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The storage the VMs read the snapshot from: `native`, or `sata` (a blkio cgroup
    /// throttles reads of the snapshot's disk to 550 MB/s and 95k IOPS).
    #[arg(long, default_value = "native", value_parser = snapbpf::storage_profile::StorageProfile::parse)]
    device: snapbpf::storage_profile::StorageProfile,
    /// The host's chunk cache, for an `s3://` snapshot.
    #[arg(long, default_value = "/var/cache/snapbpf/chunks")]
    cache: PathBuf,
    #[command(flatten)]
    remote: super::fleet::RemoteArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let spec = args.strategy.spec()?;
    // An s3:// snapshot is mounted for the run; a mounted one reports what it fetched.
    let mounted = if args.dir.starts_with("s3://") {
        let url = snapbpf_fleet::SnapshotUrl::parse(&args.dir)?;
        Some(super::fleet::AutoMount::new(
            &url,
            &args.cache,
            &args.remote,
        )?)
    } else {
        None
    };
    let dir = mounted
        .as_ref()
        .map_or_else(|| PathBuf::from(&args.dir), |m| m.dir.clone());
    let req = InvokeRequest {
        dir: dir.clone(),
        spec: spec.clone(),
        run: RunOptions {
            input: args.input,
            timeout: super::secs(args.timeout_secs),
        },
        cache: match (args.cold, args.as_is) {
            (true, _) => launch::CacheStart::Cold,
            (false, true) => launch::CacheStart::AsIs,
            (false, false) => launch::CacheStart::Warm,
        },
        concurrency: args.concurrency,
        device: args.device,
    };
    let exe = super::current_exe()?;
    let before = snapbpf_fleet::stats_of(&dir);
    let report = launch::invoke(&req, &|| super::worker_command(&exe))?;
    let fetch = before
        .zip(snapbpf_fleet::stats_of(&dir))
        .map(|(b, a)| super::fleet::fetched(&b, &a));
    drop(mounted);
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let (Some(fetch), Some(object)) = (fetch, value.as_object_mut()) {
            object.insert("fetch".into(), fetch);
        }
        println!("{}", serde_json::to_string(&value)?);
    } else {
        print_report(&report);
        if let Some(f) = fetch {
            println!(
                "fetched: {} GETs, {:.1} MiB ({:.1} MiB of chunks), {} chunk-cache hits, time to first byte {:.2} ms",
                f["requests"],
                f["bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
                f["raw_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
                f["cache_hits"],
                f["ttfb_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn print_report(r: &InvokeReport) {
    println!(
        "{} · {} · input {} · {} · {} VM(s)",
        r.function,
        r.strategy,
        r.input,
        if r.cold { "cold" } else { "warm" },
        r.concurrency
    );
    println!(
        "{:>4} {:>10} {:>11} {:>9} {:>10} {:>9} {:>12}  checksum",
        "vm", "e2e ms", "restore ms", "exec ms", "maj flt", "anon MiB", "file MiB"
    );
    for (i, run) in r.runs.iter().enumerate() {
        println!(
            "{:>4} {:>10.2} {:>11.2} {:>9.2} {:>10} {:>9.1} {:>12.1}  {}",
            i,
            run.e2e_ms,
            run.restore_ms,
            run.exec_ms,
            run.major_faults,
            run.rss_anon_kib as f64 / 1024.0,
            run.rss_file_kib as f64 / 1024.0,
            run.checksum
        );
    }
    println!(
        "memory: total {:.1} MiB = page cache {:.1} MiB + anonymous {:.1} MiB",
        r.memory.total_kib as f64 / 1024.0,
        r.memory.page_cache_kib as f64 / 1024.0,
        r.memory.anon_kib as f64 / 1024.0
    );
    if r.prefetch.bytes > 0 {
        println!(
            "prefetch: {:.1} MiB in {} ranges, {:.2} ms",
            r.prefetch.bytes as f64 / (1 << 20) as f64,
            r.prefetch.ranges,
            r.prefetch.ms
        );
        if let Some(first) = r.prefetch.first_request_ms {
            println!("prefetch: first request {first:.2} ms after the restore began");
        }
    }
}
