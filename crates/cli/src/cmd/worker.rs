//! `snapbpf __worker`: one VM of a (possibly concurrent) invocation. Internal: the
//! launcher (`snapbpf::launch`) starts it and speaks its protocol on stdin and stdout.

use anyhow::Result;

/// Internal: run one VM for `snapbpf invoke`, speaking the launcher's stdin/stdout protocol.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> Result<()> {
    snapbpf::launch::worker_main()?;
    Ok(())
}
