//! `snapbpf __worker`: one VM of a (possibly concurrent) invocation. Internal.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf::invoke::{self, RunOptions};
use snapbpf::strategy::StrategySpec;

/// Internal: run one VM for `snapbpf invoke`, speaking the launcher's stdin/stdout protocol.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// Strategy spec, JSON.
    #[arg(long)]
    pub spec: String,
    /// Input number.
    #[arg(long)]
    pub input: u32,
    /// Timeout, seconds.
    #[arg(long)]
    pub timeout_secs: u64,
}

pub fn run(args: Args) -> Result<()> {
    let spec: StrategySpec = serde_json::from_str(&args.spec)?;
    invoke::worker_main(
        &args.dir,
        &spec,
        &RunOptions {
            input: args.input,
            timeout: super::secs(args.timeout_secs),
        },
    )?;
    Ok(())
}
