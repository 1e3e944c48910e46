//! `snapbpf strategies`: the registry of restore strategies and their options.

use anyhow::Result;
use snapbpf::strategy::registry;

/// List the restore strategies, their options and what they record.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON: `{"strategies": [{"name", "description", "options", "record", "artifacts", "vmms"}]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(&registry::listing())?);
        return Ok(());
    }
    for info in registry::REGISTRY {
        println!("{:<12} {}", info.name, info.description);
        let vmms: Vec<&str> = info.vmms.iter().map(|v| v.name()).collect();
        println!("{:<12} vmms: {}", "", vmms.join(", "));
        if info.record {
            println!(
                "{:<12} record: `snapbpf record DIR --strategy {}` writes {}",
                "",
                info.name,
                info.artifacts.join(", ")
            );
        }
        for o in info.options {
            let name = match o.value {
                Some(v) => format!("{}={v}", o.name),
                None => o.name.to_string(),
            };
            println!("{:<12}   :{name:<22} {}", "", o.help);
        }
    }
    println!("\nA strategy with options is written NAME:OPTION[:OPTION...], e.g. snapbpf:thp.");
    Ok(())
}
