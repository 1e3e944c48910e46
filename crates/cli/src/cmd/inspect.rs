//! `snapbpf inspect`: describe a snapshot directory, or a working-set file.

use std::path::{Path, PathBuf};

use anyhow::Result;
use snapbpf::strategy::{StrategySpec, REGISTRY};
use snapbpf_wss::workingset::WorkingSet;

/// Show what a snapshot directory holds, or what a working-set file records.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory or working-set file.
    path: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.path.is_file() {
        return working_set(&args.path, args.json);
    }
    let snap = snapbpf::snapshot::open(&args.path)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&snap.dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    files.sort();
    // Every strategy whose artifacts are here says what it recorded, or why it cannot
    // use it.
    let recordings: Vec<(&str, Result<String, String>)> = REGISTRY
        .iter()
        .filter(|info| {
            info.artifacts
                .iter()
                .any(|a| files.iter().any(|(name, _)| name == a))
        })
        .filter_map(|info| StrategySpec::named(info.name).ok())
        .map(|spec| {
            let described = spec
                .build()
                .describe_recording(&snap)
                .map_err(|e| snapbpf::error_chain(&e));
            (spec.name(), described)
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "snapshot": snap.meta,
                "files": files.iter().map(|(n, s)| serde_json::json!({"name": n, "bytes": s})).collect::<Vec<_>>(),
                "recordings": recordings.iter().map(|(name, r)| match r {
                    Ok(detail) => serde_json::json!({"strategy": name, "usable": true, "detail": detail}),
                    Err(why) => serde_json::json!({"strategy": name, "usable": false, "detail": why}),
                }).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    let m = &snap.meta;
    println!("snapshot      {}", snap.dir.display());
    println!("function      {} (index {})", m.function, m.function_index);
    println!(
        "memory        {} MiB, digest {}",
        m.mem_bytes >> 20,
        m.memory.digest_hex()
    );
    println!("guest build   {}", m.guest_digest);
    match &m.firecracker {
        Some(fc) => println!(
            "vmm           {} ({}, vmstate digest {})",
            m.vmm.name(),
            fc.version,
            fc.vmstate.digest_hex()
        ),
        None => println!("vmm           {}", m.vmm.name()),
    }
    println!("init          {:.1} ms", m.init_ms);
    println!("files:");
    for (name, size) in &files {
        println!("  {name:<24} {size:>14} bytes");
    }
    for (name, described) in &recordings {
        match described {
            Ok(detail) => println!("{name:<13} {detail}"),
            Err(why) => println!("{name:<13} unusable: {why}"),
        }
    }
    Ok(())
}

fn summary(ws: &WorkingSet) -> serde_json::Value {
    serde_json::json!({
        "pages": ws.total_pages(),
        "bytes": ws.total_bytes(),
        "ranges": ws.ranges.len(),
        "captures": ws.meta.captures,
        "lost_events": ws.meta.lost_events,
        "order_histogram": ws.meta.order_histogram,
    })
}

fn print_ws(ws: &WorkingSet, file_bytes: u64) {
    println!(
        "  pages         {} ({:.1} MiB)",
        ws.total_pages(),
        ws.total_bytes() as f64 / (1 << 20) as f64
    );
    println!("  ranges        {}", ws.ranges.len());
    println!(
        "  metadata      {file_bytes} bytes ({:.3} % of the working set)",
        100.0 * file_bytes as f64 / ws.total_bytes().max(1) as f64
    );
    println!(
        "  captures      {} ({} events lost)",
        ws.meta.captures, ws.meta.lost_events
    );
    let orders: Vec<String> = ws
        .meta
        .order_histogram
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(order, n)| format!("order {order}: {n}"))
        .collect();
    println!(
        "  folio orders  {}",
        if orders.is_empty() {
            "-".into()
        } else {
            orders.join(", ")
        }
    );
}

fn working_set(path: &Path, json: bool) -> Result<()> {
    let ws = WorkingSet::read(path)?;
    let file_bytes = std::fs::metadata(path)?.len();
    if json {
        let mut v = summary(&ws);
        v["metadata_bytes"] = file_bytes.into();
        v["ranges_list"] = serde_json::to_value(&ws.ranges)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("working set   {}", path.display());
    print_ws(&ws, file_bytes);
    Ok(())
}
