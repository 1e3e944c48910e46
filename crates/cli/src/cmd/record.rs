//! `snapbpf record`: run one recorded invocation and write a strategy's artifacts.

use std::path::PathBuf;

use anyhow::Result;

use super::strategy_args::StrategyArgs;

/// Record a working set for a strategy (one invocation under its capture).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory.
    dir: PathBuf,
    #[command(flatten)]
    strategy: StrategyArgs,
    /// Input of the recorded invocation. Recording several inputs merges their working
    /// sets where the strategy supports it (snapbpf).
    #[arg(long, default_value_t = 0)]
    input: u32,
    /// Longest the invocation may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let snapshot = snapbpf::snapshot::open(&args.dir)?;
    let info = super::function_input(&snapshot.meta.function, args.input)?;
    let spec = args.strategy.spec()?;
    eprintln!(
        "recording {} under {} with input {} ...",
        info.name,
        spec.label(),
        args.input
    );
    let report =
        snapbpf::strategy::record(&spec, &snapshot, args.input, super::secs(args.timeout_secs))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "recorded {} pages ({:.1} MiB) in {:.1} ms{}",
        report.pages,
        report.pages as f64 * 4096.0 / (1 << 20) as f64,
        report.ms,
        report
            .capture_cpu_ms
            .map(|c| format!(" (the capture cost {c:.1} ms of CPU)"))
            .unwrap_or_default()
    );
    for (path, size) in &report.artifacts {
        println!("  {:<40} {size:>12} bytes", path.display());
    }
    Ok(())
}
