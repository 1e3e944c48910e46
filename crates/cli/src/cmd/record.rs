//! `snapbpf record`: run one invocation under a strategy's capture and write its artifacts.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf::invoke::InvokeError;
use snapbpf::snapshot::{OpenError, Snapshot};
use snapbpf::strategy::StrategySpec;

/// Record a strategy's working set from one invocation of a snapshot.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory.
    dir: PathBuf,
    /// Strategy whose artifacts to record: reap, faasnap.
    #[arg(long)]
    strategy: String,
    /// Input of the recorded invocation.
    #[arg(long, default_value_t = 0)]
    input: u32,
    /// Longest the invocation may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let snapshot = Snapshot::open(&args.dir)?;
    let info = snapbpf_functions::info(&snapshot.meta.function)
        .ok_or_else(|| OpenError::UnknownFunction(snapshot.meta.function.clone()))?;
    if args.input >= info.inputs {
        return Err(InvokeError::Input {
            function: info.name.into(),
            inputs: info.inputs,
            input: args.input,
        }
        .into());
    }
    let strategy = StrategySpec::named(&args.strategy).build()?;
    let report = strategy.record(&snapshot, args.input, super::secs(args.timeout_secs))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} · {} · recorded input {} in {:.1} ms: {} working-set pages ({:.1} MiB)",
        snapshot.meta.function,
        strategy.name(),
        args.input,
        report.ms,
        report.pages,
        report.pages as f64 * 4096.0 / (1 << 20) as f64
    );
    for (path, bytes) in &report.artifacts {
        println!("  {:<40} {:>14} bytes", path.display(), bytes);
    }
    Ok(())
}
