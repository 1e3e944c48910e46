//! `snapbpf-fuzz`: run the parser fuzz targets for a while and report.

use std::time::{Duration, Instant};

use clap::Parser;

/// Fuzz snapbpf's parsers of untrusted input (mutation-based, stable Rust).
#[derive(Debug, Parser)]
struct Args {
    /// Targets to run (default: all).
    targets: Vec<String>,
    /// Time per target, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Inputs per target at most.
    #[arg(long, default_value_t = 10_000_000)]
    inputs: u64,
    /// Random seed (runs are reproducible).
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Directory to write the first crashing input of each target to.
    #[arg(long, default_value = "fuzz-crashes")]
    crashes: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let all = snapbpf_fuzz::targets();
    let known: Vec<&str> = all.iter().map(|t| t.name).collect();
    for t in &args.targets {
        if !known.contains(&t.as_str()) {
            anyhow::bail!("unknown target '{t}' (targets: {})", known.join(", "));
        }
    }
    let mut crashed = false;
    println!("| target | inputs | accepted | crashes | seconds | inputs/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for target in all
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
    {
        let started = Instant::now();
        let out = snapbpf_fuzz::fuzz(
            target,
            args.inputs,
            Duration::from_secs(args.seconds),
            args.seed,
        );
        let secs = started.elapsed().as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {secs:.0} | {:.0} |",
            target.name,
            out.inputs,
            out.accepted,
            out.crashes,
            out.inputs as f64 / secs.max(1e-9)
        );
        if let Some(input) = out.first_crash {
            crashed = true;
            std::fs::create_dir_all(&args.crashes)?;
            let path = args.crashes.join(target.name);
            std::fs::write(&path, input)?;
            eprintln!(
                "{}: first crashing input written to {}",
                target.name,
                path.display()
            );
        }
    }
    if crashed {
        anyhow::bail!("some targets crashed");
    }
    Ok(())
}
