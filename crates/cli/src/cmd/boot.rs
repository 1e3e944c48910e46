//! `snapbpf boot`: run a function in a freshly booted VM (the reference for restores).

use anyhow::Result;

/// Boot FUNCTION in a fresh VM, run init and one invocation, print the checksum.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function to run.
    function: String,
    /// Input number.
    #[arg(long, default_value_t = 0)]
    input: u32,
    /// Guest memory in MiB (default: the function's).
    #[arg(long)]
    mem_mib: Option<u32>,
    /// Longest each phase may run, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let info = snapbpf_functions::info(&args.function).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown function '{}' (see `snapbpf functions`)",
            args.function
        )
    })?;
    if args.input >= info.inputs {
        anyhow::bail!(
            "function '{}' takes inputs 0..{}, got {}",
            info.name,
            info.inputs,
            args.input
        );
    }
    let checksum = snapbpf::snapshot::fresh_boot_checksum(
        &args.function,
        args.input,
        args.mem_mib,
        super::secs(args.timeout_secs),
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"function": args.function, "input": args.input,
                               "checksum": format!("{checksum:016x}")})
        );
    } else {
        println!(
            "{} input {}: checksum {checksum:016x}",
            args.function, args.input
        );
    }
    Ok(())
}
