//! `snapbpf inspect`: describe a snapshot directory, or a working-set file.

use std::path::{Path, PathBuf};

use anyhow::Result;
use snapbpf::snapshot::Snapshot;
use snapbpf::strategy::{faasnap, reap};
use snapbpf::workingset::WorkingSet;

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
    let snap = Snapshot::open(&args.path)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&snap.dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    files.sort();
    let ws_path = snap.artifact_path(snapbpf::strategy::snapbpf::WS_FILE);
    let ws = WorkingSet::read(&ws_path).ok();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "snapshot": snap.meta,
                "files": files.iter().map(|(n, s)| serde_json::json!({"name": n, "bytes": s})).collect::<Vec<_>>(),
                "snapbpf_working_set": ws.as_ref().map(summary),
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
    for (name, size) in &files {
        println!("  {name:<24} {size:>14} bytes");
    }
    let has = |n: &str| files.iter().any(|(a, _)| a == n);
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
    if let Some(ws) = ws {
        println!("snapbpf working set:");
        print_ws(
            &ws,
            std::fs::metadata(&ws_path).map(|m| m.len()).unwrap_or(0),
        );
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
