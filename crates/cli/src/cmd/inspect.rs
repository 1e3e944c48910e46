//! `snapbpf inspect`: describe a snapshot directory and its artifacts.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf::snapshot::Snapshot;

/// Show what a snapshot directory holds.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory.
    path: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let snap = Snapshot::open(&args.path)?;
    let mut artifacts = Vec::new();
    for entry in std::fs::read_dir(&snap.dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            artifacts.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    artifacts.sort();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "snapshot": snap.meta,
                "files": artifacts.iter().map(|(n, s)| serde_json::json!({"name": n, "bytes": s})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    let m = &snap.meta;
    println!("snapshot      {}", snap.dir.display());
    println!("function      {} (index {})", m.function, m.function_index);
    println!(
        "memory        {} MiB, sha256 {}",
        m.mem_bytes >> 20,
        m.memory.sha256
    );
    println!("guest build   {}", m.guest_digest);
    println!("init          {:.1} ms", m.init_ms);
    println!("files:");
    for (name, size) in artifacts {
        println!("  {name:<24} {size:>14} bytes");
    }
    Ok(())
}
