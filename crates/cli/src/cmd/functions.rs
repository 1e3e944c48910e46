//! `snapbpf functions`: the function suite.

use anyhow::Result;

/// List the functions that can be snapshotted.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let list: Vec<_> = snapbpf_functions::FUNCTIONS
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name,
                "description": f.description,
                "mem_mib": f.mem_mib,
                "inputs": f.inputs,
                // How the function's argument is written after `name:`, if it takes one.
                "argument": f.arg.map(|a| a.syntax),
            })
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<14} {:>8} {:>7}  description",
        "function", "mem MiB", "inputs"
    );
    for f in snapbpf_functions::FUNCTIONS {
        println!(
            "{:<14} {:>8} {:>7}  {}",
            f.name, f.mem_mib, f.inputs, f.description
        );
    }
    Ok(())
}
