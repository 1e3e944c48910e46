//! `snapbpf uffd-handler`: an external page-fault handler process speaking Firecracker's
//! UFFD protocol, serving VMs restored from one snapshot (REAP's prefetch when recorded).

use std::path::PathBuf;

use anyhow::Result;

/// Serve the page faults of VMs restored with `--uffd-handler` (or by Firecracker).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Unix socket to listen on (replaced if it exists).
    #[arg(long)]
    socket: PathBuf,
    /// Snapshot directory whose memory (and REAP working set, if recorded) is served.
    #[arg(long)]
    snapshot: PathBuf,
    /// Exit after serving this many VMs (default: run until killed).
    #[arg(long)]
    max_sessions: Option<u64>,
}

pub fn run(args: Args) -> Result<()> {
    snapbpf::strategy::reap::run_handler(&args.socket, &args.snapshot, args.max_sessions)?;
    Ok(())
}
