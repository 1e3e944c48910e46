//! `snapbpf profile`: measure each function's memory behaviour (docs/functions.md).

use std::path::PathBuf;

use anyhow::Result;

/// Measure, per function: snapshot size, snapshot pages read and pages written per
/// invocation, fresh allocations served by PV filtering, working-set size, warm exec time.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Functions, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    functions: Vec<String>,
    /// Inputs to profile, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    inputs: Vec<u32>,
    /// Output directory (snapshots, profile.json, profile.md).
    #[arg(long, default_value = "bench-out/profile")]
    out: PathBuf,
    /// Longest one invocation may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

pub fn run(args: Args) -> Result<()> {
    let functions = if args.functions.is_empty() {
        snapbpf_functions::FUNCTIONS
            .iter()
            .map(|f| f.name.to_string())
            .collect()
    } else {
        args.functions.clone()
    };
    let exe = super::current_exe()?;
    let mut all = Vec::new();
    for &input in &args.inputs {
        all.extend(snapbpf::profile::profile(
            &functions,
            input,
            &args.out,
            &|| super::worker_command(&exe),
            super::secs(args.timeout_secs),
            &|msg| eprintln!("profile: {msg}"),
        )?);
    }
    all.sort_by(|a, b| (a.function.as_str(), a.input).cmp(&(b.function.as_str(), b.input)));
    let md = snapbpf::profile::markdown(&all);
    std::fs::create_dir_all(&args.out)?;
    snapbpf_store::fsutil::write_atomic(
        &args.out.join("profile.json"),
        &serde_json::to_vec_pretty(&all)?,
    )?;
    snapbpf_store::fsutil::write_atomic(&args.out.join("profile.md"), md.as_bytes())?;
    println!("{md}");
    Ok(())
}
