//! `snapbpf store`: SnapFaaS's in-memory snapshot store (`snapbpf_memstore`): serve it,
//! and ask it to add, list, evict and count snapshots.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf_memstore::{Reply, Request};

/// The in-memory snapshot store: snapshots' memory in sealed memfds, handed to VMMs.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StoreCommand {
    /// Run the store until SIGINT or SIGTERM.
    Serve {
        /// Unix socket to listen on (replaced if it is a stale socket).
        #[arg(long)]
        socket: PathBuf,
        /// Most bytes held; least recently used snapshots are evicted past it
        /// (a number, with an optional K, M or G suffix of powers of 1024).
        #[arg(long, default_value = "4G", value_parser = parse_bytes)]
        capacity: u64,
    },
    /// Load a snapshot into the store.
    Add {
        /// Snapshot directory.
        dir: PathBuf,
        /// The store's socket.
        #[arg(long)]
        socket: PathBuf,
    },
    /// The snapshots held.
    List {
        /// The store's socket.
        #[arg(long)]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop a snapshot from the store.
    Evict {
        /// Snapshot directory.
        dir: PathBuf,
        /// The store's socket.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Snapshots and bytes held, hits, misses, evictions.
    Stats {
        /// The store's socket.
        #[arg(long)]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a positive size (e.g. 512M, 4G)"))
}

fn ask(socket: &std::path::Path, request: &Request) -> Result<Reply> {
    Ok(snapbpf_memstore::request(socket, request)?.0)
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        StoreCommand::Serve { socket, capacity } => {
            eprintln!(
                "store: serving on {} with {:.1} GiB (SIGINT or SIGTERM to stop)",
                socket.display(),
                capacity as f64 / (1u64 << 30) as f64
            );
            let stats = snapbpf_memstore::serve(&socket, capacity)?;
            eprintln!(
                "store: stopped: {} hits, {} misses, {} evictions; every memfd released",
                stats.hits, stats.misses, stats.evictions
            );
        }
        StoreCommand::Add { dir, socket } => {
            let dir = snapbpf_memstore::store_key(&dir)?;
            let reply = ask(&socket, &Request::Add { dir })?;
            if let Some(h) = reply.held {
                println!(
                    "held {} ({}): {:.1} MiB",
                    h.dir.display(),
                    h.function,
                    h.bytes as f64 / (1 << 20) as f64
                );
            }
        }
        StoreCommand::List { socket, json } => {
            let held = ask(&socket, &Request::List)?.snapshots.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string(&held)?);
            } else {
                for h in held {
                    println!(
                        "{:<14} {:>8.1} MiB  {}",
                        h.function,
                        h.bytes as f64 / (1 << 20) as f64,
                        h.dir.display()
                    );
                }
            }
        }
        StoreCommand::Evict { dir, socket } => {
            let dir = snapbpf_memstore::store_key(&dir)?;
            let reply = ask(&socket, &Request::Evict { dir: dir.clone() })?;
            match reply.held {
                Some(h) => println!("evicted {}", h.dir.display()),
                None => println!("{} was not held", dir.display()),
            }
        }
        StoreCommand::Stats { socket, json } => {
            let stats = ask(&socket, &Request::Stats)?.stats.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                println!(
                    "{} snapshots, {:.1} of {:.1} MiB; {} hits, {} misses, {} evictions",
                    stats.snapshots,
                    stats.bytes as f64 / (1 << 20) as f64,
                    stats.capacity as f64 / (1 << 20) as f64,
                    stats.hits,
                    stats.misses,
                    stats.evictions
                );
            }
        }
    }
    Ok(())
}
