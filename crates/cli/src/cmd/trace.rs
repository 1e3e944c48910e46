//! `snapbpf trace`: capture the working set of any process on one file (VMM-agnostic).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use snapbpf_wss::capture::PageCacheCapture;
use snapbpf_wss::workingset::WorkingSet;

/// Run COMMAND and record which pages of FILE it brings into the page cache.
///
/// Works with any process that reads or maps FILE (a Firecracker memory file, say). For an
/// exact working set, evict FILE first (`--cold`) and have the process map it with
/// readahead off (MADV_RANDOM); otherwise readahead pages are captured too. The working set
/// is bound to FILE's content (size and SHA-256, hashed with direct reads after COMMAND
/// exits, so the page cache is left as COMMAND left it).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file whose pages to capture.
    #[arg(long)]
    file: PathBuf,
    /// Where to write the working set.
    #[arg(long)]
    out: PathBuf,
    /// Evict FILE from the page cache before starting COMMAND.
    #[arg(long)]
    cold: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if args.cold {
        snapbpf_store::fsutil::evict(&args.file)?;
    }
    let capture = PageCacheCapture::start(&args.file)?;
    let status = Command::new(&args.command[0])
        .args(&args.command[1..])
        .status()
        .with_context(|| format!("cannot run {}", args.command[0]));
    let captured = capture.stop()?;
    let status = status?;
    if !status.success() {
        anyhow::bail!(
            "{} exited with {status}; no working set written",
            args.command[0]
        );
    }
    let identity = snapbpf_store::verify::identify(&args.file)?;
    let ws = WorkingSet::from_capture(identity, &captured);
    ws.write_atomic(&args.out)?;
    println!(
        "captured {} pages ({:.1} MiB) in {} ranges from {} events, {} lost; wrote {}",
        ws.total_pages(),
        ws.total_bytes() as f64 / (1 << 20) as f64,
        ws.ranges.len(),
        captured.total_events,
        captured.lost_events,
        args.out.display()
    );
    Ok(())
}
