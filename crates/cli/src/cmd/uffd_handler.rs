//! `snapbpf uffd-handler`: an external page-fault handler process speaking Firecracker's
//! UFFD protocol, serving VMs restored from one snapshot (REAP's prefetch when recorded).

use std::path::PathBuf;

use anyhow::Result;

/// Serve the page faults of VMs restored with `--uffd-handler` (or by Firecracker).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Unix socket to listen on, created 0600 (its directory 0700 if missing); a stale
    /// socket is replaced, a live handler's is not.
    #[arg(long)]
    socket: PathBuf,
    #[command(flatten)]
    access: super::AccessArgs,
    /// Snapshot directory whose memory (and REAP working set, if recorded) is served.
    #[arg(
        long,
        required_unless_present = "memory_file",
        conflicts_with = "memory_file"
    )]
    snapshot: Option<PathBuf>,
    /// Serve any raw guest memory file on demand instead (e.g. a Firecracker snapshot's
    /// memory file), without prefetch.
    #[arg(long)]
    memory_file: Option<PathBuf>,
    /// Exit after serving this many VMs (default: run until killed).
    #[arg(long)]
    max_sessions: Option<u64>,
    /// The strategy whose recording every VM gets installed before it runs (`snapbpf
    /// strategies`), where the snapshot has one.
    #[arg(long, default_value = snapbpf::strategy::registry::HANDLER_DEFAULT)]
    strategy: String,
    /// Speak Firecracker's handshake only and write nothing back, as Firecracker's own
    /// example handlers (no hello naming the memory file, no prefetch report).
    #[arg(long)]
    silent: bool,
}

pub fn run(args: Args) -> Result<()> {
    use snapbpf::uffd_backend::{run_handler, HandlerSource};
    let spec = snapbpf::strategy::StrategySpec::parse(&args.strategy)?;
    let source = match (args.snapshot, args.memory_file) {
        (Some(dir), _) => HandlerSource::Snapshot(dir),
        (None, Some(file)) => HandlerSource::MemoryFile(file),
        (None, None) => anyhow::bail!("pass --snapshot DIR or --memory-file FILE"),
    };
    run_handler(
        &args.socket,
        &source,
        &spec,
        args.max_sessions,
        !args.silent,
        &args.access.policy(),
    )?;
    Ok(())
}
