//! `snapbpf snapshot`: boot a function, run its init phase, write a snapshot.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf::snapshot::{self, CreateOptions};

/// Boot FUNCTION in a fresh VM, run its init phase and snapshot it into --out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function to snapshot, `name` or `name:argument` for one that takes an argument (see
    /// `snapbpf functions`).
    function: String,
    /// Snapshot directory to create.
    #[arg(long)]
    out: PathBuf,
    /// Guest memory in MiB (default: the function's).
    #[arg(long)]
    mem_mib: Option<u32>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Longest the init phase may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The VMM that boots the function and takes the snapshot: `builtin` (snapbpf's
    /// microVM) or `firecracker` (an unmodified Firecracker; see --firecracker). Every
    /// later command takes it from the snapshot.
    #[arg(long, default_value = "builtin", value_parser = snapbpf::snapshot::Vmm::parse)]
    vmm: snapbpf::snapshot::Vmm,
    /// Write zero pages as data, as Firecracker writes a full snapshot (the paper's
    /// setting: a restore reads them from the device). By default they are holes: the
    /// memory file costs disk blocks for its data only, and the snapshot is written in
    /// time proportional to what the guest touched.
    #[arg(long)]
    dense: bool,
}

pub fn run(args: Args) -> Result<()> {
    eprintln!(
        "snapshotting {} into {} ...",
        args.function,
        args.out.display()
    );
    let snap = snapshot::create(
        &args.function,
        &args.out,
        &CreateOptions {
            mem_mib: args.mem_mib,
            force: args.force,
            timeout: super::secs(args.timeout_secs),
            vmm: args.vmm,
            layout: if args.dense {
                snapshot::MemoryLayout::Dense
            } else {
                snapshot::MemoryLayout::Sparse
            },
        },
    )?;
    let by = match &snap.meta.firecracker {
        Some(fc) => format!(" by {}", fc.version),
        None => String::new(),
    };
    println!(
        "snapshot of {} written to {}{by}: {} MiB memory, init {:.1} ms",
        snap.meta.function,
        snap.dir.display(),
        snap.meta.mem_bytes >> 20,
        snap.meta.init_ms
    );
    Ok(())
}
