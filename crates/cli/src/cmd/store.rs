//! `snapbpf store`: SnapFaaS's in-memory snapshot store (`snapbpf_memstore`): serve it,
//! and ask it to add, list, evict and count snapshots.

use std::path::PathBuf;

use anyhow::{Context, Result};
use snapbpf_memstore::{Backing, Held, Reply, Request};

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
        /// Unix socket to listen on, created 0600 (its directory 0700 if missing); a stale
        /// socket is replaced, a live store's is not.
        #[arg(long, default_value = super::DEFAULT_STORE_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        access: super::AccessArgs,
        /// Most bytes held; least recently used snapshots are evicted past it
        /// (a number, with an optional K, M or G suffix of powers of 1024).
        #[arg(long, default_value = "4G", value_parser = parse_bytes)]
        capacity: u64,
        /// Pages backing the memfds: none (4 KiB shmem), thp (shmem transparent huge
        /// pages; needs shmem_enabled at advise or more) or hugetlb (the reserved 2 MiB
        /// pool; restore by copy only).
        #[arg(long, default_value = "none", value_parser = parse_backing)]
        huge_pages: Backing,
        /// When full, evict least recently used snapshots whole instead of first trimming
        /// them to their recorded working sets (`snapbpf.ws`).
        #[arg(long)]
        no_trim: bool,
    },
    /// Load a snapshot into the store.
    Add {
        /// Snapshot directory.
        dir: PathBuf,
        /// The store's socket.
        #[arg(long, default_value = super::DEFAULT_STORE_SOCKET)]
        socket: PathBuf,
    },
    /// The snapshots held.
    List {
        /// The store's socket.
        #[arg(long, default_value = super::DEFAULT_STORE_SOCKET)]
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
        #[arg(long, default_value = super::DEFAULT_STORE_SOCKET)]
        socket: PathBuf,
    },
    /// Snapshots and bytes held, hits, misses, evictions.
    Stats {
        /// The store's socket.
        #[arg(long, default_value = super::DEFAULT_STORE_SOCKET)]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses a size: a number with an optional K, M or G suffix (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
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

fn parse_backing(s: &str) -> Result<Backing, String> {
    Backing::ALL
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, b)| *b)
        .ok_or_else(|| format!("'{s}' is not one of none, thp, hugetlb"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn describe(h: &Held) -> String {
    format!(
        "{:<14} {:>8.1} MiB  {:<11} {}",
        h.function,
        mib(h.bytes),
        h.resident.name(),
        h.dir.display()
    )
}

fn ask(socket: &std::path::Path, request: &Request) -> Result<Reply> {
    Ok(snapbpf_memstore::request(socket, request)?.0)
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        StoreCommand::Serve {
            socket,
            capacity,
            huge_pages,
            no_trim,
            access,
        } => {
            eprintln!(
                "store: serving on {} with {:.1} GiB of {} memory{} (SIGINT or SIGTERM to stop)",
                socket.display(),
                capacity as f64 / (1u64 << 30) as f64,
                match huge_pages {
                    Backing::Shmem => "4 KiB shmem",
                    Backing::Thp => "THP shmem",
                    Backing::Hugetlb => "hugetlbfs",
                },
                if no_trim {
                    ""
                } else {
                    ", trimming to working sets when full"
                }
            );
            let end = snapbpf_memstore::serve(
                &socket,
                snapbpf_memstore::Config {
                    capacity,
                    backing: huge_pages,
                    trim: (!no_trim).then(|| {
                        std::sync::Arc::new(|dir: &std::path::Path, memory: &_| {
                            snapbpf::store_memory::trim_ranges(dir, memory).map_err(|e| {
                                Box::new(e) as Box<dyn std::error::Error + Send + Sync>
                            })
                        }) as snapbpf_memstore::TrimTo
                    }),
                    access: access.policy(),
                },
            )?;
            let s = end.stats;
            eprintln!(
                "store: stopped: {} hits, {} misses, {} trims, {} evictions; {} memfds left open",
                s.hits, s.misses, s.trims, s.evictions, end.memfds_left
            );
            if end.memfds_left != 0 {
                anyhow::bail!("{} memfds were not released", end.memfds_left);
            }
        }
        StoreCommand::Add { dir, socket } => {
            let dir = snapbpf_memstore::store_key(&dir)?;
            let reply = ask(&socket, &Request::Add { dir })?;
            if let Some(h) = reply.held {
                println!("held {}", describe(&h));
            }
        }
        StoreCommand::List { socket, json } => {
            let held = ask(&socket, &Request::List)?.snapshots.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string(&held)?);
            } else {
                for h in held {
                    println!("{}", describe(&h));
                }
            }
        }
        StoreCommand::Evict { dir, socket } => {
            // The store holds snapshots by their memory's identity: read it here, with
            // the caller's own permissions.
            let meta_path = dir.join(snapbpf_store::snapshot::META_FILE);
            let raw = snapbpf_store::fsutil::read_regular(
                &meta_path,
                snapbpf_store::snapshot::MAX_META_BYTES,
            )
            .with_context(|| format!("cannot read {}", meta_path.display()))?;
            let memory = snapbpf_store::snapshot::parse_meta(&raw, &meta_path)?.memory;
            let reply = ask(&socket, &Request::Evict { memory })?;
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
                    "{} snapshots, {:.1} of {:.1} MiB ({} pages); {} hits, {} misses, {} trims, {} evictions",
                    stats.snapshots,
                    mib(stats.bytes),
                    mib(stats.capacity),
                    stats.backing.name(),
                    stats.hits,
                    stats.misses,
                    stats.trims,
                    stats.evictions
                );
            }
        }
    }
    Ok(())
}
