//! `snapbpf boot`: run a function in a freshly booted VM (the reference for restores).

use anyhow::Result;

/// Boot FUNCTION in a fresh VM, run init and one invocation, print the checksum.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function to run, `name` or `name:argument` (see `snapbpf functions`).
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
    /// Invocations to run in the same VM (the first touches guest memory for the first
    /// time, later ones run fully warm).
    #[arg(long, default_value_t = 1)]
    invocations: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    super::function_input(&args.function, args.input)?;
    let boot = snapbpf::snapshot::fresh_boot(
        &args.function,
        args.input,
        args.invocations,
        args.mem_mib,
        super::secs(args.timeout_secs),
    )?;
    // A cold start by booting: from the request to the first invocation's result (VM
    // creation, guest boot, the function's init, the invocation).
    let e2e_ms = boot.init_ms + boot.invocations.first().map_or(0.0, |i| i.1);
    let checksum = boot.invocations.first().map(|i| i.0).unwrap_or_default();
    if args.json {
        let runs: Vec<_> = boot
            .invocations
            .iter()
            .map(|(c, ms)| serde_json::json!({"checksum": format!("{c:016x}"), "exec_ms": ms}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"function": args.function, "input": args.input,
                               "checksum": format!("{checksum:016x}"),
                               "init_ms": boot.init_ms, "e2e_ms": e2e_ms, "invocations": runs})
        );
    } else {
        println!(
            "{} input {}: checksum {checksum:016x}, init {:.1} ms, boot to result {e2e_ms:.1} ms",
            args.function, args.input, boot.init_ms
        );
        for (i, (c, ms)) in boot.invocations.iter().enumerate() {
            println!("  invocation {i}: {ms:.2} ms, checksum {c:016x}");
        }
    }
    Ok(())
}
