//! `snapbpf inspect`: describe a snapshot directory and its artifacts.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf::snapshot::Snapshot;
use snapbpf::strategy::{faasnap, reap};

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
    for (name, size) in &artifacts {
        println!("  {name:<24} {size:>14} bytes");
    }
    let has = |n: &str| artifacts.iter().any(|(a, _)| a == n);
    if has(reap::TRACE_FILE) || has(reap::WS_FILE) {
        match reap::load_trace(&snap) {
            Ok(t) => println!(
                "reap          {} pages recorded with input {}, bound to this snapshot",
                t.header.pages, t.header.input
            ),
            Err(e) => println!("reap          unusable: {e}"),
        }
    }
    if has(faasnap::META_FILE) || has(faasnap::WS_FILE) {
        match faasnap::load_meta(&snap) {
            Ok(m) => println!(
                "faasnap       {} pages recorded with input {} in {} regions ({} MiB), {} zero pages in {} regions, bound to this snapshot",
                m.header.ws_pages,
                m.header.input,
                m.regions.len(),
                m.header.ws_bytes >> 20,
                m.header.zero_pages,
                m.zeros.len()
            ),
            Err(e) => println!("faasnap       unusable: {e}"),
        }
    }
    Ok(())
}
